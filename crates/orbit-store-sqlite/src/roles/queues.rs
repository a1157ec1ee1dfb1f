//! Queue views for status pages and metrics.

use crate::*;

#[async_trait]
impl orbit_store::Queues for SqliteStore {
    async fn queue_stats(&self) -> Result<QueueStats> {
        let counts: Vec<(String, i64)> = sqlx::query_as("SELECT state, n FROM task_counts")
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?;
        let row = sqlx::query(orbit_store::tally::DLQ_AND_OLDEST_READY)
            .fetch_one(&self.reader)
            .await
            .map_err(unavailable)?;
        let oldest = row
            .try_get::<Option<i64>, _>(1)
            .map_err(unavailable)?
            .and_then(DateTime::from_timestamp_micros);
        Ok(orbit_store::tally::queue_stats(
            &counts,
            row.try_get(0).map_err(unavailable)?,
            oldest,
        ))
    }

    async fn queue_items(&self, filter: &QueueFilter) -> Result<Vec<TaskRunRecord>> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM task_runs WHERE ");
        match filter.state {
            Some(state) => q.push("state = ").push_bind(state.as_str()),
            None => q.push("state IN ('waiting', 'ready', 'running')"),
        };
        if let Some(queue) = &filter.queue {
            q.push(" AND queue = ").push_bind(queue.clone());
        }
        q.push(" ORDER BY priority DESC, COALESCE(ready_at, updated_at), id LIMIT ")
            .push_bind(i64::from(filter.limit.max(1)))
            .push(" OFFSET ")
            .push_bind(i64::from(filter.offset));
        q.build()
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(task_run_from_row)
            .collect()
    }

    async fn attempt_cells(&self, since: DateTime<Utc>) -> Result<Vec<(CellKey, Cell)>> {
        let rows: Vec<(i64, bool, i16, i64, i64, i64)> = sqlx::query_as(
            "SELECT minute, ok, bucket, attempts, sum_us, max_us FROM attempt_cells \
             WHERE minute >= ?1 ORDER BY minute, ok, bucket",
        )
        .bind(since.timestamp().div_euclid(60))
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?;
        Ok(rows.into_iter().map(orbit_store::tally::from_row).collect())
    }

    async fn running_with_keys(&self, keys: &[String]) -> Result<Vec<(String, u64)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT concurrency_key, COUNT(*) FROM task_runs WHERE state = 'running' AND concurrency_key IN (",
        );
        let mut list = q.separated(", ");
        for k in keys {
            list.push_bind(k);
        }
        q.push(") GROUP BY concurrency_key");
        let rows: Vec<(String, i64)> = q
            .build_query_as()
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(k, n)| (k, u64::try_from(n).unwrap_or(0)))
            .collect())
    }
}
