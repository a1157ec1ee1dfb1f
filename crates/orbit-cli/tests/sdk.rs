//! SDK workers against a real `orbit server` process: the example service in pull and in push
//! mode, the worker protocol spoken with plain HTTP (as docs/worker-protocol.md describes it),
//! dynamic routing, code versions, and refused tokens.

mod support;

use jsonwebtoken::{EncodingKey, Header};
use orbit_store::prelude::*;
use orbit_store_postgres::testing::TestDb;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{Server, server};
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-secret-key-0123456789abcdef";
const PIPELINE: &str = include_str!("../../../examples/worker/pipeline.yaml");

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(s: &Server) -> Api {
        Api {
            base: s.base.clone(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn trigger(&self, pipeline: &str, input: Value) -> String {
        let (status, body) = self
            .call(
                "POST",
                &format!("/api/v1/pipelines/{pipeline}/trigger"),
                None,
                Some(input),
            )
            .await;
        assert!(status == 201 || status == 200, "trigger: {status} {body}");
        body["run"]["id"]
            .as_str()
            .or(body["id"].as_str())
            .expect("run id")
            .to_owned()
    }

    /// Waits for the run to settle; its detail.
    async fn settled(&self, run: &str, within: Duration) -> Value {
        let end = Instant::now() + within;
        loop {
            let detail = self.get(&format!("/api/v1/runs/{run}")).await;
            let state = detail["run"]["state"].as_str().unwrap_or("").to_owned();
            if ["succeeded", "failed", "cancelled"].contains(&state.as_str()) {
                return detail;
            }
            assert!(Instant::now() < end, "run {run} did not settle: {detail:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn task<'a>(detail: &'a Value, name: &str) -> &'a Value {
    detail["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["taskName"] == name))
        .unwrap_or_else(|| panic!("no task {name} in {detail:#}"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn service_token(key: &str, service: &str, exp: u64) -> String {
    let claims = json!({"sub": service, "aud": "orbit-service", "exp": exp, "iat": now()});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .expect("sign")
}

fn start(dir: &std::path::Path, db: &str) -> Server {
    server(dir, db, &["--workers", "2"], &[("ORBIT_SECRET_KEY", KEY)])
}

/// The example pipeline through the example service: returns the run detail.
async fn checkout(api: &Api, order: &str, fast: bool) -> Value {
    let run = api
        .trigger(
            "checkout",
            json!({"input": {"orderId": order, "amount": 12.5, "fast": fast}}),
        )
        .await;
    api.settled(&run, Duration::from_secs(30)).await
}

async fn example_runs(api: &Api) {
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/pipelines",
            None,
            Some(json!({"yaml": PIPELINE})),
        )
        .await;
    assert!(status == 201 || status == 200, "{body}");

    let fast = checkout(api, "o-1", true).await;
    assert_eq!(fast["run"]["state"], "succeeded", "{fast:#}");
    assert_eq!(task(&fast, "express")["state"], "succeeded");
    assert_eq!(
        task(&fast, "standard")["state"],
        "skipped",
        "the branch not chosen is skipped"
    );
    assert_eq!(task(&fast, "route")["output"]["path"], "express");
    assert_eq!(task(&fast, "payment")["output"]["receipt"], "rcpt-o-1");
    let report = task(&fast, "report");
    assert_eq!(
        report["output"]["receipt"], "rcpt-o-1",
        "upstream outputs reach the handler"
    );
    assert_eq!(report["progress"], 1.0, "the last progress report is kept");
    assert_eq!(fast["codeVersions"]["payment"], 1);

    let slow = checkout(api, "o-2", false).await;
    assert_eq!(slow["run"]["state"], "succeeded", "{slow:#}");
    assert_eq!(task(&slow, "standard")["output"]["shipping"], "standard");
    assert_eq!(task(&slow, "express")["state"], "skipped");
    assert_eq!(
        slow["changedSincePreviousRun"],
        json!([]),
        "same code as the run before"
    );

    // Same order, same code version: the payment's idempotency key reuses the first charge.
    let again = checkout(api, "o-1", true).await;
    let payment = task(&again, "payment")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let attempts = api.get(&format!("/api/v1/task-runs/{payment}")).await;
    let log = attempts.to_string();
    assert!(
        log.contains("reused"),
        "payment was not reused: {attempts:#}"
    );

    let tasks = api.get("/api/v1/services/shop/tasks").await;
    let names: Vec<&str> = tasks
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["payment", "report", "route", "ship"]);
    let services = api.get("/api/v1/services").await;
    let worker = services
        .as_array()
        .and_then(|s| s.iter().find(|n| n["service"] == "shop"))
        .unwrap_or_else(|| panic!("no shop worker in {services:#}"));
    assert_eq!(worker["status"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_service_in_pull_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path(), "sqlite://orbit.db");
    let api = Api::new(&s);
    let worker = orbit_example_worker::service(&s.base, KEY).expect("worker");
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    example_runs(&api).await;
    stop.cancel();
    running.await.expect("join").expect("worker ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_service_in_push_mode_on_postgres() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path(), &db.url);
    let api = Api::new(&s);
    let worker = orbit_example_worker::service(&s.base, KEY).expect("worker");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.listen(listener, None, stop.clone()));
    // Registration happens as the listener starts.
    let end = Instant::now() + Duration::from_secs(10);
    while api
        .call("GET", "/api/v1/services/shop/tasks", None, None)
        .await
        .0
        != 200
    {
        assert!(Instant::now() < end, "the push worker never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    example_runs(&api).await;
    stop.cancel();
    running.await.expect("join").expect("worker ran");
}

/// docs/worker-protocol.md, step by step, with nothing but HTTP and a JWT library.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_by_plain_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path(), "sqlite://orbit.db");
    let api = Api::new(&s);
    let token = service_token(KEY, "plain", now() + 60);
    let register = |hash: &str| {
        json!({"serviceId": "plain", "workerId": "plain@test:1", "concurrency": 2, "tasks": [
            {"name": "pick", "codeHash": hash, "allowedNext": ["left", "right"]},
            {"name": "side", "codeHash": "s1"}
        ]})
    };
    let (status, reg) = api
        .call(
            "POST",
            "/api/v1/services/register",
            Some(&token),
            Some(register("h1")),
        )
        .await;
    assert_eq!(status, 200, "{reg}");
    assert_eq!(
        reg["tasks"][0],
        json!({"name": "pick", "codeHash": "h1", "codeVersion": 1, "changed": true})
    );

    let pipeline = json!({"name": "plain", "tasks": [
        {"name": "pick", "type": "worker"},
        {"name": "left", "type": "worker", "task": "side", "needs": "pick"},
        {"name": "right", "type": "worker", "task": "side", "needs": "pick"},
        {"name": "after", "type": "worker", "task": "side", "needs": "right"}
    ]});
    let (status, body) = api
        .call("POST", "/api/v1/pipelines", None, Some(pipeline))
        .await;
    assert_eq!(status, 201, "{body}");

    // A choice outside allowedNext fails the task for good, with a message that says so.
    let run = api.trigger("plain", json!({"input": {"n": 1}})).await;
    let a = poll_one(&api, &token).await;
    assert_eq!(
        (a["task"].as_str(), a["serviceTask"].as_str()),
        (Some("pick"), Some("pick"))
    );
    assert_eq!(a["input"], json!({"n": 1}));
    let t = a["token"].as_str().expect("task token").to_owned();
    let id = a["taskRunId"].clone();
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/heartbeat",
            Some(&t),
            Some(json!({"taskRunId": id})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/progress",
            Some(&t),
            Some(json!({"taskRunId": id, "progress": 0.5, "message": "half"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let cb = json!({"taskRunId": id, "status": "succeeded", "output": {"x": 1}, "runNext": ["middle"], "logs": ["chose middle"]});
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/v1/callback/{run}"),
            Some(&t),
            Some(cb.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let failed = api.settled(&run, Duration::from_secs(10)).await;
    assert_eq!(failed["run"]["state"], "failed");
    let error = task(&failed, "pick")["error"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        error.contains("`middle`") && error.contains("allowed_next"),
        "{error}"
    );
    // A second callback for the same attempt is refused: it no longer holds the task.
    let (status, _) = api
        .call(
            "POST",
            &format!("/api/v1/callback/{run}"),
            Some(&t),
            Some(cb),
        )
        .await;
    assert_eq!(status, 409);

    // Choosing `right`: `left` is skipped, `right` and `after` run.
    let run = api.trigger("plain", json!({"input": {"n": 2}})).await;
    let a = poll_one(&api, &token).await;
    complete(
        &api,
        &run,
        &a,
        json!({"status": "succeeded", "output": {"went": "right"}, "runNext": ["right"]}),
    )
    .await;
    let a = poll_one(&api, &token).await;
    assert_eq!(a["task"], "right");
    assert_eq!(a["upstream"]["pick"], json!({"went": "right"}));
    complete(&api, &run, &a, json!({"status": "succeeded", "output": 2})).await;
    let a = poll_one(&api, &token).await;
    assert_eq!(a["task"], "after");
    complete(
        &api,
        &run,
        &a,
        json!({"status": "failed", "error": "bad input", "retryable": false}),
    )
    .await;
    let done = api.settled(&run, Duration::from_secs(10)).await;
    assert_eq!(task(&done, "left")["state"], "skipped");
    assert_eq!(task(&done, "right")["state"], "succeeded");
    assert_eq!(
        task(&done, "after")["state"],
        "dead",
        "a non-retryable error is not retried"
    );

    // A new code hash is a new code version, with history; the next run says what changed.
    let (_, reg) = api
        .call(
            "POST",
            "/api/v1/services/register",
            Some(&token),
            Some(register("h2")),
        )
        .await;
    assert_eq!(reg["tasks"][0]["codeVersion"], 2);
    assert_eq!(reg["tasks"][1]["changed"], false);
    let history = api.get("/api/v1/tasks/pick/history").await;
    let versions: Vec<(i64, &str)> = history
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| h["service"] == "plain")
        .map(|h| {
            (
                h["codeVersion"].as_i64().unwrap_or(0),
                h["codeHash"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(versions, [(1, "h1"), (2, "h2")]);
    assert!(
        history
            .as_array()
            .expect("history")
            .iter()
            .any(|h| h["pipeline"] == "plain"),
        "the pipeline's own definition of the task is listed too: {history:#}"
    );
    let run = api.trigger("plain", json!({"input": {"n": 3}})).await;
    let a = poll_one(&api, &token).await;
    assert_eq!(a["codeVersion"], 2);
    complete(
        &api,
        &run,
        &a,
        json!({"status": "succeeded", "output": 3, "runNext": []}),
    )
    .await;
    let done = api.settled(&run, Duration::from_secs(10)).await;
    assert_eq!(
        done["run"]["state"], "succeeded",
        "choosing nothing skips both branches"
    );
    assert_eq!(done["changedSincePreviousRun"], json!(["pick"]));

    let out = std::process::Command::new(support::orbit_bin())
        .args(["tasks", "history", "pick", "--url", &s.base])
        .output()
        .expect("orbit tasks history");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("h1") && text.contains("h2") && text.contains("plain"),
        "{text}"
    );
}

async fn poll_one(api: &Api, token: &str) -> Value {
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/worker/poll",
            Some(token),
            Some(json!({"workerId": "plain@test:1", "max": 1, "waitMs": 5000})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["tasks"][0].clone()
}

async fn complete(api: &Api, run: &str, a: &Value, mut result: Value) {
    result["taskRunId"] = a["taskRunId"].clone();
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/v1/callback/{run}"),
            a["token"].as_str(),
            Some(result),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_expired_tokens_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path(), "sqlite://orbit.db");
    let api = Api::new(&s);
    let good = service_token(KEY, "guarded", now() + 60);
    let reg = json!({"serviceId": "guarded", "workerId": "g@test:1", "tasks": [{"name": "guarded", "codeHash": "x"}]});
    let refused = [
        None,
        Some(service_token(
            "another-secret-key-0123456789",
            "guarded",
            now() + 60,
        )),
        Some(service_token(KEY, "guarded", now() - 120)),
        Some(service_token(KEY, "guarded", now() + 86_400)),
        Some(service_token(KEY, "someone-else", now() + 60)),
    ];
    for token in &refused {
        let (status, body) = api
            .call(
                "POST",
                "/api/v1/services/register",
                token.as_deref(),
                Some(reg.clone()),
            )
            .await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let (status, _) = api
        .call("GET", "/api/v1/services/guarded/tasks", None, None)
        .await;
    assert_eq!(status, 404, "no refused registration was recorded");

    let (status, _) = api
        .call("POST", "/api/v1/services/register", Some(&good), Some(reg))
        .await;
    assert_eq!(status, 200);
    let pipeline = json!({"name": "guarded", "tasks": [{"name": "guarded", "type": "worker"}, {"name": "other", "type": "worker", "task": "guarded"}]});
    assert_eq!(
        api.call("POST", "/api/v1/pipelines", None, Some(pipeline))
            .await
            .0,
        201
    );
    let run = api.trigger("guarded", json!({})).await;
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/worker/poll",
            Some(&good),
            Some(json!({"workerId": "g@test:1", "max": 2})),
        )
        .await;
    assert_eq!(status, 200);
    let tasks = body["tasks"].as_array().expect("tasks").clone();
    assert_eq!(tasks.len(), 2);
    let (mine, theirs) = (&tasks[0], &tasks[1]);
    let cb = |id: &Value| json!({"taskRunId": id, "status": "succeeded", "output": 1});
    // The other attempt's token, a token signed with another key, an expired task token.
    let mut forged = jwt_payload(theirs["token"].as_str().expect("token"));
    forged["exp"] = json!(now() - 120);
    let expired = jsonwebtoken::encode(
        &Header::default(),
        &forged,
        &EncodingKey::from_secret(KEY.as_bytes()),
    )
    .expect("sign");
    let wrong_key = jsonwebtoken::encode(
        &Header::default(),
        &forged,
        &EncodingKey::from_secret(b"another-secret-key-0123456789"),
    )
    .expect("sign");
    for (token, target) in [
        (theirs["token"].as_str().expect("token").to_owned(), mine),
        (expired, theirs),
        (wrong_key, theirs),
    ] {
        for (path, body) in [
            (format!("/api/v1/callback/{run}"), cb(&target["taskRunId"])),
            (
                "/api/v1/heartbeat".to_owned(),
                json!({"taskRunId": target["taskRunId"]}),
            ),
            (
                "/api/v1/progress".to_owned(),
                json!({"taskRunId": target["taskRunId"], "progress": 0.9}),
            ),
        ] {
            let (status, resp) = api.call("POST", &path, Some(&token), Some(body)).await;
            assert_eq!(status, 401, "{path}: {resp}");
        }
    }
    let detail = api.get(&format!("/api/v1/runs/{run}")).await;
    for t in detail["tasks"].as_array().expect("tasks") {
        assert_eq!(t["state"], "running", "a refused call changed {t:#}");
        assert!(
            t.get("progress").is_none() || t["progress"].is_null(),
            "{t:#}"
        );
    }
    let guarded = task(&detail, "guarded")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let attempts = api.get(&format!("/api/v1/task-runs/{guarded}")).await;
    assert_eq!(attempts["attempts"], json!([]), "no attempt was recorded");
}

/// The claims of a task token (the test knows the key).
fn jwt_payload(token: &str) -> Value {
    let mut v = jsonwebtoken::Validation::default();
    v.set_audience(&["orbit-task"]);
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(KEY.as_bytes()),
        &v,
    )
    .expect("a valid task token")
    .claims
}

/// Group commits keep every guarantee when the server dies mid-batch: a hand-rolled worker
/// keeps 48 callbacks in flight while the server is killed with SIGKILL. Every callback that
/// was answered 200 is in the database; nothing is half-written; after a restart on the same
/// database the run finishes with each task succeeded by exactly one attempt, and a callback
/// with a stale lease epoch is refused with 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_acknowledged_before_a_server_kill_are_all_kept() {
    const TASKS: usize = 1500;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let env = [("ORBIT_SECRET_KEY", KEY)];
    let s = server(dir.path(), &db, &["--workers", "0"], &env);
    let api = Api::new(&s);
    let token = service_token(KEY, "crashy", now() + 600);
    let register = json!({"serviceId": "crashy", "workerId": "crashy@test:1", "concurrency": 64,
        "tasks": [{"name": "noop", "codeHash": "n1"}]});
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/services/register",
            Some(&token),
            Some(register.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let tasks: Vec<Value> = (0..TASKS)
        .map(|i| json!({"name": format!("t{i:05}"), "type": "worker", "task": "noop", "heartbeat_interval": "1s"}))
        .collect();
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/pipelines",
            None,
            Some(json!({"name": "crashy", "tasks": tasks})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let run = api.trigger("crashy", json!({"input": {}})).await;

    // Poll and call back concurrently; remember each task handed out and each acknowledged.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let handed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let stop = CancellationToken::new();
    let worker = {
        let (base, token, acked, handed, stop, run) = (
            s.base.clone(),
            token.clone(),
            acked.clone(),
            handed.clone(),
            stop.clone(),
            run.clone(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let inflight = std::sync::Arc::new(tokio::sync::Semaphore::new(48));
            while !stop.is_cancelled() {
                let Ok(resp) = http
                    .post(format!("{base}/api/v1/worker/poll"))
                    .bearer_auth(&token)
                    .json(&json!({"workerId": "crashy@test:1", "max": 16, "waitMs": 1000}))
                    .send()
                    .await
                else {
                    break;
                };
                let Ok(body) = resp.json::<Value>().await else {
                    break;
                };
                for a in body["tasks"].as_array().cloned().unwrap_or_default() {
                    handed.lock().expect("handed").push(a.clone());
                    let permit = inflight.clone().acquire_owned().await.expect("permit");
                    let (http, base, acked, run) =
                        (http.clone(), base.clone(), acked.clone(), run.clone());
                    tokio::spawn(async move {
                        let sent = http
                            .post(format!("{base}/api/v1/callback/{run}"))
                            .bearer_auth(a["token"].as_str().unwrap_or_default())
                            .json(&json!({"taskRunId": a["taskRunId"], "status": "succeeded", "output": {"ok": true}}))
                            .send()
                            .await;
                        if sent.is_ok_and(|r| r.status() == 200) {
                            acked
                                .lock()
                                .expect("acked")
                                .push(a["taskRunId"].as_str().unwrap_or_default().to_owned());
                        }
                        drop(permit);
                    });
                }
            }
        })
    };
    // Kill the server in the middle of the drain, callbacks in flight.
    let end = Instant::now() + Duration::from_secs(30);
    while acked.lock().expect("acked").len() < TASKS / 3 {
        assert!(Instant::now() < end, "the drain did not get going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    s.proc.signal("KILL");
    stop.cancel();
    let _ = worker.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked: Vec<String> = acked.lock().expect("acked").clone();
    drop(s);

    // Every acknowledged callback is in the database, as a succeeded task run with its attempt.
    let store = orbit_store_sqlite::SqliteStore::open(
        &dir.path().join("orbit.db").display().to_string(),
        orbit_store_sqlite::Durability::Full,
    )
    .await
    .expect("open the database");
    let run_id: uuid::Uuid = run.parse().expect("run id");
    let task_runs = store.task_runs(run_id).await.expect("task runs");
    let succeeded: std::collections::HashSet<String> = task_runs
        .iter()
        .filter(|t| t.state == orbit_core::TaskState::Succeeded)
        .map(|t| t.id.to_string())
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !succeeded.contains(*id)).collect();
    assert!(lost.is_empty(), "acknowledged but not kept: {lost:?}");
    let attempts = store.attempts(run_id, None).await.expect("attempts");
    assert_eq!(
        attempts.len(),
        succeeded.len(),
        "an attempt for each succeeded task run and nothing else"
    );
    println!(
        "server killed with {} of {TASKS} callbacks acknowledged; {} kept",
        acked.len(),
        succeeded.len()
    );
    drop(store);

    // Restart on the same database: leases of the attempts in flight expire, and the run ends.
    let s = server(dir.path(), &db, &["--workers", "0"], &env);
    let api = Api::new(&s);
    let (status, _) = api
        .call(
            "POST",
            "/api/v1/services/register",
            Some(&token),
            Some(register),
        )
        .await;
    assert_eq!(status, 200);
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = api
            .call(
                "POST",
                "/api/v1/worker/poll",
                Some(&token),
                Some(json!({"workerId": "crashy@test:2", "max": 64, "waitMs": 500})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        for a in body["tasks"].as_array().cloned().unwrap_or_default() {
            complete(
                &api,
                &run,
                &a,
                json!({"status": "succeeded", "output": {"ok": true}}),
            )
            .await;
        }
        let state = api.get(&format!("/api/v1/runs/{run}")).await["run"]["state"].clone();
        if state == "succeeded" {
            break;
        }
        assert!(
            Instant::now() < end,
            "run did not finish after the restart: {state}"
        );
    }
    let detail = api.get(&format!("/api/v1/runs/{run}")).await;
    assert_eq!(detail["run"]["tasksDead"], 0);
    // The attempts that were in flight at the kill lost their leases, and acknowledged ones are
    // done: a late or repeated callback for either is refused and changes nothing.
    let handed: Vec<Value> = handed.lock().expect("handed").clone();
    let (in_flight, done): (Vec<&Value>, Vec<&Value>) = handed
        .iter()
        .partition(|a| !acked.iter().any(|id| a["taskRunId"] == id.as_str()));
    let late: Vec<&Value> = in_flight
        .into_iter()
        .take(20)
        .chain(done.into_iter().take(5))
        .collect();
    for a in late {
        let (status, body) = api
            .call(
                "POST",
                &format!("/api/v1/callback/{run}"),
                a["token"].as_str(),
                Some(json!({"taskRunId": a["taskRunId"], "status": "failed", "error": "late"})),
            )
            .await;
        assert_eq!(status, 409, "a stale callback is refused: {body}");
    }
    let store = orbit_store_sqlite::SqliteStore::open(
        &dir.path().join("orbit.db").display().to_string(),
        orbit_store_sqlite::Durability::Full,
    )
    .await
    .expect("open the database");
    let attempts = store.attempts(run_id, None).await.expect("attempts");
    let mut by_task: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for a in attempts.iter().filter(|a| a.outcome == "succeeded") {
        *by_task.entry(a.task_name.as_str()).or_default() += 1;
    }
    assert_eq!(by_task.len(), TASKS, "every task succeeded");
    assert!(by_task.values().all(|n| *n == 1), "no task succeeded twice");
}

/// The Rust SDK's API client against a real server: trigger (idempotent), follow, list,
/// cancel, retry, and a refused request's status.
#[tokio::test]
async fn the_api_client_triggers_follows_cancels_and_retries_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let s = start(dir.path(), &db);
    let api = Api::new(&s);
    let pipeline = "name: nap\ntasks:\n  - {name: quick, type: sleep, duration: 10ms}\n  - {name: long, type: shell, command: [sleep, '60'], needs: quick}\n";
    save_yaml(&api, pipeline).await;
    let client = orbit_sdk::Client::new(&s.base);
    let run = client
        .trigger("nap", json!({"day": 1}), Some("nap-1"))
        .await
        .expect("trigger");
    assert_eq!(run.pipeline_name, "nap");
    assert_eq!(run.input, json!({"day": 1}));
    let again = client
        .trigger("nap", json!({"day": 1}), Some("nap-1"))
        .await
        .expect("trigger again");
    assert_eq!(
        again.id, run.id,
        "the idempotency key returned the same run"
    );
    // Follow it until `quick` is done and `long` runs, then cancel it.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let detail = client.get_run(&run.id).await.expect("get_run");
        if detail.task("long").is_some_and(|t| t.state == "running") {
            assert_eq!(detail.task("quick").expect("quick").state, "succeeded");
            break;
        }
        assert!(Instant::now() < end, "long never started: {detail:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled = client.cancel(&run.id).await.expect("cancel");
    assert_eq!(cancelled.state, "cancelled");
    let settled = client
        .wait_for_run(&run.id, Duration::from_secs(10), Duration::from_millis(50))
        .await
        .expect("wait");
    assert!(settled.run.is_settled());
    let listed = client
        .list_runs(&orbit_sdk::RunFilter {
            pipeline: Some("nap".into()),
            limit: Some(5),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(listed[0].id, run.id);
    assert_eq!(client.retry(&run.id).await.expect("retry"), ["long"]);
    client.cancel(&run.id).await.expect("cancel again");
    // Named limits of concurrency keys (a key that needs escaping in a path).
    let set = client.set_limit("api/eu west", 4).await.expect("set_limit");
    assert_eq!((set.key.as_str(), set.limit), ("api/eu west", Some(4)));
    let all = client.limits().await.expect("limits");
    assert_eq!(all, [set]);
    client
        .delete_limit("api/eu west")
        .await
        .expect("delete_limit");
    assert!(client.limits().await.expect("limits").is_empty());
    assert!(
        client.delete_limit("api/eu west").await.is_err(),
        "already gone"
    );
    let refused = client
        .trigger("no-such-pipeline", json!({}), None)
        .await
        .expect_err("unknown pipeline");
    assert!(
        matches!(refused, orbit_sdk::SdkError::Refused { status: 404, .. }),
        "{refused}"
    );
}

/// An in-process Rust SDK worker of service `service` for server `s`.
fn rust_worker(s: &Server, service: &str) -> orbit_sdk::Worker {
    orbit_sdk::Worker::builder()
        .orchestrator_url(&s.base)
        .service_id(service)
        .secret_key(KEY)
        .build()
        .expect("worker")
}

async fn save_yaml(api: &Api, yaml: &str) {
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/pipelines",
            None,
            Some(json!({"yaml": yaml})),
        )
        .await;
    assert!(status == 200 || status == 201, "{body}");
}

/// The Rust SDK's `TaskError::retry_after`: the attempt comes back after the wait it asked for
/// and costs no retry (the task has none).
#[tokio::test]
async fn retry_after_from_a_rust_handler_waits_without_spending_a_retry() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let s = start(dir.path(), &db);
    let api = Api::new(&s);
    let mut worker = rust_worker(&s, "quota");
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    worker.register("quota", move |_ctx: orbit_sdk::Context| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                Err(orbit_sdk::TaskError::retry_after(
                    Duration::from_millis(300),
                    "quota exceeded",
                ))
            } else {
                Ok(json!("done"))
            }
        }
    });
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let pipeline =
        "name: quota\ntasks:\n  - {name: quota, type: worker, retry: {max_attempts: 1}}\n";
    save_yaml(&api, pipeline).await;
    let started = Instant::now();
    let run = api.trigger("quota", json!({})).await;
    let done = api.settled(&run, Duration::from_secs(30)).await;
    stop.cancel();
    let _ = running.await;
    assert_eq!(task(&done, "quota")["state"], "succeeded", "{done:#}");
    assert!(started.elapsed() >= Duration::from_millis(600));
    let id = task(&done, "quota")["id"].as_str().expect("id").to_owned();
    let tr = api.get(&format!("/api/v1/task-runs/{id}")).await;
    let outcomes: Vec<&str> = tr["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(outcomes, ["throttled", "throttled", "succeeded"]);
}

/// A Rust handler mapped over a list (`for_each` on a worker task): each child gets its
/// element as input; the gathered list holds their outputs in order.
#[tokio::test]
async fn a_rust_handler_mapped_over_a_list_gets_one_element_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let s = start(dir.path(), &db);
    let api = Api::new(&s);
    let mut worker = rust_worker(&s, "mapper");
    worker.register("double", |ctx: orbit_sdk::Context| async move {
        let n = ctx
            .input
            .as_i64()
            .ok_or(orbit_sdk::TaskError::fatal("not a number"))?;
        Ok::<_, orbit_sdk::TaskError>(json!(n * 2))
    });
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let pipeline = "name: mapped\ntasks:\n  - {name: double, type: worker, for_each: \"{{ input.numbers }}\"}\n";
    save_yaml(&api, pipeline).await;
    let numbers: Vec<i64> = (0..25).collect();
    let run = api.trigger("mapped", json!({"numbers": numbers})).await;
    let done = api.settled(&run, Duration::from_secs(30)).await;
    stop.cancel();
    let _ = running.await;
    assert_eq!(done["run"]["state"], "succeeded", "{done:#}");
    let doubled: Vec<i64> = numbers.iter().map(|n| n * 2).collect();
    assert_eq!(task(&done, "double")["output"], json!(doubled));
}

/// The Rust SDK's side of waits: a handler's `ctx.send_signal` wakes a `wait` of another run;
/// the client explains it, approves the approval that follows (refused to a stranger), draws
/// the timeline and re-runs the run from its last task.
#[tokio::test]
async fn a_rust_handler_signals_and_the_client_approves_and_reruns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let s = start(dir.path(), &db);
    let api = Api::new(&s);
    let mut worker = rust_worker(&s, "notifier");
    worker.register("notify", |ctx: orbit_sdk::Context| async move {
        let id = ctx.input["id"].as_str().unwrap_or_default().to_owned();
        let mut sent = ctx
            .send_signal(&format!("paid.{id}"), json!({"amount": 4}), Some("10m"))
            .await?;
        sent["traceparent"] = json!(ctx.traceparent);
        sent["runId"] = json!(ctx.run_id.simple().to_string());
        Ok(sent)
    });
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    save_yaml(
        &api,
        "name: gate\ntasks:\n  - {name: pay, type: wait, event: \"paid.{{ input.id }}\"}\n  - {name: review, type: approval, approvers: [ann], needs: pay}\n  - {name: ship, type: shell, command: \"echo {{ tasks.pay.output.amount }}\", needs: [pay, review]}\n",
    )
    .await;
    save_yaml(
        &api,
        "name: notify\ntasks:\n  - {name: notify, type: worker}\n",
    )
    .await;
    let client = orbit_sdk::Client::new(&s.base);
    let gate = client
        .trigger("gate", json!({"id": "r-1"}), None)
        .await
        .expect("trigger");
    let end = Instant::now() + Duration::from_secs(20);
    while client
        .get_run(&gate.id)
        .await
        .expect("run")
        .task("pay")
        .map(|t| t.state.as_str())
        != Some("parked")
    {
        assert!(Instant::now() < end, "pay never parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let why = client.why(&gate.id, Some("pay")).await.expect("why");
    assert!(
        why[0].reason.contains("waiting for signal `paid.r-1`"),
        "{why:?}"
    );
    let sender = client
        .trigger("notify", json!({"id": "r-1"}), None)
        .await
        .expect("trigger");
    let sent = client
        .wait_for_run(
            &sender.id,
            Duration::from_secs(20),
            Duration::from_millis(50),
        )
        .await
        .expect("notify");
    let out = &sent.task("notify").expect("notify").output;
    assert_eq!(out["delivered"][0]["task"], "pay", "{out}");
    assert_eq!(out["kept"], false);
    let tp = out["traceparent"].as_str().expect("a traceparent");
    assert!(
        tp.starts_with(&format!(
            "00-{}-",
            out["runId"].as_str().unwrap_or_default()
        )),
        "{tp}"
    );
    while client
        .get_run(&gate.id)
        .await
        .expect("run")
        .task("review")
        .map(|t| t.state.as_str())
        != Some("parked")
    {
        assert!(Instant::now() < end, "review never parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = client
        .decide(&gate.id, "review", true, Some("bob"), None)
        .await
        .expect_err("bob is no approver");
    assert!(
        matches!(refused, orbit_sdk::SdkError::Refused { status: 403, .. }),
        "{refused}"
    );
    let decided = client
        .decide(&gate.id, "review", true, Some("ann"), Some("go"))
        .await
        .expect("approve");
    assert_eq!(decided.extra["wake"]["decidedBy"], "ann");
    let done = client
        .wait_for_run(&gate.id, Duration::from_secs(20), Duration::from_millis(50))
        .await
        .expect("done");
    assert_eq!(done.run.state, "succeeded");
    assert_eq!(done.task("ship").expect("ship").output, json!("4"));
    let timeline = client.timeline(&gate.id).await.expect("timeline");
    assert_eq!(timeline["lanes"].as_array().map(Vec::len), Some(3));
    let again = client
        .rerun(&gate.id, "ship", None, None)
        .await
        .expect("rerun");
    assert_eq!(again.extra["rerunOf"], gate.id.as_str());
    let redone = client
        .wait_for_run(
            &again.id,
            Duration::from_secs(20),
            Duration::from_millis(50),
        )
        .await
        .expect("redone");
    assert_eq!(redone.task("ship").expect("ship").output, json!("4"));
    let kept = client
        .signal("nobody.waits", json!(null), None)
        .await
        .expect("signal");
    assert!(kept.kept && kept.delivered.is_empty());
    stop.cancel();
    let _ = running.await;
}
