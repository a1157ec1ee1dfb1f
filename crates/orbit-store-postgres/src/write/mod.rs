//! The write transactions. Batches travel as arrays (`UNNEST`), so every statement has one
//! shape whatever the batch size and stays prepared.
//!
//! Lock order: cancel, retry and delete lock the run's row first, then its task runs. The
//! engine's commit changes task runs first (the downstream ones it touches in id order, when
//! several) and the `runs` rows last, in id order: a run's row is the one row every worker on
//! that run changes, so it is held only through the commit. A cancel racing a commit on the same
//! run may still meet it in a cycle; PostgreSQL then aborts one, and the engine retries it.

mod finish;
mod registry;
mod runs;

pub use finish::*;
pub use registry::*;
pub use runs::*;

use crate::{CHANGES, CHANNEL, unavailable};
use chrono::{DateTime, Utc};
use orbit_core::RunState;
use orbit_store::plan::Event;
use orbit_store::{Result, StoreError};
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::BTreeSet;
use uuid::Uuid;

type Tx = Transaction<'static, Postgres>;

async fn begin(pool: &PgPool) -> Result<Tx> {
    pool.begin().await.map_err(unavailable)
}

/// Writes the events of one transaction together, and wakes the live pages.
async fn flush_events(conn: &mut PgConnection, events: &[Event], at: DateTime<Utc>) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let runs: Vec<Option<Uuid>> = events.iter().map(|e| e.run).collect();
    let tasks: Vec<Option<&str>> = events.iter().map(|e| e.task.as_deref()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let data: Vec<Option<&Value>> = events.iter().map(|e| e.data.as_ref()).collect();
    // Live pages wait on the notification; one statement, so it costs no extra round trip.
    sqlx::query(
        "WITH added AS (INSERT INTO events (run_id, task_name, kind, data, at) \
         SELECT r, t, k, d, $5 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[]) AS v(r, t, k, d)) \
         SELECT pg_notify($6, '')",
    )
    .bind(&runs)
    .bind(&tasks)
    .bind(&kinds)
    .bind(&data)
    .bind(at)
    .bind(CHANGES)
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
