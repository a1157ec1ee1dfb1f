//! The write transactions. Each public function here is one `BEGIN IMMEDIATE … COMMIT`.

mod finish;
mod registry;
mod runs;

pub use finish::*;
pub use registry::*;
pub use runs::*;

use crate::unavailable;
use orbit_core::{RunState, TaskState};
use orbit_store::plan::Event;
use orbit_store::tally::Tally;
use orbit_store::{Result, StoreError};
use serde_json::Value;
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use uuid::Uuid;

type Tx = sqlx::Transaction<'static, Sqlite>;

async fn begin(pool: &SqlitePool) -> Result<Tx> {
    pool.begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(unavailable)
}

/// Most rows in one multi-row statement (SQLite allows 32766 bound values).
const CHUNK: usize = 200;

/// Writes the events of one transaction together.
async fn flush_events(conn: &mut SqliteConnection, events: &[Event], at: i64) -> Result<()> {
    for chunk in events.chunks(CHUNK) {
        let mut q =
            QueryBuilder::<Sqlite>::new("INSERT INTO events (run_id, task_name, kind, data, at) ");
        q.push_values(chunk, |mut b, e| {
            b.push_bind(e.run.map(|r| r.to_string()))
                .push_bind(e.task.clone())
                .push_bind(e.kind.as_str())
                .push_bind(e.data.as_ref().map(Value::to_string))
                .push_bind(at);
        });
        q.build()
            .persistent(chunk.len() <= 16)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Adds a commit's changes to the counters; the transaction's last write.
async fn flush_tally(conn: &mut SqliteConnection, tally: &Tally) -> Result<()> {
    if tally.states().next().is_some() {
        let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO task_counts (state, n) ");
        q.push_values(tally.states(), |mut b, (state, n)| {
            b.push_bind(state.as_str()).push_bind(n);
        });
        q.push(" ON CONFLICT (state) DO UPDATE SET n = n + excluded.n");
        q.build().execute(&mut *conn).await.map_err(unavailable)?;
    }
    for chunk in tally.cells().collect::<Vec<_>>().chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO attempt_cells (minute, ok, bucket, attempts, sum_us, max_us) ",
        );
        q.push_values(chunk, |mut b, (k, c)| {
            b.push_bind(k.minute)
                .push_bind(k.ok)
                .push_bind(k.bucket)
                .push_bind(c.attempts)
                .push_bind(c.sum_us)
                .push_bind(c.max_us);
        });
        q.push(
            " ON CONFLICT (minute, ok, bucket) DO UPDATE SET attempts = attempts + excluded.attempts, \
             sum_us = sum_us + excluded.sum_us, max_us = MAX(max_us, excluded.max_us)",
        );
        q.build()
            .persistent(chunk.len() <= 4)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

/// How many task runs of `run` are in each state.
async fn run_task_states(conn: &mut SqliteConnection, run: Uuid) -> Result<Vec<(TaskState, i64)>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM task_runs WHERE run_id = ?1 GROUP BY state")
            .bind(run.to_string())
            .fetch_all(conn)
            .await
            .map_err(unavailable)?;
    rows.into_iter()
        .map(|(state, n)| Ok((task_state(&state)?, n)))
        .collect()
}

fn task_state(s: &str) -> Result<TaskState> {
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("task state: {e}")))
}

/// The run's state, read inside the (immediate, so already exclusive) write transaction.
async fn run_state(tx: &mut SqliteConnection, run: Uuid) -> Result<RunState> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM runs WHERE id = ?1")
        .bind(run.to_string())
        .fetch_optional(tx)
        .await
        .map_err(unavailable)?;
    state
        .ok_or_else(|| StoreError::NotFound(format!("run {run}")))?
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("run state: {e}")))
}
