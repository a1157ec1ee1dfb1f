//! The store's verbs, grouped by role: each part of the engine and the server depends on the roles
//! it uses. [`Store`] is all of them, what a backend implements.

use crate::*;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orbit_core::{Pipeline, TaskState};
use serde_json::Value;
use uuid::Uuid;

/// Pipelines and the services that run their tasks: versions by content, registrations and code history.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
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

    /// The latest version of every pipeline that has a `schedule` (cron reads these every few
    /// seconds): no other pipeline's definition is read, however big.
    async fn scheduled_pipelines(&self) -> Result<Vec<StoredPipeline>>;

    /// Hides every version of the pipeline `name` from lists and triggers; its runs stay.
    /// Saving it again brings it back with the next version number. Returns the versions hidden.
    async fn delete_pipeline(&self, name: &str, now: DateTime<Utc>) -> Result<u64>;

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
}

/// Runs and their task runs: created, read, cancelled, re-queued.
#[async_trait]
pub trait Runs: Send + Sync + 'static {
    /// Creates a run with its task runs. With an idempotency key that an earlier run holds,
    /// returns that run instead (`created == false`).
    async fn create_run(&self, new: NewRun<'_>) -> Result<CreatedRun>;

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

    /// The runs that tasks of `run` made (`type: pipeline`), oldest first.
    async fn child_runs(&self, run: Uuid) -> Result<Vec<RunRecord>>;

    /// Every child of `for_each` task `parent` of `run`, by index.
    async fn children(&self, run: Uuid, parent: &str) -> Result<Vec<ChildResult>>;

    /// How many children of each `for_each` task of `run` are in each state.
    async fn child_counts(&self, run: Uuid) -> Result<Vec<ChildCount>>;

    /// Outputs of succeeded task runs of `run` among `tasks`.
    async fn outputs(&self, run: Uuid, tasks: &[String]) -> Result<Vec<(String, Value)>>;

    /// One task run, by its full id or a unique prefix.
    async fn task_run(&self, id_or_prefix: &str) -> Result<TaskRunRecord>;

    /// The output stored under a task idempotency key, if a task run with that key succeeded
    /// at or after `since`.
    async fn keyed_output(&self, key: &str, since: DateTime<Utc>) -> Result<Option<(Uuid, Value)>>;

    /// Cancels a run that has not settled: its run and every unsettled task run become
    /// `cancelled`; a running attempt is recorded with the outcome `cancelled`, and its holder,
    /// woken by [`Claims::control_signal`], stops it.
    async fn cancel_run(&self, run: Uuid, now: DateTime<Utc>) -> Result<RunRecord>;

    /// Delivers signal `name`: every task run parked waiting for it becomes `ready` with
    /// `payload` as what woke it, each exactly once (on PostgreSQL too, whichever servers
    /// deliver and park at the same time). With none waiting, it is kept until `expires_at`
    /// for the first `wait` that parks on it.
    async fn signal(
        &self,
        name: &str,
        payload: &Value,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<SignalOutcome>;

    /// Records `decision` on task `task` of `run`, parked waiting for an approval: it becomes
    /// `ready` with the decision as what woke it. `Conflict` when it is not waiting for one
    /// (already decided, or not an approval).
    async fn decide(
        &self,
        run: Uuid,
        task: &str,
        decision: &Decision,
        now: DateTime<Utc>,
    ) -> Result<()>;

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
}

/// Work: the one fenced commit that records finished attempts and claims the next, leases and their heartbeat, progress, and the signals that replace polling.
#[async_trait]
pub trait Claims: Send + Sync + 'static {
    /// Records `finished` attempts, each only if its lease is still held, then claims up to
    /// `claim.limit` ready tasks: one transaction.
    async fn finish_and_claim(
        &self,
        finished: &[FinishedAttempt],
        claim: Option<&ClaimRequest>,
        now: DateTime<Utc>,
    ) -> Result<BatchOutcome>;

    /// [`Claims::finish_and_claim`] for many claimers at once: `finished` recorded, then each
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

    /// Running task runs and their lease holders.
    async fn leased(&self, filter: &LeaseFilter) -> Result<Vec<LeasedTask>>;

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

    /// Ticks when a run was cancelled (on PostgreSQL, by any process sharing the database): a
    /// holder of leases should check them now, not at its next heartbeat, so a cancelled
    /// attempt stops at once.
    fn control_signal(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// What waits and what ran lately, for status pages and metrics.
#[async_trait]
pub trait Queues: Send + Sync + 'static {
    async fn queue_stats(&self) -> Result<QueueStats>;

    /// Task runs ready, running and parked, by queue: `(queue, state, n)`. Read from the
    /// partial indexes of those states, so it costs what is unsettled, not the table.
    async fn queue_depths(&self) -> Result<Vec<(String, TaskState, i64)>>;

    /// Task runs in the queue, highest priority and oldest first.
    async fn queue_items(&self, filter: &QueueFilter) -> Result<Vec<TaskRunRecord>>;

    /// The attempt figures of every minute from `since` (kept by the commits, see
    /// [`crate::tally`]), in key order.
    async fn attempt_cells(&self, since: DateTime<Utc>) -> Result<Vec<(CellKey, Cell)>>;

    /// Each of `keys` (concurrency keys) with its task runs and runs running and its named
    /// limit.
    async fn key_usage(&self, keys: &[String]) -> Result<Vec<KeyUsage>>;

    /// Sets (`Some`) or removes (`None`) the named limit of a concurrency key: at most so many
    /// of its task runs (or runs) run at once, whatever limit their tasks (or pipelines)
    /// declare. Returns whether a limit was there before.
    async fn set_key_limit(
        &self,
        key: &str,
        limit: Option<u32>,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Every named limit, by key, with its task runs and runs running.
    async fn key_limits(&self) -> Result<Vec<KeyUsage>>;

    /// The token buckets of those of `keys` (rate limit keys) that have one: a key without a
    /// bucket has never been spent from, so it is full.
    async fn rate_buckets(&self, keys: &[String]) -> Result<Vec<RateBucket>>;
}

/// The event log every commit appends to, in commit order.
#[async_trait]
pub trait Events: Send + Sync + 'static {
    /// Events with an id above `after`, oldest first, of one run or of all.
    async fn events(&self, after: i64, run: Option<Uuid>, limit: u32) -> Result<Vec<EventRecord>>;

    /// The newest event's id (0 when there is none): where a live stream that wants only what
    /// happens from now on starts.
    async fn latest_event_id(&self) -> Result<i64>;

    /// Ticks after a commit that appended events: every such commit of this process, and on
    /// PostgreSQL those of every process sharing the database.
    fn change_signal(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// The processes (servers and workers) that share this store.
#[async_trait]
pub trait Nodes: Send + Sync + 'static {
    /// Records that `node` is alive (first call: that it started).
    async fn node_heartbeat(&self, node: &NodeInfo, now: DateTime<Utc>) -> Result<()>;

    /// Records that the node `id` shut down cleanly.
    async fn node_stopped(&self, id: &str, now: DateTime<Utc>) -> Result<()>;

    /// Known nodes, most recently seen first.
    async fn nodes(&self, limit: u32) -> Result<Vec<NodeRecord>>;
}

/// What is kept and for how long: the dead-letter queue and settled runs.
#[async_trait]
pub trait Retention: Send + Sync + 'static {
    /// Dead-letter queue entries, newest first.
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>>;

    /// One entry, by its task run id or a unique prefix.
    async fn dead_letter(&self, id_or_prefix: &str) -> Result<DeadLetter>;

    /// Deletes entries created before `before` (the task runs stay dead); returns how many, and
    /// the failed runs left with no entry at all.
    async fn purge_dead_letters(&self, before: DateTime<Utc>) -> Result<PurgedLetters>;

    /// Deletes part of a settled run: a slice of its task runs (with their attempts, dead
    /// letters and the idempotency results they stored) and events, in one short transaction;
    /// the run row goes with the last slice. `Ok(true)` once the run is gone. A run still
    /// pending or running is a `Conflict` (cancel it first). Its objects in object storage are
    /// the caller's to delete.
    async fn delete_run_slice(&self, id: Uuid) -> Result<bool>;

    /// Deletes a settled run, slice after slice (see [`Retention::delete_run_slice`]).
    async fn delete_run(&self, id: Uuid) -> Result<()> {
        while !self.delete_run_slice(id).await? {}
        Ok(())
    }

    /// Settled runs (succeeded, failed, cancelled) that finished before `before`, oldest first,
    /// at most `limit`: what run retention deletes next.
    async fn settled_before(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<Uuid>>;

    /// Forgets the attempt figures of minutes before `before`, the rate limits' token buckets
    /// that were full again by then (a full bucket is as good as none), and the kept signals
    /// that had expired by then (no wait can take them); how many cells went.
    async fn forget_attempt_cells(&self, before: DateTime<Utc>) -> Result<u64>;
}

/// Every role: what a backend implements, and what a caller holds when it needs several.
pub trait Store: Registry + Runs + Claims + Queues + Events + Nodes + Retention {}

impl<T: Registry + Runs + Claims + Queues + Events + Nodes + Retention + ?Sized> Store for T {}

/// The role traits, imported anonymously: `use orbit_store::prelude::*;` makes every verb callable
/// on a `dyn Store` without naming each role.
pub mod prelude {
    pub use super::{
        Claims as _, Events as _, Nodes as _, Queues as _, Registry as _, Retention as _, Runs as _,
    };
}
