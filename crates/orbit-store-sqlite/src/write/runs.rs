//! Runs: created with their task runs, cancelled, retried, deleted; dead letters purged.

use super::{
    Sql, exec, flush_events, flush_tally, insert_rows, int, opt_int, opt_text, run_state,
    run_task_states, task_state, text, uuid,
};
use crate::us;
use crate::writer::{Writer, sql};
use chrono::{DateTime, Utc};
use orbit_core::TaskState;
use orbit_store::plan::{self, Event, EventKind};
use orbit_store::tally::Tally;
use orbit_store::{NewRun, PurgedLetters, Result, StoreError};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use uuid::Uuid;

/// `Ok(new_id)`, or `Err(existing_id)` when the idempotency key already names a run.
pub async fn create_run(writer: &Writer, new: &NewRun<'_>) -> Result<Result<Uuid, (Uuid, bool)>> {
    let plan = plan::create(new)?;
    let p = &new.pipeline.pipeline;
    let now = us(new.now);
    let id = new.id;
    let key = new.idempotency_key.clone();
    // No cutoff (a TTL past the calendar's start): every earlier run keeps the key.
    let cutoff = plan.key_expired_before.map_or(i64::MIN, us);
    let hash = new.request_hash();
    let run = vec![
        text(id.to_string()),
        text(new.pipeline.id.to_string()),
        text(p.name.clone()),
        int(new.pipeline.version),
        text(new.input.to_string()),
        int(new.priority),
        opt_text(key.clone()),
        int(p.tasks.len() as i64),
        int(now),
        text(hash.clone()),
        text(new.triggered_by.as_str()),
        opt_text(plan.concurrency.as_ref().map(|c| c.0.clone())),
        int(plan.concurrency.as_ref().map_or(0, |c| c.1)),
        opt_text(new.parent.as_ref().map(|p| p.0.to_string())),
        opt_text(new.parent.as_ref().map(|p| p.1.clone())),
        int(plan.pending),
        opt_text(new.rerun.as_ref().map(|r| r.of.to_string())),
        opt_text(new.rerun.as_ref().map(|r| r.from.clone())),
    ];
    let (run_id, pipeline_id) = (text(id.to_string()), text(new.pipeline.id.to_string()));
    let mut tasks = Vec::with_capacity(plan.tasks.len() * 24);
    let run_keyed = int(i64::from(plan.concurrency.is_some()));
    for row in &plan.tasks {
        tasks.extend([
            text(row.id.to_string()),
            run_id.clone(),
            pipeline_id.clone(),
            text(row.name),
            int(row.seq),
            text(row.state.as_str()),
            int(row.priority),
            int(row.pending_needs),
            int(row.max_attempts),
            int(row.lease_ms),
            opt_int(row.ready_at.map(us)),
            int(now),
            text(row.task_type),
            text(row.queue),
            opt_text(row.concurrency.as_ref().map(|c| c.0.clone())),
            int(row.concurrency.as_ref().map_or(0, |c| c.1)),
            run_keyed.clone(),
            opt_text(row.rate.as_ref().map(|r| r.0.clone())),
            int(row.rate.as_ref().map_or(0, |r| r.1)),
            int(row.rate.as_ref().map_or(0, |r| r.2)),
            opt_text(row.child_keys.as_ref().map(Value::to_string)),
            opt_text(row.output.map(Value::to_string)),
            opt_text(row.origin.map(|o| o.to_string())),
            opt_int(row.origin.map(|_| now)),
        ]);
    }
    let (event, tally) = (plan.event, plan.tally);
    writer
        .transaction(move |t| {
            if let Some(key) = &key {
                exec(
                    t,
                    "UPDATE runs SET idempotency_key = NULL WHERE idempotency_key = ?1 AND created_at < ?2",
                    params![key, cutoff],
                )?;
            }
            if let Some(existing) = insert_run(t, &run, key.as_deref(), &hash)? {
                return Ok(Err(existing));
            }
            insert_rows(
                t,
                "INSERT INTO task_runs (id, run_id, pipeline_id, task_name, seq, state, priority, pending_needs, \
                 max_attempts, lease_ms, ready_at, updated_at, task_type, queue, concurrency_key, concurrency_limit, \
                 run_keyed, rate_key, rate_limit, rate_per_ms, map_item, output, origin, finished_at)",
                24,
                &tasks,
                "",
            )?;
            flush_events(t, &[event], now)?;
            flush_tally(t, &tally)?;
            Ok(Ok(id))
        })
        .await
}

/// The run row, unless its idempotency key names a run already: then that run, and whether it
/// was created for the same request.
fn insert_run(
    conn: &Connection,
    run: &[Sql],
    key: Option<&str>,
    hash: &str,
) -> Result<Option<(Uuid, bool)>> {
    let inserted = exec(
        conn,
        "INSERT INTO runs (id, pipeline_id, pipeline_name, pipeline_version, state, input, priority, idempotency_key, \
         tasks_total, tasks_pending, created_at, updated_at, request_hash, triggered_by, concurrency_key, concurrency_limit, \
         parent_run_id, parent_task, rerun_of, rerun_from) \
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7, ?8, ?16, ?9, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?17, ?18) \
         ON CONFLICT (idempotency_key) DO NOTHING",
        rusqlite::params_from_iter(run),
    )?;
    if inserted > 0 {
        return Ok(None);
    }
    let (existing, earlier): (String, Option<String>) = conn
        .prepare_cached("SELECT id, request_hash FROM runs WHERE idempotency_key = ?1")
        .and_then(|mut s| s.query_row([key], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(sql)?;
    // Runs from before request hashes were kept count as the same request.
    Ok(Some((uuid(&existing)?, earlier.is_none_or(|h| h == hash))))
}

pub async fn cancel_run(writer: &Writer, run: Uuid, now: DateTime<Utc>) -> Result<()> {
    let now = us(now);
    writer
        .transaction(move |t| {
            let cancel = plan::cancel(run, run_state(t, run)?)?;
            let mut tally = Tally::default();
            for (state, n) in run_task_states(t, run)? {
                if !state.is_terminal() {
                    tally.moved(state, TaskState::Cancelled, n);
                }
            }
            // A running attempt ends here: its record says so (its holder's late result is
            // fenced out).
            let mut stmt = t
                .prepare_cached(
                    "INSERT INTO attempts (task_run_id, attempt, run_id, task_name, worker, started_at, finished_at, outcome, error, log) \
                     SELECT id, attempt, run_id, task_name, COALESCE(lease_owner, ''), COALESCE(claimed_at, started_at, ?1), ?1, \
                     ?3, ?4, ?5 \
                     FROM task_runs WHERE run_id = ?2 AND state = 'running' ON CONFLICT DO NOTHING RETURNING started_at",
                )
                .map_err(sql)?;
            let started = stmt
                .query_map(
                    params![
                        now,
                        run.to_string(),
                        cancel.outcome.as_str(),
                        cancel.error,
                        cancel.log
                    ],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql)?;
            let at = |us| DateTime::from_timestamp_micros(us).unwrap_or_default();
            for s in started {
                tally.attempt(false, at(s), at(now));
            }
            exec(
                t,
                "UPDATE task_runs SET state = 'cancelled', error = ?3, finished_at = ?1, updated_at = ?1, \
                 lease_owner = NULL, lease_expires_at = NULL WHERE run_id = ?2 AND state IN (?4, ?5, ?6, ?7)",
                params![
                    now,
                    run.to_string(),
                    cancel.error,
                    cancel.unfinished[0],
                    cancel.unfinished[1],
                    cancel.unfinished[2],
                    cancel.unfinished[3]
                ],
            )?;
            exec(
                t,
                "UPDATE runs SET state = 'cancelled', tasks_pending = 0, finished_at = ?1, updated_at = ?1 WHERE id = ?2",
                params![now, run.to_string()],
            )?;
            flush_events(t, &[cancel.event], now)?;
            flush_tally(t, &tally)
        })
        .await
}

pub async fn requeue(
    writer: &Writer,
    run: Uuid,
    tasks: &[String],
    by: orbit_store::TriggeredBy,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    let now = us(now);
    let tasks = tasks.to_vec();
    writer
        .transaction(move |t| {
            let run_s = run.to_string();
            run_state(t, run)?;
            exec(
                t,
                "UPDATE runs SET triggered_by = ?1 WHERE id = ?2",
                params![by.as_str(), &run_s],
            )?;
            let mut requeued = Vec::new();
            let mut tally = Tally::default();
            for name in &tasks {
                let was: Option<String> = t
                    .prepare_cached("SELECT state FROM task_runs WHERE run_id = ?1 AND task_name = ?2")
                    .and_then(|mut s| s.query_row(params![&run_s, name], |r| r.get(0)).optional())
                    .map_err(sql)?;
                let now_state: Option<String> = t
                    .prepare_cached(
                        "UPDATE task_runs SET state = CASE WHEN pending_needs <= 0 THEN 'ready' ELSE 'waiting' END, \
                         ready_at = CASE WHEN pending_needs <= 0 THEN ?1 ELSE NULL END, attempt_base = attempt, \
                         error = NULL, output = NULL, finished_at = NULL, updated_at = ?1, \
                         park_kind = NULL, park_until = NULL, park_event = NULL, wake = NULL \
                         WHERE run_id = ?2 AND task_name = ?3 AND state IN (?4, ?5) RETURNING state",
                    )
                    .and_then(|mut s| {
                        s.query_row(
                            params![now, &run_s, name, plan::REQUEUEABLE[0], plan::REQUEUEABLE[1]],
                            |r| r.get(0),
                        )
                        .optional()
                    })
                    .map_err(sql)?;
                if let (Some(was), Some(now_state)) = (was, now_state) {
                    tally.moved(task_state(&was)?, task_state(&now_state)?, 1);
                    exec(
                        t,
                        "DELETE FROM dead_letters WHERE run_id = ?1 AND task_name = ?2",
                        params![&run_s, name],
                    )?;
                    requeued.push(name.clone());
                }
            }
            if !requeued.is_empty() {
                let still_dead: i64 = t
                    .prepare_cached("SELECT COUNT(*) FROM task_runs WHERE run_id = ?1 AND state = 'dead'")
                    .and_then(|mut s| s.query_row([&run_s], |r| r.get(0)))
                    .map_err(sql)?;
                exec(
                    t,
                    "UPDATE runs SET state = CASE WHEN started_at IS NULL THEN 'pending' ELSE 'running' END, \
                     tasks_pending = tasks_pending + ?1, tasks_dead = ?2, finished_at = NULL, updated_at = ?3 WHERE id = ?4",
                    params![requeued.len() as i64, still_dead, now, &run_s],
                )?;
                flush_events(t, &plan::requeued_events(run, &requeued), now)?;
                flush_tally(t, &tally)?;
            }
            Ok(requeued)
        })
        .await
}

/// One slice of deleting a settled run, in one short transaction: up to [`plan::DELETE_SLICE`] of
/// its task runs (with their attempts, dead letters and kept results) and events; the run row
/// goes with the last slice. `Ok(true)` once the run is gone. A run of 100,000 task runs is never
/// one long transaction, and the caller may pause between slices so claims go on meanwhile.
pub async fn delete_run_slice(writer: &Writer, id: Uuid, now: DateTime<Utc>) -> Result<bool> {
    writer
        .transaction(move |t| {
            let run = id.to_string();
            // Checked at each slice: the run may have been retried since the last one.
            let state = run_state(t, id)?;
            if !state.is_terminal() {
                return Err(StoreError::Conflict(format!(
                    "run {id} is {state}; cancel it before deleting it"
                )));
            }
            exec(
                t,
                "DELETE FROM task_results WHERE task_run_id IN \
                 (SELECT id FROM task_runs WHERE run_id = ?1 ORDER BY seq LIMIT ?2)",
                params![&run, plan::DELETE_SLICE],
            )?;
            let states = t
                .prepare_cached(
                    "DELETE FROM task_runs WHERE id IN \
                     (SELECT id FROM task_runs WHERE run_id = ?1 ORDER BY seq LIMIT ?2) RETURNING state",
                )
                .and_then(|mut s| {
                    s.query_map(params![&run, plan::DELETE_SLICE], |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(sql)?;
            let events = exec(
                t,
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE run_id = ?1 LIMIT ?2)",
                params![&run, plan::DELETE_EVENTS],
            )?;
            let states = states
                .iter()
                .map(|s| task_state(s))
                .collect::<Result<Vec<_>>>()?;
            let (tally, last) = plan::deleted_slice(&states, events as u64);
            if last {
                exec(t, "DELETE FROM runs WHERE id = ?1", [&run])?;
                let deleted = Event::global(EventKind::RunDeleted, json!({ "run": id }));
                flush_events(t, &[deleted], us(now))?;
            }
            flush_tally(t, &tally)?;
            Ok(last)
        })
        .await
}

/// Deletes dead letters created before `before`; reports the failed runs left without any.
pub async fn purge_dead_letters(writer: &Writer, before: DateTime<Utc>) -> Result<PurgedLetters> {
    let before = us(before);
    writer
        .transaction(move |t| {
            let runs = t
                .prepare_cached("DELETE FROM dead_letters WHERE created_at < ?1 RETURNING run_id")
                .and_then(|mut s| {
                    s.query_map([before], |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(sql)?;
            let entries = runs.len() as u64;
            let mut emptied = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for run in runs.into_iter().filter(|r| seen.insert(r.clone())) {
                let left: Option<String> = t
                    .prepare_cached(
                        "SELECT id FROM runs WHERE id = ?1 AND state = 'failed' \
                         AND NOT EXISTS (SELECT 1 FROM dead_letters WHERE run_id = ?1)",
                    )
                    .and_then(|mut s| s.query_row([&run], |r| r.get(0)).optional())
                    .map_err(sql)?;
                if let Some(id) = left {
                    emptied.push(uuid(&id)?);
                }
            }
            Ok(PurgedLetters {
                entries,
                runs: emptied,
            })
        })
        .await
}
