//! Waking parked task runs from outside: a signal delivered, a decision recorded.

use super::{exec, flush_events, flush_tally};
use crate::us;
use crate::writer::{Writer, sql};
use chrono::{DateTime, Utc};
use orbit_core::TaskState;
use orbit_store::plan::{Event, EventKind};
use orbit_store::tally::Tally;
use orbit_store::{Decision, Result, SignalOutcome, StoreError, parks};
use rusqlite::params;
use serde_json::Value;
use uuid::Uuid;

pub async fn signal(
    writer: &Writer,
    name: &str,
    payload: &Value,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<SignalOutcome> {
    let (name, payload) = (name.to_owned(), payload.to_string());
    let (expires_at, now) = (us(expires_at), us(now));
    writer
        .transaction(move |t| {
            let wake = parks::signal_wake_text(&name, &payload);
            let mut stmt = t
                .prepare_cached(
                    "UPDATE task_runs SET state = 'ready', ready_at = ?1, wake = ?2, updated_at = ?1 \
                     WHERE state = 'parked' AND park_event = ?3 RETURNING run_id, task_name",
                )
                .map_err(sql)?;
            let mut rows = stmt.query(params![now, wake, name]).map_err(sql)?;
            let mut out = SignalOutcome::default();
            while let Some(row) = rows.next().map_err(sql)? {
                let run: String = row.get(0).map_err(sql)?;
                out.delivered.push((super::uuid(&run)?, row.get(1).map_err(sql)?));
            }
            drop(rows);
            drop(stmt);
            if out.delivered.is_empty() {
                exec(
                    t,
                    "INSERT INTO signals (name, payload, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                    params![name, payload, now, expires_at],
                )?;
                out.kept = true;
                return Ok(out);
            }
            flush_events(t, &parks::delivered_events(&name, &out.delivered), now)?;
            let mut tally = Tally::default();
            tally.moved(TaskState::Parked, TaskState::Ready, out.delivered.len() as i64);
            flush_tally(t, &tally)?;
            Ok(out)
        })
        .await
}

pub async fn decide(
    writer: &Writer,
    run: Uuid,
    task: &str,
    decision: &Decision,
    now: DateTime<Utc>,
) -> Result<()> {
    let wake = parks::decision_wake(decision, now);
    let task = task.to_owned();
    let now = us(now);
    writer
        .transaction(move |t| {
            let changed = exec(
                t,
                "UPDATE task_runs SET state = 'ready', ready_at = ?1, wake = ?2, updated_at = ?1 \
                 WHERE run_id = ?3 AND task_name = ?4 AND state = 'parked' AND park_kind = 'approval'",
                params![now, wake.to_string(), run.to_string(), task],
            )?;
            if changed == 0 {
                return Err(StoreError::Conflict(format!(
                    "task `{task}` of run {run} is not waiting for an approval"
                )));
            }
            flush_events(
                t,
                &[Event::task(run, &task, EventKind::TaskDecided, Some(wake))],
                now,
            )?;
            let mut tally = Tally::default();
            tally.moved(TaskState::Parked, TaskState::Ready, 1);
            flush_tally(t, &tally)
        })
        .await
}
