//! Runs' traces reach an OTLP/HTTP receiver (built here on the official protobuf messages) as
//! one tree per run: the run, its trigger, and per attempt its wait in the queue, the attempt
//! and the commit; a shell task continues the trace through `TRACEPARENT`, an SDK worker
//! through the `traceparent` of its calls.

mod support;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{CliEnv, server};

/// A collector's OTLP/HTTP endpoint keeping every span it is sent, and the service name of each.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

async fn receiver() -> Receiver {
    let spans: Arc<Mutex<Vec<(String, Span)>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for rs in request.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref())
                        .map(|v| format!("{:?}", v.value))
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        let mut kept = kept.lock().expect("lock");
                        kept.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
                    }
                }
                ExportTraceServiceResponse::default().encode_to_vec()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, spans }
}

impl Receiver {
    fn trace(&self, run: &str) -> Vec<Span> {
        let id = hex(&uuid::Uuid::parse_str(run).expect("uuid").into_bytes());
        let spans = self.spans.lock().expect("lock");
        spans
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == id)
            .map(|(_, s)| s.clone())
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "one `{name}` span in {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_task_run_is_one_span_tree_and_its_shell_task_continues_it() {
    let otlp = receiver().await;
    let env = CliEnv::new();
    env.file(
        "three.yaml",
        "name: three\ntasks:\n  - name: a\n    type: shell\n    command: ['sh', '-c', 'echo \"$TRACEPARENT\" > traceparent.txt']\n  - name: b\n    type: shell\n    needs: a\n    command: ['true']\n  - name: c\n    type: shell\n    needs: a\n    command: ['false']\n    retry: { max_attempts: 1 }\n",
    );
    let out = env
        .orbit()
        .args(["run", "three.yaml"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.url)
        .env("OTEL_SERVICE_NAME", "orbit-test")
        .output()
        .expect("orbit run");
    assert_eq!(
        out.status.code(),
        Some(1),
        "c fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = env.json(&["runs", "--limit", "1"])[0]["id"]
        .as_str()
        .expect("run id")
        .to_owned();
    // The command flushed its spans before it exited.
    let spans = otlp.trace(&run);
    let root = named(&spans, "run three");
    assert!(root.parent_span_id.is_empty(), "the run is the root");
    assert_eq!(attr(root, "orbit.state"), Some("failed"));
    assert_eq!(
        root.status.as_ref().map(|s| s.code),
        Some(2),
        "error status"
    );
    let trigger = named(&spans, "trigger");
    assert_eq!(trigger.parent_span_id, root.span_id);
    for task in ["a", "b", "c"] {
        let queue = named(&spans, &format!("queue {task}"));
        let attempt = named(&spans, &format!("attempt {task}"));
        assert_eq!(queue.parent_span_id, root.span_id, "{task}");
        assert_eq!(attempt.parent_span_id, root.span_id, "{task}");
        assert!(
            queue.end_time_unix_nano <= attempt.start_time_unix_nano + 1_000_000,
            "{task} waited, then ran"
        );
        let commits: Vec<&Span> = spans
            .iter()
            .filter(|s| s.parent_span_id == attempt.span_id)
            .collect();
        assert_eq!(commits.len(), 1, "{task}: one commit recorded its end");
        assert_eq!(commits[0].name, "commit");
        assert!(commits[0].start_time_unix_nano + 1_000_000 >= attempt.end_time_unix_nano);
        assert!(root.start_time_unix_nano <= queue.start_time_unix_nano);
        assert!(root.end_time_unix_nano + 1_000_000 >= commits[0].start_time_unix_nano);
    }
    assert_eq!(
        attr(named(&spans, "attempt c"), "orbit.outcome"),
        Some("error")
    );
    assert!(
        named(&spans, "queue b").start_time_unix_nano + 1_000_000
            >= named(&spans, "attempt a").end_time_unix_nano,
        "b was ready once a had ended"
    );
    assert_eq!(spans.len(), 1 + 1 + 3 * 3, "nothing else in the trace");
    // The shell task's TRACEPARENT names its attempt's span in the run's trace.
    let tp = std::fs::read_to_string(env.dir.path().join("traceparent.txt")).expect("written");
    let a = named(&spans, "attempt a");
    assert_eq!(
        tp.trim(),
        format!("00-{}-{}-01", hex(&a.trace_id), hex(&a.span_id))
    );
    assert!(
        otlp.spans
            .lock()
            .expect("lock")
            .iter()
            .all(|(service, _)| service.contains("orbit-test")),
        "OTEL_SERVICE_NAME names the service"
    );
}

#[test]
fn grpc_is_refused_by_name() {
    let env = CliEnv::new();
    let out = env
        .orbit()
        .args(["runs"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .expect("orbit");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL `grpc` (from environment)")
            && err.contains("http/protobuf"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_worker_continues_the_trace_in_its_calls() {
    const KEY: &str = "test-secret-key-0123456789abcdef";
    let otlp = receiver().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = server(
        dir.path(),
        "sqlite://orbit.db",
        &["--workers", "2"],
        &[
            ("ORBIT_SECRET_KEY", KEY),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.url),
        ],
    );
    let worker = orbit_example_worker::service(&s.base, KEY).expect("worker");
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let http = reqwest::Client::new();
    let pipeline = include_str!("../../../examples/worker/pipeline.yaml");
    let r = http
        .post(format!("{}/api/v1/pipelines", s.base))
        .json(&serde_json::json!({ "yaml": pipeline }))
        .send()
        .await
        .expect("save");
    assert!(r.status().is_success());
    let r: serde_json::Value = http
        .post(format!("{}/api/v1/pipelines/checkout/trigger", s.base))
        .json(&serde_json::json!({"input": {"orderId": "o-1", "amount": 12.5, "fast": true}}))
        .send()
        .await
        .expect("trigger")
        .json()
        .await
        .expect("json");
    let run = r["run"]["id"].as_str().expect("run id").to_owned();
    support::eventually(Duration::from_secs(30), "the run to succeed", || {
        let out = std::process::Command::new("curl")
            .args(["-s", &format!("{}/api/v1/runs/{run}", s.base)])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["run"]["state"] == "succeeded").then_some(())
    });
    stop.cancel();
    running.await.expect("join").expect("worker ran");
    // A graceful stop sends what the exporter still holds.
    s.proc.signal("TERM");
    assert!(s.proc.wait_exit(Duration::from_secs(20)).is_some());
    let spans = otlp.trace(&run);
    named(&spans, "run checkout");
    for task in ["route", "express", "payment", "report"] {
        let attempt = named(&spans, &format!("attempt {task}"));
        let calls: Vec<&str> = spans
            .iter()
            .filter(|s| s.parent_span_id == attempt.span_id)
            .map(|s| s.name.as_str())
            .collect();
        assert!(
            calls.contains(&"POST /api/v1/callback/{run_id}"),
            "{task}: the worker's callback is in the attempt's trace: {calls:?}"
        );
        assert!(calls.contains(&"commit"), "{task}: {calls:?}");
    }
    let callback = spans
        .iter()
        .find(|s| s.name.starts_with("POST /api/v1/callback"))
        .expect("a callback span");
    assert_eq!(callback.kind, 2, "a server span");
    assert!(attr(callback, "orbit.request_id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_has_its_root_span() {
    let otlp = receiver().await;
    let env = CliEnv::new();
    env.file(
        "slow.yaml",
        "name: slow\ntasks:\n  - {name: nap, type: shell, command: ['sleep', '60']}\n",
    );
    env.ok(&["apply", "slow.yaml"]);
    env.ok(&["trigger", "slow"]);
    let run = env.json(&["runs", "--limit", "1"])[0]["id"]
        .as_str()
        .expect("run id")
        .to_owned();
    let out = env
        .orbit()
        .args(["cancel", &run])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.url)
        .output()
        .expect("orbit cancel");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = otlp.trace(&run);
    let root = named(&spans, "run slow");
    assert_eq!(attr(root, "orbit.state"), Some("cancelled"));
    assert_eq!(named(&spans, "trigger").parent_span_id, root.span_id);
}
