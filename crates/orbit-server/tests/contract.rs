//! The API's contract, in-process (`Router` + `oneshot`, no socket, no engine running): each
//! main route's status and response shape, kept as snapshots in `tests/snapshots/`. Ids and
//! times are replaced by placeholders, so a snapshot changes only when a shape or a value the
//! API decides changes. Review a change with `cargo insta review` (or `INSTA_UPDATE=always`).

#![allow(clippy::unwrap_used, reason = "test code")]

use axum::body::Body;
use axum::http::Request;
use orbit_engine::EngineConfig;
use orbit_engine::storage::Storage;
use orbit_server::guard::Access;
use orbit_server::{AppState, Mode, ServerConfig, router};
use orbit_store_sqlite::{Durability, SqliteStore};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

async fn app() -> (tempfile::TempDir, axum::Router) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let store = Arc::new(SqliteStore::open(&url, Durability::Normal).await.unwrap());
    let storage = Arc::new(Storage::local(&dir.path().join("objects")).unwrap());
    let config = ServerConfig {
        mode: Mode::Serverless,
        workers: 0,
        engine: EngineConfig::default(),
        api_token: None,
        public_health: false,
        process_batch: 5,
        store_kind: "sqlite",
        node_heartbeat: Duration::from_secs(5),
        secret_key: None,
        dlq_retention: chrono::Duration::days(30),
        access: Access::default(),
    };
    let state = AppState::new(store, storage, config).unwrap();
    (dir, router(state))
}

/// `(status, body)` of one request, its body JSON.
async fn call(app: &axum::Router, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1:3000");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, body)
}

/// The body with what changes on every run replaced: UUIDs by `[id]`, RFC 3339 times by
/// `[time]`, content hashes by `[hash]`.
fn stable(value: Value) -> Value {
    match value {
        Value::String(s) if uuid::Uuid::parse_str(&s).is_ok() => json!("[id]"),
        Value::String(s) if chrono::DateTime::parse_from_rfc3339(&s).is_ok() => json!("[time]"),
        Value::String(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            json!("[hash]")
        }
        Value::Array(items) => Value::Array(items.into_iter().map(stable).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, stable(v))).collect()),
        other => other,
    }
}

macro_rules! snapshot {
    ($name:literal, $app:expr, $method:literal, $path:expr, $body:expr) => {{
        let (status, body) = call($app, $method, &$path, $body).await;
        insta::assert_json_snapshot!($name, json!({"status": status, "body": stable(body.clone())}));
        body
    }};
}

const PIPELINE: &str = "name: shop\ndescription: checkout\ntasks:\n  - {name: pay, type: sleep, duration: 0s}\n  - {name: ship, type: sleep, duration: 0s, needs: pay, retry: {max_attempts: 3}}\n";

#[tokio::test]
async fn the_main_routes_answer_in_their_documented_shapes() {
    let (_dir, app) = app().await;
    let app = &app;
    snapshot!(
        "pipeline_saved",
        app,
        "POST",
        "/api/v1/pipelines",
        Some(json!({ "yaml": PIPELINE }))
    );
    snapshot!("pipeline_list", app, "GET", "/api/v1/pipelines", None);
    snapshot!("pipeline_get", app, "GET", "/api/v1/pipelines/shop", None);
    let triggered = snapshot!(
        "run_triggered",
        app,
        "POST",
        "/api/v1/pipelines/shop/trigger",
        Some(json!({"input": {"order": "o-1"}, "idempotencyKey": "o-1", "priority": 5}))
    );
    let run = triggered["run"]["id"].as_str().unwrap().to_owned();
    snapshot!(
        "run_triggered_again",
        app,
        "POST",
        "/api/v1/pipelines/shop/trigger",
        Some(json!({"input": {"order": "o-1"}, "idempotencyKey": "o-1", "priority": 5}))
    );
    snapshot!("run_list", app, "GET", "/api/v1/runs?limit=5", None);
    let detail = snapshot!(
        "run_detail",
        app,
        "GET",
        format!("/api/v1/runs/{run}"),
        None
    );
    let task_run = detail["tasks"][0]["id"].as_str().unwrap().to_owned();
    snapshot!(
        "task_run",
        app,
        "GET",
        format!("/api/v1/task-runs/{task_run}"),
        None
    );
    snapshot!("queue_status", app, "GET", "/api/v1/queue/status", None);
    snapshot!(
        "run_cancelled",
        app,
        "POST",
        format!("/api/v1/runs/{run}/cancel"),
        None
    );
    snapshot!(
        "run_retried",
        app,
        "POST",
        format!("/api/v1/runs/{run}/retry"),
        None
    );
    snapshot!("dlq_empty", app, "GET", "/api/v1/dlq", None);
}

#[tokio::test]
async fn errors_are_json_with_a_code_and_a_message() {
    let (_dir, app) = app().await;
    let app = &app;
    snapshot!(
        "error_unknown_run",
        app,
        "GET",
        "/api/v1/runs/0193aaaa-0000-7000-8000-000000000000",
        None
    );
    snapshot!(
        "error_unknown_pipeline",
        app,
        "POST",
        "/api/v1/pipelines/nope/trigger",
        Some(json!({}))
    );
    snapshot!(
        "error_bad_pipeline",
        app,
        "POST",
        "/api/v1/pipelines",
        Some(json!({ "yaml": "name: x\ntasks:\n  - {name: a, type: nope}\n" }))
    );
    snapshot!(
        "error_bad_body",
        app,
        "POST",
        "/api/v1/pipelines",
        Some(json!([1, 2]))
    );
    snapshot!(
        "error_worker_protocol_off",
        app,
        "POST",
        "/api/v1/worker/poll",
        Some(json!({}))
    );
}
