//! The server's Prometheus metrics: the exporter (histogram buckets, every metric described)
//! and the HTTP requests, labelled by route template (`/api/v1/runs/{id}`), never by the path
//! a client sent, so the label set stays bounded.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Seconds: from a millisecond to five minutes.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Attempts per commit.
const BATCH: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// The process-wide Prometheus recorder (one per process, whatever the number of routers).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("orbit_commit_attempts".into()), BATCH)
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder is installed; metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            orbit_engine::telemetry::describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(
        "orbit_task_runs",
        Unit::Count,
        "Task runs by state (pending = ready, waiting, parked, running, completed, failed), counted by the store's commits"
    );
    describe_gauge!(
        "orbit_queue_task_runs",
        Unit::Count,
        "Task runs ready, running and parked, by queue"
    );
    describe_gauge!(
        "orbit_dlq_entries",
        Unit::Count,
        "Entries in the dead-letter queue"
    );
    describe_gauge!(
        "orbit_oldest_pending_seconds",
        Unit::Seconds,
        "Age of the oldest ready task run (0 when none)"
    );
    describe_gauge!(
        "orbit_nodes",
        Unit::Count,
        "Servers and workers sharing the store, by status (healthy, unhealthy, stopped)"
    );
    describe_counter!(
        "orbit_runs_triggered_total",
        Unit::Count,
        "Runs created through this server's trigger route"
    );
    describe_counter!(
        "orbit_runs_deleted_total",
        Unit::Count,
        "Settled runs deleted by run retention"
    );
    describe_counter!(
        "orbit_cron_fires_total",
        Unit::Count,
        "Runs created by pipeline schedules"
    );
    describe_counter!(
        "orbit_http_requests_total",
        Unit::Count,
        "HTTP requests served, by method, route template and status"
    );
    describe_histogram!(
        "orbit_http_request_duration_seconds",
        Unit::Seconds,
        "How long HTTP requests took to answer, by method and route template"
    );
}

/// Counts and times each request by its route template.
pub async fn requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    histogram!("orbit_http_request_duration_seconds", "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    counter!("orbit_http_requests_total", "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}
