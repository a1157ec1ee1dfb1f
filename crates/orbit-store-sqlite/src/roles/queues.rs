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

    async fn queue_depths(&self) -> Result<Vec<(String, TaskState, i64)>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(orbit_store::tally::DEPTH_BY_QUEUE)
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(orbit_store::tally::depths(rows))
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

    async fn key_usage(&self, keys: &[String]) -> Result<Vec<KeyUsage>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One row per key asked about, from a VALUES list of them.
        let mut q = QueryBuilder::<Sqlite>::new("WITH k (key) AS (");
        q.push_values(keys, |mut b, k| {
            b.push_bind(k);
        });
        q.push(") ").push(orbit_store::keys::usage_sql("k"));
        usage(
            q.build_query_as()
                .fetch_all(&self.reader)
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
        let existed = write::set_key_limit(&self.writer, key, limit, now).await?;
        // A raised limit may free slots: claimers look again.
        self.wake_claimers();
        Ok(existed)
    }

    async fn key_limits(&self) -> Result<Vec<KeyUsage>> {
        usage(
            sqlx::query_as(sqlx::AssertSqlSafe(orbit_store::keys::usage_sql(
                "concurrency_limits k",
            )))
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?,
        )
    }

    async fn rate_buckets(&self, keys: &[String]) -> Result<Vec<RateBucket>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT key, tokens, capacity, per_ms, updated_at FROM rate_buckets WHERE key IN (",
        );
        let mut list = q.separated(", ");
        for k in keys {
            list.push_bind(k);
        }
        q.push(") ORDER BY key");
        q.build_query_as::<(String, f64, f64, f64, i64)>()
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(RateBucket::from_row)
            .collect()
    }
}

fn usage(rows: Vec<(String, i64, i64, Option<i64>)>) -> Result<Vec<KeyUsage>> {
    Ok(rows
        .into_iter()
        .map(|(key, running, runs, limit)| orbit_store::keys::usage(key, running, runs, limit))
        .collect())
}
