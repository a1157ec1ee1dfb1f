//! The commit of the engine's rounds: a batch of finished attempts executed from its
//! [`FinishPlan`](orbit_store::plan::FinishPlan), and the claims that share its transaction; and
//! lease extensions.

use super::{
    CHUNK, exec, flush_events, flush_tally, insert_rows, int, opt_int, opt_text, text, uuid,
};
use crate::us;
use crate::writer::{Writer, sql, values_sql};
use chrono::{DateTime, Utc};
use orbit_core::TaskState;
use orbit_core::transition::Transition;
use orbit_store::plan::{self, AttemptOutcome, Event, EventKind, FinishPlan, RunCounters};
use orbit_store::{BatchOutcome, ClaimRequest, ClaimedTask, FinishedAttempt, Result, StoreError};
use orbit_store::{keys, rates};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde_json::Value;
use std::collections::HashSet;
use uuid::Uuid;

pub async fn finish_and_claim(
    writer: &Writer,
    finished: &[FinishedAttempt],
    claims: &[ClaimRequest],
    now: DateTime<Utc>,
) -> Result<(BatchOutcome, Vec<Vec<ClaimedTask>>)> {
    let finished = finished.to_vec();
    let claims = claims.to_vec();
    writer
        .transaction(move |t| commit_round(t, &finished, &claims, us(now)))
        .await
}

fn commit_round(
    conn: &Connection,
    finished: &[FinishedAttempt],
    claims: &[ClaimRequest],
    now: i64,
) -> Result<(BatchOutcome, Vec<Vec<ClaimedTask>>)> {
    let mut out = BatchOutcome::default();
    let accepted = apply_fenced(conn, finished, now)?;
    let (kept, lease_lost) = orbit_store::fenced(finished, &accepted);
    out.lease_lost = lease_lost;
    insert_attempts(conn, &kept)?;
    let mut plan = FinishPlan::new(&kept);
    apply_plan(conn, &mut plan, now)?;
    let mut counters = Vec::with_capacity(plan.counts.len());
    for (run, (done, dead)) in &plan.counts {
        let (pending, dead, state) = conn
            .prepare_cached(
                "UPDATE runs SET tasks_pending = tasks_pending - ?1, tasks_dead = tasks_dead + ?2, updated_at = ?3 \
                 WHERE id = ?4 RETURNING tasks_pending, tasks_dead, state",
            )
            .and_then(|mut s| {
                s.query_row(params![done, dead, now, run.to_string()], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
                })
            })
            .map_err(sql)?;
        counters.push(RunCounters {
            run: *run,
            pending,
            dead,
            state: state
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("run state: {e}")))?,
        });
    }
    let (settled, running) = plan.settle(counters);
    for (run, state) in &settled {
        let parent: Option<String> = conn
            .prepare_cached(
                "UPDATE runs SET state = ?1, finished_at = ?2, updated_at = ?2 WHERE id = ?3 \
                 RETURNING parent_run_id",
            )
            .and_then(|mut s| {
                s.query_row(params![state.as_str(), now, run.to_string()], |r| r.get(0))
            })
            .map_err(sql)?;
        if parent.is_some() {
            out.settled_subruns.push(*run);
        }
    }
    out.settled_runs = settled;
    // Claims in one commit see each other's: no task is handed out twice.
    let mut events = plan.events;
    if claims.iter().any(|c| c.limit > 0) {
        wake_due(conn, now, &mut plan.tally, &mut out)?;
    }
    let mut each = Vec::with_capacity(claims.len());
    for c in claims {
        let claimed = if c.limit > 0 {
            claim_ready(conn, c, now, &running, &mut events, &mut out)?
        } else {
            Vec::new()
        };
        plan.tally
            .moved(TaskState::Ready, TaskState::Running, claimed.len() as i64);
        each.push(claimed);
    }
    flush_events(conn, &events, now)?;
    flush_tally(conn, &plan.tally)?;
    // Work these claimers may leave for others: tell them.
    out.left_work = (plan.ready > 0 || out.left_work) && all_full(claims, &each);
    Ok((out, each))
}

/// Makes the parked task runs whose time has come `ready` (at their time, their place in the
/// queue), so the claims of this commit can take them; notes when the next one is due.
fn wake_due(
    conn: &Connection,
    now: i64,
    tally: &mut orbit_store::tally::Tally,
    out: &mut BatchOutcome,
) -> Result<()> {
    let next = |conn: &Connection| -> Result<Option<i64>> {
        conn.prepare_cached(
            "SELECT park_until FROM task_runs WHERE state = 'parked' AND park_until IS NOT NULL \
             ORDER BY park_until LIMIT 1",
        )
        .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
        .map_err(sql)
    };
    let mut due = next(conn)?;
    if due.is_some_and(|d| d <= now) {
        let woken = exec(
            conn,
            "UPDATE task_runs SET state = 'ready', ready_at = park_until, wake = ?1, updated_at = ?2 \
             WHERE id IN (SELECT id FROM task_runs WHERE state = 'parked' AND park_until IS NOT NULL \
             AND park_until <= ?2 ORDER BY park_until LIMIT ?3)",
            params![
                orbit_store::parks::TIME_WAKE,
                now,
                orbit_store::parks::WAKE_SLICE
            ],
        )?;
        tally.moved(TaskState::Parked, TaskState::Ready, woken as i64);
        out.left_work |= woken > 0;
        due = next(conn)?;
    }
    out.wake_at = rates::earliest(out.wake_at, due.map(|d| d as f64));
    Ok(())
}

/// Whether every claim got all it asked for (so more may be ready); true with no claim.
fn all_full(claims: &[ClaimRequest], each: &[Vec<ClaimedTask>]) -> bool {
    claims.iter().zip(each).all(|(c, got)| got.len() >= c.limit)
}

/// Moves every finished task run out of `running`, each only if its `lease_epoch` still
/// matches: one statement for the whole batch. Returns the ids it changed.
fn apply_fenced(
    conn: &Connection,
    finished: &[FinishedAttempt],
    now: i64,
) -> Result<HashSet<(Uuid, i64)>> {
    let mut accepted = HashSet::with_capacity(finished.len());
    for chunk in finished.chunks(CHUNK) {
        let mut values = Vec::with_capacity(chunk.len() * 11 + 1);
        for f in chunk {
            let (state, output, error, ready_at) = match &f.transition {
                Transition::Succeed { output, .. } => {
                    ("succeeded", Some(output.to_string()), None, None)
                }
                Transition::Retry {
                    ready_at,
                    failure,
                    keep_place,
                } => (
                    "ready",
                    None,
                    Some(failure.message.clone()),
                    // NULL keeps the task's old `ready_at`: its place in the queue.
                    (!keep_place).then(|| us(*ready_at)),
                ),
                Transition::Dead { failure, .. } => {
                    ("dead", None, Some(failure.message.clone()), None)
                }
                // Its children are made by the plan (`expansions`), with its count of needs.
                Transition::Expand { .. } => ("waiting", None, None, None),
                // Why and until when are set by the plan (`parks`).
                Transition::Park(_) => ("parked", None, None, None),
            };
            values.extend([
                text(f.task.id.to_string()),
                int(f.task.lease_epoch),
                text(state),
                opt_text(output),
                opt_text(error),
                opt_int(ready_at),
                // An attempt that does not count moves the base with it: its retry has as
                // many left.
                int(i64::from(!f.transition.spends_a_try())),
            ]);
            // A park's why and until when, in the same statement as its state.
            let park = match &f.transition {
                Transition::Park(p) => Some(p),
                _ => None,
            };
            values.extend([
                opt_text(park.map(|p| p.kind.as_str())),
                opt_int(park.and_then(|p| p.until).map(us)),
                opt_text(park.and_then(|p| p.event.clone())),
                opt_text(park.and_then(|p| p.note.clone())),
            ]);
        }
        // The time is the last value, after the rows'.
        values.push(int(now));
        let text = values_sql(
            "WITH v (id, epoch, state, output, error, ready_at, uncounted, pk, pu, pe, pn) AS (",
            11,
            chunk.len(),
            &format!(
                ") UPDATE task_runs SET state = v.state, output = v.output, error = v.error, \
                 ready_at = COALESCE(v.ready_at, task_runs.ready_at), \
                 park_kind = COALESCE(v.pk, task_runs.park_kind), \
                 park_until = CASE WHEN v.pk IS NULL THEN task_runs.park_until ELSE v.pu END, \
                 park_event = CASE WHEN v.pk IS NULL THEN task_runs.park_event ELSE v.pe END, \
                 park_note = CASE WHEN v.pk IS NULL THEN task_runs.park_note ELSE v.pn END, \
                 wake = CASE WHEN v.pk IS NULL THEN task_runs.wake ELSE NULL END, \
                 attempt_base = task_runs.attempt_base + v.uncounted, finished_at = CASE WHEN v.state IN ('ready', 'waiting', 'parked') THEN task_runs.finished_at ELSE ?{now} END, \
                 updated_at = ?{now}, lease_owner = NULL, lease_expires_at = NULL FROM v \
                 WHERE task_runs.id = v.id AND task_runs.state = 'running' AND task_runs.lease_epoch = v.epoch \
                 RETURNING task_runs.id, task_runs.lease_epoch",
                now = values.len()
            ),
        );
        let mut stmt = conn.prepare_cached(&text).map_err(sql)?;
        let mut rows = stmt.query(params_from_iter(&values)).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let id: String = row.get(0).map_err(sql)?;
            accepted.insert((uuid(&id)?, row.get(1).map_err(sql)?));
        }
    }
    Ok(accepted)
}

fn insert_attempts(conn: &Connection, kept: &[&FinishedAttempt]) -> Result<()> {
    let mut values = Vec::with_capacity(kept.len() * 11);
    for f in kept {
        let failure = f.transition.failure();
        values.extend([
            text(f.task.id.to_string()),
            int(f.task.attempt),
            text(f.task.run_id.to_string()),
            text(f.task.task_name.clone()),
            text(f.worker.clone()),
            int(us(f.started_at)),
            int(us(f.finished_at)),
            text(AttemptOutcome::of(f).as_str()),
            opt_text(failure.map(|fl| fl.message.clone())),
            text(f.log.clone()),
            opt_int(f.code_version),
        ]);
    }
    insert_rows(
        conn,
        "INSERT INTO attempts (task_run_id, attempt, run_id, task_name, worker, started_at, finished_at, outcome, error, log, code_version)",
        11,
        &values,
        "",
    )
}

/// The plan's changes to other task runs, in its order: skips and cancels of waiting tasks,
/// promotions, kept results, dead letters.
fn apply_plan(conn: &Connection, plan: &mut FinishPlan<'_>, now: i64) -> Result<()> {
    let mut ended = Vec::new();
    for (marks, state) in [
        (&plan.skips, TaskState::Skipped),
        (&plan.cancels, TaskState::Cancelled),
    ] {
        for m in marks {
            let changed = exec(
                conn,
                "UPDATE task_runs SET state = ?1, error = ?2, finished_at = ?3, updated_at = ?3 \
                 WHERE run_id = ?4 AND task_name = ?5 AND state = 'waiting'",
                params![state.as_str(), &m.reason, now, m.run.to_string(), m.task],
            )?;
            if changed > 0 {
                ended.push((m.run, state));
            }
        }
    }
    for (run, state) in ended {
        plan.ended(run, state);
    }
    let mut cancelled = Vec::new();
    for m in &plan.sibling_cancels {
        let n = exec(
            conn,
            "UPDATE task_runs SET state = 'cancelled', error = ?1, finished_at = ?2, updated_at = ?2 \
             WHERE run_id = ?3 AND map_parent = ?4 AND state = 'ready'",
            params![&m.reason, now, m.run.to_string(), m.task],
        )?;
        cancelled.push((m.run, n as i64));
    }
    for (run, n) in cancelled {
        plan.siblings_cancelled(run, n);
    }
    for (f, items) in &plan.expansions {
        expand(conn, f, items, now)?;
    }
    // The parks themselves were written with their state; a wait takes a signal that came
    // before it, if one is kept, and is ready at once.
    let mut signalled = Vec::new();
    for (f, park) in &plan.parks {
        let Some(name) = &park.event else { continue };
        let kept: Option<String> = conn
            .prepare_cached(
                "DELETE FROM signals WHERE id = (SELECT id FROM signals WHERE name = ?1 AND expires_at > ?2 \
                 ORDER BY id LIMIT 1) RETURNING payload",
            )
            .and_then(|mut s| s.query_row(params![name, now], |r| r.get(0)).optional())
            .map_err(sql)?;
        let Some(payload) = kept else { continue };
        exec(
            conn,
            "UPDATE task_runs SET state = 'ready', ready_at = ?1, wake = ?2 WHERE id = ?3",
            params![
                now,
                orbit_store::parks::signal_wake_text(name, &payload),
                f.task.id.to_string()
            ],
        )?;
        signalled.push((f.task.run_id, f.task.task_name.as_str(), name.as_str()));
    }
    for (run, task, name) in signalled {
        plan.signalled(run, task, name);
    }
    let mut promoted = 0;
    let mut promote = conn
        .prepare_cached(
            "UPDATE task_runs SET pending_needs = pending_needs - 1, \
             state = CASE WHEN pending_needs <= 1 THEN 'ready' ELSE state END, \
             ready_at = CASE WHEN pending_needs <= 1 THEN ?1 ELSE ready_at END, updated_at = ?1 \
             WHERE run_id = ?2 AND task_name = ?3 AND state = 'waiting' RETURNING state",
        )
        .map_err(sql)?;
    for (run, name) in &plan.promotions {
        let state: Option<String> = promote
            .query_row(params![now, run.to_string(), name], |r| r.get(0))
            .optional()
            .map_err(sql)?;
        if state.as_deref() == Some("ready") {
            promoted += 1;
        }
    }
    plan.promoted(promoted);
    for (key, task_run, output) in &plan.results {
        exec(
            conn,
            "INSERT INTO task_results (idempotency_key, task_run_id, output, created_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (idempotency_key) DO UPDATE SET task_run_id = excluded.task_run_id, \
             output = excluded.output, created_at = excluded.created_at",
            params![key, task_run.to_string(), output.to_string(), now],
        )?;
    }
    for f in &plan.dead {
        let t = &f.task;
        exec(
            conn,
            "INSERT OR REPLACE INTO dead_letters (task_run_id, run_id, pipeline_id, task_name, error, attempts, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                t.id.to_string(),
                t.run_id.to_string(),
                t.pipeline_id.to_string(),
                &t.task_name,
                f.transition.failure().map(|fl| fl.message.as_str()),
                i64::from(t.attempt),
                now
            ],
        )?;
    }
    Ok(())
}

/// A `for_each` task's children, one `ready` task run per element (with the parent's queue,
/// priority, retries and keys), in slices of one statement each; the parent waits for all.
fn expand(conn: &Connection, f: &FinishedAttempt, items: &[Value], now: i64) -> Result<()> {
    let parent = &f.task;
    exec(
        conn,
        "UPDATE task_runs SET pending_needs = ?1 WHERE id = ?2",
        params![items.len() as i64, parent.id.to_string()],
    )?;
    for (n, chunk) in items.chunks(CHUNK).enumerate() {
        let mut values = Vec::with_capacity(chunk.len() * 4 + 2);
        for (i, item) in chunk.iter().enumerate() {
            let index = n * CHUNK + i;
            values.extend([
                text(Uuid::now_v7().to_string()),
                text(orbit_core::pipeline::child_name(&parent.task_name, index)),
                int(index as i64),
                text(item.to_string()),
            ]);
        }
        values.extend([int(now), text(parent.id.to_string())]);
        let (at, of) = (values.len() - 1, values.len());
        let text_of = values_sql(
            "INSERT INTO task_runs (id, run_id, pipeline_id, task_name, seq, state, priority, pending_needs, \
             max_attempts, lease_ms, ready_at, updated_at, task_type, queue, concurrency_key, concurrency_limit, \
             run_keyed, rate_key, rate_limit, rate_per_ms, map_parent, map_index, map_item) \
             WITH v (id, name, idx, item) AS (",
            4,
            chunk.len(),
            &format!(
                ") SELECT v.id, p.run_id, p.pipeline_id, v.name, p.seq, 'ready', p.priority, 0, p.max_attempts, \
                 p.lease_ms, ?{at}, ?{at}, CASE WHEN p.task_type = 'for_each' THEN 'worker' ELSE p.task_type END, p.queue, \
                 json_extract(p.map_item, '$.ck'), COALESCE(json_extract(p.map_item, '$.cl'), 0), p.run_keyed, \
                 json_extract(p.map_item, '$.rk'), COALESCE(json_extract(p.map_item, '$.rl'), 0), \
                 COALESCE(json_extract(p.map_item, '$.rp'), 0), p.task_name, v.idx, v.item FROM v JOIN task_runs p ON p.id = ?{of}"
            ),
        );
        conn.prepare_cached(&text_of)
            .and_then(|mut s| s.execute(params_from_iter(&values)))
            .map_err(sql)?;
    }
    exec(
        conn,
        "UPDATE runs SET tasks_total = tasks_total + ?1 WHERE id = ?2",
        params![items.len() as i64, parent.run_id.to_string()],
    )?;
    Ok(())
}

fn claim_ready(
    conn: &Connection,
    c: &ClaimRequest,
    now: i64,
    running: &HashSet<Uuid>,
    events: &mut Vec<Event>,
    out: &mut BatchOutcome,
) -> Result<Vec<ClaimedTask>> {
    // Keyed task runs (a concurrency key, a keyed run, a rate key) need the claim that counts
    // per key; without any ready (the partial index answers at once, and SQLite's one writer
    // keeps it so until this commit) the plain claim reads the claim index alone.
    // Whether any of them has a rate key (its own partial index): only then are tokens spent
    // and the next one looked for.
    let (keyed, rate_keyed) = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM task_runs WHERE state = 'ready' \
             AND (concurrency_key IS NOT NULL OR run_keyed = 1 OR rate_key IS NOT NULL)), \
             EXISTS (SELECT 1 FROM task_runs WHERE state = 'ready' AND rate_key IS NOT NULL)",
        )
        .and_then(|mut s| s.query_row([], |r| Ok((r.get::<_, bool>(0)?, r.get::<_, bool>(1)?))))
        .map_err(sql)?;
    // ?1 the owner, ?2 the time, ?3 the limit; then the filters' values.
    let mut query = String::from(
        "UPDATE task_runs SET state = 'running', attempt = attempt + 1, lease_epoch = lease_epoch + 1, \
         lease_owner = ?1, lease_expires_at = ?2 + lease_ms * 1000, started_at = COALESCE(started_at, ?2), \
         claimed_at = ?2, updated_at = ?2 WHERE id IN (",
    );
    if keyed {
        query.push_str(&format!(
            "SELECT id FROM (SELECT *, {}, {} FROM (SELECT {} \
             FROM task_runs t JOIN runs r ON r.id = t.run_id WHERE t.state = 'ready' AND t.ready_at <= ?2",
            keys::RANKS,
            rates::RANK,
            keys::CANDIDATE_COLUMNS
        ));
    } else {
        query.push_str("SELECT id FROM task_runs WHERE state = 'ready' AND ready_at <= ?2");
    }
    let mut values = vec![
        text(c.owner.clone()),
        int(now),
        int(i64::try_from(c.limit).unwrap_or(i64::MAX)),
    ];
    if let Some(run) = c.run {
        values.push(text(run.to_string()));
        query.push_str(&format!(" AND run_id = ?{}", values.len()));
    }
    for (column, list) in [("queue", &c.queues), ("task_type", &c.types)] {
        if !list.is_empty() {
            query.push_str(&format!(" AND {column} IN ("));
            for (i, v) in list.iter().enumerate() {
                values.push(text(v.clone()));
                let sep = if i == 0 { "" } else { ", " };
                query.push_str(&format!("{sep}?{}", values.len()));
            }
            query.push(')');
        }
    }
    if keyed {
        query.push_str(&format!(
            "{}{} ORDER BY t.priority DESC, t.ready_at, t.id LIMIT ?3 * 2)) AS c WHERE {}{}",
            keys::NOT_FULL,
            rates::not_spent("?2"),
            keys::WITHIN_LIMITS,
            rates::within("?2")
        ));
    }
    query.push_str(
        " ORDER BY priority DESC, ready_at, id LIMIT ?3) \
         RETURNING id, run_id, pipeline_id, task_name, attempt, lease_epoch, lease_expires_at, priority, ready_at, attempt_base, \
         rate_key, rate_limit, rate_per_ms, map_item, wake",
    );
    let claimed_at = DateTime::from_timestamp_micros(now).unwrap_or_default();
    let mut stmt = conn.prepare_cached(&query).map_err(sql)?;
    let mut rows = stmt.query(params_from_iter(&values)).map_err(sql)?;
    let mut indexed = Vec::with_capacity(c.limit.min(1024));
    let mut rated: Vec<(String, i64, i64)> = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        if let Some(key) = row.get::<_, Option<String>>(10).map_err(sql)? {
            rated.push((key, row.get(11).map_err(sql)?, row.get(12).map_err(sql)?));
        }
        let id = |col: usize| -> Result<Uuid> { uuid(&row.get::<_, String>(col).map_err(sql)?) };
        let get = |col: usize| -> Result<i64> { row.get(col).map_err(sql) };
        let attempt = get(4)?;
        let task = ClaimedTask {
            id: id(0)?,
            run_id: id(1)?,
            pipeline_id: id(2)?,
            task_name: row.get(3).map_err(sql)?,
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            tries: u32::try_from(attempt - get(9)?).unwrap_or(1),
            lease_epoch: get(5)?,
            lease_expires_at: DateTime::from_timestamp_micros(get(6)?).unwrap_or_default(),
            claimed_at,
            item: row
                .get::<_, Option<String>>(13)
                .map_err(sql)?
                .map(|t| serde_json::from_str(&t))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("map item: {e}")))?,
            wake: row
                .get::<_, Option<String>>(14)
                .map_err(sql)?
                .map(|t| serde_json::from_str(&t))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("wake: {e}")))?,
            ready_at: DateTime::from_timestamp_micros(get(8)?),
        };
        indexed.push(((-get(7)?, get(8)?), task));
    }
    drop(rows);
    drop(stmt);
    if keyed {
        if rate_keyed {
            spend_tokens(conn, &rated, now, out)?;
        }
        // Candidates are a window of the queue's head: when keys cut a claim short, the head
        // may hold more of their backlog. Claim again: the keys now full are passed over.
        if !indexed.is_empty() && indexed.len() < c.limit {
            out.cut_short = true;
        }
    }
    // RETURNING gives no order; hand tasks out highest priority, oldest first.
    indexed.sort_by_key(|(k, t)| (*k, t.id));
    let claimed: Vec<ClaimedTask> = indexed.into_iter().map(|(_, t)| t).collect();
    events.extend(plan::claimed_events(&claimed, &c.owner));
    for run in plan::runs_to_start(&claimed, running) {
        let changed = exec(
            conn,
            "UPDATE runs SET state = 'running', started_at = ?1, updated_at = ?1 WHERE id = ?2 AND state = 'pending'",
            params![now, run.to_string()],
        )?;
        if changed > 0 {
            events.push(Event::run(run, EventKind::RunStarted));
        }
    }
    Ok(claimed)
}

/// Spends a token per claimed task run of each rate key, and notes when the next token of a
/// key that still has ready task runs comes.
fn spend_tokens(
    conn: &Connection,
    rated: &[(String, i64, i64)],
    now: i64,
    out: &mut BatchOutcome,
) -> Result<()> {
    for (key, n, capacity, per_ms) in
        rates::tally(rated.iter().map(|(k, c, p)| (k.as_str(), *c, *p)))
    {
        conn.prepare_cached(&rates::spend("?1", "?2", "?3", "?4", "?5"))
            .and_then(|mut s| s.execute(params![key, n, capacity, per_ms, now]))
            .map_err(sql)?;
    }
    let next: Option<f64> = conn
        .prepare_cached(&rates::next_token("?1"))
        .and_then(|mut s| s.query_row([now], |r| r.get(0)))
        .map_err(sql)?;
    out.wake_at = rates::earliest(out.wake_at, next);
    Ok(())
}

pub async fn extend_leases(
    writer: &Writer,
    leases: &[(Uuid, i64)],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let now = us(now);
    let leases = leases.to_vec();
    writer
        .transaction(move |t| {
            let mut lost = Vec::new();
            for (id, epoch) in &leases {
                let changed = exec(
                    t,
                    "UPDATE task_runs SET lease_expires_at = ?1 + lease_ms * 1000, updated_at = ?1 \
                     WHERE id = ?2 AND state = 'running' AND lease_epoch = ?3",
                    params![now, id.to_string(), epoch],
                )?;
                if changed == 0 {
                    lost.push(*id);
                }
            }
            Ok(lost)
        })
        .await
}
