//! One attempt: spawned as a tokio task, its task executed, its transition computed.

use crate::executor::{self, Invocation};
use crate::log::{LiveLogs, LogBuffer};
use crate::storage::{self, RunValues, Storage};
use chrono::{DateTime, Utc};
use orbit_core::object::ObjectRef;
use orbit_core::params::Params;
use orbit_core::template::{self, Context, TaskInfo};
use orbit_core::transition::{
    Failure, FailureKind, Outcome, Transition, as_child, on_attempt_finished,
};
use orbit_store::{ClaimedTask, FinishedAttempt, Store};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::Instrument;
use uuid::Uuid;

use super::{
    ContextIds, Engine, Keyed, Loaded, hydrated, input_failure, keyed, keys_since, task_of,
};

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
        // At error level so that any filter keeps it: its ids are on every line the attempt
        // logs.
        let span = tracing::error_span!(
            "attempt",
            run = %task.run_id,
            task = %task.task_name,
            attempt = task.attempt,
            task_run = %task.id,
        );
        tokio::spawn(
            async move {
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
                let transition = match task_of(&loaded, &task.task_name) {
                    Some((i, child)) => {
                        let def = &loaded.stored.pipeline.tasks[i];
                        let mut policy = def.retry.clone();
                        policy.max_delay = policy.max_delay.min(max_retry_delay);
                        let policy = &policy;
                        let outcome = match done_attempt.result {
                            _ if done_attempt.expand.is_some() => {
                                Outcome::Expanded(done_attempt.expand.unwrap_or_default())
                            }
                            _ if done_attempt.park.is_some() => match done_attempt.park {
                                Some(park) => Outcome::Parked(park),
                                None => unreachable!("matched as some"),
                            },
                            Ok(v) if done_attempt.skip_next => Outcome::Routed {
                                output: v,
                                allowed: loaded
                                    .dag
                                    .downstream(i)
                                    .iter()
                                    .map(|&d| loaded.dag.name(d).to_owned())
                                    .collect(),
                                run_next: Vec::new(),
                            },
                            Ok(v) if done_attempt.reused => routed(def, v),
                            Ok(v) => {
                                let key =
                                    storage::output_key(task.run_id, &task.task_name, task.attempt);
                                stored(&storage, routed(def, v), &key, &log).await
                            }
                            Err(f) => Outcome::Failed(f),
                        };
                        finished_at = clock.now();
                        let t = on_attempt_finished(
                            &loaded.dag,
                            i,
                            policy,
                            task.tries,
                            outcome,
                            finished_at,
                            fastrand::f64(),
                        );
                        match (child, &def.for_each) {
                            (Some(_), Some(fe)) => as_child(&loaded.dag, i, fe.fail_fast, t),
                            _ => t,
                        }
                    }
                    None => Transition::Dead {
                        failure: Failure::fatal(format!(
                            "task `{}` is not in pipeline version {}",
                            task.task_name, loaded.stored.version
                        )),
                        cancel: Vec::new(),
                    },
                };
                let finished = FinishedAttempt {
                    task,
                    worker,
                    started_at,
                    finished_at,
                    log: log.take(),
                    transition,
                    idempotency_key: done_attempt.key,
                    reused: done_attempt.reused,
                    code_version: Some(loaded.stored.version),
                };
                tracing::debug!(
                    outcome = orbit_store::plan::AttemptOutcome::of(&finished).as_str(),
                    "attempt finished"
                );
                crate::telemetry::attempt(&loaded.stored.name, &finished);
                let _ = done.send(finished);
            }
            .instrument(span),
        )
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
pub(super) struct Io<'a> {
    pub(super) store: &'a dyn Store,
    pub(super) storage: &'a Storage,
    pub(super) http: &'a reqwest::Client,
    /// Idempotency keys return outputs stored at or after this.
    pub(super) keys_since: DateTime<Utc>,
    pub(super) supervisor: Option<&'a std::path::Path>,
}

/// What one attempt produced.
struct AttemptResult {
    result: Result<Value, Failure>,
    key: Option<String>,
    reused: bool,
    /// A `for_each` task's list, to make its children from.
    expand: Option<Vec<Value>>,
    /// A waiting task's park.
    park: Option<orbit_core::transition::Park>,
    /// Skip the tasks only this one leads to (a wait's timeout with `on_timeout: skip`).
    skip_next: bool,
}

impl AttemptResult {
    fn of(result: Result<Value, Failure>) -> AttemptResult {
        AttemptResult {
            result,
            key: None,
            reused: false,
            expand: None,
            park: None,
            skip_next: false,
        }
    }
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
    let fail = |f: Failure| AttemptResult::of(Err(f));
    let Some((def, child)) = task_of(loaded, &task.task_name)
        .map(|(i, child)| (&loaded.stored.pipeline.tasks[i], child))
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
    let mut ctx = ids.context(
        &input,
        hydrated.iter().map(|(name, output)| (*name, &**output)),
        &loaded.stored.name,
        TaskInfo {
            name: &def.name,
            attempt: task.attempt,
        },
        loaded.stored.version,
    );
    if let (Some(fe), None) = (&def.for_each, child) {
        return map_step(io, def, fe, &ctx, task, log).await;
    }
    if child.is_some() {
        ctx.item = Some(task.item.as_ref().unwrap_or(&Value::Null));
        ctx.index = child;
    }
    if def.task_type == orbit_core::TaskType::Pipeline {
        let line = |l: &str| log.line(l);
        let result = match crate::subruns::run_child(io.store, def, &ctx, task, &line).await {
            crate::subruns::Step::Park(park) => {
                log.line(&park_line(&park));
                return AttemptResult {
                    park: Some(park),
                    ..AttemptResult::of(Ok(Value::Null))
                };
            }
            crate::subruns::Step::Done(result) => result,
        };
        if let Err(f) = &result {
            log.line(&format!("[orbit] {}", f.message));
        }
        return AttemptResult::of(result);
    }
    if super::park::parks(def.task_type) {
        use super::park::Step;
        match super::park::step(def, &ctx, task.wake.as_ref(), chrono::Utc::now()) {
            Step::Park(park) => {
                log.line(&park_line(&park));
                return AttemptResult {
                    park: Some(park),
                    ..AttemptResult::of(Ok(Value::Null))
                };
            }
            Step::Done { result, skip_next } => {
                match &result {
                    Err(f) => log.line(&format!("[orbit] {}", f.message)),
                    Ok(_) if skip_next => {
                        log.line("[orbit] timed out: the tasks after it are skipped")
                    }
                    Ok(_) => {}
                }
                return AttemptResult {
                    skip_next,
                    ..AttemptResult::of(result)
                };
            }
            Step::InProcess => {}
        }
    }
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
                key,
                reused: true,
                ..AttemptResult::of(Ok(output))
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
        key,
        ..AttemptResult::of(result)
    }
}

/// The attempt log's line for a park.
fn park_line(park: &orbit_core::transition::Park) -> String {
    let until = park
        .until
        .map(|u| {
            format!(
                " until {}",
                u.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )
        })
        .unwrap_or_default();
    match (park.kind, &park.event, &park.note) {
        (orbit_core::transition::ParkKind::Signal, Some(event), _) => {
            format!("[orbit] parked: waiting for signal `{event}`{until}")
        }
        (orbit_core::transition::ParkKind::Approval, _, Some(note)) => {
            format!("[orbit] parked: waiting for approval ({note}){until}")
        }
        (orbit_core::transition::ParkKind::Run, _, Some(note)) => {
            format!("[orbit] parked: waiting for {note}, holding no worker")
        }
        _ => format!("[orbit] parked{until}"),
    }
}

/// A `for_each` task's attempt: the first renders its list and asks for its children; once they
/// have all settled, the next gathers their outputs, in order, as its own (or fails when more
/// failed than `allow_failures`).
async fn map_step(
    io: &Io<'_>,
    def: &orbit_core::TaskDef,
    fe: &orbit_core::pipeline::ForEach,
    ctx: &Context<'_>,
    task: &ClaimedTask,
    log: &LogBuffer,
) -> AttemptResult {
    let done = |result: Result<Value, Failure>, expand: Option<Vec<Value>>| {
        if let Err(f) = &result {
            log.line(&format!("[orbit] {}", f.message));
        }
        AttemptResult {
            expand,
            ..AttemptResult::of(result)
        }
    };
    let children = match io.store.children(task.run_id, &def.name).await {
        Ok(c) => c,
        Err(e) => {
            return done(
                Err(Failure::error(format!("cannot read the children: {e}"))),
                None,
            );
        }
    };
    if children.is_empty() {
        return match expand(fe, ctx) {
            Ok(items) if items.is_empty() => {
                log.line("[orbit] for_each: the list is empty; nothing to run");
                done(Ok(Value::Array(Vec::new())), None)
            }
            Ok(items) => {
                log.line(&format!(
                    "[orbit] for_each: {} elements, one child task run each",
                    items.len()
                ));
                done(Ok(Value::Null), Some(items))
            }
            Err(f) => done(Err(f), None),
        };
    }
    let result = gather(fe, &def.name, children);
    if let Ok(Value::Array(list)) = &result {
        log.line(&format!(
            "[orbit] for_each: gathered the outputs of {} children",
            list.len()
        ));
    }
    done(result, None)
}

/// The list `for_each` renders to.
fn expand(fe: &orbit_core::pipeline::ForEach, ctx: &Context<'_>) -> Result<Vec<Value>, Failure> {
    let rendered = template::render_value(&Value::String(fe.items.clone()), ctx)
        .map_err(|e| Failure::fatal(format!("for_each: {e}")))?;
    let Value::Array(items) = rendered else {
        return Err(Failure::fatal(format!(
            "for_each must render to a list, not {}",
            orbit_core::echo::echo_within(&rendered.to_string(), 200)
        )));
    };
    if items.len() > orbit_core::pipeline::MAX_MAP_ITEMS {
        return Err(Failure::fatal(format!(
            "for_each rendered {} elements; at most {} are allowed",
            items.len(),
            orbit_core::pipeline::MAX_MAP_ITEMS
        )));
    }
    Ok(items)
}

/// The children's outputs in list order (`null` for one that failed), unless more failed than
/// `allow_failures` lets through.
fn gather(
    fe: &orbit_core::pipeline::ForEach,
    name: &str,
    children: Vec<orbit_store::ChildResult>,
) -> Result<Value, Failure> {
    let n = children.len();
    // Children re-queued by a retry of the run run again: gather once they have settled.
    let unsettled = children.iter().filter(|c| !c.state.is_terminal()).count();
    if unsettled > 0 {
        return Err(Failure::throttled(
            format!("{unsettled} of {n} children have not finished; gathering again in 1 s"),
            std::time::Duration::from_secs(1),
        ));
    }
    let failed: Vec<&orbit_store::ChildResult> = children
        .iter()
        .filter(|c| c.state != orbit_core::TaskState::Succeeded)
        .collect();
    let share = failed.len() as f64 * 100.0 / n as f64;
    if let Some(first) = failed.first().filter(|_| share > fe.allow_failures) {
        return Err(Failure::fatal(format!(
            "{} of {n} elements failed ({share:.1}%, {}% allowed); the first, `{}`: {}",
            failed.len(),
            fe.allow_failures,
            orbit_core::pipeline::child_name(name, first.index as usize),
            first.error.as_deref().unwrap_or(first.state.as_str())
        )));
    }
    Ok(Value::Array(
        children
            .into_iter()
            .map(|c| match c.state {
                orbit_core::TaskState::Succeeded => c.output.unwrap_or(Value::Null),
                _ => Value::Null,
            })
            .collect(),
    ))
}

pub(super) async fn execute(
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
    let traceparent = orbit_core::trace::traceparent(task.run_id, task.id, task.attempt);
    let inv = Invocation {
        context: ctx,
        run_id,
        task_run_id: effect_key,
        task_name: &def.name,
        attempt: task.attempt,
        effect_key,
        traceparent: &traceparent,
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
