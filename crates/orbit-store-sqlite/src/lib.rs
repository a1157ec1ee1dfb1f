//! The embedded SQLite store, Orbit's zero-set-up default (`.orbit/orbit.db`).
//!
//! WAL mode with `synchronous=FULL` by default: a commit is on disk before anything is said to
//! have happened. SQLite has one writer at a time, so all writes go through a single-connection
//! pool and take the write lock up front (`BEGIN IMMEDIATE`) instead of upgrading mid-transaction;
//! reads use their own small pool and never wait for the writer. Throughput comes from the
//! engine handing many state changes to one [`Store::finish_and_claim`] commit.
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
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How hard a commit presses to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a commit survives a power cut. The default.
    #[default]
    Full,
    /// `synchronous=NORMAL`: a commit survives a process crash but the last ones may be lost
    /// on power failure. Opt-in.
    Normal,
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            other => Err(format!(
                "unknown SQLite durability `{other}` (expected full or normal)"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    path: PathBuf,
    /// One process owns the file's writes, so an in-process signal reaches every claimer that
    /// shares this store.
    work: Arc<watch::Sender<u64>>,
    /// Ticks after each commit that appended events (live pages and event streams wait on it).
    changes: Arc<watch::Sender<u64>>,
    /// Ticks on a cancel: engines check their leases at once.
    control: Arc<watch::Sender<u64>>,
}

/// An exclusive lock on `<database>-migrate.lock`, held while migrations run.
async fn migration_lock(db: &std::path::Path) -> Result<std::fs::File> {
    let mut name = db.as_os_str().to_owned();
    name.push("-migrate.lock");
    let path = PathBuf::from(name);
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        file.lock()
            .map_err(|e| StoreError::Unavailable(format!("cannot lock {}: {e}", path.display())))?;
        Ok(file)
    })
    .await
    .map_err(|e| StoreError::Unavailable(format!("migration lock: {e}")))?
}

pub(crate) fn unavailable(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::RowNotFound => StoreError::NotFound("row".into()),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(e.to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

pub(crate) fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path/to/file.db` or a plain
    /// path) and applies pending migrations.
    pub async fn open(url: &str, durability: Durability) -> Result<SqliteStore> {
        let path_part = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let (file, _query) = path_part.split_once('?').unwrap_or((path_part, ""));
        if file.is_empty() || file == ":memory:" {
            return Err(StoreError::Unavailable(format!(
                "`{url}` names no database file; Orbit keeps its state on disk (e.g. sqlite://.orbit/orbit.db)"
            )));
        }
        let path = PathBuf::from(file);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("temp_store", "memory");
        let open_err = |e: sqlx::Error| {
            StoreError::Unavailable(format!("cannot open {}: {e}", path.display()))
        };
        // Several processes may open a new file at once (a server and a CLI command): SQLite
        // has no migration lock of its own, so one is taken on a file beside the database,
        // before the first connection: switching a new file to WAL fails at once ("database is
        // locked", no busy wait) while another process holds it.
        let lock = migration_lock(&path).await?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(open_err)?;
        MIGRATOR.run(&writer).await.map_err(|e| {
            StoreError::Unavailable(format!("cannot migrate {}: {e}", path.display()))
        })?;
        drop(lock);
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        Ok(SqliteStore {
            writer,
            reader,
            path,
            work: Arc::new(watch::channel(0).0),
            changes: Arc::new(watch::channel(0).0),
            control: Arc::new(watch::channel(0).0),
        })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Runs `PRAGMA integrity_check`; `Ok(())` when the file is sound.
    pub async fn integrity_check(&self) -> Result<()> {
        let result: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&self.reader)
            .await
            .map_err(unavailable)?;
        if result == "ok" {
            Ok(())
        } else {
            Err(StoreError::Corrupt(result))
        }
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

const RUN_COLUMNS: &str = "id, pipeline_id, pipeline_name, pipeline_version, state, input, priority, idempotency_key, triggered_by, \
     tasks_total, tasks_pending, tasks_dead, created_at, started_at, finished_at, updated_at";

#[async_trait]
impl orbit_store::Registry for SqliteStore {
    async fn save_pipeline(
        &self,
        pipeline: &Pipeline,
        source: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<StoredPipeline> {
        write::save_pipeline(&self.writer, pipeline, source, now).await
    }

    async fn pipeline(&self, name: &str) -> Result<StoredPipeline> {
        sqlx::query("SELECT * FROM pipelines WHERE name = ?1 AND deleted_at IS NULL ORDER BY version DESC LIMIT 1")
            .bind(name)
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?
            .map(|r| pipeline_from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("pipeline `{}`", orbit_core::echo::echo(name))))
    }

    async fn pipeline_version(&self, id: Uuid) -> Result<StoredPipeline> {
        sqlx::query("SELECT * FROM pipelines WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?
            .map(|r| pipeline_from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("pipeline version {id}")))
    }

    async fn pipeline_versions(&self, name: &str) -> Result<Vec<StoredPipeline>> {
        sqlx::query("SELECT * FROM pipelines WHERE name = ?1 ORDER BY version")
            .bind(name)
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(pipeline_from_row)
            .collect()
    }

    async fn list_pipelines(&self) -> Result<Vec<StoredPipeline>> {
        sqlx::query(
            "SELECT p.* FROM pipelines p \
             WHERE p.deleted_at IS NULL AND p.version = (SELECT MAX(version) FROM pipelines q WHERE q.name = p.name) ORDER BY p.name",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?
        .iter()
        .map(pipeline_from_row)
        .collect()
    }

    async fn delete_pipeline(&self, name: &str, now: DateTime<Utc>) -> Result<u64> {
        write::delete_pipeline(&self.writer, name, now).await
    }

    async fn register_service(
        &self,
        registration: &orbit_core::protocol::Registration,
        now: DateTime<Utc>,
    ) -> Result<Vec<ServiceTask>> {
        write::register_service(&self.writer, registration, now).await
    }

    async fn services(&self) -> Result<Vec<ServiceRecord>> {
        sqlx::query(
            "SELECT s.id, s.version, s.url, s.registered_at, \
             COALESCE((SELECT MAX(n.last_seen_at) FROM nodes n WHERE n.service = s.id AND n.last_seen_at > s.last_seen_at), \
             s.last_seen_at) AS last_seen_at FROM services s ORDER BY last_seen_at DESC",
        )
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::service_from_row)
            .collect()
    }

    async fn service_tasks(&self, service: Option<&str>) -> Result<Vec<ServiceTask>> {
        sqlx::query(
            "SELECT * FROM service_tasks WHERE ?1 IS NULL OR service_id = ?1 ORDER BY service_id, name",
        )
        .bind(service)
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?
        .iter()
        .map(rows::service_task_from_row)
        .collect()
    }

    async fn service_task(&self, name: &str) -> Result<ServiceTask> {
        let row = sqlx::query("SELECT * FROM service_tasks WHERE name = ?1")
            .bind(name)
            .fetch_optional(&self.reader)
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
        sqlx::query("SELECT * FROM task_code_history WHERE task_name = ?1 ORDER BY code_version")
            .bind(name)
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::code_change_from_row)
            .collect()
    }
}

#[async_trait]
impl orbit_store::Runs for SqliteStore {
    async fn create_run(&self, new: NewRun<'_>) -> Result<CreatedRun> {
        let id = write::create_run(&self.writer, &new).await?;
        match id {
            Ok(id) => Ok(CreatedRun {
                run: {
                    self.signal();
                    self.changed();
                    self.run_on(&self.writer, id).await?
                },
                created: true,
                same_request: true,
            }),
            Err((existing, same_request)) => Ok(CreatedRun {
                run: self.run_on(&self.writer, existing).await?,
                created: false,
                same_request,
            }),
        }
    }

    async fn run(&self, id: Uuid) -> Result<RunRecord> {
        self.run_on(&self.reader, id).await
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
        q.push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(page.limit.max(1)))
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
        self.run_on(&self.writer, run).await
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
            self.signal();
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

#[async_trait]
impl orbit_store::Claims for SqliteStore {
    async fn finish_and_claim(
        &self,
        finished: &[FinishedAttempt],
        claim: Option<&ClaimRequest>,
        now: DateTime<Utc>,
    ) -> Result<BatchOutcome> {
        let claims = claim.map_or(&[][..], std::slice::from_ref);
        let (mut out, mut each) = self.finish_and_claim_many(finished, claims, now).await?;
        out.claimed = each.pop().unwrap_or_default();
        Ok(out)
    }

    async fn finish_and_claim_many(
        &self,
        finished: &[FinishedAttempt],
        claims: &[ClaimRequest],
        now: DateTime<Utc>,
    ) -> Result<(BatchOutcome, Vec<Vec<ClaimedTask>>)> {
        let (out, each) = write::finish_and_claim(&self.writer, finished, claims, now).await?;
        if out.left_work {
            self.signal();
        }
        if !finished.is_empty() || each.iter().any(|c| !c.is_empty()) {
            self.changed();
        }
        Ok((out, each))
    }

    async fn extend_leases(&self, leases: &[(Uuid, i64)], now: DateTime<Utc>) -> Result<Vec<Uuid>> {
        write::extend_leases(&self.writer, leases, now).await
    }

    async fn leased(&self, filter: &LeaseFilter) -> Result<Vec<LeasedTask>> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT id, run_id, pipeline_id, task_name, attempt, attempt_base, lease_epoch, lease_expires_at, \
             COALESCE(claimed_at, started_at, updated_at) AS claimed_at, lease_owner FROM task_runs WHERE state = 'running'",
        );
        if let Some(run) = filter.run {
            q.push(" AND run_id = ").push_bind(run.to_string());
        }
        if let Some(before) = filter.expired_before {
            q.push(" AND lease_expires_at < ").push_bind(us(before));
        }
        q.push(" ORDER BY lease_expires_at LIMIT ")
            .push_bind(i64::from(filter.limit.max(1)));
        q.build()
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::leased_from_row)
            .collect()
    }

    async fn next_ready_at(&self, run: Option<Uuid>) -> Result<Option<DateTime<Utc>>> {
        let min: Option<i64> = match run {
            Some(r) => {
                sqlx::query_scalar(
                    "SELECT MIN(ready_at) FROM task_runs WHERE state = 'ready' AND run_id = ?1",
                )
                .bind(r.to_string())
                .fetch_one(&self.reader)
                .await
            }
            None => {
                sqlx::query_scalar("SELECT MIN(ready_at) FROM task_runs WHERE state = 'ready'")
                    .fetch_one(&self.reader)
                    .await
            }
        }
        .map_err(unavailable)?;
        Ok(min.and_then(DateTime::from_timestamp_micros))
    }

    async fn set_progress(
        &self,
        id: Uuid,
        epoch: i64,
        progress: f64,
        message: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let kept = write::set_progress(&self.writer, id, epoch, progress, message, now).await?;
        if kept {
            self.changed();
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

#[async_trait]
impl orbit_store::Events for SqliteStore {
    async fn events(&self, after: i64, run: Option<Uuid>, limit: u32) -> Result<Vec<EventRecord>> {
        let limit = i64::from(limit.max(1));
        let query = match run {
            Some(run) => sqlx::query(
                "SELECT * FROM events WHERE run_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )
            .bind(run.to_string()),
            None => sqlx::query("SELECT * FROM events WHERE id > ?1 ORDER BY id LIMIT ?2"),
        };
        query
            .bind(after)
            .bind(limit)
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::event_from_row)
            .collect()
    }

    async fn latest_event_id(&self) -> Result<i64> {
        let id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM events")
            .fetch_one(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(id.unwrap_or(0))
    }

    fn change_signal(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[async_trait]
impl orbit_store::Nodes for SqliteStore {
    async fn node_heartbeat(&self, node: &NodeInfo, now: DateTime<Utc>) -> Result<()> {
        write::node_heartbeat(&self.writer, node, now).await
    }

    async fn node_stopped(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        write::node_stopped(&self.writer, id, now).await
    }

    async fn nodes(&self, limit: u32) -> Result<Vec<NodeRecord>> {
        sqlx::query(
            "SELECT n.*, (SELECT COUNT(*) FROM task_runs t WHERE t.state = 'running' AND t.lease_owner = n.id) AS running \
             FROM nodes n ORDER BY last_seen_at DESC LIMIT ?1",
        )
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?
        .iter()
        .map(rows::node_from_row)
        .collect()
    }
}

#[async_trait]
impl orbit_store::Retention for SqliteStore {
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        sqlx::query("SELECT * FROM dead_letters ORDER BY created_at DESC LIMIT ?1")
            .bind(i64::from(limit.max(1)))
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(rows::dead_letter_from_row)
            .collect()
    }

    async fn dead_letter(&self, id_or_prefix: &str) -> Result<DeadLetter> {
        rows::dead_letter_from_row(
            &self
                .by_id(
                    "dead_letters",
                    "task_run_id",
                    "*",
                    id_or_prefix,
                    "dead-letter entry",
                )
                .await?,
        )
    }

    async fn purge_dead_letters(&self, before: DateTime<Utc>) -> Result<PurgedLetters> {
        write::purge_dead_letters(&self.writer, before).await
    }

    async fn delete_run(&self, id: Uuid) -> Result<()> {
        write::delete_run(&self.writer, id, Utc::now()).await?;
        self.changed();
        Ok(())
    }
}

impl SqliteStore {
    /// The one row whose UUID key starts with `id_or_prefix`; `sql` selects at most two rows
    /// with the key in [?1, ?1 || '~'), which the primary key index serves.
    /// One row of `table` by its id `key`: the full id, its short form (the last 12 hex
    /// digits, by an index on them), or a unique prefix.
    async fn by_id(
        &self,
        table: &str,
        key: &str,
        columns: &str,
        id_or_prefix: &str,
        what: &str,
    ) -> Result<sqlx::sqlite::SqliteRow> {
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
        let mut rows = Vec::new();
        if orbit_core::id::is_short(&prefix) {
            // The same expression as the tail indexes of migration 0006.
            rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {columns} FROM {table} WHERE substr({key}, 25) = ?1 LIMIT 2"
            )))
            .bind(&prefix)
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?;
        }
        if rows.is_empty() {
            rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {columns} FROM {table} WHERE {key} >= ?1 AND {key} < ?1 || '~' ORDER BY {key} LIMIT 2"
            )))
            .bind(&prefix)
            .fetch_all(&self.reader)
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

    fn signal(&self) {
        self.work.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn run_on(&self, pool: &SqlitePool, id: Uuid) -> Result<RunRecord> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"
        )))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?
        .map(|r| run_from_row(&r))
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("run {id}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(
            dir.path().join("t.db").to_str().expect("utf8 path"),
            Durability::Full,
        )
        .await
        .expect("open");
        (store, dir)
    }

    orbit_store::conformance_tests!(store);

    #[tokio::test]
    async fn memory_databases_are_refused() {
        let err = SqliteStore::open("sqlite::memory:", Durability::Full)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("names no database file"), "{err}");
    }

    #[tokio::test]
    async fn file_passes_integrity_check() {
        let (s, _dir) = store().await;
        s.integrity_check().await.unwrap();
    }
}
