//! The write transactions. Batches travel as arrays (`UNNEST`), so every statement has one
//! shape whatever the batch size and stays prepared.
//!
//! Lock order: cancel, retry and delete lock the run's row first, then its task runs. The
//! engine's commit changes task runs first (the downstream ones it touches in id order, when
//! several) and the `runs` rows last, in id order: a run's row is the one row every worker on
//! that run changes, so it is held only through the commit. A cancel racing a commit on the same
//! run may still meet it in a cycle; PostgreSQL then aborts one, and the engine retries it.
//! Every transaction writes its counter rows (`task_counts`, `attempt_cells`) last of all.

mod finish;
mod parks;
mod registry;
mod runs;

pub use finish::*;
pub use parks::*;
pub use registry::*;
pub use runs::*;

use crate::{CHANGES, CHANNEL, unavailable};
use chrono::{DateTime, Utc};
use orbit_core::{RunState, TaskState};
use orbit_store::plan::Event;
use orbit_store::tally::Tally;
use orbit_store::{Cell, CellKey, Result, StoreError};
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::BTreeSet;
use uuid::Uuid;

type Tx = Transaction<'static, Postgres>;

async fn begin(pool: &PgPool) -> Result<Tx> {
    pool.begin().await.map_err(unavailable)
}

/// Writes the events of a transaction that moves no count.
async fn flush_events(conn: &mut PgConnection, events: &[Event], at: DateTime<Utc>) -> Result<()> {
    flush(conn, events, &Tally::default(), at).await
}

/// Writes a transaction's events and adds its changes to the counters, in one statement (one
/// round trip), the transaction's last: the counter rows are locked only through the commit.
/// Each connection writes its own shard of counter rows (its backend pid, modulo [`SHARDS`]) so
/// commits of different workers seldom meet on one; every transaction runs this one statement,
/// so rows of a shard are always taken in the same order and two that meet never wait in a
/// cycle. Live pages are woken when there are events.
async fn flush(
    conn: &mut PgConnection,
    events: &[Event],
    tally: &Tally,
    at: DateTime<Utc>,
) -> Result<()> {
    if events.is_empty() && tally.is_empty() {
        return Ok(());
    }
    let runs: Vec<Option<Uuid>> = events.iter().map(|e| e.run).collect();
    let tasks: Vec<Option<&str>> = events.iter().map(|e| e.task.as_deref()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let data: Vec<Option<&Value>> = events.iter().map(|e| e.data.as_ref()).collect();
    let (states, deltas): (Vec<&str>, Vec<i64>) =
        tally.states().map(|(s, n)| (s.as_str(), n)).unzip();
    let cells: Vec<(&CellKey, &Cell)> = tally.cells().collect();
    let col = |f: fn(&CellKey, &Cell) -> i64| -> Vec<i64> {
        cells.iter().map(|(k, c)| f(k, c)).collect()
    };
    sqlx::query(
        "WITH added AS (INSERT INTO events (run_id, task_name, kind, data, at) \
           SELECT r, t, k, d, $5 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[]) AS v(r, t, k, d)), \
         counted AS (INSERT INTO task_counts (state, shard, n) \
           SELECT s, (pg_backend_pid() % $9)::smallint, d FROM UNNEST($7::text[], $8::bigint[]) AS v(s, d) \
           ON CONFLICT (state, shard) DO UPDATE SET n = task_counts.n + excluded.n), \
         timed AS (INSERT INTO attempt_cells (minute, shard, ok, bucket, attempts, sum_us, max_us) \
           SELECT m, (pg_backend_pid() % $9)::smallint, ok, b, a, s, x \
           FROM UNNEST($10::bigint[], $11::bool[], $12::smallint[], $13::bigint[], $14::bigint[], $15::bigint[]) AS v(m, ok, b, a, s, x) \
           ON CONFLICT (minute, shard, ok, bucket) DO UPDATE SET attempts = attempt_cells.attempts + excluded.attempts, \
           sum_us = attempt_cells.sum_us + excluded.sum_us, max_us = GREATEST(attempt_cells.max_us, excluded.max_us)) \
         SELECT pg_notify($6, '') WHERE cardinality($3::text[]) > 0",
    )
    .bind(&runs)
    .bind(&tasks)
    .bind(&kinds)
    .bind(&data)
    .bind(at)
    .bind(CHANGES)
    .bind(&states)
    .bind(&deltas)
    .bind(SHARDS)
    .bind(col(|k, _| k.minute))
    .bind(cells.iter().map(|(k, _)| k.ok).collect::<Vec<bool>>())
    .bind(cells.iter().map(|(k, _)| k.bucket).collect::<Vec<i16>>())
    .bind(col(|_, c| c.attempts))
    .bind(col(|_, c| c.sum_us))
    .bind(col(|_, c| c.max_us))
    .execute(conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// How many rows each count is spread over.
const SHARDS: i32 = 16;

fn task_state(s: &str) -> Result<TaskState> {
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("task state: {e}")))
}

/// The advisory lock class of signal names ("orsg"): delivering a signal and parking a wait
/// for it take the name's lock, so neither misses the other.
const SIGNAL_LOCKS: i32 = 0x6f72_7367;

async fn lock_signal(conn: &mut PgConnection, name: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(SIGNAL_LOCKS)
        .bind(name)
        .execute(conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

async fn notify(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Locks the runs rows first, in id order (see the module's lock order).
async fn lock_runs(conn: &mut PgConnection, runs: &BTreeSet<Uuid>) -> Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = runs.iter().copied().collect();
    sqlx::query("SELECT id FROM runs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(&ids)
        .fetch_all(conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Locks the run's row for the transaction and reads its state.
async fn locked_run_state(tx: &mut PgConnection, run: Uuid) -> Result<RunState> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM runs WHERE id = $1 FOR UPDATE")
            .bind(run)
            .fetch_optional(tx)
            .await
            .map_err(unavailable)?;
    state
        .ok_or_else(|| StoreError::NotFound(format!("run {run}")))?
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("run state: {e}")))
}
