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

    async fn queue_depths(&self) -> Result<Vec<(String, TaskState, i64)>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(orbit_store::tally::DEPTH_BY_QUEUE)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(orbit_store::tally::depths(rows))
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

    async fn key_usage(&self, keys: &[String]) -> Result<Vec<KeyUsage>> {
        usage(
            sqlx::query_as(sqlx::AssertSqlSafe(orbit_store::keys::usage_sql(
                "UNNEST($1::text[]) AS k(key)",
            )))
            .bind(keys)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?,
        )
    }

    async fn set_key_limit(
        &self,
        key: &str,
        limit: Option<u32>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let existed: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM concurrency_limits WHERE key = $1)")
                .bind(key)
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        match limit {
            Some(n) => sqlx::query(
                "INSERT INTO concurrency_limits (key, max_running, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET max_running = excluded.max_running, updated_at = excluded.updated_at",
            )
            .bind(key)
            .bind(i32::try_from(n).unwrap_or(i32::MAX))
            .bind(now),
            None => sqlx::query("DELETE FROM concurrency_limits WHERE key = $1").bind(key),
        }
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        // A raised limit may free slots: claimers look again.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(crate::CHANNEL)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(existed)
    }

    async fn key_limits(&self) -> Result<Vec<KeyUsage>> {
        usage(
            sqlx::query_as(sqlx::AssertSqlSafe(orbit_store::keys::usage_sql(
                "concurrency_limits k",
            )))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?,
        )
    }

    async fn rate_buckets(&self, keys: &[String]) -> Result<Vec<RateBucket>> {
        sqlx::query_as::<_, (String, f64, f64, f64, i64)>(
            "SELECT key, tokens, capacity, per_ms, updated_at FROM rate_buckets WHERE key = ANY($1) ORDER BY key",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(RateBucket::from_row)
        .collect()
    }
}

fn usage(rows: Vec<(String, i64, i64, Option<i32>)>) -> Result<Vec<KeyUsage>> {
    Ok(rows
        .into_iter()
        .map(|(key, running, runs, limit)| {
            orbit_store::keys::usage(key, running, runs, limit.map(i64::from))
        })
        .collect())
}
