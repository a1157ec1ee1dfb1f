//! Bad requests, in-process: each gets a JSON 4xx with a code and a message, and none changes
//! what the API shows.

#![allow(clippy::unwrap_used, reason = "test code")]

#[macro_use]
mod support;

use serde_json::json;
use support::{app, call, call_raw};

const HELLO: &str = "name: hello\ndescription: says hi\ntasks:\n  - name: greet\n    type: shell\n    command: [sh, -c, 'echo hi $0', '{{ input.who }}']\n  - name: rest\n    type: sleep\n    duration: 10ms\n    needs: [greet]\n";

#[tokio::test]
async fn bad_requests_get_a_json_4xx_and_change_nothing() {
    let (_dir, app) = app().await;
    let app = &app;
    call(
        app,
        "POST",
        "/api/v1/pipelines",
        Some(json!({"yaml": HELLO})),
    )
    .await;
    let views = || async {
        (
            call(app, "GET", "/api/v1/pipelines", None).await,
            call(app, "GET", "/api/v1/queue/status", None).await,
            call(app, "GET", "/api/v1/runs", None).await,
        )
    };
    let before = views().await;
    let cases: Vec<(&str, &str, Option<&str>, u16)> = vec![
        ("POST", "/api/v1/pipelines", Some("{not json"), 400),
        ("POST", "/api/v1/pipelines", Some("[1, 2]"), 400),
        ("POST", "/api/v1/pipelines", Some(r#"{"yaml": 5}"#), 400),
        (
            "POST",
            "/api/v1/pipelines",
            Some(r#"{"name": "x", "tasks": [{"name": "a", "type": "shell"}]}"#),
            422,
        ),
        (
            "POST",
            "/api/v1/pipelines",
            Some(
                r#"{"name": "x", "tasks": [{"name": "a", "type": "sleep", "duration": "1s", "needs": ["a"]}]}"#,
            ),
            422,
        ),
        (
            "PUT",
            "/api/v1/pipelines/hello",
            Some(
                r#"{"name": "other", "tasks": [{"name": "a", "type": "sleep", "duration": "1s"}]}"#,
            ),
            400,
        ),
        (
            "PUT",
            "/api/v1/pipelines/nope",
            Some(
                r#"{"name": "nope", "tasks": [{"name": "a", "type": "sleep", "duration": "1s"}]}"#,
            ),
            404,
        ),
        (
            "POST",
            "/api/v1/pipelines/hello/trigger",
            Some(r#"{"input": {}, "priority": "high"}"#),
            400,
        ),
        (
            "POST",
            "/api/v1/pipelines/hello/trigger",
            Some(r#"{"input": {}, "idempotencyKey": ""}"#),
            400,
        ),
        (
            "POST",
            "/api/v1/pipelines/hello/trigger",
            Some(r#"{"input": {}, "extra": 1}"#),
            400,
        ),
        ("POST", "/api/v1/pipelines/nope/trigger", Some("{}"), 404),
        (
            "POST",
            "/api/v1/queue/task",
            // a task no worker service registered
            Some(r#"{"taskId": "t"}"#),
            404,
        ),
        (
            "POST",
            "/api/v1/queue/task",
            Some(r#"{"taskId": "t", "task": {"type": "sleep"}}"#),
            422,
        ),
        (
            "POST",
            "/api/v1/queue/task",
            Some(r#"{"taskId": "bad name!", "task": {"type": "sleep", "duration": "1s"}}"#),
            422,
        ),
        (
            "POST",
            "/api/v1/queue/batch",
            Some(
                r#"{"tasks": [{"taskId": "ok", "task": {"type": "sleep", "duration": "1s"}}, {"taskId": "t", "task": {"type": "nope"}}]}"#,
            ),
            422,
        ),
        ("POST", "/api/v1/queue/batch", Some(r#"{"tasks": []}"#), 400),
        ("GET", "/api/v1/runs?status=sleeping", None, 400),
        ("GET", "/api/v1/runs?limit=-1", None, 400),
        ("GET", "/api/v1/runs/zzz", None, 404),
        ("GET", "/api/v1/runs/01a2", None, 404),
        ("POST", "/api/v1/runs/01a2/cancel", None, 404),
        ("GET", "/api/v1/task-runs/xyz", None, 404),
        ("GET", "/api/v1/queue/items?state=done", None, 400),
        ("POST", "/api/v1/dlq/abc/retry", None, 404),
        ("GET", "/api/v1/tasks/nothing/history", None, 404),
        ("DELETE", "/api/v1/pipelines/nope", None, 404),
        ("GET", "/api/v1/nowhere", None, 404),
    ];
    for (method, path, body, want) in cases {
        let (status, v) = call_raw(app, method, path, body).await;
        assert_eq!(status, want, "{method} {path} {body:?}: {v}");
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{method} {path}: JSON error, got {v}"
        );
    }
    assert_eq!(before, views().await, "refused requests changed nothing");
}
