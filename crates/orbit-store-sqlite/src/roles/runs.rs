//! Runs and task runs: created, read, cancelled, re-queued.

use crate::*;

#[async_trait]
impl orbit_store::Runs for SqliteStore {
    async fn create_run(&self, new: NewRun<'_>) -> Result<CreatedRun> {
        let id = write::create_run(&self.writer, &new).await?;
        match id {
            Ok(id) => Ok(CreatedRun {
                run: {
                    self.wake_claimers();
                    self.changed();
                    self.run_on(id).await?
                },
                created: true,
                same_request: true,
            }),
            Err((existing, same_request)) => Ok(CreatedRun {
                run: self.run_on(existing).await?,
                created: false,
                same_request,
            }),
        }
    }

    async fn run(&self, id: Uuid) -> Result<RunRecord> {
        self.run_on(id).await
    }

    async fn find_run(&self, id_or_prefix: &str) -> Result<RunRecord> {
        run_from_row(
            &self
                .by_id("runs", "id", RUN_COLUMNS, id_or_prefix, "run")
                .await?,
        )
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT {RUN_COLUMNS} FROM runs WHERE 1=1"));
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
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(run_from_row)
            .collect()
    }

    async fn task_runs(&self, run: Uuid) -> Result<Vec<TaskRunRecord>> {
        sqlx::query("SELECT * FROM task_runs WHERE run_id = ?1 ORDER BY seq")
            .bind(run.to_string())
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(task_run_from_row)
            .collect()
    }

    async fn task_runs_page(&self, run: Uuid, page: &TaskRunPage) -> Result<Vec<TaskRunRecord>> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM task_runs WHERE run_id = ");
        q.push_bind(run.to_string());
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
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(task_run_from_row)
            .collect()
    }

    async fn child_runs(&self, run: Uuid) -> Result<Vec<RunRecord>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE parent_run_id = ?1 ORDER BY created_at, id"
        )))
        .bind(run.to_string())
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?
        .iter()
        .map(run_from_row)
        .collect()
    }

    async fn children(&self, run: Uuid, parent: &str) -> Result<Vec<ChildResult>> {
        sqlx::query_as::<_, (i64, String, Option<String>, Option<String>)>(
            "SELECT map_index, state, output, error FROM task_runs \
             WHERE run_id = ?1 AND map_parent = ?2 ORDER BY map_index",
        )
        .bind(run.to_string())
        .bind(parent)
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|(index, state, output, error)| {
            let output = output
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("output of {parent}[{index}]: {e}")))?;
            ChildResult::from_row(index, &state, output, error)
        })
        .collect()
    }

    async fn child_counts(&self, run: Uuid) -> Result<Vec<ChildCount>> {
        sqlx::query_as::<_, (String, String, i64)>(
            "SELECT map_parent, state, COUNT(*) FROM task_runs \
             WHERE run_id = ?1 AND map_parent IS NOT NULL GROUP BY map_parent, state ORDER BY map_parent, state",
        )
        .bind(run.to_string())
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|(task, state, n)| ChildCount::from_row(task, &state, n))
        .collect()
    }

    async fn task_run_counts(&self, run: Uuid) -> Result<Vec<(TaskState, u64)>> {
        sqlx::query("SELECT state, COUNT(*) FROM task_runs WHERE run_id = ?1 GROUP BY state")
            .bind(run.to_string())
            .fetch_all(&self.reader)
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
        let rows = match task {
            Some(t) => {
                sqlx::query(
                    "SELECT * FROM attempts WHERE run_id = ?1 AND task_name = ?2 ORDER BY attempt",
                )
                .bind(run.to_string())
                .bind(t)
                .fetch_all(&self.reader)
                .await
            }
            None => {
                sqlx::query("SELECT * FROM attempts WHERE run_id = ?1 ORDER BY started_at, attempt")
                    .bind(run.to_string())
                    .fetch_all(&self.reader)
                    .await
            }
        }
        .map_err(unavailable)?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn outputs(&self, run: Uuid, tasks: &[String]) -> Result<Vec<(String, Value)>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT task_name, output FROM task_runs WHERE state = 'succeeded' AND run_id = ",
        );
        q.push_bind(run.to_string()).push(" AND task_name IN (");
        let mut list = q.separated(", ");
        for t in tasks {
            list.push_bind(t.clone());
        }
        q.push(")");
        q.build()
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|r| {
                let name: String = r.try_get(0).map_err(unavailable)?;
                let out: Option<String> = r.try_get(1).map_err(unavailable)?;
                let value = match out {
                    Some(s) => serde_json::from_str(&s)
                        .map_err(|e| StoreError::Corrupt(format!("output of {name}: {e}")))?,
                    None => Value::Null,
                };
                Ok((name, value))
            })
            .collect()
    }

    async fn cancel_run(&self, run: Uuid, now: DateTime<Utc>) -> Result<RunRecord> {
        write::cancel_run(&self.writer, run, now).await?;
        self.changed();
        self.control.send_modify(|n| *n = n.wrapping_add(1));
        self.run_on(run).await
    }

    async fn signal(
        &self,
        name: &str,
        payload: &Value,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<orbit_store::SignalOutcome> {
        let out = write::signal(&self.writer, name, payload, expires_at, now).await?;
        if !out.delivered.is_empty() {
            self.wake_claimers();
            self.changed();
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
        write::decide(&self.writer, run, task, decision, now).await?;
        self.wake_claimers();
        self.changed();
        Ok(())
    }

    async fn requeue(
        &self,
        run: Uuid,
        tasks: &[String],
        by: orbit_store::TriggeredBy,
        now: DateTime<Utc>,
    ) -> Result<Requeued> {
        let tasks = write::requeue(&self.writer, run, tasks, by, now).await?;
        if !tasks.is_empty() {
            self.wake_claimers();
            self.changed();
        }
        Ok(Requeued { tasks })
    }

    async fn keyed_output(&self, key: &str, since: DateTime<Utc>) -> Result<Option<(Uuid, Value)>> {
        let row = sqlx::query("SELECT task_run_id, output FROM task_results WHERE idempotency_key = ?1 AND created_at >= ?2")
            .bind(key)
            .bind(us(since))
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?;
        row.map(|r| {
            let id: String = r.try_get(0).map_err(unavailable)?;
            let out: String = r.try_get(1).map_err(unavailable)?;
            Ok((
                Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                serde_json::from_str(&out)
                    .map_err(|e| StoreError::Corrupt(format!("keyed output: {e}")))?,
            ))
        })
        .transpose()
    }

    async fn task_run(&self, id_or_prefix: &str) -> Result<TaskRunRecord> {
        task_run_from_row(
            &self
                .by_id("task_runs", "id", "*", id_or_prefix, "task run")
                .await?,
        )
    }
}
