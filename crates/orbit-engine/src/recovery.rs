//! Recovering interrupted runs, by hand or by a program: the seed's `detectInterruptedRuns`,
//! `analyzeStepCompletion`, `reconstructStepContext` and `resumeRun`, in Rust.
//!
//! A run is *interrupted* when it is `pending` or `running`, no live process holds a lease on
//! any of its tasks, and nothing has happened to it for a while. Resuming it takes back the
//! tasks its dead process held (they count as a lost attempt and are retried), then executes
//! what is left. Succeeded tasks are never executed again; their stored outputs are the
//! context of the tasks that need them.

use crate::engine::ContextIds;
use crate::{Engine, EngineError};
use chrono::{DateTime, Duration, Utc};
use orbit_core::template::TaskInfo;
use orbit_core::{RunState, TaskState};
use orbit_store::{LeaseFilter, RunFilter, RunRecord, Store, StoreError, TaskRunRecord};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Which steps of a run are where.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepAnalysis {
    pub completed: Vec<String>,
    /// Dead: attempts spent or a non-retryable error.
    pub failed: Vec<String>,
    pub running: Vec<String>,
    /// Ready or waiting, in pipeline order.
    pub pending: Vec<String>,
    /// Skipped or cancelled.
    pub not_run: Vec<String>,
}

impl StepAnalysis {
    pub fn of(tasks: &[TaskRunRecord]) -> StepAnalysis {
        let mut a = StepAnalysis::default();
        for t in tasks {
            let bucket = match t.state {
                TaskState::Succeeded => &mut a.completed,
                TaskState::Dead => &mut a.failed,
                TaskState::Running => &mut a.running,
                TaskState::Ready | TaskState::Waiting | TaskState::Parked => &mut a.pending,
                TaskState::Skipped | TaskState::Cancelled => &mut a.not_run,
            };
            bucket.push(t.task_name.clone());
        }
        a
    }

    /// The step that would run next: a running one, else the first pending one.
    pub fn next_step(&self) -> Option<&str> {
        self.running
            .first()
            .or(self.pending.first())
            .map(String::as_str)
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InterruptedRun {
    pub run: RunRecord,
    pub last_activity: DateTime<Utc>,
    pub steps: StepAnalysis,
}

/// The result of resuming one run.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resumed {
    pub run: Uuid,
    pub state: Option<RunState>,
    /// Attempts this resume ran (whatever their outcome).
    pub steps_executed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(
        "Run has {0} failed step(s), cannot auto-resume (use `orbit retry` to re-queue them and go on)"
    )]
    FailedSteps(usize),
    #[error("run {0} is already {1}; nothing to resume")]
    Settled(Uuid, RunState),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<StoreError> for RecoveryError {
    fn from(e: StoreError) -> Self {
        RecoveryError::Engine(EngineError::Store(e))
    }
}

/// Which steps of `run` completed, failed or remain.
pub async fn analyze_step_completion(
    store: &dyn Store,
    run: Uuid,
) -> Result<StepAnalysis, StoreError> {
    Ok(StepAnalysis::of(&store.task_runs(run).await?))
}

/// Runs that nobody is executing: `pending` or `running`, no lease held by a live process, and
/// idle for at least `idle`. `this_host` is this machine's name: a lease held by a process of
/// this host that has exited does not count as live.
pub async fn detect_interrupted_runs(
    store: &dyn Store,
    this_host: &str,
    idle: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<Vec<InterruptedRun>, StoreError> {
    let idle = Duration::from_std(idle).unwrap_or(Duration::MAX);
    let mut found = Vec::new();
    for state in [RunState::Running, RunState::Pending] {
        let runs = store
            .list_runs(&RunFilter {
                state: Some(state),
                limit: 10_000,
                ..RunFilter::default()
            })
            .await?;
        for run in runs {
            let leases = store
                .leased(&LeaseFilter {
                    run: Some(run.id),
                    expired_before: None,
                    limit: 10_000,
                })
                .await?;
            let held = leases.iter().any(|l| is_live(l, this_host, now));
            if held {
                continue;
            }
            // Held by a process of this host that is gone, or last handed back by one (a
            // stopped `orbit run`): nobody will go on with it, so it is interrupted at once.
            let orphaned = !leases.is_empty()
                || (now - run.updated_at < idle
                    && last_worker(store, run.id)
                        .await?
                        .is_some_and(|w| crate::engine::holder_is_gone(&w, this_host)));
            if !orphaned && now - run.updated_at < idle {
                continue;
            }
            let tasks = store.task_runs(run.id).await?;
            let last_activity = tasks
                .iter()
                .filter_map(|t| t.finished_at.or(t.started_at))
                .max()
                .unwrap_or(run.updated_at);
            found.push(InterruptedRun {
                last_activity,
                steps: StepAnalysis::of(&tasks),
                run,
            });
        }
    }
    found.sort_by_key(|r| r.run.created_at);
    Ok(found)
}

/// Who ran the latest attempt of `run`, if any attempt ended.
async fn last_worker(store: &dyn Store, run: Uuid) -> Result<Option<String>, StoreError> {
    Ok(store
        .attempts(run, None)
        .await?
        .into_iter()
        .max_by_key(|a| a.finished_at)
        .map(|a| a.worker))
}

/// Whether a lease still stands for a process that may be executing its task: unexpired, and
/// not held by a process of this host that has exited.
fn is_live(l: &orbit_store::LeasedTask, this_host: &str, now: DateTime<Utc>) -> bool {
    l.task.lease_expires_at > now && !crate::engine::holder_is_gone(&l.owner, this_host)
}

/// The processes (`host:pid`) that may still be executing tasks of `run`: none means nobody is.
pub async fn live_holders(
    store: &dyn Store,
    run: Uuid,
    this_host: &str,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let mut holders: Vec<String> = store
        .leased(&LeaseFilter {
            run: Some(run),
            expired_before: None,
            limit: 10_000,
        })
        .await?
        .into_iter()
        .filter(|l| is_live(l, this_host, now))
        .map(|l| l.owner)
        .collect();
    holders.sort();
    holders.dedup();
    Ok(holders)
}

/// The context `task` of `run` gets: the run input and the stored outputs of the tasks it needs,
/// exactly as the engine builds it.
pub async fn reconstruct_context(
    store: &dyn Store,
    run: Uuid,
    task: &str,
) -> Result<Value, StoreError> {
    let record = store.run(run).await?;
    let pipeline = store.pipeline_version(record.pipeline_id).await?;
    let def = pipeline.pipeline.task(task).ok_or_else(|| {
        StoreError::NotFound(format!(
            "task `{}` in run {run}",
            orbit_core::echo::echo(task)
        ))
    })?;
    let task_run = store
        .task_runs(run)
        .await?
        .into_iter()
        .find(|t| t.task_name == task)
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "task `{}` in run {run}",
                orbit_core::echo::echo(task)
            ))
        })?;
    let outputs = store.outputs(run, &def.needs).await?;
    // The engine's own builder, so the two cannot drift apart.
    let ids = ContextIds::new(run, task_run.id);
    let ctx = ids.context(
        &record.input,
        outputs.iter().map(|(name, output)| (name.as_str(), output)),
        &pipeline.name,
        TaskInfo {
            name: task,
            attempt: task_run.attempt + 1,
        },
        pipeline.version,
    );
    serde_json::to_value(&ctx).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Whether `run` can be resumed: not settled, no failed steps. Returns where its steps are.
pub async fn check_resumable(store: &dyn Store, run: Uuid) -> Result<StepAnalysis, RecoveryError> {
    let record = store.run(run).await?;
    let steps = StepAnalysis::of(&store.task_runs(run).await?);
    if !steps.failed.is_empty() {
        return Err(RecoveryError::FailedSteps(steps.failed.len()));
    }
    if record.state.is_terminal() {
        return Err(RecoveryError::Settled(run, record.state));
    }
    Ok(steps)
}

/// Resumes an interrupted run in this process and drives it until it settles (or `shutdown`).
/// Refuses a run with failed steps, as the seed does.
pub async fn resume_run(
    engine: &Engine,
    run: Uuid,
    shutdown: CancellationToken,
) -> Result<Resumed, RecoveryError> {
    let store = engine.store();
    check_resumable(store.as_ref(), run).await?;
    let started = Utc::now();
    // Nothing to re-queue: only who goes on with it is recorded.
    store
        .requeue(run, &[], orbit_store::TriggeredBy::Recover, started)
        .await?;
    let state = engine.drive_run(run, shutdown).await?;
    // Attempts this resume ran (the lost ones it took back were not run by it).
    let steps_executed = store
        .attempts(run, None)
        .await?
        .iter()
        .filter(|a| a.started_at >= started && a.outcome != "worker_lost")
        .count();
    metrics::counter!("orbit_recovery_runs_resumed_total").increment(1);
    metrics::counter!("orbit_recovery_steps_executed_total").increment(steps_executed as u64);
    Ok(Resumed {
        run,
        state,
        steps_executed,
    })
}

/// A dead-letter entry with all it keeps: the exact context of the attempt that went dead, every
/// attempt with its error, and the code version it ran (`orbit dlq show`, `GET /dlq/{id}`).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetterDetail {
    pub entry: orbit_store::DeadLetter,
    pub pipeline: String,
    pub code_version: CodeVersionOf,
    /// The task's context: run input, upstream outputs, run, task (its last attempt), keys.
    pub input: Value,
    pub attempts: Vec<orbit_store::AttemptRecord>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CodeVersionOf {
    pub pipeline_version: i64,
    pub hash: String,
}

/// One dead-letter entry, by its task run id or a unique prefix or short form.
pub async fn dead_letter_detail(
    store: &dyn Store,
    id: &str,
) -> Result<DeadLetterDetail, StoreError> {
    let entry = store.dead_letter(id).await?;
    let pipeline = store.pipeline_version(entry.pipeline_id).await?;
    let mut input = reconstruct_context(store, entry.run_id, &entry.task_name).await?;
    // The context of the last attempt, the one that went dead (not of a next one).
    input["task"]["attempt"] = Value::from(entry.attempts);
    let attempts = store.attempts(entry.run_id, Some(&entry.task_name)).await?;
    Ok(DeadLetterDetail {
        pipeline: pipeline.name,
        code_version: CodeVersionOf {
            pipeline_version: pipeline.version,
            hash: pipeline.hash,
        },
        input,
        attempts,
        entry,
    })
}
