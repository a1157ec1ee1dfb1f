//! What a handler sees and returns.

use serde_json::{Map, Value};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The future a [`Handler`] returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<TaskResult, TaskError>> + Send>>;

/// A task's code. Implemented for async closures `|ctx| async move { ... }` (no code hash: give
/// [`crate::TaskOptions::code_version`]) and by `#[orbit_sdk::task]` functions, whose code
/// hash is computed from their source at compile time.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, ctx: Context) -> HandlerFuture;

    /// SHA-256 of the handler's source, when known.
    fn code_hash(&self) -> Option<String> {
        None
    }
}

impl<F, Fut, O> Handler for F
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, TaskError>> + Send + 'static,
    O: Into<TaskResult>,
{
    fn call(&self, ctx: Context) -> HandlerFuture {
        let fut = self(ctx);
        Box::pin(async move { fut.await.map(Into::into) })
    }
}

/// What a handler returns: its output and, for a task with `allowed_next`, which of those
/// tasks run next (the others, and what only they lead to, are skipped).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskResult {
    pub output: Value,
    pub run_next: Option<Vec<String>>,
}

impl TaskResult {
    /// An output and a routing choice.
    pub fn next<I, S>(output: Value, run_next: I) -> TaskResult
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TaskResult {
            output,
            run_next: Some(run_next.into_iter().map(Into::into).collect()),
        }
    }
}

impl From<Value> for TaskResult {
    fn from(output: Value) -> TaskResult {
        TaskResult {
            output,
            run_next: None,
        }
    }
}

/// A failed attempt. Retryable unless made with [`TaskError::fatal`]: a fatal error sends the
/// task to the dead-letter queue at once.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskError {
    pub message: String,
    pub retryable: bool,
    /// Set by [`TaskError::retry_after`]: try again after this long, without spending a retry.
    pub retry_after: Option<std::time::Duration>,
}

impl TaskError {
    /// May succeed if tried again.
    pub fn retry(message: impl fmt::Display) -> TaskError {
        TaskError {
            message: message.to_string(),
            retryable: true,
            retry_after: None,
        }
    }

    /// Will not succeed if tried again (bad input, a refused payment).
    pub fn fatal(message: impl fmt::Display) -> TaskError {
        TaskError {
            message: message.to_string(),
            retryable: false,
            retry_after: None,
        }
    }

    /// Not now: try again after `after` (a quota, an upstream's `Retry-After`). The attempt
    /// does not count against the task's retries, however often it happens.
    pub fn retry_after(after: std::time::Duration, message: impl fmt::Display) -> TaskError {
        TaskError {
            message: message.to_string(),
            retryable: true,
            retry_after: Some(after),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

impl From<String> for TaskError {
    fn from(message: String) -> TaskError {
        TaskError::retry(message)
    }
}

impl From<&str> for TaskError {
    fn from(message: &str) -> TaskError {
        TaskError::retry(message)
    }
}

impl From<serde_json::Error> for TaskError {
    fn from(e: serde_json::Error) -> TaskError {
        TaskError::fatal(format!("bad JSON: {e}"))
    }
}

impl From<std::io::Error> for TaskError {
    fn from(e: std::io::Error) -> TaskError {
        TaskError::retry(e)
    }
}

impl From<reqwest::Error> for TaskError {
    fn from(e: reqwest::Error) -> TaskError {
        TaskError::retry(e)
    }
}

/// Sends progress somewhere: to the orchestrator, or to stderr under `run_local`.
pub(crate) type ProgressSink =
    Arc<dyn Fn(f64, Option<String>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Sends a signal: to the orchestrator, or to stderr under `run_local`. Gives what sending it
/// did (`{"delivered", "kept"}`) or why it could not.
pub(crate) type SignalSink = Arc<
    dyn Fn(
            String,
            Value,
            Option<String>,
        ) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>
        + Send
        + Sync,
>;

/// One attempt's view of its task.
#[derive(Clone)]
pub struct Context {
    pub input: Value,
    /// Outputs of the upstream tasks, by task name.
    pub upstream: Map<String, Value>,
    pub run_id: Uuid,
    pub task_run_id: Uuid,
    /// The task's name in the pipeline.
    pub task: String,
    pub attempt: u32,
    pub code_version: i64,
    pub(crate) effect_key: String,
    /// The attempt's W3C `traceparent` (the run's trace): pass it on to continue the trace.
    pub traceparent: Option<String>,
    pub log: Logger,
    pub(crate) progress: ProgressSink,
    pub(crate) signals: SignalSink,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("task", &self.task)
            .field("run_id", &self.run_id)
            .field("attempt", &self.attempt)
            .field("code_version", &self.code_version)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The output of upstream task `name`.
    pub fn upstream(&self, name: &str) -> Option<&Value> {
        self.upstream.get(name)
    }

    /// Stable across the attempts of this task run: pass it on as the idempotency key of the
    /// external systems the handler calls, so a retry does not charge a card twice.
    pub fn effect_key(&self) -> &str {
        &self.effect_key
    }

    /// Sends Orbit signal `name` (what `orbit signal` and `POST /signals/{name}` send): every
    /// `wait` task parked on it gets `payload` as its output; with none waiting yet, it is kept
    /// (`ttl` such as `"10m"`, 24 h when `None`) for the first that waits. Gives
    /// `{"delivered": [{"runId", "task"}], "kept"}`; a failure to send is a retryable error.
    pub async fn send_signal(
        &self,
        name: &str,
        payload: Value,
        ttl: Option<&str>,
    ) -> Result<Value, TaskError> {
        (self.signals)(name.to_owned(), payload, ttl.map(str::to_owned))
            .await
            .map_err(|e| TaskError::retry(format!("signal `{name}` not sent: {e}")))
    }

    /// Reports progress (0.0 to 1.0) with a message; it also keeps the attempt's lease.
    pub async fn progress(&self, fraction: f64, message: impl Into<String>) {
        (self.progress)(fraction.clamp(0.0, 1.0), Some(message.into())).await;
    }
}

/// A handler's log: its lines become the attempt's log in the orchestrator.
#[derive(Clone, Debug, Default)]
pub struct Logger {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Logger {
    pub fn info(&self, line: impl fmt::Display) {
        self.push("INFO", line);
    }

    pub fn warn(&self, line: impl fmt::Display) {
        self.push("WARN", line);
    }

    pub fn error(&self, line: impl fmt::Display) {
        self.push("ERROR", line);
    }

    fn push(&self, level: &str, line: impl fmt::Display) {
        let line = format!("[{level}] {line}");
        tracing::info!(target: "orbit_sdk::task", "{line}");
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(line);
        }
    }

    /// The lines logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}
