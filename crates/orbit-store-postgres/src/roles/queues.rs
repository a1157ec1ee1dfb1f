//! Queue views for status pages and metrics.

use crate::*;

#[async_trait]
impl orbit_store::Queues for PgStore {
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
        .fetch_one(&self.pool)
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
            oldest_pending: row.try_get(6).map_err(unavailable)?,
        })
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

    async fn recent_attempts(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<AttemptSummary>> {
        sqlx::query(
            "SELECT outcome, started_at, finished_at FROM attempts WHERE finished_at >= $1 ORDER BY finished_at DESC LIMIT $2",
        )
        .bind(since)
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(rows::attempt_summary_from_row)
        .collect()
    }
}
