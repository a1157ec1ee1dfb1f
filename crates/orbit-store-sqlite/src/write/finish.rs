//! The commit of the engine's rounds: a batch of finished attempts executed from its
//! [`FinishPlan`](orbit_store::plan::FinishPlan), and the claims that share its transaction; and
//! lease extensions.

use super::{CHUNK, begin, flush_events, flush_tally};
use crate::{unavailable, us};
use chrono::{DateTime, Utc};
use orbit_core::TaskState;
use orbit_core::transition::Transition;
use orbit_store::plan::{self, AttemptOutcome, Event, EventKind, FinishPlan, RunCounters};
use orbit_store::{BatchOutcome, ClaimRequest, ClaimedTask, FinishedAttempt, Result, StoreError};
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::collections::HashSet;
use uuid::Uuid;

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
    let mut plan = FinishPlan::new(&kept);
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
        let claimed = if c.limit > 0 {
            claim_ready(&mut tx, c, now, &running, &mut events).await?
        } else {
            Vec::new()
        };
        plan.tally
            .moved(TaskState::Ready, TaskState::Running, claimed.len() as i64);
        each.push(claimed);
    }
    flush_events(&mut tx, &events, now).await?;
    flush_tally(&mut tx, &plan.tally).await?;
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
    for (marks, state) in [
        (&plan.skips, TaskState::Skipped),
        (&plan.cancels, TaskState::Cancelled),
    ] {
        for m in marks {
            let changed = sqlx::query(
                "UPDATE task_runs SET state = ?1, error = ?2, finished_at = ?3, updated_at = ?3 \
                 WHERE run_id = ?4 AND task_name = ?5 AND state = 'waiting'",
            )
            .bind(state.as_str())
            .bind(&m.reason)
            .bind(now)
            .bind(m.run.to_string())
            .bind(m.task)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            if changed.rows_affected() > 0 {
                ended.push((m.run, state));
            }
        }
    }
    for (run, state) in ended {
        plan.ended(run, state);
    }
    let mut promoted = 0;
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
            promoted += 1;
        }
    }
    plan.promoted(promoted);
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
