//! Nodes (servers and workers), their health, and execution metrics.

use crate::AppState;
use crate::error::ApiResult;
use axum::Json;
use axum::extract::Query;
use axum::extract::State;
use axum::extract::rejection::QueryRejection;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use chrono::DurationRound;
use chrono::{Duration, Utc};
use orbit_store::tally::Summary;
use orbit_store::{Cell, CellKey, NodeRecord, QueueStats};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(flatten)]
    pub node: NodeRecord,
    /// `healthy`, `unhealthy` (missed three heartbeats) or `stopped`.
    pub status: &'static str,
}

async fn services_now(s: &AppState) -> ApiResult<Vec<Service>> {
    let now = Utc::now();
    Ok(s.store
        .nodes(200)
        .await?
        .into_iter()
        .map(|node| Service {
            status: node.status(now),
            node,
        })
        .collect())
}

/// Registered services: the `orbit server` and `orbit worker` processes sharing this store.
#[utoipa::path(get, path = "/services", tag = "workers", responses((status = 200, body = [Service])))]
pub async fn services(State(s): State<AppState>) -> ApiResult<Json<Vec<Service>>> {
    Ok(Json(services_now(&s).await?))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    /// The window the figures cover, in seconds.
    pub window_seconds: i64,
    pub attempts: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// succeeded / attempts, 0..1 (1 when nothing ran).
    pub success_rate: f64,
    /// Attempts finished per second over the window.
    pub throughput_per_sec: f64,
    pub duration_avg_ms: f64,
    /// Percentiles come from a histogram of durations kept per minute: within 10 % of the
    /// exact value.
    pub duration_p50_ms: f64,
    pub duration_p95_ms: f64,
    pub duration_max_ms: f64,
}

/// Figures over the attempt cells of a window (see `orbit_store::tally`): percentiles are read
/// from the cells' duration histogram, within 10 % of the exact values.
fn figures<'a>(cells: impl IntoIterator<Item = &'a (CellKey, Cell)>, window: Duration) -> Figures {
    let mut sum = Summary::default();
    for (k, c) in cells {
        sum.add(k, c);
    }
    let ms = |us: f64| us / 1000.0;
    Figures {
        window_seconds: window.num_seconds(),
        attempts: sum.attempts as usize,
        succeeded: sum.succeeded as usize,
        failed: (sum.attempts - sum.succeeded) as usize,
        success_rate: if sum.attempts == 0 {
            1.0
        } else {
            sum.succeeded as f64 / sum.attempts as f64
        },
        throughput_per_sec: sum.attempts as f64 / window.num_seconds().max(1) as f64,
        duration_avg_ms: ms(sum.mean_us()),
        duration_p50_ms: ms(sum.quantile_us(0.5)),
        duration_p95_ms: ms(sum.quantile_us(0.95)),
        duration_max_ms: ms(sum.max_us as f64),
    }
}

/// The cells of the minutes from `since`'s minute on.
fn from_minute(
    cells: &[(CellKey, Cell)],
    since: chrono::DateTime<Utc>,
) -> impl Iterator<Item = &(CellKey, Cell)> {
    let first = since.timestamp().div_euclid(60);
    cells.iter().filter(move |(k, _)| k.minute >= first)
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub queue: QueueStats,
    pub nodes_healthy: usize,
    pub nodes_unhealthy: usize,
    /// The last hour.
    pub last_hour: Figures,
}

/// Dashboard statistics: the queue, the nodes, and the last hour's attempts.
#[utoipa::path(get, path = "/workers/stats", tag = "workers", responses((status = 200, body = Stats)))]
pub async fn stats(State(s): State<AppState>) -> ApiResult<Json<Stats>> {
    let services = services_now(&s).await?;
    let hour = Duration::hours(1);
    let cells = s.store.attempt_cells(Utc::now() - hour).await?;
    Ok(Json(Stats {
        queue: s.store.queue_stats().await?,
        nodes_healthy: services.iter().filter(|n| n.status == "healthy").count(),
        nodes_unhealthy: services.iter().filter(|n| n.status == "unhealthy").count(),
        last_hour: figures(&cells, hour),
    }))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerHealth {
    /// `ok` when a healthy node can do work and none is unhealthy; `degraded` when some node
    /// stopped heartbeating; `down` when no healthy node is left.
    pub status: &'static str,
    pub services: Vec<Service>,
}

/// Worker health: each node and whether it still heartbeats.
#[utoipa::path(get, path = "/workers/health", tag = "workers", responses((status = 200, body = WorkerHealth)))]
pub async fn health(State(s): State<AppState>) -> ApiResult<Json<WorkerHealth>> {
    let services = services_now(&s).await?;
    let healthy = services.iter().any(|n| n.status == "healthy");
    let unhealthy = services.iter().any(|n| n.status == "unhealthy");
    let status = match (healthy, unhealthy) {
        (true, false) => "ok",
        (true, true) => "degraded",
        (false, _) => "down",
    };
    Ok(Json(WorkerHealth { status, services }))
}

/// Real-time performance: the last minute and the last hour.
#[utoipa::path(get, path = "/workers/metrics", tag = "workers", responses((status = 200, body = Object)))]
pub async fn metrics(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let now = Utc::now();
    let hour = s.store.attempt_cells(now - Duration::hours(1)).await?;
    // Cells keep whole minutes: "the last minute" is the one before this and this one so far.
    let since = now - Duration::minutes(1);
    let start = since.duration_trunc(Duration::minutes(1)).unwrap_or(since);
    Ok(Json(serde_json::json!({
        "lastMinute": figures(from_minute(&hour, since), now - start),
        "lastHour": figures(&hour, Duration::hours(1)),
    })))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    /// How far back, in minutes (default 60, at most 1440).
    pub minutes: Option<u32>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    /// The start of the minute.
    pub at: chrono::DateTime<Utc>,
    pub attempts: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub duration_p50_ms: f64,
    pub duration_p95_ms: f64,
}

/// Attempts finished per minute, with their durations: the dashboard's charts.
#[utoipa::path(get, path = "/workers/series", tag = "workers", params(SeriesQuery),
    responses((status = 200, body = [Bucket]), (status = 400, body = crate::error::ErrorBody)))]
pub async fn series(
    State(s): State<AppState>,
    q: Result<Query<SeriesQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<Bucket>>> {
    let Query(q) = q?;
    let minutes = i64::from(q.minutes.unwrap_or(60).clamp(1, 1440));
    let now = Utc::now();
    let end = now.duration_trunc(Duration::minutes(1)).unwrap_or(now) + Duration::minutes(1);
    let start = end - Duration::minutes(minutes);
    let cells = s.store.attempt_cells(start).await?;
    let first = start.timestamp().div_euclid(60);
    let mut by_minute: Vec<Vec<(CellKey, Cell)>> = (0..minutes).map(|_| Vec::new()).collect();
    for cell in cells {
        let i = cell.0.minute - first;
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| by_minute.get_mut(i)) {
            slot.push(cell);
        }
    }
    Ok(Json(
        by_minute
            .iter()
            .enumerate()
            .map(|(i, cells)| {
                let f = figures(cells, Duration::minutes(1));
                Bucket {
                    at: start + Duration::minutes(i as i64),
                    attempts: f.attempts,
                    succeeded: f.succeeded,
                    failed: f.failed,
                    duration_p50_ms: f.duration_p50_ms,
                    duration_p95_ms: f.duration_p95_ms,
                }
            })
            .collect(),
    ))
}

/// Sets `orbit_queue_task_runs` for the default queue, those nodes claim from, and every queue
/// seen since the process started: one that has drained reads 0 rather than its last value.
fn queue_gauges(
    depths: Vec<(String, orbit_core::TaskState, i64)>,
    named: impl Iterator<Item = String>,
) {
    use orbit_core::TaskState;
    static SEEN: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let Ok(mut seen) = SEEN.lock() else { return };
    seen.insert("default".to_owned());
    seen.extend(named);
    seen.extend(depths.iter().map(|(q, _, _)| q.clone()));
    for queue in seen.iter() {
        for state in [TaskState::Ready, TaskState::Running, TaskState::Parked] {
            let n = depths
                .iter()
                .find(|(q, s, _)| q == queue && *s == state)
                .map_or(0, |(_, _, n)| *n);
            metrics::gauge!("orbit_queue_task_runs", "queue" => queue.clone(), "state" => state.as_str())
                .set(n as f64);
        }
    }
}

/// `/metrics`: Prometheus text format. Gauges are read from the store at scrape time; counters
/// and histograms come from this process.
pub async fn prometheus(State(s): State<AppState>) -> impl IntoResponse {
    if let Ok(q) = s.store.queue_stats().await {
        for (state, n) in [
            ("pending", q.pending),
            ("running", q.running),
            ("waiting", q.waiting),
            ("parked", q.parked),
            ("completed", q.completed),
            ("failed", q.failed),
        ] {
            metrics::gauge!("orbit_task_runs", "state" => state).set(n as f64);
        }
        metrics::gauge!("orbit_dlq_entries").set(q.dlq as f64);
        let age = q.oldest_pending.map_or(0.0, |t| {
            (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
        });
        metrics::gauge!("orbit_oldest_pending_seconds").set(age);
    }
    let nodes = s.store.nodes(200).await;
    if let Ok(depths) = s.store.queue_depths().await {
        let named = nodes
            .iter()
            .flatten()
            .flat_map(|n| n.info.queues.iter().cloned());
        queue_gauges(depths, named);
    }
    if let Ok(nodes) = nodes {
        let now = Utc::now();
        for status in ["healthy", "unhealthy", "stopped"] {
            let n = nodes.iter().filter(|n| n.status(now) == status).count();
            metrics::gauge!("orbit_nodes", "status" => status).set(n as f64);
        }
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
