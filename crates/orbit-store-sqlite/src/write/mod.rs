//! The write transactions. Each public function here is one `BEGIN IMMEDIATE … COMMIT`.

mod finish;
mod registry;
mod runs;

pub use finish::*;
pub use registry::*;
pub use runs::*;

use crate::unavailable;
use orbit_core::RunState;
use orbit_store::plan::Event;
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
