//! `orbit bench --sdk rust`: the worker protocol's speed. A real `orbit server` (this binary)
//! on a fresh store, and worker processes of the Rust SDK (`orbit __bench-worker`) with a
//! no-op handler that reach it over HTTP, by long-poll or, with `--push`, by push. The clock
//! runs from the trigger to the run's end; the CPU the server and the workers used meanwhile
//! is read from `/proc`.

use crate::BadInput;
use crate::bench::{latency, percentile, pipeline, scenario_name};
use crate::cli::{BenchArgs, Scenario};
use chrono::Utc;
use orbit_store_sqlite::Durability;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const SERVICE: &str = "bench";

pub async fn run_scenario(
    sdk: &str,
    scenario: &Scenario,
    args: &BenchArgs,
    durability: Durability,
) -> anyhow::Result<Value> {
    let worker_program = worker_program(sdk)?;
    let workers = args.workers.max(1);
    let dir = tempfile::tempdir()?;
    let crate::bench::Fresh {
        store,
        url,
        db: _db,
        label,
    } = crate::bench::fresh_store(args, durability, dir.path()).await?;
    let secret = format!("bench-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let server = start_server(&url, &secret, port, args, dir.path())?;
    let http = reqwest::Client::new();
    wait_for(&http, &format!("{base}/api/v1/health"), |_| true).await?;
    let children = (0..workers)
        .map(|_| start_worker(&worker_program, &base, &secret, args, dir.path()))
        .collect::<std::io::Result<Vec<Child>>>()?;
    // Every worker process registered (a node of the service) before the clock starts.
    wait_for(&http, &format!("{base}/api/v1/services"), |v| {
        v.as_array()
            .is_some_and(|s| s.iter().filter(|n| n["service"] == SERVICE).count() >= workers)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pipeline = pipeline(scenario, true);
    let tasks = pipeline.tasks.len();
    store.save_pipeline(&pipeline, None, Utc::now()).await?;
    drop(pipeline);
    let pids: Vec<u32> = children.iter().filter_map(Child::id).collect();
    let server_pid = server.id().unwrap_or(0);
    let cpu_before = (cpu_ticks(&[server_pid]), cpu_ticks(&pids));
    let started = Instant::now();
    let created: Value = http
        .post(format!("{base}/api/v1/pipelines/bench/trigger"))
        .json(&json!({"input": {}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let run: uuid::Uuid = created["run"]["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the trigger answered no run: {created}"))?;
    let state = loop {
        let r = store.run(run).await?;
        if r.state.is_terminal() {
            break r.state;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let elapsed = started.elapsed();
    let cpu_after = (cpu_ticks(&[server_pid]), cpu_ticks(&pids));
    for mut c in children {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    drop(server);
    if state != orbit_core::RunState::Succeeded {
        anyhow::bail!("benchmark run ended {state:?}");
    }
    let attempts = store.attempts(run, None).await?;
    let task_runs = store.task_runs(run).await?;
    let (mut latency, mut samples) = latency(scenario, &attempts, &task_runs);
    if let Scenario::Chain { length } = scenario {
        // Over HTTP a step also holds the round trips the store's timestamps do not see: the
        // callback before the commit and the poll after it. The wall clock per step does.
        latency = "step (wall clock per step, HTTP included)";
        samples = vec![elapsed.as_secs_f64() * 1000.0 / (*length).max(1) as f64];
    }
    let pct_of_core =
        |ticks: u64| ticks as f64 / CLOCK_TICKS_PER_SEC / elapsed.as_secs_f64() * 100.0;
    Ok(json!({
        "scenario": scenario_name(scenario),
        "tasks": tasks,
        "concurrency": args.concurrency,
        "durability": label,
        "drained_by": drained_by(sdk, workers, args),
        "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
        "tasks_per_sec": tasks as f64 / elapsed.as_secs_f64(),
        "latency": latency,
        "p50_ms": percentile(&samples, 0.5),
        "p99_ms": percentile(&samples, 0.99),
        "peak_rss_bytes": Value::Null,
        "server_cpu_pct": pct_of_core(cpu_after.0.saturating_sub(cpu_before.0)),
        "workers_cpu_pct": pct_of_core(cpu_after.1.saturating_sub(cpu_before.1)),
    }))
}

/// `orbit server` with no workers of its own, on `port`, over `url`.
pub(crate) fn start_server(
    url: &str,
    secret: &str,
    port: u16,
    args: &BenchArgs,
    dir: &std::path::Path,
) -> anyhow::Result<Child> {
    Ok(Command::new(std::env::current_exe()?)
        .args(["server", "--bind", &format!("127.0.0.1:{port}")])
        .env("ORBIT_DATABASE_URL", url)
        .env("ORBIT_SECRET_KEY", secret)
        .env("ORBIT_WORKERS", "0")
        .env("ORBIT_SQLITE_SYNCHRONOUS", args.durability.as_str())
        .env("ORBIT_LOG", "error")
        .env_remove("ORBIT_API_TOKEN")
        .env_remove("MODE")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log"))?)
        .kill_on_drop(true)
        .spawn()?)
}

/// One SDK worker process of the bench service, against the server at `base`.
fn start_worker(
    program: &[String],
    base: &str,
    secret: &str,
    args: &BenchArgs,
    dir: &std::path::Path,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(&program[0]);
    cmd.args(&program[1..]).args([
        "--url",
        base,
        "--concurrency",
        &args.concurrency.to_string(),
    ]);
    if args.push {
        cmd.arg("--push");
    }
    cmd.env("ORBIT_SECRET_KEY", secret)
        .env("ORBIT_LOG", "error")
        .current_dir(dir)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

/// `2 Rust SDK worker processes x 32 (pull)`.
fn drained_by(sdk: &str, workers: usize, args: &BenchArgs) -> String {
    format!(
        "{workers} {} SDK worker process{} x {} ({})",
        match sdk {
            "rust" => "Rust",
            "python" | "py" => "Python",
            _ => "TypeScript",
        },
        if workers == 1 { "" } else { "es" },
        args.concurrency,
        if args.push { "push" } else { "pull" }
    )
}

/// The command that runs one worker process of `sdk`: this binary for Rust; for TypeScript,
/// Node with the SDK's bench worker (the SDK built in `sdks/typescript` under the working
/// directory, or where ORBIT_TS_SDK says); for Python, ORBIT_PYTHON (else `python3`, which must
/// have the SDK's dependencies) with the bench worker of `sdks/python` (or ORBIT_PY_SDK).
fn worker_program(sdk: &str) -> anyhow::Result<Vec<String>> {
    match sdk {
        "rust" => Ok(vec![
            std::env::current_exe()?.display().to_string(),
            "__bench-worker".into(),
        ]),
        "typescript" | "ts" => {
            let root = std::env::var("ORBIT_TS_SDK").unwrap_or_else(|_| "sdks/typescript".into());
            // Absolute: the workers run in the benchmark's temporary directory.
            let sdk_dir = std::path::Path::new(&root)
                .canonicalize()
                .ok()
                .filter(|d| d.join("dist/esm/index.js").is_file())
                .ok_or_else(|| {
                    BadInput(format!(
                        "--sdk typescript: no built SDK in {root} (run `npm ci && npm run build` there, or set ORBIT_TS_SDK)"
                    ))
                })?;
            let script = sdk_dir.join("scripts/bench-worker.mjs");
            Ok(vec!["node".into(), script.display().to_string()])
        }
        "python" | "py" => {
            let root = std::env::var("ORBIT_PY_SDK").unwrap_or_else(|_| "sdks/python".into());
            let python = std::env::var("ORBIT_PYTHON").unwrap_or_else(|_| "python3".into());
            let script = std::path::Path::new(&root)
                .join("scripts/bench_worker.py")
                .canonicalize()
                .map_err(|_| {
                    BadInput(format!(
                        "--sdk python: no {root}/scripts/bench_worker.py (run from the repository, or set ORBIT_PY_SDK)"
                    ))
                })?;
            let ready = std::process::Command::new(&python)
                .args(["-c", "import httpx, jwt, h11, typing_extensions"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ready {
                return Err(BadInput(format!(
                    "--sdk python: `{python}` cannot import the SDK's dependencies (pip install ./sdks/python, or set ORBIT_PYTHON to a virtualenv's python)"
                ))
                .into());
            }
            Ok(vec![python, script.display().to_string()])
        }
        other => Err(BadInput(format!(
            "--sdk {other}: expected rust, typescript or python"
        ))
        .into()),
    }
}

/// `orbit __bench-worker`: a worker service whose one task, `noop`, returns at once.
pub async fn worker(url: String, concurrency: usize, push: bool) -> anyhow::Result<u8> {
    let mut worker = orbit_sdk::Worker::builder()
        .orchestrator_url(url)
        .service_id(SERVICE)
        .secret_key(std::env::var("ORBIT_SECRET_KEY")?)
        .concurrency(concurrency)
        .build()?;
    worker.register_with(
        "noop",
        orbit_sdk::TaskOptions {
            code_version: Some("1".into()),
            ..Default::default()
        },
        |_ctx: orbit_sdk::Context| async move { Ok::<_, orbit_sdk::TaskError>(Value::Null) },
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    if push {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        worker.listen(listener, None, shutdown).await?;
    } else {
        worker.run(shutdown).await?;
    }
    Ok(0)
}

pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// GETs `url` until it answers 200 with a body `ready` accepts (10 s at most).
pub(crate) async fn wait_for(
    http: &reqwest::Client,
    url: &str,
    ready: impl Fn(&Value) -> bool,
) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
            && let Ok(v) = r.json::<Value>().await
            && ready(&v)
        {
            return Ok(());
        }
        if Instant::now() > end {
            anyhow::bail!("{url} did not become ready within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// User + system CPU time of `pids`, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name, which may hold spaces: utime and stime are the
            // 12th and 13th of them.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// USER_HZ, the unit of /proc's CPU times: 100 on every Linux this runs on (sysconf is not in
/// std).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;
