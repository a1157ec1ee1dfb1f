//! The rest of the API's contract, in-process like `contract.rs`: the node and queue views,
//! serverless processing, the dead-letter queue, deletes, Orbit-Py's workflows and the worker
//! protocol (the live streams, SSE and WebSocket, are tested end to end in `orbit-cli`), each route's status and shape kept as a snapshot. Answers that hold measurements
//! (uptime, rates, memory) are kept as their shape only.

#![allow(clippy::unwrap_used, reason = "test code")]

#[macro_use]
mod support;

use serde_json::{Value, json};
use support::{app, app_with, shape};

const SHOP: &str = "name: shop\ntasks:\n  - {name: pay, type: sleep, duration: 0s}\n  - {name: ship, type: sleep, duration: 0s, needs: pay}\n";
const BROKEN: &str = "name: broken\ntasks:\n  - {name: boom, type: shell, command: [sh, -c, 'exit 3'], retry: {max_attempts: 1}}\n";

#[tokio::test]
async fn views_processing_and_deletes_answer_in_their_documented_shapes() {
    let (_dir, app) = app().await;
    let app = &app;
    snapshot!("health", app, "GET", "/api/v1/health", None, shape);
    snapshot!("info", app, "GET", "/api/v1/info", None, shape);
    snapshot!(
        "storage_backends",
        app,
        "GET",
        "/api/v1/storage/backends",
        None,
        shape
    );
    support::call(
        app,
        "POST",
        "/api/v1/pipelines",
        Some(json!({ "yaml": SHOP })),
    )
    .await;
    snapshot!(
        "pipeline_dry_run",
        app,
        "POST",
        "/api/v1/pipelines/shop/dry-run",
        None
    );
    snapshot!(
        "pipeline_put_unchanged",
        app,
        "PUT",
        "/api/v1/pipelines/shop",
        Some(json!({ "yaml": SHOP }))
    );
    let run = snapshot!(
        "run_triggered_for_processing",
        app,
        "POST",
        "/api/v1/pipelines/shop/trigger",
        Some(json!({}))
    )["run"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    snapshot!("queue_items", app, "GET", "/api/v1/queue/items", None);
    snapshot!("processed", app, "POST", "/api/v1/process", None);
    snapshot!(
        "workers_health",
        app,
        "GET",
        "/api/v1/workers/health",
        None,
        shape
    );
    snapshot!(
        "workers_stats",
        app,
        "GET",
        "/api/v1/workers/stats",
        None,
        shape
    );
    snapshot!(
        "workers_series",
        app,
        "GET",
        "/api/v1/workers/series",
        None,
        shape
    );
    snapshot!(
        "workers_metrics",
        app,
        "GET",
        "/api/v1/workers/metrics",
        None,
        shape
    );
    snapshot!("services_none", app, "GET", "/api/v1/services", None);
    snapshot!(
        "resume_settled",
        app,
        "POST",
        format!("/api/v1/runs/{run}/resume"),
        None
    );
    snapshot!(
        "run_deleted",
        app,
        "DELETE",
        format!("/api/v1/runs/{run}"),
        None
    );
    snapshot!(
        "pipeline_deleted",
        app,
        "DELETE",
        "/api/v1/pipelines/shop",
        None
    );
    snapshot!(
        "task_history_unknown",
        app,
        "GET",
        "/api/v1/tasks/payment/history",
        None
    );
    snapshot!(
        "queue_task_unregistered",
        app,
        "POST",
        "/api/v1/queue/task",
        Some(json!({"taskId": "payment"}))
    );
}

#[tokio::test]
async fn the_dead_letter_queue_answers_in_its_documented_shapes() {
    let (_dir, app) = app().await;
    let app = &app;
    support::call(
        app,
        "POST",
        "/api/v1/pipelines",
        Some(json!({ "yaml": BROKEN })),
    )
    .await;
    support::call(
        app,
        "POST",
        "/api/v1/pipelines/broken/trigger",
        Some(json!({})),
    )
    .await;
    snapshot!("processed_to_dead", app, "POST", "/api/v1/process", None);
    let letters = snapshot!("dlq_one", app, "GET", "/api/v1/dlq", None);
    let id = letters[0]["id"].as_str().unwrap().to_owned();
    snapshot!("dlq_entry", app, "GET", format!("/api/v1/dlq/{id}"), None);
    snapshot!(
        "dlq_retried",
        app,
        "POST",
        format!("/api/v1/dlq/{id}/retry"),
        None
    );
    snapshot!(
        "dlq_purged",
        app,
        "POST",
        "/api/v1/dlq/purge?olderThanDays=0",
        None
    );
}

#[tokio::test]
async fn orbit_py_workflows_answer_in_their_documented_shapes() {
    let (_dir, app) = app().await;
    let app = &app;
    let workflow = json!({
        "name": "Data Pipeline",
        "description": "ETL",
        "tasks": [
            {"name": "wait", "action_type": "sleep", "action_payload": {"duration": "0s"}, "dependencies": []},
            {"name": "done", "action_type": "sleep", "action_payload": {"duration": "0s"}, "dependencies": ["wait"]}
        ]
    });
    let created = snapshot!(
        "workflow_created",
        app,
        "POST",
        "/api/v1/workflows/",
        Some(workflow.clone())
    );
    let id = created["id"].as_str().unwrap().to_owned();
    snapshot!("workflow_list", app, "GET", "/api/v1/workflows", None);
    snapshot!(
        "workflow_get",
        app,
        "GET",
        format!("/api/v1/workflows/{id}"),
        None
    );
    let mut changed = workflow;
    changed["description"] = json!("ETL, described again");
    snapshot!(
        "workflow_put",
        app,
        "PUT",
        format!("/api/v1/workflows/{id}"),
        Some(changed)
    );
    let execution = snapshot!(
        "workflow_executed",
        app,
        "POST",
        format!("/api/v1/workflows/{id}/execute"),
        None
    );
    let execution_id = execution["id"]
        .as_str()
        .or(execution["execution_id"].as_str())
        .unwrap()
        .to_owned();
    snapshot!(
        "workflow_executions",
        app,
        "GET",
        format!("/api/v1/workflows/{id}/executions"),
        None
    );
    snapshot!(
        "execution_get",
        app,
        "GET",
        format!("/api/v1/executions/{execution_id}"),
        None
    );
    snapshot!(
        "workflow_deleted",
        app,
        "DELETE",
        format!("/api/v1/workflows/{id}"),
        None
    );
}

const KEY: &str = "contract-test-secret-key-0123456789";

fn service_token() -> String {
    let now = chrono::Utc::now().timestamp() as u64;
    let claims = orbit_core::protocol::ServiceClaims {
        sub: "checkout".into(),
        aud: orbit_core::protocol::SERVICE_AUDIENCE.into(),
        exp: now + 600,
        iat: now,
    };
    orbit_engine::dispatch::SecretKey::new(KEY)
        .unwrap()
        .sign(&claims)
        .unwrap()
}

/// A request with a bearer token.
async fn authed(app: &axum::Router, path: &str, token: &str, body: Value) -> (u16, Value) {
    support::call_with(app, "POST", path, Some(body), Some(token)).await
}

#[tokio::test]
async fn the_worker_protocol_answers_in_its_documented_shapes() {
    let (_dir, app) = app_with(Some(KEY)).await;
    let app = &app;
    let service = service_token();
    let registration = json!({
        "serviceId": "checkout",
        "workerId": "w-1",
        "concurrency": 2,
        "tasks": [{"name": "payment", "codeHash": "0".repeat(64), "retries": 2}]
    });
    let (status, registered) =
        authed(app, "/api/v1/services/register", &service, registration).await;
    insta::assert_json_snapshot!(
        "registered",
        json!({"status": status, "body": support::stable(registered)})
    );
    snapshot!("services_one", app, "GET", "/api/v1/services", None, shape);
    snapshot!(
        "service_tasks",
        app,
        "GET",
        "/api/v1/services/checkout/tasks",
        None
    );
    snapshot!(
        "task_history",
        app,
        "GET",
        "/api/v1/tasks/payment/history",
        None
    );
    let queued = snapshot!(
        "queue_task_registered",
        app,
        "POST",
        "/api/v1/queue/task",
        Some(json!({"taskId": "payment", "input": {"orderId": "o-1"}}))
    );
    assert!(
        queued["run"]["id"].is_string() || queued["runId"].is_string(),
        "{queued}"
    );
    let (status, polled) = authed(
        app,
        "/api/v1/worker/poll",
        &service,
        json!({"workerId": "w-1", "tasks": ["payment"], "max": 1, "waitMs": 0}),
    )
    .await;
    insta::assert_json_snapshot!(
        "polled",
        json!({"status": status, "body": support::stable(polled.clone())})
    );
    let assignment = &polled["tasks"][0];
    let (token, trid) = (
        assignment["token"].as_str().unwrap().to_owned(),
        assignment["taskRunId"].as_str().unwrap().to_owned(),
    );
    for (name, path, body) in [
        (
            "task_heartbeat",
            "/api/v1/heartbeat",
            json!({"taskRunId": trid}),
        ),
        (
            "task_progress",
            "/api/v1/progress",
            json!({"taskRunId": trid, "progress": 0.5, "message": "half"}),
        ),
    ] {
        let (status, body) = authed(app, path, &token, body).await;
        insta::assert_json_snapshot!(
            name,
            json!({"status": status, "body": support::stable(body)})
        );
    }
    // A grant names a key under its run and expires: its shape only.
    let (status, grant) = authed(app, "/api/v1/grant", &token, json!({"taskRunId": trid})).await;
    insta::assert_json_snapshot!(
        "task_grant",
        json!({"status": status, "body": shape(grant)})
    );
    let run = assignment["runId"].as_str().unwrap().to_owned();
    let (status, body) = authed(
        app,
        &format!("/api/v1/callback/{run}"),
        &token,
        json!({"taskRunId": trid, "status": "succeeded", "output": {"paid": true}}),
    )
    .await;
    insta::assert_json_snapshot!(
        "task_callback",
        json!({"status": status, "body": support::stable(body)})
    );
    let (status, body) = authed(
        app,
        &format!("/api/v1/callback/{run}"),
        &token,
        json!({"taskRunId": trid, "status": "succeeded", "output": {"paid": true}}),
    )
    .await;
    insta::assert_json_snapshot!(
        "task_callback_again",
        json!({"status": status, "body": support::stable(body)})
    );
    let (status, body) = authed(
        app,
        "/api/v1/worker/heartbeat",
        &service,
        json!({"workerId": "w-1"}),
    )
    .await;
    insta::assert_json_snapshot!(
        "worker_heartbeat",
        json!({"status": status, "body": support::stable(body)})
    );
}
