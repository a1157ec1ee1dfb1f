//! Dead letters and deleting settled runs.

use crate::*;

#[async_trait]
impl orbit_store::Retention for PgStore {
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        sqlx::query("SELECT * FROM dead_letters ORDER BY created_at DESC LIMIT $1")
            .bind(i64::from(limit.max(1)))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::dead_letter_from_row)
            .collect()
    }

    async fn dead_letter(&self, id_or_prefix: &str) -> Result<DeadLetter> {
        rows::dead_letter_from_row(
            &self
                .by_prefix(
                    "dead_letters",
                    "task_run_id",
                    id_or_prefix,
                    "dead-letter entry",
                )
                .await?,
        )
    }

    async fn purge_dead_letters(&self, before: DateTime<Utc>) -> Result<PurgedLetters> {
        write::purge_dead_letters(&self.pool, before).await
    }

    async fn delete_run_slice(&self, id: Uuid) -> Result<bool> {
        write::delete_run_slice(&self.pool, id, Utc::now()).await
    }

    async fn settled_before(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<Uuid>> {
        sqlx::query_scalar(
            "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < $1 \
             AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)
    }

    async fn forget_attempt_cells(&self, before: DateTime<Utc>) -> Result<u64> {
        sqlx::query("DELETE FROM rate_buckets WHERE updated_at + per_ms * 1000 < $1")
            .bind(before.timestamp_micros())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        sqlx::query("DELETE FROM signals WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        let done = sqlx::query("DELETE FROM attempt_cells WHERE minute < $1")
            .bind(before.timestamp().div_euclid(60))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}
