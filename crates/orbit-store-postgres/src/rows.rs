//! Reading rows back into records.

use crate::unavailable;
use chrono::{DateTime, Utc};
use orbit_store::{
    AttemptRecord, ClaimedTask, CodeChange, DeadLetter, EventRecord, LeasedTask, NodeInfo,
    NodeRecord, Result, RunRecord, ServiceRecord, ServiceTask, StoreError, StoredPipeline,
    TaskRunRecord,
};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;

pub fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
    row: &'r PgRow,
    col: &str,
) -> Result<T> {
    row.try_get(col).map_err(unavailable)
}

fn parsed<T: std::str::FromStr>(row: &PgRow, col: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let s: String = get(row, col)?;
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

fn count(row: &PgRow, col: &str) -> Result<u32> {
    let n: i32 = get(row, col)?;
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{col} {n} out of range")))
}

pub fn pipeline_from_row(row: &PgRow) -> Result<StoredPipeline> {
    let definition: Value = get(row, "definition")?;
    Ok(StoredPipeline {
        id: get(row, "id")?,
        name: get(row, "name")?,
        version: get(row, "version")?,
        hash: get(row, "hash")?,
        pipeline: serde_json::from_value(definition)
            .map_err(|e| StoreError::Corrupt(format!("pipeline definition: {e}")))?,
        source: get(row, "source")?,
        created_at: get(row, "created_at")?,
    })
}

pub fn run_from_row(row: &PgRow) -> Result<RunRecord> {
    Ok(RunRecord {
        id: get(row, "id")?,
        pipeline_id: get(row, "pipeline_id")?,
        pipeline_name: get(row, "pipeline_name")?,
        pipeline_version: get(row, "pipeline_version")?,
        state: parsed(row, "state")?,
        input: get(row, "input")?,
        priority: get(row, "priority")?,
        idempotency_key: get(row, "idempotency_key")?,
        triggered_by: get(row, "triggered_by")?,
        tasks_total: get(row, "tasks_total")?,
        tasks_pending: get(row, "tasks_pending")?,
        tasks_dead: get(row, "tasks_dead")?,
        created_at: get(row, "created_at")?,
        started_at: get(row, "started_at")?,
        finished_at: get(row, "finished_at")?,
        updated_at: get(row, "updated_at")?,
        concurrency_key: get(row, "concurrency_key")?,
        concurrency_limit: concurrency_limit(row)?,
        parent_run_id: get(row, "parent_run_id")?,
        parent_task: get(row, "parent_task")?,
        rerun_of: get(row, "rerun_of")?,
        rerun_from: get(row, "rerun_from")?,
    })
}

pub fn task_run_from_row(row: &PgRow) -> Result<TaskRunRecord> {
    Ok(TaskRunRecord {
        id: get(row, "id")?,
        run_id: get(row, "run_id")?,
        task_name: get(row, "task_name")?,
        task_type: get(row, "task_type")?,
        queue: get(row, "queue")?,
        state: parsed(row, "state")?,
        attempt: count(row, "attempt")?,
        tries: count(row, "attempt")?.saturating_sub(count(row, "attempt_base")?),
        max_attempts: count(row, "max_attempts")?,
        priority: get(row, "priority")?,
        lease_epoch: get(row, "lease_epoch")?,
        lease_owner: get(row, "lease_owner")?,
        lease_expires_at: get(row, "lease_expires_at")?,
        ready_at: get(row, "ready_at")?,
        started_at: get(row, "started_at")?,
        claimed_at: get(row, "claimed_at")?,
        finished_at: get(row, "finished_at")?,
        output: get(row, "output")?,
        error: get(row, "error")?,
        progress: get(row, "progress")?,
        progress_message: get(row, "progress_message")?,
        concurrency_key: get(row, "concurrency_key")?,
        concurrency_limit: concurrency_limit(row)?,
        rate_key: get(row, "rate_key")?,
        map_parent: get(row, "map_parent")?,
        map_index: get::<Option<i32>>(row, "map_index")?.and_then(|i| u32::try_from(i).ok()),
        map_item: get(row, "map_item")?,
        park: get::<Option<String>>(row, "park_kind")?
            .map(|kind| {
                Ok::<_, StoreError>(orbit_store::ParkInfo {
                    kind,
                    until: get(row, "park_until")?,
                    event: get(row, "park_event")?,
                    note: get(row, "park_note")?,
                })
            })
            .transpose()?,
        wake: get(row, "wake")?,
        origin: get(row, "origin")?,
    })
}

pub fn attempt_from_row(row: &PgRow) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        task_run_id: get(row, "task_run_id")?,
        run_id: get(row, "run_id")?,
        task_name: get(row, "task_name")?,
        attempt: count(row, "attempt")?,
        worker: get(row, "worker")?,
        started_at: get(row, "started_at")?,
        finished_at: get(row, "finished_at")?,
        outcome: get(row, "outcome")?,
        error: get(row, "error")?,
        log: get(row, "log")?,
        code_version: get(row, "code_version")?,
    })
}

pub fn claimed_from_row(row: &PgRow) -> Result<ClaimedTask> {
    let attempt = count(row, "attempt")?;
    let base = count(row, "attempt_base")?;
    let claimed_at: Option<DateTime<Utc>> = get(row, "claimed_at")?;
    Ok(ClaimedTask {
        id: get(row, "id")?,
        run_id: get(row, "run_id")?,
        pipeline_id: get(row, "pipeline_id")?,
        task_name: get(row, "task_name")?,
        attempt,
        tries: attempt.saturating_sub(base),
        lease_epoch: get(row, "lease_epoch")?,
        lease_expires_at: get::<Option<DateTime<Utc>>>(row, "lease_expires_at")?
            .unwrap_or_default(),
        claimed_at: match claimed_at {
            Some(t) => t,
            None => get(row, "updated_at")?,
        },
        item: get(row, "map_item")?,
        wake: get(row, "wake")?,
        ready_at: get(row, "ready_at")?,
    })
}

pub fn leased_from_row(row: &PgRow) -> Result<LeasedTask> {
    Ok(LeasedTask {
        task: claimed_from_row(row)?,
        owner: get::<Option<String>>(row, "lease_owner")?.unwrap_or_default(),
    })
}

pub fn dead_letter_from_row(row: &PgRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        id: get(row, "task_run_id")?,
        run_id: get(row, "run_id")?,
        pipeline_id: get(row, "pipeline_id")?,
        task_name: get(row, "task_name")?,
        error: get(row, "error")?,
        attempts: count(row, "attempts")?,
        created_at: get(row, "created_at")?,
    })
}

pub fn node_from_row(row: &PgRow) -> Result<NodeRecord> {
    let queues: Value = get(row, "queues")?;
    let int = |col: &str| -> Result<i64> { get(row, col) };
    Ok(NodeRecord {
        info: NodeInfo {
            id: get(row, "id")?,
            kind: get(row, "kind")?,
            host: get(row, "host")?,
            pid: u32::try_from(int("pid")?).unwrap_or(0),
            version: get(row, "version")?,
            queues: serde_json::from_value(queues)
                .map_err(|e| StoreError::Corrupt(format!("node queues: {e}")))?,
            concurrency: u32::try_from(int("concurrency")?).unwrap_or(0),
            heartbeat_ms: u64::try_from(int("heartbeat_ms")?).unwrap_or(0),
            service: get(row, "service")?,
        },
        started_at: get(row, "started_at")?,
        last_seen_at: get(row, "last_seen_at")?,
        stopped_at: get(row, "stopped_at")?,
        running: int("running")?,
    })
}

pub fn service_from_row(row: &PgRow) -> Result<ServiceRecord> {
    Ok(ServiceRecord {
        id: get(row, "id")?,
        version: get(row, "version")?,
        url: get(row, "url")?,
        registered_at: get(row, "registered_at")?,
        last_seen_at: get(row, "last_seen_at")?,
    })
}

pub fn service_task_from_row(row: &PgRow) -> Result<ServiceTask> {
    let options: Value = get(row, "options")?;
    Ok(ServiceTask {
        name: get(row, "name")?,
        service_id: get(row, "service_id")?,
        code_hash: get(row, "code_hash")?,
        code_version: get(row, "code_version")?,
        options: serde_json::from_value(options)
            .map_err(|e| StoreError::Corrupt(format!("service task options: {e}")))?,
        updated_at: get(row, "updated_at")?,
        changed: false,
    })
}

pub fn code_change_from_row(row: &PgRow) -> Result<CodeChange> {
    Ok(CodeChange {
        task_name: get(row, "task_name")?,
        service_id: get(row, "service_id")?,
        code_version: get(row, "code_version")?,
        code_hash: get(row, "code_hash")?,
        created_at: get(row, "created_at")?,
    })
}

pub fn event_from_row(row: &PgRow) -> Result<EventRecord> {
    Ok(EventRecord {
        id: get(row, "id")?,
        run_id: get(row, "run_id")?,
        task: get(row, "task_name")?,
        kind: get(row, "kind")?,
        data: get(row, "data")?,
        at: get(row, "at")?,
    })
}

/// A keyed task run's limit (0, for none, is no limit).
fn concurrency_limit<R>(row: &R) -> Result<Option<u32>>
where
    R: sqlx::Row,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    let n: i32 = row
        .try_get("concurrency_limit")
        .map_err(crate::unavailable)?;
    Ok(u32::try_from(n).ok().filter(|n| *n > 0))
}
