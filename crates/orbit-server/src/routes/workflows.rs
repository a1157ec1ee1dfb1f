//! The Orbit-Py seed's workflows API, over the same pipelines and runs: a workflow is a pipeline
//! (its id is the pipeline's name), an execution is a run. Its JSON DAG (`action_type`,
//! `action_payload`, `dependencies`, …) is read by the pipeline file checker, so both dialects
//! are saved and checked by the same code.

use super::pipelines::{save_document, trigger_run};
use crate::AppState;
use crate::error::ApiResult;
use crate::extract::OptionalJson;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use orbit_core::TaskType;
use orbit_store::{RunFilter, RunRecord, StoredPipeline, TaskRunRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

/// A workflow in Orbit-Py's shape.
#[derive(Serialize, ToSchema)]
pub struct Workflow {
    /// The pipeline's name: stable across versions.
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub version: i64,
    #[schema(value_type = [Object])]
    pub tasks: Vec<Value>,
    pub created_at: DateTime<Utc>,
}

/// The Orbit-Py action type of a built-in task type.
fn action_type(t: TaskType) -> &'static str {
    match t {
        TaskType::Http => "http_request",
        TaskType::Script => "python_script",
        TaskType::Shell => "shell_command",
        other => other.as_str(),
    }
}

/// A task's parameters under Orbit-Py's payload names (the reverse of the file checker's).
fn payload(t: &orbit_core::TaskDef) -> Value {
    let mut m = t.params.clone();
    let rename = |m: &mut serde_json::Map<String, Value>, from: &str, to: &str| {
        if let Some(v) = m.remove(from) {
            m.insert(to.into(), v);
        }
    };
    match t.task_type {
        TaskType::Script => {
            rename(&mut m, "file", "script");
            rename(&mut m, "source", "code");
        }
        TaskType::Shell if m.get("shell") == Some(&Value::Bool(true)) => {
            m.remove("shell");
        }
        _ => {}
    }
    Value::Object(m)
}

impl From<&StoredPipeline> for Workflow {
    fn from(p: &StoredPipeline) -> Workflow {
        let tasks = p
            .pipeline
            .tasks
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "action_type": action_type(t.task_type),
                    "action_payload": payload(t),
                    "dependencies": t.needs,
                    "timeout": t.timeout.map(|d| d.as_secs_f64()),
                    "retry_count": t.retry.max_attempts.saturating_sub(1),
                })
            })
            .collect();
        Workflow {
            id: p.name.clone(),
            name: p.name.clone(),
            description: p.pipeline.description.clone(),
            version: p.version,
            tasks,
            created_at: p.created_at,
        }
    }
}

/// An execution in Orbit-Py's shape: a run, its status, and its tasks' states.
#[derive(Serialize, ToSchema)]
pub struct Execution {
    pub id: uuid::Uuid,
    pub workflow_id: String,
    /// pending, running, succeeded, failed or cancelled.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    #[schema(value_type = Object)]
    pub input: Value,
    #[schema(value_type = [Object])]
    pub tasks: Vec<Value>,
}

fn execution(run: RunRecord, tasks: &[TaskRunRecord]) -> Execution {
    Execution {
        id: run.id,
        workflow_id: run.pipeline_name,
        status: run.state.to_string(),
        created_at: run.created_at,
        started_at: run.started_at,
        finished_at: run.finished_at,
        input: run.input,
        tasks: tasks
            .iter()
            .map(|t| {
                json!({"name": t.task_name, "status": t.state, "attempts": t.attempt,
                       "started_at": t.started_at, "finished_at": t.finished_at,
                       "result": t.output, "error": t.error})
            })
            .collect(),
    }
}

/// Create a workflow from Orbit-Py's JSON DAG (or an Orbit pipeline document).
#[utoipa::path(post, path = "/workflows", tag = "workflows (Orbit-Py)", request_body = Object,
    responses((status = 201, body = Workflow), (status = 422, body = crate::error::ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Workflow>)> {
    let Json(body) = body?;
    let (changed, stored) = save_document(&s, &body).await?;
    let status = if changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(Workflow::from(&stored))))
}

/// Every workflow.
#[utoipa::path(get, path = "/workflows", tag = "workflows (Orbit-Py)",
    responses((status = 200, body = [Workflow])))]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<Workflow>>> {
    Ok(Json(
        s.store
            .list_pipelines()
            .await?
            .iter()
            .map(Workflow::from)
            .collect(),
    ))
}

/// One workflow.
#[utoipa::path(get, path = "/workflows/{id}", tag = "workflows (Orbit-Py)", params(("id" = String, Path)),
    responses((status = 200, body = Workflow), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Workflow>> {
    let Path(id) = id?;
    Ok(Json(Workflow::from(&s.store.pipeline(&id).await?)))
}

/// Replace a workflow's definition (a new version when it changed).
#[utoipa::path(put, path = "/workflows/{id}", tag = "workflows (Orbit-Py)", params(("id" = String, Path)),
    request_body = Object,
    responses((status = 200, body = Workflow), (status = 422, body = crate::error::ErrorBody)))]
pub async fn update(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Workflow>> {
    let Path(id) = id?;
    let Json(mut body) = body?;
    s.store.pipeline(&id).await?;
    // The URL names the workflow; a document without a name (or with a display name) keeps it.
    if let Value::Object(m) = &mut body {
        m.insert("name".into(), Value::String(id));
    }
    let (_, stored) = save_document(&s, &body).await?;
    Ok(Json(Workflow::from(&stored)))
}

/// Delete a workflow: hidden, its executions stay.
#[utoipa::path(delete, path = "/workflows/{id}", tag = "workflows (Orbit-Py)", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete(
    state: State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    super::pipelines::delete(state, id).await
}

/// Execute a workflow; the body (optional) is the input, or `{"input": ...}`.
#[utoipa::path(post, path = "/workflows/{id}/execute", tag = "workflows (Orbit-Py)", params(("id" = String, Path)),
    responses((status = 201, body = Execution), (status = 404, body = crate::error::ErrorBody)))]
pub async fn execute(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    OptionalJson(body): OptionalJson<Value>,
) -> ApiResult<(StatusCode, Json<Execution>)> {
    let Path(id) = id?;
    let created = trigger_run(&s, &id, body.unwrap_or(Value::Null)).await?;
    let tasks = s.store.task_runs(created.run.id).await?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(execution(created.run, &tasks))))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExecutionsQuery {
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

/// A workflow's executions, newest first.
#[utoipa::path(get, path = "/workflows/{id}/executions", tag = "workflows (Orbit-Py)",
    params(("id" = String, Path), ExecutionsQuery),
    responses((status = 200, body = [Execution]), (status = 404, body = crate::error::ErrorBody)))]
pub async fn executions(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<ExecutionsQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<Execution>>> {
    let Path(id) = id?;
    let Query(q) = q?;
    s.store.pipeline(&id).await?;
    let runs = s
        .store
        .list_runs(&RunFilter {
            pipeline: Some(id),
            limit: super::limit(q.limit, 50),
            offset: q.offset.unwrap_or(0),
            ..RunFilter::default()
        })
        .await?;
    Ok(Json(runs.into_iter().map(|r| execution(r, &[])).collect()))
}

/// One execution with its tasks.
#[utoipa::path(get, path = "/executions/{id}", tag = "workflows (Orbit-Py)", params(("id" = String, Path)),
    responses((status = 200, body = Execution), (status = 404, body = crate::error::ErrorBody)))]
pub async fn execution_detail(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Execution>> {
    let Path(id) = id?;
    let run = s.store.find_run(&id).await?;
    let tasks = s.store.task_runs(run.id).await?;
    Ok(Json(execution(run, &tasks)))
}
