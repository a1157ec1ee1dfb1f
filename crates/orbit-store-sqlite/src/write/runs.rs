//! Runs: created with their task runs, cancelled, retried, deleted; dead letters purged.

use super::{CHUNK, Tx, begin, flush_events, flush_tally, run_state, run_task_states, task_state};
use crate::{unavailable, us};
use chrono::{DateTime, Utc};
use orbit_core::TaskState;
use orbit_store::plan::{self, Event, EventKind, NewTaskRow};
use orbit_store::tally::Tally;
use orbit_store::{NewRun, PurgedLetters, Result, StoreError};
use serde_json::json;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use uuid::Uuid;

/// `Ok(new_id)`, or `Err(existing_id)` when the idempotency key already names a run.
pub async fn create_run(pool: &SqlitePool, new: &NewRun<'_>) -> Result<Result<Uuid, (Uuid, bool)>> {
    let plan = plan::create(new);
    let mut tx = begin(pool).await?;
    if let Some(key) = &new.idempotency_key {
        // No cutoff (a TTL past the calendar's start): every earlier run keeps the key.
        let cutoff = plan.key_expired_before.map_or(i64::MIN, us);
        sqlx::query(
            "UPDATE runs SET idempotency_key = NULL WHERE idempotency_key = ?1 AND created_at < ?2",
        )
        .bind(key)
        .bind(cutoff)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    }
    if let Some(existing) = insert_run(&mut tx, new).await? {
        return Ok(Err(existing));
    }
    insert_tasks(&mut tx, new, &plan.tasks).await?;
    flush_events(&mut tx, &[plan.event], us(new.now)).await?;
    flush_tally(&mut tx, &plan.tally).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(Ok(new.id))
}

/// The run row, unless its idempotency key names a run already: then that run, and whether it
/// was created for the same request.
async fn insert_run(tx: &mut Tx, new: &NewRun<'_>) -> Result<Option<(Uuid, bool)>> {
    let p = &new.pipeline.pipeline;
    let now = us(new.now);
    let inserted = sqlx::query(
        "INSERT INTO runs (id, pipeline_id, pipeline_name, pipeline_version, state, input, priority, idempotency_key, \
         tasks_total, tasks_pending, created_at, updated_at, request_hash, triggered_by) \
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7, ?8, ?8, ?9, ?9, ?10, ?11) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(new.id.to_string())
    .bind(new.pipeline.id.to_string())
    .bind(&p.name)
    .bind(new.pipeline.version)
    .bind(new.input.to_string())
    .bind(new.priority)
    .bind(new.idempotency_key.as_deref())
    .bind(p.tasks.len() as i64)
    .bind(now)
    .bind(new.request_hash())
    .bind(new.triggered_by.as_str())
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    if inserted.rows_affected() > 0 {
        return Ok(None);
    }
    let (existing, hash): (String, Option<String>) =
        sqlx::query_as("SELECT id, request_hash FROM runs WHERE idempotency_key = ?1")
            .bind(new.idempotency_key.as_deref())
            .fetch_one(&mut **tx)
            .await
            .map_err(unavailable)?;
    let existing = Uuid::parse_str(&existing).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    // Runs from before request hashes were kept count as the same request.
    Ok(Some((
        existing,
        hash.is_none_or(|h| h == new.request_hash()),
    )))
}

/// The planned task runs, in chunked multi-row inserts.
async fn insert_tasks(tx: &mut Tx, new: &NewRun<'_>, rows: &[NewTaskRow<'_>]) -> Result<()> {
    let pipeline_id = new.pipeline.id.to_string();
    let run_id = new.id.to_string();
    let now = us(new.now);
    for chunk in rows.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO task_runs (id, run_id, pipeline_id, task_name, seq, state, priority, pending_needs, \
             max_attempts, lease_ms, ready_at, updated_at, task_type, queue) ",
        );
        q.push_values(chunk, |mut b, row| {
            b.push_bind(row.id.to_string())
                .push_bind(&run_id)
                .push_bind(&pipeline_id)
                .push_bind(row.name)
                .push_bind(row.seq)
                .push_bind(row.state.as_str())
                .push_bind(row.priority)
                .push_bind(row.pending_needs)
                .push_bind(row.max_attempts)
                .push_bind(row.lease_ms)
                .push_bind(row.ready_at.map(us))
                .push_bind(now)
                .push_bind(row.task_type)
                .push_bind(row.queue);
        });
        q.build()
            .persistent(chunk.len() <= 16)
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

pub async fn cancel_run(pool: &SqlitePool, run: Uuid, now: DateTime<Utc>) -> Result<()> {
    let now = us(now);
    let mut tx = begin(pool).await?;
    let cancel = plan::cancel(run, run_state(&mut tx, run).await?)?;
    let mut tally = Tally::default();
    for (state, n) in run_task_states(&mut tx, run).await? {
        if !state.is_terminal() {
            tally.moved(state, TaskState::Cancelled, n);
        }
    }
    // A running attempt ends here: its record says so (its holder's late result is fenced out).
    let started: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO attempts (task_run_id, attempt, run_id, task_name, worker, started_at, finished_at, outcome, error, log) \
         SELECT id, attempt, run_id, task_name, COALESCE(lease_owner, ''), COALESCE(claimed_at, started_at, ?1), ?1, \
         ?3, ?4, ?5 \
         FROM task_runs WHERE run_id = ?2 AND state = 'running' ON CONFLICT DO NOTHING RETURNING started_at",
    )
    .bind(now)
    .bind(run.to_string())
    .bind(cancel.outcome.as_str())
    .bind(cancel.error)
    .bind(cancel.log)
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    let at = |us| DateTime::from_timestamp_micros(us).unwrap_or_default();
    for s in started {
        tally.attempt(false, at(s), at(now));
    }
    sqlx::query(
        "UPDATE task_runs SET state = 'cancelled', error = ?3, finished_at = ?1, updated_at = ?1, \
         lease_owner = NULL, lease_expires_at = NULL WHERE run_id = ?2 AND state IN (?4, ?5, ?6)",
    )
    .bind(now)
    .bind(run.to_string())
    .bind(cancel.error)
    .bind(cancel.unfinished[0])
    .bind(cancel.unfinished[1])
    .bind(cancel.unfinished[2])
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    sqlx::query("UPDATE runs SET state = 'cancelled', tasks_pending = 0, finished_at = ?1, updated_at = ?1 WHERE id = ?2")
        .bind(now)
        .bind(run.to_string())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    flush_events(&mut tx, &[cancel.event], now).await?;
    flush_tally(&mut tx, &tally).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(())
}

pub async fn requeue(
    pool: &SqlitePool,
    run: Uuid,
    tasks: &[String],
    by: orbit_store::TriggeredBy,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    let now = us(now);
    let run_s = run.to_string();
    let mut tx = begin(pool).await?;
    run_state(&mut tx, run).await?;
    sqlx::query("UPDATE runs SET triggered_by = ?1 WHERE id = ?2")
        .bind(by.as_str())
        .bind(&run_s)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    let mut requeued = Vec::new();
    let mut tally = Tally::default();
    for name in tasks {
        let was: Option<String> =
            sqlx::query_scalar("SELECT state FROM task_runs WHERE run_id = ?1 AND task_name = ?2")
                .bind(&run_s)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
        let now_state: Option<String> = sqlx::query_scalar(
            "UPDATE task_runs SET state = CASE WHEN pending_needs <= 0 THEN 'ready' ELSE 'waiting' END, \
             ready_at = CASE WHEN pending_needs <= 0 THEN ?1 ELSE NULL END, attempt_base = attempt, \
             error = NULL, output = NULL, finished_at = NULL, updated_at = ?1 \
             WHERE run_id = ?2 AND task_name = ?3 AND state IN (?4, ?5) RETURNING state",
        )
        .bind(now)
        .bind(&run_s)
        .bind(name)
        .bind(plan::REQUEUEABLE[0])
        .bind(plan::REQUEUEABLE[1])
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        if let (Some(was), Some(now_state)) = (was, now_state) {
            tally.moved(task_state(&was)?, task_state(&now_state)?, 1);
            sqlx::query("DELETE FROM dead_letters WHERE run_id = ?1 AND task_name = ?2")
                .bind(&run_s)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            requeued.push(name.clone());
        }
    }
    if !requeued.is_empty() {
        let still_dead: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM task_runs WHERE run_id = ?1 AND state = 'dead'",
        )
        .bind(&run_s)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query(
            "UPDATE runs SET state = CASE WHEN started_at IS NULL THEN 'pending' ELSE 'running' END, \
             tasks_pending = tasks_pending + ?1, tasks_dead = ?2, finished_at = NULL, updated_at = ?3 WHERE id = ?4",
        )
        .bind(requeued.len() as i64)
        .bind(still_dead)
        .bind(now)
        .bind(&run_s)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        flush_events(&mut tx, &plan::requeued_events(run, &requeued), now).await?;
        flush_tally(&mut tx, &tally).await?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(requeued)
}

/// One slice of deleting a settled run, in one short transaction: up to [`plan::DELETE_SLICE`] of
/// its task runs (with their attempts, dead letters and kept results) and events; the run row
/// goes with the last slice. `Ok(true)` once the run is gone. A run of 100,000 task runs is never
/// one long transaction, and the caller may pause between slices so claims go on meanwhile.
pub async fn delete_run_slice(pool: &SqlitePool, id: Uuid, now: DateTime<Utc>) -> Result<bool> {
    let run = id.to_string();
    let mut tx = begin(pool).await?;
    // Checked at each slice: the run may have been retried since the last one.
    let state = run_state(&mut tx, id).await?;
    if !state.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "run {id} is {state}; cancel it before deleting it"
        )));
    }
    sqlx::query(
        "DELETE FROM task_results WHERE task_run_id IN \
         (SELECT id FROM task_runs WHERE run_id = ?1 ORDER BY seq LIMIT ?2)",
    )
    .bind(&run)
    .bind(plan::DELETE_SLICE)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    let states: Vec<String> = sqlx::query_scalar(
        "DELETE FROM task_runs WHERE id IN \
         (SELECT id FROM task_runs WHERE run_id = ?1 ORDER BY seq LIMIT ?2) RETURNING state",
    )
    .bind(&run)
    .bind(plan::DELETE_SLICE)
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    let events = sqlx::query(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE run_id = ?1 LIMIT ?2)",
    )
    .bind(&run)
    .bind(plan::DELETE_EVENTS)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    let states = states
        .iter()
        .map(|s| task_state(s))
        .collect::<Result<Vec<_>>>()?;
    let (tally, last) = plan::deleted_slice(&states, events.rows_affected());
    if last {
        sqlx::query("DELETE FROM runs WHERE id = ?1")
            .bind(&run)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let deleted = Event::global(EventKind::RunDeleted, json!({ "run": id }));
        flush_events(&mut tx, &[deleted], us(now)).await?;
    }
    flush_tally(&mut tx, &tally).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(last)
}

/// Deletes dead letters created before `before`; reports the failed runs left without any.
pub async fn purge_dead_letters(pool: &SqlitePool, before: DateTime<Utc>) -> Result<PurgedLetters> {
    let mut tx = begin(pool).await?;
    let runs: Vec<String> =
        sqlx::query_scalar("DELETE FROM dead_letters WHERE created_at < ?1 RETURNING run_id")
            .bind(us(before))
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
    let entries = runs.len() as u64;
    let mut emptied = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for run in runs.into_iter().filter(|r| seen.insert(r.clone())) {
        let left: Option<String> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE id = ?1 AND state = 'failed'              AND NOT EXISTS (SELECT 1 FROM dead_letters WHERE run_id = ?1)",
        )
        .bind(&run)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        if let Some(id) = left {
            emptied.push(Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(PurgedLetters {
        entries,
        runs: emptied,
    })
}
