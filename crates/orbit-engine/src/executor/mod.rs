//! The built-in task types. Each takes its rendered parameters and the task context and returns
//! the task's JSON output or a typed failure; what it prints goes to the attempt's log.

mod http;
mod process;
pub mod registry;
mod script;
mod shell;
pub mod supervisor;

use crate::log::LogBuffer;
use orbit_core::params::Params;
use orbit_core::template::Context;
use orbit_core::transition::Failure;
use serde_json::Value;
use std::time::Duration;

/// What an executor gets besides its parameters.
pub struct Invocation<'a> {
    /// The task context (input, upstream outputs, run, task, effect key), serialized only by
    /// the executors that hand it to a program.
    pub context: &'a Context<'a>,
    pub run_id: &'a str,
    /// The task run's id: names its process group in the host's registry.
    pub task_run_id: &'a str,
    pub task_name: &'a str,
    pub attempt: u32,
    pub effect_key: &'a str,
    /// The attempt's W3C `traceparent` (see [`orbit_core::trace`]).
    pub traceparent: &'a str,
    pub timeout: Option<Duration>,
    pub log: &'a LogBuffer,
    pub http: &'a reqwest::Client,
    /// The program that supervises task processes (the `orbit` binary), if any: see
    /// [`supervisor`]. Without one, a task's processes are not stopped when this process is
    /// killed with -9.
    pub supervisor: Option<&'a std::path::Path>,
}

pub async fn execute(params: Params, inv: &Invocation<'_>) -> Result<Value, Failure> {
    match params {
        Params::Shell(p) => shell::run(p, inv).await,
        Params::Script(p) => script::run(p, inv).await,
        Params::Http(p) => http::run(p, inv).await,
        Params::Sleep(p) => {
            let now = chrono::Utc::now();
            let d = (p.end(now).map_err(Failure::fatal)? - now)
                .to_std()
                .unwrap_or_default();
            // tokio's timer ticks in milliseconds: a zero sleep would still wait for a tick.
            if !d.is_zero() {
                tokio::time::sleep(d).await;
            }
            Ok(Value::Null)
        }
        Params::Wait(_) | Params::Approval(_) => Err(Failure::fatal(format!(
            "task `{}` parks in the store; the engine runs it, not an executor",
            inv.task_name
        ))),
        // The engine runs child runs itself (it needs the store): see `engine::subrun`.
        Params::Pipeline(p) => Err(Failure::fatal(format!(
            "pipeline task `{}` (of pipeline `{}`) is run by the engine, not an executor",
            inv.task_name, p.pipeline
        ))),
        Params::Worker(p) => Err(Failure::fatal(format!(
            "worker task `{}` runs in an SDK worker service, not here: start `orbit server` with ORBIT_SECRET_KEY and a worker that registers it",
            p.task.as_deref().unwrap_or(inv.task_name)
        ))),
    }
}
