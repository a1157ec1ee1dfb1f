//! The write transactions. Batches travel as arrays (`UNNEST`), so every statement has one
//! shape whatever the batch size and stays prepared.
//!
//! Lock order, to keep concurrent writers from deadlocking: the `runs` rows a transaction will
//! change are locked first, in id order; task runs after.

use crate::rows::{claimed_from_row, pipeline_from_row};
use crate::{CHANGES, CHANNEL, unavailable};
use chrono::{DateTime, Utc};
use orbit_core::protocol::Registration;
use orbit_core::transition::Transition;
use orbit_core::{Pipeline, RunState};
use orbit_store::plan::{self, AttemptOutcome, Event, EventKind, FinishPlan, RunCounters};
use orbit_store::{
    BatchOutcome, ClaimRequest, ClaimedTask, FinishedAttempt, NewRun, NodeInfo, PurgedLetters,
    Result, ServiceTask, StoreError, StoredPipeline,
};
use serde_json::{Value, json};
use sqlx::postgres::PgConnection;
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::collections::{BTreeSet, HashSet};
use uuid::Uuid;

type Tx = Transaction<'static, Postgres>;

async fn begin(pool: &PgPool) -> Result<Tx> {
    pool.begin().await.map_err(unavailable)
}

/// Writes the events of one transaction together, and wakes the live pages.
async fn flush_events(conn: &mut PgConnection, events: &[Event], at: DateTime<Utc>) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let runs: Vec<Option<Uuid>> = events.iter().map(|e| e.run).collect();
    let tasks: Vec<Option<&str>> = events.iter().map(|e| e.task.as_deref()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let data: Vec<Option<&Value>> = events.iter().map(|e| e.data.as_ref()).collect();
    // Live pages wait on the notification; one statement, so it costs no extra round trip.
    sqlx::query(
        "WITH added AS (INSERT INTO events (run_id, task_name, kind, data, at) \
         SELECT r, t, k, d, $5 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[]) AS v(r, t, k, d)) \
         SELECT pg_notify($6, '')",
    )
    .bind(&runs)
    .bind(&tasks)
    .bind(&kinds)
    .bind(&data)
    .bind(at)
    .bind(CHANGES)
    .execute(conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}

async fn notify(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

pub async fn save_pipeline(
    pool: &PgPool,
    pipeline: &Pipeline,
    source: Option<&str>,
    now: DateTime<Utc>,
) -> Result<StoredPipeline> {
    let hash = pipeline.content_hash();
    let definition =
        serde_json::to_value(pipeline).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut tx = begin(pool).await?;
    // Two servers saving the same name at once take turns instead of racing for a version.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(&pipeline.name)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    let latest =
        sqlx::query("SELECT * FROM pipelines WHERE name = $1 ORDER BY version DESC LIMIT 1")
            .bind(&pipeline.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
    if let Some(row) = &latest {
        let stored = pipeline_from_row(row)?;
        let deleted: Option<DateTime<Utc>> = row.try_get("deleted_at").map_err(unavailable)?;
        if stored.hash == hash && deleted.is_none() {
            return Ok(stored);
        }
    }
    let version = latest.map_or(Ok(0), |r| {
        r.try_get::<i64, _>("version").map_err(unavailable)
    })? + 1;
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO pipelines (id, name, version, hash, definition, source, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(&pipeline.name)
    .bind(version)
    .bind(&hash)
    .bind(&definition)
    .bind(source)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    let saved = json!({"pipeline": pipeline.name, "version": version});
    flush_events(
        &mut tx,
        &[Event::global(EventKind::PipelineSaved, saved)],
        now,
    )
    .await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(StoredPipeline {
        id,
        name: pipeline.name.clone(),
        version,
        hash,
        pipeline: pipeline.clone(),
        source: source.map(str::to_owned),
        created_at: now,
    })
}

/// `Ok(new_id)`, or `Err((existing_id, same_request))` when the idempotency key already names a
/// run.
pub async fn create_run(pool: &PgPool, new: &NewRun<'_>) -> Result<Result<Uuid, (Uuid, bool)>> {
    let now = new.now;
    let id = new.id;
    let p = &new.pipeline.pipeline;
    let mut tx = begin(pool).await?;
    if let Some(key) = &new.idempotency_key {
        let ttl = chrono::Duration::from_std(new.idempotency_ttl).unwrap_or(chrono::Duration::MAX);
        if let Some(cutoff) = now.checked_sub_signed(ttl) {
            sqlx::query("UPDATE runs SET idempotency_key = NULL WHERE idempotency_key = $1 AND created_at < $2")
                .bind(key)
                .bind(cutoff)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
    }
    let inserted = sqlx::query(
        "INSERT INTO runs (id, pipeline_id, pipeline_name, pipeline_version, state, input, priority, idempotency_key, \
         tasks_total, tasks_pending, created_at, updated_at, request_hash, triggered_by) \
         VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $8, $9, $9, $10, $11) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(id)
    .bind(new.pipeline.id)
    .bind(&p.name)
    .bind(new.pipeline.version)
    .bind(&new.input)
    .bind(new.priority)
    .bind(new.idempotency_key.as_deref())
    .bind(p.tasks.len() as i64)
    .bind(now)
    .bind(new.request_hash())
    .bind(new.triggered_by.as_str())
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    if inserted.rows_affected() == 0 {
        let (existing, hash): (Uuid, Option<String>) =
            sqlx::query_as("SELECT id, request_hash FROM runs WHERE idempotency_key = $1")
                .bind(new.idempotency_key.as_deref())
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
        // Runs from before request hashes were kept count as the same request.
        let same = hash.is_none_or(|h| h == new.request_hash());
        return Ok(Err((existing, same)));
    }
    let n = p.tasks.len();
    let mut ids = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut queues = Vec::with_capacity(n);
    let mut seqs = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut prios = Vec::with_capacity(n);
    let mut needs = Vec::with_capacity(n);
    let mut maxes = Vec::with_capacity(n);
    let mut leases = Vec::with_capacity(n);
    let mut ready_ats = Vec::with_capacity(n);
    for (seq, task) in p.tasks.iter().enumerate() {
        let ready = task.needs.is_empty();
        ids.push(Uuid::now_v7());
        names.push(task.name.as_str());
        types.push(task.task_type.as_str());
        queues.push(task.queue());
        seqs.push(seq as i32);
        states.push(if ready { "ready" } else { "waiting" });
        prios.push(task.priority.saturating_add(new.priority));
        needs.push(task.needs.len() as i32);
        maxes.push(i32::try_from(task.retry.max_attempts).unwrap_or(i32::MAX));
        leases.push(task.lease().as_millis() as i64);
        ready_ats.push(ready.then_some(now));
    }
    sqlx::query(
        "INSERT INTO task_runs (id, run_id, pipeline_id, task_name, task_type, queue, seq, state, priority, pending_needs, \
         max_attempts, lease_ms, ready_at, updated_at) \
         SELECT id, $1, $2, name, ty, q, seq, st, pr, nd, mx, ls, ra, $3 FROM UNNEST($4::uuid[], $5::text[], $6::text[], \
         $7::text[], $8::int[], $9::text[], $10::int[], $11::int[], $12::int[], $13::bigint[], $14::timestamptz[]) \
         AS v(id, name, ty, q, seq, st, pr, nd, mx, ls, ra)",
    )
    .bind(id)
    .bind(new.pipeline.id)
    .bind(now)
    .bind(&ids)
    .bind(&names)
    .bind(&types)
    .bind(&queues)
    .bind(&seqs)
    .bind(&states)
    .bind(&prios)
    .bind(&needs)
    .bind(&maxes)
    .bind(&leases)
    .bind(&ready_ats)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    let created = Event::run(id, EventKind::RunCreated)
        .with_data(json!({"pipeline": p.name, "version": new.pipeline.version}));
    flush_events(&mut tx, &[created], now).await?;
    if states.contains(&"ready") {
        notify(&mut tx).await?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(Ok(id))
}

/// Locks the runs rows first, in id order (see the module's lock order).
async fn lock_runs(conn: &mut PgConnection, runs: &BTreeSet<Uuid>) -> Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = runs.iter().copied().collect();
    sqlx::query("SELECT id FROM runs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(&ids)
        .fetch_all(conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

pub async fn finish_and_claim(
    pool: &PgPool,
    finished: &[FinishedAttempt],
    claims: &[ClaimRequest],
    now: DateTime<Utc>,
) -> Result<(BatchOutcome, Vec<Vec<ClaimedTask>>)> {
    let mut out = BatchOutcome::default();
    let mut tx = begin(pool).await?;
    let runs: BTreeSet<Uuid> = finished.iter().map(|f| f.task.run_id).collect();
    lock_runs(&mut tx, &runs).await?;
    let accepted = apply_fenced(&mut tx, finished, now).await?;
    let (kept, lease_lost) = orbit_store::fenced(finished, &accepted);
    out.lease_lost = lease_lost;
    insert_attempts(&mut tx, &kept).await?;
    let mut plan = FinishPlan::new(kept);
    apply_plan(&mut tx, &mut plan, now).await?;
    let mut running: HashSet<Uuid> = HashSet::new();
    if !plan.counts.is_empty() {
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
        .fetch_all(&mut *tx)
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
        let settled;
        (settled, running) = plan.settle(counters);
        if !settled.is_empty() {
            let ids: Vec<Uuid> = settled.iter().map(|(run, _)| *run).collect();
            let states: Vec<&str> = settled.iter().map(|(_, state)| state.as_str()).collect();
            sqlx::query(
                "UPDATE runs r SET state = v.state, finished_at = $3, updated_at = $3 \
                 FROM UNNEST($1::uuid[], $2::text[]) AS v(id, state) WHERE r.id = v.id",
            )
            .bind(&ids)
            .bind(&states)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        out.settled_runs = settled;
    }
    // Claims in one commit see each other's: no task is handed out twice.
    let mut events = std::mem::take(&mut plan.events);
    let mut each = Vec::with_capacity(claims.len());
    for c in claims {
        each.push(if c.limit > 0 {
            claim_ready(&mut tx, c, now, &running, &mut events).await?
        } else {
            Vec::new()
        });
    }
    flush_events(&mut tx, &events, now).await?;
    out.left_work = plan.ready > 0 && all_full(claims, &each);
    if out.left_work {
        notify(&mut tx).await?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok((out, each))
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
    for f in finished {
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
        };
        ids.push(f.task.id);
        epochs.push(f.task.lease_epoch);
        states.push(state);
        outputs.push(output);
        errors.push(error);
        ready_ats.push(ready_at);
    }
    let rows = sqlx::query(
        "UPDATE task_runs t SET state = v.state, output = v.output, error = v.error, \
         ready_at = COALESCE(v.ready_at, t.ready_at), \
         finished_at = CASE WHEN v.state = 'ready' THEN t.finished_at ELSE $7 END, updated_at = $7, \
         lease_owner = NULL, lease_expires_at = NULL \
         FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::jsonb[], $5::text[], $6::timestamptz[]) \
         AS v(id, epoch, state, output, error, ready_at) \
         WHERE t.id = v.id AND t.state = 'running' AND t.lease_epoch = v.epoch RETURNING t.id, t.lease_epoch",
    )
    .bind(&ids)
    .bind(&epochs)
    .bind(&states)
    .bind(&outputs)
    .bind(&errors)
    .bind(&ready_ats)
    .bind(now)
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
    for state in ["skipped", "cancelled"] {
        let marks = if state == "skipped" {
            &plan.skips
        } else {
            &plan.cancels
        };
        if marks.is_empty() {
            continue;
        }
        let runs: Vec<Uuid> = marks.iter().map(|m| m.run).collect();
        let names: Vec<&str> = marks.iter().map(|m| m.task).collect();
        let reasons: Vec<&str> = marks.iter().map(|m| m.reason.as_str()).collect();
        let ended: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE task_runs t SET state = $5, error = v.reason, finished_at = $4, updated_at = $4 \
             FROM (SELECT DISTINCT ON (r, name) r, name, reason FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS u(r, name, reason)) v \
             WHERE t.run_id = v.r AND t.task_name = v.name AND t.state = 'waiting' RETURNING t.run_id",
        )
        .bind(&runs)
        .bind(&names)
        .bind(&reasons)
        .bind(now)
        .bind(state)
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
        for run in ended {
            plan.ended(run);
        }
    }
    if !plan.promotions.is_empty() {
        let runs: Vec<Uuid> = plan.promotions.iter().map(|p| p.0).collect();
        let names: Vec<&str> = plan.promotions.iter().map(|p| p.1).collect();
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
        plan.ready += became_ready.iter().filter(|r| **r).count();
    }
    if !plan.results.is_empty() {
        let keys: Vec<&str> = plan.results.iter().map(|r| r.0).collect();
        let ids: Vec<Uuid> = plan.results.iter().map(|r| r.1).collect();
        let outputs: Vec<&Value> = plan.results.iter().map(|r| r.2).collect();
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
    }
    let dead = &plan.dead;
    if !dead.is_empty() {
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
    }
    Ok(())
}

const CLAIMED_COLUMNS: &str = "t.id, t.run_id, t.pipeline_id, t.task_name, t.attempt, t.attempt_base, t.lease_epoch, \
     t.lease_expires_at, t.claimed_at, t.updated_at, t.priority, t.ready_at";

async fn claim_ready(
    conn: &mut PgConnection,
    c: &ClaimRequest,
    now: DateTime<Utc>,
    running: &HashSet<Uuid>,
    events: &mut Vec<Event>,
) -> Result<Vec<ClaimedTask>> {
    // Every filter is always bound (NULL = any), so the statement has one shape and one plan
    // per claimer.
    let queues = (!c.queues.is_empty()).then_some(&c.queues);
    let types = (!c.types.is_empty()).then_some(&c.types);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH picked AS ( \
           SELECT id FROM task_runs WHERE state = 'ready' AND ready_at <= $2 \
           AND ($4::uuid IS NULL OR run_id = $4) AND ($5::text[] IS NULL OR queue = ANY($5)) \
           AND ($6::text[] IS NULL OR task_type = ANY($6)) \
           ORDER BY priority DESC, ready_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
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
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let priority: i32 = row.try_get("priority").map_err(unavailable)?;
        let ready_at: Option<DateTime<Utc>> = row.try_get("ready_at").map_err(unavailable)?;
        claimed.push(((-priority, ready_at), claimed_from_row(row)?));
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

/// Locks the run's row for the transaction and reads its state.
async fn locked_run_state(tx: &mut PgConnection, run: Uuid) -> Result<RunState> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM runs WHERE id = $1 FOR UPDATE")
            .bind(run)
            .fetch_optional(tx)
            .await
            .map_err(unavailable)?;
    state
        .ok_or_else(|| StoreError::NotFound(format!("run {run}")))?
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("run state: {e}")))
}

pub async fn cancel_run(pool: &PgPool, run: Uuid, now: DateTime<Utc>) -> Result<()> {
    let mut tx = begin(pool).await?;
    let cancel = plan::cancel(run, locked_run_state(&mut tx, run).await?)?;
    // A running attempt ends here: its record says so (its holder's late result is fenced
    // out), and every node checks its leases at once.
    sqlx::query(
        "INSERT INTO attempts (task_run_id, attempt, run_id, task_name, worker, started_at, finished_at, outcome, error, log) \
         SELECT id, attempt, run_id, task_name, COALESCE(lease_owner, ''), COALESCE(claimed_at, started_at, $1), $1, \
         $3, $4, $5 \
         FROM task_runs WHERE run_id = $2 AND state = 'running' ON CONFLICT DO NOTHING",
    )
    .bind(now)
    .bind(run)
    .bind(cancel.outcome.as_str())
    .bind(cancel.error)
    .bind(cancel.log)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(crate::CONTROL)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    sqlx::query(
        "UPDATE task_runs SET state = 'cancelled', error = $3, finished_at = $1, updated_at = $1, \
         lease_owner = NULL, lease_expires_at = NULL WHERE run_id = $2 AND state IN ($4, $5, $6)",
    )
    .bind(now)
    .bind(run)
    .bind(cancel.error)
    .bind(cancel.unfinished[0])
    .bind(cancel.unfinished[1])
    .bind(cancel.unfinished[2])
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    sqlx::query("UPDATE runs SET state = 'cancelled', tasks_pending = 0, finished_at = $1, updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(run)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    flush_events(&mut tx, &[cancel.event], now).await?;
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
    let requeued: Vec<String> = sqlx::query_scalar(
        "UPDATE task_runs SET state = CASE WHEN pending_needs <= 0 THEN 'ready' ELSE 'waiting' END, \
         ready_at = CASE WHEN pending_needs <= 0 THEN $1 ELSE NULL END, attempt_base = attempt, \
         error = NULL, output = NULL, finished_at = NULL, updated_at = $1 \
         WHERE run_id = $2 AND task_name = ANY($3) AND state = ANY($4) RETURNING task_name",
    )
    .bind(now)
    .bind(run)
    .bind(tasks)
    .bind(&plan::REQUEUEABLE[..])
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
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
        flush_events(&mut tx, &plan::requeued_events(run, &requeued), now).await?;
        notify(&mut tx).await?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(requeued)
}

/// Deletes a settled run and everything that hangs off it (task runs, attempts and dead letters
/// go by `ON DELETE CASCADE`).
pub async fn delete_run(pool: &PgPool, id: Uuid, now: DateTime<Utc>) -> Result<()> {
    let mut tx = begin(pool).await?;
    let state = locked_run_state(&mut tx, id).await?;
    if !state.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "run {id} is {state}; cancel it before deleting it"
        )));
    }
    for sql in [
        "DELETE FROM task_results WHERE task_run_id IN (SELECT id FROM task_runs WHERE run_id = $1)",
        "DELETE FROM events WHERE run_id = $1",
        "DELETE FROM runs WHERE id = $1",
    ] {
        sqlx::query(sql)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
    }
    let deleted = Event::global(EventKind::RunDeleted, json!({ "run": id }));
    flush_events(&mut tx, &[deleted], now).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(())
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

pub async fn delete_pipeline(pool: &PgPool, name: &str, now: DateTime<Utc>) -> Result<u64> {
    let mut tx = begin(pool).await?;
    let hidden =
        sqlx::query("UPDATE pipelines SET deleted_at = $1 WHERE name = $2 AND deleted_at IS NULL")
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
    if hidden > 0 {
        let deleted = Event::global(EventKind::PipelineDeleted, json!({"pipeline": name}));
        flush_events(&mut tx, &[deleted], now).await?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(hidden)
}

pub async fn node_heartbeat(pool: &PgPool, node: &NodeInfo, now: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "INSERT INTO nodes (id, kind, host, pid, version, queues, concurrency, heartbeat_ms, started_at, last_seen_at, service) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10) \
         ON CONFLICT (id) DO UPDATE SET last_seen_at = excluded.last_seen_at, stopped_at = NULL",
    )
    .bind(&node.id)
    .bind(&node.kind)
    .bind(&node.host)
    .bind(i64::from(node.pid))
    .bind(&node.version)
    .bind(json!(node.queues))
    .bind(i64::from(node.concurrency))
    .bind(i64::try_from(node.heartbeat_ms).unwrap_or(i64::MAX))
    .bind(now)
    .bind(&node.service)
    .execute(pool)
    .await
    .map_err(unavailable)?;
    Ok(())
}

pub async fn node_stopped(pool: &PgPool, id: &str, now: DateTime<Utc>) -> Result<()> {
    sqlx::query("UPDATE nodes SET stopped_at = $1, last_seen_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(pool)
        .await
        .map_err(unavailable)?;
    Ok(())
}

pub async fn register_service(
    pool: &PgPool,
    reg: &Registration,
    now: DateTime<Utc>,
) -> Result<Vec<ServiceTask>> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
    sqlx::query(
        "INSERT INTO services (id, version, url, registered_at, last_seen_at) VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, url = excluded.url, last_seen_at = excluded.last_seen_at",
    )
    .bind(&reg.service_id)
    .bind(&reg.version)
    .bind(&reg.url)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    let mut tasks = Vec::with_capacity(reg.tasks.len());
    for task in &reg.tasks {
        // Row lock: two workers of one service registering at once bump the version once.
        let current: Option<(String, i64)> = sqlx::query_as(
            "SELECT code_hash, code_version FROM service_tasks WHERE name = $1 FOR UPDATE",
        )
        .bind(&task.name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        let (version, changed) = match current {
            Some((hash, v)) if hash == task.code_hash => (v, false),
            Some((_, v)) => (v + 1, true),
            None => (1, true),
        };
        let options = serde_json::to_value(task).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO service_tasks (name, service_id, code_hash, code_version, options, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET service_id = excluded.service_id, \
             code_hash = excluded.code_hash, code_version = excluded.code_version, options = excluded.options, \
             updated_at = excluded.updated_at",
        )
        .bind(&task.name)
        .bind(&reg.service_id)
        .bind(&task.code_hash)
        .bind(version)
        .bind(&options)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if changed {
            sqlx::query(
                "INSERT INTO task_code_history (task_name, code_version, service_id, code_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(&task.name)
            .bind(version)
            .bind(&reg.service_id)
            .bind(&task.code_hash)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        tasks.push(ServiceTask {
            name: task.name.clone(),
            service_id: reg.service_id.clone(),
            code_hash: task.code_hash.clone(),
            code_version: version,
            options: task.clone(),
            updated_at: now,
            changed,
        });
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(tasks)
}

pub async fn set_progress(
    pool: &PgPool,
    id: Uuid,
    epoch: i64,
    progress: f64,
    message: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE task_runs SET progress = $1, progress_message = $2, updated_at = $3 \
         WHERE id = $4 AND state = 'running' AND lease_epoch = $5",
    )
    .bind(progress)
    .bind(message)
    .bind(now)
    .bind(id)
    .bind(epoch)
    .execute(pool)
    .await
    .map_err(unavailable)?;
    Ok(done.rows_affected() == 1)
}
