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
    List,
    /// List runs, newest first
    Runs(RunsArgs),
    /// Show a run and the state of each of its tasks
    Status {
        /// Run id, or a unique prefix of it
        run: String,
    },
    /// Show the logs of a run's attempts
    Logs {
        /// Run id, or a unique prefix of it
        run: String,
        /// Only this task
        task: Option<String>,
    },
    /// Draw a pipeline's DAG
    Graph {
        /// A pipeline file, or the name of a saved pipeline
        pipeline: String,
    },
    /// Stop a run: running attempts are killed, waiting tasks cancelled
    Cancel {
        /// Run id, or a unique prefix of it
        run: String,
    },
    /// Re-queue the dead and cancelled tasks of a failed or cancelled run and run them here
    Retry {
        /// Run id, or a unique prefix of it
        run: String,
        /// Only re-queue; do not execute here
        #[arg(long)]
        no_wait: bool,
    },
    /// List runs that nobody is executing any more
    CheckInterrupted {
        /// How long a run without a live worker must be idle to count as interrupted
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        idle: std::time::Duration,
    },
    /// Resume an interrupted run from its last successful steps, here
    Resume {
        /// Run id, or a unique prefix of it
        run: String,
    },
    /// Detect interrupted runs and, with --auto-resume, resume them all
    Recover {
        #[arg(long)]
        auto_resume: bool,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        idle: std::time::Duration,
    },
    /// The dead-letter queue: tasks whose attempts are spent or that failed for good
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Measure throughput and latency on this machine
    Bench(BenchArgs),
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
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Option<Scenario>,
    /// Concurrency of the engine
    #[arg(long, global = true, default_value_t = 64)]
    pub concurrency: usize,
    /// SQLite durability: full (default, survives power loss) or normal
    #[arg(long, global = true, default_value = "full")]
    pub durability: String,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// N independent no-op tasks enqueued, then drained
    Throughput {
        #[arg(long, default_value_t = 10_000)]
        tasks: usize,
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
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    orbit_core::duration::parse(s)
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
