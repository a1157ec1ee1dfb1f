//! The router, fed random requests in-process (`Router` + `oneshot`, no socket): every route,
//! random methods, paths, query strings, headers and bodies, with and without a token, from
//! hostile hosts and origins. Whatever comes in: no panic, no 5xx, every error a JSON body, and
//! requests that must be refused change nothing. Replay a run with `ORBIT_FUZZ_SEED`.

#![allow(clippy::unwrap_used, reason = "test code")]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use orbit_engine::storage::Storage;
use orbit_engine::{EngineConfig, dispatch::SecretKey};
use orbit_server::guard::Access;
use orbit_server::{AppState, Mode, ServerConfig, router};
use orbit_store::{NewRun, RunFilter, Store};
use orbit_store_sqlite::{Durability, SqliteStore};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token-0123456789";

struct Env {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    app: axum::Router,
    run: String,
    task_run: String,
}

async fn env(token: Option<&str>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&url, Durability::Normal).await.unwrap());
    let storage = Arc::new(Storage::local(&dir.path().join("objects")).unwrap());
    let pipeline = orbit_core::file::parse_pipeline(
        "p.yaml",
        "name: p\ntasks:\n  - {name: a, type: sleep, duration: 0s}\n  - {name: b, type: sleep, duration: 0s, needs: a}\n",
    )
    .unwrap();
    let stored = store
        .save_pipeline(&pipeline, None, Utc::now())
        .await
        .unwrap();
    let run = store
        .create_run(NewRun {
            id: uuid::Uuid::now_v7(),
            pipeline: &stored,
            input: serde_json::json!({"n": 1}),
            priority: 0,
            idempotency_key: Some("fuzz-key".into()),
            idempotency_ttl: Duration::from_secs(3600),
            request_hash: None,
            triggered_by: orbit_store::TriggeredBy::Api,
            parent: None,
            rerun: None,
            now: Utc::now(),
        })
        .await
        .unwrap()
        .run;
    let task_run = store.task_runs(run.id).await.unwrap()[0].id.to_string();
    let config = ServerConfig {
        mode: Mode::Serverless,
        workers: 0,
        engine: EngineConfig::default(),
        api_token: token.map(Into::into),
        public_health: false,
        process_batch: 5,
        store_kind: "sqlite",
        node_heartbeat: Duration::from_secs(5),
        secret_key: Some(SecretKey::new("fuzz-secret-key-0123456789").unwrap()),
        dlq_retention: chrono::Duration::days(30),
        run_retention: None,
        access: Access::default(),
    };
    let state = AppState::new(store.clone(), storage, config).unwrap();
    Env {
        _dir: dir,
        store,
        app: router(state),
        run: run.id.to_string(),
        task_run,
    }
}

/// What the store holds, as text: pipelines, runs with their task states, queue counts.
async fn snapshot(store: &dyn Store) -> String {
    let mut out = String::new();
    for p in store.list_pipelines().await.unwrap() {
        out.push_str(&format!("pipeline {} v{}\n", p.name, p.version));
    }
    let runs = store
        .list_runs(&RunFilter {
            limit: 1000,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    for r in runs {
        out.push_str(&format!("run {} {}\n", r.id, r.state));
        for t in store.task_runs(r.id).await.unwrap() {
            out.push_str(&format!("  {} {} {}\n", t.task_name, t.state, t.attempt));
        }
    }
    let q = store.queue_stats().await.unwrap();
    out.push_str(&format!("{}\n", serde_json::to_string(&q).unwrap()));
    out
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const ROUTES: &[&str] = &[
    "/",
    "/runs",
    "/runs/{id}",
    "/pipelines/{name}",
    "/dlq",
    "/tasks/{name}",
    "/assets/app.js",
    "/assets/{name}",
    "/metrics",
    "/docs/",
    "/api/v1/openapi.json",
    "/api/v1/health",
    "/api/v1/services",
    "/api/v1/services/{name}/tasks",
    "/api/v1/pipelines",
    "/api/v1/pipelines/{name}",
    "/api/v1/pipelines/{name}/trigger",
    "/api/v1/pipelines/{name}/dry-run",
    "/api/v1/runs",
    "/api/v1/runs/{id}",
    "/api/v1/runs/{id}/retry",
    "/api/v1/runs/{id}/cancel",
    "/api/v1/task-runs/{task_run}",
    "/api/v1/queue/task",
    "/api/v1/queue/batch",
    "/api/v1/queue/status",
    "/api/v1/queue/items",
    "/api/v1/dlq",
    "/api/v1/dlq/{task_run}/retry",
    "/api/v1/tasks/{name}/history",
    "/api/v1/workers/stats",
    "/api/v1/workers/health",
    "/api/v1/workers/metrics",
    "/api/v1/workers/series",
    "/api/v1/process",
    "/api/v1/services/register",
    "/api/v1/worker/poll",
    "/api/v1/worker/heartbeat",
    "/api/v1/heartbeat",
    "/api/v1/progress",
    "/api/v1/callback/{id}",
    "/api/v1/grant",
    "/api/v1/storage/{name}/{key}",
    "/api/v1/ws",
    "/api/v1/nothing/{name}",
];

fn segment(rng: &mut Rng, env: &Env, kind: &str) -> String {
    let long = "a".repeat(10_000);
    let real = match kind {
        "{id}" => env.run.clone(),
        "{task_run}" => env.task_run.clone(),
        "{name}" => "p".to_owned(),
        _ => "runs/x/a/attempt-1.json".to_owned(),
    };
    let prefix = real[..real.len().min(4)].to_owned();
    let choices: [&str; 14] = [
        &real,
        &prefix,
        "..",
        "%2e%2e%2f%2e%2e",
        &long,
        "%E2%80%AE%00",
        "%E2%98%83%C3%A9",
        "%ff%fe",
        "-1",
        "99999999999999999999",
        "01a2",
        "",
        "a%20b",
        "%7B%7B%20input%20%7D%7D",
    ];
    choices[rng.below(choices.len())].to_owned()
}

fn path(rng: &mut Rng, env: &Env) -> String {
    let template = ROUTES[rng.below(ROUTES.len())];
    let mut p = String::new();
    for (i, part) in template.split('/').enumerate() {
        if i > 0 {
            p.push('/');
        }
        if part.starts_with('{') {
            p.push_str(&segment(rng, env, part));
        } else {
            p.push_str(part);
        }
    }
    if rng.chance(3) {
        let queries = [
            "limit=-1",
            "limit=99999999999",
            "offset=-5",
            "status=bogus",
            "status=success",
            "state=%00",
            "after=abc",
            "after=-1",
            "run=zz",
            "run=01a2",
            "token=forged",
            "minutes=100000000",
            "pipeline=%E2%80%AE",
            "queue=",
            "wait_ms=1",
            "x=y&x=z",
        ];
        p.push('?');
        p.push_str(queries[rng.below(queries.len())]);
    }
    p
}

fn json_value(rng: &mut Rng, depth: u32) -> serde_json::Value {
    use serde_json::{Value, json};
    match rng.below(if depth > 3 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.chance(2)),
        2 => json!(rng.next() as i64),
        3 => json!(
            [
                "shell",
                "sleep",
                "http",
                "script",
                "worker",
                "p",
                "a",
                "",
                "{{ input.x }}"
            ][rng.below(9)]
        ),
        4 => json!(1e308),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| json_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "input",
                "yaml",
                "name",
                "type",
                "tasks",
                "task",
                "command",
                "duration",
                "priority",
                "idempotencyKey",
                "taskId",
                "needs",
                "serviceId",
                "runId",
                "taskRunId",
                "output",
                "progress",
                "epoch",
                "attempt",
                "max",
                "workers",
                "url",
            ];
            let mut m = serde_json::Map::new();
            for _ in 0..rng.below(5) {
                m.insert(
                    keys[rng.below(keys.len())].to_owned(),
                    json_value(rng, depth + 1),
                );
            }
            Value::Object(m)
        }
    }
}

fn body(rng: &mut Rng) -> Option<Vec<u8>> {
    match rng.below(9) {
        0 => None,
        1 => Some(b"{}".to_vec()),
        2 => Some(b"[0]".to_vec()),
        3 => Some(b"{\"input\": ".to_vec()),
        4 => Some("[".repeat(5_000).into_bytes()),
        5 => Some((0..rng.below(200)).map(|_| (rng.next() & 0xff) as u8).collect()),
        6 => Some(
            serde_json::json!({"yaml": "name: q\ntasks:\n  - {name: a, type: sleep, duration: 0s}\n"})
                .to_string()
                .into_bytes(),
        ),
        _ => Some(json_value(rng, 0).to_string().into_bytes()),
    }
}

/// One random request; `auth` decides what it carries as credentials.
fn request(rng: &mut Rng, env: &Env, auth: Option<&str>, host: &str) -> Request<Body> {
    let methods: [&str; 8] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "GET",
    ];
    let uri = path(rng, env);
    assert!(
        uri.parse::<axum::http::Uri>().is_ok(),
        "the generator made an invalid URI: {uri}"
    );
    let mut b = Request::builder()
        .method(methods[rng.below(methods.len())])
        .uri(uri)
        .header("host", host);
    let content_types: [&str; 7] = [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/problem+json",
        "garbage",
    ];
    let payload = body(rng);
    if payload.is_some() && !rng.chance(6) {
        b = b.header(
            "content-type",
            content_types[rng.below(content_types.len())],
        );
    }
    if let Some(t) = auth {
        b = match rng.below(3) {
            0 => b.header("authorization", format!("Bearer {t}")),
            1 => b.header("cookie", format!("orbit_token={t}")),
            _ => b,
        };
    }
    if rng.chance(4) {
        b = b.header(
            "origin",
            rng.pick(&[
                "http://evil.example",
                "null",
                "http://127.0.0.1:3000",
                "https://x",
            ]),
        );
    }
    if rng.chance(6) {
        b = b.header(
            "authorization",
            rng.pick(&[
                "Bearer",
                "Basic Zm9vOmJhcg==",
                "Bearer eyJhbGciOiJub25lIn0.e30.",
            ]),
        );
    }
    if rng.chance(8) {
        b = b.header(
            "last-event-id",
            rng.pick(&["-1", "abc", "99999999999999999999"]),
        );
    }
    b.body(payload.map_or_else(Body::empty, Body::from))
        .unwrap()
}

async fn send(env: &Env, req: Request<Body>) -> (StatusCode, String, String) {
    let head = req.method() == axum::http::Method::HEAD;
    let what = format!("{} {}", req.method(), req.uri());
    let what: String = what.chars().take(200).collect();
    let resp = env.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    // Streams (SSE) never end: a prefix of the body is all a check needs.
    let bytes = tokio::time::timeout(
        Duration::from_millis(200),
        axum::body::to_bytes(resp.into_body(), 64 * 1024),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    // A HEAD answer has no body to check: its GET's is checked.
    let body = if head {
        r#"{"error": {"code": "head", "message": "no body"}}"#.to_owned()
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (status, what, body)
}

fn check(status: StatusCode, what: &str, body: &str, seed: u64) {
    assert!(
        status.as_u16() < 500,
        "seed {seed}: {what} -> {status}: {body}"
    );
    if status.is_client_error() {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| {
            panic!("seed {seed}: {what} -> {status} without a JSON error body: {body:?}")
        });
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "seed {seed}: {what} -> {status}: {body}"
        );
        assert!(
            body.len() < 4096,
            "seed {seed}: {what}: an error of {} bytes",
            body.len()
        );
    }
}

fn seed() -> u64 {
    let seed = std::env::var("ORBIT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or(7) as u64 | 1);
    println!("fuzz seed {seed} (ORBIT_FUZZ_SEED replays it)");
    seed
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_the_token_change_nothing_and_never_fail_the_server() {
    let seed = seed();
    let mut rng = Rng(seed);
    let env = env(Some(TOKEN)).await;
    let before = snapshot(env.store.as_ref()).await;
    for _ in 0..2_000 {
        let wrong = format!("{TOKEN}x");
        let auth = if rng.chance(2) {
            Some(wrong.as_str())
        } else {
            None
        };
        let req = request(&mut rng, &env, auth, "127.0.0.1:3000");
        let (status, what, body) = send(&env, req).await;
        check(status, &what, &body, seed);
    }
    assert_eq!(
        snapshot(env.store.as_ref()).await,
        before,
        "seed {seed}: data changed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_on_other_hosts_change_nothing_on_a_tokenless_server() {
    let seed = seed();
    let mut rng = Rng(seed);
    let env = env(None).await;
    let before = snapshot(env.store.as_ref()).await;
    for _ in 0..1_000 {
        let host = rng.pick(&[
            "evil.example:3000",
            "0.0.0.0:3000",
            "localhost.evil.example",
            "192.168.0.2",
        ]);
        let req = request(&mut rng, &env, None, host);
        let (status, what, body) = send(&env, req).await;
        check(status, &what, &body, seed);
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "seed {seed}: {what} on {host}: {body}"
        );
    }
    assert_eq!(
        snapshot(env.store.as_ref()).await,
        before,
        "seed {seed}: data changed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn any_request_with_the_token_gets_a_well_formed_answer() {
    let seed = seed();
    let mut rng = Rng(seed);
    let env = env(Some(TOKEN)).await;
    for _ in 0..3_000 {
        let req = request(&mut rng, &env, Some(TOKEN), "127.0.0.1:3000");
        let (status, what, body) = send(&env, req).await;
        check(status, &what, &body, seed);
    }
}
