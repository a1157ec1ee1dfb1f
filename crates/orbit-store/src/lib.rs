//! The store: where every pipeline, run, task run, attempt and event is kept.
//!
//! [`Store`] speaks in domain verbs. Each verb is one short transaction; every write that
//! follows a claim is fenced by the task run's `lease_epoch`, so a worker that lost its lease can
//! change nothing. Decisions (what a finished attempt does) are made by `orbit-core`'s state
//! machine, and what a batch of them writes (skips, cancels, promotions, kept results, dead
//! letters, run counters and settling, every event) by [`plan`], once for every backend; a
//! backend only executes the plan with its own statements, atomically:
//!
//! - [`Store::create_run`] inserts a run and all its task runs; tasks that need nothing are
//!   `ready` at once.
//! - [`Store::finish_and_claim`] is the engine's one write per round: it records a batch of
//!   finished attempts (their outputs, the downstream tasks they promote, the runs they settle)
//!   and claims the next ready tasks, all in one commit. Grouping many state changes into one
//!   durable commit is where throughput comes from.
//! - [`Store::extend_leases`] is the heartbeat.
//!
//! Backends: `orbit-store-sqlite` (embedded default) and `orbit-store-postgres` (many machines).
//! The `testkit` feature holds the conformance suite every backend must pass, and
//! [`faults::Faulty`], a wrapper that makes chosen verbs fail or stall.
//!
//! This crate depends on `orbit-core` only: never on a backend, the engine or the server.

#[cfg(feature = "testkit")]
pub mod faults;
mod model;
pub mod plan;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use model::*;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orbit_core::{Pipeline, TaskState};
use serde_json::Value;
use uuid::Uuid;

/// Splits a batch of finished attempts by the fence: those whose `(task run, lease epoch)` the
/// store `accepted` are kept, the first of each only (the same attempt reported twice in one
/// batch counts once); the ids of the others are refused as lease-lost.
pub fn fenced<'a>(
    finished: &'a [FinishedAttempt],
    accepted: &std::collections::HashSet<(Uuid, i64)>,
) -> (Vec<&'a FinishedAttempt>, Vec<Uuid>) {
    let mut seen = std::collections::HashSet::with_capacity(finished.len());
    let mut kept = Vec::with_capacity(finished.len());
    let mut lost = Vec::new();
    for f in finished {
        let key = (f.task.id, f.task.lease_epoch);
        if accepted.contains(&key) && seen.insert(key) {
            kept.push(f);
        } else {
            lost.push(f.task.id);
        }
    }
    (kept, lost)
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What can go wrong in a store, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request does not fit the current state (an ambiguous id prefix, a lost lease).
    #[error("{0}")]
    Conflict(String),
    /// The database could not be reached or refused the operation; retrying may help.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be read back (a bad state string, invalid JSON).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A stable code for APIs and exit statuses.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::NotFound(_) => "not_found",
            StoreError::Conflict(_) => "conflict",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Corrupt(_) => "corrupt",
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Saves a pipeline definition. The same content as the latest version returns that version;
    /// a changed one becomes version + 1.
    async fn save_pipeline(
        &self,
        pipeline: &Pipeline,
        source: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<StoredPipeline>;

    /// The latest version of the pipeline called `name`.
    async fn pipeline(&self, name: &str) -> Result<StoredPipeline>;

    /// One stored version, by its id.
    async fn pipeline_version(&self, id: Uuid) -> Result<StoredPipeline>;

    /// Every stored version of the pipeline `name` (deleted ones too), oldest first.
    async fn pipeline_versions(&self, name: &str) -> Result<Vec<StoredPipeline>>;

    /// The latest version of every pipeline, by name.
    async fn list_pipelines(&self) -> Result<Vec<StoredPipeline>>;

    /// Creates a run with its task runs. With an idempotency key that an earlier run holds,
    /// returns that run instead (`created == false`).
    async fn create_run(&self, new: NewRun<'_>) -> Result<CreatedRun>;

    /// Records `finished` attempts, each only if its lease is still held, then claims up to
    /// `claim.limit` ready tasks: one transaction.
    async fn finish_and_claim(
        &self,
        finished: &[FinishedAttempt],
        claim: Option<&ClaimRequest>,
        now: DateTime<Utc>,
    ) -> Result<BatchOutcome>;

    /// [`Store::finish_and_claim`] for many claimers at once: `finished` recorded, then each
    /// claim served in turn, all in one commit; returns what each claim got, in order. This is
    /// how many small requests (worker callbacks and polls) share one durable commit. The
    /// default makes one commit per claim.
    async fn finish_and_claim_many(
        &self,
        finished: &[FinishedAttempt],
        claims: &[ClaimRequest],
        now: DateTime<Utc>,
    ) -> Result<(BatchOutcome, Vec<Vec<ClaimedTask>>)> {
        let mut out = self.finish_and_claim(finished, claims.first(), now).await?;
        let mut each = Vec::with_capacity(claims.len());
        if !claims.is_empty() {
            each.push(std::mem::take(&mut out.claimed));
        }
        for c in claims.iter().skip(1) {
            each.push(self.finish_and_claim(&[], Some(c), now).await?.claimed);
        }
        Ok((out, each))
    }

    /// Extends the leases of running task runs whose `(id, lease_epoch)` still match; returns
    /// the ids whose lease was lost.
    async fn extend_leases(&self, leases: &[(Uuid, i64)], now: DateTime<Utc>) -> Result<Vec<Uuid>>;

    async fn run(&self, id: Uuid) -> Result<RunRecord>;

    /// A run by its full id or a unique prefix of it.
    async fn find_run(&self, id_or_prefix: &str) -> Result<RunRecord>;

    /// Newest first.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>>;

    /// The task runs of a run, in creation (pipeline file) order.
    async fn task_runs(&self, run: Uuid) -> Result<Vec<TaskRunRecord>>;

    /// A page of the task runs of a run, in creation (pipeline file) order: what a view of a
    /// big run reads instead of all of them.
    async fn task_runs_page(&self, run: Uuid, page: &TaskRunPage) -> Result<Vec<TaskRunRecord>>;

    /// How many task runs of `run` are in each state (states with none left out).
    async fn task_run_counts(&self, run: Uuid) -> Result<Vec<(TaskState, u64)>>;

    /// Attempts of a run (of one task when given), oldest first.
    async fn attempts(&self, run: Uuid, task: Option<&str>) -> Result<Vec<AttemptRecord>>;

    /// Outputs of succeeded task runs of `run` among `tasks`.
    async fn outputs(&self, run: Uuid, tasks: &[String]) -> Result<Vec<(String, Value)>>;

    /// Running task runs and their lease holders.
    async fn leased(&self, filter: &LeaseFilter) -> Result<Vec<LeasedTask>>;

    /// Cancels a run that has not settled: its run and every unsettled task run become
    /// `cancelled`; a running attempt is recorded with the outcome `cancelled`, and its holder,
    /// woken by [`Store::control_signal`], stops it.
    async fn cancel_run(&self, run: Uuid, now: DateTime<Utc>) -> Result<RunRecord>;

    /// Puts the named dead or cancelled task runs of `run` back in the queue with a fresh set of
    /// tries (`ready` when nothing upstream is missing, else `waiting`) and re-opens the run,
    /// recording `by` as what started it going again (also when `tasks` is empty: a resume).
    /// Succeeded task runs are never touched.
    async fn requeue(
        &self,
        run: Uuid,
        tasks: &[String],
        by: TriggeredBy,
        now: DateTime<Utc>,
    ) -> Result<Requeued>;

    /// Dead-letter queue entries, newest first.
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>>;

    /// One entry, by its task run id or a unique prefix.
    async fn dead_letter(&self, id_or_prefix: &str) -> Result<DeadLetter>;

    /// Deletes entries created before `before` (the task runs stay dead); returns how many, and
    /// the failed runs left with no entry at all.
    async fn purge_dead_letters(&self, before: DateTime<Utc>) -> Result<PurgedLetters>;

    /// Deletes a settled run with its task runs, attempts, dead letters, events and the
    /// idempotency results its tasks stored. A run still pending or running is a `Conflict`
    /// (cancel it first). Its objects in object storage are the caller's to delete.
    async fn delete_run(&self, id: Uuid) -> Result<()>;

    /// The output stored under a task idempotency key, if a task run with that key succeeded
    /// at or after `since`.
    async fn keyed_output(&self, key: &str, since: DateTime<Utc>) -> Result<Option<(Uuid, Value)>>;

    /// The earliest `ready_at` among ready tasks of `run` (any run when `None`): when the next
    /// retry becomes claimable.
    async fn next_ready_at(&self, run: Option<Uuid>) -> Result<Option<DateTime<Utc>>>;

    /// Hides every version of the pipeline `name` from lists and triggers; its runs stay.
    /// Saving it again brings it back with the next version number. Returns the versions hidden.
    async fn delete_pipeline(&self, name: &str, now: DateTime<Utc>) -> Result<u64>;

    /// One task run, by its full id or a unique prefix.
    async fn task_run(&self, id_or_prefix: &str) -> Result<TaskRunRecord>;

    async fn queue_stats(&self) -> Result<QueueStats>;

    /// Task runs in the queue, highest priority and oldest first.
    async fn queue_items(&self, filter: &QueueFilter) -> Result<Vec<TaskRunRecord>>;

    /// Attempts that finished at or after `since`, newest first, at most `limit`.
    async fn recent_attempts(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<AttemptSummary>>;

    /// Records that `node` is alive (first call: that it started).
    async fn node_heartbeat(&self, node: &NodeInfo, now: DateTime<Utc>) -> Result<()>;

    /// Records that the node `id` shut down cleanly.
    async fn node_stopped(&self, id: &str, now: DateTime<Utc>) -> Result<()>;

    /// Known nodes, most recently seen first.
    async fn nodes(&self, limit: u32) -> Result<Vec<NodeRecord>>;

    /// Records a service's registration: the service (its push URL, if any) and each of its
    /// tasks; a task whose code hash changed gets the next code version and a history entry.
    async fn register_service(
        &self,
        registration: &orbit_core::protocol::Registration,
        now: DateTime<Utc>,
    ) -> Result<Vec<ServiceTask>>;

    /// Registered services, most recently seen first: a service is seen when it registers and
    /// whenever one of its workers (nodes naming it) heartbeats.
    async fn services(&self) -> Result<Vec<ServiceRecord>>;

    /// The registered tasks of `service`, or of every service, by name.
    async fn service_tasks(&self, service: Option<&str>) -> Result<Vec<ServiceTask>>;

    /// One registered task by name.
    async fn service_task(&self, name: &str) -> Result<ServiceTask>;

    /// The code history of a registered task, oldest first.
    async fn task_history(&self, name: &str) -> Result<Vec<CodeChange>>;

    /// Records a running attempt's progress, if `(id, epoch)` still holds its lease; returns
    /// whether it did.
    async fn set_progress(
        &self,
        id: Uuid,
        epoch: i64,
        progress: f64,
        message: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Changes whenever work may have become claimable (a run created, a task re-queued or
    /// promoted) here or, with a shared database, on another node. Waiting on it replaces
    /// polling; a missed signal only delays work until the next poll.
    fn work_signal(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Events with an id above `after`, oldest first, of one run or of all.
    async fn events(&self, after: i64, run: Option<Uuid>, limit: u32) -> Result<Vec<EventRecord>>;

    /// The newest event's id (0 when there is none): where a live stream that wants only what
    /// happens from now on starts.
    async fn latest_event_id(&self) -> Result<i64>;

    /// Ticks after a commit that appended events: every such commit of this process, and on
    /// PostgreSQL those of every process sharing the database.
    fn change_signal(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Ticks when a run was cancelled (on PostgreSQL, by any process sharing the database): a
    /// holder of leases should check them now, not at its next heartbeat, so a cancelled
    /// attempt stops at once.
    fn control_signal(&self) -> tokio::sync::watch::Receiver<u64>;
}
