//! The validated pipeline model: what a YAML file, the API or the SDK turns into.
//!
//! Type parameters stay as JSON with their `{{ }}` templates unrendered; [`crate::params`]
//! gives them their typed shape once rendered for one attempt.

use crate::retry::RetryPolicy;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::time::Duration;

/// Default interval between two lease renewals of a running task; the lease is twice this.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// A named DAG of tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Cron expression; when set, `orbit server` creates runs on that schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// At most so many runs with the same rendered key run at once; the others stay `pending`
    /// (a run holds its slot from its first claimed task until it settles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// What a run of it gives a parent run that runs it as a task (`type: pipeline`): a
    /// template over its `input`, `tasks` and `run`. Without it, the outputs of the tasks no
    /// other task needs, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Tasks in the order the file lists them.
    pub tasks: Vec<TaskDef>,
}

/// One node of the DAG.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskDef {
    pub name: String,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    /// The type's parameters, templates unrendered.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub needs: Vec<String>,
    pub retry: RetryPolicy,
    #[serde(default, with = "crate::duration::millis::option")]
    pub timeout: Option<Duration>,
    /// Higher is claimed first.
    #[serde(default)]
    pub priority: i32,
    #[serde(with = "crate::duration::millis")]
    pub heartbeat_interval: Duration,
    /// A template (`v{{ code_version }}-{{ input.orderId }}`): a task whose rendered key matches
    /// a succeeded task run's within the idempotency TTL reuses that output instead of running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Which workers may claim it (`orbit worker --queue`); `None` is the `default` queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Dynamic routing: the downstream tasks this task may choose among by returning
    /// `run_next`; the ones it does not choose, and what only they lead to, are skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_next: Vec<String>,
    /// At most so many attempts of tasks with the same rendered key run at once, across every
    /// engine and server sharing the store; the others wait `ready`, in their order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// At most `limit` attempts of tasks with the same rendered key start in any `per`
    /// (a token bucket shared through the store); a task over the rate stays `ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Fan-out over data: one child task run per element of the list this renders to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<ForEach>,
}

/// `for_each: "{{ tasks.list.output.items }}"`: the task runs once per element (`item` and
/// `index` in its context); what needs it gets the list of the children's outputs, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForEach {
    /// A template that renders to a list (at most [`MAX_MAP_ITEMS`] elements).
    pub items: String,
    /// The share of children (percent) that may fail with the task still succeeding (their
    /// outputs are `null` in its list).
    #[serde(default)]
    pub allow_failures: f64,
    /// Once more children have failed than allowed, cancel those not started and fail the task
    /// at once, instead of running every element first.
    #[serde(default)]
    pub fail_fast: bool,
}

/// The task run type of a `for_each` worker task: its expansion and gathering run in the
/// engine (which claims this type), its children (`worker`) in SDK workers.
pub const MAPPED_WORKER: &str = "for_each";

/// The most children one `for_each` task may have.
pub const MAX_MAP_ITEMS: usize = 100_000;

/// The task run name of a `for_each` task's child: `embed[17]`. Task names cannot hold `[`, so
/// it never clashes with a task.
pub fn child_name(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// A child's task name split into its parent's and its index.
pub fn parent_of(name: &str) -> Option<(&str, u32)> {
    let open = name.rfind('[')?;
    let index = name[open + 1..].strip_suffix(']')?.parse().ok()?;
    Some((&name[..open], index))
}

/// A task's rate limit: `rate_limit: { key: "openai", per: 1s, limit: 10 }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// A template over the run's `input` and `run`, rendered when the run is created.
    pub key: String,
    /// The bucket holds `limit` tokens and refills them evenly over `per`.
    #[serde(with = "crate::duration::millis")]
    pub per: Duration,
    /// Attempts that may start in one `per`, at least 1; also the largest burst.
    pub limit: u32,
}

impl RateLimit {
    /// The key for one run (see [`Concurrency::render`]).
    pub fn render(
        &self,
        input: &serde_json::Value,
        run: &str,
        pipeline: &str,
    ) -> Result<String, String> {
        render_key(&self.key, "rate limit key", input, run, pipeline)
    }
}

/// A task's concurrency key: `concurrency: { key: "{{ input.customerId }}", limit: 2 }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concurrency {
    /// A template over the run's `input` and `run` (`id`, `pipeline`), rendered when the run is
    /// created; a plain string is one key shared by every run.
    pub key: String,
    /// Attempts with this key running at once, at least 1. Without it, the key's named limit
    /// (`orbit limits set KEY N`) applies, and until there is one its tasks wait. A named
    /// limit also overrides this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// The longest rendered concurrency key.
pub const MAX_CONCURRENCY_KEY: usize = 256;

impl Concurrency {
    /// The key for one run: rendered over its input and identity. Fails on a template error
    /// (an input field the template names is missing) or a key longer than
    /// [`MAX_CONCURRENCY_KEY`] bytes.
    pub fn render(
        &self,
        input: &serde_json::Value,
        run: &str,
        pipeline: &str,
    ) -> Result<String, String> {
        render_key(&self.key, "concurrency key", input, run, pipeline)
    }
}

/// A key template rendered over a run's input and identity, at most [`MAX_CONCURRENCY_KEY`]
/// bytes.
fn render_key(
    template: &str,
    what: &str,
    input: &serde_json::Value,
    run: &str,
    pipeline: &str,
) -> Result<String, String> {
    let key = if crate::template::is_template(template) {
        let ctx = serde_json::json!({ "input": input, "run": { "id": run, "pipeline": pipeline } });
        crate::template::render_str(template, &ctx)?
    } else {
        template.to_owned()
    };
    if key.is_empty() || key.len() > MAX_CONCURRENCY_KEY {
        return Err(format!(
            "{what} `{}` must be 1 to {MAX_CONCURRENCY_KEY} bytes once rendered",
            crate::echo::echo(&key)
        ));
    }
    Ok(key)
}

/// The queue of tasks that name none.
pub const DEFAULT_QUEUE: &str = "default";

impl TaskDef {
    /// The type its task runs are stored with: a mapped worker task is `for_each` (see
    /// [`MAPPED_WORKER`]).
    pub fn run_type(&self) -> &'static str {
        match (&self.for_each, self.task_type) {
            (Some(_), TaskType::Worker) => MAPPED_WORKER,
            (_, t) => t.as_str(),
        }
    }

    /// The queue claimers pick it from. A worker task's queue is the service task it names,
    /// so that a worker polls exactly the tasks it serves.
    pub fn queue(&self) -> &str {
        match self.task_type {
            TaskType::Worker => self.service_task(),
            _ => self.queue.as_deref().unwrap_or(DEFAULT_QUEUE),
        }
    }

    /// For `type: worker`, the registered task that runs it: its `task` parameter, else its name.
    pub fn service_task(&self) -> &str {
        self.params
            .get("task")
            .and_then(|t| t.as_str())
            .unwrap_or(&self.name)
    }

    /// How long a claim holds the task without a heartbeat.
    pub fn lease(&self) -> Duration {
        self.heartbeat_interval * 2
    }
}

/// The built-in kinds of task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    /// A program run with an argv list, or a string run by `sh -c` when `shell: true`.
    Shell,
    /// An HTTP request.
    Http,
    /// Waits for a duration or until a time (parked in the store when long).
    Sleep,
    /// Parked until a signal of its `event` name arrives (its payload is the output), or its
    /// timeout.
    Wait,
    /// Parked until someone approves or rejects it.
    Approval,
    /// A program for an interpreter (`python3` by default), context on stdin, JSON on stdout.
    Script,
    /// A task registered by an SDK worker service, dispatched to it over the worker protocol.
    Worker,
    /// Another pipeline, run as a child run; its output is the child run's output.
    Pipeline,
}

impl TaskType {
    pub const ALL: [TaskType; 8] = [
        TaskType::Shell,
        TaskType::Http,
        TaskType::Sleep,
        TaskType::Wait,
        TaskType::Approval,
        TaskType::Script,
        TaskType::Worker,
        TaskType::Pipeline,
    ];

    /// The types `orbit server` and `orbit worker` execute themselves.
    pub const BUILT_IN: [TaskType; 7] = [
        TaskType::Shell,
        TaskType::Http,
        TaskType::Sleep,
        TaskType::Wait,
        TaskType::Approval,
        TaskType::Script,
        TaskType::Pipeline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Shell => "shell",
            TaskType::Http => "http",
            TaskType::Sleep => "sleep",
            TaskType::Wait => "wait",
            TaskType::Approval => "approval",
            TaskType::Script => "script",
            TaskType::Worker => "worker",
            TaskType::Pipeline => "pipeline",
        }
    }

    pub fn parse(s: &str) -> Option<TaskType> {
        TaskType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Pipeline {
    pub fn task(&self, name: &str) -> Option<&TaskDef> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// SHA-256 of the canonical JSON form: a changed definition gets a new pipeline version.
    pub fn content_hash(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        hex(&Sha256::digest(&canonical))
    }
}

/// What makes two triggers "the same request" for an idempotency key: SHA-256 over the pipeline's
/// name and the canonical JSON of the input (object keys sorted).
pub fn request_hash(pipeline: &str, input: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(pipeline.as_bytes());
    h.update([0]);
    h.update(serde_json::to_vec(input).unwrap_or_default());
    hex(&h.finalize())
}

/// SHA-256 of one task's canonical definition: its code hash for YAML and API tasks.
pub fn task_hash(task: &TaskDef) -> String {
    hex(&Sha256::digest(
        serde_json::to_vec(task).unwrap_or_default(),
    ))
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Whether `name` is usable as a pipeline or task name: it appears in URLs, file names and
/// templates, so keep it to letters, digits, `-`, `_` and `.`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A pipeline's `schedule`: standard 5-field cron, or 6 fields with seconds first, in UTC.
pub fn parse_schedule(expr: &str) -> Result<croner::Cron, String> {
    expr.parse::<croner::Cron>()
        .map_err(|e| format!("`schedule` is not a valid cron expression (`{expr}`): {e}"))
}
