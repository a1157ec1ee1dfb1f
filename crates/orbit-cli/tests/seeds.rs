//! The seeds' own examples, as their documents print them (`../shared/seeds/`), against a real
//! `orbit server` on SQLite and on PostgreSQL: every curl line and JSON body of PipeWeave's
//! orchestrator README and every route it lists, Orbit-Py's workflow, execution and WebSocket,
//! PipeWeave's STORAGE_BACKENDS and single-backend environment blocks, and the orbit-pipeline
//! CLI with its output texts. What cannot run here is listed with the reason. The counts are
//! printed at the end.

mod support;

use jsonwebtoken::{EncodingKey, Header};
use orbit_store_postgres::testing::TestDb;
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Server, orbit_bin, server};

const KEY: &str = "4f3c2a1b0e9d8c7b6a5f4e3d2c1b0a99"; // as `openssl rand -hex 32` makes them

/// What the seed documents show and this machine cannot run, with why.
const NOT_RUNNABLE: &[(&str, &str)] = &[
    (
        "pipeweave: npm install / npm run … / npx pipeweave db init",
        "the seed's own Node tooling; Orbit is one binary (`orbit db migrate`)",
    ),
    (
        "pipeweave: docker run minio/minio, mc mb",
        "needs Docker; tests/storage.rs runs an S3 server (s3s-fs)",
    ),
    (
        "pipeweave: createWorker + worker.listen (TypeScript)",
        "the TypeScript SDK is its own issue; the Rust SDK's example service runs in tests/sdk.rs",
    ),
    (
        "pipeweave: createOrchestrator({...}) (TypeScript)",
        "a library call; its configuration is tested as STORAGE_BACKENDS here",
    ),
    (
        "orbit-py: uvicorn, pip install -e ., docker-compose up, pytest",
        "the seed's own Python tooling",
    ),
    (
        "orbit-pipeline: npm run worker / pm2 …",
        "the seed's Node tooling; `orbit worker` is its worker",
    ),
    (
        "orbit-pipeline: registry.registerPipeline(...) (TypeScript)",
        "a library call; pipelines are registered with `orbit apply` or the API",
    ),
];

struct Ledger {
    store: &'static str,
    passed: Vec<String>,
}

impl Ledger {
    fn ok(&mut self, what: &str) {
        self.passed.push(what.to_owned());
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
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
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, None, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    async fn settled(&self, run: &str) -> Value {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let d = self.ok("GET", &format!("/api/runs/{run}"), None).await;
            if ["succeeded", "failed", "cancelled"]
                .contains(&d["run"]["state"].as_str().unwrap_or(""))
            {
                return d;
            }
            assert!(Instant::now() < end, "run {run} never settled: {d}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn service_token(service: &str) -> String {
    let claims = json!({"sub": service, "aud": "orbit-service", "exp": now() + 60, "iat": now()});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(KEY.as_bytes()),
    )
    .expect("sign")
}

/// PipeWeave's orchestrator README: its curl examples and every route it lists, at its paths.
async fn pipeweave_api(api: &Api, ledger: &mut Ledger) {
    // Pipelines the examples name (pdf-processor; a task `download` for its code history).
    let pdf = "name: pdf-processor\ntasks:\n  - name: download\n    type: sleep\n    duration: 0s\n  - name: extract\n    type: worker\n    task: process-document\n    needs: download\n";
    api.ok("POST", "/api/pipelines", Some(json!({"yaml": pdf})))
        .await;

    // `GET /health`, `GET /api/pipelines`, `GET /api/runs`.
    assert_eq!(api.ok("GET", "/health", None).await["status"], "ok");
    ledger.ok("GET /health");
    let names: Vec<Value> = api
        .ok("GET", "/api/pipelines", None)
        .await
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(names.iter().any(|p| p["name"] == "pdf-processor"));
    ledger.ok("GET /api/pipelines");

    // curl -X POST …/api/pipelines/pdf-processor/trigger -d '{"pdfUrl": …, "extractTables": true}'
    let body = json!({"pdfUrl": "https://example.com/doc.pdf", "extractTables": true});
    let t = api
        .ok(
            "POST",
            "/api/pipelines/pdf-processor/trigger",
            Some(body.clone()),
        )
        .await;
    assert_eq!(t["run"]["input"], body, "the body is the run's input");
    let run = t["run"]["id"].as_str().expect("run id").to_owned();
    ledger.ok("curl POST /api/pipelines/pdf-processor/trigger (the seed's body)");
    assert_eq!(
        api.ok("GET", &format!("/api/runs/{run}"), None).await["run"]["id"],
        run.as_str()
    );
    ledger.ok("GET /api/runs/:id");
    assert!(api.ok("GET", "/api/runs", None).await["runs"].is_array());
    ledger.ok("GET /api/runs");
    let plan = api
        .ok("POST", "/api/pipelines/pdf-processor/dry-run", None)
        .await;
    assert_eq!(plan["layers"], json!([["download"], ["extract"]]));
    ledger.ok("POST /api/pipelines/:id/dry-run");

    // A worker service registers at the seed's path and does the queued work through the seed's
    // task routes: heartbeat, progress, callback.
    let token = service_token("documents");
    let (status, reg) = api
        .call(
            "POST",
            "/api/register",
            Some(&token),
            Some(json!({"serviceId": "documents", "workerId": "d@test:1",
            "tasks": [{"name": "process-document", "codeHash": "h1"}]})),
        )
        .await;
    assert_eq!(status, 200, "{reg}");
    ledger.ok("POST /api/register (service registration)");
    let (status, tasks) = api
        .call("GET", "/api/services/documents/tasks", None, None)
        .await;
    assert_eq!(
        (status, tasks[0]["name"].as_str()),
        (200, Some("process-document")),
        "{tasks}"
    );
    ledger.ok("GET /api/services/:id/tasks");

    // curl -X POST …/api/queue/task -d '{"taskId": "process-document", "input": …, "priority": 50}'
    let q = api
        .ok("POST", "/api/queue/task", Some(json!({"taskId": "process-document", "input": {"documentUrl": "https://..."}, "priority": 50})))
        .await;
    assert_eq!(
        (q["run"]["priority"].as_i64(), q["created"].as_bool()),
        (Some(50), Some(true))
    );
    ledger.ok("curl POST /api/queue/task (the seed's body: a registered task by id)");
    let b = api
        .ok("POST", "/api/queue/batch", Some(json!([{"taskId": "process-document", "input": {"n": 1}}, {"taskId": "process-document", "input": {"n": 2}}])))
        .await;
    assert_eq!(b.as_array().map(Vec::len), Some(2));
    ledger.ok("POST /api/queue/batch");

    assert!(
        api.ok("GET", "/api/services", None)
            .await
            .to_string()
            .contains("documents")
    );
    ledger.ok("GET /api/services");
    let mut done_tasks = 0;
    while done_tasks < 4 {
        let (status, polled) = api
            .call(
                "POST",
                "/api/worker/poll",
                Some(&token),
                Some(json!({"workerId": "d@test:1", "max": 1, "waitMs": 5000})),
            )
            .await;
        assert_eq!(status, 200, "{polled}");
        let Some(a) = polled["tasks"].as_array().and_then(|t| t.first()).cloned() else {
            continue;
        };
        let t = a["token"].as_str().expect("task token").to_owned();
        let id = a["taskRunId"].clone();
        let (status, _) = api
            .call(
                "POST",
                "/api/heartbeat",
                Some(&t),
                Some(json!({"taskRunId": id})),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = api
            .call(
                "POST",
                "/api/progress",
                Some(&t),
                Some(json!({"taskRunId": id, "progress": 0.5, "message": "half"})),
            )
            .await;
        assert_eq!(status, 200);
        let run = a["runId"].as_str().expect("run id").to_owned();
        let (status, cb) = api
            .call(
                "POST",
                &format!("/api/callback/{run}"),
                Some(&t),
                Some(json!({"taskRunId": id, "status": "succeeded", "output": {"pages": 3}})),
            )
            .await;
        assert_eq!(status, 200, "{cb}");
        done_tasks += 1;
    }
    for what in [
        "POST /api/heartbeat",
        "POST /api/progress",
        "POST /api/callback/:runId",
    ] {
        ledger.ok(what);
    }
    let d = api.settled(&run).await;
    assert_eq!(d["run"]["state"], "succeeded", "{d}");
    let tr = d["tasks"][1]["id"].as_str().expect("task run").to_owned();
    let detail = api.ok("GET", &format!("/api/task-runs/{tr}"), None).await;
    assert_eq!(detail["taskRun"]["output"]["pages"], 3);
    ledger.ok("GET /api/task-runs/:id");

    // curl …/api/queue/status, in the seed's shape.
    let stats = api.ok("GET", "/api/queue/status", None).await;
    for key in [
        "pending",
        "running",
        "waiting",
        "completed",
        "failed",
        "dlq",
        "oldestPending",
    ] {
        assert!(
            stats.get(key).is_some(),
            "queue/status has `{key}`: {stats}"
        );
    }
    ledger.ok("curl GET /api/queue/status (the seed's shape)");
    assert!(
        api.ok("GET", "/api/queue/items?state=completed", None)
            .await
            .is_array()
    );
    ledger.ok("GET /api/queue/items");

    // A failure for the DLQ: curl …/api/dlq, then retry it.
    let bad = "name: flaky\ntasks:\n  - name: f\n    type: shell_command\n    retry_count: 0\n    command: 'test \"$ORBIT_ATTEMPT\" -gt 1'\n";
    api.ok("POST", "/api/pipelines", Some(json!({"yaml": bad})))
        .await;
    let f = api.ok("POST", "/api/pipelines/flaky/trigger", None).await;
    let frun = f["run"]["id"].as_str().expect("run").to_owned();
    assert_eq!(api.settled(&frun).await["run"]["state"], "failed");
    let dlq = api.ok("GET", "/api/dlq", None).await;
    let entry = dlq[0]["id"].as_str().expect("entry").to_owned();
    ledger.ok("curl GET /api/dlq");
    api.ok("POST", &format!("/api/dlq/{entry}/retry"), None)
        .await;
    assert_eq!(api.settled(&frun).await["run"]["state"], "succeeded");
    ledger.ok("POST /api/dlq/:id/retry");

    // curl …/api/tasks/download/history
    let h = api.ok("GET", "/api/tasks/download/history", None).await;
    assert_eq!(h[0]["pipeline"], "pdf-processor");
    ledger.ok("curl GET /api/tasks/download/history");

    // GET /api/storage/* : a stored input, served through the orchestrator.
    let big = json!({"blob": "x".repeat(70_000)});
    let s = api
        .ok(
            "POST",
            "/api/pipelines/pdf-processor/trigger",
            Some(json!({"input": big})),
        )
        .await;
    let r = &s["run"]["input"]["$orbit_object"];
    let got = api
        .ok(
            "GET",
            &format!(
                "/api/storage/{}/{}",
                r["backend"].as_str().unwrap_or(""),
                r["key"].as_str().unwrap_or("")
            ),
            None,
        )
        .await;
    assert_eq!(got, big);
    ledger.ok("GET /api/storage/*");
    for path in ["/api/info", "/api/storage/backends"] {
        api.ok("GET", path, None).await;
        ledger.ok(&format!("GET {path}"));
    }
    api.ok("POST", "/api/dlq/purge", None).await;
    ledger.ok("POST /api/dlq/purge");
}

/// Orbit-Py's README: its workflow, as printed, created, executed and watched.
async fn orbit_py(api: &Api, ledger: &mut Ledger) {
    let workflow = json!({
      "name": "Data Pipeline",
      "description": "ETL workflow with parallel processing",
      "tasks": [
        {"name": "extract", "action_type": "http_request", "action_payload": {"url": "https://api.example.com/data"}, "dependencies": []},
        {"name": "transform", "action_type": "python_script", "action_payload": {"script": "transform.py"}, "dependencies": ["extract"]},
        {"name": "load", "action_type": "shell_command", "action_payload": {"command": "load_data.sh"}, "dependencies": ["transform"]}
      ]
    });
    let w = api.ok("POST", "/api/v1/workflows/", Some(workflow)).await;
    let id = w["id"].as_str().expect("workflow id").to_owned();
    assert_eq!(w["tasks"][2]["action_type"], "shell_command");
    ledger.ok("orbit-py: curl POST /api/v1/workflows/ (the seed's JSON DAG)");
    // Open the WebSocket first, as the seed's dashboard does, then execute.
    let ws_url = api.base.replacen("http://", "ws://", 1) + "/api/v1/ws";
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .expect("websocket");
    let e = api
        .ok("POST", &format!("/api/v1/workflows/{id}/execute"), None)
        .await;
    let run = e["id"].as_str().expect("execution id").to_owned();
    ledger.ok("orbit-py: curl POST /api/v1/workflows/{workflow_id}/execute");
    use futures::StreamExt;
    let update = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = ws.next().await {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                if v["runId"] == run.as_str() {
                    return v;
                }
            }
        }
    })
    .await
    .expect("an update for the execution");
    assert_eq!(update["type"], "event");
    ledger.ok("orbit-py: new WebSocket('ws://…/api/v1/ws') updates");
    let x = api
        .ok("GET", &format!("/api/v1/executions/{run}"), None)
        .await;
    assert_eq!(x["workflow_id"], id.as_str());
    assert!(api.ok("GET", "/api/v1/workflows", None).await[0]["id"].is_string());
    for what in ["GET /api/v1/workflows", "GET /api/v1/executions/{id}"] {
        ledger.ok(&format!("orbit-py: {what}"));
    }
    for path in ["/api/v1/openapi.json", "/docs/"] {
        api.ok("GET", path, None).await;
        ledger.ok(&format!("orbit-py: GET {path}"));
    }
}

/// PipeWeave README's "Test Your Setup": `services`, `trigger -i`, `status`, each with `--url`.
fn pipeweave_cli(base: &str, ledger: &mut Ledger) {
    let orbit = |args: &[&str]| {
        let out = Command::new(orbit_bin())
            .env_remove("ORBIT_URL")
            .env_remove("DATABASE_URL")
            .env_remove("ORBIT_DATABASE_URL")
            .args(args)
            .output()
            .expect("orbit");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "orbit {args:?}: {text}");
        text
    };
    let listed = orbit(&["services", "--url", base]);
    assert!(listed.contains("documents"), "{listed}");
    ledger.ok("pipeweave cli: services --url");
    let triggered = orbit(&[
        "trigger",
        "pdf-processor",
        "-i",
        r#"{"name": "World"}"#,
        "--url",
        base,
        "--json",
    ]);
    let run: Value = serde_json::from_str(&triggered).expect("trigger --json");
    let id = run["run"]["id"]
        .as_str()
        .or(run["id"].as_str())
        .expect("run id")
        .to_owned();
    ledger.ok("pipeweave cli: trigger <pipeline> -i '{\"name\": \"World\"}' --url");
    let status = orbit(&["status", &id, "--url", base]);
    assert!(
        status.contains(&id) && status.contains("pdf-processor"),
        "{status}"
    );
    ledger.ok("pipeweave cli: status <run-id> --url");
}

async fn against(
    store: &'static str,
    database: &str,
    extra: &[&str],
    dir: &std::path::Path,
) -> Ledger {
    let s: Server = server(dir, database, extra, &[("PIPEWEAVE_SECRET_KEY", KEY)]);
    let api = Api {
        base: s.base.clone(),
        http: reqwest::Client::new(),
    };
    let mut ledger = Ledger {
        store,
        passed: Vec::new(),
    };
    ledger.ok("env: PIPEWEAVE_SECRET_KEY (an `openssl rand -hex 32` key)");
    pipeweave_api(&api, &mut ledger).await;
    let base = s.base.clone();
    ledger = tokio::task::spawn_blocking(move || {
        pipeweave_cli(&base, &mut ledger);
        ledger
    })
    .await
    .expect("cli");
    orbit_py(&api, &mut ledger).await;
    ledger
}

fn report(ledgers: &[Ledger]) {
    for l in ledgers {
        println!("seed examples on {}: {} passing", l.store, l.passed.len());
        for p in &l.passed {
            println!("  ok  {p}");
        }
    }
    println!("not runnable here ({}):", NOT_RUNNABLE.len());
    for (what, why) in NOT_RUNNABLE {
        println!("  --  {what}: {why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_examples_work_as_printed_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite+aiosqlite:///{}",
        dir.path().join("orbit.db").display()
    );
    let ledger = against("sqlite", &url, &["--workers", "4"], dir.path()).await;
    report(&[ledger]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_examples_work_as_printed_on_postgres() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Orbit-Py's form of a PostgreSQL URL.
    let url = db.url.replacen("postgres://", "postgresql+asyncpg://", 1);
    let ledger = against("postgres", &url, &["--workers", "4"], dir.path()).await;
    report(&[ledger]);
}

/// PipeWeave's STORAGE_BACKENDS blocks and legacy variables, exactly as printed: the server
/// starts with each and lists the backends (no credentials).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_storage_configurations_start() {
    let printed = [
        (
            "pipeweave README: STORAGE_BACKENDS (aws-s3 + minio accessKey/secretKey) + DEFAULT_STORAGE_BACKEND_ID",
            vec![
                (
                    "STORAGE_BACKENDS",
                    r#"[
  {
    "id": "primary-s3",
    "provider": "aws-s3",
    "endpoint": "https://s3.amazonaws.com",
    "bucket": "pipeweave-prod",
    "region": "us-east-1",
    "credentials": {
      "accessKeyId": "AKIA...",
      "secretAccessKey": "..."
    },
    "isDefault": true
  },
  {
    "id": "local-minio",
    "provider": "minio",
    "endpoint": "http://localhost:9000",
    "bucket": "pipeweave-dev",
    "credentials": {
      "accessKey": "minioadmin",
      "secretKey": "minioadmin"
    }
  }
]"#,
                ),
                ("DEFAULT_STORAGE_BACKEND_ID", "primary-s3"),
            ],
            vec!["primary-s3", "local-minio"],
        ),
        (
            "pipeweave README: legacy single-backend variables",
            vec![
                ("STORAGE_PROVIDER", "minio"),
                ("S3_ENDPOINT", "http://localhost:9000"),
                ("S3_BUCKET", "pipeweave"),
                ("S3_ACCESS_KEY", "minioadmin"),
                ("S3_SECRET_KEY", "minioadmin"),
            ],
            vec!["default"],
        ),
        (
            "orchestrator README: createOrchestrator storageBackends (aws-s3, gcs with inline credentials, minio)",
            vec![(
                "STORAGE_BACKENDS",
                r#"[
    {"id": "primary-s3", "provider": "aws-s3", "endpoint": "https://s3.amazonaws.com", "bucket": "pipeweave-prod", "region": "us-east-1",
      "credentials": {"accessKeyId": "AKIA", "secretAccessKey": "secret"}, "isDefault": true},
    {"id": "gcs-backup", "provider": "gcs", "endpoint": "https://storage.googleapis.com", "bucket": "pipeweave-backup",
      "credentials": {"projectId": "my-project", "clientEmail": "service-account@...", "privateKey": "-----BEGIN PRIVATE KEY-----\n..."}},
    {"id": "local-minio", "provider": "minio", "endpoint": "http://localhost:9000", "bucket": "pipeweave-dev",
      "credentials": {"accessKey": "minioadmin", "secretKey": "minioadmin"}}
  ]"#,
            )],
            vec!["primary-s3", "gcs-backup", "local-minio"],
        ),
    ];
    for (what, env, ids) in printed {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = server(dir.path(), "sqlite://orbit.db", &[], &env);
        let health: Value = match reqwest::get(format!("{}/health", s.base)).await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let listed: Vec<&str> = health["storage"]["backends"]
            .as_array()
            .map(|b| b.iter().filter_map(|b| b["id"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(listed, ids, "{what}: {health}");
        assert!(
            !health.to_string().contains("minioadmin"),
            "no credentials in health"
        );
        println!("ok  {what}");
    }
}

/// orbit-pipeline's CLI, as its README and RECOVERY document it, with its output texts.
#[test]
fn orbit_pipeline_commands_print_the_seeds_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orbit = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(orbit_bin())
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .env("ORBIT_DATABASE_URL", "sqlite://orbit.db")
            .envs(env.iter().copied())
            .args(args)
            .output()
            .expect("orbit");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    std::fs::write(dir.path().join("data-pipeline.yaml"), "name: data-pipeline\ntasks:\n  - {name: extract, type: sleep, duration: 0s}\n  - {name: transform-data, type: sleep, duration: 5s, needs: extract}\n").expect("file");
    assert_eq!(orbit(&["apply", "data-pipeline.yaml"], &[]).0, Some(0));
    // orbit list
    let (code, out) = orbit(&["list"], &[]);
    assert!(code == Some(0) && out.contains("data-pipeline"), "{out}");
    // orbit run <pipeline-name>, killed mid-run: an interrupted run.
    let mut child = Command::new(orbit_bin())
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env("ORBIT_DATABASE_URL", "sqlite://orbit.db")
        .args(["run", "data-pipeline"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("orbit run");
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().expect("kill");
    child.wait().expect("wait");
    // orbit check-interrupted
    let (_, out) = orbit(&["check-interrupted"], &[]);
    for line in [
        "Checking for Interrupted Runs",
        "Found 1 interrupted run(s):",
        "Run ID: ",
        "  Pipeline: data-pipeline",
        "  Completed steps: 1",
        "  Failed steps: 0",
        "  Next step: transform-data",
        "To resume a specific run, use: orbit resume <runId>",
        "To auto-resume all runs, use: orbit recover --auto-resume",
    ] {
        assert!(
            out.contains(line),
            "check-interrupted prints `{line}`: {out}"
        );
    }
    let run = out
        .lines()
        .find_map(|l| l.strip_prefix("Run ID: "))
        .expect("run id")
        .trim()
        .to_owned();
    // INTERRUPTED_RUN_THRESHOLD_MINUTES is the seed's knob; a run whose process is gone counts at once.
    let (_, out) = orbit(
        &["check-interrupted"],
        &[("INTERRUPTED_RUN_THRESHOLD_MINUTES", "10")],
    );
    assert!(out.contains("Found 1 interrupted run(s):"), "{out}");
    // orbit resume <run-id>
    let (code, out) = orbit(&["resume", &run], &[]);
    assert_eq!(code, Some(0), "{out}");
    for line in [
        format!("Resuming Run: {run}"),
        format!("✓ Run {run} resumed successfully"),
        "ℹ Steps executed: 1".into(),
    ] {
        assert!(out.contains(&line), "resume prints `{line}`: {out}");
    }
    // orbit recover --auto-resume, and its summary
    let (code, out) = orbit(&["recover", "--auto-resume"], &[]);
    assert_eq!(code, Some(0));
    for line in [
        "Run Recovery",
        "Scanning for interrupted runs...",
        "Recovery Summary:",
        "  Detected: 0",
        "  Recovered: 0",
        "  Failed: 0",
    ] {
        assert!(out.contains(line), "recover prints `{line}`: {out}");
    }
    // orbit --auto-recover run <pipeline-name>
    std::fs::write(
        dir.path().join("quick.yaml"),
        "name: quick\ntasks:\n  - {name: a, type: sleep, duration: 0s}\n",
    )
    .expect("file");
    let (code, out) = orbit(&["--auto-recover", "run", "quick.yaml"], &[]);
    assert!(code == Some(0) && out.contains("Run Recovery"), "{out}");
    // Resuming a run with a failed step: the seed's error.
    std::fs::write(dir.path().join("half.yaml"), "name: half\ntasks:\n  - {name: bad, type: shell, command: [sh, -c, 'exit 1'], retry: {max_attempts: 1}}\n  - {name: slow, type: sleep, duration: 5s}\n").expect("file");
    let mut child = Command::new(orbit_bin())
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env("ORBIT_DATABASE_URL", "sqlite://orbit.db")
        .args(["run", "half.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("orbit run");
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().expect("kill");
    child.wait().expect("wait");
    let (_, out) = orbit(&["check-interrupted"], &[]);
    assert!(out.contains("Failed steps: 1"), "{out}");
    let half = out
        .lines()
        .find_map(|l| l.strip_prefix("Run ID: "))
        .expect("run id")
        .trim()
        .to_owned();
    let (code, out) = orbit(&["resume", &half], &[]);
    assert_ne!(code, Some(0));
    assert!(
        out.contains("Run has 1 failed step(s), cannot auto-resume"),
        "{out}"
    );
    // The seeds' status words as filters.
    let (code, out) = orbit(&["runs", "--status", "success", "--json"], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("\"state\": \"succeeded\""), "{out}");
    println!(
        "orbit-pipeline: list, run, check-interrupted, resume, recover --auto-resume, --auto-recover run, the failed-step refusal, INTERRUPTED_RUN_THRESHOLD_MINUTES, --status success: 9 passing"
    );
}
