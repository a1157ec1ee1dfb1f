//! Pipelines: CRUD, trigger, dry run, task code history.

use super::pipeline_from_document;
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::OptionalJson;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::Utc;
use orbit_core::dag::Dag;
use orbit_store::{NewRun, StoredPipeline};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

/// A pipeline as the API shows it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineView {
    pub id: uuid::Uuid,
    pub name: String,
    pub version: i64,
    pub hash: String,
    pub description: Option<String>,
    pub schedule: Option<String>,
    /// The validated definition.
    #[schema(value_type = Object)]
    pub definition: Value,
    /// The file it was saved from (YAML or JSON), when it came as a document.
    pub source: Option<String>,
    pub created_at: chrono::DateTime<Utc>,
}

impl From<&StoredPipeline> for PipelineView {
    fn from(p: &StoredPipeline) -> PipelineView {
        PipelineView {
            id: p.id,
            name: p.name.clone(),
            version: p.version,
            hash: p.hash.clone(),
            description: p.pipeline.description.clone(),
            schedule: p.pipeline.schedule.clone(),
            definition: serde_json::to_value(&p.pipeline).unwrap_or(Value::Null),
            source: p.source.clone(),
            created_at: p.created_at,
        }
    }
}

/// The body of create and update: `{"yaml": "<pipeline file>"}`, or the pipeline document
/// itself as JSON (same keys as the YAML file format).
fn document_text(body: &Value) -> Result<String, ApiError> {
    match body {
        Value::Object(m) if m.len() == 1 && m.contains_key("yaml") => {
            m["yaml"].as_str().map(str::to_owned).ok_or_else(|| {
                ApiError::bad_request("`yaml` must be a string holding the pipeline file")
            })
        }
        Value::Object(_) => Ok(body.to_string()),
        _ => Err(ApiError::bad_request(
            "the body must be a pipeline document (JSON object) or {\"yaml\": \"...\"}",
        )),
    }
}

/// All pipelines (latest version of each).
#[utoipa::path(get, path = "/pipelines", tag = "pipelines", responses((status = 200, body = [PipelineView])))]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<PipelineView>>> {
    Ok(Json(
        s.store
            .list_pipelines()
            .await?
            .iter()
            .map(PipelineView::from)
            .collect(),
    ))
}

/// Create a pipeline (or a new version of it when the definition changed).
#[utoipa::path(post, path = "/pipelines", tag = "pipelines", request_body = Object,
    responses((status = 201, body = PipelineView), (status = 200, description = "unchanged: the existing version", body = PipelineView),
              (status = 422, body = crate::error::ErrorBody), (status = 400, body = crate::error::ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<PipelineView>)> {
    let Json(body) = body?;
    let (changed, stored) = save_document(&s, &body).await?;
    let status = if changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(PipelineView::from(&stored))))
}

/// Checks and saves a pipeline document (any dialect the file checker reads); whether it made
/// a new version.
pub(crate) async fn save_document(s: &AppState, body: &Value) -> ApiResult<(bool, StoredPipeline)> {
    let text = document_text(body)?;
    let pipeline = pipeline_from_document("request body", &text)?;
    orbit_engine::subruns::check_cycles(s.store.as_ref(), &pipeline)
        .await
        .map_err(orbit_store::StoreError::Invalid)?;
    let before = s.store.pipeline(&pipeline.name).await.ok().map(|p| p.id);
    let stored = s
        .store
        .save_pipeline(&pipeline, Some(&text), Utc::now())
        .await?;
    s.pipelines_saved.notify_one();
    Ok((before != Some(stored.id), stored))
}

/// One pipeline's latest version.
#[utoipa::path(get, path = "/pipelines/{name}", tag = "pipelines", params(("name" = String, Path)),
    responses((status = 200, body = PipelineView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<PipelineView>> {
    let Path(name) = name?;
    Ok(Json(PipelineView::from(&s.store.pipeline(&name).await?)))
}

/// Replace a pipeline's definition: a new version when it changed.
#[utoipa::path(put, path = "/pipelines/{name}", tag = "pipelines", params(("name" = String, Path)), request_body = Object,
    responses((status = 200, body = PipelineView), (status = 422, body = crate::error::ErrorBody)))]
pub async fn update(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<PipelineView>> {
    let Path(name) = name?;
    let Json(body) = body?;
    let text = document_text(&body)?;
    let pipeline = pipeline_from_document("request body", &text)?;
    if pipeline.name != name {
        return Err(ApiError::bad_request(format!(
            "the document is named `{}` but the URL names `{name}`; create a new pipeline with POST /api/v1/pipelines",
            pipeline.name
        )));
    }
    s.store.pipeline(&name).await?;
    orbit_engine::subruns::check_cycles(s.store.as_ref(), &pipeline)
        .await
        .map_err(orbit_store::StoreError::Invalid)?;
    let stored = s
        .store
        .save_pipeline(&pipeline, Some(&text), Utc::now())
        .await?;
    s.pipelines_saved.notify_one();
    Ok(Json(PipelineView::from(&stored)))
}

/// Delete a pipeline: it is hidden and can no longer be triggered; its runs stay.
#[utoipa::path(delete, path = "/pipelines/{name}", tag = "pipelines", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(name) = name?;
    match s.store.delete_pipeline(&name, Utc::now()).await? {
        0 => Err(ApiError::not_found(format!(
            "pipeline `{}` not found",
            crate::error::echo(&name)
        ))),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerBody {
    /// The run's input.
    #[schema(value_type = Object)]
    pub input: Option<Value>,
    /// A run with this key made within IDEMPOTENCY_TTL_SECONDS is returned instead of a new one.
    pub idempotency_key: Option<String>,
    /// Added to every task's priority; higher is claimed first.
    pub priority: Option<i32>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Triggered {
    pub run: orbit_store::RunRecord,
    /// False when the idempotency key returned an existing run.
    pub created: bool,
}

/// Trigger a run. The body is `{"input": ..., "idempotencyKey": ..., "priority": ...}`; a body
/// without an `input` key is taken as the input itself (the seed's form).
#[utoipa::path(post, path = "/pipelines/{name}/trigger", tag = "pipelines", params(("name" = String, Path)),
    request_body = TriggerBody,
    responses((status = 201, body = Triggered), (status = 200, description = "existing run for the idempotency key", body = Triggered),
              (status = 404, body = crate::error::ErrorBody), (status = 400, body = crate::error::ErrorBody)))]
pub async fn trigger(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    OptionalJson(body): OptionalJson<Value>,
) -> ApiResult<(StatusCode, Json<Triggered>)> {
    let Path(name) = name?;
    let created = trigger_run(&s, &name, body.unwrap_or(Value::Null)).await?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Triggered {
            run: created.run,
            created: created.created,
        }),
    ))
}

/// Creates a run of the pipeline `name` from a trigger body: `{"input", "idempotencyKey",
/// "priority"}`, or the input itself.
pub(crate) async fn trigger_run(
    s: &AppState,
    name: &str,
    body: Value,
) -> ApiResult<orbit_store::CreatedRun> {
    let parsed = match &body {
        Value::Object(m) if m.contains_key("input") => {
            serde_json::from_value::<TriggerBody>(body.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid trigger body: {e}")))?
        }
        Value::Null => TriggerBody {
            input: None,
            idempotency_key: None,
            priority: None,
        },
        other => TriggerBody {
            input: Some(other.clone()),
            idempotency_key: None,
            priority: None,
        },
    };
    if parsed.idempotency_key.as_deref().is_some_and(str::is_empty) {
        return Err(ApiError::bad_request("`idempotencyKey` must not be empty"));
    }
    let stored = s.store.pipeline(name).await?;
    let created = orbit_engine::runs::create_run(
        s.store.as_ref(),
        s.engine.storage(),
        NewRun {
            id: uuid::Uuid::now_v7(),
            pipeline: &stored,
            input: parsed.input.unwrap_or_else(|| json!({})),
            priority: parsed.priority.unwrap_or(0),
            idempotency_key: parsed.idempotency_key,
            idempotency_ttl: s.config.engine.idempotency_ttl,
            request_hash: None,
            triggered_by: orbit_store::TriggeredBy::Api,
            parent: None,
            rerun: None,
            now: Utc::now(),
        },
    )
    .await?;
    metrics::counter!("orbit_runs_triggered_total").increment(u64::from(created.created));
    Ok(created)
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    pub valid: bool,
    pub pipeline: String,
    pub version: i64,
    /// Tasks that may run at the same time, layer by layer: the execution plan.
    pub layers: Vec<Vec<String>>,
    #[schema(value_type = Object)]
    pub tasks: Vec<Value>,
}

/// Validate a pipeline and show its execution plan; nothing is executed or stored. With a
/// body (a pipeline document or `{"yaml": ...}`), that document is checked instead of the
/// saved one.
#[utoipa::path(post, path = "/pipelines/{name}/dry-run", tag = "pipelines", params(("name" = String, Path)),
    request_body(content = Object, description = "optional pipeline document to check instead of the saved one"),
    responses((status = 200, body = DryRun), (status = 422, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn dry_run(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    OptionalJson(body): OptionalJson<Value>,
) -> ApiResult<Json<DryRun>> {
    let Path(name) = name?;
    let (pipeline, version) = match body.filter(|v| !v.is_null()) {
        Some(doc) => (
            pipeline_from_document("request body", &document_text(&doc)?)?,
            0,
        ),
        None => {
            let stored = s.store.pipeline(&name).await?;
            (stored.pipeline, stored.version)
        }
    };
    let dag = Dag::new(&pipeline).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_pipeline",
            e.to_string(),
        )
    })?;
    let layers = dag
        .layers()
        .iter()
        .map(|l| l.iter().map(|&i| dag.name(i).to_owned()).collect())
        .collect();
    let tasks = pipeline
        .tasks
        .iter()
        .map(|t| {
            json!({"name": t.name, "type": t.task_type, "needs": t.needs, "queue": t.queue(),
            "priority": t.priority, "maxAttempts": t.retry.max_attempts,
            "timeoutMs": t.timeout.map(|d| d.as_millis() as u64), "params": t.params})
        })
        .collect();
    Ok(Json(DryRun {
        valid: true,
        pipeline: pipeline.name,
        version,
        layers,
        tasks,
    }))
}

#[derive(Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// Only this pipeline's task of that name.
    pub pipeline: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CodeVersion {
    /// The pipeline of a YAML/API task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// The service of a registered (SDK) task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub task: String,
    /// Counts the changes of this task's code: 1, 2, ...
    pub code_version: i64,
    /// SHA-256 of the handler's source (SDK) or of the task's canonical definition.
    pub code_hash: String,
    /// The pipeline version that brought the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_version: Option<i64>,
    pub changed_at: chrono::DateTime<Utc>,
}

/// A task's code history: every change of its definition, oldest first.
#[utoipa::path(get, path = "/tasks/{id}/history", tag = "tasks", params(("id" = String, Path, description = "task name"), HistoryQuery),
    responses((status = 200, body = [CodeVersion]), (status = 404, body = crate::error::ErrorBody)))]
pub async fn task_history(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<CodeVersion>>> {
    let Path(task) = id?;
    let Query(q) = query?;
    let history = code_history(s.store.as_ref(), &task, q.pipeline).await?;
    if history.is_empty() {
        return Err(ApiError::not_found(format!(
            "no task `{}` in any pipeline or registered by any service",
            crate::error::echo(&task)
        )));
    }
    Ok(Json(history))
}

/// A task's code history: a registered (SDK) task's versions, and every change of a YAML/API
/// task's definition in each pipeline (or only in `pipeline`), oldest first per source.
pub async fn code_history(
    store: &dyn orbit_store::Store,
    task: &str,
    pipeline: Option<String>,
) -> Result<Vec<CodeVersion>, orbit_store::StoreError> {
    let mut history: Vec<CodeVersion> = Vec::new();
    if pipeline.is_none() {
        history.extend(
            store
                .task_history(task)
                .await?
                .into_iter()
                .map(|c| CodeVersion {
                    pipeline: None,
                    service: Some(c.service_id),
                    task: c.task_name,
                    code_version: c.code_version,
                    code_hash: c.code_hash,
                    pipeline_version: None,
                    changed_at: c.created_at,
                }),
        );
    }
    let names: Vec<String> = match pipeline {
        Some(p) => vec![p],
        None => store
            .list_pipelines()
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect(),
    };
    for name in names {
        let mut last: Option<String> = None;
        let mut n = 0;
        for version in store.pipeline_versions(&name).await? {
            let Some(def) = version.pipeline.task(task) else {
                continue;
            };
            let hash = orbit_core::pipeline::task_hash(def);
            if last.as_deref() != Some(hash.as_str()) {
                n += 1;
                history.push(CodeVersion {
                    pipeline: Some(name.clone()),
                    service: None,
                    task: task.to_owned(),
                    code_version: n,
                    code_hash: hash.clone(),
                    pipeline_version: Some(version.version),
                    changed_at: version.created_at,
                });
                last = Some(hash);
            }
        }
    }
    Ok(history)
}
