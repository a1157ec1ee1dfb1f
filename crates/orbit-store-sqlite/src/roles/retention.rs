//! Dead letters and deleting settled runs.

use crate::*;

#[async_trait]
impl orbit_store::Retention for SqliteStore {
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        sqlx::query("SELECT * FROM dead_letters ORDER BY created_at DESC LIMIT ?1")
            .bind(i64::from(limit.max(1)))
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::dead_letter_from_row)
            .collect()
    }

    async fn dead_letter(&self, id_or_prefix: &str) -> Result<DeadLetter> {
        rows::dead_letter_from_row(
            &self
                .by_id(
                    "dead_letters",
                    "task_run_id",
                    "*",
                    id_or_prefix,
                    "dead-letter entry",
                )
                .await?,
        )
    }

    async fn purge_dead_letters(&self, before: DateTime<Utc>) -> Result<PurgedLetters> {
        write::purge_dead_letters(&self.writer, before).await
    }

    async fn delete_run_slice(&self, id: Uuid) -> Result<bool> {
        let gone = write::delete_run_slice(&self.writer, id, Utc::now()).await?;
        if gone {
            self.changed();
        }
        Ok(gone)
    }

    async fn settled_before(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<Uuid>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < ?1 \
             AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT ?2",
        )
        .bind(us(before))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?;
        ids.iter()
            .map(|id| Uuid::parse_str(id).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }

    async fn forget_attempt_cells(&self, before: DateTime<Utc>) -> Result<u64> {
        write::forget_attempt_cells(&self.writer, before).await
    }
}
