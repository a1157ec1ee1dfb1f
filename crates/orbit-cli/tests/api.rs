//! The HTTP API of a real `orbit server` process, over real HTTP, on SQLite and PostgreSQL.

mod support;

use orbit_store_postgres::testing::TestDb;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use support::{Server, eventually, server};

struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    fn new(s: &Server) -> Api {
        Api {
            base: s.base.clone(),
            http: reqwest::Client::new(),
            token: None,
        }
    }

    async fn raw(&self, method: Method, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.raw(method, path, body.map(|b| b.to_string()).as_deref())
            .await
    }

    async fn get(&self, path: &str) -> Value {
        let (status, v) = self.call(Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    async fn wait_run(&self, id: &str, state: &str) -> Value {
        let end = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let d = self.get(&format!("/api/v1/runs/{id}")).await;
            if d["run"]["state"] == state {
                return d;
            }
            assert!(
                std::time::Instant::now() < end,
                "run {id} never became {state}: {d}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const HELLO: &str = "name: hello\ndescription: says hi\ntasks:\n  - name: greet\n    type: shell\n    command: [sh, -c, 'echo hi $0', '{{ input.who }}']\n  - name: rest\n    type: sleep\n    duration: 10ms\n    needs: [greet]\n";

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("orbit.db").display())
}

async fn every_route(api: &Api) {
    let (status, health) = api.call(Method::GET, "/api/v1/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");

    // pipelines: create, unchanged, list, get, update, dry-run
    let (status, created) = api
        .call(
            Method::POST,
            "/api/v1/pipelines",
            Some(json!({"yaml": HELLO})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["version"], 1);
    let (status, again) = api
        .call(
            Method::POST,
            "/api/v1/pipelines",
            Some(json!({"yaml": HELLO})),
        )
        .await;
    assert_eq!(
        (status, &again["version"]),
        (200, &json!(1)),
        "same content, same version"
    );
    assert_eq!(
        api.get("/api/v1/pipelines").await.as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        api.get("/api/v1/pipelines/hello").await["description"],
        "says hi"
    );
    let doc = json!({"name": "hello", "description": "says hi twice", "tasks": [
        {"name": "greet", "type": "shell", "command": ["sh", "-c", "echo hi $0; echo hi $0", "{{ input.who }}"]},
        {"name": "rest", "type": "sleep", "duration": "10ms", "needs": ["greet"]}]});
    let (status, updated) = api
        .call(Method::PUT, "/api/v1/pipelines/hello", Some(doc))
        .await;
    assert_eq!((status, &updated["version"]), (200, &json!(2)), "{updated}");
    let (status, plan) = api
        .call(Method::POST, "/api/v1/pipelines/hello/dry-run", None)
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["layers"], json!([["greet"], ["rest"]]));
    let runs_before = api.get("/api/v1/runs").await["runs"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(runs_before, 0, "a dry run executes nothing");

    // trigger, idempotency, runs, task runs
    let body = json!({"input": {"who": "ada"}, "idempotencyKey": "k-1", "priority": 5});
    let (status, t) = api
        .call(
            Method::POST,
            "/api/v1/pipelines/hello/trigger",
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    let run_id = t["run"]["id"].as_str().expect("run id").to_owned();
    let (status, t2) = api
        .call(Method::POST, "/api/v1/pipelines/hello/trigger", Some(body))
        .await;
    assert_eq!(
        (status, t2["run"]["id"].as_str()),
        (200, Some(run_id.as_str())),
        "same key, same run"
    );
    let detail = api.wait_run(&run_id, "succeeded").await;
    assert_eq!(detail["tasks"].as_array().map(Vec::len), Some(2));
    let listed = api
        .get("/api/v1/runs?status=succeeded&pipeline=hello&limit=10")
        .await;
    assert_eq!(listed["runs"][0]["id"], run_id.as_str());
    let greet = detail["tasks"][0]["id"].as_str().expect("task run id");
    let tr = api.get(&format!("/api/v1/task-runs/{greet}")).await;
    assert_eq!(tr["attempts"][0]["outcome"], "succeeded");
    assert!(
        tr["attempts"][0]["log"]
            .as_str()
            .unwrap_or_default()
            .contains("hi ada"),
        "{tr}"
    );

    // standalone tasks
    let (status, q) = api
        .call(Method::POST, "/api/v1/queue/task", Some(json!({"taskId": "one", "task": {"type": "sleep", "duration": "5ms"}, "priority": 3})))
        .await;
    assert_eq!(status, 201, "{q}");
    let (status, b) = api
        .call(Method::POST, "/api/v1/queue/batch", Some(json!({"tasks": [
            {"taskId": "two", "task": {"type": "sleep", "duration": "5ms"}},
            {"taskId": "three", "task": {"type": "shell", "command": ["true"]}, "input": {"n": 3}}]})))
        .await;
    assert_eq!((status, b.as_array().map(Vec::len)), (201, Some(2)), "{b}");
    api.wait_run(q["run"]["id"].as_str().unwrap_or_default(), "succeeded")
        .await;

    // a failing run: DLQ, retry of the entry and of the run
    let fail = json!({"name": "flaky", "tasks": [{"name": "boom", "type": "shell", "command": ["false"], "retry": {"max_attempts": 1}}]});
    assert_eq!(
        api.call(Method::POST, "/api/v1/pipelines", Some(fail))
            .await
            .0,
        201
    );
    let (_, f) = api
        .call(
            Method::POST,
            "/api/v1/pipelines/flaky/trigger",
            Some(json!({})),
        )
        .await;
    let failed_id = f["run"]["id"].as_str().expect("id").to_owned();
    api.wait_run(&failed_id, "failed").await;
    let dlq = api.get("/api/v1/dlq").await;
    assert_eq!(dlq[0]["taskName"], "boom", "{dlq}");
    let entry = dlq[0]["id"].as_str().expect("entry id");
    let (status, requeued) = api
        .call(Method::POST, &format!("/api/v1/dlq/{entry}/retry"), None)
        .await;
    assert_eq!(
        (status, &requeued["tasks"]),
        (200, &json!(["boom"])),
        "{requeued}"
    );
    api.wait_run(&failed_id, "failed").await;
    let (status, retried) = api
        .call(
            Method::POST,
            &format!("/api/v1/runs/{failed_id}/retry"),
            None,
        )
        .await;
    assert_eq!(
        (status, &retried["requeued"]),
        (200, &json!(["boom"])),
        "{retried}"
    );
    api.wait_run(&failed_id, "failed").await;
    let attempts = api.get(&format!("/api/v1/task-runs/{}", entry)).await["attempts"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(attempts, 3, "each retry ran the task once more");

    // cancel a long run
    let slow =
        json!({"name": "slow", "tasks": [{"name": "wait", "type": "sleep", "duration": "30s"}]});
    api.call(Method::POST, "/api/v1/pipelines", Some(slow))
        .await;
    let (_, s) = api
        .call(Method::POST, "/api/v1/pipelines/slow/trigger", None)
        .await;
    let slow_id = s["run"]["id"].as_str().expect("id").to_owned();
    let (status, c) = api
        .call(
            Method::POST,
            &format!("/api/v1/runs/{slow_id}/cancel"),
            None,
        )
        .await;
    assert_eq!((status, &c["state"]), (200, &json!("cancelled")), "{c}");
    let (status, again) = api
        .call(
            Method::POST,
            &format!("/api/v1/runs/{slow_id}/cancel"),
            None,
        )
        .await;
    assert_eq!((status, &again["error"]["code"]), (409, &json!("conflict")));

    // queue figures, history, workers
    let qs = api.get("/api/v1/queue/status").await;
    for key in [
        "pending",
        "running",
        "waiting",
        "completed",
        "failed",
        "dlq",
        "oldestPending",
    ] {
        assert!(qs.get(key).is_some(), "queue status has {key}: {qs}");
    }
    assert!(qs["completed"].as_i64().unwrap_or(0) >= 5, "{qs}");
    let dead = api.get("/api/v1/queue/items?state=dead").await;
    assert_eq!(dead[0]["taskName"], "boom");
    let history = api.get("/api/v1/tasks/greet/history?pipeline=hello").await;
    assert_eq!(
        history.as_array().map(Vec::len),
        Some(2),
        "greet changed once: {history}"
    );
    assert_eq!(history[1]["codeVersion"], 2);
    let services = api.get("/api/v1/services").await;
    assert_eq!(services[0]["kind"], "server");
    assert_eq!(services[0]["status"], "healthy");
    let stats = api.get("/api/v1/workers/stats").await;
    assert!(
        stats["lastHour"]["attempts"].as_u64().unwrap_or(0) >= 6,
        "{stats}"
    );
    assert_eq!(api.get("/api/v1/workers/health").await["status"], "ok");
    let m = api.get("/api/v1/workers/metrics").await;
    assert!(
        m["lastHour"]["successRate"].as_f64().unwrap_or(0.0) > 0.5,
        "{m}"
    );
    let (status, prom) = api.raw(Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        prom.as_str()
            .unwrap_or_default()
            .contains("orbit_task_runs{state=\"completed\"}"),
        "{prom}"
    );

    // the OpenAPI document lists every route; the docs page is served
    let spec = api.get("/api/v1/openapi.json").await;
    // Client generators (the TypeScript SDK's types) need every operation id unique.
    let mut ids: Vec<&str> = spec["paths"]
        .as_object()
        .expect("paths")
        .values()
        .flat_map(|item| item.as_object().into_iter().flat_map(|m| m.values()))
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "operation ids repeat: {ids:?}");
    assert!(ids.contains(&"runs_get"), "{ids:?}");
    for path in [
        "/api/v1/health",
        "/api/v1/services",
        "/api/v1/pipelines",
        "/api/v1/pipelines/{name}",
        "/api/v1/pipelines/{name}/trigger",
        "/api/v1/pipelines/{name}/dry-run",
        "/api/v1/runs",
        "/api/v1/runs/{id}",
        "/api/v1/runs/{id}/retry",
        "/api/v1/runs/{id}/cancel",
        "/api/v1/task-runs/{id}",
        "/api/v1/queue/task",
        "/api/v1/queue/batch",
        "/api/v1/queue/status",
        "/api/v1/queue/items",
        "/api/v1/dlq",
        "/api/v1/dlq/{id}/retry",
        "/api/v1/tasks/{id}/history",
        "/api/v1/workers/stats",
        "/api/v1/workers/health",
        "/api/v1/workers/metrics",
        "/api/v1/process",
    ] {
        assert!(spec["paths"].get(path).is_some(), "OpenAPI lists {path}");
    }
    // ... with the real shapes, in the casing the API answers in
    let run = &spec["components"]["schemas"]["RunRecord"]["properties"];
    for field in ["pipelineName", "triggeredBy", "tasksPending", "state"] {
        assert!(
            run.get(field).is_some(),
            "RunRecord schema has {field}: {run}"
        );
    }
    let status_200 = &spec["paths"]["/api/v1/queue/status"]["get"]["responses"]["200"];
    assert!(
        status_200
            .to_string()
            .contains("#/components/schemas/QueueStats"),
        "{status_200}"
    );
    let poll = &spec["paths"]["/api/v1/worker/poll"]["post"];
    assert!(
        poll.to_string().contains("PollRequest") && poll.to_string().contains("PollResponse"),
        "{poll}"
    );
    let (status, page) = api.raw(Method::GET, "/docs/", None).await;
    assert_eq!(status, 200);
    assert!(
        page.as_str().unwrap_or_default().contains("swagger"),
        "docs page"
    );

    // delete
    let (status, _) = api
        .call(Method::DELETE, "/api/v1/pipelines/slow", None)
        .await;
    assert_eq!(status, 204);
    let (status, gone) = api
        .call(Method::POST, "/api/v1/pipelines/slow/trigger", None)
        .await;
    assert_eq!((status, &gone["error"]["code"]), (404, &json!("not_found")));

    // named limits of concurrency keys, over the API and `orbit limits --url`
    let (status, set) = api
        .call(
            Method::PUT,
            "/api/v1/limits/openai",
            Some(json!({"limit": 3})),
        )
        .await;
    assert_eq!(
        (status, set),
        (
            200,
            json!({"key": "openai", "running": 0, "runsRunning": 0, "limit": 3})
        )
    );
    for bad in [
        json!({"limit": 0}),
        json!({"limit": "x"}),
        json!({"max": 2}),
    ] {
        let (status, body) = api
            .call(Method::PUT, "/api/v1/limits/openai", Some(bad.clone()))
            .await;
        assert!(
            (400..500).contains(&status) && body["error"]["message"].is_string(),
            "{bad}: {status} {body}"
        );
    }
    let out = std::process::Command::new(support::orbit_bin())
        .args(["limits", "set", "anthropic", "2", "--url", &api.base])
        .env("ORBIT_API_TOKEN", api.token.clone().unwrap_or_default())
        .output()
        .expect("orbit limits set");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        api.get("/api/v1/limits").await,
        json!([
            {"key": "anthropic", "running": 0, "runsRunning": 0, "limit": 2},
            {"key": "openai", "running": 0, "runsRunning": 0, "limit": 3}
        ])
    );
    let (status, _) = api
        .call(Method::DELETE, "/api/v1/limits/openai", None)
        .await;
    assert_eq!(status, 204);
    let (status, gone) = api
        .call(Method::DELETE, "/api/v1/limits/openai", None)
        .await;
    assert_eq!((status, &gone["error"]["code"]), (404, &json!("not_found")));
}

#[tokio::test]
async fn every_route_works_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = server(dir.path(), &sqlite_url(&dir), &[], &[]);
    every_route(&Api::new(&s)).await;
}

#[tokio::test]
async fn every_route_works_on_postgres() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let s = server(dir.path(), &db.url, &["--workers", "8"], &[]);
    every_route(&Api::new(&s)).await;
}

#[tokio::test]
async fn a_token_guards_every_call_and_is_never_echoed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "s3cr3t-token-value-0123456789";
    let s = server(
        dir.path(),
        &sqlite_url(&dir),
        &["--public-health", "--bind", "0.0.0.0:0"],
        &[("ORBIT_API_TOKEN", token)],
    );
    let mut api = Api::new(&s);
    let (status, v) = api.call(Method::GET, "/api/v1/runs", None).await;
    assert_eq!((status, &v["error"]["code"]), (401, &json!("unauthorized")));
    api.token = Some("wrong".into());
    assert_eq!(api.call(Method::GET, "/api/v1/runs", None).await.0, 401);
    assert_eq!(
        api.call(
            Method::POST,
            "/api/v1/pipelines",
            Some(json!({"yaml": HELLO}))
        )
        .await
        .0,
        401
    );
    api.token = None;
    assert_eq!(
        api.call(Method::GET, "/api/v1/health", None).await.0,
        200,
        "--public-health leaves health open"
    );
    assert_eq!(api.raw(Method::GET, "/metrics", None).await.0, 200);
    api.token = Some(token.into());
    assert_eq!(
        api.call(
            Method::POST,
            "/api/v1/pipelines",
            Some(json!({"yaml": HELLO}))
        )
        .await
        .0,
        201
    );
    let (_, t) = api
        .call(
            Method::POST,
            "/api/v1/pipelines/hello/trigger",
            Some(json!({"input": {"who": "x"}})),
        )
        .await;
    let run = api
        .wait_run(t["run"]["id"].as_str().unwrap_or_default(), "succeeded")
        .await;
    let mut seen = run.to_string();
    for path in [
        "/api/v1/health",
        "/api/v1/services",
        "/api/v1/workers/stats",
        "/api/v1/openapi.json",
    ] {
        seen.push_str(&api.get(path).await.to_string());
    }
    seen.push_str(&std::fs::read_to_string(&s.stderr).unwrap_or_default());
    assert!(
        !seen.contains(token),
        "the token never appears in a response or a log"
    );
}

#[tokio::test]
async fn without_a_token_the_server_refuses_to_listen_beyond_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(support::orbit_bin())
        .current_dir(dir.path())
        .env_remove("ORBIT_API_TOKEN")
        .env("ORBIT_DATABASE_URL", sqlite_url(&dir))
        .args(["server", "--bind", "0.0.0.0:0"])
        .output()
        .expect("orbit server");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ORBIT_API_TOKEN is not set") && err.contains("127.0.0.1"),
        "{err}"
    );
    // With a token it listens where it is told.
    let s = server(
        dir.path(),
        &sqlite_url(&dir),
        &["--bind", "0.0.0.0:0"],
        &[("ORBIT_API_TOKEN", "tok-0123456789abcdef")],
    );
    assert!(s.base.starts_with("http://0.0.0.0:"), "{}", s.base);
}

#[tokio::test]
async fn serverless_mode_works_only_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = server(
        dir.path(),
        &sqlite_url(&dir),
        &[],
        &[("MODE", "serverless")],
    );
    let api = Api::new(&s);
    api.call(
        Method::POST,
        "/api/v1/pipelines",
        Some(json!({"yaml": HELLO})),
    )
    .await;
    let (_, t) = api
        .call(
            Method::POST,
            "/api/v1/pipelines/hello/trigger",
            Some(json!({"input": {"who": "s"}})),
        )
        .await;
    let id = t["run"]["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        api.get(&format!("/api/v1/runs/{id}")).await["run"]["state"],
        "pending",
        "no poller in serverless mode"
    );
    let (status, done) = api.call(Method::POST, "/api/v1/process", None).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        done["succeeded"], 2,
        "one call runs the task and what it made ready: {done}"
    );
    assert_eq!(done["runsSettled"], 1);
    api.wait_run(&id, "succeeded").await;
    let (_, idle) = api.call(Method::POST, "/api/v1/process", None).await;
    assert_eq!(idle["claimed"], 0, "{idle}");
}

#[tokio::test]
async fn cron_fires_each_instant_once_across_two_servers() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let a = server(dir.path(), &db.url, &["--workers", "4"], &[]);
    let b = server(dir.path(), &db.url, &["--workers", "4"], &[]);
    let api = Api::new(&a);
    let doc = json!({"name": "tick", "schedule": "* * * * * *", "tasks": [{"name": "t", "type": "sleep", "duration": "1ms"}]});
    assert_eq!(
        api.call(Method::POST, "/api/v1/pipelines", Some(doc))
            .await
            .0,
        201
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    api.call(Method::DELETE, "/api/v1/pipelines/tick", None)
        .await;
    let runs = api.get("/api/v1/runs?pipeline=tick&limit=100").await["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut fires: Vec<String> = runs
        .iter()
        .map(|r| r["input"]["scheduledAt"].to_string())
        .collect();
    let n = fires.len();
    fires.sort();
    fires.dedup();
    assert_eq!(fires.len(), n, "no fire time ran twice: {runs:?}");
    assert!(
        (3..=6).contains(&n),
        "about one run per second for 4 s, got {n}"
    );
    drop(b);
}

/// Cancel a running task on a server, retry at once: the cancelled attempt stops (its process
/// group too), is recorded `cancelled`, and the retry runs at once to success, with no lease
/// left to expire.
async fn cancel_then_retry(database: &str, dir: &tempfile::TempDir, extra: &[&str]) {
    let s = server(dir.path(), database, extra, &[]);
    let api = Api::new(&s);
    let yaml = "name: slow\ntasks:\n  - name: s\n    type: shell\n    heartbeat_interval: 1s\n    command: [sleep, '4']\n";
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/pipelines",
            Some(json!({"yaml": yaml})),
        )
        .await;
    assert_eq!(status, 201);
    let (_, t) = api
        .call(Method::POST, "/api/v1/pipelines/slow/trigger", None)
        .await;
    let run = t["run"]["id"].as_str().expect("run id").to_owned();
    let detail = format!("/api/v1/runs/{run}");
    eventually(Duration::from_secs(15), "the task to run", || {
        futures::executor::block_on(api.get(&detail))["tasks"][0]["state"]
            .as_str()
            .is_some_and(|s| s == "running")
            .then_some(())
    });
    let (status, body) = api
        .call(Method::POST, &format!("/api/v1/runs/{run}/cancel"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let retried_at = std::time::Instant::now();
    let (status, body) = api
        .call(Method::POST, &format!("/api/v1/runs/{run}/retry"), None)
        .await;
    assert!(status < 300, "{body}");
    let started = eventually(
        Duration::from_secs(10),
        "the retried attempt to start",
        || {
            let d = futures::executor::block_on(api.get(&detail));
            let t = &d["tasks"][0];
            (t["state"] == "running" && t["attempt"] == 2).then(|| retried_at.elapsed())
        },
    );
    assert!(
        started < Duration::from_secs(2),
        "the retry started {started:?} after it was asked"
    );
    let done = api.wait_run(&run, "succeeded").await;
    let task_run = done["tasks"][0]["id"]
        .as_str()
        .expect("task run")
        .to_owned();
    let (_, tr) = api
        .call(Method::GET, &format!("/api/v1/task-runs/{task_run}"), None)
        .await;
    let outcomes: Vec<&str> = tr["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["cancelled", "succeeded"], "{tr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_then_retry_runs_the_retry_at_once_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    cancel_then_retry(&sqlite_url(&dir), &dir, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_then_retry_runs_the_retry_at_once_on_postgres() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    cancel_then_retry(&db.url, &dir, &["--workers", "2"]).await;
}

/// A big run's detail comes by page: a summary and 50 task runs by default, any page, state
/// filter and counts, no pipeline definition; `orbit status --url` still lists every task.
#[tokio::test]
async fn a_big_runs_detail_is_paged() {
    const TASKS: usize = 1200;
    let dir = tempfile::tempdir().expect("tempdir");
    // No worker: the tasks stay ready, so every count below is known.
    let s = server(dir.path(), &sqlite_url(&dir), &["--workers", "0"], &[]);
    let api = Api::new(&s);
    let tasks: Vec<Value> = (0..TASKS)
        .map(|i| json!({"name": format!("t{i:05}"), "type": "sleep", "duration": "1ms"}))
        .collect();
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/pipelines",
            Some(json!({"name": "big", "tasks": tasks})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/pipelines/big/trigger",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["run"]["id"].as_str().expect("run id").to_owned();

    let (status, raw) = api
        .raw(Method::GET, &format!("/api/v1/runs/{id}"), None)
        .await;
    assert_eq!(status, 200);
    let size = raw.to_string().len();
    assert!(size < 50_000, "the default detail is {size} bytes");
    assert_eq!(raw["tasks"].as_array().map(Vec::len), Some(50));
    assert_eq!(
        raw["tasksPage"],
        json!({"offset": 0, "limit": 50, "total": TASKS})
    );
    assert_eq!(raw["taskCounts"], json!({"ready": TASKS}));
    assert!(
        raw["pipeline"].is_null(),
        "no definition for a big pipeline"
    );
    assert_eq!(raw["run"]["pipelineName"], "big");

    let last = api
        .get(&format!("/api/v1/runs/{id}?taskOffset=1190&taskLimit=100"))
        .await;
    let names: Vec<&str> = last["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["taskName"].as_str())
        .collect();
    assert_eq!(names.len(), 10);
    assert_eq!((names[0], names[9]), ("t01190", "t01199"), "file order");
    let running = api
        .get(&format!("/api/v1/runs/{id}?taskState=running"))
        .await;
    assert_eq!(running["tasksPage"]["total"], 0);
    assert_eq!(running["tasks"], json!([]));
    let (status, body) = api
        .call(
            Method::GET,
            &format!("/api/v1/runs/{id}?taskState=sideways"),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api
        .call(Method::GET, &format!("/api/v1/runs/{id}?taskLimit=x"), None)
        .await;
    assert_eq!(status, 400, "{body}");

    // The CLI reads it page by page.
    let out = std::process::Command::new(support::orbit_bin())
        .args(["status", &id, "--json", "--url", &s.base])
        .output()
        .expect("orbit status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        status["tasks"].as_array().map(Vec::len),
        Some(TASKS),
        "{status:#}"
    );
    // What the server refuses (a 4xx) is bad input to the CLI: exit status 2, as without --url.
    let out = std::process::Command::new(support::orbit_bin())
        .args(["trigger", "no-such-pipeline", "--url", &s.base])
        .output()
        .expect("orbit trigger");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
