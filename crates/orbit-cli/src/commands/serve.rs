//! `orbit server`, `orbit worker`, `orbit db migrate`.

use super::{Connected, connect};
use crate::BadInput;
use crate::cli::{DbAction, ServerArgs, WorkOptions, WorkerArgs};
use crate::commands::run::{idempotency_ttl, max_retry_delay, owner, supervisor};
use orbit_engine::clock::Clock;
use orbit_engine::roles::NodeHeartbeat;
use orbit_engine::{Engine, EngineConfig};
use orbit_server::{AppState, Mode, ServerConfig};
use orbit_store::NodeInfo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Cancelled on SIGTERM or SIGINT: stop claiming, let running attempts finish within the grace
/// period, hand back the rest.
fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("shutting down: no new work is claimed; running attempts get the grace period");
        cancel.cancel();
    });
    token
}

fn engine_config(concurrency: usize, work: &WorkOptions) -> anyhow::Result<EngineConfig> {
    for t in &work.types {
        if !orbit_core::TaskType::BUILT_IN
            .iter()
            .any(|b| b.as_str() == t)
        {
            return Err(
                BadInput(format!("--type {t}: expected shell, http, sleep or script")).into(),
            );
        }
    }
    if work.poll_interval_ms == 0 {
        return Err(BadInput("POLL_INTERVAL_MS must be at least 1".into()).into());
    }
    Ok(EngineConfig {
        owner: owner(),
        concurrency,
        poll_interval: Duration::from_millis(work.poll_interval_ms),
        idempotency_ttl: idempotency_ttl()?,
        queues: work.queues.clone(),
        types: work.types.clone(),
        grace: work.grace,
        supervisor: Some(supervisor()),
        max_retry_delay: max_retry_delay()?,
        clock: Clock::System,
    })
}

pub async fn server(url: &str, args: ServerArgs) -> anyhow::Result<u8> {
    let mode = match args.mode {
        crate::cli::ServerMode::Standalone => Mode::Standalone,
        crate::cli::ServerMode::Serverless => Mode::Serverless,
    };
    let api_token: Option<secrecy::SecretString> =
        crate::settings::var("ORBIT_API_TOKEN").map(Into::into);
    let secret_key = match crate::settings::var("ORBIT_SECRET_KEY") {
        Some(k) => Some(orbit_engine::dispatch::SecretKey::new(&k).map_err(BadInput)?),
        None => None,
    };
    let addr: SocketAddr = args.bind.parse().map_err(|e| {
        BadInput(format!(
            "--bind {}: {e} (expected host:port, e.g. 127.0.0.1:3000)",
            args.bind
        ))
    })?;
    if api_token.is_none() && !addr.ip().is_loopback() {
        return Err(BadInput(format!(
            "--bind {addr} would open the API to anyone who can reach this machine, and ORBIT_API_TOKEN is not set: set ORBIT_API_TOKEN (every call then needs it), or bind to 127.0.0.1:{}",
            addr.port()
        ))
        .into());
    }
    let Connected { store, kind } = connect(url, !args.no_migrate).await?;
    let default_workers = if kind == "sqlite" { 10 } else { 0 };
    let workers = args.workers.unwrap_or(default_workers);
    let config = ServerConfig {
        mode,
        workers,
        engine: engine_config(workers.max(1), &args.work)?,
        api_token,
        public_health: args.public_health,
        process_batch: args.process_batch.max(1),
        store_kind: kind,
        node_heartbeat: Duration::from_secs(5),
        secret_key,
        dlq_retention: orbit_engine::runs::dlq_retention(std::env::var("DLQ_RETENTION_DAYS").ok())
            .map_err(BadInput)?,
        run_retention: orbit_engine::runs::run_retention(std::env::var("ORBIT_RUN_RETENTION").ok())
            .map_err(BadInput)?,
        access: orbit_server::guard::Access::from_lists(
            std::env::var("ORBIT_ALLOWED_HOSTS").ok().as_deref(),
            std::env::var("ORBIT_CORS_ORIGINS").ok().as_deref(),
        ),
    };
    let storage = super::storage()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| BadInput(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    let auth = if config.api_token.is_some() {
        "bearer token required"
    } else {
        "no token (loopback only)"
    };
    let protocol = if config.secret_key.is_some() {
        "worker protocol on"
    } else {
        "worker protocol off: set ORBIT_SECRET_KEY"
    };
    // Tests and scripts read this line to learn the port when binding to port 0.
    println!(
        "orbit server listening on http://{local} ({kind}, {}, {} embedded worker slots, {auth}, {protocol})",
        if mode == Mode::Serverless {
            "serverless"
        } else {
            "standalone"
        },
        if mode == Mode::Serverless { 0 } else { workers }
    );
    if mode == Mode::Standalone && workers == 0 {
        eprintln!(
            "note: this server executes no tasks itself (0 embedded worker slots{}): start `orbit worker` against the same database, or pass --workers N",
            if kind == "postgres" {
                ", the default on PostgreSQL"
            } else {
                ""
            }
        );
    }
    let state = AppState::new(store, storage, config)?;
    let shutdown = on_signal();
    let n = args.workers_processes;
    let supervised = (n > 0).then(|| {
        let envs = vec![("ORBIT_DATABASE_URL".to_owned(), url.to_owned())];
        tokio::spawn(super::supervise::keep_running(
            n,
            vec!["worker".into()],
            envs,
            shutdown.clone(),
        ))
    });
    orbit_server::serve(state, listener, shutdown.clone()).await?;
    shutdown.cancel();
    if let Some(s) = supervised {
        let _ = s.await;
    }
    eprintln!("server stopped");
    Ok(0)
}

pub async fn worker(url: &str, args: WorkerArgs) -> anyhow::Result<u8> {
    if args.concurrency == 0 {
        return Err(BadInput("--concurrency must be at least 1".into()).into());
    }
    if args.processes == 0 {
        return Err(BadInput("--processes must be at least 1".into()).into());
    }
    if args.processes > 1 && std::env::var_os(super::supervise::SUPERVISED).is_none() {
        return super::supervise::keep(args.processes, on_signal()).await;
    }
    let Connected { store, kind } = connect(url, false).await?;
    let config = engine_config(args.concurrency, &args.work)?;
    let (host, pid) = config
        .owner
        .rsplit_once(':')
        .unwrap_or((config.owner.as_str(), "0"));
    let node = NodeInfo {
        id: config.owner.clone(),
        kind: "worker".into(),
        host: host.to_owned(),
        pid: pid.parse().unwrap_or(0),
        version: env!("CARGO_PKG_VERSION").into(),
        queues: config.queues.clone(),
        concurrency: u32::try_from(args.concurrency).unwrap_or(u32::MAX),
        heartbeat_ms: 5000,
        service: None,
    };
    let shutdown = on_signal();
    if std::env::var_os(super::supervise::SUPERVISED).is_some() {
        super::supervise::watch_supervisor(shutdown.clone());
    }
    let beat = Arc::new(NodeHeartbeat::new(
        store.clone(),
        node.clone(),
        Duration::from_millis(node.heartbeat_ms),
    ));
    let beating = {
        let (beat, stop) = (beat.clone(), shutdown.clone());
        tokio::spawn(async move { beat.run(stop, Clock::System).await })
    };
    println!(
        "orbit worker {} claiming from {kind} (concurrency {}, queues: {}, types: {})",
        node.id,
        args.concurrency,
        if node.queues.is_empty() {
            "all".to_string()
        } else {
            node.queues.join(",")
        },
        if config.types.is_empty() {
            "all".to_string()
        } else {
            config.types.join(",")
        },
    );
    let engine = Engine::new(store.clone(), super::storage()?, config)?;
    let result = engine.drive_all(shutdown.clone()).await;
    shutdown.cancel();
    let _ = beating.await;
    beat.stopped(Clock::System.now()).await?;
    result?;
    eprintln!("worker stopped");
    Ok(0)
}

pub async fn db(url: &str, action: DbAction) -> anyhow::Result<u8> {
    match action {
        DbAction::Migrate => {
            let Connected { kind, .. } = connect(url, true).await?;
            match super::MIGRATED.get() {
                Some((0, version)) => println!(
                    "{kind} database at {} is up to date (schema version {version})",
                    redact(url)
                ),
                Some((n, version)) => println!(
                    "{kind} database at {}: applied {n} migration{}; schema version {version}",
                    redact(url),
                    if *n == 1 { "" } else { "s" }
                ),
                None => println!("{kind} database at {} is up to date", redact(url)),
            }
            Ok(0)
        }
    }
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
