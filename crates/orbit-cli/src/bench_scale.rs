//! `orbit bench scale`: whether costs stay flat when the tables are big. It drains a run of
//! `--drain` no-op tasks on an empty store, then queues `--runs` runs of `--tasks` tasks and
//! one run of `--big` tasks (a million task runs by default), drains such a run twice more with
//! all of that waiting behind it (right after the fill, then steady), and times the API's run list, the big run's page, queue
//! status and `/metrics` in-process, then starts a real `orbit server` process on that store and
//! requests the same views from it. One JSON line: the drain rates and their ratio, each
//! route's p50/p99, the bench's and the server process's memory, and the disk bytes per task run.

use crate::bench::{Fresh, fresh_store, percentile, pipeline};
use crate::cli::{BenchArgs, Scenario};
use chrono::Utc;
use orbit_engine::{Engine, EngineConfig};
use orbit_server::{AppState, Mode, ServerConfig};
use orbit_store::{NewRun, Store, StoredPipeline};
use orbit_store_sqlite::Durability;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests timed per route.
const REQUESTS: usize = 40;

pub async fn run(
    scenario: &Scenario,
    args: &BenchArgs,
    durability: Durability,
) -> anyhow::Result<Value> {
    let Scenario::Scale {
        runs,
        tasks,
        big,
        drain,
    } = *scenario
    else {
        anyhow::bail!("not the scale scenario");
    };
    let dir = tempfile::tempdir()?;
    let Fresh {
        store,
        db: _db,
        label,
        url,
    } = fresh_store(args, durability, dir.path()).await?;
    let engine = engine(&store, args.concurrency, dir.path())?;
    let empty = drained(&store, &engine, drain).await?;
    let filled = Instant::now();
    let queued = pipeline_of(&store, "queued", tasks).await?;
    for _ in 0..runs {
        store.create_run(new_run(&queued, 0)).await?;
    }
    let huge = pipeline_of(&store, "big", big).await?;
    let big_run = store.create_run(new_run(&huge, 0)).await?.run.id;
    let fill_ms = filled.elapsed().as_secs_f64() * 1000.0;
    // The first drain after the fill also pays for checkpointing what the fill wrote (SQLite's
    // WAL); the second is the steady cost with the tables big.
    let after_fill = drained(&store, &engine, drain).await?;
    let loaded = drained(&store, &engine, drain).await?;
    let app = api(&store, &engine, &label)?;
    let mut routes = serde_json::Map::new();
    for (name, path) in views(big_run) {
        routes.insert(name.into(), timed(&app, &path).await?);
    }
    let server = served(&url, args, dir.path(), big_run).await?;
    let task_runs = (runs * tasks + big + 3 * drain) as f64;
    Ok(json!({
        "scenario": "scale",
        "durability": label,
        "queued_task_runs": runs * tasks + big,
        "fill_ms": fill_ms,
        "drain_tasks": drain,
        "tasks_per_sec_empty": drain as f64 / empty.as_secs_f64(),
        "tasks_per_sec_after_fill": drain as f64 / after_fill.as_secs_f64(),
        "tasks_per_sec_loaded": drain as f64 / loaded.as_secs_f64(),
        "cost_ratio": loaded.as_secs_f64() / empty.as_secs_f64(),
        "routes_ms": routes,
        "server": server,
        "peak_rss_bytes": crate::bench::peak_rss_bytes(),
        // What the process holds once the fill is over and the views were served.
        "rss_bytes_end": crate::bench::rss_bytes(),
        "disk_bytes_per_task_run": disk_bytes(&url, dir.path()).await?.map(|b| b / task_runs),
    }))
}

/// The views timed, by name.
fn views(big_run: uuid::Uuid) -> [(&'static str, String); 7] {
    [
        ("run_list", "/api/v1/runs?limit=50".to_string()),
        (
            "big_run_page",
            format!("/api/v1/runs/{big_run}?taskLimit=50"),
        ),
        ("queue_status", "/api/v1/queue/status".to_string()),
        ("metrics", "/metrics".to_string()),
        ("worker_stats", "/api/v1/workers/stats".to_string()),
        ("worker_metrics", "/api/v1/workers/metrics".to_string()),
        ("worker_series", "/api/v1/workers/series".to_string()),
    ]
}

/// A real `orbit server` process (no workers of its own) started on the filled store, each
/// view requested [`REQUESTS`] times over HTTP: the server's own memory with the tables big
/// (its start-up included), apart from the bench's fill.
async fn served(
    url: &str,
    args: &BenchArgs,
    dir: &std::path::Path,
    big_run: uuid::Uuid,
) -> anyhow::Result<Value> {
    use crate::bench_sdk::{free_port, start_server, wait_for};
    let secret = format!("bench-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let server = start_server(url, &secret, port, args, dir)?;
    let http = reqwest::Client::new();
    wait_for(&http, &format!("{base}/api/v1/health"), |_| true).await?;
    let start_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut slowest = 0.0f64;
    // A while idle first: what the server's background roles read at start-up counts too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (_, path) in views(big_run) {
        for _ in 0..REQUESTS {
            let t = Instant::now();
            let response = http.get(format!("{base}{path}")).send().await?;
            anyhow::ensure!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
            response.bytes().await?;
            slowest = slowest.max(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let pid = server.id().unwrap_or(0).to_string();
    let kb = |field| crate::bench::process_status_kb(&pid, field) * 1024;
    Ok(json!({
        "start_ms": start_ms,
        "slowest_request_ms": slowest,
        "peak_rss_bytes": kb("VmHWM:"),
        "rss_bytes_end": kb("VmRSS:"),
    }))
}

pub(crate) fn engine(
    store: &Arc<dyn Store>,
    concurrency: usize,
    dir: &std::path::Path,
) -> anyhow::Result<Arc<Engine>> {
    let storage = orbit_engine::storage::Storage::local(&dir.join("objects"))?;
    Ok(Arc::new(Engine::new(
        store.clone(),
        Arc::new(storage),
        EngineConfig {
            owner: "bench".into(),
            concurrency,
            ..EngineConfig::default()
        },
    )?))
}

/// A pipeline of `tasks` independent no-op tasks, saved as `name`.
pub(crate) async fn pipeline_of(
    store: &Arc<dyn Store>,
    name: &str,
    tasks: usize,
) -> anyhow::Result<StoredPipeline> {
    let mut p = pipeline(
        &Scenario::Throughput {
            tasks,
            keys: 0,
            key_limit: 1,
        },
        false,
    );
    p.name = name.into();
    Ok(store.save_pipeline(&p, None, Utc::now()).await?)
}

pub(crate) fn new_run(stored: &StoredPipeline, priority: i32) -> NewRun<'_> {
    NewRun {
        id: uuid::Uuid::now_v7(),
        pipeline: stored,
        input: json!({}),
        priority,
        idempotency_key: None,
        idempotency_ttl: Duration::from_secs(60),
        request_hash: None,
        triggered_by: orbit_store::TriggeredBy::Cli,
        parent: None,
        rerun: None,
        now: Utc::now(),
    }
}

/// Queues a run of `tasks` no-op tasks ahead of everything else and times the engine claiming
/// and completing exactly those (it claims by priority across every queued task run).
pub(crate) async fn drained(
    store: &Arc<dyn Store>,
    engine: &Engine,
    tasks: usize,
) -> anyhow::Result<Duration> {
    let stored = pipeline_of(store, "drain", tasks).await?;
    let run = store.create_run(new_run(&stored, 100)).await?.run.id;
    let started = Instant::now();
    let mut done = 0;
    while done < tasks {
        let processed = engine.process(tasks - done).await?;
        if processed.claimed == 0 {
            anyhow::bail!(
                "the engine claimed nothing with {} tasks left",
                tasks - done
            );
        }
        done += processed.claimed;
    }
    let elapsed = started.elapsed();
    let state = store.run(run).await?.state;
    anyhow::ensure!(
        state == orbit_core::RunState::Succeeded,
        "the drained run ended {state:?}: another run's tasks were claimed before it"
    );
    Ok(elapsed)
}

/// The API over the same store, serving in-process (no socket: the figures are the handlers').
fn api(store: &Arc<dyn Store>, engine: &Engine, label: &str) -> anyhow::Result<axum::Router> {
    let config = ServerConfig {
        mode: Mode::Serverless,
        workers: 0,
        engine: EngineConfig::default(),
        api_token: None,
        public_health: false,
        process_batch: 1,
        store_kind: if label.starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        },
        node_heartbeat: Duration::from_secs(5),
        secret_key: None,
        dlq_retention: chrono::Duration::days(30),
        run_retention: None,
        access: orbit_server::guard::Access::default(),
    };
    let state = AppState::new(store.clone(), engine.storage().clone(), config)?;
    Ok(orbit_server::router(state))
}

/// p50 and p99 (ms) of [`REQUESTS`] GETs of `path`, each answered 200.
async fn timed(app: &axum::Router, path: &str) -> anyhow::Result<Value> {
    use tower::ServiceExt;
    let mut ms = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let req = axum::http::Request::builder()
            .uri(path)
            .header("host", "127.0.0.1:3000")
            .body(axum::body::Body::empty())?;
        let started = Instant::now();
        let res = app.clone().oneshot(req).await?;
        let status = res.status();
        axum::body::to_bytes(res.into_body(), usize::MAX).await?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(status.is_success(), "GET {path}: {status}");
    }
    ms.sort_by(f64::total_cmp);
    Ok(json!({"p50": percentile(&ms, 0.5), "p99": percentile(&ms, 0.99)}))
}

/// The database on disk: SQLite's file and its WAL, or PostgreSQL's database size.
async fn disk_bytes(url: &str, dir: &std::path::Path) -> anyhow::Result<Option<f64>> {
    if url.starts_with("postgres") {
        let pg = orbit_store_postgres::PgStore::connect(url, 1).await?;
        return Ok(Some(pg.database_bytes().await? as f64));
    }
    let file = |name: &str| {
        std::fs::metadata(dir.join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    Ok(Some((file("bench.db") + file("bench.db-wal")) as f64))
}
