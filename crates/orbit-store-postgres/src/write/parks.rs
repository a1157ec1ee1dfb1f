//! Waking parked task runs from outside: a signal delivered, a decision recorded.

use super::{begin, flush, lock_signal, notify};
use crate::unavailable;
use chrono::{DateTime, Utc};
use orbit_core::TaskState;
use orbit_store::plan::{Event, EventKind};
use orbit_store::tally::Tally;
use orbit_store::{Decision, Result, SignalOutcome, StoreError, parks};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

pub async fn signal(
    pool: &PgPool,
    name: &str,
    payload: &Value,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<SignalOutcome> {
    let mut tx = begin(pool).await?;
    // The name's lock: a wait parking on it now has either committed (and is found here) or
    // will find what this keeps.
    lock_signal(&mut tx, name).await?;
    let wake = parks::signal_wake(name, payload);
    let delivered: Vec<(Uuid, String)> = sqlx::query_as(
        "UPDATE task_runs SET state = 'ready', ready_at = $1, wake = $2, updated_at = $1 \
         WHERE state = 'parked' AND park_event = $3 RETURNING run_id, task_name",
    )
    .bind(now)
    .bind(&wake)
    .bind(name)
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    let mut out = SignalOutcome {
        delivered,
        kept: false,
    };
    if out.delivered.is_empty() {
        sqlx::query(
            "INSERT INTO signals (name, payload, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(payload)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        out.kept = true;
    } else {
        let events = parks::delivered_events(name, &out.delivered);
        let mut tally = Tally::default();
        tally.moved(
            TaskState::Parked,
            TaskState::Ready,
            out.delivered.len() as i64,
        );
        flush(&mut tx, &events, &tally, now).await?;
        notify(&mut tx).await?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(out)
}

pub async fn decide(
    pool: &PgPool,
    run: Uuid,
    task: &str,
    decision: &Decision,
    now: DateTime<Utc>,
) -> Result<()> {
    let wake = parks::decision_wake(decision, now);
    let mut tx = begin(pool).await?;
    let changed = sqlx::query(
        "UPDATE task_runs SET state = 'ready', ready_at = $1, wake = $2, updated_at = $1 \
         WHERE run_id = $3 AND task_name = $4 AND state = 'parked' AND park_kind = 'approval'",
    )
    .bind(now)
    .bind(&wake)
    .bind(run)
    .bind(task)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?
    .rows_affected();
    if changed == 0 {
        return Err(StoreError::Conflict(format!(
            "task `{task}` of run {run} is not waiting for an approval"
        )));
    }
    let mut tally = Tally::default();
    tally.moved(TaskState::Parked, TaskState::Ready, 1);
    flush(
        &mut tx,
        &[Event::task(run, task, EventKind::TaskDecided, Some(wake))],
        &tally,
        now,
    )
    .await?;
    notify(&mut tx).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(())
}
