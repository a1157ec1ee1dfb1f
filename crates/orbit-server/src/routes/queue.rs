//! The task queue: standalone tasks, queue statistics and items, the dead-letter queue, and
//! serverless processing.

use super::{limit, pipeline_from_document};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::Utc;
use orbit_core::{Pipeline, TaskState};
use orbit_store::{
    DeadLetter, NewRun, QueueFilter, QueueStats, Requeued, RunRecord, TaskRunRecord,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};

/// A standalone task: a run of a one-task pipeline named `task.<taskId>`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueTask {
    /// The task's name.
    pub task_id: String,
    /// The task definition, as in a pipeline file: `type` and its parameters, `retry`,
    /// `timeout`, `queue`, ... Without it (the PipeWeave seed's form), `taskId` names a task a
    /// worker service registered: `{"type": "worker", "task": taskId}`.
    #[schema(value_type = Object)]
    #[serde(default)]
    pub task: Option<Map<String, Value>>,
    #[schema(value_type = Object)]
    pub input: Option<Value>,
    pub priority: Option<i32>,
    pub idempotency_key: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Queued {
    pub run: RunRecord,
    pub created: bool,
}

/// Checks a standalone task through the pipeline file checker.
fn standalone_pipeline(t: &QueueTask, at: &str) -> Result<Pipeline, ApiError> {
    let registered = || {
        let mut m = Map::new();
        m.insert("type".into(), json!("worker"));
        m.insert("task".into(), json!(t.task_id));
        m
    };
    let task = t.task.clone().unwrap_or_else(registered);
    if task.contains_key("name") || task.contains_key("needs") {
        return Err(ApiError::bad_request(format!(
            "{at}: `task` takes no `name` or `needs` (the name is `taskId`)"
        )));
    }
    let mut def = task;
    def.insert("name".into(), Value::String(t.task_id.clone()));
    let doc = json!({"name": format!("task.{}", t.task_id), "tasks": [def]});
    pipeline_from_document(at, &doc.to_string())
}

/// A task given by `taskId` alone must be one a worker service registered: a typo is an error
/// now, not a run that waits forever for a worker that will never come.
async fn ensure_registered(s: &AppState, t: &QueueTask, at: &str) -> ApiResult<()> {
    if t.task.is_some() {
        return Ok(());
    }
    match s.store.service_task(&t.task_id).await {
        Ok(_) => Ok(()),
        Err(orbit_store::StoreError::NotFound(_)) => Err(ApiError::not_found(format!(
            "{at}: no worker service has registered a task named `{}`; register it (POST /api/v1/services/register) or give its definition in `task`",
            t.task_id
        ))),
        Err(e) => Err(e.into()),
    }
}

async fn enqueue(s: &AppState, t: QueueTask, pipeline: &Pipeline) -> ApiResult<Queued> {
    let stored = s.store.save_pipeline(pipeline, None, Utc::now()).await?;
    let created = orbit_engine::runs::create_run(
        s.store.as_ref(),
        s.engine.storage(),
        NewRun {
            id: uuid::Uuid::now_v7(),
            pipeline: &stored,
            input: t.input.unwrap_or_else(|| json!({})),
            priority: t.priority.unwrap_or(0),
            idempotency_key: t.idempotency_key,
            idempotency_ttl: s.config.engine.idempotency_ttl,
            request_hash: None,
            triggered_by: orbit_store::TriggeredBy::Api,
            parent: None,
            rerun: None,
            now: Utc::now(),
        },
    )
    .await?;
    Ok(Queued {
        run: created.run,
        created: created.created,
    })
}

/// Queue a standalone task.
#[utoipa::path(post, path = "/queue/task", tag = "queue", request_body = QueueTask,
    responses((status = 201, body = Queued), (status = 200, description = "existing run for the idempotency key", body = Queued),
              (status = 400, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn queue_task(
    State(s): State<AppState>,
    body: Result<Json<QueueTask>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Queued>)> {
    let Json(t) = body?;
    ensure_registered(&s, &t, "task").await?;
    let pipeline = standalone_pipeline(&t, "task")?;
    let queued = enqueue(&s, t, &pipeline).await?;
    Ok((
        if queued.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(queued),
    ))
}

/// Several standalone tasks: `{"tasks": [...]}`, or the list itself.
#[derive(ToSchema)]
pub struct QueueBatch {
    pub tasks: Vec<QueueTask>,
}

impl QueueBatch {
    /// Either form, with errors that say which task is wrong and what the body should be.
    fn parse(body: Value) -> Result<QueueBatch, ApiError> {
        let list = match body {
            Value::Array(list) => list,
            Value::Object(mut m) if m.len() == 1 && m.contains_key("tasks") => {
                match m.remove("tasks") {
                    Some(Value::Array(list)) => list,
                    _ => return Err(ApiError::bad_request("`tasks` must be a list of tasks")),
                }
            }
            _ => {
                return Err(ApiError::bad_request(
                    "the body must be a list of tasks, or {\"tasks\": [...]}; each task is {\"taskId\", \"task\": {\"type\", ...}, \"input\"?, \"priority\"?, \"idempotencyKey\"?}",
                ));
            }
        };
        let tasks = list
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                serde_json::from_value(t)
                    .map_err(|e| ApiError::bad_request(format!("tasks[{i}]: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(QueueBatch { tasks })
    }
}

/// Queue several standalone tasks. All are checked first: one bad task queues none.
#[utoipa::path(post, path = "/queue/batch", tag = "queue", request_body = QueueBatch,
    responses((status = 201, body = [Queued]), (status = 400, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn queue_batch(
    State(s): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Vec<Queued>>)> {
    let Json(body) = body?;
    let tasks = QueueBatch::parse(body)?.tasks;
    if tasks.is_empty() || tasks.len() > 1000 {
        return Err(ApiError::bad_request("a batch holds 1 to 1000 tasks"));
    }
    let checked = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| standalone_pipeline(t, &format!("tasks[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, t) in tasks.iter().enumerate() {
        ensure_registered(&s, t, &format!("tasks[{i}]")).await?;
    }
    let mut out = Vec::with_capacity(checked.len());
    for (t, p) in tasks.into_iter().zip(&checked) {
        out.push(enqueue(&s, t, p).await?);
    }
    Ok((StatusCode::CREATED, Json(out)))
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurgeQuery {
    /// Entries older than this many days go (default: DLQ_RETENTION_DAYS).
    pub older_than_days: Option<u32>,
}

/// Purge dead-letter entries older than the retention (or `olderThanDays`), with the failed
/// runs left without any (their rows and stored objects).
#[utoipa::path(post, path = "/dlq/purge", tag = "dlq", params(PurgeQuery),
    responses((status = 200, body = orbit_engine::runs::Retention), (status = 400, body = crate::error::ErrorBody)))]
pub async fn dlq_purge(
    State(s): State<AppState>,
    q: Result<Query<PurgeQuery>, QueryRejection>,
) -> ApiResult<Json<orbit_engine::runs::Retention>> {
    let Query(q) = q?;
    let age = q.older_than_days.map_or(s.config.dlq_retention, |d| {
        chrono::Duration::days(i64::from(d))
    });
    Ok(Json(
        orbit_engine::runs::purge_dead_letters(
            s.store.as_ref(),
            s.engine.storage(),
            Utc::now() - age,
            orbit_engine::runs::Pace::AtOnce,
        )
        .await?,
    ))
}

/// Queue statistics: task runs by state.
#[utoipa::path(get, path = "/queue/status", tag = "queue", responses((status = 200, body = QueueStats)))]
pub async fn status(State(s): State<AppState>) -> ApiResult<Json<QueueStats>> {
    Ok(Json(s.store.queue_stats().await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ItemsQuery {
    /// waiting, ready, running, succeeded, dead, skipped or cancelled (or the words of
    /// `/queue/status`: pending, completed, failed); the unsettled ones when absent
    pub state: Option<String>,
    pub queue: Option<String>,
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

/// Task runs in the queue, highest priority and oldest first.
#[utoipa::path(get, path = "/queue/items", tag = "queue", params(ItemsQuery),
    responses((status = 200, body = [TaskRunRecord]), (status = 400, body = crate::error::ErrorBody)))]
pub async fn items(
    State(s): State<AppState>,
    q: Result<Query<ItemsQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<TaskRunRecord>>> {
    let Query(q) = q?;
    let state = q
        .state
        .as_deref()
        .map(|v| {
            v.parse::<TaskState>()
                .map_err(|e| ApiError::bad_request(format!("state: {e}")))
        })
        .transpose()?;
    let filter = QueueFilter {
        state,
        queue: q.queue,
        limit: limit(q.limit, 100),
        offset: q.offset.unwrap_or(0),
    };
    Ok(Json(s.store.queue_items(&filter).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DlqQuery {
    pub limit: Option<u32>,
}

/// Dead-letter queue entries, newest first.
#[utoipa::path(get, path = "/dlq", tag = "dlq", params(DlqQuery), responses((status = 200, body = [DeadLetter])))]
pub async fn dlq(
    State(s): State<AppState>,
    q: Result<Query<DlqQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<DeadLetter>>> {
    let Query(q) = q?;
    Ok(Json(s.store.dead_letters(limit(q.limit, 100)).await?))
}

/// One dead-letter entry with all it keeps: the exact context of the attempt that went dead,
/// every attempt's error and the code version (as `orbit dlq show`).
#[utoipa::path(get, path = "/dlq/{id}", tag = "dlq", params(("id" = String, Path)),
    responses((status = 200, body = orbit_engine::recovery::DeadLetterDetail), (status = 404, body = crate::error::ErrorBody)))]
pub async fn dlq_entry(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<orbit_engine::recovery::DeadLetterDetail>> {
    let Path(id) = id?;
    Ok(Json(
        orbit_engine::recovery::dead_letter_detail(s.store.as_ref(), &id).await?,
    ))
}

/// Retry a dead-letter entry: its task is re-queued with fresh attempts and its run goes on.
#[utoipa::path(post, path = "/dlq/{id}/retry", tag = "dlq", params(("id" = String, Path)),
    responses((status = 200, body = Requeued), (status = 404, body = crate::error::ErrorBody)))]
pub async fn dlq_retry(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Requeued>> {
    let Path(id) = id?;
    let entry = s.store.dead_letter(&id).await?;
    Ok(Json(
        s.store
            .requeue(
                entry.run_id,
                &[entry.task_name],
                orbit_store::TriggeredBy::Dlq,
                Utc::now(),
            )
            .await?,
    ))
}

/// Serverless mode: reap expired leases, then claim and execute a bounded batch of ready tasks
/// and return what was done.
#[utoipa::path(post, path = "/process", tag = "queue", responses((status = 200, body = orbit_engine::Processed)))]
pub async fn process(State(s): State<AppState>) -> ApiResult<Json<orbit_engine::Processed>> {
    let mut done = s.engine.process(s.config.process_batch).await?;
    if let Some(d) = &s.dispatcher {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| orbit_engine::EngineError::Http(e.to_string()))?;
        done.claimed += d.push_round(&http).await?.unwrap_or(0);
    }
    Ok(Json(done))
}
