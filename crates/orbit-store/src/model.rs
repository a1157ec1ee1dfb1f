//! The records a store reads and writes.

use chrono::{DateTime, Utc};
use orbit_core::transition::Transition;
use orbit_core::{Pipeline, RunState, TaskState};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// One saved version of a pipeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredPipeline {
    pub id: Uuid,
    pub name: String,
    pub version: i64,
    pub hash: String,
    pub pipeline: Pipeline,
    /// The file it came from, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct NewRun<'a> {
    /// Chosen by the caller, so objects (a large input) can be written under it first.
    pub id: Uuid,
    pub pipeline: &'a StoredPipeline,
    pub input: Value,
    /// Added to every task's own priority.
    pub priority: i32,
    pub idempotency_key: Option<String>,
    /// An earlier run holds its key only this long.
    pub idempotency_ttl: std::time::Duration,
    /// Who or what created it.
    pub triggered_by: TriggeredBy,
    /// The run and task (`type: pipeline`) that made it, for a sub-run.
    pub parent: Option<(Uuid, String)>,
    /// A re-run of an earlier run from one of its tasks.
    pub rerun: Option<Rerun>,
    /// What an idempotency key's reuse is compared by ([`orbit_core::pipeline::request_hash`] of
    /// the pipeline and the input as given, before a large input went to object storage).
    /// `None`: computed from `pipeline` and `input` here.
    pub request_hash: Option<String>,
    pub now: DateTime<Utc>,
}

impl NewRun<'_> {
    /// The request hash the store records and compares.
    pub fn request_hash(&self) -> String {
        self.request_hash
            .clone()
            .unwrap_or_else(|| orbit_core::pipeline::request_hash(&self.pipeline.name, &self.input))
    }
}

/// A re-run of run `of` from task `from`: the `reused` task runs are created settled, with
/// the outputs (or skips) the earlier run recorded; every other task runs afresh.
#[derive(Clone, Debug)]
pub struct Rerun {
    pub of: Uuid,
    pub from: String,
    pub reused: Vec<ReusedTask>,
}

/// A task run a re-run takes over from the run it re-runs.
#[derive(Clone, Debug)]
pub struct ReusedTask {
    pub name: String,
    /// The task run it comes from.
    pub origin: Uuid,
    /// `Succeeded` (with `output`) or `Skipped`.
    pub state: TaskState,
    pub output: Option<Value>,
}

/// Who or what started a run going: created it (`cli`, `api`, `cron`) or, later, re-opened it
/// (`retry`, `recover`, `dlq`). The seeds' `triggeredBy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TriggeredBy {
    Cli,
    Api,
    Cron,
    Retry,
    Recover,
    Dlq,
    /// A `type: pipeline` task of another run.
    Pipeline,
    /// `orbit rerun` (or the API's, the dashboard's): an earlier run again from one of its tasks.
    Rerun,
}

impl TriggeredBy {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggeredBy::Cli => "cli",
            TriggeredBy::Api => "api",
            TriggeredBy::Cron => "cron",
            TriggeredBy::Retry => "retry",
            TriggeredBy::Recover => "recover",
            TriggeredBy::Dlq => "dlq",
            TriggeredBy::Pipeline => "pipeline",
            TriggeredBy::Rerun => "rerun",
        }
    }
}

#[derive(Clone, Debug)]
pub struct CreatedRun {
    pub run: RunRecord,
    /// False when an earlier run with the same idempotency key was returned.
    pub created: bool,
    /// When not created: whether the earlier run was made for the same request (pipeline and
    /// input). A key reused for a different request is the caller's mistake to report.
    pub same_request: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunRecord {
    pub id: Uuid,
    pub pipeline_id: Uuid,
    pub pipeline_name: String,
    pub pipeline_version: i64,
    pub state: RunState,
    pub input: Value,
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Who or what last started it going ([`TriggeredBy`]; none for runs from before it was
    /// recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_by: Option<String>,
    pub tasks_total: i64,
    /// Task runs not yet in a terminal state.
    pub tasks_pending: i64,
    pub tasks_dead: i64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The pipeline's rendered concurrency key: at most `concurrencyLimit` runs with it run at
    /// once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    /// A sub-run's parent run and the task of it that made this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_task: Option<String>,
    /// A re-run: the run it re-runs, and the task it re-ran from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_from: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskRunRecord {
    pub id: Uuid,
    pub run_id: Uuid,
    pub task_name: String,
    pub task_type: String,
    pub queue: String,
    pub state: TaskState,
    /// Attempts started so far, over the task run's whole life.
    pub attempt: u32,
    /// Attempts started since it was last re-queued by a retry: what `max_attempts` limits.
    pub tries: u32,
    pub max_attempts: u32,
    pub priority: i32,
    pub lease_epoch: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub ready_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    /// When its latest attempt was claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The running attempt's last reported progress, 0.0 to 1.0, and its message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_message: Option<String>,
    /// Its rendered concurrency key: at most `concurrencyLimit` task runs with this key run at
    /// once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    /// Its rendered rate limit key: attempts with this key start no faster than its
    /// `rate_limit` allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_key: Option<String>,
    /// A `for_each` child's parent task and its place in the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_index: Option<u32>,
    /// A child's element (not in the API's answers: a view of a big map would carry them all).
    #[serde(skip)]
    pub map_item: Option<Value>,
    /// Why it parked last (kept after it woke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub park: Option<ParkInfo>,
    /// A re-run's task run taken over from the run it re-runs: the task run it comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Uuid>,
    /// What woke it: `{"by": "time"}`, a signal (`{"by": "signal", "signal", "payload"}`) or a
    /// decision (`{"by": "decision", "approved", "decidedBy", "comment", "at"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake: Option<Value>,
}

/// Why a task run parked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParkInfo {
    /// `sleep`, `signal` or `approval`.
    pub kind: String,
    /// When its time comes (a sleep's end, a wait's timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// The signal it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// What an approver reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptRecord {
    pub task_run_id: Uuid,
    pub run_id: Uuid,
    pub task_name: String,
    pub attempt: u32,
    pub worker: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `succeeded`, or the failure kind (`error`, `fatal`, `timeout`, `worker_lost`).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub log: String,
    /// The version of the task's code it ran (unknown for attempts recorded before versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_version: Option<i64>,
}

/// What to claim.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    /// Names the claimer in leases and attempts.
    pub owner: String,
    pub limit: usize,
    /// Only tasks of this run (`orbit run`); any run when `None`.
    pub run: Option<Uuid>,
    /// Only tasks in these queues; any queue when empty.
    pub queues: Vec<String>,
    /// Only tasks of these types (`shell`, `http`, ...); any type when empty.
    pub types: Vec<String>,
}

impl ClaimRequest {
    /// Any ready task of any run, up to `limit`.
    pub fn any(owner: impl Into<String>, limit: usize) -> ClaimRequest {
        ClaimRequest {
            owner: owner.into(),
            limit,
            run: None,
            queues: Vec::new(),
            types: Vec::new(),
        }
    }
}

/// A task run this claimer now holds. Only this value can finish it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimedTask {
    pub id: Uuid,
    pub run_id: Uuid,
    pub pipeline_id: Uuid,
    pub task_name: String,
    /// This attempt's number, 1-based, counted over the task run's whole life.
    pub attempt: u32,
    /// This attempt's number since the task run was last re-queued by a retry: what the retry
    /// policy counts.
    pub tries: u32,
    pub lease_epoch: i64,
    pub lease_expires_at: DateTime<Utc>,
    pub claimed_at: DateTime<Utc>,
    /// A `for_each` child's element (set on claims; `None` for any other task run).
    pub item: Option<Value>,
    /// What woke a parked task run (set on claims): `{"by": "time"}`, `{"by": "signal",
    /// "signal", "payload"}` or `{"by": "decision", "approved", "decidedBy", "comment", "at"}`.
    pub wake: Option<Value>,
    /// When it became claimable (set on claims): its wait in the queue ends at `claimed_at`.
    pub ready_at: Option<DateTime<Utc>>,
}

/// An attempt that ended, with what the state machine decided.
#[derive(Clone, Debug)]
pub struct FinishedAttempt {
    pub task: ClaimedTask,
    pub worker: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub log: String,
    pub transition: Transition,
    /// The task's rendered idempotency key: a success stores its output under it.
    pub idempotency_key: Option<String>,
    /// The output was reused from an earlier task run with the same key; nothing executed.
    pub reused: bool,
    /// The version of the task's code the attempt ran, when known.
    pub code_version: Option<i64>,
}

#[derive(Clone, Debug, Default)]
pub struct BatchOutcome {
    pub claimed: Vec<ClaimedTask>,
    /// Finished attempts refused because their lease was taken over; nothing of them was kept.
    pub lease_lost: Vec<Uuid>,
    /// Runs that reached a terminal state in this commit.
    pub settled_runs: Vec<(Uuid, RunState)>,
    /// Those of them that are sub-runs: their parents' tasks wait for them.
    pub settled_subruns: Vec<Uuid>,
    /// The commit made tasks claimable that its own claim did not take; the store has
    /// signalled other claimers.
    pub left_work: bool,
    /// Keys (concurrency, rate) cut a claim short: the head of the queue may hold more for the
    /// same claimer, which claims again at once (other claimers are not woken for it).
    pub cut_short: bool,
    /// Work is held back until then (a rate limit's next token, a parked task run's time);
    /// the store wakes claimers at that time.
    pub wake_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub state: Option<RunState>,
    pub pipeline: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

/// A running task run and who holds it.
#[derive(Clone, Debug)]
pub struct LeasedTask {
    pub task: ClaimedTask,
    pub owner: String,
}

/// Which running task runs [`crate::Store::leased`] returns.
#[derive(Clone, Debug, Default)]
pub struct LeaseFilter {
    /// Only this run's.
    pub run: Option<Uuid>,
    /// Only leases that expired before this instant.
    pub expired_before: Option<DateTime<Utc>>,
    pub limit: u32,
}

/// What re-queuing did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Requeued {
    /// Task runs put back to `ready` or `waiting`.
    pub tasks: Vec<String>,
}

/// A dead-letter queue entry: a task run whose attempts are spent or that failed for good.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    /// The task run's id.
    pub id: Uuid,
    pub run_id: Uuid,
    pub pipeline_id: Uuid,
    pub task_name: String,
    pub error: Option<String>,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
}

/// What [`crate::Store::purge_dead_letters`] removed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PurgedLetters {
    /// Entries deleted.
    pub entries: u64,
    /// Failed runs that now have no entry left: retention deletes them (and their objects).
    pub runs: Vec<Uuid>,
}

/// A concurrency key: its task runs and runs running, and its named limit (`orbit limits set`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyUsage {
    pub key: String,
    /// Task runs with this key (a task's `concurrency`) running now.
    pub running: u64,
    /// Runs with this key (a pipeline's `concurrency`) running now.
    #[serde(default)]
    pub runs_running: u64,
    /// The named limit; `None`: the limit each task (or pipeline) declares applies.
    pub limit: Option<u32>,
}

/// A rate limit key's token bucket: `tokens` as of `updated_at`, refilled `capacity` per
/// `per_ms`, never above `capacity`.
#[derive(Clone, Debug, PartialEq)]
pub struct RateBucket {
    pub key: String,
    pub tokens: f64,
    pub capacity: f64,
    pub per_ms: f64,
    pub updated_at: DateTime<Utc>,
}

impl RateBucket {
    /// A `rate_buckets` row: key, tokens, capacity, period (ms), time (µs since the epoch).
    pub fn from_row(
        (key, tokens, capacity, per_ms, at): (String, f64, f64, f64, i64),
    ) -> crate::Result<RateBucket> {
        Ok(RateBucket {
            key,
            tokens,
            capacity,
            per_ms,
            updated_at: DateTime::from_timestamp_micros(at)
                .ok_or_else(|| crate::StoreError::Corrupt(format!("rate bucket time {at}")))?,
        })
    }

    /// The tokens it holds at `now`.
    pub fn tokens_at(&self, now: DateTime<Utc>) -> f64 {
        let elapsed_ms = (now - self.updated_at)
            .num_microseconds()
            .unwrap_or(i64::MAX) as f64
            / 1000.0;
        (self.tokens + elapsed_ms * self.capacity / self.per_ms).min(self.capacity)
    }

    /// How long from `now` until it holds a whole token (zero if it does).
    pub fn next_token_in(&self, now: DateTime<Utc>) -> std::time::Duration {
        let missing = 1.0 - self.tokens_at(now);
        if missing <= 0.0 || self.capacity <= 0.0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_secs_f64(missing * self.per_ms / self.capacity / 1000.0)
    }
}

/// Task runs by state, in the seed's `GET /api/queue/status` shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueStats {
    /// Ready to be claimed.
    pub pending: i64,
    pub running: i64,
    /// Waiting for upstream tasks.
    pub waiting: i64,
    /// Parked until a time, a signal or a decision.
    pub parked: i64,
    pub completed: i64,
    /// Dead: attempts spent or a non-retryable failure.
    pub failed: i64,
    /// Entries in the dead-letter queue.
    pub dlq: i64,
    pub oldest_pending: Option<DateTime<Utc>>,
}

/// Which task runs [`crate::Store::queue_items`] lists.
#[derive(Clone, Debug, Default)]
pub struct QueueFilter {
    /// Only task runs in this state; the unsettled ones (waiting, ready, running) when `None`.
    pub state: Option<TaskState>,
    pub queue: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

/// A page of one run's task runs, for [`crate::Store::task_runs_page`].
#[derive(Clone, Debug, Default)]
pub struct TaskRunPage {
    /// Only task runs in this state.
    pub state: Option<TaskState>,
    /// The children of this `for_each` task, by index; `None`: the run's own tasks (no
    /// children).
    pub children_of: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

/// How one child of a `for_each` task ended (or where it is), for the parent's gathering.
#[derive(Clone, Debug, PartialEq)]
pub struct ChildResult {
    pub index: u32,
    pub state: TaskState,
    pub output: Option<Value>,
    pub error: Option<String>,
}

impl ChildResult {
    /// A row of a parent's children: its index, state (by name), output and error.
    pub fn from_row(
        index: i64,
        state: &str,
        output: Option<Value>,
        error: Option<String>,
    ) -> crate::Result<ChildResult> {
        Ok(ChildResult {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            state: parse_state(state)?,
            output,
            error,
        })
    }
}

impl ChildCount {
    /// A row of a run's child counts: the parent task, a state (by name), how many.
    pub fn from_row(task_name: String, state: &str, count: i64) -> crate::Result<ChildCount> {
        Ok(ChildCount {
            task_name,
            state: parse_state(state)?,
            count: u64::try_from(count).unwrap_or(0),
        })
    }
}

fn parse_state(state: &str) -> crate::Result<TaskState> {
    state
        .parse()
        .map_err(|e| crate::StoreError::Corrupt(format!("task state: {e}")))
}

/// How many children of one `for_each` task are in one state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChildCount {
    pub task_name: String,
    pub state: TaskState,
    pub count: u64,
}

/// A running `orbit server` or `orbit worker` process, as it announces itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeInfo {
    /// The owner name it puts on leases (`host:pid`).
    pub id: String,
    /// `server` or `worker`.
    pub kind: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    /// The queues it claims from; empty means all.
    pub queues: Vec<String>,
    pub concurrency: u32,
    /// How often it says it is alive.
    pub heartbeat_ms: u64,
    /// For an SDK worker (`kind` `service`): the service it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeRecord {
    #[serde(flatten)]
    pub info: NodeInfo,
    pub started_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// Set when it shut down cleanly.
    pub stopped_at: Option<DateTime<Utc>>,
    /// Task runs it holds right now.
    pub running: i64,
}

impl NodeRecord {
    /// `stopped` (shut down cleanly), `unhealthy` (missed three heartbeats) or `healthy`.
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        let silent = (now - self.last_seen_at).num_milliseconds();
        if self.stopped_at.is_some() {
            "stopped"
        } else if silent > 3 * self.info.heartbeat_ms.max(1000) as i64 {
            "unhealthy"
        } else {
            "healthy"
        }
    }
}

/// A registered SDK worker service.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Push mode: where tasks are POSTed. Pull mode when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub registered_at: DateTime<Utc>,
    /// Its last registration or the last heartbeat of any of its workers.
    pub last_seen_at: DateTime<Utc>,
}

/// A task a service registered, with its current code version.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceTask {
    pub name: String,
    pub service_id: String,
    pub code_hash: String,
    pub code_version: i64,
    /// Its options as registered (routing, idempotency key, retries, timeout, heartbeat).
    pub options: orbit_core::protocol::TaskRegistration,
    pub updated_at: DateTime<Utc>,
    /// This registration gave it a new version (or its first).
    #[serde(skip)]
    pub changed: bool,
}

/// One entry of a task's code history (`task_code_history`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CodeChange {
    pub task_name: String,
    pub service_id: String,
    pub code_version: i64,
    pub code_hash: String,
    pub created_at: DateTime<Utc>,
}

/// One entry of the event log: a state change of a run or a task, in commit order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventRecord {
    /// Increases with every event; a reader resumes after the last id it saw.
    pub id: i64,
    pub run_id: Option<Uuid>,
    pub task: Option<String>,
    /// `run_created`, `run_started`, `task_started`, `task_succeeded`, `task_retrying`, …
    pub kind: String,
    pub data: Option<Value>,
    pub at: DateTime<Utc>,
}

/// What delivering a signal did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignalOutcome {
    /// The task runs parked waiting for it that it woke, each once: `(run, task)`.
    pub delivered: Vec<(Uuid, String)>,
    /// None waited: it is kept until it expires, for the first wait that parks on it.
    pub kept: bool,
}

/// A decision on a parked approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub approved: bool,
    /// Who decided: an API token's name or a dashboard user.
    pub by: String,
    pub comment: Option<String>,
}
