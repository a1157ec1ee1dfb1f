//! Orbit's Rust SDK: write tasks as async handlers, test them with [`run_local`], and serve
//! them to `orbit server` by pull ([`Worker::run`]: long-poll, works behind NAT) or push
//! ([`Worker::listen`]: the orchestrator POSTs each attempt). The wire protocol is
//! `docs/worker-protocol.md`.
//!
//! ```no_run
//! use orbit_sdk::{Context, TaskError, Worker};
//! use serde_json::{Value, json};
//!
//! #[orbit_sdk::task]
//! async fn shout(ctx: Context) -> Result<Value, TaskError> {
//!     let text = ctx.input["text"].as_str().ok_or(TaskError::fatal("`text` is missing"))?;
//!     ctx.log.info(format!("shouting v{}", ctx.code_version));
//!     Ok(json!({ "text": text.to_uppercase() }))
//! }
//!
//! # async fn main_() -> Result<(), Box<dyn std::error::Error>> {
//! let mut worker = Worker::builder()
//!     .orchestrator_url("http://127.0.0.1:3000")
//!     .service_id("text")
//!     .secret_key(std::env::var("ORBIT_SECRET_KEY")?)
//!     .build()?;
//! worker.register("shout", shout);
//! let out = orbit_sdk::run_local(&worker, "shout", json!({"text": "hi"})).await?;
//! assert_eq!(out.output, json!({"text": "HI"}));
//! worker.run(tokio_util::sync::CancellationToken::new()).await?;
//! # Ok(()) }
//! ```
//!
//! It depends on `orbit-core` (the protocol's messages) only: never on the store, the engine or
//! the server, which it reaches over HTTP.

mod client;
mod handler;
mod objects;
mod protocol;
mod worker;

pub use client::{Client, KeyLimit, Run, RunDetail, RunFilter, Signalled, TaskRun, WhyLine, Woken};
pub use handler::{Context, Handler, HandlerFuture, Logger, TaskError, TaskResult};
pub use orbit_sdk_macros::task;
pub use worker::{SdkError, TaskOptions, Worker, WorkerBuilder};

use serde_json::{Map, Value};
use std::sync::Arc;
use uuid::Uuid;

/// Runs the handler registered as `task` here, in this process, with no orchestrator and no
/// database: the same [`Context`] (upstream outputs empty, attempt 1, code version 0; log lines
/// and progress go to stderr), so a test or a debugger with breakpoints sees exactly what the
/// handler does. The routing choice is checked against the task's `allowed_next` as the
/// orchestrator would.
pub async fn run_local(worker: &Worker, task: &str, input: Value) -> Result<TaskResult, TaskError> {
    run_local_with(worker, task, input, Map::new()).await
}

/// [`run_local`] with the outputs of upstream tasks.
pub async fn run_local_with(
    worker: &Worker,
    task: &str,
    input: Value,
    upstream: Map<String, Value>,
) -> Result<TaskResult, TaskError> {
    let registered = worker
        .tasks
        .get(task)
        .ok_or_else(|| TaskError::unknown(task))?;
    let log = Logger::default();
    let ctx = Context {
        input,
        upstream,
        run_id: Uuid::nil(),
        task_run_id: Uuid::now_v7(),
        task: task.to_owned(),
        attempt: 1,
        code_version: 0,
        effect_key: format!("local-{task}"),
        traceparent: None,
        log: log.clone(),
        progress: Arc::new(|fraction, message| {
            Box::pin(async move {
                eprintln!(
                    "[progress {:.0}%] {}",
                    fraction * 100.0,
                    message.unwrap_or_default()
                );
            })
        }),
        // No orchestrator here: the signal is shown, and nothing waits for it.
        signals: Arc::new(|name, payload, _ttl| {
            Box::pin(async move {
                eprintln!("[signal {name}] {payload}");
                Ok(serde_json::json!({"delivered": [], "kept": false}))
            })
        }),
    };
    let result = registered.handler.call(ctx).await;
    for line in log.lines() {
        eprintln!("{line}");
    }
    let result = result?;
    if let Some(next) = &result.run_next {
        let allowed = &registered.options.allowed_next;
        if let Some(stray) = next.iter().find(|n| !allowed.contains(n)) {
            return Err(TaskError::fatal(format!(
                "run_next names `{stray}`, not in allowed_next [{}]",
                allowed.join(", ")
            )));
        }
    }
    Ok(result)
}
