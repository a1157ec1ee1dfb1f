//! Sub-pipelines: a `type: pipeline` task runs another pipeline as a child run and outputs what
//! that run outputs. The child is made once per task run (its idempotency key is the task
//! run's id, so a retried or recovered attempt finds the same run), linked to its parent, and
//! cancelled and retried with it. While the child runs, the parent's task is parked, holding
//! no worker slot (a slot held by a waiting parent could be the one its child needs): the
//! commit that settles the child reports it, and whoever made that commit signals the parent
//! ([`notify_parents`]); a parked parent also looks again after a while, in case that signal
//! was lost with a crash.

use chrono::Utc;
use orbit_core::params::Params;
use orbit_core::template::{self, Context};
use orbit_core::transition::{Failure, Park, ParkKind};
use orbit_core::{Pipeline, RunState, TaskDef, TaskState, TaskType};
use orbit_store::{NewRun, RunRecord, Store, StoreError, TriggeredBy};
use serde_json::{Map, Value, json};
use std::time::Duration;
use uuid::Uuid;

/// How deep sub-runs may nest: a cycle that only templates reveal (`pipeline: "{{ ... }}"`)
/// stops here rather than run forever.
const MAX_DEPTH: usize = 16;

/// A parked parent looks at its child again after this, doubling each time up to
/// [`LOOK_AGAIN_MAX`]: only a signal lost with a crash makes it wait that long.
const LOOK_AGAIN: Duration = Duration::from_secs(30);
const LOOK_AGAIN_MAX: Duration = Duration::from_secs(30 * 60);

/// How long a settled child's signal is kept for a parent that has not parked yet.
const SIGNAL_KEPT: chrono::Duration = chrono::Duration::days(1);

/// The signal a settled sub-run sends the task of its parent that waits for it.
pub fn settled_signal(child: Uuid) -> String {
    format!("orbit.run.{child}.settled")
}

/// The sub-run a parked `pipeline` task waits for.
pub(crate) fn waited_for(park: &Park) -> Option<Uuid> {
    if park.kind != ParkKind::Run {
        return None;
    }
    let name = park.event.as_deref()?;
    name.strip_prefix("orbit.run.")?
        .strip_suffix(".settled")?
        .parse()
        .ok()
}

/// Signals the parents of sub-runs that just settled (in the background: the commit's callers
/// do not wait for it).
pub(crate) fn notify_parents(store: &std::sync::Arc<dyn Store>, settled: &[Uuid]) {
    if settled.is_empty() {
        return;
    }
    let (store, settled) = (store.clone(), settled.to_vec());
    tokio::spawn(async move {
        for child in settled {
            let now = Utc::now();
            let name = settled_signal(child);
            let payload = json!({ "run": child });
            if let Err(e) = store.signal(&name, &payload, now + SIGNAL_KEPT, now).await {
                tracing::warn!(run = %child, error = %e, "a settled sub-run's parent was not signalled; it looks again later");
            }
        }
    });
}

/// What an attempt of a `pipeline` task comes to.
pub(crate) enum Step {
    Done(Result<Value, Failure>),
    /// The child has not settled: park until it does.
    Park(Park),
}

/// The pipelines `p`'s tasks run as sub-pipelines, where the name is plain text.
fn runs_of(p: &Pipeline) -> Vec<String> {
    p.tasks
        .iter()
        .filter(|t| t.task_type == TaskType::Pipeline)
        .filter_map(|t| t.params.get("pipeline").and_then(Value::as_str))
        .filter(|name| !template::is_template(name))
        .map(str::to_owned)
        .collect()
}

/// Refuses `p` when saving it would close a cycle of pipelines running each other, naming them
/// (`a → b → a`). The other pipelines are read as saved (their latest versions); one not saved
/// yet is checked when it is.
pub async fn check_cycles(store: &dyn Store, p: &Pipeline) -> Result<(), String> {
    let mut path = vec![p.name.clone()];
    let mut stack = vec![runs_of(p)];
    while let Some(top) = stack.last_mut() {
        let Some(next) = top.pop() else {
            stack.pop();
            path.pop();
            continue;
        };
        if let Some(at) = path.iter().position(|n| *n == next) {
            let mut cycle = path[at..].to_vec();
            cycle.push(next);
            return Err(format!(
                "pipelines would run each other in a cycle: {}",
                cycle.join(" → ")
            ));
        }
        // A pipeline may run another one twice, or several may run the same one: each is
        // followed on every path, which stays small for pipelines people write.
        let Ok(stored) = store.pipeline(&next).await else {
            continue;
        };
        path.push(next);
        stack.push(runs_of(&stored.pipeline));
    }
    Ok(())
}

/// Cancels `run` and every sub-run under it that has not settled.
pub async fn cancel_tree(
    store: &dyn Store,
    run: Uuid,
    now: chrono::DateTime<Utc>,
) -> Result<RunRecord, StoreError> {
    let cancelled = store.cancel_run(run, now).await?;
    crate::traces::run_settled(&cancelled);
    let mut below = store.child_runs(run).await?;
    while let Some(child) = below.pop() {
        if !child.state.is_terminal() {
            match store.cancel_run(child.id, now).await {
                Ok(r) => crate::traces::run_settled(&r),
                // Settled in the meantime: nothing to stop.
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        below.extend(store.child_runs(child.id).await?);
    }
    Ok(cancelled)
}

/// One attempt of `def` (`type: pipeline`), task run `task`: makes (or finds) its child run,
/// retries it when an earlier attempt saw it fail, and gives its output once it has settled,
/// parking until then.
pub(crate) async fn run_child(
    store: &dyn Store,
    def: &TaskDef,
    ctx: &Context<'_>,
    task: &orbit_store::ClaimedTask,
    log: &impl Fn(&str),
) -> Step {
    match child_step(store, def, ctx, task, log).await {
        Ok(step) => step,
        Err(f) => Step::Done(Err(f)),
    }
}

async fn child_step(
    store: &dyn Store,
    def: &TaskDef,
    ctx: &Context<'_>,
    task: &orbit_store::ClaimedTask,
    log: &impl Fn(&str),
) -> Result<Step, Failure> {
    let (run, task_run) = (task.run_id, task.id);
    let unavailable = |e: StoreError| Failure::error(format!("sub-pipeline: {e}"));
    let rendered = template::render_params(&def.params, ctx).map_err(Failure::fatal)?;
    let Params::Pipeline(p) = Params::from_json(TaskType::Pipeline, &rendered, true)
        .map_err(|e| Failure::fatal(format!("parameters after rendering: {e}")))?
    else {
        return Err(Failure::fatal("not a pipeline task"));
    };
    let stored = match store.pipeline(&p.pipeline).await {
        Ok(s) => s,
        Err(StoreError::NotFound(_)) => {
            return Err(Failure::fatal(format!(
                "pipeline `{}` is not saved (`orbit pipelines` lists those that are)",
                p.pipeline
            )));
        }
        Err(e) => return Err(unavailable(e)),
    };
    check_ancestors(store, run, &p.pipeline).await?;
    let key = format!("orbit-subrun:{task_run}");
    let created = store
        .create_run(NewRun {
            id: Uuid::now_v7(),
            pipeline: &stored,
            input: p.input.unwrap_or_else(|| ctx.input.clone()),
            priority: 0,
            idempotency_key: Some(key.clone()),
            // The key is the task run's own: it names this child for as long as both exist.
            idempotency_ttl: Duration::from_secs(100 * 365 * 86_400),
            request_hash: Some(key),
            triggered_by: TriggeredBy::Pipeline,
            parent: Some((run, def.name.clone())),
            rerun: None,
            now: Utc::now(),
        })
        .await
        .map_err(|e| match e {
            StoreError::Invalid(m) => Failure::fatal(m),
            other => unavailable(other),
        })?;
    let mut child = created.run;
    if created.created {
        log(&format!(
            "[orbit] started run {} of pipeline `{}` v{}",
            child.id, child.pipeline_name, child.pipeline_version
        ));
    } else if task.wake.is_some() {
        // Woken from its park: the child settled (or it is time to look again).
        log(&format!("[orbit] run {} is {}", child.id, child.state));
    } else if matches!(child.state, RunState::Failed | RunState::Cancelled) {
        // An earlier attempt saw it fail: retrying this task retries the child.
        let again: Vec<String> = store
            .task_runs(child.id)
            .await
            .map_err(unavailable)?
            .into_iter()
            .filter(|t| matches!(t.state, TaskState::Dead | TaskState::Cancelled))
            .map(|t| t.task_name)
            .collect();
        store
            .requeue(child.id, &again, TriggeredBy::Retry, Utc::now())
            .await
            .map_err(unavailable)?;
        log(&format!(
            "[orbit] retrying run {} ({} task(s) again)",
            child.id,
            again.len()
        ));
        child = store.run(child.id).await.map_err(unavailable)?;
    } else {
        log(&format!("[orbit] following run {} again", child.id));
    }
    if !child.state.is_terminal() {
        let again = LOOK_AGAIN
            .saturating_mul(1 << task.attempt.saturating_sub(1).min(10))
            .min(LOOK_AGAIN_MAX);
        return Ok(Step::Park(Park {
            kind: ParkKind::Run,
            until: Some(Utc::now() + chrono::Duration::from_std(again).unwrap_or_default()),
            event: Some(settled_signal(child.id)),
            note: Some(format!(
                "run {} of pipeline `{}`",
                child.id, child.pipeline_name
            )),
        }));
    }
    if child.state != RunState::Succeeded {
        return Err(Failure::error(format!(
            "run {} of pipeline `{}` {}",
            child.id, child.pipeline_name, child.state
        )));
    }
    log(&format!("[orbit] run {} succeeded", child.id));
    let output = output(store, &child).await.map_err(|e| match e {
        StoreError::Invalid(m) => Failure::fatal(m),
        other => unavailable(other),
    })?;
    Ok(Step::Done(Ok(output)))
}

/// Refuses to nest `pipeline` under `run` when it already runs above it, or too deep.
async fn check_ancestors(store: &dyn Store, run: Uuid, pipeline: &str) -> Result<(), Failure> {
    let mut chain = Vec::new();
    let mut at = Some(run);
    while let Some(id) = at {
        let r = store
            .run(id)
            .await
            .map_err(|e| Failure::error(format!("sub-pipeline: {e}")))?;
        chain.push(r.pipeline_name.clone());
        if r.pipeline_name == pipeline || chain.len() > MAX_DEPTH {
            chain.reverse();
            chain.push(pipeline.to_owned());
            return Err(Failure::fatal(format!(
                "pipelines run each other in a cycle (or deeper than {MAX_DEPTH}): {}",
                chain.join(" → ")
            )));
        }
        at = r.parent_run_id;
    }
    Ok(())
}

/// What a settled run gives its parent: its pipeline's `output` template rendered over its
/// input and tasks' outputs, else the outputs of its tasks no other task needs, by name.
async fn output(store: &dyn Store, run: &RunRecord) -> Result<Value, StoreError> {
    let p = store.pipeline_version(run.pipeline_id).await?.pipeline;
    let names: Vec<String> = p.tasks.iter().map(|t| t.name.clone()).collect();
    let outputs = store.outputs(run.id, &names).await?;
    match &p.output {
        Some(template) => {
            let tasks: Map<String, Value> = outputs
                .into_iter()
                .map(|(name, output)| (name, json!({ "output": output })))
                .collect();
            let ctx = json!({
                "input": run.input,
                "tasks": tasks,
                "run": {"id": run.id.to_string(), "pipeline": run.pipeline_name},
            });
            template::render_value(template, &ctx)
                .map_err(|e| StoreError::Invalid(format!("the pipeline's `output`: {e}")))
        }
        None => {
            let needed: std::collections::HashSet<&str> = p
                .tasks
                .iter()
                .flat_map(|t| t.needs.iter().map(String::as_str))
                .collect();
            Ok(Value::Object(
                outputs
                    .into_iter()
                    .filter(|(name, _)| !needed.contains(name.as_str()))
                    .collect(),
            ))
        }
    }
}
