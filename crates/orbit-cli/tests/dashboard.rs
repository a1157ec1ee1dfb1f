//! The dashboard in a real browser (Debian's headless chromium through chromedriver) against a
//! real `orbit server` with real runs, and the live event stream over SSE and WebSocket.
//!
//! Screenshots of every page go to `$CARGO_TARGET_TMPDIR/dashboard/` (target/tmp/dashboard).
//! Any console error or failed request in the browser fails the test.

mod support;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{Server, server};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn pipelines(dir: &Path) -> [Value; 2] {
    let ok = dir.join("ok");
    [
        json!({"yaml": r#"
name: live
description: Two steps, the first prints while it runs.
tasks:
  - name: first
    type: shell
    shell: true
    command: "sleep 1; echo start; sleep 2; echo end"
  - name: second
    type: shell
    needs: first
    command: "echo done"
"#}),
        json!({"yaml": format!(r#"
name: flaky
description: Fails until the file ok exists.
defaults:
  retry: {{ max_attempts: 1 }}
tasks:
  - name: prepare
    type: shell
    command: "echo ready"
  - name: flaky
    type: shell
    needs: prepare
    shell: true
    command: "test -f {} || {{ echo 'the ok file is missing' >&2; exit 3; }}"
"#, ok.display())}),
    ]
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let body: Value = resp.json().await.expect("json body");
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn run_state(&self, run: &str) -> String {
        self.get(&format!("/api/v1/runs/{run}")).await["run"]["state"]
            .as_str()
            .expect("state")
            .to_owned()
    }

    async fn wait_state(&self, run: &str, want: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let state = self.run_state(run).await;
            if state == want {
                return;
            }
            assert!(Instant::now() < end, "run {run} is {state}, not {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// chromedriver on a free port. Without it the test fails (it is not a pass when it did not
/// run): `scripts/test` installs it.
fn chromedriver() -> Driver {
    assert!(
        Path::new(CHROMEDRIVER).exists(),
        "not run: {CHROMEDRIVER} is missing (Debian: `apt-get install chromium chromium-driver`; `scripts/test` installs them)"
    );
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, url }
}

async fn browser(driver: &Driver, profile: &Path, extra: &[&str]) -> Client {
    let mut args = vec![
        "--headless".to_owned(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-dev-shm-usage".into(),
        "--window-size=1280,900".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": "/usr/bin/chromium", "args": args}),
    );
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    ClientBuilder::rustls()
        .expect("tls")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

/// chromedriver's browser log (console messages and failed loads) since the last call.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// Fails on any console error or failed request the page produced.
async fn no_errors(c: &Client, page: &str) {
    let log = c.issue_cmd(BrowserLog).await.expect("browser log");
    let severe: Vec<&Value> = log
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(severe.is_empty(), "{page}: console errors {severe:#?}");
}

struct Shots {
    dir: PathBuf,
    taken: Vec<PathBuf>,
}

impl Shots {
    async fn take(&mut self, c: &Client, name: &str) {
        let png = c.screenshot().await.expect("screenshot");
        let path = self.dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        self.taken.push(path);
    }
}

async fn wait_js(c: &Client, what: &str, script: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let v = c.execute(script, vec![]).await.expect(what);
        if !v.is_null() && v != json!(false) {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn title(c: &Client) -> String {
    c.title().await.expect("title")
}

async fn open(c: &Client, base: &str, path: &str, ready_css: &str) {
    c.goto(&format!("{base}{path}")).await.expect("goto");
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(ready_css))
        .await
        .unwrap_or_else(|e| panic!("{path}: no {ready_css}: {e}"));
}

async fn confirm(c: &Client) {
    wait_js(
        c,
        "the confirm dialog",
        "return document.getElementById('confirm').open",
    )
    .await;
    click(c, "#confirm-ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let driver = chromedriver();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let s: Server = server(dir.path(), &db, &[], &[]);
    let api = Api {
        base: s.base.clone(),
        http: reqwest::Client::new(),
    };
    for p in pipelines(dir.path()) {
        api.post("/api/v1/pipelines", p).await;
    }
    // Two runs of `flaky` fail (no ok file yet): one is retried from its page, one from the DLQ.
    let mut failed = Vec::new();
    for _ in 0..2 {
        let r = api.post("/api/v1/pipelines/flaky/trigger", json!({})).await;
        failed.push(r["run"]["id"].as_str().expect("id").to_owned());
    }
    for run in &failed {
        api.wait_state(run, "failed").await;
    }
    std::fs::write(dir.path().join("ok"), "").expect("ok file");

    let mut shots = Shots {
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard"),
        taken: Vec::new(),
    };
    std::fs::create_dir_all(&shots.dir).expect("screenshot dir");
    let profile = tempfile::tempdir().expect("profile");
    let c = browser(&driver, profile.path(), &[]).await;
    let base = s.base.trim_end_matches('/').to_owned();

    // Overview.
    open(&c, &base, "/", "#q-pending").await;
    assert_eq!(title(&c).await, "Overview · Orbit");
    wait_js(
        &c,
        "live stream connected",
        "return document.getElementById('live').classList.contains('on')",
    )
    .await;
    let dlq = c
        .find(Locator::Css("#q-dlq .n"))
        .await
        .expect("dlq card")
        .text()
        .await
        .expect("text");
    assert_eq!(dlq, "2", "two dead letters on the overview");
    shots.take(&c, "overview").await;
    no_errors(&c, "overview").await;

    // Pipelines, then the trigger form: bad JSON is refused before sending.
    click(&c, "nav a[data-nav=pipelines]").await;
    wait_js(
        &c,
        "pipelines list",
        "return document.title === 'Pipelines · Orbit'",
    )
    .await;
    shots.take(&c, "pipelines").await;
    click(&c, "a[href='/pipelines/live']").await;
    let input = c
        .wait()
        .for_element(Locator::Css("#input"))
        .await
        .expect("input");
    assert_eq!(title(&c).await, "Pipeline live · Orbit");
    input.clear().await.expect("clear");
    input.send_keys("{\"n\": ").await.expect("type");
    wait_js(&c, "the form refuses bad JSON", "return document.getElementById('trigger-button').disabled && document.getElementById('input-error').textContent.includes('Not valid JSON')").await;
    shots.take(&c, "pipeline-invalid-input").await;
    input.send_keys("1}").await.expect("type");
    wait_js(
        &c,
        "the form accepts good JSON",
        "return !document.getElementById('trigger-button').disabled",
    )
    .await;
    // The API's own error is shown when it refuses the request.
    let priority = c
        .find(Locator::Css("input[name=priority]"))
        .await
        .expect("priority");
    priority.send_keys("99999999999").await.expect("type");
    click(&c, "#trigger-button").await;
    let shown = wait_js(
        &c,
        "the API's error",
        "return document.getElementById('trigger-error').textContent || null",
    )
    .await;
    assert!(
        shown
            .as_str()
            .is_some_and(|t| t.contains("invalid trigger body")),
        "error shown: {shown}"
    );
    shots.take(&c, "pipeline-api-error").await;
    let log = c.issue_cmd(BrowserLog).await.expect("browser log");
    let severe: Vec<&Value> = log
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(
        severe.len() == 1
            && severe[0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("/trigger") && m.contains("400")),
        "only the refused trigger failed: {severe:#?}"
    );
    priority.clear().await.expect("clear");
    c.execute("window.stillSamePage = true; return true", vec![])
        .await
        .expect("mark page");
    click(&c, "#trigger-button").await;

    // The run page: the graph goes green live, with no reload and no polling.
    wait_js(&c, "the run page", "return location.pathname.startsWith('/runs/') && document.querySelector('#dag [data-task=first]')").await;
    let run = c
        .current_url()
        .await
        .expect("url")
        .path()
        .trim_start_matches("/runs/")
        .to_owned();
    assert!(title(&c).await.starts_with("Run "), "title names the run");
    c.execute(
        "window.greenAt = null; const n = document.querySelector('#dag [data-task=second]');
         new MutationObserver(() => { if (n.dataset.state === 'succeeded' && !window.greenAt) window.greenAt = Date.now(); })
           .observe(n, { attributes: true });
         return true",
        vec![],
    )
    .await
    .expect("observe");
    wait_js(
        &c,
        "first running",
        "return document.querySelector('#dag [data-task=first]').dataset.state === 'running'",
    )
    .await;
    click(&c, "#dag [data-task=first]").await;
    // Its log streams while it runs: `start` shows before the task ends.
    wait_js(&c, "live log line", "const l = document.getElementById('task-log'); return l && l.textContent.includes('start') && document.querySelector('#dag [data-task=first]').dataset.state === 'running'").await;
    shots.take(&c, "run-live").await;
    wait_js(&c, "second green", "return window.greenAt").await;
    assert_eq!(
        c.execute("return window.stillSamePage === true", vec![])
            .await
            .expect("marker"),
        json!(true),
        "the page was not reloaded"
    );
    let green_at = c
        .execute("return window.greenAt", vec![])
        .await
        .expect("greenAt")
        .as_f64()
        .expect("ms");
    let detail = api.get(&format!("/api/v1/runs/{run}")).await;
    let second = detail["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["taskName"] == "second")
        .expect("second");
    let finished =
        chrono::DateTime::parse_from_rfc3339(second["finishedAt"].as_str().expect("finished"))
            .expect("time");
    let latency = green_at - finished.timestamp_millis() as f64;
    eprintln!("dashboard: `second` turned green {latency:.0} ms after its commit");
    assert!(
        latency < 2000.0,
        "state change reached the page in {latency} ms"
    );
    wait_js(
        &c,
        "run succeeded",
        "return document.querySelector('#run-state .badge').textContent === 'succeeded'",
    )
    .await;
    wait_js(
        &c,
        "first's log complete",
        "return document.getElementById('task-log').textContent.includes('end')",
    )
    .await;
    shots.take(&c, "run-succeeded").await;
    no_errors(&c, "run detail").await;

    // Runs list, filtered to failures.
    open(&c, &base, "/runs?status=failed", "table.runs").await;
    assert_eq!(title(&c).await, "Runs (failed) · Orbit");
    let rows = c
        .find_all(Locator::Css("table.runs tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2, "both failed runs listed");
    shots.take(&c, "runs").await;

    // A failed run: its error, then retry it from its page.
    click(&c, &format!("a[href='/runs/{}']", failed[0])).await;
    wait_js(
        &c,
        "failed run page",
        "return document.querySelector('#run-state .badge')?.textContent === 'failed'",
    )
    .await;
    click(&c, "#dag [data-task=flaky]").await;
    wait_js(
        &c,
        "the error",
        "return document.getElementById('task').textContent.includes('the ok file is missing')",
    )
    .await;
    shots.take(&c, "run-failed").await;
    click(&c, "#retry").await;
    confirm(&c).await;
    wait_js(
        &c,
        "the retried run succeeds live",
        "return document.querySelector('#run-state .badge').textContent === 'succeeded'",
    )
    .await;
    api.wait_state(&failed[0], "succeeded").await;
    no_errors(&c, "failed run").await;

    // The DLQ: retry the other failed run's task.
    open(&c, &base, "/dlq", "button.retry-dead").await;
    assert_eq!(title(&c).await, "Dead letters · Orbit");
    shots.take(&c, "dlq").await;
    click(&c, "button.retry-dead").await;
    confirm(&c).await;
    wait_js(
        &c,
        "the DLQ empties",
        "return document.getElementById('dead').textContent.includes('empty')",
    )
    .await;
    api.wait_state(&failed[1], "succeeded").await;
    no_errors(&c, "dlq").await;

    // Cancel a running run from its page.
    let r = api.post("/api/v1/pipelines/live/trigger", json!({})).await;
    let running = r["run"]["id"].as_str().expect("id").to_owned();
    open(&c, &base, &format!("/runs/{running}"), "#dag .node").await;
    wait_js(
        &c,
        "a running task",
        "return document.querySelector('#dag [data-task=first]').dataset.state === 'running'",
    )
    .await;
    click(&c, "#cancel").await;
    confirm(&c).await;
    wait_js(
        &c,
        "the run is cancelled live",
        "return document.querySelector('#run-state .badge').textContent === 'cancelled'",
    )
    .await;
    shots.take(&c, "run-cancelled").await;
    api.wait_state(&running, "cancelled").await;
    no_errors(&c, "cancel").await;

    // Task code history.
    open(&c, &base, "/tasks", "table").await;
    assert_eq!(title(&c).await, "Task code · Orbit");
    shots.take(&c, "tasks").await;
    click(&c, "a[href='/tasks/flaky?pipeline=flaky']").await;
    wait_js(
        &c,
        "history table",
        "return document.querySelector('#history tbody tr')",
    )
    .await;
    assert_eq!(title(&c).await, "Task flaky code history · Orbit");
    shots.take(&c, "task-history").await;
    no_errors(&c, "tasks").await;

    // A narrow window: nothing wider than the screen.
    c.set_window_size(390, 844).await.expect("narrow");
    open(&c, &base, &format!("/runs/{run}"), "#dag .node").await;
    let fits = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
            vec![],
        )
        .await
        .expect("width");
    assert_eq!(fits, json!(true), "the run page fits a phone-wide window");
    shots.take(&c, "run-narrow").await;
    no_errors(&c, "narrow").await;
    c.close().await.expect("close");

    // Dark mode.
    let profile = tempfile::tempdir().expect("profile");
    let dark = browser(
        &driver,
        profile.path(),
        &["--blink-settings=preferredColorScheme=0"],
    )
    .await;
    open(&dark, &base, &format!("/runs/{run}"), "#dag .node").await;
    let bg = dark
        .execute(
            "return getComputedStyle(document.body).backgroundColor",
            vec![],
        )
        .await
        .expect("bg");
    assert_eq!(bg, json!("rgb(17, 20, 24)"), "dark background in dark mode");
    shots.take(&dark, "run-dark").await;
    no_errors(&dark, "dark").await;
    dark.close().await.expect("close");

    for shot in &shots.taken {
        eprintln!("screenshot: {}", shot.display());
    }
}

#[tokio::test]
async fn events_stream_over_sse_and_websocket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let s = server(dir.path(), &db, &[], &[]);
    let api = Api {
        base: s.base.trim_end_matches('/').to_owned(),
        http: reqwest::Client::new(),
    };
    api.post("/api/v1/pipelines", pipelines(dir.path())[0].clone())
        .await;

    // Subscribed before the run exists: the stream starts with what happens next.
    let ws_url = format!("{}/api/v1/ws", api.base.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("ws connect");
    let sse = api
        .http
        .get(format!("{}/api/v1/events", api.base))
        .send()
        .await
        .expect("sse");
    assert_eq!(
        sse.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut sse = sse;
    let run = api.post("/api/v1/pipelines/live/trigger", json!({})).await["run"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // A run's stream also carries the lines its attempts print (`first` waits 1 s to print).
    let mut run_sse = api
        .http
        .get(format!("{}/api/v1/events?run={run}", api.base))
        .send()
        .await
        .expect("run stream");

    // Over the WebSocket: run_created first, then the rest, in order, until it succeeds.
    let mut kinds = Vec::new();
    let mut logs = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while !kinds.contains(&"run_succeeded".to_owned()) {
        let msg = tokio::time::timeout_at(end.into(), ws.next())
            .await
            .expect("events before the deadline")
            .expect("open")
            .expect("message");
        let v: Value = serde_json::from_str(msg.to_text().expect("text")).expect("json");
        match v["type"].as_str() {
            Some("event") => {
                assert_eq!(v["runId"], json!(run));
                kinds.push(v["kind"].as_str().expect("kind").to_owned());
            }
            Some("log") => logs.push(v["line"].as_str().expect("line").to_owned()),
            other => panic!("unexpected message type {other:?}: {v}"),
        }
    }
    assert_eq!(kinds.first().map(String::as_str), Some("run_created"));
    for k in ["task_started", "task_succeeded", "run_succeeded"] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    assert!(
        logs.is_empty(),
        "a stream of every run carries no log lines: {logs:?}"
    );

    // Over SSE: the same events, each with its id.
    let mut text = String::new();
    while !text.contains("run_succeeded") {
        let chunk = tokio::time::timeout_at(end.into(), sse.chunk())
            .await
            .expect("sse before the deadline")
            .expect("read")
            .expect("open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains("\nid: ") || text.starts_with("id: "),
        "{text}"
    );
    assert!(text.contains("\"kind\":\"run_created\""), "{text}");

    // The run's stream: its events and, as `log` events, the lines `first` printed live.
    let mut text = String::new();
    while !text.contains("run_succeeded") {
        let chunk = tokio::time::timeout_at(end.into(), run_sse.chunk())
            .await
            .expect("run stream before the deadline")
            .expect("read")
            .expect("open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: log"), "{text}");
    assert!(
        text.contains("\"line\":\"start\""),
        "live log lines: {text}"
    );

    // Resuming after an id replays from the log; a run filter gives that run's history.
    let replay = api
        .http
        .get(format!("{}/api/v1/events?run={run}", api.base))
        .send()
        .await
        .expect("replay");
    let mut replay = replay;
    let mut text = String::new();
    while !text.contains("run_succeeded") {
        let chunk = tokio::time::timeout_at(end.into(), replay.chunk())
            .await
            .expect("replay before the deadline")
            .expect("read")
            .expect("open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains("run_created"),
        "history from the start: {text}"
    );

    // Bad input is a JSON 4xx.
    for (path, status) in [
        ("/api/v1/events?run=nope", 404),
        ("/api/v1/events?after=x", 400),
        ("/api/v1/ws", 400),
    ] {
        let resp = api
            .http
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let body: Value = resp.json().await.expect("json error");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }

    // An open stream does not hold up a graceful shutdown.
    let _open = api
        .http
        .get(format!("{}/api/v1/events", api.base))
        .send()
        .await
        .expect("stream");
    let mut s = s;
    s.proc.signal("TERM");
    let exit = s.proc.wait_exit(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|e| e.success()),
        "server stopped with a stream open: {exit:?}"
    );
}

#[tokio::test]
async fn pages_are_open_and_the_api_takes_the_token_from_the_dashboard_cookie() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let token = "dashboard-test-token";
    let s = server(dir.path(), &db, &[], &[("ORBIT_API_TOKEN", token)]);
    let base = s.base.trim_end_matches('/');
    let http = reqwest::Client::new();
    let get = |path: &str, cookie: Option<&str>| {
        let mut req = http.get(format!("{base}{path}"));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };
    for page in ["/", "/runs/abc", "/dlq", "/assets/app.js"] {
        let resp = get(page, None).await.expect("page");
        assert_eq!(resp.status().as_u16(), 200, "{page} needs no token");
    }
    let refused = get("/api/v1/runs", None).await.expect("api");
    assert_eq!(refused.status().as_u16(), 401);
    let wrong = get("/api/v1/runs", Some("orbit_token=nope"))
        .await
        .expect("api");
    assert_eq!(wrong.status().as_u16(), 401);
    let ok = get(
        "/api/v1/runs",
        Some(&format!("theme=dark; orbit_token={token}")),
    )
    .await
    .expect("api");
    assert_eq!(
        ok.status().as_u16(),
        200,
        "the dashboard's cookie is accepted"
    );
    let missing = get("/assets/nope.js", None).await.expect("asset");
    assert_eq!(missing.status().as_u16(), 404);
}

/// A task output over the storage threshold is shown through `GET /api/v1/storage/…`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_are_shown_from_object_storage() {
    let driver = chromedriver();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let s = server(dir.path(), &db, &[], &[("ORBIT_STORAGE_THRESHOLD", "1KiB")]);
    let api = Api {
        base: s.base.clone(),
        http: reqwest::Client::new(),
    };
    let yaml = "name: big\ntasks:\n  - name: produce\n    type: script\n    source: |\n      import json\n      print(json.dumps({\"rows\": [\"row-%d\" % i for i in range(400)]}))\n  - name: use\n    type: sleep\n    needs: produce\n    duration: 0s\n";
    api.post("/api/v1/pipelines", json!({ "yaml": yaml })).await;
    let run = api.post("/api/v1/pipelines/big/trigger", json!({})).await;
    let run = run["run"]["id"].as_str().expect("id").to_owned();
    api.wait_state(&run, "succeeded").await;

    let profile = tempfile::tempdir().expect("profile");
    let c = browser(&driver, profile.path(), &[]).await;
    let base = s.base.trim_end_matches('/').to_owned();
    open(
        &c,
        &base,
        &format!("/runs/{run}"),
        "#dag [data-task=produce]",
    )
    .await;
    click(&c, "#dag [data-task=produce]").await;
    let shown = wait_js(
        &c,
        "the stored output",
        "const p = document.getElementById('task-output'); return p && p.dataset.object && p.textContent.includes('row-399') && p.textContent",
    )
    .await;
    assert!(
        shown.as_str().is_some_and(|t| t.contains("\"row-0\"")),
        "{shown}"
    );
    let link = wait_js(
        &c,
        "the link to the object",
        "const a = document.querySelector('#task a[href^=\"/api/v1/storage/local/runs/\"]'); return a && a.getAttribute('href')",
    )
    .await;
    assert_eq!(
        link,
        json!(format!(
            "/api/v1/storage/local/runs/{run}/produce/attempt-1.json"
        ))
    );
    c.execute(
        "document.querySelector('#task a[href^=\"/api/v1/storage/\"]').scrollIntoView()",
        vec![],
    )
    .await
    .expect("scroll");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(shots.join("run-large-output.png"), png).expect("write screenshot");
    no_errors(&c, "run with a large output").await;

    // Downstream, the same object is shown as its input.
    click(&c, "#dag [data-task=use]").await;
    wait_js(
        &c,
        "the upstream output",
        "const p = document.getElementById('upstream-0'); return p && p.dataset.object && p.textContent.includes('row-399')",
    )
    .await;
    no_errors(&c, "a task whose input is stored").await;
    c.close().await.expect("close");
}

/// A run too big for a graph: the run page shows its task counts and a table of its task runs
/// a page at a time, filters it by state, and opens a task from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_run_is_shown_as_a_paged_table() {
    let driver = chromedriver();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("orbit.db").display());
    // One slot: a few tasks succeed while the rest wait their turn.
    let s = server(dir.path(), &db, &["--workers", "1"], &[]);
    let api = Api {
        base: s.base.clone(),
        http: reqwest::Client::new(),
    };
    let tasks: Vec<Value> = (0..1500)
        .map(|i| json!({"name": format!("t{i:05}"), "type": "sleep", "duration": "50ms"}))
        .collect();
    api.post("/api/v1/pipelines", json!({"name": "wide", "tasks": tasks}))
        .await;
    let run = api.post("/api/v1/pipelines/wide/trigger", json!({})).await;
    let run = run["run"]["id"].as_str().expect("id").to_owned();

    let profile = tempfile::tempdir().expect("profile");
    let c = browser(&driver, profile.path(), &[]).await;
    let base = s.base.trim_end_matches('/').to_owned();
    open(
        &c,
        &base,
        &format!("/runs/{run}"),
        "#task-table tr[data-task]",
    )
    .await;
    let rows = wait_js(
        &c,
        "the first page",
        "const r = document.querySelectorAll('#task-table tr[data-task]'); return r.length === 100 && r[0].dataset.task",
    )
    .await;
    assert_eq!(rows, json!("t00000"));
    assert!(
        c.find(Locator::Css("#dag")).await.is_err(),
        "no graph for 1500 tasks"
    );
    click(&c, "#tasks-next").await;
    wait_js(
        &c,
        "the second page",
        "const r = document.querySelectorAll('#task-table tr[data-task]'); return r.length && r[0].dataset.task === 't00100'",
    )
    .await;
    // Filtered to the succeeded ones, which the worker is adding to as we look.
    c.execute(
        "const s = document.getElementById('task-state'); s.value = 'succeeded'; s.dispatchEvent(new Event('change'));",
        vec![],
    )
    .await
    .expect("filter");
    wait_js(
        &c,
        "succeeded tasks only",
        "const r = [...document.querySelectorAll('#task-table tr[data-task]')]; return r.length > 0 && r.every((x) => x.textContent.includes('succeeded'))",
    )
    .await;
    // The table is redrawn as tasks finish: click in the page, not through a held element.
    c.execute(
        "document.querySelector('#task-table tr[data-task]').click()",
        vec![],
    )
    .await
    .expect("click a task");
    wait_js(
        &c,
        "the task panel",
        "const h = document.querySelector('#task h2'); return h && h.textContent.includes('t00000')",
    )
    .await;
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(shots.join("run-big.png"), png).expect("write screenshot");
    no_errors(&c, "a big run").await;
    c.close().await.expect("close");
}

/// A 10,000-element `for_each` is one node in the graph whose counts move while the children
/// run, and its children open as a paged list, filtered by state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10000_element_map_is_one_node_with_live_counts_and_a_paged_list() {
    let driver = chromedriver();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let s = server(dir.path(), &db, &["--workers", "4"], &[]);
    let api = Api {
        base: s.base.clone(),
        http: reqwest::Client::new(),
    };
    let items: Vec<u64> = (0..10_000).collect();
    api.post(
        "/api/v1/pipelines",
        json!({"name": "mapped", "tasks": [
            {"name": "each", "type": "sleep", "duration": "5ms", "for_each": "{{ input.items }}"},
            {"name": "report", "type": "sleep", "duration": "0s", "needs": ["each"]}
        ]}),
    )
    .await;
    let run = api
        .post(
            "/api/v1/pipelines/mapped/trigger",
            json!({"input": {"items": items}}),
        )
        .await;
    let run = run["run"]["id"].as_str().expect("id").to_owned();

    let profile = tempfile::tempdir().expect("profile");
    let c = browser(&driver, profile.path(), &[]).await;
    let base = s.base.trim_end_matches('/').to_owned();
    open(&c, &base, &format!("/runs/{run}"), "#dag svg").await;
    let nodes = wait_js(
        &c,
        "the graph",
        "return [...document.querySelectorAll('#dag .node')].map((n) => n.dataset.task).join(',')",
    )
    .await;
    assert_eq!(nodes, json!("each,report"), "one node for 10,000 children");
    let line = "return document.querySelector('#dag .node[data-task=\"each\"] .state').textContent";
    let first = wait_js(
        &c,
        "the children counted on the node",
        &format!("const t = (() => {{ {line} }})(); return t.includes('/10,000 done') && t"),
    )
    .await;
    // Counts move as children finish, without reloading the page.
    let later = wait_js(
        &c,
        "the counts to move",
        &format!(
            "const t = (() => {{ {line} }})(); return t !== {first} && t.includes('/10,000 done') && t"
        ),
    )
    .await;
    assert_ne!(first, later);
    wait_js(
        &c,
        "why the run's tasks wait",
        "const l = [...document.querySelectorAll('#why-lines li')].map((x) => x.textContent); return l.some((t) => t.includes('each') && t.includes('waiting for its children')) && l.some((t) => t.includes('report') && t.includes('waiting on `each`'))",
    )
    .await;
    c.execute(
        "document.querySelector('#dag .node[data-task=\"each\"]').dispatchEvent(new MouseEvent('click', {bubbles: true}))",
        vec![],
    )
    .await
    .expect("open the node");
    let rows = wait_js(
        &c,
        "the first page of children",
        "const r = document.querySelectorAll('#child-rows tr'); return r.length === 100 && r[0].cells[0].textContent",
    )
    .await;
    assert_eq!(rows, json!("0"));
    let range = wait_js(
        &c,
        "the range",
        "const e = document.getElementById('children-range'); return e && e.textContent",
    )
    .await;
    assert_eq!(range, json!("1–100 of 10,000"));
    wait_js(
        &c,
        "the next page button",
        "const b = document.getElementById('children-next'); if (!b || b.disabled) return false; b.click(); return true",
    )
    .await;
    wait_js(
        &c,
        "the second page",
        "const r = document.querySelectorAll('#child-rows tr'); return r.length && r[0].cells[0].textContent === '100'",
    )
    .await;
    wait_js(
        &c,
        "the state filter",
        "const s = document.getElementById('child-state'); if (!s || ![...s.options].some((o) => o.value === 'succeeded')) return false; s.value = 'succeeded'; s.dispatchEvent(new Event('change')); return true",
    )
    .await;
    wait_js(
        &c,
        "succeeded children only",
        "const r = [...document.querySelectorAll('#child-rows tr')]; return r.length > 0 && r.every((x) => x.textContent.includes('succeeded'))",
    )
    .await;
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(shots.join("run-map.png"), png).expect("write screenshot");
    no_errors(&c, "a map run").await;
    c.close().await.expect("close");
}

/// A run whose task runs another pipeline links to that sub-run, and the sub-run back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_run_and_its_parent_link_to_each_other() {
    let driver = chromedriver();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let s = server(dir.path(), &db, &["--workers", "4"], &[]);
    let api = Api {
        base: s.base.clone(),
        http: reqwest::Client::new(),
    };
    api.post(
        "/api/v1/pipelines",
        json!({"name": "inner", "output": "{{ tasks.nap.output }}", "tasks": [
            {"name": "nap", "type": "sleep", "duration": "10ms"}
        ]}),
    )
    .await;
    api.post(
        "/api/v1/pipelines",
        json!({"name": "outer", "tasks": [
            {"name": "call", "type": "pipeline", "pipeline": "inner"}
        ]}),
    )
    .await;
    let run = api.post("/api/v1/pipelines/outer/trigger", json!({})).await;
    let run = run["run"]["id"].as_str().expect("id").to_owned();
    api.wait_state(&run, "succeeded").await;

    let profile = tempfile::tempdir().expect("profile");
    let c = browser(&driver, profile.path(), &[]).await;
    let base = s.base.trim_end_matches('/').to_owned();
    open(&c, &base, &format!("/runs/{run}"), "#sub-runs a").await;
    c.execute(
        "document.querySelector('#dag .node[data-task=\"call\"]').dispatchEvent(new MouseEvent('click', {bubbles: true}))",
        vec![],
    )
    .await
    .expect("open the task");
    wait_js(
        &c,
        "the task's sub-run",
        "const p = document.querySelector('#task .sub-run'); return p && p.textContent.includes('inner')",
    )
    .await;
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(shots.join("run-sub.png"), png).expect("write screenshot");
    // The facts are redrawn as events arrive: click in the page, not through a held element.
    wait_js(
        &c,
        "the sub-run link",
        "const a = document.querySelector('#sub-runs a'); if (!a) return false; a.click(); return true",
    )
    .await;
    let parent = wait_js(
        &c,
        "the sub-run's page",
        "const a = document.getElementById('parent-run'); return a && a.getAttribute('href')",
    )
    .await;
    assert_eq!(parent, json!(format!("/runs/{run}")));
    no_errors(&c, "a sub-run").await;
    c.close().await.expect("close");
}

/// A run that waits for an approval: the page shows it with its message and approvers; a
/// stranger's rejection is refused, the approver's approval is recorded (who, comment) and the
/// run goes on; the timeline draws each task with the park and marks the critical path; "Re-run
/// from here" makes a new run that keeps the earlier outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_a_timeline_and_a_rerun_from_the_run_page() {
    let driver = chromedriver();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let s = server(dir.path(), &db, &["--workers", "4"], &[]);
    let api = Api {
        base: s.base.clone(),
        http: reqwest::Client::new(),
    };
    api.post(
        "/api/v1/pipelines",
        json!({"name": "release", "tasks": [
            {"name": "build", "type": "shell", "command": ["sh", "-c", "sleep 0.3; echo built"]},
            {"name": "test", "type": "shell", "command": ["sh", "-c", "sleep 0.2; echo ok"]},
            {"name": "review", "type": "approval", "message": "Ship {{ input.version }}?", "approvers": ["ann"], "needs": ["build", "test"]},
            {"name": "ship", "type": "shell", "command": "echo shipped {{ input.version }}", "needs": ["review"]}
        ]}),
    )
    .await;
    let run = api
        .post(
            "/api/v1/pipelines/release/trigger",
            json!({"input": {"version": "1.4"}}),
        )
        .await;
    let run = run["run"]["id"].as_str().expect("id").to_owned();

    let profile = tempfile::tempdir().expect("profile");
    let c = browser(&driver, profile.path(), &[]).await;
    let base = s.base.trim_end_matches('/').to_owned();
    open(&c, &base, &format!("/runs/{run}"), "#dag").await;
    wait_js(
        &c,
        "the pending approval",
        "const p = document.querySelector('#approvals .approval'); return p && p.textContent.includes('Ship 1.4?') && p.textContent.includes('ann')",
    )
    .await;
    wait_js(
        &c,
        "the timeline's lanes",
        "return document.querySelectorAll('#timeline .tl-lane').length === 4 && document.querySelector('#timeline .tl-lane[data-task=\"review\"] .k-parked')",
    )
    .await;
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    std::fs::write(
        shots.join("approval.png"),
        c.screenshot().await.expect("screenshot"),
    )
    .expect("write screenshot");
    // A stranger: refused, and the approval stays.
    c.execute(
        "const p = document.querySelector('#approvals .approval'); p.querySelector('.approver').value = 'mallory'; p.querySelector('.reject').click();",
        vec![],
    )
    .await
    .expect("reject as mallory");
    wait_js(
        &c,
        "the refusal",
        "const t = document.getElementById('toast'); return t.textContent.includes('Reject failed') && t.textContent.includes('approvers are: ann')",
    )
    .await;
    assert_eq!(api.run_state(&run).await, "running");
    // The refused request is the only error the page saw so far.
    let log = c.issue_cmd(BrowserLog).await.expect("browser log");
    let severe: Vec<&Value> = log
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(
        severe.iter().all(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("decision") && m.contains("403"))),
        "{severe:#?}"
    );
    c.execute(
        "const p = document.querySelector('#approvals .approval'); p.querySelector('.approver').value = 'ann'; p.querySelector('.comment').value = 'tests are green'; p.querySelector('.approve').click();",
        vec![],
    )
    .await
    .expect("approve as ann");
    api.wait_state(&run, "succeeded").await;
    wait_js(
        &c,
        "the approval to go",
        "return !document.querySelector('#approvals .approval')",
    )
    .await;
    let detail = api.get(&format!("/api/v1/runs/{run}?taskLimit=10")).await;
    let review = detail["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["taskName"] == "review"))
        .cloned()
        .expect("review");
    assert_eq!(review["output"]["decidedBy"], "ann");
    assert_eq!(review["output"]["comment"], "tests are green");
    // The timeline of the finished run: the critical path goes through the slower of the two
    // roots (build), the approval and ship.
    let critical = wait_js(
        &c,
        "the critical path",
        "const l = [...document.querySelectorAll('#timeline .tl-lane.critical')].map((e) => e.dataset.task); return l.length === 3 && l.join(',')",
    )
    .await;
    assert_eq!(critical, json!("build,review,ship"));
    c.execute(
        "document.querySelector('#dag .node[data-task=\"review\"]').dispatchEvent(new MouseEvent('click', {bubbles: true}))",
        vec![],
    )
    .await
    .expect("open review");
    wait_js(
        &c,
        "who approved",
        "const w = document.querySelector('#task .wake'); return w && w.textContent.includes('approved by ann') && w.textContent.includes('tests are green')",
    )
    .await;
    std::fs::write(
        shots.join("timeline.png"),
        c.screenshot().await.expect("screenshot"),
    )
    .expect("write screenshot");
    // Re-run from ship: a new run keeps build, test and review.
    c.execute(
        "document.querySelector('#dag .node[data-task=\"ship\"]').dispatchEvent(new MouseEvent('click', {bubbles: true}))",
        vec![],
    )
    .await
    .expect("open ship");
    // The panel is redrawn as events arrive: click in the page, not through a held element.
    wait_js(
        &c,
        "the re-run button",
        "const b = document.getElementById('rerun-here'); const h = document.querySelector('#task h2'); if (!b || !h || !h.textContent.includes('ship')) return false; b.click(); return true",
    )
    .await;
    // The dialog offers the run's input to edit; bad JSON is refused in place.
    let offered = wait_js(
        &c,
        "the re-run dialog",
        "const d = document.getElementById('rerun'); return d.open && JSON.parse(document.getElementById('rerun-input').value)",
    )
    .await;
    assert_eq!(offered, json!({"version": "1.4"}));
    c.execute(
        "document.getElementById('rerun-input').value = '{\"version\": '",
        vec![],
    )
    .await
    .expect("type bad JSON");
    click(&c, "#rerun-ok").await;
    wait_js(
        &c,
        "the JSON error",
        "const e = document.getElementById('rerun-error'); return document.getElementById('rerun').open && e.textContent.startsWith('run input:')",
    )
    .await;
    std::fs::write(
        shots.join("rerun-dialog.png"),
        c.screenshot().await.expect("screenshot"),
    )
    .expect("write screenshot");
    c.execute(
        "document.getElementById('rerun-input').value = '{\"version\": \"1.5\"}'",
        vec![],
    )
    .await
    .expect("type the new input");
    click(&c, "#rerun-ok").await;
    let rerun_of = wait_js(
        &c,
        "the new run's page",
        "const a = document.getElementById('rerun-of'); return a && a.getAttribute('href')",
    )
    .await;
    assert_eq!(rerun_of, json!(format!("/runs/{run}")));
    let new_id = wait_js(
        &c,
        "the new run's id",
        "return location.pathname.split('/').pop()",
    )
    .await;
    let new_id = new_id.as_str().expect("id").to_owned();
    assert_ne!(new_id, run);
    api.wait_state(&new_id, "succeeded").await;
    let kept = api
        .get(&format!("/api/v1/runs/{new_id}?taskLimit=10"))
        .await;
    assert_eq!(
        kept["run"]["input"],
        json!({"version": "1.5"}),
        "the edited input"
    );
    for t in kept["tasks"].as_array().expect("tasks") {
        assert_eq!(t.get("origin").is_some(), t["taskName"] != "ship", "{t}");
    }
    wait_js(
        &c,
        "kept lanes",
        "const l = [...document.querySelectorAll('#timeline .tl-lane')]; return l.filter((e) => e.textContent.includes('(kept)')).length === 3 && l.filter((e) => e.classList.contains('critical')).map((e) => e.dataset.task).join(',') === 'ship'",
    )
    .await;
    std::fs::write(
        shots.join("rerun.png"),
        c.screenshot().await.expect("screenshot"),
    )
    .expect("write screenshot");
    no_errors(&c, "approvals, timeline, re-run").await;
    c.close().await.expect("close");
}
