//! The write transactions. Each public function here is one `BEGIN IMMEDIATE … COMMIT`, run
//! whole on the [`Writer`]'s thread.

mod finish;
mod parks;
mod registry;
mod runs;

pub use finish::*;
pub use parks::*;
pub use registry::*;
pub use runs::*;

use crate::writer::{sql, values_sql};
use orbit_core::{RunState, TaskState};
use orbit_store::plan::Event;
use orbit_store::tally::Tally;
use orbit_store::{Result, StoreError};
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, Params, params_from_iter};
use serde_json::Value;
use uuid::Uuid;

/// Most rows in one multi-row statement (SQLite allows 32766 bound values).
const CHUNK: usize = 200;

/// Runs one cached statement; how many rows it changed.
fn exec(conn: &Connection, text: &str, params: impl Params) -> Result<usize> {
    conn.prepare_cached(text)
        .and_then(|mut s| s.execute(params))
        .map_err(sql)
}

/// A multi-row `INSERT` of `rows` (each `columns` values, flattened) in chunks of [`CHUNK`].
fn insert_rows(
    conn: &Connection,
    prefix: &str,
    columns: usize,
    values: &[Sql],
    suffix: &str,
) -> Result<()> {
    for chunk in values.chunks(CHUNK * columns) {
        let text = values_sql(prefix, columns, chunk.len() / columns, suffix);
        exec(conn, &text, params_from_iter(chunk))?;
    }
    Ok(())
}

fn text(s: impl Into<String>) -> Sql {
    Sql::Text(s.into())
}

fn opt_text(s: Option<impl Into<String>>) -> Sql {
    s.map_or(Sql::Null, |s| Sql::Text(s.into()))
}

fn int(i: impl Into<i64>) -> Sql {
    Sql::Integer(i.into())
}

fn opt_int(i: Option<i64>) -> Sql {
    i.map_or(Sql::Null, Sql::Integer)
}

/// Writes the events of one transaction together.
fn flush_events(conn: &Connection, events: &[Event], at: i64) -> Result<()> {
    let mut values = Vec::with_capacity(events.len() * 5);
    for e in events {
        values.extend([
            opt_text(e.run.map(|r| r.to_string())),
            opt_text(e.task.clone()),
            text(e.kind.as_str()),
            opt_text(e.data.as_ref().map(Value::to_string)),
            int(at),
        ]);
    }
    insert_rows(
        conn,
        "INSERT INTO events (run_id, task_name, kind, data, at)",
        5,
        &values,
        "",
    )
}

/// Adds a commit's changes to the counters; the transaction's last write.
fn flush_tally(conn: &Connection, tally: &Tally) -> Result<()> {
    let states: Vec<Sql> = tally
        .states()
        .flat_map(|(state, n)| [text(state.as_str()), int(n)])
        .collect();
    insert_rows(
        conn,
        "INSERT INTO task_counts (state, n)",
        2,
        &states,
        " ON CONFLICT (state) DO UPDATE SET n = n + excluded.n",
    )?;
    let cells: Vec<Sql> = tally
        .cells()
        .flat_map(|(k, c)| {
            [
                int(k.minute),
                int(k.ok),
                int(k.bucket),
                int(c.attempts),
                int(c.sum_us),
                int(c.max_us),
            ]
        })
        .collect();
    insert_rows(
        conn,
        "INSERT INTO attempt_cells (minute, ok, bucket, attempts, sum_us, max_us)",
        6,
        &cells,
        " ON CONFLICT (minute, ok, bucket) DO UPDATE SET attempts = attempts + excluded.attempts, \
         sum_us = sum_us + excluded.sum_us, max_us = MAX(max_us, excluded.max_us)",
    )
}

/// How many task runs of `run` are in each state.
fn run_task_states(conn: &Connection, run: Uuid) -> Result<Vec<(TaskState, i64)>> {
    let mut stmt = conn
        .prepare_cached("SELECT state, COUNT(*) FROM task_runs WHERE run_id = ?1 GROUP BY state")
        .map_err(sql)?;
    let rows = stmt
        .query_map([run.to_string()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(sql)?;
    rows.map(|row| {
        let (state, n) = row.map_err(sql)?;
        Ok((task_state(&state)?, n))
    })
    .collect()
}

fn task_state(s: &str) -> Result<TaskState> {
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("task state: {e}")))
}

fn uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The run's state, read inside the (immediate, so already exclusive) write transaction.
fn run_state(conn: &Connection, run: Uuid) -> Result<RunState> {
    let state: Option<String> = conn
        .prepare_cached("SELECT state FROM runs WHERE id = ?1")
        .and_then(|mut s| s.query_row([run.to_string()], |r| r.get(0)).optional())
        .map_err(sql)?;
    state
        .ok_or_else(|| StoreError::NotFound(format!("run {run}")))?
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("run state: {e}")))
}
