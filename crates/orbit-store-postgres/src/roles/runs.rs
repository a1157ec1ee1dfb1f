//! Runs and task runs: created, read, cancelled, re-queued.

use crate::*;

#[async_trait]
impl orbit_store::Runs for PgStore {
    async fn create_run(&self, new: NewRun<'_>) -> Result<CreatedRun> {
        let (id, created, same_request) = match write::create_run(&self.pool, &new).await? {
            Ok(id) => {
                self.wake_claimers();
                self.created(new.pipeline.pipeline.tasks.len() as u64);
                (id, true, true)
            }
            Err((existing, same)) => (existing, false, same),
        };
        Ok(CreatedRun {
            run: self.run(id).await?,
            created,
            same_request,
        })
    }

    async fn run(&self, id: Uuid) -> Result<RunRecord> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .map(|r| run_from_row(&r))
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("run {id}")))
    }

    async fn find_run(&self, id_or_prefix: &str) -> Result<RunRecord> {
        run_from_row(&self.by_prefix("runs", "id", id_or_prefix, "run").await?)
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let mut q =
            QueryBuilder::<Postgres>::new(format!("SELECT {RUN_COLUMNS} FROM runs WHERE TRUE"));
        if let Some(state) = filter.state {
            q.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(p) = &filter.pipeline {
            q.push(" AND pipeline_name = ").push_bind(p.clone());
        }
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(filter.limit.max(1)))
            .push(" OFFSET ")
            .push_bind(i64::from(filter.offset));
        q.build()
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(run_from_row)
            .collect()
    }

    async fn task_runs(&self, run: Uuid) -> Result<Vec<TaskRunRecord>> {
        sqlx::query("SELECT * FROM task_runs WHERE run_id = $1 ORDER BY seq")
            .bind(run)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(task_run_from_row)
            .collect()
    }

    async fn task_runs_page(&self, run: Uuid, page: &TaskRunPage) -> Result<Vec<TaskRunRecord>> {
        let mut q = QueryBuilder::<Postgres>::new("SELECT * FROM task_runs WHERE run_id = ");
        q.push_bind(run);
        if let Some(state) = page.state {
            q.push(" AND state = ").push_bind(state.as_str());
        }
        match &page.children_of {
            Some(parent) => q
                .push(" AND map_parent = ")
                .push_bind(parent.clone())
                .push(" ORDER BY map_index LIMIT "),
            None => q.push(" AND map_parent IS NULL ORDER BY seq LIMIT "),
        };
        q.push_bind(i64::from(page.limit.max(1)))
            .push(" OFFSET ")
            .push_bind(i64::from(page.offset));
        q.build()
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(task_run_from_row)
            .collect()
    }

    async fn child_runs(&self, run: Uuid) -> Result<Vec<RunRecord>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE parent_run_id = $1 ORDER BY created_at, id"
        )))
        .bind(run)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(run_from_row)
        .collect()
    }

    async fn children(&self, run: Uuid, parent: &str) -> Result<Vec<ChildResult>> {
        sqlx::query_as::<_, (i32, String, Option<Value>, Option<String>)>(
            "SELECT map_index, state, output, error FROM task_runs \
             WHERE run_id = $1 AND map_parent = $2 ORDER BY map_index",
        )
        .bind(run)
        .bind(parent)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|(index, state, output, error)| {
            ChildResult::from_row(i64::from(index), &state, output, error)
        })
        .collect()
    }

    async fn child_counts(&self, run: Uuid) -> Result<Vec<ChildCount>> {
        sqlx::query_as::<_, (String, String, i64)>(
            "SELECT map_parent, state, COUNT(*) FROM task_runs \
             WHERE run_id = $1 AND map_parent IS NOT NULL GROUP BY map_parent, state ORDER BY map_parent, state",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|(task, state, n)| ChildCount::from_row(task, &state, n))
        .collect()
    }

    async fn task_run_counts(&self, run: Uuid) -> Result<Vec<(TaskState, u64)>> {
        sqlx::query("SELECT state, COUNT(*) FROM task_runs WHERE run_id = $1 GROUP BY state")
            .bind(run)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| {
                let state: String = row.try_get(0).map_err(unavailable)?;
                let n: i64 = row.try_get(1).map_err(unavailable)?;
                let state = state
                    .parse::<TaskState>()
                    .map_err(|e| StoreError::Corrupt(format!("task run state: {e}")))?;
                Ok((state, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    async fn attempts(&self, run: Uuid, task: Option<&str>) -> Result<Vec<AttemptRecord>> {
        sqlx::query(
            "SELECT * FROM attempts WHERE run_id = $1 AND ($2::text IS NULL OR task_name = $2) \
             ORDER BY started_at, attempt",
        )
        .bind(run)
        .bind(task)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(attempt_from_row)
        .collect()
    }

    async fn outputs(&self, run: Uuid, tasks: &[String]) -> Result<Vec<(String, Value)>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query(
            "SELECT task_name, output FROM task_runs WHERE state = 'succeeded' AND run_id = $1 AND task_name = ANY($2)",
        )
        .bind(run)
        .bind(tasks)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(|r| {
            let name: String = r.try_get(0).map_err(unavailable)?;
            let out: Option<Value> = r.try_get(1).map_err(unavailable)?;
            Ok((name, out.unwrap_or(Value::Null)))
        })
        .collect()
    }

    async fn cancel_run(&self, run: Uuid, now: DateTime<Utc>) -> Result<RunRecord> {
        write::cancel_run(&self.pool, run, now).await?;
        self.run(run).await
    }

    async fn signal(
        &self,
        name: &str,
        payload: &Value,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<orbit_store::SignalOutcome> {
        let out = write::signal(&self.pool, name, payload, expires_at, now).await?;
        if !out.delivered.is_empty() {
            self.wake_claimers();
        }
        Ok(out)
    }

    async fn decide(
        &self,
        run: Uuid,
        task: &str,
        decision: &orbit_store::Decision,
        now: DateTime<Utc>,
    ) -> Result<()> {
        write::decide(&self.pool, run, task, decision, now).await?;
        self.wake_claimers();
        Ok(())
    }

    async fn requeue(
        &self,
        run: Uuid,
        tasks: &[String],
        by: orbit_store::TriggeredBy,
        now: DateTime<Utc>,
    ) -> Result<Requeued> {
        let tasks = write::requeue(&self.pool, run, tasks, by, now).await?;
        if !tasks.is_empty() {
            self.wake_claimers();
        }
        Ok(Requeued { tasks })
    }

    async fn keyed_output(&self, key: &str, since: DateTime<Utc>) -> Result<Option<(Uuid, Value)>> {
        let row = sqlx::query("SELECT task_run_id, output FROM task_results WHERE idempotency_key = $1 AND created_at >= $2")
            .bind(key)
            .bind(since)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|r| {
            Ok((
                r.try_get(0).map_err(unavailable)?,
                r.try_get(1).map_err(unavailable)?,
            ))
        })
        .transpose()
    }

    async fn task_run(&self, id_or_prefix: &str) -> Result<TaskRunRecord> {
        task_run_from_row(
            &self
                .by_prefix("task_runs", "id", id_or_prefix, "task run")
                .await?,
        )
    }
}
