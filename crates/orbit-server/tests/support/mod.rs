//! The contract tests' app, requests and placeholders.

#![allow(dead_code, reason = "each test file uses some of these")]

use axum::body::Body;
use axum::http::Request;
use orbit_engine::EngineConfig;
use orbit_engine::dispatch::SecretKey;
use orbit_engine::storage::Storage;
use orbit_server::guard::Access;
use orbit_server::{AppState, Mode, ServerConfig, router};
use orbit_store_sqlite::{Durability, SqliteStore};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

pub async fn app() -> (tempfile::TempDir, axum::Router) {
    app_with(None).await
}

/// An app on a fresh SQLite store, in serverless mode (nothing runs unless `POST /process`
/// asks), with the worker protocol on when `secret` is given.
pub async fn app_with(secret: Option<&str>) -> (tempfile::TempDir, axum::Router) {
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
        secret_key: secret.map(|k| SecretKey::new(k).unwrap()),
        dlq_retention: chrono::Duration::days(30),
        run_retention: None,
        access: Access::default(),
    };
    let state = AppState::new(store, storage, config).unwrap();
    (dir, router(state))
}

/// `(status, body)` of one request, its body JSON.
pub async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call_with(app, method, path, body, None).await
}

/// A request whose body is sent as it is (not JSON, maybe), with `content-type: application/json`.
pub async fn call_raw(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1:3000");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_owned())))
        .unwrap();
    answer(app, req).await
}

/// [`call`] with a bearer token.
pub async fn call_with(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1:3000");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .unwrap();
    answer(app, req).await
}

/// `(status, body)`: the body as JSON, or as a string when it is not JSON.
async fn answer(app: &axum::Router, req: Request<Body>) -> (u16, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, body)
}

/// The body with what changes on every run replaced: UUIDs by `[id]`, RFC 3339 times by
/// `[time]`, content hashes by `[hash]`.
pub fn stable(value: Value) -> Value {
    match value {
        Value::String(s) if uuid::Uuid::parse_str(&s).is_ok() => json!("[id]"),
        Value::String(s) if chrono::DateTime::parse_from_rfc3339(&s).is_ok() => json!("[time]"),
        Value::String(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            json!("[hash]")
        }
        Value::String(s) if s.starts_with("eyJ") && s.matches('.').count() == 2 => json!("[token]"),
        // A W3C traceparent: the run's trace and the attempt's span.
        Value::String(s) if s.len() == 55 && s.starts_with("00-") && s.ends_with("-01") => {
            json!("[traceparent]")
        }
        Value::String(s) => json!(without_ids(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(stable).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| match k.as_str() {
                    "requestId" if v.is_string() => (k, json!("[request id]")),
                    _ => (k, stable(v)),
                })
                .collect(),
        ),
        other => other,
    }
}

/// `s` with every UUID in it (a message naming a run) replaced by `[id]`.
fn without_ids(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if let Some(candidate) = s.get(i..i + 36)
            && uuid::Uuid::parse_str(candidate).is_ok()
        {
            out.push_str("[id]");
            i += 36;
            continue;
        }
        let c = s[i..].chars().next().unwrap_or_default();
        out.push(c);
        i += c.len_utf8().max(1);
    }
    out
}

/// The body's shape only: every number, string and boolean replaced by its type, for answers
/// whose values are measurements (uptime, rates, memory).
pub fn shape(value: Value) -> Value {
    match value {
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Bool(_) => json!("bool"),
        Value::Array(items) => Value::Array(items.into_iter().take(1).map(shape).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, shape(v))).collect()),
        Value::Null => Value::Null,
    }
}

/// Asserts a snapshot of `(status, body)` made stable by `f`; returns the raw body.
#[allow(unused_macros, reason = "not every test file snapshots")]
macro_rules! snapshot {
    ($name:literal, $app:expr, $method:literal, $path:expr, $body:expr) => {
        snapshot!($name, $app, $method, $path, $body, $crate::support::stable)
    };
    ($name:literal, $app:expr, $method:literal, $path:expr, $body:expr, $f:path) => {{
        let (status, body) = $crate::support::call($app, $method, &$path, $body).await;
        insta::assert_json_snapshot!($name, serde_json::json!({"status": status, "body": $f(body.clone())}));
        body
    }};
}
