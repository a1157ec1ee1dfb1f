//! The write transactions. Each public function here is one `BEGIN IMMEDIATE … COMMIT`.

use crate::{unavailable, us};
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
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::collections::HashSet;
use uuid::Uuid;

async fn begin(pool: &SqlitePool) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
    pool.begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(unavailable)
}

pub async fn save_pipeline(
    pool: &SqlitePool,
    pipeline: &Pipeline,
    source: Option<&str>,
    now: DateTime<Utc>,
) -> Result<StoredPipeline> {
    let hash = pipeline.content_hash();
    let definition =
        serde_json::to_string(pipeline).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut tx = begin(pool).await?;
    let latest =
        sqlx::query("SELECT * FROM pipelines WHERE name = ?1 ORDER BY version DESC LIMIT 1")
            .bind(&pipeline.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
    if let Some(row) = &latest {
        let stored = crate::rows::pipeline_from_row(row)?;
        let deleted: Option<i64> = row.try_get("deleted_at").map_err(unavailable)?;
        if stored.hash == hash && deleted.is_none() {
            return Ok(stored);
        }
    }
    let version = latest.map_or(Ok(0), |r| {
        r.try_get::<i64, _>("version").map_err(unavailable)
    })? + 1;
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO pipelines (id, name, version, hash, definition, source, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(id.to_string())
    .bind(&pipeline.name)
    .bind(version)
    .bind(&hash)
    .bind(&definition)
    .bind(source)
    .bind(us(now))
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    let saved = json!({"pipeline": pipeline.name, "version": version});
    flush_events(
        &mut tx,
        &[Event::global(EventKind::PipelineSaved, saved)],
        us(now),
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

/// `Ok(new_id)`, or `Err(existing_id)` when the idempotency key already names a run.
pub async fn create_run(pool: &SqlitePool, new: &NewRun<'_>) -> Result<Result<Uuid, (Uuid, bool)>> {
    let now = us(new.now);
    let id = new.id;
    let p = &new.pipeline.pipeline;
    let mut tx = begin(pool).await?;
    if let Some(key) = &new.idempotency_key {
        let ttl = chrono::Duration::from_std(new.idempotency_ttl).unwrap_or(chrono::Duration::MAX);
        let cutoff = new.now.checked_sub_signed(ttl).map_or(i64::MIN, us);
        sqlx::query(
            "UPDATE runs SET idempotency_key = NULL WHERE idempotency_key = ?1 AND created_at < ?2",
        )
        .bind(key)
        .bind(cutoff)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    }
    let inserted = sqlx::query(
        "INSERT INTO runs (id, pipeline_id, pipeline_name, pipeline_version, state, input, priority, idempotency_key, \
         tasks_total, tasks_pending, created_at, updated_at, request_hash, triggered_by) \
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7, ?8, ?8, ?9, ?9, ?10, ?11) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(id.to_string())
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
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    if inserted.rows_affected() == 0 {
        let (existing, hash): (String, Option<String>) =
            sqlx::query_as("SELECT id, request_hash FROM runs WHERE idempotency_key = ?1")
                .bind(new.idempotency_key.as_deref())
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
        let existing =
            Uuid::parse_str(&existing).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // Runs from before request hashes were kept count as the same request.
        let same = hash.is_none_or(|h| h == new.request_hash());
        return Ok(Err((existing, same)));
    }
    let pipeline_id = new.pipeline.id.to_string();
    let run_id = id.to_string();
    let tasks: Vec<(usize, &orbit_core::TaskDef)> = p.tasks.iter().enumerate().collect();
    for chunk in tasks.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO task_runs (id, run_id, pipeline_id, task_name, seq, state, priority, pending_needs, \
             max_attempts, lease_ms, ready_at, updated_at, task_type, queue) ",
        );
        q.push_values(chunk, |mut b, (seq, task)| {
            let ready = task.needs.is_empty();
            b.push_bind(Uuid::now_v7().to_string())
                .push_bind(&run_id)
                .push_bind(&pipeline_id)
                .push_bind(&task.name)
                .push_bind(*seq as i64)
                .push_bind(if ready { "ready" } else { "waiting" })
                .push_bind(task.priority.saturating_add(new.priority))
                .push_bind(task.needs.len() as i64)
                .push_bind(i64::from(task.retry.max_attempts))
                .push_bind(task.lease().as_millis() as i64)
                .push_bind(ready.then_some(now))
                .push_bind(now)
                .push_bind(task.task_type.as_str())
                .push_bind(task.queue());
        });
        q.build()
            .persistent(chunk.len() <= 16)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
    }
    let created = Event::run(id, EventKind::RunCreated)
        .with_data(json!({"pipeline": p.name, "version": new.pipeline.version}));
    flush_events(&mut tx, &[created], now).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(Ok(id))
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

pub async fn finish_and_claim(
    pool: &SqlitePool,
    finished: &[FinishedAttempt],
    claims: &[ClaimRequest],
    now: DateTime<Utc>,
) -> Result<(BatchOutcome, Vec<Vec<ClaimedTask>>)> {
    let now = us(now);
    let mut out = BatchOutcome::default();
    let mut tx = begin(pool).await?;
    let accepted = apply_fenced(&mut tx, finished, now).await?;
    let (kept, lease_lost) = orbit_store::fenced(finished, &accepted);
    out.lease_lost = lease_lost;
    insert_attempts(&mut tx, &kept).await?;
    let mut plan = FinishPlan::new(kept);
    apply_plan(&mut tx, &mut plan, now).await?;
    let mut counters = Vec::with_capacity(plan.counts.len());
    for (run, (done, dead)) in &plan.counts {
        let row = sqlx::query(
            "UPDATE runs SET tasks_pending = tasks_pending - ?1, tasks_dead = tasks_dead + ?2, updated_at = ?3 \
             WHERE id = ?4 RETURNING tasks_pending, tasks_dead, state",
        )
        .bind(done)
        .bind(dead)
        .bind(now)
        .bind(run.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        let state: String = row.try_get(2).map_err(unavailable)?;
        counters.push(RunCounters {
            run: *run,
            pending: row.try_get(0).map_err(unavailable)?,
            dead: row.try_get(1).map_err(unavailable)?,
            state: state
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("run state: {e}")))?,
        });
    }
    let (settled, running) = plan.settle(counters);
    for (run, state) in &settled {
        sqlx::query("UPDATE runs SET state = ?1, finished_at = ?2, updated_at = ?2 WHERE id = ?3")
            .bind(state.as_str())
            .bind(now)
            .bind(run.to_string())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
    }
    out.settled_runs = settled;
    // Claims in one commit see each other's: no task is handed out twice.
    let mut events = plan.events;
    let mut each = Vec::with_capacity(claims.len());
    for c in claims {
        each.push(if c.limit > 0 {
            claim_ready(&mut tx, c, now, &running, &mut events).await?
        } else {
            Vec::new()
        });
    }
    flush_events(&mut tx, &events, now).await?;
    tx.commit().await.map_err(unavailable)?;
    // Work these claimers may leave for others: tell them.
    out.left_work = plan.ready > 0 && all_full(claims, &each);
    Ok((out, each))
}

/// Whether every claim got all it asked for (so more may be ready); true with no claim.
fn all_full(claims: &[ClaimRequest], each: &[Vec<ClaimedTask>]) -> bool {
    claims.iter().zip(each).all(|(c, got)| got.len() >= c.limit)
}

/// Moves every finished task run out of `running`, each only if its `lease_epoch` still
/// matches: one statement for the whole batch. Returns the ids it changed.
async fn apply_fenced(
    conn: &mut SqliteConnection,
    finished: &[FinishedAttempt],
    now: i64,
) -> Result<HashSet<(Uuid, i64)>> {
    let mut accepted = HashSet::with_capacity(finished.len());
    for chunk in finished.chunks(CHUNK) {
        let mut q =
            QueryBuilder::<Sqlite>::new("WITH v (id, epoch, state, output, error, ready_at) AS (");
        q.push_values(chunk, |mut b, f| {
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
            };
            b.push_bind(f.task.id.to_string())
                .push_bind(f.task.lease_epoch)
                .push_bind(state)
                .push_bind(output)
                .push_bind(error)
                .push_bind(ready_at);
        });
        q.push(
            ") UPDATE task_runs SET state = v.state, output = v.output, error = v.error, \
             ready_at = COALESCE(v.ready_at, task_runs.ready_at), \
             finished_at = CASE WHEN v.state = 'ready' THEN task_runs.finished_at ELSE ",
        )
        .push_bind(now)
        .push(" END, updated_at = ")
        .push_bind(now)
        .push(
            ", lease_owner = NULL, lease_expires_at = NULL FROM v \
             WHERE task_runs.id = v.id AND task_runs.state = 'running' AND task_runs.lease_epoch = v.epoch \
             RETURNING task_runs.id, task_runs.lease_epoch",
        );
        for row in q
            .build()
            .persistent(chunk.len() <= 16)
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable)?
        {
            let id: String = row.try_get(0).map_err(unavailable)?;
            let epoch: i64 = row.try_get(1).map_err(unavailable)?;
            accepted.insert((
                Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                epoch,
            ));
        }
    }
    Ok(accepted)
}

async fn insert_attempts(conn: &mut SqliteConnection, kept: &[&FinishedAttempt]) -> Result<()> {
    for chunk in kept.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO attempts (task_run_id, attempt, run_id, task_name, worker, started_at, finished_at, outcome, error, log, code_version) ",
        );
        q.push_values(chunk, |mut b, f| {
            let failure = f.transition.failure();
            b.push_bind(f.task.id.to_string())
                .push_bind(i64::from(f.task.attempt))
                .push_bind(f.task.run_id.to_string())
                .push_bind(f.task.task_name.clone())
                .push_bind(f.worker.clone())
                .push_bind(us(f.started_at))
                .push_bind(us(f.finished_at))
                .push_bind(AttemptOutcome::of(f).as_str())
                .push_bind(failure.map(|fl| fl.message.clone()))
                .push_bind(f.log.clone())
                .push_bind(f.code_version);
        });
        q.build()
            .persistent(chunk.len() <= 16)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

/// The plan's changes to other task runs, in its order: skips and cancels of waiting tasks,
/// promotions, kept results, dead letters.
async fn apply_plan(
    conn: &mut SqliteConnection,
    plan: &mut FinishPlan<'_>,
    now: i64,
) -> Result<()> {
    let mut ended = Vec::new();
    for (marks, state) in [(&plan.skips, "skipped"), (&plan.cancels, "cancelled")] {
        for m in marks {
            let changed = sqlx::query(
                "UPDATE task_runs SET state = ?1, error = ?2, finished_at = ?3, updated_at = ?3 \
                 WHERE run_id = ?4 AND task_name = ?5 AND state = 'waiting'",
            )
            .bind(state)
            .bind(&m.reason)
            .bind(now)
            .bind(m.run.to_string())
            .bind(m.task)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            if changed.rows_affected() > 0 {
                ended.push(m.run);
            }
        }
    }
    for run in ended {
        plan.ended(run);
    }
    for (run, name) in &plan.promotions {
        let state: Option<String> = sqlx::query_scalar(
            "UPDATE task_runs SET pending_needs = pending_needs - 1, \
             state = CASE WHEN pending_needs <= 1 THEN 'ready' ELSE state END, \
             ready_at = CASE WHEN pending_needs <= 1 THEN ?1 ELSE ready_at END, updated_at = ?1 \
             WHERE run_id = ?2 AND task_name = ?3 AND state = 'waiting' RETURNING state",
        )
        .bind(now)
        .bind(run.to_string())
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?;
        if state.as_deref() == Some("ready") {
            plan.ready += 1;
        }
    }
    for (key, task_run, output) in &plan.results {
        sqlx::query(
            "INSERT INTO task_results (idempotency_key, task_run_id, output, created_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (idempotency_key) DO UPDATE SET task_run_id = excluded.task_run_id, \
             output = excluded.output, created_at = excluded.created_at",
        )
        .bind(key)
        .bind(task_run.to_string())
        .bind(output.to_string())
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    }
    for f in &plan.dead {
        let t = &f.task;
        sqlx::query(
            "INSERT OR REPLACE INTO dead_letters (task_run_id, run_id, pipeline_id, task_name, error, attempts, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(t.id.to_string())
        .bind(t.run_id.to_string())
        .bind(t.pipeline_id.to_string())
        .bind(&t.task_name)
        .bind(f.transition.failure().map(|fl| fl.message.as_str()))
        .bind(i64::from(t.attempt))
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    }
    Ok(())
}

async fn claim_ready(
    conn: &mut SqliteConnection,
    c: &ClaimRequest,
    now: i64,
    running: &HashSet<Uuid>,
    events: &mut Vec<Event>,
) -> Result<Vec<ClaimedTask>> {
    let mut q = QueryBuilder::<Sqlite>::new(
        "UPDATE task_runs SET state = 'running', attempt = attempt + 1, lease_epoch = lease_epoch + 1, lease_owner = ",
    );
    q.push_bind(&c.owner)
        .push(", lease_expires_at = ")
        .push_bind(now)
        .push(" + lease_ms * 1000, started_at = COALESCE(started_at, ")
        .push_bind(now)
        .push("), claimed_at = ")
        .push_bind(now)
        .push(", updated_at = ")
        .push_bind(now)
        .push(" WHERE id IN (SELECT id FROM task_runs WHERE state = 'ready' AND ready_at <= ")
        .push_bind(now);
    if let Some(run) = c.run {
        q.push(" AND run_id = ").push_bind(run.to_string());
    }
    for (column, values) in [("queue", &c.queues), ("task_type", &c.types)] {
        if !values.is_empty() {
            q.push(format_args!(" AND {column} IN ("));
            let mut list = q.separated(", ");
            for v in values {
                list.push_bind(v.clone());
            }
            q.push(")");
        }
    }
    q.push(" ORDER BY priority DESC, ready_at, id LIMIT ")
        .push_bind(i64::try_from(c.limit).unwrap_or(i64::MAX))
        .push(
            ") RETURNING id, run_id, pipeline_id, task_name, attempt, lease_epoch, lease_expires_at, priority, ready_at, attempt_base",
        );
    let rows = q.build().fetch_all(&mut *conn).await.map_err(unavailable)?;
    let claimed_at = DateTime::from_timestamp_micros(now).unwrap_or_default();
    let mut claimed = Vec::with_capacity(rows.len());
    let mut order = Vec::with_capacity(rows.len());
    for row in &rows {
        let parse = |col: usize| -> Result<Uuid> {
            let s: String = row.try_get(col).map_err(unavailable)?;
            Uuid::parse_str(&s).map_err(|e| StoreError::Corrupt(e.to_string()))
        };
        let expires: i64 = row.try_get(6).map_err(unavailable)?;
        let priority: i64 = row.try_get(7).map_err(unavailable)?;
        let ready_at: i64 = row.try_get(8).map_err(unavailable)?;
        let attempt: i64 = row.try_get(4).map_err(unavailable)?;
        let base: i64 = row.try_get(9).map_err(unavailable)?;
        order.push((-priority, ready_at));
        claimed.push(ClaimedTask {
            id: parse(0)?,
            run_id: parse(1)?,
            pipeline_id: parse(2)?,
            task_name: row.try_get(3).map_err(unavailable)?,
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            tries: u32::try_from(attempt - base).unwrap_or(1),
            lease_epoch: row.try_get(5).map_err(unavailable)?,
            lease_expires_at: DateTime::from_timestamp_micros(expires).unwrap_or_default(),
            claimed_at,
        });
    }
    // RETURNING gives no order; hand tasks out highest priority, oldest first.
    let mut indexed: Vec<_> = order.into_iter().zip(claimed).collect();
    indexed.sort_by_key(|(k, t)| (*k, t.id));
    let claimed: Vec<ClaimedTask> = indexed.into_iter().map(|(_, t)| t).collect();
    events.extend(plan::claimed_events(&claimed, &c.owner));
    for run in plan::runs_to_start(&claimed, running) {
        let changed = sqlx::query(
            "UPDATE runs SET state = 'running', started_at = ?1, updated_at = ?1 WHERE id = ?2 AND state = 'pending'",
        )
        .bind(now)
        .bind(run.to_string())
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
        if changed.rows_affected() > 0 {
            events.push(Event::run(run, EventKind::RunStarted));
        }
    }
    Ok(claimed)
}

pub async fn extend_leases(
    pool: &SqlitePool,
    leases: &[(Uuid, i64)],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let now = us(now);
    let mut lost = Vec::new();
    let mut tx = begin(pool).await?;
    for (id, epoch) in leases {
        let changed = sqlx::query(
            "UPDATE task_runs SET lease_expires_at = ?1 + lease_ms * 1000, updated_at = ?1 \
             WHERE id = ?2 AND state = 'running' AND lease_epoch = ?3",
        )
        .bind(now)
        .bind(id.to_string())
        .bind(epoch)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if changed.rows_affected() == 0 {
            lost.push(*id);
        }
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(lost)
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

pub async fn cancel_run(pool: &SqlitePool, run: Uuid, now: DateTime<Utc>) -> Result<()> {
    let now = us(now);
    let mut tx = begin(pool).await?;
    let cancel = plan::cancel(run, run_state(&mut tx, run).await?)?;
    // A running attempt ends here: its record says so (its holder's late result is fenced out).
    sqlx::query(
        "INSERT INTO attempts (task_run_id, attempt, run_id, task_name, worker, started_at, finished_at, outcome, error, log) \
         SELECT id, attempt, run_id, task_name, COALESCE(lease_owner, ''), COALESCE(claimed_at, started_at, ?1), ?1, \
         ?3, ?4, ?5 \
         FROM task_runs WHERE run_id = ?2 AND state = 'running' ON CONFLICT DO NOTHING",
    )
    .bind(now)
    .bind(run.to_string())
    .bind(cancel.outcome.as_str())
    .bind(cancel.error)
    .bind(cancel.log)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
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
    for name in tasks {
        let changed = sqlx::query(
            "UPDATE task_runs SET state = CASE WHEN pending_needs <= 0 THEN 'ready' ELSE 'waiting' END, \
             ready_at = CASE WHEN pending_needs <= 0 THEN ?1 ELSE NULL END, attempt_base = attempt, \
             error = NULL, output = NULL, finished_at = NULL, updated_at = ?1 \
             WHERE run_id = ?2 AND task_name = ?3 AND state IN (?4, ?5)",
        )
        .bind(now)
        .bind(&run_s)
        .bind(name)
        .bind(plan::REQUEUEABLE[0])
        .bind(plan::REQUEUEABLE[1])
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if changed.rows_affected() > 0 {
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
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(requeued)
}

/// Deletes a settled run and everything that hangs off it (task runs, attempts and dead letters
/// go by `ON DELETE CASCADE`).
pub async fn delete_run(pool: &SqlitePool, id: Uuid, now: DateTime<Utc>) -> Result<()> {
    let mut tx = begin(pool).await?;
    let run = id.to_string();
    let state = run_state(&mut tx, id).await?;
    if !state.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "run {id} is {state}; cancel it before deleting it"
        )));
    }
    for sql in [
        "DELETE FROM task_results WHERE task_run_id IN (SELECT id FROM task_runs WHERE run_id = ?1)",
        "DELETE FROM events WHERE run_id = ?1",
        "DELETE FROM runs WHERE id = ?1",
    ] {
        sqlx::query(sql)
            .bind(&run)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
    }
    let deleted = Event::global(EventKind::RunDeleted, json!({ "run": id }));
    flush_events(&mut tx, &[deleted], us(now)).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(())
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

pub async fn delete_pipeline(pool: &SqlitePool, name: &str, now: DateTime<Utc>) -> Result<u64> {
    let mut tx = begin(pool).await?;
    let hidden =
        sqlx::query("UPDATE pipelines SET deleted_at = ?1 WHERE name = ?2 AND deleted_at IS NULL")
            .bind(us(now))
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
    if hidden > 0 {
        let deleted = Event::global(EventKind::PipelineDeleted, json!({"pipeline": name}));
        flush_events(&mut tx, &[deleted], us(now)).await?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(hidden)
}

pub async fn node_heartbeat(pool: &SqlitePool, node: &NodeInfo, now: DateTime<Utc>) -> Result<()> {
    let queues =
        serde_json::to_string(&node.queues).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO nodes (id, kind, host, pid, version, queues, concurrency, heartbeat_ms, started_at, last_seen_at, service) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10) \
         ON CONFLICT (id) DO UPDATE SET last_seen_at = excluded.last_seen_at, stopped_at = NULL",
    )
    .bind(&node.id)
    .bind(&node.kind)
    .bind(&node.host)
    .bind(i64::from(node.pid))
    .bind(&node.version)
    .bind(queues)
    .bind(i64::from(node.concurrency))
    .bind(i64::try_from(node.heartbeat_ms).unwrap_or(i64::MAX))
    .bind(us(now))
    .bind(&node.service)
    .execute(pool)
    .await
    .map_err(unavailable)?;
    Ok(())
}

pub async fn node_stopped(pool: &SqlitePool, id: &str, now: DateTime<Utc>) -> Result<()> {
    sqlx::query("UPDATE nodes SET stopped_at = ?1, last_seen_at = ?1 WHERE id = ?2")
        .bind(us(now))
        .bind(id)
        .execute(pool)
        .await
        .map_err(unavailable)?;
    Ok(())
}

pub async fn register_service(
    pool: &SqlitePool,
    reg: &Registration,
    now: DateTime<Utc>,
) -> Result<Vec<ServiceTask>> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
    sqlx::query(
        "INSERT INTO services (id, version, url, registered_at, last_seen_at) VALUES (?1, ?2, ?3, ?4, ?4) \
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, url = excluded.url, last_seen_at = excluded.last_seen_at",
    )
    .bind(&reg.service_id)
    .bind(&reg.version)
    .bind(&reg.url)
    .bind(us(now))
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    let mut tasks = Vec::with_capacity(reg.tasks.len());
    for task in &reg.tasks {
        let current: Option<(String, i64)> =
            sqlx::query_as("SELECT code_hash, code_version FROM service_tasks WHERE name = ?1")
                .bind(&task.name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
        let (version, changed) = match current {
            Some((hash, v)) if hash == task.code_hash => (v, false),
            Some((_, v)) => (v + 1, true),
            None => (1, true),
        };
        let options =
            serde_json::to_string(task).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO service_tasks (name, service_id, code_hash, code_version, options, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO UPDATE SET service_id = excluded.service_id, \
             code_hash = excluded.code_hash, code_version = excluded.code_version, options = excluded.options, \
             updated_at = excluded.updated_at",
        )
        .bind(&task.name)
        .bind(&reg.service_id)
        .bind(&task.code_hash)
        .bind(version)
        .bind(options)
        .bind(us(now))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if changed {
            sqlx::query(
                "INSERT INTO task_code_history (task_name, code_version, service_id, code_hash, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(&task.name)
            .bind(version)
            .bind(&reg.service_id)
            .bind(&task.code_hash)
            .bind(us(now))
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
    pool: &SqlitePool,
    id: Uuid,
    epoch: i64,
    progress: f64,
    message: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE task_runs SET progress = ?1, progress_message = ?2, updated_at = ?3 \
         WHERE id = ?4 AND state = 'running' AND lease_epoch = ?5",
    )
    .bind(progress)
    .bind(message)
    .bind(us(now))
    .bind(id.to_string())
    .bind(epoch)
    .execute(pool)
    .await
    .map_err(unavailable)?;
    Ok(done.rows_affected() == 1)
}
