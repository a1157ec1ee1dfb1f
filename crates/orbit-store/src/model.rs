//! The records a store reads and writes.

use chrono::{DateTime, Utc};
use orbit_core::transition::Transition;
use orbit_core::{Pipeline, RunState, TaskState};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// One saved version of a pipeline.
#[derive(Clone, Debug, Serialize)]
pub struct StoredPipeline {
    pub id: Uuid,
    pub name: String,
    pub version: i64,
    pub hash: String,
    pub pipeline: Pipeline,
    /// The file it came from, as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct NewRun<'a> {
    pub pipeline: &'a StoredPipeline,
    pub input: Value,
    /// Added to every task's own priority.
    pub priority: i32,
    pub idempotency_key: Option<String>,
    /// An earlier run holds its key only this long.
    pub idempotency_ttl: std::time::Duration,
    pub now: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct CreatedRun {
    pub run: RunRecord,
    /// False when an earlier run with the same idempotency key was returned.
    pub created: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub id: Uuid,
    pub pipeline_id: Uuid,
    pub pipeline_name: String,
    pub pipeline_version: i64,
    pub state: RunState,
    pub input: Value,
    pub priority: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub tasks_total: i64,
    /// Task runs not yet in a terminal state.
    pub tasks_pending: i64,
    pub tasks_dead: i64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskRunRecord {
    pub id: Uuid,
    pub run_id: Uuid,
    pub task_name: String,
    pub state: TaskState,
    /// Attempts started so far.
    pub attempt: u32,
    pub max_attempts: u32,
    pub priority: i32,
    pub lease_epoch: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub ready_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub log: String,
}

/// What to claim.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    /// Names the claimer in leases and attempts.
    pub owner: String,
    pub limit: usize,
    /// Only tasks of this run (`orbit run`); any run when `None`.
    pub run: Option<Uuid>,
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
}

#[derive(Clone, Debug, Default)]
pub struct BatchOutcome {
    pub claimed: Vec<ClaimedTask>,
    /// Finished attempts refused because their lease was taken over; nothing of them was kept.
    pub lease_lost: Vec<Uuid>,
    /// Runs that reached a terminal state in this commit.
    pub settled_runs: Vec<(Uuid, RunState)>,
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
#[derive(Clone, Debug, Default, Serialize)]
pub struct Requeued {
    /// Task runs put back to `ready` or `waiting`.
    pub tasks: Vec<String>,
}

/// A dead-letter queue entry: a task run whose attempts are spent or that failed for good.
#[derive(Clone, Debug, Serialize)]
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
