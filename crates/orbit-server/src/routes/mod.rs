//! The `/api/v1` routes, one module per resource.

pub mod health;
pub mod limits;
pub mod live;
pub mod pipelines;
pub mod protocol;
pub mod queue;
pub mod runs;
pub mod signals;
pub mod storage;
pub mod workers;
pub mod workflows;

use crate::AppState;
use crate::error::ApiError;
use orbit_core::Pipeline;
use orbit_core::file::parse_pipeline;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::health))
        .routes(routes!(health::info))
        .routes(routes!(health::storage_backends))
        .routes(routes!(workers::services))
        .routes(routes!(pipelines::list, pipelines::create))
        .routes(routes!(
            pipelines::get,
            pipelines::update,
            pipelines::delete
        ))
        .routes(routes!(pipelines::trigger))
        .routes(routes!(pipelines::dry_run))
        .routes(routes!(runs::list))
        .routes(routes!(runs::get, runs::delete))
        .routes(routes!(runs::children))
        .routes(routes!(runs::why))
        .routes(routes!(runs::timeline))
        .routes(routes!(signals::signal))
        .routes(routes!(signals::decide))
        .routes(routes!(runs::retry))
        .routes(routes!(runs::rerun, runs::rerun_context))
        .routes(routes!(runs::cancel))
        .routes(routes!(runs::task_run))
        .routes(routes!(queue::queue_task))
        .routes(routes!(queue::queue_batch))
        .routes(routes!(queue::status))
        .routes(routes!(limits::list))
        .routes(routes!(limits::set, limits::delete))
        .routes(routes!(queue::items))
        .routes(routes!(queue::dlq))
        .routes(routes!(queue::dlq_retry))
        .routes(routes!(queue::dlq_entry))
        .routes(routes!(runs::resume))
        .routes(routes!(queue::dlq_purge))
        .routes(routes!(pipelines::task_history))
        .routes(routes!(workers::stats))
        .routes(routes!(workers::health))
        .routes(routes!(workers::metrics))
        .routes(routes!(workers::series))
        .routes(routes!(queue::process))
        .routes(routes!(protocol::register))
        .routes(routes!(protocol::register_alias))
        .routes(routes!(protocol::worker_heartbeat))
        .routes(routes!(protocol::poll))
        .routes(routes!(protocol::heartbeat))
        .routes(routes!(protocol::progress))
        .routes(routes!(protocol::signal))
        .routes(routes!(protocol::callback))
        .routes(routes!(storage::grant))
        .routes(routes!(protocol::service_tasks))
        .routes(routes!(workflows::list, workflows::create))
        .routes(routes!(
            workflows::get,
            workflows::update,
            workflows::delete
        ))
        .routes(routes!(workflows::execute))
        .routes(routes!(workflows::executions))
        .routes(routes!(workflows::execution_detail))
        .routes(routes!(live::events))
        .routes(routes!(live::ws))
}

/// The `/api/v1` path a request path names: the PipeWeave seed's `/api/...` and `/health` are
/// the same routes.
pub fn canonical(path: &str) -> std::borrow::Cow<'_, str> {
    if path == "/health" {
        return "/api/v1/health".into();
    }
    match path.strip_prefix("/api/") {
        Some(rest) if !rest.starts_with("v1/") && rest != "v1" => format!("/api/v1/{rest}").into(),
        _ => path.into(),
    }
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route {}; the API is under /api/v1 (see /api/v1/openapi.json or /docs)",
        crate::error::echo(&uri.to_string())
    ))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {} (see /api/v1/openapi.json)",
            crate::error::echo(method.as_str()),
            crate::error::echo(uri.path())
        ),
    )
}

/// Validates a pipeline document (the file format, as JSON or YAML text) through the same
/// checker as `orbit validate`, so the API and the CLI accept and refuse the same things.
pub fn pipeline_from_document(origin: &str, text: &str) -> Result<Pipeline, ApiError> {
    parse_pipeline(origin, text).map_err(|e| {
        let details: Vec<Value> = e
            .diagnostics
            .iter()
            .map(|d| json!({"line": d.line, "column": d.column, "message": d.message}))
            .collect();
        ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_pipeline",
            e.to_string(),
        )
        .with_details(Value::Array(details))
    })
}

/// A page size from a query, within bounds.
pub fn limit(given: Option<u32>, default: u32) -> u32 {
    given.unwrap_or(default).clamp(1, 1000)
}
