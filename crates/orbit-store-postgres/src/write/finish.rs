//! The commit of the engine's rounds: a batch of finished attempts executed from its
//! [`FinishPlan`](orbit_store::plan::FinishPlan), and the claims that share its transaction; and
//! lease extensions.

use super::{begin, flush, lock_runs, lock_signal, notify};
use crate::rows::claimed_from_row;
use crate::unavailable;
use chrono::{DateTime, Utc};
use orbit_core::TaskState;
use orbit_core::transition::Transition;
use orbit_store::plan::{self, AttemptOutcome, Event, EventKind, FinishPlan, Mark, RunCounters};
use orbit_store::{BatchOutcome, ClaimRequest, ClaimedTask, FinishedAttempt, Result, StoreError};
use orbit_store::{keys, rates};
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::{PgPool, Row};
use std::collections::{BTreeSet, HashSet};
use uuid::Uuid;

pub async fn finish_and_claim(
    pool: &PgPool,
    finished: &[FinishedAttempt],
    claims: &[ClaimRequest],
    now: DateTime<Utc>,
) -> Result<(BatchOutcome, Vec<Vec<ClaimedTask>>)> {
    let mut out = BatchOutcome::default();
    let mut tx = begin(pool).await?;
    let accepted = apply_fenced(&mut tx, finished, now).await?;
    let (kept, lease_lost) = orbit_store::fenced(finished, &accepted);
    out.lease_lost = lease_lost;
    insert_attempts(&mut tx, &kept).await?;
    let mut plan = FinishPlan::new(&kept);
    apply_plan(&mut tx, &mut plan, now).await?;
    // Claims in one commit see each other's: no task is handed out twice. A run with a task
    // finishing here has started: claiming more of it needs no start.
    let started: HashSet<Uuid> = kept.iter().map(|f| f.task.run_id).collect();
    let mut claimed_events = Vec::new();
    if claims.iter().any(|c| c.limit > 0) {
        wake_due(&mut tx, now, &mut plan.tally, &mut out).await?;
    }
    let mut each = Vec::with_capacity(claims.len());
    for c in claims {
        let claimed = if c.limit > 0 {
            claim_ready(&mut tx, c, now, &started, &mut claimed_events, &mut out).await?
        } else {
            Vec::new()
        };
        plan.tally
            .moved(TaskState::Ready, TaskState::Running, claimed.len() as i64);
        each.push(claimed);
    }
    // The run rows last: a run's counters are one row that every worker finishing its tasks
    // changes, so its lock is taken at the end and held only through the commit, not for the
    // whole transaction (workers on one run would otherwise commit one after another).
    (out.settled_runs, out.settled_subruns) = count_and_settle(&mut tx, &mut plan, now).await?;
    let mut events = std::mem::take(&mut plan.events);
    events.append(&mut claimed_events);
    flush(&mut tx, &events, &plan.tally, now).await?;
    out.left_work = (plan.ready > 0 || out.left_work) && all_full(claims, &each);
    if out.left_work {
        notify(&mut tx).await?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok((out, each))
}

/// Moves the counters of the runs the batch finished tasks of (their rows locked in id order,
/// so two batches never wait for each other in a cycle) and settles those with nothing left.
/// Runs settled, and which of them are sub-runs.
type Settled = (Vec<(Uuid, orbit_core::RunState)>, Vec<Uuid>);

async fn count_and_settle(
    conn: &mut PgConnection,
    plan: &mut FinishPlan<'_>,
    now: DateTime<Utc>,
) -> Result<Settled> {
    if plan.counts.is_empty() {
        return Ok(Default::default());
    }
    // One run (a chain's step, most batches) needs no order: its UPDATE takes the one lock.
    if plan.counts.len() > 1 {
        let runs: BTreeSet<Uuid> = plan.counts.keys().copied().collect();
        lock_runs(&mut *conn, &runs).await?;
    }
    let ids: Vec<Uuid> = plan.counts.keys().copied().collect();
    let done: Vec<i64> = plan.counts.values().map(|v| v.0).collect();
    let dead: Vec<i64> = plan.counts.values().map(|v| v.1).collect();
    let rows = sqlx::query(
        "UPDATE runs r SET tasks_pending = r.tasks_pending - v.done, tasks_dead = r.tasks_dead + v.dead, updated_at = $4 \
         FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[]) AS v(id, done, dead) WHERE r.id = v.id \
         RETURNING r.id, r.tasks_pending, r.tasks_dead, r.state",
    )
    .bind(&ids)
    .bind(&done)
    .bind(&dead)
    .bind(now)
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    let mut counters = Vec::with_capacity(rows.len());
    for row in rows {
        let state: String = row.try_get(3).map_err(unavailable)?;
        counters.push(RunCounters {
            run: row.try_get(0).map_err(unavailable)?,
            pending: row.try_get(1).map_err(unavailable)?,
            dead: row.try_get(2).map_err(unavailable)?,
            state: state
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("run state: {e}")))?,
        });
    }
    let (settled, _running) = plan.settle(counters);
    let mut subruns = Vec::new();
    if !settled.is_empty() {
        let ids: Vec<Uuid> = settled.iter().map(|(run, _)| *run).collect();
        let states: Vec<&str> = settled.iter().map(|(_, state)| state.as_str()).collect();
        subruns = sqlx::query_scalar::<_, Option<Uuid>>(
            "UPDATE runs r SET state = v.state, finished_at = $3, updated_at = $3 \
             FROM UNNEST($1::uuid[], $2::text[]) AS v(id, state) WHERE r.id = v.id \
             RETURNING CASE WHEN r.parent_run_id IS NULL THEN NULL ELSE r.id END",
        )
        .bind(&ids)
        .bind(&states)
        .bind(now)
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?
        .into_iter()
        .flatten()
        .collect();
    }
    Ok((settled, subruns))
}

/// Whether every claim got all it asked for (so more may be ready); true with no claim.
fn all_full(claims: &[ClaimRequest], each: &[Vec<ClaimedTask>]) -> bool {
    claims.iter().zip(each).all(|(c, got)| got.len() >= c.limit)
}

/// Moves every finished task run out of `running`, each only if its `lease_epoch` still
/// matches: one statement for the whole batch. Returns the ids it changed.
async fn apply_fenced(
    conn: &mut PgConnection,
    finished: &[FinishedAttempt],
    now: DateTime<Utc>,
) -> Result<HashSet<(Uuid, i64)>> {
    if finished.is_empty() {
        return Ok(HashSet::new());
    }
    let n = finished.len();
    let mut ids = Vec::with_capacity(n);
    let mut epochs = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut outputs: Vec<Option<&Value>> = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut ready_ats = Vec::with_capacity(n);
    let mut uncounted = Vec::with_capacity(n);
    // A park's why and until when, written with its state.
    let (mut kinds, mut untils, mut events, mut notes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for f in finished {
        let park = match &f.transition {
            Transition::Park(p) => Some(p),
            _ => None,
        };
        kinds.push(park.map(|p| p.kind.as_str()));
        untils.push(park.and_then(|p| p.until));
        events.push(park.and_then(|p| p.event.as_deref()));
        notes.push(park.and_then(|p| p.note.as_deref()));
        let (state, output, error, ready_at) = match &f.transition {
            Transition::Succeed { output, .. } => ("succeeded", Some(output), None, None),
            Transition::Retry {
                ready_at,
                failure,
                keep_place,
            } => (
                "ready",
                None,
                Some(failure.message.as_str()),
                // NULL keeps the task's old `ready_at`: its place in the queue.
                (!keep_place).then_some(*ready_at),
            ),
            Transition::Dead { failure, .. } => {
                ("dead", None, Some(failure.message.as_str()), None)
            }
            // Its children are made by the plan (`expansions`), with its count of needs.
            Transition::Expand { .. } => ("waiting", None, None, None),
            // Why and until when are set by the plan (`parks`).
            Transition::Park(_) => ("parked", None, None, None),
        };
        ids.push(f.task.id);
        epochs.push(f.task.lease_epoch);
        states.push(state);
        outputs.push(output);
        errors.push(error);
        ready_ats.push(ready_at);
        // An attempt that does not count moves the base with it: its retry has as many left.
        uncounted.push(i32::from(!f.transition.spends_a_try()));
    }
    let rows = sqlx::query(
        "UPDATE task_runs t SET state = v.state, output = v.output, error = v.error, \
         ready_at = COALESCE(v.ready_at, t.ready_at), attempt_base = t.attempt_base + v.uncounted, \
         finished_at = CASE WHEN v.state IN ('ready', 'waiting', 'parked') THEN t.finished_at ELSE $7 END, updated_at = $7, \
         lease_owner = NULL, lease_expires_at = NULL, park_kind = COALESCE(v.pk, t.park_kind), \
         park_until = CASE WHEN v.pk IS NULL THEN t.park_until ELSE v.pu END, \
         park_event = CASE WHEN v.pk IS NULL THEN t.park_event ELSE v.pe END, \
         park_note = CASE WHEN v.pk IS NULL THEN t.park_note ELSE v.pn END, \
         wake = CASE WHEN v.pk IS NULL THEN t.wake ELSE NULL END \
         FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::jsonb[], $5::text[], $6::timestamptz[], $8::int[], \
         $9::text[], $10::timestamptz[], $11::text[], $12::text[]) \
         AS v(id, epoch, state, output, error, ready_at, uncounted, pk, pu, pe, pn) \
         WHERE t.id = v.id AND t.state = 'running' AND t.lease_epoch = v.epoch RETURNING t.id, t.lease_epoch",
    )
    .bind(&ids)
    .bind(&epochs)
    .bind(&states)
    .bind(&outputs)
    .bind(&errors)
    .bind(&ready_ats)
    .bind(now)
    .bind(&uncounted)
    .bind(&kinds)
    .bind(&untils)
    .bind(&events)
    .bind(&notes)
    .fetch_all(conn)
    .await
    .map_err(unavailable)?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<Uuid, _>(0).map_err(unavailable)?,
                r.try_get::<i64, _>(1).map_err(unavailable)?,
            ))
        })
        .collect()
}

async fn insert_attempts(conn: &mut PgConnection, kept: &[&FinishedAttempt]) -> Result<()> {
    if kept.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = kept.iter().map(|f| f.task.id).collect();
    let attempts: Vec<i32> = kept
        .iter()
        .map(|f| i32::try_from(f.task.attempt).unwrap_or(i32::MAX))
        .collect();
    let runs: Vec<Uuid> = kept.iter().map(|f| f.task.run_id).collect();
    let names: Vec<&str> = kept.iter().map(|f| f.task.task_name.as_str()).collect();
    let workers: Vec<&str> = kept.iter().map(|f| f.worker.as_str()).collect();
    let started: Vec<DateTime<Utc>> = kept.iter().map(|f| f.started_at).collect();
    let ended: Vec<DateTime<Utc>> = kept.iter().map(|f| f.finished_at).collect();
    let outcomes: Vec<&str> = kept
        .iter()
        .map(|f| AttemptOutcome::of(f).as_str())
        .collect();
    let errors: Vec<Option<&str>> = kept
        .iter()
        .map(|f| f.transition.failure().map(|fl| fl.message.as_str()))
        .collect();
    let logs: Vec<&str> = kept.iter().map(|f| f.log.as_str()).collect();
    let versions: Vec<Option<i64>> = kept.iter().map(|f| f.code_version).collect();
    sqlx::query(
        "INSERT INTO attempts (task_run_id, attempt, run_id, task_name, worker, started_at, finished_at, outcome, error, log, code_version) \
         SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[], \
         $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::bigint[])",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&runs)
    .bind(&names)
    .bind(&workers)
    .bind(&started)
    .bind(&ended)
    .bind(&outcomes)
    .bind(&errors)
    .bind(&logs)
    .bind(&versions)
    .execute(conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// The plan's changes to other task runs, one statement per kind, in its order: skips and
/// cancels of waiting tasks, promotions, kept results, dead letters.
async fn apply_plan(
    conn: &mut PgConnection,
    plan: &mut FinishPlan<'_>,
    now: DateTime<Utc>,
) -> Result<()> {
    lock_downstream(conn, plan).await?;
    for run in end_waiting(conn, &plan.skips, TaskState::Skipped, now).await? {
        plan.ended(run, TaskState::Skipped);
    }
    for run in end_waiting(conn, &plan.cancels, TaskState::Cancelled, now).await? {
        plan.ended(run, TaskState::Cancelled);
    }
    let mut cancelled = Vec::new();
    for m in &plan.sibling_cancels {
        let done = sqlx::query(
            "UPDATE task_runs SET state = 'cancelled', error = $1, finished_at = $2, updated_at = $2 \
             WHERE run_id = $3 AND map_parent = $4 AND state = 'ready'",
        )
        .bind(&m.reason)
        .bind(now)
        .bind(m.run)
        .bind(m.task)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
        cancelled.push((m.run, done.rows_affected() as i64));
    }
    for (run, n) in cancelled {
        plan.siblings_cancelled(run, n);
    }
    for (f, items) in &plan.expansions {
        expand(conn, f, items, now).await?;
    }
    park(conn, plan, now).await?;
    let promoted = promote(conn, &plan.promotions, now).await?;
    plan.promoted(promoted);
    keep_results(conn, &plan.results, now).await?;
    dead_letters(conn, &plan.dead, now).await
}

/// Sets the park columns of the task runs that parked. A `wait` takes the signal kept for it,
/// if any, and is `ready` at once; under its name's lock (taken in name order), so a signal
/// sent while it parks either finds it parked or is kept for it, never neither.
async fn park(
    conn: &mut PgConnection,
    plan: &mut FinishPlan<'_>,
    now: DateTime<Utc>,
) -> Result<()> {
    let names: BTreeSet<&str> = plan
        .parks
        .iter()
        .filter_map(|(_, p)| p.event.as_deref())
        .collect();
    for name in names {
        lock_signal(conn, name).await?;
    }
    // The parks themselves were written with their state; a wait takes a signal that came
    // before it, if one is kept, and is ready at once.
    let mut signalled = Vec::new();
    for (f, park) in &plan.parks {
        let Some(name) = &park.event else { continue };
        let kept: Option<Value> = sqlx::query_scalar(
            "DELETE FROM signals WHERE id = (SELECT id FROM signals WHERE name = $1 AND expires_at > $2 \
             ORDER BY id LIMIT 1) RETURNING payload",
        )
        .bind(name)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?;
        let Some(payload) = kept else { continue };
        sqlx::query("UPDATE task_runs SET state = 'ready', ready_at = $1, wake = $2 WHERE id = $3")
            .bind(now)
            .bind(orbit_store::parks::signal_wake(name, &payload))
            .bind(f.task.id)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        signalled.push((f.task.run_id, f.task.task_name.as_str(), name.as_str()));
    }
    for (run, task, name) in signalled {
        plan.signalled(run, task, name);
    }
    Ok(())
}

/// Makes the parked task runs whose time has come `ready` (at their time, their place in the
/// queue), so the claims of this commit can take them; notes when the next one is due.
async fn wake_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    tally: &mut orbit_store::tally::Tally,
    out: &mut BatchOutcome,
) -> Result<()> {
    const NEXT: &str = "SELECT park_until FROM task_runs WHERE state = 'parked' AND park_until IS NOT NULL \
                        ORDER BY park_until LIMIT 1";
    let mut due: Option<DateTime<Utc>> = sqlx::query_scalar(NEXT)
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?;
    if due.is_some_and(|d| d <= now) {
        // SKIP LOCKED: rows another engine is waking, or a signal is waking, are its own.
        let woken = sqlx::query(
            "WITH due AS (SELECT id FROM task_runs WHERE state = 'parked' AND park_until IS NOT NULL \
             AND park_until <= $1 ORDER BY park_until LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE task_runs t SET state = 'ready', ready_at = t.park_until, wake = $3::jsonb, updated_at = $1 \
             FROM due WHERE t.id = due.id",
        )
        .bind(now)
        .bind(orbit_store::parks::WAKE_SLICE)
        .bind(orbit_store::parks::TIME_WAKE)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?
        .rows_affected();
        tally.moved(TaskState::Parked, TaskState::Ready, woken as i64);
        out.left_work |= woken > 0;
        due = sqlx::query_scalar(NEXT)
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
    }
    out.wake_at = rates::earliest(out.wake_at, due.map(|d| d.timestamp_micros() as f64));
    Ok(())
}

/// Children inserted per statement.
const EXPAND_SLICE: usize = 10_000;

/// A `for_each` task's children, one `ready` task run per element (with the parent's queue,
/// priority, retries and keys), in slices; the parent waits for all.
async fn expand(
    conn: &mut PgConnection,
    f: &FinishedAttempt,
    items: &[Value],
    now: DateTime<Utc>,
) -> Result<()> {
    let parent = &f.task;
    let n = i32::try_from(items.len()).unwrap_or(i32::MAX);
    sqlx::query("UPDATE task_runs SET pending_needs = $1 WHERE id = $2")
        .bind(n)
        .bind(parent.id)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    for (s, slice) in items.chunks(EXPAND_SLICE).enumerate() {
        let first = s * EXPAND_SLICE;
        let ids: Vec<Uuid> = slice.iter().map(|_| Uuid::now_v7()).collect();
        let names: Vec<String> = (first..first + slice.len())
            .map(|i| orbit_core::pipeline::child_name(&parent.task_name, i))
            .collect();
        let indexes: Vec<i32> = (first..first + slice.len()).map(|i| i as i32).collect();
        sqlx::query(
            "INSERT INTO task_runs (id, run_id, pipeline_id, task_name, seq, state, priority, pending_needs, \
             max_attempts, lease_ms, ready_at, updated_at, task_type, queue, concurrency_key, concurrency_limit, \
             run_keyed, rate_key, rate_limit, rate_per_ms, map_parent, map_index, map_item) \
             SELECT v.id, p.run_id, p.pipeline_id, v.name, p.seq, 'ready', p.priority, 0, p.max_attempts, p.lease_ms, \
             $5, $5, CASE WHEN p.task_type = 'for_each' THEN 'worker' ELSE p.task_type END, p.queue, \
             p.map_item->>'ck', COALESCE((p.map_item->>'cl')::int, 0), p.run_keyed, p.map_item->>'rk', \
             COALESCE((p.map_item->>'rl')::int, 0), COALESCE((p.map_item->>'rp')::bigint, 0), p.task_name, v.idx, v.item \
             FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::jsonb[]) AS v(id, name, idx, item) \
             JOIN task_runs p ON p.id = $6",
        )
        .bind(&ids)
        .bind(&names)
        .bind(&indexes)
        .bind(slice)
        .bind(now)
        .bind(parent.id)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    }
    sqlx::query("UPDATE runs SET tasks_total = tasks_total + $1 WHERE id = $2")
        .bind(i64::from(n))
        .bind(parent.run_id)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Locks, in id order, the waiting task runs the plan changes when there are several: batches
/// committing at once (no run row serialises them) may touch the same downstream tasks, and
/// taking them in one order keeps them from waiting for each other in a cycle.
async fn lock_downstream(conn: &mut PgConnection, plan: &FinishPlan<'_>) -> Result<()> {
    let mut rows: BTreeSet<(Uuid, &str)> = plan.promotions.iter().copied().collect();
    rows.extend(
        plan.skips
            .iter()
            .chain(&plan.cancels)
            .map(|m| (m.run, m.task)),
    );
    if rows.len() < 2 {
        return Ok(());
    }
    let runs: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let names: Vec<&str> = rows.iter().map(|r| r.1).collect();
    sqlx::query(
        "SELECT t.id FROM task_runs t JOIN UNNEST($1::uuid[], $2::text[]) AS v(r, name) \
         ON t.run_id = v.r AND t.task_name = v.name ORDER BY t.id FOR UPDATE OF t",
    )
    .bind(&runs)
    .bind(&names)
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Waiting task runs that will never run (`skipped`, `cancelled`), with why; returns the run of
/// each row changed.
async fn end_waiting(
    conn: &mut PgConnection,
    marks: &[Mark<'_>],
    state: TaskState,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>> {
    if marks.is_empty() {
        return Ok(Vec::new());
    }
    let runs: Vec<Uuid> = marks.iter().map(|m| m.run).collect();
    let names: Vec<&str> = marks.iter().map(|m| m.task).collect();
    let reasons: Vec<&str> = marks.iter().map(|m| m.reason.as_str()).collect();
    sqlx::query_scalar(
        "UPDATE task_runs t SET state = $5, error = v.reason, finished_at = $4, updated_at = $4 \
         FROM (SELECT DISTINCT ON (r, name) r, name, reason FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS u(r, name, reason)) v \
         WHERE t.run_id = v.r AND t.task_name = v.name AND t.state = 'waiting' RETURNING t.run_id",
    )
    .bind(&runs)
    .bind(&names)
    .bind(&reasons)
    .bind(now)
    .bind(state.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)
}

/// One upstream fewer for each pair; a task with none left becomes `ready`. Returns how many.
async fn promote(
    conn: &mut PgConnection,
    promotions: &[(Uuid, &str)],
    now: DateTime<Utc>,
) -> Result<usize> {
    if promotions.is_empty() {
        return Ok(0);
    }
    let runs: Vec<Uuid> = promotions.iter().map(|p| p.0).collect();
    let names: Vec<&str> = promotions.iter().map(|p| p.1).collect();
    // Two upstreams of one task may finish in the same batch: count them before updating,
    // since an UPDATE changes each row once.
    let became_ready: Vec<bool> = sqlx::query_scalar(
        "UPDATE task_runs t SET pending_needs = t.pending_needs - v.n, \
         state = CASE WHEN t.pending_needs <= v.n THEN 'ready' ELSE t.state END, \
         ready_at = CASE WHEN t.pending_needs <= v.n THEN $3 ELSE t.ready_at END, updated_at = $3 \
         FROM (SELECT r, name, COUNT(*)::int AS n FROM UNNEST($1::uuid[], $2::text[]) AS u(r, name) GROUP BY r, name) v \
         WHERE t.run_id = v.r AND t.task_name = v.name AND t.state = 'waiting' RETURNING t.state = 'ready'",
    )
    .bind(&runs)
    .bind(&names)
    .bind(now)
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    Ok(became_ready.iter().filter(|r| **r).count())
}

/// Outputs kept under their idempotency keys.
async fn keep_results(
    conn: &mut PgConnection,
    results: &[(&str, Uuid, &Value)],
    now: DateTime<Utc>,
) -> Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = results.iter().map(|r| r.0).collect();
    let ids: Vec<Uuid> = results.iter().map(|r| r.1).collect();
    let outputs: Vec<&Value> = results.iter().map(|r| r.2).collect();
    sqlx::query(
        "INSERT INTO task_results (idempotency_key, task_run_id, output, created_at) \
         SELECT k, id, o, $4 FROM UNNEST($1::text[], $2::uuid[], $3::jsonb[]) AS v(k, id, o) \
         ON CONFLICT (idempotency_key) DO UPDATE SET task_run_id = excluded.task_run_id, \
         output = excluded.output, created_at = excluded.created_at",
    )
    .bind(&keys)
    .bind(&ids)
    .bind(&outputs)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// A dead-letter entry per dead attempt (a task run dead again replaces its entry).
async fn dead_letters(
    conn: &mut PgConnection,
    dead: &[&FinishedAttempt],
    now: DateTime<Utc>,
) -> Result<()> {
    if dead.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = dead.iter().map(|f| f.task.id).collect();
    let runs: Vec<Uuid> = dead.iter().map(|f| f.task.run_id).collect();
    let pipes: Vec<Uuid> = dead.iter().map(|f| f.task.pipeline_id).collect();
    let names: Vec<&str> = dead.iter().map(|f| f.task.task_name.as_str()).collect();
    let errors: Vec<Option<&str>> = dead
        .iter()
        .map(|f| f.transition.failure().map(|fl| fl.message.as_str()))
        .collect();
    let attempts: Vec<i32> = dead
        .iter()
        .map(|f| i32::try_from(f.task.attempt).unwrap_or(i32::MAX))
        .collect();
    sqlx::query(
        "INSERT INTO dead_letters (task_run_id, run_id, pipeline_id, task_name, error, attempts, created_at) \
         SELECT id, r, p, n, e, a, $7 FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::int[]) \
         AS v(id, r, p, n, e, a) \
         ON CONFLICT (task_run_id) DO UPDATE SET error = excluded.error, attempts = excluded.attempts, created_at = excluded.created_at",
    )
    .bind(&ids)
    .bind(&runs)
    .bind(&pipes)
    .bind(&names)
    .bind(&errors)
    .bind(&attempts)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// The advisory lock keyed claims take (any constant not used elsewhere: "orbit-ck").
const CONCURRENCY_KEYS_LOCK: i64 = 0x6f72_6269_742d_636b;

const CLAIMED_COLUMNS: &str = "t.id, t.run_id, t.pipeline_id, t.task_name, t.attempt, t.attempt_base, t.lease_epoch, \
     t.lease_expires_at, t.claimed_at, t.updated_at, t.priority, t.ready_at, t.rate_key, t.rate_limit, t.rate_per_ms, \
     t.map_item, t.wake";

async fn claim_ready(
    conn: &mut PgConnection,
    c: &ClaimRequest,
    now: DateTime<Utc>,
    running: &HashSet<Uuid>,
    events: &mut Vec<Event>,
    out: &mut BatchOutcome,
) -> Result<Vec<ClaimedTask>> {
    // Every filter is always bound (NULL = any), so the statement has one shape and one plan
    // per claimer.
    let queues = (!c.queues.is_empty()).then_some(&c.queues);
    let types = (!c.types.is_empty()).then_some(&c.types);
    // Task runs with a concurrency or rate key are claimed one claimer at a time: under the
    // advisory lock, the claim's statement starts after every earlier keyed claim committed,
    // so the running task runs it counts per key, and the tokens left, are all there are.
    // Without ready keyed task runs (the partial index answers at once) claims go side by side
    // as before.
    // Whether any of them has a rate key (its own partial index): only then are tokens spent
    // and the next one looked for.
    let (keyed, rate_keyed): (bool, bool) = sqlx::query_as(
        // Exactly the partial indexes' predicates, so the plans are their index-only scans
        // whatever the statistics (with `ready_at` in it, an unanalyzed table was scanned row
        // by row).
        "SELECT EXISTS (SELECT 1 FROM task_runs WHERE state = 'ready' \
         AND (concurrency_key IS NOT NULL OR run_keyed OR rate_key IS NOT NULL)), \
         EXISTS (SELECT 1 FROM task_runs WHERE state = 'ready' AND rate_key IS NOT NULL)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(unavailable)?;
    let picked = if keyed {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CONCURRENCY_KEYS_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        format!(
            "cand AS (SELECT {} FROM task_runs t JOIN runs r ON r.id = t.run_id \
               WHERE t.state = 'ready' AND t.ready_at <= $2 \
               AND ($4::uuid IS NULL OR t.run_id = $4) AND ($5::text[] IS NULL OR t.queue = ANY($5)) \
               AND ($6::text[] IS NULL OR t.task_type = ANY($6)){}{} \
               ORDER BY t.priority DESC, t.ready_at, t.id LIMIT $3 * 2 FOR UPDATE OF t SKIP LOCKED), \
             picked AS (SELECT id FROM (SELECT *, {}, {} FROM cand) c WHERE {}{} \
               ORDER BY priority DESC, ready_at, id LIMIT $3)",
            keys::CANDIDATE_COLUMNS,
            keys::NOT_FULL,
            rates::not_spent("$7"),
            keys::RANKS,
            rates::RANK,
            keys::WITHIN_LIMITS,
            rates::within("$7")
        )
    } else {
        // Neither a keyed task run nor one of a keyed run (either may have become ready since
        // the probe above). Plain column tests: the claim index's ordered scan stays the plan.
        "picked AS ( \
           SELECT id FROM task_runs WHERE state = 'ready' AND ready_at <= $2 AND concurrency_key IS NULL \
           AND NOT run_keyed AND rate_key IS NULL \
           AND ($4::uuid IS NULL OR run_id = $4) AND ($5::text[] IS NULL OR queue = ANY($5)) \
           AND ($6::text[] IS NULL OR task_type = ANY($6)) \
           ORDER BY priority DESC, ready_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)"
            .to_owned()
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH {picked} \
         UPDATE task_runs t SET state = 'running', attempt = t.attempt + 1, lease_epoch = t.lease_epoch + 1, \
           lease_owner = $1, lease_expires_at = $2 + t.lease_ms * interval '1 millisecond', \
           started_at = COALESCE(t.started_at, $2), claimed_at = $2, updated_at = $2 \
         FROM picked WHERE t.id = picked.id RETURNING {CLAIMED_COLUMNS}"
    )))
    .bind(&c.owner)
    .bind(now)
    .bind(i64::try_from(c.limit).unwrap_or(i64::MAX))
    .bind(c.run)
    .bind(queues)
    .bind(types)
    .bind(now.timestamp_micros())
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    let mut claimed = Vec::with_capacity(rows.len());
    let mut rated: Vec<(String, i64, i64)> = Vec::new();
    for row in &rows {
        if let Some(key) = row
            .try_get::<Option<String>, _>("rate_key")
            .map_err(unavailable)?
        {
            let limit: i32 = row.try_get("rate_limit").map_err(unavailable)?;
            let per: i64 = row.try_get("rate_per_ms").map_err(unavailable)?;
            rated.push((key, i64::from(limit), per));
        }
        let priority: i32 = row.try_get("priority").map_err(unavailable)?;
        let ready_at: Option<DateTime<Utc>> = row.try_get("ready_at").map_err(unavailable)?;
        claimed.push(((-priority, ready_at), claimed_from_row(row)?));
    }
    if keyed {
        if rate_keyed {
            spend_tokens(conn, &rated, now.timestamp_micros(), out).await?;
        }
        // Candidates are a window of the queue's head: when keys cut a claim short, the head
        // may hold more of their backlog. Claim again: the keys now full are passed over.
        if !claimed.is_empty() && claimed.len() < c.limit {
            out.cut_short = true;
        }
    }
    // RETURNING gives no order; hand tasks out highest priority, oldest first.
    claimed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
    let claimed: Vec<ClaimedTask> = claimed.into_iter().map(|(_, t)| t).collect();
    events.extend(plan::claimed_events(&claimed, &c.owner));
    let start = plan::runs_to_start(&claimed, running);
    if !start.is_empty() {
        let ids = start;
        // SKIP LOCKED: a run another claimer is starting right now is started by it.
        let started: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE runs SET state = 'running', started_at = $1, updated_at = $1 WHERE id IN ( \
             SELECT id FROM runs WHERE id = ANY($2) AND state = 'pending' ORDER BY id FOR UPDATE SKIP LOCKED) RETURNING id",
        )
        .bind(now)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
        for run in started {
            events.push(Event::run(run, EventKind::RunStarted));
        }
    }
    Ok(claimed)
}

/// Spends a token per claimed task run of each rate key, and notes when the next token of a
/// key that still has ready task runs comes.
async fn spend_tokens(
    conn: &mut PgConnection,
    rated: &[(String, i64, i64)],
    now: i64,
    out: &mut BatchOutcome,
) -> Result<()> {
    for (key, n, capacity, per_ms) in
        rates::tally(rated.iter().map(|(k, c, p)| (k.as_str(), *c, *p)))
    {
        sqlx::query(sqlx::AssertSqlSafe(rates::spend(
            "$1",
            "$2::double precision",
            "$3::double precision",
            "$4::double precision",
            "$5::bigint",
        )))
        .bind(key)
        .bind(n)
        .bind(capacity)
        .bind(per_ms)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    }
    let next: Option<f64> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(rates::next_token("$1::bigint")))
            .bind(now)
            .fetch_one(&mut *conn)
            .await
            .map_err(unavailable)?;
    out.wake_at = rates::earliest(out.wake_at, next);
    Ok(())
}

pub async fn extend_leases(
    pool: &PgPool,
    leases: &[(Uuid, i64)],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = leases.iter().map(|l| l.0).collect();
    let epochs: Vec<i64> = leases.iter().map(|l| l.1).collect();
    let kept: HashSet<Uuid> = sqlx::query_scalar(
        "UPDATE task_runs t SET lease_expires_at = $3 + t.lease_ms * interval '1 millisecond', updated_at = $3 \
         FROM UNNEST($1::uuid[], $2::bigint[]) AS v(id, epoch) \
         WHERE t.id = v.id AND t.state = 'running' AND t.lease_epoch = v.epoch RETURNING t.id, t.lease_epoch",
    )
    .bind(&ids)
    .bind(&epochs)
    .bind(now)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?
    .into_iter()
    .collect();
    Ok(ids.into_iter().filter(|id| !kept.contains(id)).collect())
}
