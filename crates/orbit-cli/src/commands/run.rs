//! `orbit run PIPELINE_OR_FILE [-i JSON | -i @file.json]`

use super::{is_file_argument, load_file, saved_pipeline};
use crate::BadInput;
use crate::cli::RunArgs;
use crate::progress::Progress;
use chrono::Utc;
use orbit_core::RunState;
use orbit_engine::{Engine, EngineConfig};
use orbit_store::{NewRun, Store};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub async fn run(store: &Arc<dyn Store>, args: RunArgs, json: bool) -> anyhow::Result<u8> {
    let input = parse_input(args.input.as_deref())?;
    if args.concurrency == 0 {
        return Err(BadInput("--concurrency must be at least 1".into()).into());
    }
    let stored = if is_file_argument(&args.pipeline) {
        let (pipeline, source) = load_file(Path::new(&args.pipeline))?;
        store
            .save_pipeline(&pipeline, Some(&source), Utc::now())
            .await?
    } else {
        saved_pipeline(store.as_ref(), &args.pipeline).await?
    };
    let engine = engine(store, args.concurrency)?;
    let created = orbit_engine::runs::create_run(
        store.as_ref(),
        engine.storage(),
        NewRun {
            id: uuid::Uuid::now_v7(),
            pipeline: &stored,
            input,
            priority: 0,
            idempotency_key: args.idempotency_key.clone(),
            idempotency_ttl: idempotency_ttl()?,
            request_hash: None,
            now: Utc::now(),
        },
    )
    .await?;
    let run = created.run;
    if !created.created && !json {
        println!(
            "idempotency key `{}` already names run {} ({}): returning it",
            args.idempotency_key.as_deref().unwrap_or_default(),
            run.id,
            run.state
        );
    }
    let result = drive_with(engine, &run, &stored, json).await;
    let state = result?;
    let record = store.run(run.id).await?;
    let short = &run.id.to_string()[..8];
    if json {
        crate::output::json(
            &serde_json::json!({"event": "run_finished", "run": run.id, "state": record.state}),
        )?;
    } else {
        let took = crate::output::span(
            record.started_at.or(Some(record.created_at)),
            record.finished_at,
        );
        match state {
            Some(RunState::Succeeded) => println!(
                "run {} succeeded in {took} ({} tasks)",
                run.id, record.tasks_total
            ),
            Some(s) => {
                let dead: Vec<String> = store
                    .task_runs(run.id)
                    .await?
                    .into_iter()
                    .filter(|t| t.state == orbit_core::TaskState::Dead)
                    .map(|t| t.task_name)
                    .collect();
                println!("run {} {s} after {took}: dead: {}", run.id, dead.join(", "));
                if let Some(first) = dead.first() {
                    println!("see `orbit logs {short} {first}`");
                }
            }
            None => println!(
                "run {} interrupted; it stays `{}` and can be resumed",
                run.id, record.state
            ),
        }
    }
    Ok(match state {
        Some(RunState::Succeeded) => 0,
        _ => 1,
    })
}

/// Executes `run` here with live progress until it settles or Ctrl-C.
pub async fn drive(
    store: &Arc<dyn Store>,
    run: &orbit_store::RunRecord,
    pipeline: &orbit_store::StoredPipeline,
    concurrency: usize,
    json: bool,
) -> anyhow::Result<Option<RunState>> {
    drive_with(engine(store, concurrency)?, run, pipeline, json).await
}

async fn drive_with(
    engine: Engine,
    run: &orbit_store::RunRecord,
    pipeline: &orbit_store::StoredPipeline,
    json: bool,
) -> anyhow::Result<Option<RunState>> {
    let progress = Progress::start(run, pipeline, json, engine.subscribe());
    let result = engine.drive_run(run.id, ctrl_c()).await;
    progress.finish().await;
    Ok(result?)
}

pub fn engine(store: &Arc<dyn Store>, concurrency: usize) -> anyhow::Result<Engine> {
    Ok(Engine::new(
        store.clone(),
        super::storage()?,
        EngineConfig {
            owner: owner(),
            concurrency,
            idempotency_ttl: idempotency_ttl()?,
            supervisor: Some(supervisor()),
            ..EngineConfig::default()
        },
    )?)
}

/// Cancelled on Ctrl-C: running attempts finish, nothing new starts, the run stays resumable.
pub fn ctrl_c() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    shutdown
}

/// `IDEMPOTENCY_TTL_SECONDS`, default 24 h.
pub fn idempotency_ttl() -> anyhow::Result<Duration> {
    match std::env::var("IDEMPOTENCY_TTL_SECONDS") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| {
                BadInput(format!(
                    "IDEMPOTENCY_TTL_SECONDS `{v}` is not a whole number of seconds"
                ))
                .into()
            }),
        Err(_) => Ok(Duration::from_secs(24 * 3600)),
    }
}

pub fn parse_input(arg: Option<&str>) -> anyhow::Result<Value> {
    let Some(arg) = arg else {
        return Ok(Value::Object(Default::default()));
    };
    let (text, origin) = match arg.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| BadInput(format!("cannot read input file {path}: {e}")))?,
            path.to_owned(),
        ),
        None => (arg.to_owned(), "--input".to_owned()),
    };
    serde_json::from_str(&text)
        .map_err(|e| BadInput(format!("{origin} is not valid JSON: {e}")).into())
}

/// This binary, which supervises task processes (`orbit __supervise`). `/proc/self/exe` still
/// runs after the file was replaced or deleted by an upgrade.
pub fn supervisor() -> std::path::PathBuf {
    let me = std::path::PathBuf::from("/proc/self/exe");
    if me.exists() {
        return me;
    }
    std::env::current_exe().unwrap_or(me)
}

/// `host:pid`, naming this process in leases and attempts.
pub fn owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}
