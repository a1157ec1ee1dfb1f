//! The command line, as clap sees it.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "orbit",
    version,
    about = "Durable workflow orchestrator: DAG pipelines with retries, crash-safe state and resumable runs."
)]
pub struct Cli {
    /// Where Orbit keeps its state [default: sqlite://.orbit/orbit.db; also DATABASE_URL]
    #[arg(long, global = true, env = "ORBIT_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,

    /// Print machine-readable JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,

    /// First resume every interrupted run, then do the command
    #[arg(long, global = true)]
    pub auto_recover: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline (a file, or the name of a saved pipeline) here, in this process
    Run(RunArgs),
    /// Check a pipeline file and show its execution layers
    Validate {
        /// The pipeline file (YAML)
        file: PathBuf,
    },
    /// List saved pipelines
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Create or update pipelines from files (YAML or JSON, Orbit or Orbit-Py format), locally
    /// or on a server (--url): each with its version and whether it changed
    Apply {
        /// Pipeline files
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List runs, newest first
    Runs(RunsArgs),
    /// Show a run and the state of each of its tasks
    Status {
        /// Run id, or a unique prefix of it
        run: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Why a run's tasks are not running: one line for each task that waits, and what for
    Why {
        /// Run id, or a unique prefix of it
        run: String,
        /// Only this task
        task: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Create a run for a server or workers to execute (does not execute it here)
    Trigger(TriggerArgs),
    /// List the servers and workers sharing the store, with their last heartbeat
    Services {
        #[command(flatten)]
        remote: Remote,
    },
    /// Tasks and the history of their code versions
    Tasks {
        #[command(subcommand)]
        action: TasksAction,
    },
    /// Serve the HTTP API, run embedded workers, the reaper and cron
    Server(ServerArgs),
    /// Claim and execute ready tasks from the store, alongside any number of other workers
    Worker(WorkerArgs),
    /// Database administration
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// Show the logs of a run's attempts
    Logs {
        /// Run id, or a unique prefix of it
        run: String,
        /// Only this task
        task: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print the context one attempt of a task run had (input, upstream outputs, rendered
    /// parameters), as JSON: what an SDK's run_local can be fed
    Context {
        /// Task run id, or a unique prefix of it
        task_run: String,
        /// That attempt (the last one by default)
        #[arg(long)]
        attempt: Option<u32>,
    },
    /// Execute one attempt of a built-in task again on this machine, from its recorded
    /// context, and compare its output and log with the recorded attempt (the run is not touched)
    Replay {
        /// Task run id, or a unique prefix of it
        task_run: String,
        /// That attempt (the last one by default)
        #[arg(long)]
        attempt: Option<u32>,
    },
    /// Print the completion script of a shell: `orbit completions bash > /etc/bash_completion.d/orbit`
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Print orbit's man page (roff): `orbit man | man -l -`
    Man,
    /// Draw a pipeline's DAG
    Graph {
        /// A pipeline file, or the name of a saved pipeline
        pipeline: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Send a signal: every `wait` task waiting for NAME gets the payload as its output; with
    /// none waiting yet, it is kept (--ttl) for the first that waits
    Signal {
        /// The signal's name (what a wait task's `event` renders to)
        name: String,
        /// The payload: JSON text, or @path to a JSON file (null when absent)
        #[arg(short = 'd', long = "data", value_name = "JSON|@FILE")]
        data: Option<String>,
        /// How long it is kept when no task waits for it yet
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Approve (or --reject) an approval task that waits for a decision
    Approve {
        /// Run id, or a unique prefix of it
        run: String,
        /// The approval task
        task: String,
        /// Reject instead of approving
        #[arg(long)]
        reject: bool,
        /// A comment recorded with the decision
        #[arg(short, long)]
        message: Option<String>,
        /// Who decides (checked against the task's approvers); $USER by default
        #[arg(long = "as", value_name = "NAME")]
        by: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop a run: running attempts are killed, waiting tasks cancelled
    Cancel {
        /// Run id, or a unique prefix of it
        run: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a settled run: its task runs, logs, events and its objects in object storage
    Delete {
        /// Run id, or a unique prefix of it
        run: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Re-queue the dead and cancelled tasks of a failed or cancelled run and run them here
    /// (with --url: the server runs them)
    Retry {
        /// Run id, or a unique prefix of it
        run: String,
        /// Only re-queue; do not execute here
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Run a run again from one of its tasks: a new run of the same pipeline version that keeps
    /// the recorded outputs of every task not downstream of --from, and runs --from and
    /// everything after it (optionally with another input or other upstream outputs)
    Rerun {
        /// Run id, or a unique prefix of it (any state)
        run: String,
        /// The task to run again, with everything downstream of it
        #[arg(long, value_name = "TASK")]
        from: String,
        /// Another run input: JSON text, or @path to a JSON file
        #[arg(short, long, value_name = "JSON|@FILE", conflicts_with = "edit")]
        input: Option<String>,
        /// Open the input and the outputs of --from's upstream tasks in $EDITOR (as one JSON
        /// document) and use what you save
        #[arg(long)]
        edit: bool,
        /// Only create the run; do not execute it here
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List runs that nobody is executing any more
    CheckInterrupted {
        /// How long a run without a live worker must be idle to count as interrupted
        /// (default: INTERRUPTED_RUN_THRESHOLD_MINUTES, else 30s)
        #[arg(long, value_parser = parse_duration)]
        idle: Option<std::time::Duration>,
    },
    /// Resume an interrupted run from its last successful steps, here (with --url: on the
    /// server)
    Resume {
        /// Run id, or a unique prefix of it
        run: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Detect interrupted runs and, with --auto-resume, resume them all
    Recover {
        #[arg(long)]
        auto_resume: bool,
        /// As for check-interrupted
        #[arg(long, value_parser = parse_duration)]
        idle: Option<std::time::Duration>,
    },
    /// Named limits of concurrency keys: list them, set one, delete one
    Limits {
        #[command(subcommand)]
        action: Option<LimitsAction>,
        #[command(flatten)]
        remote: Remote,
    },
    /// The dead-letter queue: tasks whose attempts are spent or that failed for good
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        #[command(flatten)]
        remote: Remote,
    },
    /// Measure throughput and latency on this machine
    Bench(BenchArgs),
    /// Show every setting, its effective value (secrets masked) and where it came from
    Config,
    /// A worker service of no-op tasks, for `orbit bench --sdk rust`
    #[command(name = "__bench-worker", hide = true)]
    BenchWorker {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long)]
        push: bool,
    },
}

impl Command {
    /// The `--url` options of a command that can talk to a server.
    pub fn remote_mut(&mut self) -> Option<&mut Remote> {
        match self {
            Command::Runs(a) => Some(&mut a.remote),
            Command::Trigger(a) => Some(&mut a.remote),
            Command::Status { remote, .. }
            | Command::Why { remote, .. }
            | Command::Services { remote }
            | Command::List { remote }
            | Command::Apply { remote, .. }
            | Command::Logs { remote, .. }
            | Command::Graph { remote, .. }
            | Command::Cancel { remote, .. }
            | Command::Signal { remote, .. }
            | Command::Approve { remote, .. }
            | Command::Delete { remote, .. }
            | Command::Retry { remote, .. }
            | Command::Rerun { remote, .. }
            | Command::Resume { remote, .. }
            | Command::Dlq { remote, .. }
            | Command::Limits { remote, .. } => Some(remote),
            Command::Tasks {
                action: TasksAction::History { remote, .. },
            } => Some(remote),
            _ => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A pipeline file (YAML), or the name of a saved pipeline
    pub pipeline: String,
    /// The run's input: JSON text, or @path to a JSON file
    #[arg(short, long, value_name = "JSON|@FILE")]
    pub input: Option<String>,
    /// Most tasks running at once
    #[arg(long, env = "MAX_CONCURRENCY", default_value_t = 10)]
    pub concurrency: usize,
    /// A run with this key made within IDEMPOTENCY_TTL_SECONDS (default 24 h) is returned instead of a new one
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

/// Talk to a running `orbit server` instead of the database.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The server's base URL (http://host:3000); the bearer token comes from ORBIT_API_TOKEN
    #[arg(long, global = true, env = "ORBIT_URL", value_name = "URL")]
    pub url: Option<String>,
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// The name of a saved pipeline
    pub pipeline: String,
    /// The run's input: JSON text, or @path to a JSON file
    #[arg(short, long, value_name = "JSON|@FILE")]
    pub input: Option<String>,
    /// Returns the existing run when a run with this key was made within the idempotency TTL
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Added to every task's priority; higher is claimed first
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on. Without ORBIT_API_TOKEN only loopback addresses are allowed
    #[arg(long, env = "ORBIT_BIND", default_value = "127.0.0.1:3000")]
    pub bind: String,
    /// Embedded worker slots [default: MAX_CONCURRENCY (10) on SQLite, 0 on PostgreSQL]
    #[arg(long, env = "ORBIT_WORKERS")]
    pub workers: Option<usize>,
    /// standalone (background work) or serverless (work only on POST /api/v1/process)
    #[arg(long, env = "MODE", value_enum, ignore_case = true, default_value_t = ServerMode::Standalone)]
    pub mode: ServerMode,
    /// Also keep this many `orbit worker` processes running beside the server (each with
    /// --concurrency of MAX_CONCURRENCY), restarted when one dies, stopped with the server
    #[arg(long, env = "ORBIT_WORKER_PROCESSES_WITH_SERVER", default_value_t = 0)]
    pub workers_processes: usize,
    /// Do not apply database migrations on start
    #[arg(long)]
    pub no_migrate: bool,
    /// With ORBIT_API_TOKEN set, still serve /api/v1/health and /metrics without it
    #[arg(long)]
    pub public_health: bool,
    /// Most tasks one POST /api/v1/process executes
    #[arg(long, default_value_t = 100)]
    pub process_batch: usize,
    #[command(flatten)]
    pub work: WorkOptions,
}

/// What a server runs in the background.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerMode {
    /// Embedded workers, the reaper and cron
    Standalone,
    /// Nothing: work happens only on POST /api/v1/process
    Serverless,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Most tasks running at once (in each process)
    #[arg(long, env = "MAX_CONCURRENCY", default_value_t = 10)]
    pub concurrency: usize,
    /// Keep this many worker processes running: one that dies is started again (after a
    /// backoff), and SIGTERM/SIGINT stop them all gracefully
    #[arg(long, env = "ORBIT_WORKER_PROCESSES", default_value_t = 1)]
    pub processes: usize,
    #[command(flatten)]
    pub work: WorkOptions,
}

#[derive(Debug, Args)]
pub struct WorkOptions {
    /// Only claim tasks of this queue (repeatable; default: every queue)
    #[arg(long = "queue", value_name = "QUEUE")]
    pub queues: Vec<String>,
    /// Only claim tasks of this type: shell, http, sleep, script (repeatable)
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// How often to look for work when no wake-up came, in milliseconds
    #[arg(long, env = "POLL_INTERVAL_MS", default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// On SIGTERM/SIGINT, how long running attempts may take before their leases are handed back
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub grace: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub enum TasksAction {
    /// Every code version of a task: an SDK task's handler hashes, a YAML task's definitions
    History {
        /// The task's name (a registered task, or a task of a pipeline)
        task: String,
        /// Only the task of this pipeline
        #[arg(long)]
        pipeline: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Apply pending migrations to the database (also `db init`, PipeWeave's name)
    #[command(alias = "init")]
    Migrate,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs in this state (pending, running, succeeded, failed, cancelled)
    #[arg(long)]
    pub status: Option<String>,
    /// Only runs of this pipeline
    #[arg(long)]
    pub pipeline: Option<String>,
    /// How many
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Option<Scenario>,
    /// Concurrency of the engine
    #[arg(long, global = true, default_value_t = 64)]
    pub concurrency: usize,
    /// SQLite durability: full (default, survives power loss) or normal
    #[arg(long, global = true, default_value = "full")]
    pub durability: String,
    /// Benchmark this PostgreSQL database instead of a temporary SQLite file (its tables are
    /// emptied of the benchmark's own runs only)
    #[arg(long, global = true, value_name = "URL")]
    pub postgres: Option<String>,
    /// Drain with this many `orbit worker` processes instead of an in-process engine (with
    /// --sdk: this many SDK worker processes; default 1)
    #[arg(long, global = true, default_value_t = 0)]
    pub workers: usize,
    /// Drain `type: worker` tasks with worker processes of this SDK (`rust`, `typescript`, `python`), over HTTP
    /// through a real `orbit server`: the worker protocol's speed
    #[arg(long, global = true, value_name = "SDK")]
    pub sdk: Option<String>,
    /// With --sdk: push mode (the server POSTs each attempt to the workers) instead of pull
    #[arg(long, global = true)]
    pub push: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// N independent no-op tasks enqueued, then drained
    Throughput {
        #[arg(long, default_value_t = 10_000)]
        tasks: usize,
        /// Give the tasks this many distinct concurrency keys (task i gets key i mod N), each
        /// with --key-limit: what counting per key costs a claim
        #[arg(long, default_value_t = 0)]
        keys: usize,
        /// Attempts of one key running at once, with --keys
        #[arg(long, default_value_t = 1)]
        key_limit: u32,
    },
    /// N dependent no-op tasks: latency from one task's completion to the next one's start
    Chain {
        #[arg(long, default_value_t = 500)]
        length: usize,
    },
    /// 1 -> N -> 1
    Fanout {
        #[arg(long, default_value_t = 200)]
        width: usize,
    },
    /// A `for_each` over N elements (no-op children) and a task that needs their outputs:
    /// how long making the children takes, and the children's drain rate
    Map {
        #[arg(long, default_value_t = 100_000)]
        elements: usize,
    },
    /// N tasks (a `for_each` of sleeps) parked until one instant --wake-in seconds ahead: how
    /// fast they park, the process's memory while they sleep, and how close to the instant
    /// they all run
    Sleepers {
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        #[arg(long, default_value_t = 30)]
        wake_in: u64,
    },
    /// Costs with big tables: drains --drain tasks on an empty store, then again with --runs x
    /// --tasks and one run of --big tasks queued; times the API's main views in-process
    Scale {
        #[arg(long, default_value_t = 100)]
        runs: usize,
        #[arg(long, default_value_t = 10_000)]
        tasks: usize,
        #[arg(long, default_value_t = 100_000)]
        big: usize,
        #[arg(long, default_value_t = 10_000)]
        drain: usize,
    },
    /// Claims while run retention deletes a backlog: runs --runs x --tasks to the end, then
    /// drains --drain tasks again and again while retention deletes all of it
    Retention {
        #[arg(long, default_value_t = 100)]
        runs: usize,
        #[arg(long, default_value_t = 10_000)]
        tasks: usize,
        #[arg(long, default_value_t = 10_000)]
        drain: usize,
    },
    /// The whole set behind the README's figures, one JSON line each: SQLite at FULL and
    /// NORMAL, and with --postgres PostgreSQL in-process and with 1, 2 and 4 worker processes;
    /// then scale and retention on each store (skipped with --quick)
    All {
        #[arg(long)]
        quick: bool,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    orbit_core::duration::parse(s)
}

#[derive(Debug, Subcommand)]
pub enum LimitsAction {
    /// Every named limit, with the task runs of its key running now
    List,
    /// At most LIMIT task runs with concurrency key KEY run at once, whatever their tasks
    /// declare (tasks that declare no limit wait for this one)
    Set {
        key: String,
        #[arg(value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        limit: u32,
    },
    /// Remove KEY's named limit
    Delete { key: String },
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Entries, newest first
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One entry: the task's input, every attempt's error, its code version
    Show {
        /// Entry id (the task run's id), or a unique prefix
        id: String,
    },
    /// Re-queue the task with fresh attempts; its run goes on from there, here
    Retry {
        id: String,
        /// Only re-queue; do not execute here
        #[arg(long)]
        no_wait: bool,
    },
    /// Delete entries older than this (the tasks stay dead)
    Purge {
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        older_than: std::time::Duration,
    },
}
