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
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

fn get<'r, T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>>(
    row: &'r SqliteRow,
    col: &str,
) -> Result<T> {
    row.try_get(col).map_err(unavailable)
}

fn uuid(row: &SqliteRow, col: &str) -> Result<Uuid> {
    let s: String = get(row, col)?;
    Uuid::parse_str(&s).map_err(|e| StoreError::Corrupt(format!("{col} `{s}`: {e}")))
}

fn time(row: &SqliteRow, col: &str) -> Result<DateTime<Utc>> {
    let t: i64 = get(row, col)?;
    DateTime::from_timestamp_micros(t)
        .ok_or_else(|| StoreError::Corrupt(format!("{col} {t} out of range")))
}

fn opt_time(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    let t: Option<i64> = get(row, col)?;
    Ok(t.and_then(DateTime::from_timestamp_micros))
}

fn json(row: &SqliteRow, col: &str) -> Result<Option<Value>> {
    let s: Option<String> = get(row, col)?;
    s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("{col}: {e}"))))
        .transpose()
}

fn parsed<T: std::str::FromStr>(row: &SqliteRow, col: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let s: String = get(row, col)?;
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

fn count(row: &SqliteRow, col: &str) -> Result<u32> {
    let n: i64 = get(row, col)?;
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{col} {n} out of range")))
}

pub fn pipeline_from_row(row: &SqliteRow) -> Result<StoredPipeline> {
    let definition: String = get(row, "definition")?;
    Ok(StoredPipeline {
        id: uuid(row, "id")?,
        name: get(row, "name")?,
        version: get(row, "version")?,
        hash: get(row, "hash")?,
        pipeline: serde_json::from_str(&definition)
            .map_err(|e| StoreError::Corrupt(format!("pipeline definition: {e}")))?,
        source: get(row, "source")?,
        created_at: time(row, "created_at")?,
    })
}

pub fn run_from_row(row: &SqliteRow) -> Result<RunRecord> {
    Ok(RunRecord {
        id: uuid(row, "id")?,
        pipeline_id: uuid(row, "pipeline_id")?,
        pipeline_name: get(row, "pipeline_name")?,
        pipeline_version: get(row, "pipeline_version")?,
        state: parsed(row, "state")?,
        input: json(row, "input")?.unwrap_or(Value::Null),
        priority: get(row, "priority")?,
        idempotency_key: get(row, "idempotency_key")?,
        triggered_by: get(row, "triggered_by")?,
        tasks_total: get(row, "tasks_total")?,
        tasks_pending: get(row, "tasks_pending")?,
        tasks_dead: get(row, "tasks_dead")?,
        created_at: time(row, "created_at")?,
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
        updated_at: time(row, "updated_at")?,
        concurrency_key: get(row, "concurrency_key")?,
        concurrency_limit: concurrency_limit(row)?,
        parent_run_id: get::<Option<String>>(row, "parent_run_id")?
            .map(|id| {
                Uuid::parse_str(&id)
                    .map_err(|e| StoreError::Corrupt(format!("parent run id `{id}`: {e}")))
            })
            .transpose()?,
        parent_task: get(row, "parent_task")?,
        rerun_of: opt_uuid(row, "rerun_of")?,
        rerun_from: get(row, "rerun_from")?,
    })
}

fn opt_uuid(row: &SqliteRow, col: &str) -> Result<Option<Uuid>> {
    get::<Option<String>>(row, col)?
        .map(|id| {
            Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(format!("{col} `{id}`: {e}")))
        })
        .transpose()
}

pub fn task_run_from_row(row: &SqliteRow) -> Result<TaskRunRecord> {
    Ok(TaskRunRecord {
        id: uuid(row, "id")?,
        run_id: uuid(row, "run_id")?,
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
        lease_expires_at: opt_time(row, "lease_expires_at")?,
        ready_at: opt_time(row, "ready_at")?,
        started_at: opt_time(row, "started_at")?,
        claimed_at: opt_time(row, "claimed_at")?,
        finished_at: opt_time(row, "finished_at")?,
        output: json(row, "output")?,
        error: get(row, "error")?,
        progress: get(row, "progress")?,
        progress_message: get(row, "progress_message")?,
        concurrency_key: get(row, "concurrency_key")?,
        concurrency_limit: concurrency_limit(row)?,
        rate_key: get(row, "rate_key")?,
        map_parent: get(row, "map_parent")?,
        map_index: get::<Option<i32>>(row, "map_index")?.and_then(|i| u32::try_from(i).ok()),
        map_item: json(row, "map_item")?,
        park: get::<Option<String>>(row, "park_kind")?
            .map(|kind| {
                Ok::<_, StoreError>(orbit_store::ParkInfo {
                    kind,
                    until: opt_time(row, "park_until")?,
                    event: get(row, "park_event")?,
                    note: get(row, "park_note")?,
                })
            })
            .transpose()?,
        wake: json(row, "wake")?,
        origin: opt_uuid(row, "origin")?,
    })
}

pub fn attempt_from_row(row: &SqliteRow) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        task_run_id: uuid(row, "task_run_id")?,
        run_id: uuid(row, "run_id")?,
        task_name: get(row, "task_name")?,
        attempt: count(row, "attempt")?,
        worker: get(row, "worker")?,
        started_at: time(row, "started_at")?,
        finished_at: time(row, "finished_at")?,
        outcome: get(row, "outcome")?,
        error: get(row, "error")?,
        log: get(row, "log")?,
        code_version: get(row, "code_version")?,
    })
}

pub fn leased_from_row(row: &SqliteRow) -> Result<LeasedTask> {
    let attempt = count(row, "attempt")?;
    let base = count(row, "attempt_base")?;
    Ok(LeasedTask {
        task: ClaimedTask {
            id: uuid(row, "id")?,
            run_id: uuid(row, "run_id")?,
            pipeline_id: uuid(row, "pipeline_id")?,
            task_name: get(row, "task_name")?,
            attempt,
            tries: attempt.saturating_sub(base),
            lease_epoch: get(row, "lease_epoch")?,
            lease_expires_at: opt_time(row, "lease_expires_at")?.unwrap_or_default(),
            claimed_at: time(row, "claimed_at")?,
            item: None,
            wake: None,
            ready_at: None,
        },
        owner: get::<Option<String>>(row, "lease_owner")?.unwrap_or_default(),
    })
}

pub fn dead_letter_from_row(row: &SqliteRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        id: uuid(row, "task_run_id")?,
        run_id: uuid(row, "run_id")?,
        pipeline_id: uuid(row, "pipeline_id")?,
        task_name: get(row, "task_name")?,
        error: get(row, "error")?,
        attempts: count(row, "attempts")?,
        created_at: time(row, "created_at")?,
    })
}

pub fn node_from_row(row: &SqliteRow) -> Result<NodeRecord> {
    let queues: String = get(row, "queues")?;
    Ok(NodeRecord {
        info: NodeInfo {
            id: get(row, "id")?,
            kind: get(row, "kind")?,
            host: get(row, "host")?,
            pid: count(row, "pid")?,
            version: get(row, "version")?,
            queues: serde_json::from_str(&queues)
                .map_err(|e| StoreError::Corrupt(format!("node queues: {e}")))?,
            concurrency: count(row, "concurrency")?,
            heartbeat_ms: get::<i64>(row, "heartbeat_ms")?.max(0) as u64,
            service: get(row, "service")?,
        },
        started_at: time(row, "started_at")?,
        last_seen_at: time(row, "last_seen_at")?,
        stopped_at: opt_time(row, "stopped_at")?,
        running: get(row, "running")?,
    })
}

pub fn service_from_row(row: &SqliteRow) -> Result<ServiceRecord> {
    Ok(ServiceRecord {
        id: get(row, "id")?,
        version: get(row, "version")?,
        url: get(row, "url")?,
        registered_at: time(row, "registered_at")?,
        last_seen_at: time(row, "last_seen_at")?,
    })
}

pub fn service_task_from_row(row: &SqliteRow) -> Result<ServiceTask> {
    let options: String = get(row, "options")?;
    Ok(ServiceTask {
        name: get(row, "name")?,
        service_id: get(row, "service_id")?,
        code_hash: get(row, "code_hash")?,
        code_version: get(row, "code_version")?,
        options: serde_json::from_str(&options)
            .map_err(|e| StoreError::Corrupt(format!("service task options: {e}")))?,
        updated_at: time(row, "updated_at")?,
        changed: false,
    })
}

pub fn code_change_from_row(row: &SqliteRow) -> Result<CodeChange> {
    Ok(CodeChange {
        task_name: get(row, "task_name")?,
        service_id: get(row, "service_id")?,
        code_version: get(row, "code_version")?,
        code_hash: get(row, "code_hash")?,
        created_at: time(row, "created_at")?,
    })
}

pub fn event_from_row(row: &SqliteRow) -> Result<EventRecord> {
    let run: Option<String> = get(row, "run_id")?;
    Ok(EventRecord {
        id: get(row, "id")?,
        run_id: run
            .map(|r| {
                Uuid::parse_str(&r).map_err(|e| StoreError::Corrupt(format!("run_id `{r}`: {e}")))
            })
            .transpose()?,
        task: get(row, "task_name")?,
        kind: get(row, "kind")?,
        data: json(row, "data")?,
        at: time(row, "at")?,
    })
}

/// A keyed task run's limit (0, for none, is no limit).
fn concurrency_limit<R>(row: &R) -> Result<Option<u32>>
where
    R: sqlx::Row,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    let n: i64 = row
        .try_get("concurrency_limit")
        .map_err(crate::unavailable)?;
    Ok(u32::try_from(n).ok().filter(|n| *n > 0))
}
