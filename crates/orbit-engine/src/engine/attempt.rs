//! One attempt: spawned as a tokio task, its task executed, its transition computed.

use crate::executor::{self, Invocation};
use crate::log::{LiveLogs, LogBuffer};
use crate::storage::{self, RunValues, Storage};
use chrono::{DateTime, Utc};
use orbit_core::object::ObjectRef;
use orbit_core::params::Params;
use orbit_core::template::{self, Context, TaskInfo};
use orbit_core::transition::{Failure, FailureKind, Outcome, Transition, on_attempt_finished};
use orbit_store::{ClaimedTask, FinishedAttempt, Store};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use uuid::Uuid;

use super::{ContextIds, Engine, Keyed, Loaded, hydrated, input_failure, keyed, keys_since};

impl Engine {
    pub(super) fn spawn(
        &self,
        task: ClaimedTask,
        loaded: Arc<Loaded>,
        input: Arc<RunValues>,
        done: mpsc::UnboundedSender<FinishedAttempt>,
    ) -> AbortHandle {
        let store = self.store.clone();
        let http = self.http.clone();
        let worker = self.config.owner.clone();
        let ttl = self.config.idempotency_ttl;
        let live = self.live.clone();
        let storage = self.storage.clone();
        let supervisor = self.config.supervisor.clone();
        let max_retry_delay = self.config.max_retry_delay;
        let clock = self.config.clock;
        tokio::spawn(async move {
            let started_at = clock.now();
            let log = live.start(task.run_id, task.id, &task.task_name);
            // Forgets the live log however the attempt ends, aborted included.
            let _forget = Forget(&live, task.id);
            let io = Io {
                store: store.as_ref(),
                storage: &storage,
                http: &http,
                keys_since: keys_since(started_at, ttl),
                supervisor: supervisor.as_deref(),
            };
            let done_attempt = attempt(&io, &loaded, &task, &input, &log).await;
            let mut finished_at = clock.now();
            let transition = match loaded.dag.index_of(&task.task_name) {
                Some(i) => {
                    let def = &loaded.stored.pipeline.tasks[i];
                    let mut policy = def.retry.clone();
                    policy.max_delay = policy.max_delay.min(max_retry_delay);
                    let policy = &policy;
                    let outcome = match done_attempt.result {
                        Ok(v) if done_attempt.reused => routed(def, v),
                        Ok(v) => {
                            let key =
                                storage::output_key(task.run_id, &task.task_name, task.attempt);
                            stored(&storage, routed(def, v), &key, &log).await
                        }
                        Err(f) => Outcome::Failed(f),
                    };
                    finished_at = clock.now();
                    on_attempt_finished(
                        &loaded.dag,
                        i,
                        policy,
                        task.tries,
                        outcome,
                        finished_at,
                        fastrand::f64(),
                    )
                }
                None => Transition::Dead {
                    failure: Failure::fatal(format!(
                        "task `{}` is not in pipeline version {}",
                        task.task_name, loaded.stored.version
                    )),
                    cancel: Vec::new(),
                },
            };
            let _ = done.send(FinishedAttempt {
                task,
                worker,
                started_at,
                finished_at,
                log: log.take(),
                transition,
                idempotency_key: done_attempt.key,
                reused: done_attempt.reused,
                code_version: Some(loaded.stored.version),
            });
        })
        .abort_handle()
    }
}

struct Forget<'a>(&'a LiveLogs, Uuid);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.finish(self.1);
    }
}

/// A built-in task's success: with `allowed_next`, an output object's `run_next` (a task name
/// or a list of them) is its routing choice.
fn routed(def: &orbit_core::TaskDef, output: Value) -> Outcome {
    if def.allowed_next.is_empty() {
        return Outcome::Succeeded(output);
    }
    let run_next = match output.get("run_next") {
        None => return Outcome::Succeeded(output),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(other) => {
            return Outcome::Failed(Failure::fatal(format!(
                "`run_next` must be a task name or a list of them, not {other}"
            )));
        }
    };
    Outcome::Routed {
        output,
        allowed: def.allowed_next.clone(),
        run_next,
    }
}

/// A successful outcome with its output kept in object storage when it is large. A failure
/// to store it is a failed attempt (retried): the output must be safe before the task counts as
/// done.
async fn stored(storage: &Storage, mut outcome: Outcome, key: &str, log: &LogBuffer) -> Outcome {
    let Some(output) = outcome.output_mut().map(std::mem::take) else {
        return outcome;
    };
    match storage.offload(output, key).await {
        Ok(output) => {
            if let Some(r) = ObjectRef::of(&output) {
                log.line(&format!(
                    "[orbit] output ({} bytes) stored as object `{}`",
                    r.size,
                    r.id()
                ));
            }
            if let Some(slot) = outcome.output_mut() {
                *slot = output;
            }
            outcome
        }
        Err(e) => {
            let f = Failure::error(format!("cannot store the output: {e}"));
            log.line(&format!("[orbit] {}", f.message));
            Outcome::Failed(f)
        }
    }
}

/// What an attempt reads and writes through.
struct Io<'a> {
    store: &'a dyn Store,
    storage: &'a Storage,
    http: &'a reqwest::Client,
    /// Idempotency keys return outputs stored at or after this.
    keys_since: DateTime<Utc>,
    supervisor: Option<&'a std::path::Path>,
}

/// What one attempt produced.
struct AttemptResult {
    result: Result<Value, Failure>,
    key: Option<String>,
    reused: bool,
}

/// One attempt of one task: gather its context, reuse a keyed output or render its parameters
/// and execute it in time.
async fn attempt(
    io: &Io<'_>,
    loaded: &Loaded,
    task: &ClaimedTask,
    values: &RunValues,
    log: &LogBuffer,
) -> AttemptResult {
    let fail = |f: Failure| AttemptResult {
        result: Err(f),
        key: None,
        reused: false,
    };
    let Some(def) = loaded
        .dag
        .index_of(&task.task_name)
        .map(|i| &loaded.stored.pipeline.tasks[i])
    else {
        return fail(Failure::fatal(format!(
            "task `{}` is not in the pipeline",
            task.task_name
        )));
    };
    let outputs = match io.store.outputs(task.run_id, &def.needs).await {
        Ok(o) => o,
        Err(e) => return fail(Failure::error(format!("cannot read upstream outputs: {e}"))),
    };
    let read = async {
        let input = values.input(io.storage).await.map_err(input_failure)?;
        Ok::<_, Failure>((input, hydrated(io.storage, values, &outputs).await?))
    };
    let (input, hydrated) = match read.await {
        Ok(x) => x,
        Err(f) => {
            log.line(&format!("[orbit] {}", f.message));
            return fail(f);
        }
    };
    let ids = ContextIds::new(task.run_id, task.id);
    let ctx = ids.context(
        &input,
        hydrated.iter().map(|(name, output)| (*name, &**output)),
        &loaded.stored.name,
        TaskInfo {
            name: &def.name,
            attempt: task.attempt,
        },
        loaded.stored.version,
    );
    let to = storage::output_key(task.run_id, &task.task_name, task.attempt);
    let key = match keyed(
        io.store,
        io.storage,
        def.idempotency_key.as_deref(),
        &ctx,
        io.keys_since,
        &to,
    )
    .await
    {
        Ok(Keyed { key, reused: None }) => key,
        Ok(Keyed {
            key,
            reused: Some((line, output)),
        }) => {
            log.line(&line);
            return AttemptResult {
                result: Ok(output),
                key,
                reused: true,
            };
        }
        Err(f) => return fail(f),
    };
    let result = execute(def, &ctx, task, ctx.effect_key, ctx.run.id, log, io).await;
    if let Err(f) = &result {
        log.line(&format!(
            "[orbit] attempt {} failed: {}",
            task.attempt, f.message
        ));
    }
    AttemptResult {
        result,
        key,
        reused: false,
    }
}

async fn execute(
    def: &orbit_core::TaskDef,
    ctx: &Context<'_>,
    task: &ClaimedTask,
    effect_key: &str,
    run_id: &str,
    log: &LogBuffer,
    io: &Io<'_>,
) -> Result<Value, Failure> {
    let rendered = template::render_params(&def.params, ctx).map_err(Failure::fatal)?;
    let params = Params::from_json(def.task_type, &rendered, true)
        .map_err(|e| Failure::fatal(format!("parameters after rendering: {e}")))?;
    let inv = Invocation {
        context: ctx,
        run_id,
        task_run_id: effect_key,
        task_name: &def.name,
        attempt: task.attempt,
        effect_key,
        timeout: def.timeout,
        log,
        http: io.http,
        supervisor: io.supervisor,
    };
    let run = executor::execute(params, &inv);
    match def.timeout {
        Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
            Err(Failure::new(
                FailureKind::Timeout,
                format!("timed out after {}", orbit_core::duration::display(limit)),
            ))
        }),
        None => run.await,
    }
}
