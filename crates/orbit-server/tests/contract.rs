//! The API's contract, in-process (`Router` + `oneshot`, no socket, no engine running): each
//! main route's status and response shape, kept as snapshots in `tests/snapshots/`. Ids and
//! times are replaced by placeholders, so a snapshot changes only when a shape or a value the
//! API decides changes. Review a change with `cargo insta review` (or `INSTA_UPDATE=always`).

#![allow(clippy::unwrap_used, reason = "test code")]

#[macro_use]
mod support;

use serde_json::json;
use support::app;

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
