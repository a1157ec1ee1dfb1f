//! The PostgreSQL store: any number of `orbit server` and `orbit worker` processes on any
//! number of machines share one database.
//!
//! Claims take ready task runs with `FOR UPDATE SKIP LOCKED`, so claimers never wait for one
//! another; every batch of state changes is one transaction with `synchronous_commit` as the
//! server has it (on by default). A transaction that leaves claimable work behind sends
//! `NOTIFY orbit_work`; every store listens and wakes its claimers, and they still poll in case
//! a notification is lost with a connection.
//!
//! It depends on `orbit-core` and `orbit-store` only (it executes `orbit_store::plan`'s plans);
//! never on the engine, the server or the other backend.

mod rows;
mod write;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orbit_core::{Pipeline, TaskState};
use orbit_store::{
    AttemptRecord, AttemptSummary, BatchOutcome, ClaimRequest, ClaimedTask, CreatedRun, DeadLetter,
    EventRecord, FinishedAttempt, LeaseFilter, LeasedTask, NewRun, NodeInfo, NodeRecord,
    PurgedLetters, QueueFilter, QueueStats, Requeued, Result, RunFilter, RunRecord, ServiceRecord,
    ServiceTask, StoreError, StoredPipeline, TaskRunPage, TaskRunRecord,
};
use rows::{attempt_from_row, pipeline_from_row, run_from_row, task_run_from_row};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The channel of work wake-ups.
pub(crate) const CHANNEL: &str = "orbit_work";
/// Notified by every transaction that appends events (see `write::flush_events`).
pub(crate) const CHANGES: &str = "orbit_changes";
/// Sent with a cancel: every node checks the leases it holds at once.
pub(crate) const CONTROL: &str = "orbit_control";

pub(crate) fn unavailable(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::RowNotFound => StoreError::NotFound("row".into()),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(e.to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    work: Arc<watch::Sender<u64>>,
    changes: Arc<watch::Sender<u64>>,
    control: Arc<watch::Sender<u64>>,
    listener: Arc<tokio::task::AbortHandle>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if Arc::strong_count(&self.listener) == 1 {
            self.listener.abort();
        }
    }
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`). Does not migrate: see [`Self::migrate`].
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid PostgreSQL URL: {e}")))?;
        Self::connect_with(options, max_connections).await
    }

    pub async fn connect_with(options: PgConnectOptions, max_connections: u32) -> Result<PgStore> {
        let where_ = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot connect to PostgreSQL at {where_}: {}",
                    server_said(&e)
                ))
            })?;
        let work = Arc::new(watch::channel(0).0);
        let changes = Arc::new(watch::channel(0).0);
        let control = Arc::new(watch::channel(0).0);
        let signals = Signals {
            work: work.clone(),
            changes: changes.clone(),
            control: control.clone(),
        };
        let listener = tokio::spawn(listen(pool.clone(), signals)).abort_handle();
        Ok(PgStore {
            pool,
            work,
            changes,
            control,
            listener: Arc::new(listener),
        })
    }

    /// Applies pending migrations; returns how many it applied and the schema version now.
    /// Safe when several nodes start at once: sqlx holds an advisory lock while it migrates.
    pub async fn migrate(&self) -> Result<(usize, i64)> {
        let before = self.schema_version().await;
        MIGRATOR.run(&self.pool).await.map_err(|e| {
            StoreError::Unavailable(format!("cannot migrate the PostgreSQL schema: {e}"))
        })?;
        let after = self.schema_version().await.unwrap_or(0);
        let applied = MIGRATOR
            .iter()
            .filter(|m| before.is_none_or(|b| m.version > b) && m.version <= after)
            .count();
        Ok((applied, after))
    }

    async fn schema_version(&self) -> Option<i64> {
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .unwrap_or(None)
    }

    /// Fails with a clear message when the schema is missing or older than this binary.
    pub async fn check_schema(&self) -> Result<()> {
        let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await
                .unwrap_or(None);
        match applied {
            Some(v) if v >= latest => Ok(()),
            _ => Err(StoreError::Unavailable(
                "the database has no Orbit schema or an older one: run `orbit db migrate` (or start `orbit server`, which migrates)".into(),
            )),
        }
    }

    /// A server setting (`SHOW name`), e.g. `synchronous_commit`.
    pub async fn setting(&self, name: &str) -> Result<String> {
        sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.listener.abort();
        self.pool.close().await;
    }

    fn signal(&self) {
        self.work.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn by_prefix(
        &self,
        table: &str,
        key: &str,
        id_or_prefix: &str,
        what: &str,
    ) -> Result<PgRow> {
        let prefix = id_or_prefix.trim().to_ascii_lowercase();
        if prefix.is_empty()
            || prefix.len() > 36
            || !prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        {
            return Err(StoreError::NotFound(format!(
                "{what} `{}`",
                orbit_core::echo::echo(id_or_prefix)
            )));
        }
        // A prefix is the range [prefix padded with 0s, prefix padded with fs] of the uuid
        // index; a hyphen in the prefix must sit where a uuid has one.
        let hex: String = prefix.chars().filter(|c| *c != '-').collect();
        let (Ok(low), Ok(high)) = (
            Uuid::parse_str(&format!("{hex:0<32}")),
            Uuid::parse_str(&format!("{hex:f<32}")),
        ) else {
            return Err(StoreError::NotFound(format!(
                "{what} `{}`",
                orbit_core::echo::echo(id_or_prefix)
            )));
        };
        let mut rows = Vec::new();
        if orbit_core::id::is_short(&prefix) {
            // The same expression as the tail indexes of migration 0004.
            rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT * FROM {table} WHERE right({key}::text, 12) = $1 LIMIT 2"
            )))
            .bind(&prefix)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        }
        if rows.is_empty() {
            if !low.hyphenated().to_string().starts_with(&prefix)
                && !orbit_core::id::is_short(&prefix)
            {
                return Err(StoreError::NotFound(format!(
                    "{what} `{}`",
                    orbit_core::echo::echo(id_or_prefix)
                )));
            }
            rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT * FROM {table} WHERE {key} BETWEEN $1 AND $2 ORDER BY {key} LIMIT 2"
            )))
            .bind(low)
            .bind(high)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        }
        match rows.len() {
            1 => Ok(rows.remove(0)),
            0 => Err(StoreError::NotFound(format!(
                "{what} `{}`",
                orbit_core::echo::echo(id_or_prefix)
            ))),
            _ => Err(StoreError::Conflict(format!(
                "`{}` matches more than one {what}; give more of the id",
                orbit_core::echo::echo(id_or_prefix)
            ))),
        }
    }
}

/// The watch channels the listener ticks.
struct Signals {
    work: Arc<watch::Sender<u64>>,
    changes: Arc<watch::Sender<u64>>,
    control: Arc<watch::Sender<u64>>,
}

/// What the server said, without the driver's decoration: PostgreSQL's own message (and, for a
/// missing database, what to do), not where in its source it was raised.
fn server_said(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(db) if db.code().as_deref() == Some("3D000") => format!(
            "{} (create it, e.g. `createdb NAME`, or name an existing one)",
            db.message()
        ),
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    }
}

/// Turns `NOTIFY orbit_work`, `orbit_changes` and `orbit_control` into work, change and control
/// signals, for as long as the store lives.
async fn listen(pool: PgPool, signals: Signals) {
    let tick = |w: &watch::Sender<u64>| w.send_modify(|n| *n = n.wrapping_add(1));
    let signal = || {
        tick(&signals.work);
        tick(&signals.changes);
        tick(&signals.control);
    };
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for work; polling only until it can");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen_all([CHANNEL, CHANGES, CONTROL]).await {
            tracing::warn!(error = %e, "cannot LISTEN for work; polling only until it can");
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) if n.channel() == CHANGES => tick(&signals.changes),
                Ok(Some(n)) if n.channel() == CONTROL => tick(&signals.control),
                Ok(Some(_)) => tick(&signals.work),
                // The connection dropped: notifications may have been missed meanwhile.
                Ok(None) => signal(),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection failed");
                    signal();
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

const RUN_COLUMNS: &str = "id, pipeline_id, pipeline_name, pipeline_version, state, input, priority, idempotency_key, triggered_by, \
     tasks_total, tasks_pending, tasks_dead, created_at, started_at, finished_at, updated_at";

#[async_trait]
impl orbit_store::Registry for PgStore {
    async fn save_pipeline(
        &self,
        pipeline: &Pipeline,
        source: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<StoredPipeline> {
        write::save_pipeline(&self.pool, pipeline, source, now).await
    }

    async fn pipeline(&self, name: &str) -> Result<StoredPipeline> {
        sqlx::query("SELECT * FROM pipelines WHERE name = $1 AND deleted_at IS NULL ORDER BY version DESC LIMIT 1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(|r| pipeline_from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("pipeline `{}`", orbit_core::echo::echo(name))))
    }

    async fn pipeline_version(&self, id: Uuid) -> Result<StoredPipeline> {
        sqlx::query("SELECT * FROM pipelines WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(|r| pipeline_from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("pipeline version {id}")))
    }

    async fn pipeline_versions(&self, name: &str) -> Result<Vec<StoredPipeline>> {
        sqlx::query("SELECT * FROM pipelines WHERE name = $1 ORDER BY version")
            .bind(name)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(pipeline_from_row)
            .collect()
    }

    async fn list_pipelines(&self) -> Result<Vec<StoredPipeline>> {
        sqlx::query(
            "SELECT DISTINCT ON (name) * FROM pipelines WHERE deleted_at IS NULL ORDER BY name, version DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(pipeline_from_row)
        .collect()
    }

    async fn delete_pipeline(&self, name: &str, now: DateTime<Utc>) -> Result<u64> {
        write::delete_pipeline(&self.pool, name, now).await
    }

    async fn register_service(
        &self,
        registration: &orbit_core::protocol::Registration,
        now: DateTime<Utc>,
    ) -> Result<Vec<ServiceTask>> {
        write::register_service(&self.pool, registration, now).await
    }

    async fn services(&self) -> Result<Vec<ServiceRecord>> {
        sqlx::query(
            "SELECT s.id, s.version, s.url, s.registered_at, \
             COALESCE((SELECT MAX(n.last_seen_at) FROM nodes n WHERE n.service = s.id AND n.last_seen_at > s.last_seen_at), \
             s.last_seen_at) AS last_seen_at FROM services s ORDER BY last_seen_at DESC",
        )
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::service_from_row)
            .collect()
    }

    async fn service_tasks(&self, service: Option<&str>) -> Result<Vec<ServiceTask>> {
        sqlx::query(
            "SELECT * FROM service_tasks WHERE $1::text IS NULL OR service_id = $1 ORDER BY service_id, name",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(rows::service_task_from_row)
        .collect()
    }

    async fn service_task(&self, name: &str) -> Result<ServiceTask> {
        let row = sqlx::query("SELECT * FROM service_tasks WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "registered task `{}`",
                    orbit_core::echo::echo(name)
                ))
            })?;
        rows::service_task_from_row(&row)
    }

    async fn task_history(&self, name: &str) -> Result<Vec<orbit_store::CodeChange>> {
        sqlx::query("SELECT * FROM task_code_history WHERE task_name = $1 ORDER BY code_version")
            .bind(name)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::code_change_from_row)
            .collect()
    }
}

#[async_trait]
impl orbit_store::Runs for PgStore {
    async fn create_run(&self, new: NewRun<'_>) -> Result<CreatedRun> {
        let (id, created, same_request) = match write::create_run(&self.pool, &new).await? {
            Ok(id) => {
                self.signal();
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
        q.push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(page.limit.max(1)))
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

    async fn requeue(
        &self,
        run: Uuid,
        tasks: &[String],
        by: orbit_store::TriggeredBy,
        now: DateTime<Utc>,
    ) -> Result<Requeued> {
        let tasks = write::requeue(&self.pool, run, tasks, by, now).await?;
        if !tasks.is_empty() {
            self.signal();
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

#[async_trait]
impl orbit_store::Claims for PgStore {
    async fn finish_and_claim(
        &self,
        finished: &[FinishedAttempt],
        claim: Option<&ClaimRequest>,
        now: DateTime<Utc>,
    ) -> Result<BatchOutcome> {
        let claims = claim.map_or(&[][..], std::slice::from_ref);
        let (mut out, mut each) =
            write::finish_and_claim(&self.pool, finished, claims, now).await?;
        out.claimed = each.pop().unwrap_or_default();
        Ok(out)
    }

    async fn finish_and_claim_many(
        &self,
        finished: &[FinishedAttempt],
        claims: &[ClaimRequest],
        now: DateTime<Utc>,
    ) -> Result<(BatchOutcome, Vec<Vec<ClaimedTask>>)> {
        write::finish_and_claim(&self.pool, finished, claims, now).await
    }

    async fn extend_leases(&self, leases: &[(Uuid, i64)], now: DateTime<Utc>) -> Result<Vec<Uuid>> {
        write::extend_leases(&self.pool, leases, now).await
    }

    async fn leased(&self, filter: &LeaseFilter) -> Result<Vec<LeasedTask>> {
        sqlx::query(
            "SELECT * FROM task_runs WHERE state = 'running' AND ($1::uuid IS NULL OR run_id = $1) \
             AND ($2::timestamptz IS NULL OR lease_expires_at < $2) ORDER BY lease_expires_at LIMIT $3",
        )
        .bind(filter.run)
        .bind(filter.expired_before)
        .bind(i64::from(filter.limit.max(1)))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(rows::leased_from_row)
        .collect()
    }

    async fn next_ready_at(&self, run: Option<Uuid>) -> Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar("SELECT MIN(ready_at) FROM task_runs WHERE state = 'ready' AND ($1::uuid IS NULL OR run_id = $1)")
            .bind(run)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn set_progress(
        &self,
        id: Uuid,
        epoch: i64,
        progress: f64,
        message: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let kept = write::set_progress(&self.pool, id, epoch, progress, message, now).await?;
        if kept {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(kept)
    }

    fn work_signal(&self) -> watch::Receiver<u64> {
        self.work.subscribe()
    }

    fn control_signal(&self) -> watch::Receiver<u64> {
        self.control.subscribe()
    }
}

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

#[async_trait]
impl orbit_store::Events for PgStore {
    async fn events(&self, after: i64, run: Option<Uuid>, limit: u32) -> Result<Vec<EventRecord>> {
        let limit = i64::from(limit.max(1));
        let query = match run {
            Some(run) => sqlx::query(
                "SELECT * FROM events WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(run),
            None => sqlx::query("SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT $2"),
        };
        query
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::event_from_row)
            .collect()
    }

    async fn latest_event_id(&self) -> Result<i64> {
        let id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(id.unwrap_or(0))
    }

    fn change_signal(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[async_trait]
impl orbit_store::Nodes for PgStore {
    async fn node_heartbeat(&self, node: &NodeInfo, now: DateTime<Utc>) -> Result<()> {
        write::node_heartbeat(&self.pool, node, now).await
    }

    async fn node_stopped(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        write::node_stopped(&self.pool, id, now).await
    }

    async fn nodes(&self, limit: u32) -> Result<Vec<NodeRecord>> {
        sqlx::query(
            "SELECT n.*, (SELECT COUNT(*) FROM task_runs t WHERE t.state = 'running' AND t.lease_owner = n.id) AS running \
             FROM nodes n ORDER BY last_seen_at DESC LIMIT $1",
        )
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(rows::node_from_row)
        .collect()
    }
}

#[async_trait]
impl orbit_store::Retention for PgStore {
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        sqlx::query("SELECT * FROM dead_letters ORDER BY created_at DESC LIMIT $1")
            .bind(i64::from(limit.max(1)))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::dead_letter_from_row)
            .collect()
    }

    async fn dead_letter(&self, id_or_prefix: &str) -> Result<DeadLetter> {
        rows::dead_letter_from_row(
            &self
                .by_prefix(
                    "dead_letters",
                    "task_run_id",
                    id_or_prefix,
                    "dead-letter entry",
                )
                .await?,
        )
    }

    async fn purge_dead_letters(&self, before: DateTime<Utc>) -> Result<PurgedLetters> {
        write::purge_dead_letters(&self.pool, before).await
    }

    async fn delete_run(&self, id: Uuid) -> Result<()> {
        write::delete_run(&self.pool, id, Utc::now()).await
    }
}

/// Test databases on the server `ORBIT_TEST_PG_URL` names.
pub mod testing;

#[cfg(test)]
mod tests {
    use super::*;
    use orbit_store::prelude::*;
    use testing::TestDb;

    async fn store() -> (PgStore, TestDb) {
        let db = TestDb::create().await;
        let store = PgStore::connect(&db.url, 4).await.expect("connect");
        store.migrate().await.expect("migrate");
        (store, db)
    }

    orbit_store::conformance_tests!(store);

    #[tokio::test]
    async fn an_unmigrated_database_is_named_as_such() {
        let db = TestDb::create().await;
        let store = PgStore::connect(&db.url, 2).await.expect("connect");
        let err = store.check_schema().await.unwrap_err();
        assert!(err.to_string().contains("orbit db migrate"), "{err}");
        store.migrate().await.expect("migrate");
        store.migrate().await.expect("migrating twice is a no-op");
        store.check_schema().await.expect("schema is current");
    }

    #[tokio::test]
    async fn notify_wakes_another_store_on_the_same_database() {
        let (a, db) = store().await;
        let b = PgStore::connect(&db.url, 2).await.expect("connect");
        let mut signal = b.work_signal();
        signal.borrow_and_update();
        // The listener needs a moment to subscribe before the first NOTIFY.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let p = orbit_store::testkit::pipeline("wake", &[("a", &[], 0)]);
        let stored = a.save_pipeline(&p, None, Utc::now()).await.expect("save");
        a.create_run(NewRun {
            id: uuid::Uuid::now_v7(),
            pipeline: &stored,
            input: serde_json::json!({}),
            priority: 0,
            idempotency_key: None,
            idempotency_ttl: Duration::from_secs(60),
            request_hash: None,
            triggered_by: orbit_store::TriggeredBy::Cli,
            now: Utc::now(),
        })
        .await
        .expect("run");
        tokio::time::timeout(Duration::from_secs(5), signal.changed())
            .await
            .expect("another node's store hears of the new run")
            .expect("signal open");
    }
}
