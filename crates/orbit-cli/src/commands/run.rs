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
        orbit_engine::subruns::check_cycles(store.as_ref(), &pipeline)
            .await
            .map_err(BadInput)?;
        store
            .save_pipeline(&pipeline, Some(&source), Utc::now())
            .await?
    } else {
        saved_pipeline(store.as_ref(), &args.pipeline).await?
    };
    runs_here(&stored, &args.pipeline)?;
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
            triggered_by: orbit_store::TriggeredBy::Cli,
            parent: None,
            rerun: None,
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
    let short = orbit_core::id::short(&run.id);
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
            Some(RunState::Succeeded) => {
                println!(
                    "run {} succeeded in {took} ({} tasks)",
                    run.id, record.tasks_total
                );
                for line in result_lines(store.as_ref(), run.id, &stored).await? {
                    println!("{line}");
                }
            }
            Some(s) => {
                let dead: Vec<String> = store
                    .task_runs(run.id)
                    .await?
                    .into_iter()
                    .filter(|t| t.state == orbit_core::TaskState::Dead)
                    .map(|t| t.task_name)
                    .collect();
                match dead.first() {
                    Some(first) => {
                        // A `for_each` task may have thousands of dead children.
                        let mut named = dead.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
                        if dead.len() > 5 {
                            named.push_str(&format!(" and {} more", dead.len() - 5));
                        }
                        println!("run {} {s} after {took}: dead: {named}", run.id);
                        println!("see `orbit logs {short} {first}`");
                    }
                    None => println!("run {} {s} after {took}", run.id),
                }
            }
            None => println!(
                "run {} stopped before it finished; go on with `orbit resume {short}`",
                run.id
            ),
        }
    }
    Ok(match state {
        Some(RunState::Succeeded) => 0,
        _ => 1,
    })
}

/// What a finished run produced: the output of each task nothing else needs (the pipeline's
/// ends), short, or where it is kept when it went to object storage.
async fn result_lines(
    store: &dyn Store,
    run: uuid::Uuid,
    pipeline: &orbit_store::StoredPipeline,
) -> anyhow::Result<Vec<String>> {
    let needed: std::collections::HashSet<&str> = pipeline
        .pipeline
        .tasks
        .iter()
        .flat_map(|t| t.needs.iter().map(String::as_str))
        .collect();
    let own = orbit_store::TaskRunPage {
        limit: u32::MAX,
        ..Default::default()
    };
    let ends: Vec<_> = store
        .task_runs_page(run, &own)
        .await?
        .into_iter()
        .filter(|t| {
            !needed.contains(t.task_name.as_str()) && t.state == orbit_core::TaskState::Succeeded
        })
        .collect();
    let single = ends.len() == 1;
    Ok(ends
        .into_iter()
        .map(|t| {
            let output = t.output.unwrap_or(Value::Null);
            let what = match orbit_core::object::ObjectRef::of(&output) {
                Some(r) => format!("stored as object `{}` ({} bytes)", r.id(), r.size),
                None => crate::output::brief(&output.to_string(), 200),
            };
            if single {
                format!("result: {what}")
            } else {
                format!("result of {}: {what}", t.task_name)
            }
        })
        .collect())
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

/// `orbit run`, `retry` and `resume` execute built-in tasks in this process; a pipeline with
/// worker tasks would wait forever for a dispatch that only `orbit server` does, so it is
/// refused at once, saying what to do instead.
pub fn runs_here(pipeline: &orbit_store::StoredPipeline, named: &str) -> anyhow::Result<()> {
    let workers: Vec<&str> = pipeline
        .pipeline
        .tasks
        .iter()
        .filter(|t| t.task_type == orbit_core::TaskType::Worker)
        .map(|t| t.name.as_str())
        .collect();
    if workers.is_empty() {
        return Ok(());
    }
    Err(BadInput(format!(
        "pipeline `{}` has worker tasks ({}): they run in worker services, which `orbit server` (with ORBIT_SECRET_KEY) dispatches to, not in `orbit run`. Start a server and the worker service, then: orbit trigger {named} --url http://127.0.0.1:3000",
        pipeline.name,
        workers.join(", ")
    ))
    .into())
}

async fn drive_with(
    engine: Engine,
    run: &orbit_store::RunRecord,
    pipeline: &orbit_store::StoredPipeline,
    json: bool,
) -> anyhow::Result<Option<RunState>> {
    runs_here(pipeline, &pipeline.name)?;
    let progress = Progress::start(run, pipeline, json, engine.subscribe());
    let go_on = format!("orbit resume {}", orbit_core::id::short(&run.id));
    let result = engine.drive_run(run.id, interrupts(&engine, go_on)).await;
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
            grace: STOP_GRACE,
            max_retry_delay: max_retry_delay()?,
            ..EngineConfig::default()
        },
    )?)
}

/// How long running tasks may take to finish after the first Ctrl-C.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The first Ctrl-C (or SIGTERM) cancels the returned token: nothing new starts, running tasks
/// get [`STOP_GRACE`] to finish, then their leases are handed back. A second one stops at once:
/// the process exits, and with it every task's process group (see the engine's supervisor);
/// the run stays resumable. Both say what happens; the second says how to go on (`go_on`).
pub fn interrupts(engine: &Engine, go_on: String) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    let running = engine.running();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let n = running.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "\nstopping: no new task starts; waiting up to {}s for {n} running task{}; Ctrl-C again to stop now",
            STOP_GRACE.as_secs(),
            if n == 1 { "" } else { "s" }
        );
        on_signal.cancel();
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("stopped now: running tasks were killed; go on with `{go_on}`");
        std::process::exit(130);
    });
    shutdown
}

/// `MAX_RETRY_DELAY_MS` (the PipeWeave seed's setting), default 24 h: no retry waits longer.
pub fn max_retry_delay() -> anyhow::Result<Duration> {
    match crate::settings::var("MAX_RETRY_DELAY_MS") {
        None => Ok(orbit_core::retry::DEFAULT_MAX_DELAY),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| {
                crate::settings::invalid(
                    "MAX_RETRY_DELAY_MS",
                    &v,
                    "not a whole number of milliseconds",
                )
                .into()
            }),
    }
}

/// `IDEMPOTENCY_TTL_SECONDS`, default 24 h.
pub fn idempotency_ttl() -> anyhow::Result<Duration> {
    match std::env::var("IDEMPOTENCY_TTL_SECONDS") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| {
                crate::settings::invalid(
                    "IDEMPOTENCY_TTL_SECONDS",
                    &v,
                    "not a whole number of seconds",
                )
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
