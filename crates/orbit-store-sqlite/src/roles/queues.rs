//! Queue views for status pages and metrics.

use crate::*;

#[async_trait]
impl orbit_store::Queues for SqliteStore {
    async fn queue_stats(&self) -> Result<QueueStats> {
        let counts: Vec<(String, i64)> = sqlx::query_as("SELECT state, n FROM task_counts")
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?;
        let n = |state: &str| {
            counts
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n)
        };
        let row = sqlx::query(DLQ_AND_OLDEST_READY)
            .fetch_one(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(QueueStats {
            pending: n("ready"),
            running: n("running"),
            waiting: n("waiting"),
            completed: n("succeeded"),
            failed: n("dead"),
            dlq: row.try_get(0).map_err(unavailable)?,
            oldest_pending: row
                .try_get::<Option<i64>, _>(1)
                .map_err(unavailable)?
                .and_then(DateTime::from_timestamp_micros),
        })
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
}

/// The dead-letter queue's size, and the oldest ready task run's `ready_at` found by one index
/// seek per distinct priority on the claim index (a skip scan) instead of reading every ready
/// row.
const DLQ_AND_OLDEST_READY: &str = "WITH RECURSIVE p (v) AS ( \
     SELECT MAX(priority) FROM task_runs WHERE state = 'ready' \
     UNION ALL \
     SELECT (SELECT MAX(priority) FROM task_runs WHERE state = 'ready' AND priority < p.v) FROM p WHERE p.v IS NOT NULL) \
     SELECT (SELECT COUNT(*) FROM dead_letters), \
     (SELECT MIN((SELECT MIN(ready_at) FROM task_runs WHERE state = 'ready' AND priority = p.v)) FROM p WHERE p.v IS NOT NULL)";
