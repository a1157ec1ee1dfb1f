//! A real `orbit server`, tried as a web page and an attacker would: every request goes over a
//! raw TCP connection so that `Host`, `Origin` and content types are exactly what a browser (or
//! a DNS-rebinding page) would send.

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::{Server, server};

struct Raw {
    addr: String,
}

/// The status line's code, the headers and the body of one HTTP/1.1 exchange.
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

impl Raw {
    fn new(s: &Server) -> Raw {
        Raw {
            addr: s.base.trim_start_matches("http://").to_owned(),
        }
    }

    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut stream = TcpStream::connect(&self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let has_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !has_host {
            req.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("Connection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).expect("write");
        stream.write_all(body).expect("write body");
        let mut raw = Vec::new();
        // A stream (SSE, a WebSocket) never ends: its head is all these checks need.
        let mut buf = [0u8; 8192];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if method == "GET" && (path.contains("/events") || path.contains("/ws")) {
                break;
            }
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // Chunked bodies: the JSON is the middle line.
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body.lines().nth(1).unwrap_or_default().to_owned()
        } else {
            body.to_owned()
        };
        Answer {
            status,
            headers: head.to_owned(),
            body,
        }
    }
}

const PIPELINE: &str =
    r#"{"yaml": "name: p\ntasks:\n  - {name: a, type: sleep, duration: 30s}\n"}"#;

fn setup(env: &[(&str, &str)]) -> (tempfile::TempDir, Server, Raw) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let s = server(dir.path(), &url, &["--workers", "2"], env);
    let raw = Raw::new(&s);
    let created = raw.send(
        "POST",
        "/api/v1/pipelines",
        &[("Content-Type", "application/json")],
        PIPELINE.as_bytes(),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    (dir, s, raw)
}

fn runs(raw: &Raw) -> usize {
    raw.send("GET", "/api/v1/runs", &[], b"").json()["runs"]
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn a_web_page_cannot_trigger_cancel_or_listen() {
    let (_dir, _s, raw) = setup(&[]);
    let own = format!("http://{}", raw.addr);

    // fetch(url, {method: "POST", mode: "no-cors", body: "x"}) from another site.
    let a = raw.send(
        "POST",
        "/api/v1/pipelines/p/trigger",
        &[
            ("Origin", "http://evil.example"),
            ("Content-Type", "text/plain;charset=UTF-8"),
        ],
        b"{}",
    );
    assert_eq!(
        (a.status, a.json()["error"]["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    // A form post from another site carries no JSON content type either.
    let a = raw.send(
        "POST",
        "/api/v1/pipelines/p/trigger",
        &[
            ("Origin", "null"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"a=b",
    );
    assert_eq!(a.status, 403);
    // A body without a content type (taken as empty input before) is refused too.
    let a = raw.send(
        "POST",
        "/api/v1/pipelines/p/trigger",
        &[],
        b"{\"input\": {}}",
    );
    assert_eq!(
        (a.status, a.json()["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    assert_eq!(runs(&raw), 0, "nothing was triggered");

    // curl with no body, and the dashboard (same origin, JSON): both work.
    let ok = raw.send("POST", "/api/v1/pipelines/p/trigger", &[], b"");
    assert_eq!(ok.status, 201, "{}", ok.body);
    let run = ok.json()["run"]["id"].as_str().expect("run id").to_owned();
    let ok = raw.send(
        "POST",
        "/api/v1/pipelines/p/trigger",
        &[("Origin", &own), ("Content-Type", "application/json")],
        b"{\"input\": {\"n\": 1}}",
    );
    assert_eq!(ok.status, 201, "{}", ok.body);

    // Cancelling from a page: text/plain with an Origin, or a bodyless POST with one.
    let cancel = format!("/api/v1/runs/{run}/cancel");
    let a = raw.send(
        "POST",
        &cancel,
        &[
            ("Origin", "http://evil.example"),
            ("Content-Type", "text/plain"),
        ],
        b"x",
    );
    assert_eq!(a.status, 403);
    let a = raw.send("POST", &cancel, &[("Origin", "http://evil.example")], b"");
    assert_eq!(a.status, 403);
    let a = raw.send("POST", &cancel, &[("Content-Type", "text/plain")], b"x");
    assert_eq!(a.status, 415);
    let state = raw
        .send("GET", &format!("/api/v1/runs/{run}"), &[], b"")
        .json()["run"]["state"]
        .clone();
    assert_ne!(state, "cancelled", "the run was not cancelled");

    // Live streams read from another origin.
    let ws = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let mut foreign = ws.to_vec();
    foreign.push(("Origin", "http://evil.example"));
    assert_eq!(raw.send("GET", "/api/v1/ws", &foreign, b"").status, 403);
    let mut same = ws.to_vec();
    same.push(("Origin", &own));
    assert_eq!(
        raw.send("GET", "/api/v1/ws", &same, b"").status,
        101,
        "the dashboard's own origin"
    );
    assert_eq!(
        raw.send("GET", "/api/v1/ws", &ws, b"").status,
        101,
        "a program without an Origin"
    );
    let sse = raw.send(
        "GET",
        "/api/v1/events",
        &[("Origin", "http://evil.example")],
        b"",
    );
    assert_eq!(sse.status, 403);
    let sse = raw.send("GET", "/api/v1/events", &[("Origin", &own)], b"");
    assert_eq!(sse.status, 200);
}

#[test]
fn dns_rebinding_cannot_reach_a_tokenless_server() {
    let (dir, _s, raw) = setup(&[]);
    let port = raw
        .addr
        .rsplit_once(':')
        .map(|(_, p)| p.to_owned())
        .expect("port");
    let evil_host = format!("evil.example:{port}");
    let marker = dir.path().join("pwned");
    let body = format!(
        r#"{{"taskId": "x", "task": {{"type": "shell", "command": ["touch", "{}"]}}}}"#,
        marker.display()
    );
    let a = raw.send(
        "POST",
        "/api/v1/queue/task",
        &[
            ("Host", &evil_host),
            ("Origin", &format!("http://{evil_host}")),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    assert_eq!(
        (a.status, a.json()["error"]["code"].as_str()),
        (403, Some("host_not_allowed"))
    );
    // Reads are refused as well: a rebound page could otherwise read every run.
    let a = raw.send("GET", "/api/v1/runs", &[("Host", &evil_host)], b"");
    assert_eq!(a.status, 403);
    let a = raw.send("GET", "/", &[("Host", &evil_host)], b"");
    assert_eq!(a.status, 403);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!marker.exists(), "the shell command never ran");
    // Loopback names are served.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(
            raw.send("GET", "/api/v1/health", &[("Host", &host)], b"")
                .status,
            200,
            "{host}"
        );
    }
}

#[test]
fn allowed_hosts_and_cors_origins_open_what_they_name() {
    let (_dir, _s, raw) = setup(&[
        ("ORBIT_ALLOWED_HOSTS", "orbit.internal"),
        ("ORBIT_CORS_ORIGINS", "https://app.example.com"),
    ]);
    let port = raw
        .addr
        .rsplit_once(':')
        .map(|(_, p)| p.to_owned())
        .expect("port");
    let named = format!("orbit.internal:{port}");
    assert_eq!(
        raw.send("GET", "/api/v1/health", &[("Host", &named)], b"")
            .status,
        200
    );
    let pre = raw.send(
        "OPTIONS",
        "/api/v1/pipelines/p/trigger",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        b"",
    );
    assert_eq!(pre.status, 200, "{}", pre.headers);
    assert!(
        pre.headers
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example.com"),
        "{}",
        pre.headers
    );
    let post = raw.send(
        "POST",
        "/api/v1/pipelines/p/trigger",
        &[
            ("Origin", "https://app.example.com"),
            ("Content-Type", "application/json"),
        ],
        b"{}",
    );
    assert_eq!(post.status, 201, "{}", post.body);
    assert!(
        post.headers
            .to_ascii_lowercase()
            .contains("access-control-allow-origin")
    );
    let other = raw.send(
        "POST",
        "/api/v1/pipelines/p/trigger",
        &[
            ("Origin", "https://other.example.com"),
            ("Content-Type", "application/json"),
        ],
        b"{}",
    );
    assert_eq!(other.status, 403);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn forged_uploads_are_refused_before_their_body_is_read() {
    let (_dir, s, raw) = setup(&[("ORBIT_SECRET_KEY", "hostile-test-secret-0123456789")]);
    let before = rss_kib(s.proc.pid());
    let size: usize = 300 * 1024 * 1024;
    let started = Instant::now();
    let uploads: Vec<_> = (0..3)
        .map(|i| {
            let addr = raw.addr.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&addr).expect("connect");
                stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
                let head = format!(
                    "PUT /api/v1/storage/local/runs/x/t{i}/attempt-1.json?token=forged HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).expect("head");
                let chunk = vec![b' '; 1 << 20];
                let mut sent = 0;
                // The server answers and closes long before 300 MB: writing then fails.
                while sent < size {
                    if stream.write_all(&chunk).is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                (sent, answer)
            })
        })
        .collect();
    let mut peak = before;
    while uploads.iter().any(|u| !u.is_finished()) {
        peak = peak.max(rss_kib(s.proc.pid()));
        std::thread::sleep(Duration::from_millis(20));
    }
    for u in uploads {
        let (sent, answer) = u.join().expect("upload thread");
        assert!(
            sent < size,
            "the server read all {sent} bytes of a forged upload"
        );
        if !answer.is_empty() {
            assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        }
    }
    let grew_mib = peak.saturating_sub(before) / 1024;
    println!(
        "3 forged 300 MB uploads refused in {:?}; server RSS {} MiB -> peak {} MiB",
        started.elapsed(),
        before / 1024,
        peak / 1024
    );
    assert!(grew_mib < 64, "server RSS grew by {grew_mib} MiB");
}

#[test]
fn errors_say_nothing_internal() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Object storage whose `runs/` is a file: every write of a run's object fails inside the
    // backend (with an OS error that names the path).
    let objects = dir.path().join("objects");
    let url = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let s = server(
        dir.path(),
        &url,
        &[],
        &[
            ("STORAGE_PROVIDER", "local"),
            ("STORAGE_PATH", objects.to_str().expect("utf-8 path")),
            ("ORBIT_STORAGE_THRESHOLD", "10"),
        ],
    );
    std::fs::write(objects.join("runs"), "not a directory").expect("file");
    let raw = Raw::new(&s);
    let created = raw.send(
        "POST",
        "/api/v1/pipelines",
        &[("Content-Type", "application/json")],
        PIPELINE.as_bytes(),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    // An input over the threshold must be written to the broken backend.
    let a = raw.send(
        "POST",
        "/api/v1/pipelines/p/trigger",
        &[("Content-Type", "application/json")],
        br#"{"input": {"text": "larger than ten bytes"}}"#,
    );
    assert!(
        a.status >= 500,
        "{} {}; objects: {:?}",
        a.status,
        a.body,
        std::fs::read_to_string(&s.stderr)
    );
    let id = a.json()["error"]["requestId"]
        .as_str()
        .expect("a request id")
        .to_owned();
    assert!(
        !a.body.contains(dir.path().to_str().expect("utf-8")),
        "no path: {}",
        a.body
    );
    assert!(
        !a.body.to_ascii_lowercase().contains("directory"),
        "no OS text: {}",
        a.body
    );
    assert!(a.headers.contains(&id), "the id is in x-request-id too");
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&s.stderr).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains(&id)) {
            assert!(line.contains("request failed"), "{line}");
            break;
        }
        assert!(
            Instant::now() < end,
            "the log has no line with request id {id}: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Over-long keys and names: a 400 or 404, never the server's paths.
    let long = "a".repeat(10_000);
    let a = raw.send(
        "GET",
        &format!("/api/v1/storage/local/runs/{long}"),
        &[],
        b"",
    );
    assert!(
        a.status == 400 || a.status == 404,
        "{} {}",
        a.status,
        a.body
    );
    assert!(a.body.len() < 1024, "{} bytes", a.body.len());
    let a = raw.send("GET", &format!("/api/v1/pipelines/{long}"), &[], b"");
    assert_eq!(a.status, 404);
    assert!(a.body.len() < 1024);
    // A 4xx names its request too, as the header does.
    let id = a.json()["error"]["requestId"]
        .as_str()
        .expect("a request id in a 404")
        .to_owned();
    assert!(
        a.headers.contains(&format!("x-request-id: {id}")),
        "{}",
        a.headers
    );
    let a = raw.send(
        "POST",
        "/api/v1/pipelines",
        &[("Content-Type", "application/json")],
        b"{not json",
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.json()["error"]["requestId"].is_string(), "{}", a.body);
    // Control and bidi characters come back escaped.
    let a = raw.send("GET", "/api/v1/pipelines/ab%E2%80%AEcd%1B", &[], b"");
    assert_eq!(a.status, 404);
    assert!(
        a.body.contains("\\\\u{202e}") && a.body.contains("\\\\u{1b}"),
        "{}",
        a.body
    );
}

#[test]
fn an_idempotency_key_cannot_swallow_a_different_request() {
    let (_dir, _s, raw) = setup(&[]);
    let json = [("Content-Type", "application/json")];
    let trigger = |body: &str| {
        raw.send(
            "POST",
            "/api/v1/pipelines/p/trigger",
            &json,
            body.as_bytes(),
        )
    };
    let first = trigger(r#"{"input": {"amount": 1}, "idempotencyKey": "order-7"}"#);
    assert_eq!(first.status, 201, "{}", first.body);
    let run = first.json()["run"]["id"].clone();
    let again = trigger(r#"{"input": {"amount": 1}, "idempotencyKey": "order-7"}"#);
    assert_eq!(
        (again.status, again.json()["run"]["id"].clone()),
        (200, run.clone())
    );
    let other = trigger(r#"{"input": {"amount": 2}, "idempotencyKey": "order-7"}"#);
    assert_eq!(other.status, 409, "{}", other.body);
    let e = other.json();
    assert_eq!(e["error"]["code"], "idempotency_key_reused");
    assert_eq!(e["error"]["details"]["run"], run);
    assert_eq!(runs(&raw), 1, "the different request created nothing");
}
