//! Runs: created with their task runs, cancelled, retried, deleted; dead letters purged.

use super::{Tx, begin, flush, locked_run_state, notify, task_state};
use crate::unavailable;
use chrono::{DateTime, Utc};
use orbit_core::TaskState;
use orbit_store::plan::{self, Event, EventKind, NewTaskRow};
use orbit_store::tally::Tally;
use orbit_store::{NewRun, PurgedLetters, Result, StoreError};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// `Ok(new_id)`, or `Err((existing_id, same_request))` when the idempotency key already names a
/// run.
pub async fn create_run(pool: &PgPool, new: &NewRun<'_>) -> Result<Result<Uuid, (Uuid, bool)>> {
    let plan = plan::create(new)?;
    let mut tx = begin(pool).await?;
    if let (Some(key), Some(cutoff)) = (&new.idempotency_key, plan.key_expired_before) {
        sqlx::query(
            "UPDATE runs SET idempotency_key = NULL WHERE idempotency_key = $1 AND created_at < $2",
        )
        .bind(key)
        .bind(cutoff)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    }
    if let Some(existing) =
        insert_run(&mut tx, new, plan.concurrency.as_ref(), plan.pending).await?
    {
        return Ok(Err(existing));
    }
    insert_tasks(&mut tx, new, &plan.tasks, plan.concurrency.is_some()).await?;
    flush(&mut tx, &[plan.event], &plan.tally, new.now).await?;
    if plan.any_ready {
        notify(&mut tx).await?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(Ok(new.id))
}

/// The run row, unless its idempotency key names a run already: then that run, and whether it
/// was created for the same request.
async fn insert_run(
    tx: &mut Tx,
    new: &NewRun<'_>,
    concurrency: Option<&(String, i32)>,
    pending: i64,
) -> Result<Option<(Uuid, bool)>> {
    let p = &new.pipeline.pipeline;
    let inserted = sqlx::query(
        "INSERT INTO runs (id, pipeline_id, pipeline_name, pipeline_version, state, input, priority, idempotency_key, \
         tasks_total, tasks_pending, created_at, updated_at, request_hash, triggered_by, concurrency_key, concurrency_limit, \
         parent_run_id, parent_task, rerun_of, rerun_from) \
         VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $16, $9, $9, $10, $11, $12, $13, $14, $15, $17, $18) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(new.id)
    .bind(new.pipeline.id)
    .bind(&p.name)
    .bind(new.pipeline.version)
    .bind(&new.input)
    .bind(new.priority)
    .bind(new.idempotency_key.as_deref())
    .bind(p.tasks.len() as i64)
    .bind(new.now)
    .bind(new.request_hash())
    .bind(new.triggered_by.as_str())
    .bind(concurrency.map(|c| c.0.as_str()))
    .bind(concurrency.map_or(0, |c| c.1))
    .bind(new.parent.as_ref().map(|p| p.0))
    .bind(new.parent.as_ref().map(|p| p.1.as_str()))
    .bind(pending)
    .bind(new.rerun.as_ref().map(|r| r.of))
    .bind(new.rerun.as_ref().map(|r| r.from.as_str()))
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    if inserted.rows_affected() > 0 {
        return Ok(None);
    }
    let (existing, hash): (Uuid, Option<String>) =
        sqlx::query_as("SELECT id, request_hash FROM runs WHERE idempotency_key = $1")
            .bind(new.idempotency_key.as_deref())
            .fetch_one(&mut **tx)
            .await
            .map_err(unavailable)?;
    // Runs from before request hashes were kept count as the same request.
    Ok(Some((
        existing,
        hash.is_none_or(|h| h == new.request_hash()),
    )))
}

/// The planned task runs, in one statement over arrays.
async fn insert_tasks(
    tx: &mut Tx,
    new: &NewRun<'_>,
    rows: &[NewTaskRow<'_>],
    run_keyed: bool,
) -> Result<()> {
    let col = |f: fn(&NewTaskRow<'_>) -> i32| rows.iter().map(f).collect::<Vec<i32>>();
    sqlx::query(
        "INSERT INTO task_runs (id, run_id, pipeline_id, task_name, task_type, queue, seq, state, priority, pending_needs, \
         max_attempts, lease_ms, ready_at, updated_at, concurrency_key, concurrency_limit, run_keyed, \
         rate_key, rate_limit, rate_per_ms, map_item, output, origin, finished_at) \
         SELECT id, $1, $2, name, ty, q, seq, st, pr, nd, mx, ls, ra, $3, ck, cl, $17, rk, rl, rp, mi, o, og, \
         CASE WHEN og IS NULL THEN NULL ELSE $3 END FROM UNNEST($4::uuid[], \
         $5::text[], $6::text[], $7::text[], $8::int[], $9::text[], $10::int[], $11::int[], $12::int[], $13::bigint[], \
         $14::timestamptz[], $15::text[], $16::int[], $18::text[], $19::int[], $20::bigint[], $21::jsonb[], $22::jsonb[], $23::uuid[]) \
         AS v(id, name, ty, q, seq, st, pr, nd, mx, ls, ra, ck, cl, rk, rl, rp, mi, o, og)",
    )
    .bind(new.id)
    .bind(new.pipeline.id)
    .bind(new.now)
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.name).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.task_type).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.queue).collect::<Vec<_>>())
    .bind(col(|r| r.seq))
    .bind(rows.iter().map(|r| r.state.as_str()).collect::<Vec<_>>())
    .bind(col(|r| r.priority))
    .bind(col(|r| r.pending_needs))
    .bind(col(|r| r.max_attempts))
    .bind(rows.iter().map(|r| r.lease_ms).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.ready_at).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.concurrency.as_ref().map(|c| c.0.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(col(|r| r.concurrency.as_ref().map_or(0, |c| c.1)))
    .bind(run_keyed)
    .bind(
        rows.iter()
            .map(|r| r.rate.as_ref().map(|x| x.0.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(col(|r| r.rate.as_ref().map_or(0, |x| x.1)))
    .bind(
        rows.iter()
            .map(|r| r.rate.as_ref().map_or(0, |x| x.2))
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.child_keys.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.output).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.origin).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(())
}

pub async fn cancel_run(pool: &PgPool, run: Uuid, now: DateTime<Utc>) -> Result<()> {
    let mut tx = begin(pool).await?;
    let cancel = plan::cancel(run, locked_run_state(&mut tx, run).await?)?;
    // The unfinished task runs, locked (a commit finishing one waits, then finds it
    // cancelled), so the counts move by exactly what the UPDATE below changes.
    let unfinished: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, COUNT(*) FROM (SELECT state FROM task_runs WHERE run_id = $1 AND state = ANY($2) \
         ORDER BY id FOR UPDATE) t GROUP BY state",
    )
    .bind(run)
    .bind(&cancel.unfinished[..])
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    let mut tally = Tally::default();
    for (state, n) in unfinished {
        tally.moved(task_state(&state)?, TaskState::Cancelled, n);
    }
    // A running attempt ends here: its record says so (its holder's late result is fenced
    // out), and every node checks its leases at once.
    let started: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO attempts (task_run_id, attempt, run_id, task_name, worker, started_at, finished_at, outcome, error, log) \
         SELECT id, attempt, run_id, task_name, COALESCE(lease_owner, ''), COALESCE(claimed_at, started_at, $1), $1, \
         $3, $4, $5 \
         FROM task_runs WHERE run_id = $2 AND state = 'running' ON CONFLICT DO NOTHING RETURNING started_at",
    )
    .bind(now)
    .bind(run)
    .bind(cancel.outcome.as_str())
    .bind(cancel.error)
    .bind(cancel.log)
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    for at in started {
        tally.attempt(false, at, now);
    }
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(crate::CONTROL)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    sqlx::query(
        "UPDATE task_runs SET state = 'cancelled', error = $3, finished_at = $1, updated_at = $1, \
         lease_owner = NULL, lease_expires_at = NULL WHERE run_id = $2 AND state = ANY($4)",
    )
    .bind(now)
    .bind(run)
    .bind(cancel.error)
    .bind(&cancel.unfinished[..])
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    sqlx::query("UPDATE runs SET state = 'cancelled', tasks_pending = 0, finished_at = $1, updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(run)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    flush(&mut tx, &[cancel.event], &tally, now).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(())
}

pub async fn requeue(
    pool: &PgPool,
    run: Uuid,
    tasks: &[String],
    by: orbit_store::TriggeredBy,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    let mut tx = begin(pool).await?;
    locked_run_state(&mut tx, run).await?;
    sqlx::query("UPDATE runs SET triggered_by = $1 WHERE id = $2")
        .bind(by.as_str())
        .bind(run)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    // Only terminal task runs change here, and nothing else changes those: the old row's
    // state (`o`) is the state each left.
    let changed: Vec<(String, String, String)> = sqlx::query_as(
        "UPDATE task_runs t SET state = CASE WHEN t.pending_needs <= 0 THEN 'ready' ELSE 'waiting' END, \
         ready_at = CASE WHEN t.pending_needs <= 0 THEN $1 ELSE NULL END, attempt_base = t.attempt, \
         error = NULL, output = NULL, finished_at = NULL, updated_at = $1, \
         park_kind = NULL, park_until = NULL, park_event = NULL, wake = NULL FROM task_runs o \
         WHERE o.id = t.id AND t.run_id = $2 AND t.task_name = ANY($3) AND t.state = ANY($4) \
         RETURNING t.task_name, o.state, t.state",
    )
    .bind(now)
    .bind(run)
    .bind(tasks)
    .bind(&plan::REQUEUEABLE[..])
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    let mut tally = Tally::default();
    for (_, was, is) in &changed {
        tally.moved(task_state(was)?, task_state(is)?, 1);
    }
    let requeued: Vec<&String> = changed.iter().map(|c| &c.0).collect();
    // Keep the caller's order.
    let requeued: Vec<String> = tasks
        .iter()
        .filter(|t| requeued.contains(t))
        .cloned()
        .collect();
    if !requeued.is_empty() {
        sqlx::query("DELETE FROM dead_letters WHERE run_id = $1 AND task_name = ANY($2)")
            .bind(run)
            .bind(&requeued)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let still_dead: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM task_runs WHERE run_id = $1 AND state = 'dead'",
        )
        .bind(run)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query(
            "UPDATE runs SET state = CASE WHEN started_at IS NULL THEN 'pending' ELSE 'running' END, \
             tasks_pending = tasks_pending + $1, tasks_dead = $2, finished_at = NULL, updated_at = $3 WHERE id = $4",
        )
        .bind(requeued.len() as i64)
        .bind(still_dead)
        .bind(now)
        .bind(run)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        flush(&mut tx, &plan::requeued_events(run, &requeued), &tally, now).await?;
        notify(&mut tx).await?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(requeued)
}

/// One slice of deleting a settled run, in one short transaction: up to [`plan::DELETE_SLICE`] of
/// its task runs (with their attempts, dead letters and kept results) and events; the run row
/// goes with the last slice. `Ok(true)` once the run is gone. A run of 100,000 task runs is never
/// one long transaction, and the caller may pause between slices so claims go on meanwhile.
pub async fn delete_run_slice(pool: &PgPool, id: Uuid, now: DateTime<Utc>) -> Result<bool> {
    let mut tx = begin(pool).await?;
    let state = locked_run_state(&mut tx, id).await?;
    if !state.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "run {id} is {state}; cancel it before deleting it"
        )));
    }
    let states: Vec<String> = sqlx::query_scalar(
        "WITH slice AS (SELECT id FROM task_runs WHERE run_id = $1 ORDER BY seq LIMIT $2), \
         results AS (DELETE FROM task_results WHERE task_run_id IN (SELECT id FROM slice)) \
         DELETE FROM task_runs WHERE id IN (SELECT id FROM slice) RETURNING state",
    )
    .bind(id)
    .bind(plan::DELETE_SLICE)
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    let events = sqlx::query(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE run_id = $1 LIMIT $2)",
    )
    .bind(id)
    .bind(plan::DELETE_EVENTS)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    let states = states
        .iter()
        .map(|s| task_state(s))
        .collect::<Result<Vec<_>>>()?;
    let (tally, last) = plan::deleted_slice(&states, events.rows_affected());
    let mut deleted = Vec::new();
    if last {
        sqlx::query("DELETE FROM runs WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        deleted.push(Event::global(EventKind::RunDeleted, json!({ "run": id })));
    }
    flush(&mut tx, &deleted, &tally, now).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(last)
}

/// Deletes dead letters created before `before`; reports the failed runs left without any.
pub async fn purge_dead_letters(pool: &PgPool, before: DateTime<Utc>) -> Result<PurgedLetters> {
    let mut tx = begin(pool).await?;
    let runs: Vec<Uuid> =
        sqlx::query_scalar("DELETE FROM dead_letters WHERE created_at < $1 RETURNING run_id")
            .bind(before)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
    let entries = runs.len() as u64;
    let emptied: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM runs WHERE id = ANY($1) AND state = 'failed' \
         AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.run_id = runs.id)",
    )
    .bind(&runs)
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    Ok(PurgedLetters {
        entries,
        runs: emptied,
    })
}
