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

mod roles;
mod rows;
mod write;

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

/// Task runs created between two `ANALYZE task_runs` of this process.
const ANALYZE_EVERY: u64 = 50_000;

/// Task runs created before this process's first `ANALYZE task_runs`: a table never analyzed
/// (new, or autovacuum off) has claims planned as a sort of every ready row.
const ANALYZE_FIRST: u64 = 1_000;

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    work: Arc<watch::Sender<u64>>,
    changes: Arc<watch::Sender<u64>>,
    control: Arc<watch::Sender<u64>>,
    /// Wakes this process's claimers when a rate limit's next token comes.
    alarm: orbit_store::alarm::Alarm,
    listener: Arc<tokio::task::AbortHandle>,
    /// Task runs created since `task_runs` was last analyzed (see [`PgStore::created`]).
    unanalyzed: Arc<std::sync::atomic::AtomicU64>,
    /// Whether this process analyzed `task_runs` yet.
    analyzed: Arc<std::sync::atomic::AtomicBool>,
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
            alarm: Default::default(),
            listener: Arc::new(listener),
            unanalyzed: Arc::default(),
            analyzed: Arc::default(),
        })
    }

    /// Counts `n` task runs just created; past [`ANALYZE_FIRST`] the first time and
    /// [`ANALYZE_EVERY`] after, analyzes `task_runs` in the background. The claim's plan
    /// depends on the table's statistics: planned on stale ones (a table that grew by a bulk
    /// enqueue, before autovacuum got to it, or with autovacuum off), a claim sorted every
    /// ready task run — 370 ms with 300,000 queued, 0.17 ms after; 3.3 ms against 0.1 ms with
    /// 10,000 in a new table.
    fn created(&self, n: u64) {
        use std::sync::atomic::Ordering;
        let due = if self.analyzed.load(Ordering::Relaxed) {
            ANALYZE_EVERY
        } else {
            ANALYZE_FIRST
        };
        if self.unanalyzed.fetch_add(n, Ordering::Relaxed) + n < due {
            return;
        }
        self.analyzed.store(true, Ordering::Relaxed);
        self.unanalyzed.store(0, Ordering::Relaxed);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if let Err(e) = sqlx::query("ANALYZE task_runs").execute(&pool).await {
                tracing::warn!(error = %e, "cannot analyze task_runs");
            }
        });
    }

    /// The database's size on disk (tables, indexes, TOAST): what `orbit bench scale` divides
    /// by the task runs it wrote.
    pub async fn database_bytes(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)
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

    fn wake_claimers(&self) {
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
     tasks_total, tasks_pending, tasks_dead, created_at, started_at, finished_at, updated_at, concurrency_key, concurrency_limit, \
     parent_run_id, parent_task, rerun_of, rerun_from";

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
            parent: None,
            rerun: None,
            now: Utc::now(),
        })
        .await
        .expect("run");
        tokio::time::timeout(Duration::from_secs(5), signal.changed())
            .await
            .expect("another node's store hears of the new run")
            .expect("signal open");
    }

    /// Four stores (as four engines would) claim and finish one run's 150 keyed tasks side by
    /// side: the number running with the key, read after every commit, never passes its limit,
    /// and neither do the attempts' recorded spans. (Without the advisory lock each check
    /// alone fails most runs.)
    #[tokio::test]
    async fn concurrency_keys_hold_across_engines() {
        const LIMIT: i64 = 3;
        let (a, db) = store().await;
        let names: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
        let spec: Vec<(&str, &[&str], i32)> =
            names.iter().map(|n| (n.as_str(), &[][..], 0)).collect();
        let mut p = orbit_store::testkit::pipeline("shared", &spec);
        for t in p.tasks.iter_mut().take(150) {
            t.concurrency = Some(orbit_core::pipeline::Concurrency {
                key: "shared".into(),
                limit: Some(LIMIT as u32),
            });
        }
        let stored = a.save_pipeline(&p, None, Utc::now()).await.expect("save");
        a.create_run(orbit_store::testkit::new_run(
            &stored,
            serde_json::json!({}),
            Utc::now(),
        ))
        .await
        .expect("run");
        let mut engines = Vec::new();
        for e in 0..4 {
            let store = PgStore::connect(&db.url, 2).await.expect("connect");
            let p = p.clone();
            engines.push(tokio::spawn(async move {
                let mut held: Vec<ClaimedTask> = Vec::new();
                let mut most = 0;
                let mut idle = 0;
                while idle < 20 {
                    let now = Utc::now();
                    let done: Vec<_> = held
                        .iter()
                        .map(|t| {
                            let ok = orbit_core::transition::Outcome::Succeeded(serde_json::json!(1));
                            let mut f = orbit_store::testkit::finish(&p, t, ok, now);
                            f.started_at = t.claimed_at;
                            f
                        })
                        .collect();
                    let req = ClaimRequest::any(format!("engine-{e}"), 4);
                    let out = loop {
                        match store.finish_and_claim(&done, Some(&req), now).await {
                            Ok(out) => break out,
                            // A deadlock victim: the engine tries the same batch again.
                            Err(StoreError::Unavailable(_)) => continue,
                            Err(other) => panic!("commit: {other}"),
                        }
                    };
                    let running: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM task_runs WHERE state = 'running' AND concurrency_key = 'shared'",
                    )
                    .fetch_one(&store.pool)
                    .await
                    .expect("count");
                    assert!(running <= LIMIT, "{running} running with key `shared`");
                    most = most.max(running);
                    idle = if out.claimed.is_empty() && held.is_empty() { idle + 1 } else { 0 };
                    held = out.claimed;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                most
            }));
        }
        let mut most = 0;
        for e in engines {
            most = most.max(e.await.expect("engine"));
        }
        assert_eq!(most, LIMIT, "the key was saturated at some point");
        // The attempts' own times say the same: at no instant were more than LIMIT of the
        // key's attempts between their claim and their end.
        let spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT a.started_at, a.finished_at FROM attempts a JOIN task_runs t ON t.id = a.task_run_id \
             WHERE t.concurrency_key = 'shared'",
        )
        .fetch_all(&a.pool)
        .await
        .expect("attempts");
        assert_eq!(spans.len(), 150);
        let mut edges: Vec<(DateTime<Utc>, i64)> = spans
            .iter()
            .flat_map(|(start, end)| [(*start, 1), (*end, -1)])
            .collect();
        // An attempt that ends at the instant another starts does not overlap it.
        edges.sort_by_key(|(at, delta)| (*at, *delta));
        let mut open = 0;
        for (_, delta) in edges {
            open += delta;
            assert!(open <= LIMIT, "{open} attempts of key `shared` overlapped");
        }
        let left: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM task_runs WHERE state <> 'succeeded'")
                .fetch_one(&a.pool)
                .await
                .expect("count");
        assert_eq!(left, 0, "every task ran");
    }

    /// One store parks 200 waits, each on its own signal name, while two other stores send
    /// every name's signal at the same time: every wait is woken exactly once (by a delivery,
    /// or by taking a signal kept just before it parked), and of each name's two signals one
    /// is left kept. (Without the name's lock, a signal sent while its wait parks is kept where
    /// the wait cannot see it, and the wait stays parked.)
    #[tokio::test]
    async fn signals_race_waits_across_servers() {
        const N: usize = 200;
        let (a, db) = store().await;
        let p = orbit_store::testkit::pipeline("order", &[("pay", &[], 0)]);
        let stored = a.save_pipeline(&p, None, Utc::now()).await.expect("save");
        for _ in 0..N {
            a.create_run(orbit_store::testkit::new_run(
                &stored,
                serde_json::json!({}),
                Utc::now(),
            ))
            .await
            .expect("run");
        }
        let claimed = a
            .finish_and_claim(&[], Some(&ClaimRequest::any("a", N)), Utc::now())
            .await
            .expect("claim")
            .claimed;
        assert_eq!(claimed.len(), N);
        let b = PgStore::connect(&db.url, 2).await.expect("connect");
        let c = PgStore::connect(&db.url, 2).await.expect("connect");
        // Each name's park and its two signals start together, so they meet in the act.
        for (i, t) in claimed.iter().enumerate() {
            let name = format!("ev-{i}");
            let park = orbit_core::transition::Outcome::Parked(orbit_core::transition::Park {
                kind: orbit_core::transition::ParkKind::Signal,
                until: None,
                event: Some(name.clone()),
                note: None,
            });
            let f = orbit_store::testkit::finish(&p, t, park, Utc::now());
            let parking = async {
                loop {
                    match a
                        .finish_and_claim(std::slice::from_ref(&f), None, Utc::now())
                        .await
                    {
                        Ok(out) => break assert!(out.lease_lost.is_empty()),
                        Err(StoreError::Unavailable(_)) => continue,
                        Err(other) => panic!("park: {other}"),
                    }
                }
            };
            let send = |store: &PgStore, s: u8| {
                let name = name.clone();
                let store = store.clone();
                async move {
                    let at = Utc::now();
                    store
                        .signal(
                            &name,
                            &serde_json::json!({"i": i, "s": s}),
                            at + chrono::Duration::hours(1),
                            at,
                        )
                        .await
                        .expect("signal")
                }
            };
            tokio::join!(parking, send(&b, 1), send(&c, 2));
        }
        let states: Vec<(String, Option<serde_json::Value>)> =
            sqlx::query_as("SELECT state, wake FROM task_runs")
                .fetch_all(&a.pool)
                .await
                .expect("task runs");
        assert_eq!(states.len(), N);
        for (state, wake) in &states {
            assert_eq!(state, "ready", "every wait woke: {wake:?}");
            assert_eq!(
                wake.as_ref().map(|w| w["by"].clone()),
                Some(serde_json::json!("signal"))
            );
        }
        let kept: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, COUNT(*) FROM signals GROUP BY name")
                .fetch_all(&a.pool)
                .await
                .expect("signals");
        assert_eq!(kept.len(), N, "each name has its other signal left");
        assert!(kept.iter().all(|(_, n)| *n == 1), "{kept:?}");
        let woken: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE kind = 'task_signalled'")
                .fetch_one(&a.pool)
                .await
                .expect("events");
        assert_eq!(woken, N as i64, "one wake-up event per wait");
    }

    /// Four stores claim 80 tasks sharing a rate key (10 per 200 ms) side by side, as fast as
    /// they can: the attempts' claim times never show more starts than the bucket allows, a
    /// burst of 10 plus what refills in between. (Without the advisory lock the first round
    /// alone starts up to 40.)
    #[tokio::test]
    async fn rate_limits_hold_across_engines() {
        const LIMIT: u32 = 10;
        const PER_MS: i64 = 200;
        let (a, db) = store().await;
        let names: Vec<String> = (0..80).map(|i| format!("t{i}")).collect();
        let spec: Vec<(&str, &[&str], i32)> =
            names.iter().map(|n| (n.as_str(), &[][..], 0)).collect();
        let mut p = orbit_store::testkit::pipeline("rated", &spec);
        for t in &mut p.tasks {
            t.rate_limit = Some(orbit_core::pipeline::RateLimit {
                key: "api".into(),
                per: Duration::from_millis(PER_MS as u64),
                limit: LIMIT,
            });
        }
        let stored = a.save_pipeline(&p, None, Utc::now()).await.expect("save");
        a.create_run(orbit_store::testkit::new_run(
            &stored,
            serde_json::json!({}),
            Utc::now(),
        ))
        .await
        .expect("run");
        let mut engines = Vec::new();
        for e in 0..4 {
            let store = PgStore::connect(&db.url, 2).await.expect("connect");
            let p = p.clone();
            engines.push(tokio::spawn(async move {
                let mut held: Vec<ClaimedTask> = Vec::new();
                let started = std::time::Instant::now();
                while started.elapsed() < Duration::from_secs(3) {
                    let now = Utc::now();
                    let done: Vec<_> = held
                        .iter()
                        .map(|t| {
                            let ok =
                                orbit_core::transition::Outcome::Succeeded(serde_json::json!(1));
                            let mut f = orbit_store::testkit::finish(&p, t, ok, now);
                            f.started_at = t.claimed_at;
                            f
                        })
                        .collect();
                    let req = ClaimRequest::any(format!("engine-{e}"), 8);
                    held = loop {
                        match store.finish_and_claim(&done, Some(&req), now).await {
                            Ok(out) => break out.claimed,
                            Err(StoreError::Unavailable(_)) => continue,
                            Err(other) => panic!("commit: {other}"),
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        for e in engines {
            e.await.expect("engine");
        }
        let mut starts: Vec<DateTime<Utc>> =
            sqlx::query_scalar("SELECT started_at FROM attempts ORDER BY started_at")
                .fetch_all(&a.pool)
                .await
                .expect("attempts");
        starts.sort();
        assert!(starts.len() >= 40, "{} attempts in 3 s", starts.len());
        // Between any two starts i <= j the bucket gave at most LIMIT plus what refilled.
        for i in 0..starts.len() {
            for j in i..starts.len() {
                let span_us = (starts[j] - starts[i])
                    .num_microseconds()
                    .unwrap_or(i64::MAX);
                let allowed =
                    f64::from(LIMIT) + span_us as f64 * f64::from(LIMIT) / (PER_MS as f64 * 1000.0);
                let took = (j - i + 1) as f64;
                assert!(
                    took <= allowed + 1e-6,
                    "{took} attempts started within {span_us} µs; the bucket allows {allowed:.2}"
                );
            }
        }
    }
}
