//! `orbit server`: the HTTP API under `/api/v1`, Prometheus metrics, the OpenAPI document and
//! which of the engine's roles a server node starts (embedded workers, reaper, cron, retention,
//! push dispatch, its own heartbeat).
//!
//! Handlers are thin: parse, call one store or engine function, render. Every error is JSON
//! ([`error::ApiError`]).
//!
//! It depends on the engine and the store trait; it never names a backend (the caller opens one)
//! and holds no background loop of its own: it starts the engine's [`orbit_engine::roles`].

mod auth;
mod dashboard;
pub mod error;
mod extract;
pub mod guard;
mod request_id;
mod routes;
mod telemetry;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use metrics_exporter_prometheus::PrometheusHandle;
use orbit_engine::dispatch::{Dispatcher, SecretKey};
use orbit_engine::roles;
use orbit_engine::storage::Storage;
use orbit_engine::{Engine, EngineConfig};
use orbit_store::{NodeInfo, Store};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

pub use routes::pipelines::{CodeVersion, code_history};

/// How a server node runs work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Background loops claim and execute work (`--workers`), reap and fire cron.
    Standalone,
    /// Nothing runs in the background; `POST /api/v1/process` does a bounded batch per call.
    Serverless,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub mode: Mode,
    /// Embedded worker slots (0 = none: separate `orbit worker` processes do the work).
    pub workers: usize,
    pub engine: EngineConfig,
    /// Every API call must carry it as a bearer token.
    pub api_token: Option<secrecy::SecretString>,
    /// Leave `/api/v1/health` and `/metrics` open when a token is set.
    pub public_health: bool,
    /// Most tasks one `POST /api/v1/process` claims.
    pub process_batch: usize,
    /// The store's kind, for health: `sqlite` or `postgres`.
    pub store_kind: &'static str,
    pub node_heartbeat: Duration,
    /// Signs and checks worker-protocol tokens; the worker protocol is off without it.
    pub secret_key: Option<SecretKey>,
    /// Dead letters older than this are purged, with the failed runs left without any
    /// (`DLQ_RETENTION_DAYS`).
    pub dlq_retention: chrono::Duration,
    /// Settled runs that finished longer ago are deleted (`ORBIT_RUN_RETENTION`; kept forever
    /// when `None`).
    pub run_retention: Option<chrono::Duration>,
    /// Which `Host` names and page origins are served ([`guard`]).
    pub access: guard::Access,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub engine: Arc<Engine>,
    pub config: Arc<ServerConfig>,
    pub started: Instant,
    pub metrics: PrometheusHandle,
    /// The worker protocol, when a secret key is set.
    pub dispatcher: Option<Arc<Dispatcher>>,
    /// Cancelled when the server stops: live streams end so a graceful shutdown is not held
    /// open by a dashboard.
    pub shutdown: CancellationToken,
    /// Told when this server saves a pipeline, so cron sees a new schedule at once rather than
    /// at its next rescan.
    pub pipelines_saved: Arc<tokio::sync::Notify>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Orbit API",
        description = "Durable workflow orchestrator. Every error is `{\"error\": {\"code\", \"message\"}}` with a 4xx/5xx status. \
                       When the server has ORBIT_API_TOKEN set, send `Authorization: Bearer <token>`."
    ),
    components(schemas(error::ErrorBody)),
    paths(routes::storage::get_object, routes::storage::put_object)
)]
struct ApiDoc;

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        storage: Arc<Storage>,
        config: ServerConfig,
    ) -> Result<AppState, orbit_engine::EngineError> {
        let engine = Arc::new(Engine::new(
            store.clone(),
            storage.clone(),
            config.engine.clone(),
        )?);
        let dispatcher = config.secret_key.clone().map(|key| {
            Arc::new(
                Dispatcher::new(
                    store.clone(),
                    storage.clone(),
                    key,
                    config.engine.idempotency_ttl,
                )
                .with_max_retry_delay(config.engine.max_retry_delay)
                .with_clock(config.engine.clock),
            )
        });
        Ok(AppState {
            store,
            engine,
            dispatcher,
            config: Arc::new(config),
            started: Instant::now(),
            metrics: telemetry::prometheus(),
            shutdown: CancellationToken::new(),
            pipelines_saved: Arc::default(),
        })
    }
}

/// Operation ids are the handlers' names, which repeat across modules (`list`, `get`…); the
/// OpenAPI rules (and client generators) want them unique: each is prefixed with its first tag,
/// e.g. `runs_get`, `workflows_orbit_py_get`.
fn unique_operation_ids(spec: &mut utoipa::openapi::OpenApi) {
    for item in spec.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let tag = op.tags.as_ref().and_then(|t| t.first()).cloned();
            if let (Some(tag), Some(id)) = (tag, op.operation_id.as_mut()) {
                let words: Vec<String> = tag
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(str::to_ascii_lowercase)
                    .collect();
                *id = format!("{}_{id}", words.join("_"));
            }
        }
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let (api, mut spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", routes::api())
        .split_for_parts();
    unique_operation_ids(&mut spec);
    // The PipeWeave seed's paths: the same handlers under `/api` (and its `/health`), kept out
    // of the OpenAPI document, which describes `/api/v1`.
    let (seed_api, _) = OpenApiRouter::new()
        .nest("/api", routes::api())
        .split_for_parts();
    let spec_json = Arc::new(spec.clone());
    let router = Router::new()
        .merge(api)
        .merge(seed_api)
        .route("/health", axum::routing::get(routes::health::health))
        // Orbit-Py's clients write the collection with a trailing slash.
        .route(
            "/api/v1/workflows/",
            axum::routing::get(routes::workflows::list).post(routes::workflows::create),
        )
        .route(
            "/api/storage/{backend}/{*key}",
            axum::routing::get(routes::storage::get_object).put(routes::storage::put_object),
        )
        .route(
            "/api/v1/storage/{backend}/{*key}",
            // The PUT streams its body, within the size its token allows.
            axum::routing::get(routes::storage::get_object).put(routes::storage::put_object),
        )
        .route("/metrics", axum::routing::get(routes::workers::prometheus))
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let spec = spec_json.clone();
                async move { axum::Json(spec.as_ref().clone()) }
            }),
        )
        .merge(SwaggerUi::new("/docs").url("/docs/openapi.json", spec))
        .merge(dashboard::routes())
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::check,
        ))
        .layer(DefaultBodyLimit::max(8 * 1024 * 1024));
    let router = match guard::cors(&state.config.access) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            request_id::panicked,
        ))
        .layer(axum::middleware::from_fn(telemetry::requests))
        .layer(axum::middleware::from_fn(request_id::tag))
        .with_state(state)
}

/// Serves on `addr` until `shutdown`, with the node's background loops; returns once in-flight
/// attempts have finished or been handed back.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = AppState {
        shutdown: shutdown.child_token(),
        ..state
    };
    let tasks = TaskTracker::new();
    let config = state.config.clone();
    let node = node_info(&config);
    let clock = config.engine.clock;
    let beat = roles::NodeHeartbeat::new(state.store.clone(), node, config.node_heartbeat);
    let stop = shutdown.clone();
    tasks.spawn(async move {
        beat.run(stop, clock).await;
        let _ = beat.stopped(clock.now()).await;
    });
    if config.mode == Mode::Standalone {
        let engine = state.engine.clone();
        let stop = shutdown.clone();
        if config.workers > 0 {
            tasks.spawn(async move {
                if let Err(e) = engine.drive_all(stop).await {
                    tracing::error!(error = %e, "embedded workers stopped");
                }
            });
        } else {
            let reaper = roles::Reaper::new(engine, config.engine.poll_interval);
            tasks.spawn(reaper.run(stop));
        }
        let cron = roles::Scheduler::new(state.store.clone(), state.pipelines_saved.clone());
        tasks.spawn(cron.run(shutdown.clone(), clock));
        let retention = roles::Retention::new(
            state.store.clone(),
            state.engine.storage().clone(),
            config.dlq_retention,
            Duration::from_secs(3600),
        );
        tasks.spawn(retention.run(shutdown.clone(), clock));
        if let Some(keep) = config.run_retention {
            let runs = roles::RunRetention::new(
                state.store.clone(),
                state.engine.storage().clone(),
                keep,
                Duration::from_secs(60),
            );
            tasks.spawn(runs.run(shutdown.clone(), clock));
        }
        if let Some(dispatcher) = state.dispatcher.clone() {
            match roles::PushDispatch::new(dispatcher) {
                Ok(push) => {
                    tasks.spawn(push.run(shutdown.clone()));
                }
                Err(e) => {
                    tracing::error!(error = %e, "push dispatch is off: cannot build an HTTP client")
                }
            }
        }
    }
    // Pollers wait in every mode.
    if let Some(dispatcher) = state.dispatcher.clone() {
        let (stop, every) = (shutdown.clone(), config.engine.poll_interval);
        tasks.spawn(async move { dispatcher.wake_pollers(every, stop).await });
    }
    tasks.close();
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "serving");
    let stop = shutdown.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    tasks.wait().await;
    Ok(())
}

pub fn node_info(config: &ServerConfig) -> NodeInfo {
    let (host, pid) = config
        .engine
        .owner
        .rsplit_once(':')
        .map_or((config.engine.owner.as_str(), "0"), |(h, p)| (h, p));
    NodeInfo {
        id: config.engine.owner.clone(),
        kind: "server".into(),
        host: host.to_owned(),
        pid: pid.parse().unwrap_or(0),
        version: env!("CARGO_PKG_VERSION").into(),
        queues: config.engine.queues.clone(),
        concurrency: u32::try_from(config.workers).unwrap_or(u32::MAX),
        heartbeat_ms: config.node_heartbeat.as_millis() as u64,
        service: None,
    }
}
