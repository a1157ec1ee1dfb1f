//! Queue views for status pages and metrics.

use crate::*;

#[async_trait]
impl orbit_store::Queues for PgStore {
    async fn queue_stats(&self) -> Result<QueueStats> {
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, SUM(n)::bigint FROM task_counts GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        let row = sqlx::query(orbit_store::tally::DLQ_AND_OLDEST_READY)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(orbit_store::tally::queue_stats(
            &counts,
            row.try_get(0).map_err(unavailable)?,
            row.try_get(1).map_err(unavailable)?,
        ))
    }

    async fn queue_items(&self, filter: &QueueFilter) -> Result<Vec<TaskRunRecord>> {
        let states: Vec<&str> = match filter.state {
            Some(s) => vec![s.as_str()],
            None => vec!["waiting", "ready", "running"],
        };
        sqlx::query(
            "SELECT * FROM task_runs WHERE state = ANY($1) AND ($2::text IS NULL OR queue = $2) \
             ORDER BY priority DESC, COALESCE(ready_at, updated_at), id LIMIT $3 OFFSET $4",
        )
        .bind(&states)
        .bind(filter.queue.as_deref())
        .bind(i64::from(filter.limit.max(1)))
        .bind(i64::from(filter.offset))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(task_run_from_row)
        .collect()
    }

    async fn attempt_cells(&self, since: DateTime<Utc>) -> Result<Vec<(CellKey, Cell)>> {
        let rows: Vec<(i64, bool, i16, i64, i64, i64)> = sqlx::query_as(
            "SELECT minute, ok, bucket, SUM(attempts)::bigint, SUM(sum_us)::bigint, MAX(max_us) \
             FROM attempt_cells WHERE minute >= $1 GROUP BY minute, ok, bucket ORDER BY minute, ok, bucket",
        )
        .bind(since.timestamp().div_euclid(60))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows.into_iter().map(orbit_store::tally::from_row).collect())
    }

    async fn running_with_keys(&self, keys: &[String]) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT concurrency_key, COUNT(*) FROM task_runs WHERE state = 'running' \
             AND concurrency_key = ANY($1) GROUP BY concurrency_key",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(k, n)| (k, u64::try_from(n).unwrap_or(0)))
            .collect())
    }
}
