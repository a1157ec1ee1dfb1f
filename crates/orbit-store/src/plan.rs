//! Decisions around a commit, made once for every backend. `orbit-core` decides what one
//! finished attempt does ([`Transition`]); this module turns a batch of them into a plan of row
//! changes and events: which waiting tasks are skipped, cancelled or promoted (and in which
//! order), which outputs are kept under their idempotency key, what the dead-letter queue gets,
//! how each run's counters move and how the runs settle, and every event's kind and payload. A
//! backend executes a plan with its own primitive statements and decides nothing, so a new
//! state-changing feature is written here once.

use crate::tally::Tally;
use crate::{ClaimedTask, FinishedAttempt, NewRun};
use chrono::{DateTime, Utc};
use orbit_core::transition::{FailureKind, Transition, settled_run_state};
use orbit_core::{RunState, TaskState};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use uuid::Uuid;

/// What an event row records; its name is what the API and the dashboard show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    RunCreated,
    RunPending,
    RunStarted,
    RunSucceeded,
    RunFailed,
    RunCancelled,
    RunRequeued,
    RunDeleted,
    TaskStarted,
    TaskSucceeded,
    TaskRetrying,
    TaskDead,
    TaskRequeued,
    TaskExpanded,
    TaskParked,
    TaskSignalled,
    TaskDecided,
    PipelineSaved,
    PipelineDeleted,
}

impl EventKind {
    pub const ALL: [EventKind; 19] = [
        EventKind::RunCreated,
        EventKind::RunPending,
        EventKind::RunStarted,
        EventKind::RunSucceeded,
        EventKind::RunFailed,
        EventKind::RunCancelled,
        EventKind::RunRequeued,
        EventKind::RunDeleted,
        EventKind::TaskStarted,
        EventKind::TaskSucceeded,
        EventKind::TaskRetrying,
        EventKind::TaskDead,
        EventKind::TaskRequeued,
        EventKind::TaskExpanded,
        EventKind::TaskParked,
        EventKind::TaskSignalled,
        EventKind::TaskDecided,
        EventKind::PipelineSaved,
        EventKind::PipelineDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RunCreated => "run_created",
            EventKind::RunPending => "run_pending",
            EventKind::RunStarted => "run_started",
            EventKind::RunSucceeded => "run_succeeded",
            EventKind::RunFailed => "run_failed",
            EventKind::RunCancelled => "run_cancelled",
            EventKind::RunRequeued => "run_requeued",
            EventKind::RunDeleted => "run_deleted",
            EventKind::TaskStarted => "task_started",
            EventKind::TaskSucceeded => "task_succeeded",
            EventKind::TaskRetrying => "task_retrying",
            EventKind::TaskDead => "task_dead",
            EventKind::TaskRequeued => "task_requeued",
            EventKind::TaskExpanded => "task_expanded",
            EventKind::TaskParked => "task_parked",
            EventKind::TaskSignalled => "task_signalled",
            EventKind::TaskDecided => "task_decided",
            EventKind::PipelineSaved => "pipeline_saved",
            EventKind::PipelineDeleted => "pipeline_deleted",
        }
    }

    /// The event of a run entering `state`.
    pub fn of_run(state: RunState) -> EventKind {
        match state {
            RunState::Pending => EventKind::RunPending,
            RunState::Running => EventKind::RunStarted,
            RunState::Succeeded => EventKind::RunSucceeded,
            RunState::Failed => EventKind::RunFailed,
            RunState::Cancelled => EventKind::RunCancelled,
        }
    }
}

/// How an attempt ended, as the attempts table keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    /// An earlier output with the same idempotency key stood in for running it.
    Reused,
    Failed(FailureKind),
    /// Its run was cancelled while it ran.
    Cancelled,
    /// A `for_each` task rendered its list and made its children.
    Expanded,
    /// It parked until its wake-up (a time, a signal, a decision).
    Parked,
}

impl AttemptOutcome {
    pub fn of(f: &FinishedAttempt) -> AttemptOutcome {
        match f.transition.failure() {
            Some(failure) => AttemptOutcome::Failed(failure.kind),
            None if matches!(f.transition, Transition::Expand { .. }) => AttemptOutcome::Expanded,
            None if matches!(f.transition, Transition::Park(_)) => AttemptOutcome::Parked,
            None if f.reused => AttemptOutcome::Reused,
            None => AttemptOutcome::Succeeded,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Reused => "reused",
            AttemptOutcome::Failed(kind) => kind.as_str(),
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Expanded => "expanded",
            AttemptOutcome::Parked => "parked",
        }
    }
}

/// One event row.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub run: Option<Uuid>,
    pub task: Option<String>,
    pub kind: EventKind,
    pub data: Option<Value>,
}

impl Event {
    pub fn run(run: Uuid, kind: EventKind) -> Event {
        Event {
            run: Some(run),
            task: None,
            kind,
            data: None,
        }
    }

    /// An event of no run (pipelines saved and deleted, runs deleted).
    pub fn global(kind: EventKind, data: Value) -> Event {
        Event {
            run: None,
            task: None,
            kind,
            data: Some(data),
        }
    }

    pub fn with_data(mut self, data: Value) -> Event {
        self.data = Some(data);
        self
    }

    pub fn task(run: Uuid, task: &str, kind: EventKind, data: Option<Value>) -> Event {
        Event {
            run: Some(run),
            task: Some(task.to_owned()),
            kind,
            data,
        }
    }

    /// The event of one finished attempt.
    pub fn finished(f: &FinishedAttempt) -> Event {
        let t = &f.task;
        let (kind, data) = match &f.transition {
            Transition::Succeed { .. } => (EventKind::TaskSucceeded, json!({"attempt": t.attempt})),
            Transition::Retry {
                ready_at, failure, ..
            } => (
                EventKind::TaskRetrying,
                json!({"attempt": t.attempt, "error": failure.message, "kind": failure.kind.as_str(), "ready_at": ready_at}),
            ),
            Transition::Dead { failure, .. } => (
                EventKind::TaskDead,
                json!({"attempt": t.attempt, "error": failure.message, "kind": failure.kind.as_str()}),
            ),
            Transition::Expand { items } => (
                EventKind::TaskExpanded,
                json!({"attempt": t.attempt, "children": items.len()}),
            ),
            Transition::Park(park) => (
                EventKind::TaskParked,
                json!({"attempt": t.attempt, "kind": park.kind.as_str(), "until": park.until, "event": park.event}),
            ),
        };
        Event::task(t.run_id, &t.task_name, kind, Some(data))
    }
}

/// A waiting task run a finished attempt ends without running it.
#[derive(Clone, Debug, PartialEq)]
pub struct Mark<'a> {
    pub run: Uuid,
    pub task: &'a str,
    pub reason: String,
}

/// A run's counters after a commit moved them, as the backend read them back.
#[derive(Clone, Copy, Debug)]
pub struct RunCounters {
    pub run: Uuid,
    pub pending: i64,
    pub dead: i64,
    pub state: RunState,
}

/// The row changes of a batch of kept (fenced) attempts. A backend applies, in this order: the
/// attempts' own rows and `attempts` rows; `skips`, then `cancels` (each counting the rows it
/// changed with [`FinishPlan::ended`]); then `promotions` (a skipped or cancelled task must not
/// be promoted by another upstream of the same batch); `results`; `dead`; the run counters in
/// `counts`, whose values it reads back for [`FinishPlan::settle`]; then `events`.
#[derive(Debug, Default)]
pub struct FinishPlan<'a> {
    pub events: Vec<Event>,
    pub skips: Vec<Mark<'a>>,
    pub cancels: Vec<Mark<'a>>,
    /// `for_each` parents (by name) whose children not yet started are cancelled: a child
    /// failed fast.
    pub sibling_cancels: Vec<Mark<'a>>,
    /// `for_each` tasks that rendered their lists: the parent's row waits for as many children
    /// as the list has elements, each a new `ready` task run.
    pub expansions: Vec<(&'a FinishedAttempt, &'a [Value])>,
    /// Task runs that parked: their park columns are set; a `wait` takes a signal kept for it,
    /// if any, and is `ready` at once ([`FinishPlan::signalled`]).
    pub parks: Vec<(&'a FinishedAttempt, &'a orbit_core::transition::Park)>,
    /// Downstream tasks one upstream fewer waits for; a pair appears once per finished upstream.
    pub promotions: Vec<(Uuid, &'a str)>,
    /// Outputs kept under their idempotency key (the last of the batch for a key).
    pub results: Vec<(&'a str, Uuid, &'a Value)>,
    pub dead: Vec<&'a FinishedAttempt>,
    /// Per run: task runs that reached a terminal state, of which dead.
    pub counts: BTreeMap<Uuid, (i64, i64)>,
    /// Task runs this commit made claimable (retried, or promoted to `ready`).
    pub ready: usize,
    /// The counts this commit moves; the backend adds what only its statements learn
    /// (skips, cancels and promotions that changed a row, claims).
    pub tally: Tally,
}

impl<'a> FinishPlan<'a> {
    pub fn new(kept: &[&'a FinishedAttempt]) -> FinishPlan<'a> {
        let mut plan = FinishPlan::default();
        let mut keyed: BTreeMap<&'a str, (Uuid, &'a Value)> = BTreeMap::new();
        for &f in kept {
            let t = &f.task;
            plan.events.push(Event::finished(f));
            plan.tally.finished(f);
            match &f.transition {
                Transition::Succeed {
                    promote,
                    output,
                    skip,
                } => {
                    if !skip.is_empty() {
                        let reason = format!("skipped: not chosen by `{}`", t.task_name);
                        plan.skips.extend(skip.iter().map(|name| Mark {
                            run: t.run_id,
                            task: name,
                            reason: reason.clone(),
                        }));
                    }
                    if let (Some(key), false) = (&f.idempotency_key, f.reused) {
                        keyed.insert(key, (t.id, output));
                    }
                    plan.promotions
                        .extend(promote.iter().map(|name| (t.run_id, name.as_str())));
                    plan.counts.entry(t.run_id).or_default().0 += 1;
                }
                Transition::Expand { items } => {
                    plan.expansions.push((f, items));
                    // The run has that many more task runs to settle.
                    plan.counts.entry(t.run_id).or_default().0 -= items.len() as i64;
                    plan.ready += items.len();
                    plan.tally.entered(TaskState::Ready, items.len() as i64);
                }
                // A child that died without failing fast settles its slot in the parent, which
                // decides at its gathering whether the run fails: no dead-letter entry of its own.
                Transition::Dead { cancel, .. }
                    if cancel.is_empty()
                        && orbit_core::pipeline::parent_of(&t.task_name).is_some() =>
                {
                    if let Some((parent, _)) = orbit_core::pipeline::parent_of(&t.task_name) {
                        plan.promotions.push((t.run_id, parent));
                    }
                    plan.counts.entry(t.run_id).or_default().0 += 1;
                }
                Transition::Dead { cancel, .. } => {
                    if let Some((parent, _)) = orbit_core::pipeline::parent_of(&t.task_name) {
                        plan.sibling_cancels.push(Mark {
                            run: t.run_id,
                            task: parent,
                            reason: format!("not started: `{}` failed fast", t.task_name),
                        });
                    }
                    if !cancel.is_empty() {
                        let reason =
                            format!("not started: upstream task `{}` is dead", t.task_name);
                        let parent = orbit_core::pipeline::parent_of(&t.task_name).map(|p| p.0);
                        plan.cancels.extend(cancel.iter().map(|name| Mark {
                            run: t.run_id,
                            task: name,
                            reason: if Some(name.as_str()) == parent {
                                format!("failed fast: `{}` is dead", t.task_name)
                            } else {
                                reason.clone()
                            },
                        }));
                    }
                    plan.dead.push(f);
                    let entry = plan.counts.entry(t.run_id).or_default();
                    entry.0 += 1;
                    entry.1 += 1;
                }
                Transition::Retry { .. } => plan.ready += 1,
                Transition::Park(park) => plan.parks.push((f, park)),
            }
        }
        plan.results = keyed.into_iter().map(|(k, (id, o))| (k, id, o)).collect();
        plan
    }

    /// A skip or cancel of the plan changed a waiting task run of `run` to `state`.
    pub fn ended(&mut self, run: Uuid, state: TaskState) {
        self.counts.entry(run).or_default().0 += 1;
        self.tally.moved(TaskState::Waiting, state, 1);
    }

    /// A sibling cancel of the plan changed `n` ready children of `run` to `cancelled`.
    pub fn siblings_cancelled(&mut self, run: Uuid, n: i64) {
        self.counts.entry(run).or_default().0 += n;
        self.tally.moved(TaskState::Ready, TaskState::Cancelled, n);
    }

    /// A task run of `run` that parked to wait for `signal` took the one kept for it: it is
    /// `ready` at once.
    pub fn signalled(&mut self, run: Uuid, task: &str, signal: &str) {
        self.ready += 1;
        self.tally.moved(TaskState::Parked, TaskState::Ready, 1);
        self.events.push(Event::task(
            run,
            task,
            EventKind::TaskSignalled,
            Some(json!({"signal": signal, "kept": true})),
        ));
    }

    /// Promotions made `n` waiting task runs ready.
    pub fn promoted(&mut self, n: usize) {
        self.ready += n;
        self.tally
            .moved(TaskState::Waiting, TaskState::Ready, n as i64);
    }

    /// How the runs whose counters moved settle: each run left with nothing pending, and not
    /// already final, ends (succeeded, or failed with a dead task); its event is added. Returns
    /// those runs with their final state, and the runs still running (a claim in the same
    /// commit need not try to start them).
    pub fn settle(
        &mut self,
        rows: impl IntoIterator<Item = RunCounters>,
    ) -> (Vec<(Uuid, RunState)>, HashSet<Uuid>) {
        let mut settled = Vec::new();
        let mut running = HashSet::new();
        for row in rows {
            if row.state == RunState::Running && row.pending > 0 {
                running.insert(row.run);
            }
            if row.pending <= 0 && !row.state.is_terminal() {
                let state = settled_run_state(row.dead.max(0) as u64);
                self.events
                    .push(Event::run(row.run, EventKind::of_run(state)));
                settled.push((row.run, state));
            }
        }
        (settled, running)
    }
}

/// Task runs deleted per transaction when a run is deleted; its events go three times as many
/// at a time.
pub const DELETE_SLICE: i64 = 500;
pub const DELETE_EVENTS: i64 = 3 * DELETE_SLICE;

/// What one slice of a run's deletion moves: the counts of the task runs it deleted (their
/// states), and whether it was the last (fewer task runs and events than a slice were left),
/// so the run row goes in the same transaction.
pub fn deleted_slice(states: &[TaskState], events: u64) -> (Tally, bool) {
    let mut tally = Tally::default();
    for state in states {
        tally.left(*state, 1);
    }
    let last = (states.len() as i64) < DELETE_SLICE && (events as i64) < DELETE_EVENTS;
    (tally, last)
}

/// A new run's task runs, decided once for every backend: roots `ready` at once, the rest
/// `waiting` for their needs; priorities include the run's.
#[derive(Clone, Debug)]
pub struct NewTaskRow<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub task_type: &'static str,
    pub queue: &'a str,
    /// Its place in the pipeline file: the order task runs are listed in.
    pub seq: i32,
    pub state: TaskState,
    pub priority: i32,
    pub pending_needs: i32,
    pub max_attempts: i32,
    pub lease_ms: i64,
    pub ready_at: Option<DateTime<Utc>>,
    /// The rendered concurrency key and its limit.
    pub concurrency: Option<(String, i32)>,
    /// The rendered rate limit key, its limit and its period in ms.
    pub rate: Option<(String, i32, i64)>,
    /// A `for_each` task's row holds its keys for its children instead (`{"ck", "cl", "rk",
    /// "rl", "rp"}`, kept in its `map_item` column, unused by a parent): its own attempts, which
    /// make and gather the children, take no slot and no token.
    pub child_keys: Option<Value>,
    /// A re-run's task run taken over settled: the task run it comes from and its output.
    pub origin: Option<Uuid>,
    pub output: Option<&'a Value>,
}

/// What creating `new` writes besides its run row: the task runs, the `run_created` event,
/// and whether any task is claimable at once (wake the claimers).
pub struct CreatePlan<'a> {
    pub tasks: Vec<NewTaskRow<'a>>,
    pub event: Event,
    pub any_ready: bool,
    /// Runs created before this hold the idempotency key no longer: it expired.
    pub key_expired_before: Option<DateTime<Utc>>,
    pub tally: Tally,
    /// The pipeline's rendered concurrency key and its limit (0: the named limit decides).
    pub concurrency: Option<(String, i32)>,
    /// Task runs still to settle (all but a re-run's reused ones).
    pub pending: i64,
}

/// Fails when a concurrency key (the pipeline's or a task's) cannot be rendered from the run's
/// input.
pub fn create<'a>(new: &'a NewRun<'_>) -> crate::Result<CreatePlan<'a>> {
    let p = &new.pipeline.pipeline;
    let run = new.id.to_string();
    let rendered = |c: &orbit_core::pipeline::Concurrency, whose: &str| {
        Ok::<_, crate::StoreError>((
            c.render(&new.input, &run, &p.name)
                .map_err(|e| crate::StoreError::Invalid(format!("{whose}: {e}")))?,
            // 0: none declared; the key's named limit decides.
            c.limit.map_or(0, |l| i32::try_from(l).unwrap_or(i32::MAX)),
        ))
    };
    let concurrency = p
        .concurrency
        .as_ref()
        .map(|c| rendered(c, "the pipeline"))
        .transpose()?;
    let reused: BTreeMap<&str, &crate::ReusedTask> = new
        .rerun
        .iter()
        .flat_map(|r| &r.reused)
        .map(|t| (t.name.as_str(), t))
        .collect();
    let tasks = p
        .tasks
        .iter()
        .enumerate()
        .map(|(seq, task)| {
            let reused_row = reused.get(task.name.as_str());
            // A need a re-run took over (succeeded or skipped) is met already.
            let needs = task
                .needs
                .iter()
                .filter(|n| !reused.contains_key(n.as_str()))
                .count();
            let ready = reused_row.is_none() && needs == 0;
            let concurrency = task
                .concurrency
                .as_ref()
                .map(|c| rendered(c, &format!("task `{}`", task.name)))
                .transpose()?;
            let rate = task
                .rate_limit
                .as_ref()
                .map(|r| {
                    let key = r.render(&new.input, &run, &p.name).map_err(|e| {
                        crate::StoreError::Invalid(format!("task `{}`: {e}", task.name))
                    })?;
                    Ok::<_, crate::StoreError>((
                        key,
                        i32::try_from(r.limit).unwrap_or(i32::MAX),
                        i64::try_from(r.per.as_millis()).unwrap_or(i64::MAX).max(1),
                    ))
                })
                .transpose()?;
            Ok(NewTaskRow {
                id: Uuid::now_v7(),
                name: &task.name,
                task_type: task.run_type(),
                queue: task.queue(),
                seq: i32::try_from(seq).unwrap_or(i32::MAX),
                state: match reused_row {
                    Some(r) => r.state,
                    None if ready => TaskState::Ready,
                    None => TaskState::Waiting,
                },
                priority: task.priority.saturating_add(new.priority),
                pending_needs: if reused_row.is_some() {
                    0
                } else {
                    i32::try_from(needs).unwrap_or(i32::MAX)
                },
                max_attempts: i32::try_from(task.retry.max_attempts).unwrap_or(i32::MAX),
                lease_ms: task.lease().as_millis() as i64,
                ready_at: ready.then_some(new.now),
                child_keys: task.for_each.as_ref().map(|_| {
                    json!({
                        "ck": concurrency.as_ref().map(|c| &c.0),
                        "cl": concurrency.as_ref().map(|c| c.1),
                        "rk": rate.as_ref().map(|r| &r.0),
                        "rl": rate.as_ref().map(|r| r.1),
                        "rp": rate.as_ref().map(|r| r.2),
                    })
                }),
                concurrency: if task.for_each.is_some() {
                    None
                } else {
                    concurrency
                },
                rate: if task.for_each.is_some() { None } else { rate },
                origin: reused_row.map(|r| r.origin),
                output: reused_row.and_then(|r| r.output.as_ref()),
            })
        })
        .collect::<crate::Result<Vec<NewTaskRow<'a>>>>()?;
    let key_expired_before = new.idempotency_key.as_ref().and_then(|_| {
        let ttl = chrono::Duration::from_std(new.idempotency_ttl).unwrap_or(chrono::Duration::MAX);
        new.now.checked_sub_signed(ttl)
    });
    let mut tally = Tally::default();
    for t in &tasks {
        tally.entered(t.state, 1);
    }
    let mut data = json!({"pipeline": p.name, "version": new.pipeline.version});
    if let Some(r) = &new.rerun {
        data["rerunOf"] = json!(r.of);
        data["rerunFrom"] = json!(r.from);
    }
    Ok(CreatePlan {
        any_ready: tasks.iter().any(|t| t.state == TaskState::Ready),
        pending: (tasks.len() - reused.len()) as i64,
        tasks,
        tally,
        event: Event::run(new.id, EventKind::RunCreated).with_data(data),
        key_expired_before,
        concurrency,
    })
}

/// What cancelling a run writes. Each running attempt gets an `attempts` row with
/// [`AttemptOutcome::Cancelled`], `error` and `log` (its holder's late result is fenced out);
/// every task run in one of `unfinished` becomes `cancelled` with `error`; the run becomes
/// `cancelled` with nothing pending; then `event`.
#[derive(Debug)]
pub struct CancelPlan {
    pub outcome: AttemptOutcome,
    pub error: &'static str,
    pub log: &'static str,
    pub unfinished: [&'static str; 4],
    pub event: Event,
}

/// Cancels `run`, which is in `state`; a run already final cannot be.
pub fn cancel(run: Uuid, state: RunState) -> crate::Result<CancelPlan> {
    if state.is_terminal() {
        return Err(crate::StoreError::Conflict(format!(
            "run {run} is already {state}"
        )));
    }
    Ok(CancelPlan {
        outcome: AttemptOutcome::Cancelled,
        error: "cancelled by user",
        log: "[orbit] attempt cancelled by user",
        unfinished: ["waiting", "ready", "parked", "running"],
        event: Event::run(run, EventKind::RunCancelled),
    })
}

/// What a retry of a run's tasks may put back in the queue: dead and cancelled task runs. Each
/// becomes `ready` (or `waiting`, with upstream tasks still to finish), its attempts counted
/// afresh for the retry policy, its dead letter removed.
pub const REQUEUEABLE: [&str; 2] = ["dead", "cancelled"];

/// The events of a retry that put `requeued` (in the caller's order) back in the queue.
pub fn requeued_events(run: Uuid, requeued: &[String]) -> Vec<Event> {
    let mut events: Vec<Event> = requeued
        .iter()
        .map(|name| Event::task(run, name, EventKind::TaskRequeued, None))
        .collect();
    events.push(Event::run(run, EventKind::RunRequeued).with_data(json!({ "tasks": requeued })));
    events
}

/// The events of a claim: each task started by `owner`.
pub fn claimed_events(claimed: &[ClaimedTask], owner: &str) -> Vec<Event> {
    claimed
        .iter()
        .map(|t| {
            Event::task(
                t.run_id,
                &t.task_name,
                EventKind::TaskStarted,
                Some(json!({"attempt": t.attempt, "worker": owner})),
            )
        })
        .collect()
}

/// The runs of `claimed` that may still be `pending` (not seen running in this commit): the
/// backend starts them (`pending` → `running`) and adds [`EventKind::RunStarted`] for each it
/// changed. In claim order, each once.
pub fn runs_to_start(claimed: &[ClaimedTask], running: &HashSet<Uuid>) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    claimed
        .iter()
        .map(|t| t.run_id)
        .filter(|run| !running.contains(run) && seen.insert(*run))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use orbit_core::transition::Failure;

    fn attempt(run: Uuid, name: &str, transition: Transition) -> FinishedAttempt {
        let now = Utc::now();
        FinishedAttempt {
            task: ClaimedTask {
                id: Uuid::now_v7(),
                run_id: run,
                pipeline_id: Uuid::nil(),
                task_name: name.into(),
                attempt: 2,
                tries: 2,
                lease_epoch: 1,
                lease_expires_at: now,
                claimed_at: now,
                item: None,
                wake: None,
                ready_at: None,
            },
            worker: "w".into(),
            started_at: now,
            finished_at: now,
            log: String::new(),
            transition,
            idempotency_key: None,
            reused: false,
            code_version: None,
        }
    }

    fn succeed(promote: &[&str], skip: &[&str]) -> Transition {
        Transition::Succeed {
            output: json!(1),
            promote: promote.iter().map(|s| s.to_string()).collect(),
            skip: skip.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_batch_becomes_row_changes_events_and_counts() {
        let (r1, r2) = (Uuid::now_v7(), Uuid::now_v7());
        let mut keyed_a = attempt(r1, "pay", succeed(&["ship"], &["slow"]));
        keyed_a.idempotency_key = Some("k".into());
        let mut keyed_b = attempt(r1, "pay-again", succeed(&["ship"], &[]));
        keyed_b.idempotency_key = Some("k".into());
        let dead = attempt(
            r2,
            "load",
            Transition::Dead {
                failure: Failure::new(FailureKind::Fatal, "bad input"),
                cancel: vec!["report".into()],
            },
        );
        let retry = attempt(
            r2,
            "fetch",
            Transition::Retry {
                ready_at: Utc::now(),
                failure: Failure::new(FailureKind::Timeout, "slow"),
                keep_place: false,
            },
        );
        let batch = [keyed_a, keyed_b, dead, retry];
        let kept: Vec<&FinishedAttempt> = batch.iter().collect();
        let mut plan = FinishPlan::new(&kept);
        assert_eq!(
            plan.skips,
            vec![Mark {
                run: r1,
                task: "slow",
                reason: "skipped: not chosen by `pay`".into()
            }]
        );
        assert_eq!(
            plan.cancels[0].reason,
            "not started: upstream task `load` is dead"
        );
        assert_eq!(
            plan.promotions,
            vec![(r1, "ship"), (r1, "ship")],
            "once per upstream"
        );
        assert_eq!(plan.results.len(), 1, "one row per key");
        assert_eq!(
            plan.results[0].1, batch[1].task.id,
            "the last of the batch wins"
        );
        assert_eq!(plan.dead.len(), 1);
        assert_eq!(plan.ready, 1, "the retried task");
        assert_eq!(plan.counts[&r1], (2, 0));
        assert_eq!(plan.counts[&r2], (1, 1));
        let kinds: Vec<&str> = plan.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "task_succeeded",
                "task_succeeded",
                "task_dead",
                "task_retrying"
            ]
        );
        assert_eq!(plan.events[3].data.as_ref().unwrap()["kind"], "timeout");
        assert_eq!(AttemptOutcome::of(&batch[2]).as_str(), "fatal");
        plan.ended(r2, TaskState::Cancelled);
        assert_eq!(
            plan.counts[&r2],
            (2, 1),
            "a cancelled downstream task ended"
        );
    }

    #[test]
    fn runs_settle_when_nothing_is_pending() {
        let (done, failed, busy, final_) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let row = |run, pending, dead, state| RunCounters {
            run,
            pending,
            dead,
            state,
        };
        let mut plan = FinishPlan::default();
        let (settled, running) = plan.settle([
            row(done, 0, 0, RunState::Running),
            row(failed, 0, 1, RunState::Running),
            row(busy, 3, 0, RunState::Running),
            row(final_, 0, 0, RunState::Cancelled),
        ]);
        assert_eq!(
            settled,
            vec![(done, RunState::Succeeded), (failed, RunState::Failed)]
        );
        assert_eq!(running, HashSet::from([busy]));
        let kinds: Vec<&str> = plan.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["run_succeeded", "run_failed"]);
    }

    #[test]
    fn every_event_kind_has_its_own_name() {
        let names: HashSet<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
        for state in [RunState::Pending, RunState::Running, RunState::Succeeded] {
            assert!(EventKind::of_run(state).as_str().starts_with("run_"));
        }
    }

    #[test]
    fn a_deletion_slice_is_the_last_when_less_than_a_slice_was_left() {
        let full = vec![TaskState::Succeeded; DELETE_SLICE as usize];
        assert!(
            !deleted_slice(&full, 0).1,
            "a full slice of task runs: more may follow"
        );
        assert!(
            !deleted_slice(&[], DELETE_EVENTS as u64).1,
            "a full slice of events"
        );
        let (tally, last) = deleted_slice(&[TaskState::Dead, TaskState::Succeeded], 7);
        assert!(last);
        assert_eq!(
            tally.states().collect::<Vec<_>>(),
            [(TaskState::Succeeded, -1), (TaskState::Dead, -1)]
        );
    }
}
