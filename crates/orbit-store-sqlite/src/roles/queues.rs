//! Queue views for status pages and metrics.

use crate::*;

#[async_trait]
impl orbit_store::Queues for SqliteStore {
    async fn queue_stats(&self) -> Result<QueueStats> {
        let row = sqlx::query(
            "SELECT \
             (SELECT COUNT(*) FROM task_runs WHERE state = 'ready'), \
             (SELECT COUNT(*) FROM task_runs WHERE state = 'running'), \
             (SELECT COUNT(*) FROM task_runs WHERE state = 'waiting'), \
             (SELECT COUNT(*) FROM task_runs WHERE state = 'succeeded'), \
             (SELECT COUNT(*) FROM task_runs WHERE state = 'dead'), \
             (SELECT COUNT(*) FROM dead_letters), \
             (SELECT MIN(ready_at) FROM task_runs WHERE state = 'ready')",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(unavailable)?;
        let n = |i: usize| row.try_get::<i64, _>(i).map_err(unavailable);
        Ok(QueueStats {
            pending: n(0)?,
            running: n(1)?,
            waiting: n(2)?,
            completed: n(3)?,
            failed: n(4)?,
            dlq: n(5)?,
            oldest_pending: row
                .try_get::<Option<i64>, _>(6)
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

    async fn recent_attempts(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<AttemptSummary>> {
        sqlx::query(
            "SELECT outcome, started_at, finished_at FROM attempts WHERE finished_at >= ?1 \
             ORDER BY finished_at DESC LIMIT ?2",
        )
        .bind(us(since))
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?
        .iter()
        .map(rows::attempt_summary_from_row)
        .collect()
    }
}
