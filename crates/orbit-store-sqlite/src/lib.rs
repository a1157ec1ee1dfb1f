//! The embedded SQLite store, Orbit's zero-set-up default (`.orbit/orbit.db`).
//!
//! WAL mode with `synchronous=FULL` by default: a commit is on disk before anything is said to
//! have happened. SQLite has one writer at a time, so all writes go through one connection on a
//! thread of its own ([`writer`]) and take the write lock up front (`BEGIN IMMEDIATE`) instead of
//! upgrading mid-transaction; reads use their own small pool and never wait for the writer. Throughput comes from the
//! engine handing many state changes to one [`Store::finish_and_claim`] commit.
//!
//! It depends on `orbit-core` and `orbit-store` only (it executes `orbit_store::plan`'s plans);
//! never on the engine, the server or the other backend.

mod roles;
mod rows;
mod write;
mod writer;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orbit_core::{Pipeline, TaskState};
use orbit_store::{
    AttemptRecord, BatchOutcome, Cell, CellKey, ChildCount, ChildResult, ClaimRequest, ClaimedTask,
    CreatedRun, DeadLetter, EventRecord, FinishedAttempt, KeyUsage, LeaseFilter, LeasedTask,
    NewRun, NodeInfo, NodeRecord, PurgedLetters, QueueFilter, QueueStats, RateBucket, Requeued,
    Result, RunFilter, RunRecord, ServiceRecord, ServiceTask, StoreError, StoredPipeline,
    TaskRunPage, TaskRunRecord,
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
    writer: Arc<writer::Writer>,
    reader: SqlitePool,
    path: PathBuf,
    /// One process owns the file's writes, so an in-process signal reaches every claimer that
    /// shares this store.
    work: Arc<watch::Sender<u64>>,
    /// Ticks after each commit that appended events (live pages and event streams wait on it).
    changes: Arc<watch::Sender<u64>>,
    /// Ticks on a cancel: engines check their leases at once.
    control: Arc<watch::Sender<u64>>,
    /// Wakes claimers when a rate limit's next token comes.
    alarm: orbit_store::alarm::Alarm,
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
        let migrator = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(open_err)?;
        MIGRATOR.run(&migrator).await.map_err(|e| {
            StoreError::Unavailable(format!("cannot migrate {}: {e}", path.display()))
        })?;
        migrator.close().await;
        drop(lock);
        let writer = Arc::new(writer::Writer::open(&path, durability)?);
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
            alarm: Default::default(),
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
    }
}

const RUN_COLUMNS: &str = "id, pipeline_id, pipeline_name, pipeline_version, state, input, priority, idempotency_key, triggered_by, \
     tasks_total, tasks_pending, tasks_dead, created_at, started_at, finished_at, updated_at, concurrency_key, concurrency_limit, \
     parent_run_id, parent_task, rerun_of, rerun_from";

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

    fn wake_claimers(&self) {
        self.work.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn run_on(&self, id: Uuid) -> Result<RunRecord> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.reader)
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
