//! `orbit bench`: drains synthetic pipelines through a real store and reports throughput,
//! latency percentiles and peak memory. Each scenario gets a fresh database in a temporary
//! directory, with the durability the store would have in production (`synchronous=FULL`).

use crate::BadInput;
use crate::cli::{BenchArgs, Scenario};
use chrono::Utc;
use orbit_core::retry::RetryPolicy;
use orbit_core::{Pipeline, RunState, TaskDef, TaskType};
use orbit_engine::{Engine, EngineConfig};
use orbit_store::NewRun;
use orbit_store::Store;
use orbit_store_postgres::PgStore;
use orbit_store_postgres::testing::TestDb;
use orbit_store_sqlite::{Durability, SqliteStore};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub async fn bench(args: BenchArgs, json: bool) -> anyhow::Result<u8> {
    let durability: Durability = args.durability.parse().map_err(BadInput)?;
    if args.concurrency == 0 {
        return Err(BadInput("--concurrency must be at least 1".into()).into());
    }
    match args.scenario.clone() {
        Some(Scenario::All { quick }) => {
            for (scenario, args, durability) in the_set(&args, quick) {
                one(&scenario, &args, durability, true).await?;
            }
        }
        Some(scenario) => one(&scenario, &args, durability, json).await?,
        None => {
            for scenario in [
                Scenario::Throughput {
                    tasks: 10_000,
                    keys: 0,
                    key_limit: 1,
                },
                Scenario::Chain { length: 500 },
                Scenario::Fanout { width: 200 },
            ] {
                one(&scenario, &args, durability, json).await?;
            }
        }
    }
    Ok(0)
}

/// What `orbit bench all` runs: the configurations the README's figures come from.
fn the_set(args: &BenchArgs, quick: bool) -> Vec<(Scenario, BenchArgs, Durability)> {
    let basic = [
        Scenario::Throughput {
            tasks: 10_000,
            keys: 0,
            key_limit: 1,
        },
        Scenario::Chain { length: 500 },
        Scenario::Fanout { width: 200 },
    ];
    let big = [
        Scenario::Scale {
            runs: 100,
            tasks: 10_000,
            big: 100_000,
            drain: 10_000,
        },
        Scenario::Retention {
            runs: 100,
            tasks: 10_000,
            drain: 10_000,
        },
    ];
    let with = |postgres: Option<String>, workers: usize| BenchArgs {
        scenario: None,
        postgres,
        workers,
        sdk: None,
        push: false,
        ..args.clone()
    };
    let mut set = Vec::new();
    for durability in [Durability::Full, Durability::Normal] {
        for s in &basic {
            set.push((s.clone(), with(None, 0), durability));
        }
    }
    if let Some(pg) = &args.postgres {
        for s in &basic {
            set.push((s.clone(), with(Some(pg.clone()), 0), Durability::Full));
        }
        for workers in [1, 2, 4] {
            let s = Scenario::Throughput {
                tasks: 10_000,
                keys: 0,
                key_limit: 1,
            };
            set.push((s, with(Some(pg.clone()), workers), Durability::Full));
        }
    }
    if !quick {
        for s in &big {
            set.push((s.clone(), with(None, 0), Durability::Full));
            if let Some(pg) = &args.postgres {
                set.push((s.clone(), with(Some(pg.clone()), 0), Durability::Full));
            }
        }
    }
    set
}

async fn one(
    scenario: &Scenario,
    args: &BenchArgs,
    durability: Durability,
    json: bool,
) -> anyhow::Result<()> {
    if matches!(
        scenario,
        Scenario::Scale { .. } | Scenario::Retention { .. }
    ) {
        anyhow::ensure!(
            args.sdk.is_none() && args.workers == 0,
            BadInput(
                "bench scale and retention drain with the in-process engine (no --sdk, no --workers)"
                    .into()
            )
        );
        let result = if matches!(scenario, Scenario::Scale { .. }) {
            crate::bench_scale::run(scenario, args, durability).await?
        } else {
            crate::bench_retention::run(scenario, args, durability).await?
        };
        println!("{result}");
        return Ok(());
    }
    let result = match &args.sdk {
        Some(sdk) => crate::bench_sdk::run_scenario(sdk, scenario, args, durability).await?,
        None => run_scenario(scenario, args, durability).await?,
    };
    if json {
        println!("{result}");
        return Ok(());
    }
    println!(
        "{:<10} {:>6} tasks  {:>8.0} tasks/s  {} p50 {:.3} ms  p99 {:.3} ms  total {:.1} ms  peak RSS {}  [{}, {}]",
        result["scenario"].as_str().unwrap_or_default(),
        result["tasks"],
        result["tasks_per_sec"].as_f64().unwrap_or_default(),
        result["latency"].as_str().unwrap_or_default(),
        result["p50_ms"].as_f64().unwrap_or_default(),
        result["p99_ms"].as_f64().unwrap_or_default(),
        result["elapsed_ms"].as_f64().unwrap_or_default(),
        result["peak_rss_bytes"]
            .as_f64()
            .map_or("n/a (workers)".to_string(), |b| format!(
                "{:.1} MB",
                b / 1_048_576.0
            )),
        result["durability"].as_str().unwrap_or_default(),
        result["drained_by"].as_str().unwrap_or_default(),
    );
    if let Some(map) = result["map"].as_object() {
        println!(
            "{:<10} {} children made in {:.0} ms (expansion's end -> first child claimed); children drained at {:.0}/s",
            "",
            map["elements"],
            map["create_children_ms"].as_f64().unwrap_or_default(),
            map["children_per_sec"].as_f64().unwrap_or_default()
        );
    }
    if let Some(s) = result["sleepers"].as_object() {
        let mb = |k: &str| s[k].as_f64().unwrap_or_default() / 1_048_576.0;
        println!(
            "{:<10} {} parked in {:.0} ms ({:.0}/s); process RSS {:.1} MB before, {:.1} MB with all parked; woken {:.0}-{:.0} ms after their instant ({:.0}/s)",
            "",
            s["tasks"],
            s["parked_in_ms"].as_f64().unwrap_or_default(),
            s["parks_per_sec"].as_f64().unwrap_or_default(),
            mb("rss_before_bytes"),
            mb("rss_all_parked_bytes"),
            s["first_woken_after_ms"].as_f64().unwrap_or_default(),
            s["last_woken_after_ms"].as_f64().unwrap_or_default(),
            s["woken_per_sec"].as_f64().unwrap_or_default()
        );
    }
    if let Some(cpu) = result["server_cpu_pct"].as_f64() {
        println!(
            "{:<10} server CPU {cpu:.0} %, workers CPU {:.0} % (of one core, while draining)",
            "",
            result["workers_cpu_pct"].as_f64().unwrap_or_default()
        );
    }
    Ok(())
}

/// A task that does nothing: a zero sleep, or for an SDK worker its `noop` handler.
fn noop(name: String, needs: Vec<String>, worker: bool) -> TaskDef {
    let (task_type, params) = if worker {
        (TaskType::Worker, json!({"task": "noop"}))
    } else {
        (TaskType::Sleep, json!({"duration": 0}))
    };
    TaskDef {
        name,
        task_type,
        params: params.as_object().cloned().unwrap_or_default(),
        needs,
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        timeout: None,
        priority: 0,
        heartbeat_interval: orbit_core::pipeline::DEFAULT_HEARTBEAT_INTERVAL,
        idempotency_key: None,
        queue: None,
        allowed_next: Vec::new(),
        concurrency: None,
        rate_limit: None,
        for_each: None,
    }
}

/// The scenario's pipeline, of SDK worker tasks when `worker`.
pub(crate) fn pipeline(scenario: &Scenario, worker: bool) -> Pipeline {
    let tasks = match *scenario {
        Scenario::Throughput {
            tasks,
            keys,
            key_limit,
        } => (0..tasks)
            .map(|i| {
                let mut t = noop(format!("t{i:06}"), vec![], worker);
                t.concurrency = (keys > 0).then(|| orbit_core::pipeline::Concurrency {
                    key: format!("k{}", i % keys),
                    limit: Some(key_limit),
                });
                t
            })
            .collect(),
        Scenario::Scale { drain: tasks, .. } | Scenario::Retention { drain: tasks, .. } => (0
            ..tasks)
            .map(|i| noop(format!("t{i:06}"), vec![], worker))
            .collect(),
        Scenario::Chain { length } => (0..length)
            .map(|i| {
                noop(
                    format!("t{i:06}"),
                    if i == 0 {
                        vec![]
                    } else {
                        vec![format!("t{:06}", i - 1)]
                    },
                    worker,
                )
            })
            .collect(),
        Scenario::Fanout { width } => {
            let mut v = vec![noop("root".into(), vec![], worker)];
            v.extend((0..width).map(|i| noop(format!("t{i:06}"), vec!["root".into()], worker)));
            v.push(noop(
                "join".into(),
                (0..width).map(|i| format!("t{i:06}")).collect(),
                worker,
            ));
            v
        }
        Scenario::Map { .. } => {
            let mut each = noop("each".into(), vec![], worker);
            each.for_each = Some(orbit_core::pipeline::ForEach {
                items: "{{ input.items }}".into(),
                allow_failures: 0.0,
                fail_fast: false,
            });
            vec![each, noop("after".into(), vec!["each".into()], worker)]
        }
        Scenario::Sleepers { .. } => {
            let mut sleepers = noop("sleepers".into(), vec![], false);
            sleepers.params = json!({"until": "{{ input.at }}"})
                .as_object()
                .cloned()
                .unwrap_or_default();
            sleepers.for_each = Some(orbit_core::pipeline::ForEach {
                items: "{{ range(input.n) | list }}".into(),
                allow_failures: 0.0,
                fail_fast: false,
            });
            vec![sleepers]
        }
        Scenario::All { .. } => Vec::new(),
    };
    Pipeline {
        name: "bench".into(),
        description: None,
        schedule: None,
        concurrency: None,
        output: None,
        tasks,
    }
}

/// A scenario's database, fresh: SQLite in a temporary file, or a throw-away database on the
/// PostgreSQL server named by --postgres (dropped with `db`).
pub(crate) struct Fresh {
    pub store: Arc<dyn Store>,
    pub url: String,
    pub db: Option<TestDb>,
    pub label: String,
}

pub(crate) async fn fresh_store(
    args: &BenchArgs,
    durability: Durability,
    dir: &std::path::Path,
) -> anyhow::Result<Fresh> {
    Ok(match &args.postgres {
        Some(admin) => {
            let db = TestDb::create_on(admin).await.map_err(BadInput)?;
            let pg = PgStore::connect(&db.url, 8).await?;
            pg.migrate().await?;
            let sync: String = sqlx_free_setting(&pg).await;
            Fresh {
                store: Arc::new(pg),
                url: db.url.clone(),
                db: Some(db),
                label: format!("postgres synchronous_commit={sync}"),
            }
        }
        None => {
            let path = dir.join("bench.db");
            let store = SqliteStore::open(&path.display().to_string(), durability).await?;
            let label = match durability {
                Durability::Full => "sqlite wal synchronous=FULL",
                Durability::Normal => "sqlite wal synchronous=NORMAL",
            };
            Fresh {
                store: Arc::new(store),
                url: format!("sqlite://{}", path.display()),
                db: None,
                label: label.into(),
            }
        }
    })
}

async fn run_scenario(
    scenario: &Scenario,
    args: &BenchArgs,
    durability: Durability,
) -> anyhow::Result<serde_json::Value> {
    // Each scenario reports its own peak: "5" resets VmHWM (Linux 4.0+); without it the peak
    // is the process's so far.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let concurrency = args.concurrency;
    let dir = tempfile::tempdir()?;
    let Fresh {
        store,
        url,
        db: _db,
        label,
    } = fresh_store(args, durability, dir.path()).await?;
    let workers = (0..args.workers)
        .map(|_| start_worker(&url, concurrency, dir.path()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.workers > 0 {
        // Let them connect and start listening before the clock starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pipeline = pipeline(scenario, false);
    let mut tasks = pipeline.tasks.len();
    let stored = store.save_pipeline(&pipeline, None, Utc::now()).await?;
    let enqueue_started = Instant::now();
    let mut new = bench_run(&stored);
    if let Scenario::Map { elements } = *scenario {
        anyhow::ensure!(
            args.sdk.is_none(),
            BadInput("bench map runs built-in tasks (no --sdk)".into())
        );
        new.input = json!({ "items": (0..elements).collect::<Vec<_>>() });
        tasks += elements;
    }
    let mut sleepers = None;
    if let Scenario::Sleepers { tasks: n, wake_in } = *scenario {
        anyhow::ensure!(
            args.sdk.is_none() && args.workers == 0,
            BadInput("bench sleepers runs in this process (no --sdk, no --workers)".into())
        );
        let at = Utc::now() + chrono::Duration::seconds(wake_in as i64);
        new.input = json!({ "n": n, "at": at.to_rfc3339() });
        tasks += n;
        sleepers = Some((n, at));
    }
    let run = store.create_run(new).await?.run;
    let enqueue = enqueue_started.elapsed();
    // The harness's copies of a 10k-task pipeline are not the engine's memory.
    drop((pipeline, stored));
    let started = Instant::now();
    // While the sleepers park: when the last one did, and the process's memory then.
    let parked_watch = sleepers.map(|(n, _)| {
        let (store, id) = (store.clone(), run.id);
        tokio::spawn(async move {
            let baseline = rss_bytes();
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let parked: u64 = store
                    .child_counts(id)
                    .await
                    .unwrap_or_default()
                    .iter()
                    .filter(|c| c.state == orbit_core::TaskState::Parked)
                    .map(|c| c.count)
                    .sum();
                if parked >= n as u64 {
                    return (started.elapsed(), baseline, rss_bytes());
                }
            }
        })
    });
    let (state, elapsed, peak_rss) = if args.workers > 0 {
        let state = loop {
            let r = store.run(run.id).await?;
            if r.state.is_terminal() {
                break Some(r.state);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        (state, started.elapsed(), None)
    } else {
        let (state, elapsed) = drive_here(&store, run.id, concurrency).await?;
        (state, elapsed, Some(peak_rss_bytes()))
    };
    for mut w in workers {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }
    let drained_by = if args.workers > 0 {
        format!("{} worker processes x {concurrency}", args.workers)
    } else {
        format!("in-process engine x {concurrency}")
    };
    if state != Some(RunState::Succeeded) {
        anyhow::bail!("benchmark run ended {state:?}");
    }
    let attempts = store.attempts(run.id, None).await?;
    let task_runs = store.task_runs(run.id).await?;
    let map = match scenario {
        Scenario::Map { elements } => map_figures(*elements, &attempts),
        _ => serde_json::Value::Null,
    };
    let sleepers = match (sleepers, parked_watch) {
        (Some((n, at)), Some(watch)) => {
            let (parked_in, rss_before, rss_parked) = watch.await?;
            let woken: Vec<&orbit_store::AttemptRecord> = attempts
                .iter()
                .filter(|a| a.task_name.starts_with("sleepers[") && a.outcome == "succeeded")
                .collect();
            let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
            let first = woken.iter().map(|a| a.started_at).min().unwrap_or(at);
            let last = woken.iter().map(|a| a.started_at).max().unwrap_or(at);
            json!({
                "tasks": n,
                "parked_in_ms": parked_in.as_secs_f64() * 1000.0,
                "parks_per_sec": n as f64 / parked_in.as_secs_f64(),
                "rss_before_bytes": rss_before,
                "rss_all_parked_bytes": rss_parked,
                "first_woken_after_ms": ms(first - at),
                "last_woken_after_ms": ms(last - at),
                "woken_per_sec": n as f64 / (ms(last - first).max(1.0) / 1000.0),
            })
        }
        _ => serde_json::Value::Null,
    };
    let (latency, samples) = latency(scenario, &attempts, &task_runs);
    let pct = |p: f64| percentile(&samples, p);
    let keys = match *scenario {
        Scenario::Throughput {
            keys, key_limit, ..
        } if keys > 0 => {
            json!({"keys": keys, "limit": key_limit})
        }
        _ => serde_json::Value::Null,
    };
    Ok(json!({
        "scenario": scenario_name(scenario),
        "tasks": tasks,
        "concurrency_keys": keys,
        "concurrency": concurrency,
        "durability": label,
        "drained_by": drained_by,
        "enqueue_ms": enqueue.as_secs_f64() * 1000.0,
        "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
        "tasks_per_sec": tasks as f64 / elapsed.as_secs_f64(),
        "latency": latency,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "peak_rss_bytes": peak_rss,
        "map": map,
        "sleepers": sleepers,
    }))
}

/// A map run's own figures: from the expanding attempt's end to the first child's claim (the
/// commit that makes the children, and the claim after it), and the children's drain rate.
fn map_figures(elements: usize, attempts: &[orbit_store::AttemptRecord]) -> serde_json::Value {
    let expanded = attempts
        .iter()
        .find(|a| a.task_name == "each" && a.outcome == "expanded");
    let children: Vec<&orbit_store::AttemptRecord> = attempts
        .iter()
        .filter(|a| a.task_name.starts_with("each["))
        .collect();
    let first = children.iter().map(|a| a.started_at).min();
    let last = children.iter().map(|a| a.finished_at).max();
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    match (expanded, first, last) {
        (Some(e), Some(first), Some(last)) => json!({
            "elements": elements,
            "create_children_ms": ms(first - e.finished_at),
            "children_drain_ms": ms(last - first),
            "children_per_sec": elements as f64 / (ms(last - first) / 1000.0),
        }),
        _ => serde_json::Value::Null,
    }
}

/// An `orbit worker` process claiming from the bench database.
fn start_worker(
    url: &str,
    concurrency: usize,
    dir: &std::path::Path,
) -> anyhow::Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "worker",
            "--concurrency",
            &concurrency.to_string(),
            "--database-url",
            url,
        ])
        .env("ORBIT_LOG", "error")
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

fn bench_run(stored: &orbit_store::StoredPipeline) -> NewRun<'_> {
    NewRun {
        id: uuid::Uuid::now_v7(),
        pipeline: stored,
        input: json!({}),
        priority: 0,
        idempotency_key: None,
        idempotency_ttl: Duration::from_secs(60),
        request_hash: None,
        triggered_by: orbit_store::TriggeredBy::Cli,
        parent: None,
        rerun: None,
        now: Utc::now(),
    }
}

pub(crate) fn scenario_name(scenario: &Scenario) -> &'static str {
    match scenario {
        Scenario::Throughput { .. } => "throughput",
        Scenario::Chain { .. } => "chain",
        Scenario::Fanout { .. } => "fanout",
        Scenario::Scale { .. } => "scale",
        Scenario::Retention { .. } => "retention",
        Scenario::Map { .. } => "map",
        Scenario::Sleepers { .. } => "sleepers",
        Scenario::All { .. } => "all",
    }
}

/// What a scenario's latency is, and its samples (ms, sorted): for a chain, from one task's
/// completion to the next one's start; otherwise how long each task waited once ready.
pub(crate) fn latency(
    scenario: &Scenario,
    attempts: &[orbit_store::AttemptRecord],
    task_runs: &[orbit_store::TaskRunRecord],
) -> (&'static str, Vec<f64>) {
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    let (label, mut samples): (&str, Vec<f64>) = match scenario {
        Scenario::Chain { .. } => {
            let mut by_name = attempts.to_vec();
            by_name.sort_by(|a, b| a.task_name.cmp(&b.task_name));
            let steps = by_name
                .windows(2)
                .map(|w| ms(w[1].started_at - w[0].finished_at))
                .collect();
            ("step (completion -> next start)", steps)
        }
        _ => {
            let starts: std::collections::HashMap<_, _> = attempts
                .iter()
                .map(|a| (a.task_run_id, a.started_at))
                .collect();
            let waits = task_runs
                .iter()
                .filter_map(|t| Some(ms(*starts.get(&t.id)? - t.ready_at?)))
                .collect();
            ("queue (ready -> start)", waits)
        }
    };
    samples.sort_by(f64::total_cmp);
    (label, samples)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// Drains the run with an engine in this process; returns its state and how long it took.
async fn drive_here(
    store: &Arc<dyn Store>,
    run: uuid::Uuid,
    concurrency: usize,
) -> anyhow::Result<(Option<RunState>, Duration)> {
    let objects = tempfile::tempdir()?;
    let storage = orbit_engine::storage::Storage::local(objects.path())?;
    let engine = Engine::new(
        store.clone(),
        std::sync::Arc::new(storage),
        EngineConfig {
            owner: "bench".into(),
            concurrency,
            supervisor: Some(crate::commands::run::supervisor()),
            ..EngineConfig::default()
        },
    )?;
    let started = Instant::now();
    let state = engine.drive_run(run, CancellationToken::new()).await?;
    Ok((state, started.elapsed()))
}

/// The server's `synchronous_commit`, for the report.
async fn sqlx_free_setting(store: &PgStore) -> String {
    store
        .setting("synchronous_commit")
        .await
        .unwrap_or_else(|_| "?".into())
}

/// The process's peak resident set (VmHWM), in bytes.
pub(crate) fn peak_rss_bytes() -> u64 {
    status_kb("VmHWM:") * 1024
}

/// The process's resident set now (VmRSS), in bytes.
pub(crate) fn rss_bytes() -> u64 {
    status_kb("VmRSS:") * 1024
}

fn status_kb(field: &str) -> u64 {
    process_status_kb("self", field)
}

/// A `/proc/<pid>/status` figure in kB (0 when unreadable).
pub(crate) fn process_status_kb(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
}
