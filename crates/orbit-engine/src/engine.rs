//! The engine loop: claim, execute, group-commit, heartbeat.

use crate::executor::{self, Invocation};
use crate::log::{LiveLogs, LogBuffer};
use crate::storage::{self, RunValues, Shared, Storage};
use chrono::{DateTime, Utc};
use orbit_core::dag::Dag;
use orbit_core::object::ObjectRef;
use orbit_core::params::Params;
use orbit_core::template::{self, Context, RunInfo, TaskInfo, TaskOutput};
use orbit_core::transition::{Failure, FailureKind, Outcome, Transition, on_attempt_finished};
use orbit_core::{RunState, TaskType};
use orbit_store::{
    BatchOutcome, ClaimRequest, ClaimedTask, FinishedAttempt, LeaseFilter, LeasedTask, Store,
    StoreError, StoredPipeline,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Names this process in leases and attempts.
    pub owner: String,
    /// Most attempts running at once.
    pub concurrency: usize,
    /// How often to look for work nobody told this process about.
    pub poll_interval: Duration,
    /// How long a task's idempotency key holds its output (`IDEMPOTENCY_TTL_SECONDS`).
    pub idempotency_ttl: Duration,
    /// Only claim tasks in these queues (all when empty).
    pub queues: Vec<String>,
    /// Only claim tasks of these types (all when empty).
    pub types: Vec<String>,
    /// On shutdown, how long running attempts may take to finish before their leases are
    /// handed back.
    pub grace: Duration,
    /// The program that supervises task processes (the `orbit` binary: see
    /// [`crate::executor::supervisor`]), so they die with this process even on SIGKILL.
    pub supervisor: Option<std::path::PathBuf>,
    /// No retry waits longer than this, whatever a task's policy says (MAX_RETRY_DELAY_MS).
    pub max_retry_delay: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            owner: "orbit".into(),
            concurrency: 10,
            poll_interval: Duration::from_secs(1),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            queues: Vec::new(),
            types: Vec::new(),
            grace: Duration::from_secs(30),
            supervisor: None,
            max_retry_delay: orbit_core::retry::DEFAULT_MAX_DELAY,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// What a worker sent cannot be accepted (a 4xx, not a server fault).
    #[error("{0}")]
    BadRequest(String),
    /// An idempotency key that names a run created for a different request.
    #[error(
        "idempotency key `{}` already names run {run}, which was created for a different request (another pipeline or input); use a new key, or send the same request",
        orbit_core::echo::echo(key)
    )]
    IdempotencyKeyReused { key: String, run: Uuid },
}

/// What the engine did, for progress displays. Sent after the commit that made it true.
#[derive(Clone, Debug)]
pub enum EngineEvent {
    TaskStarted {
        run: Uuid,
        task: String,
        attempt: u32,
    },
    TaskSucceeded {
        run: Uuid,
        task: String,
        attempt: u32,
        took: Duration,
    },
    TaskRetrying {
        run: Uuid,
        task: String,
        attempt: u32,
        error: String,
        at: DateTime<Utc>,
    },
    TaskDead {
        run: Uuid,
        task: String,
        attempt: u32,
        error: String,
        cancelled: Vec<String>,
    },
    /// The attempt's lease was taken over; its result was not kept.
    LeaseLost {
        run: Uuid,
        task: String,
        attempt: u32,
    },
    RunSettled {
        run: Uuid,
        state: RunState,
    },
}

/// What [`Engine::process`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Processed {
    /// Expired leases taken back.
    pub reaped: usize,
    pub claimed: usize,
    pub succeeded: usize,
    pub retrying: usize,
    pub dead: usize,
    /// Runs that settled.
    pub runs_settled: usize,
}

impl Processed {
    fn count(&mut self, finished: &[FinishedAttempt], outcome: &BatchOutcome) {
        self.claimed += outcome.claimed.len();
        self.runs_settled += outcome.settled_runs.len();
        for f in finished
            .iter()
            .filter(|f| !outcome.lease_lost.contains(&f.task.id))
        {
            match f.transition {
                Transition::Succeed { .. } => self.succeeded += 1,
                Transition::Retry { .. } => self.retrying += 1,
                Transition::Dead { .. } => self.dead += 1,
            }
        }
    }
}

pub struct Engine {
    store: Arc<dyn Store>,
    config: EngineConfig,
    /// The task types it claims: the configured ones, else every built-in type (worker tasks
    /// go to SDK workers through the worker protocol).
    types: Vec<String>,
    events: broadcast::Sender<EngineEvent>,
    http: reqwest::Client,
    live: LiveLogs,
    storage: Arc<Storage>,
    /// Attempts running in this process now (for messages such as Ctrl-C's).
    running: Arc<std::sync::atomic::AtomicUsize>,
}

/// A pipeline version as the loop needs it.
struct Loaded {
    stored: StoredPipeline,
    dag: Dag,
}

struct InFlight {
    run: Uuid,
    pipeline_id: Uuid,
    task: String,
    attempt: u32,
    tries: u32,
    claimed_at: DateTime<Utc>,
    epoch: i64,
    interval: Duration,
    lease: Duration,
    next_beat: Instant,
    last_renewed: Instant,
    abort: AbortHandle,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        storage: Arc<Storage>,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("orbit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EngineError::Http(e.to_string()))?;
        let (events, _) = broadcast::channel(4096);
        let types = if config.types.is_empty() {
            TaskType::BUILT_IN
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect()
        } else {
            config.types.clone()
        };
        Ok(Engine {
            store,
            config,
            types,
            events,
            http,
            live: LiveLogs::default(),
            storage,
            running: Arc::default(),
        })
    }

    /// How many attempts run in this process now, as a handle that stays current.
    pub fn running(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.running.clone()
    }

    /// Where large inputs and outputs are kept.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.events.subscribe()
    }

    /// The logs of attempts running in this process.
    pub fn live_logs(&self) -> &LiveLogs {
        &self.live
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Executes the tasks of one run until it settles; returns its final state, or `None` when
    /// `shutdown` stopped the loop first (running attempts are let finish; the run stays
    /// resumable).
    pub async fn drive_run(
        &self,
        run: Uuid,
        shutdown: CancellationToken,
    ) -> Result<Option<RunState>, EngineError> {
        let record = self.store.run(run).await?;
        if record.state.is_terminal() {
            return Ok(Some(record.state));
        }
        self.reap_orphans(Some(run)).await?;
        self.drive(Some(run), shutdown, None, &mut Processed::default())
            .await
    }

    /// Executes tasks of any run until `shutdown`.
    pub async fn drive_all(&self, shutdown: CancellationToken) -> Result<(), EngineError> {
        self.drive(None, shutdown, None, &mut Processed::default())
            .await
            .map(|_| ())
    }

    /// Serverless mode's unit of work: reaps expired leases, then claims and executes at most
    /// `max_tasks` ready tasks (and what they make ready, within that budget) and returns once
    /// they are recorded.
    pub async fn process(&self, max_tasks: usize) -> Result<Processed, EngineError> {
        let mut done = Processed {
            reaped: self.reap(&mut HashMap::new()).await?,
            ..Processed::default()
        };
        self.drive(None, CancellationToken::new(), Some(max_tasks), &mut done)
            .await?;
        Ok(done)
    }

    async fn drive(
        &self,
        scope: Option<Uuid>,
        shutdown: CancellationToken,
        budget: Option<usize>,
        done: &mut Processed,
    ) -> Result<Option<RunState>, EngineError> {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<FinishedAttempt>();
        let mut pipelines: HashMap<Uuid, Arc<Loaded>> = HashMap::new();
        let mut inputs: HashMap<Uuid, Arc<RunValues>> = HashMap::new();
        let mut inflight: HashMap<Uuid, InFlight> = HashMap::new();
        let mut finished: Vec<FinishedAttempt> = Vec::new();
        let mut received: Vec<FinishedAttempt> = Vec::with_capacity(256);
        let mut claim_due = true;
        let mut retry_wake: Option<Instant> = None;
        let mut stopping = false;
        let mut grace_ends: Option<Instant> = None;
        let mut work = self.store.work_signal();
        let mut control = self.store.control_signal();
        let mut next_poll = Instant::now() + self.config.poll_interval;
        let mut store_down: u32 = 0;
        loop {
            let mut free = self.config.concurrency.saturating_sub(inflight.len());
            if let Some(b) = budget {
                free = free.min(b.saturating_sub(done.claimed));
                if free == 0 && inflight.is_empty() && finished.is_empty() {
                    return Ok(None);
                }
            }
            let claim = (claim_due && !stopping && free > 0).then(|| ClaimRequest {
                owner: self.config.owner.clone(),
                limit: free,
                run: scope,
                queues: self.config.queues.clone(),
                types: self.types.clone(),
            });
            if !finished.is_empty() || claim.is_some() {
                let outcome = match self
                    .store
                    .finish_and_claim(&finished, claim.as_ref(), Utc::now())
                    .await
                {
                    Ok(o) => {
                        store_down = 0;
                        o
                    }
                    // A database restart or a deadlock victim: the commit did not happen, so
                    // try the same batch again. Leases keep running out meanwhile; a batch
                    // that comes back too late is refused by its fence, not applied twice.
                    Err(StoreError::Unavailable(e)) if scope.is_none() && budget.is_none() => {
                        store_down += 1;
                        let wait = Duration::from_millis(50 << store_down.min(6));
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "store unavailable; retrying the batch");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                done.count(&finished, &outcome);
                for f in &finished {
                    if let Transition::Retry { ready_at, .. } = &f.transition {
                        let at = instant_of(*ready_at);
                        retry_wake = Some(retry_wake.map_or(at, |w| w.min(at)));
                    }
                }
                self.report(&finished, &outcome);
                finished.clear();
                // A full claim means more may be waiting; finishing tasks will free slots for them.
                claim_due = claim
                    .as_ref()
                    .is_some_and(|c| outcome.claimed.len() >= c.limit);
                for task in outcome.claimed {
                    let loaded = self.loaded(&mut pipelines, task.pipeline_id).await?;
                    let input = self.input(&mut inputs, task.run_id).await?;
                    let def = loaded
                        .dag
                        .index_of(&task.task_name)
                        .map(|i| &loaded.stored.pipeline.tasks[i]);
                    let interval = def
                        .map_or(orbit_core::pipeline::DEFAULT_HEARTBEAT_INTERVAL, |d| {
                            d.heartbeat_interval
                        });
                    let now = Instant::now();
                    let flight = InFlight {
                        run: task.run_id,
                        pipeline_id: task.pipeline_id,
                        task: task.task_name.clone(),
                        attempt: task.attempt,
                        tries: task.tries,
                        claimed_at: task.claimed_at,
                        epoch: task.lease_epoch,
                        interval,
                        lease: interval * 2,
                        next_beat: now + interval,
                        last_renewed: now,
                        abort: self.spawn(task.clone(), loaded, input, done_tx.clone()),
                    };
                    // The same task run claimed again (cancelled and retried while its old
                    // attempt ran here): the old attempt is over, whatever it was doing.
                    if let Some(old) = inflight.insert(task.id, flight) {
                        old.abort.abort();
                        let _ = self.events.send(EngineEvent::LeaseLost {
                            run: old.run,
                            task: old.task,
                            attempt: old.attempt,
                        });
                    }
                }
                for (run, state) in outcome.settled_runs {
                    inputs.remove(&run);
                    if scope == Some(run) {
                        return Ok(Some(state));
                    }
                }
            }
            if stopping && inflight.is_empty() {
                return Ok(None);
            }
            if budget.is_some() && inflight.is_empty() && finished.is_empty() && !claim_due {
                return Ok(None);
            }
            if grace_ends.is_some_and(|g| g <= Instant::now()) {
                // Grace is over: hand the rest back now rather than let their leases run out.
                let held: Vec<LeasedTask> = inflight
                    .drain()
                    .map(|(id, f)| {
                        f.abort.abort();
                        LeasedTask {
                            task: ClaimedTask {
                                id,
                                run_id: f.run,
                                pipeline_id: f.pipeline_id,
                                task_name: f.task,
                                attempt: f.attempt,
                                tries: f.tries,
                                lease_epoch: f.epoch,
                                lease_expires_at: Utc::now(),
                                claimed_at: f.claimed_at,
                            },
                            owner: self.config.owner.clone(),
                        }
                    })
                    .collect();
                let released = self
                    .lose(
                        held,
                        &mut pipelines,
                        "it shut down before the attempt finished",
                    )
                    .await?;
                tracing::info!(released, "shutdown grace over; leases handed back");
                return Ok(None);
            }
            self.running
                .store(inflight.len(), std::sync::atomic::Ordering::Relaxed);
            let beat_at = inflight.values().map(|f| f.next_beat).min();
            let deadline = [Some(next_poll), beat_at, retry_wake, grace_ends]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_poll);
            tokio::select! {
                biased;
                _ = done_rx.recv_many(&mut received, 1024) => {
                    for f in received.drain(..) {
                        // Attempts dropped for a lost lease may still report, and so may an
                        // attempt whose task run was claimed again since: only the attempt this
                        // engine holds now (same lease epoch) counts.
                        let current = inflight
                            .get(&f.task.id)
                            .is_some_and(|held| held.epoch == f.task.lease_epoch);
                        if current {
                            inflight.remove(&f.task.id);
                            finished.push(f);
                        }
                    }
                    claim_due = true;
                }
                _ = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    grace_ends = Some(Instant::now() + self.config.grace);
                }
                Ok(()) = work.changed(), if !stopping && budget.is_none() => claim_due = true,
                // A run was cancelled: whatever of it runs here stops now, not at its next beat.
                Ok(()) = control.changed(), if !inflight.is_empty() => {
                    let now = Instant::now();
                    for f in inflight.values_mut() {
                        f.next_beat = now;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
            // Timed work is checked on every round, not only when the timer wins the select:
            // under load finished attempts arrive without pause, and neither heartbeats nor
            // the reaper may wait for a lull.
            let now = Instant::now();
            if retry_wake.is_some_and(|w| w <= now) {
                retry_wake = None;
                claim_due = true;
            }
            if next_poll <= now {
                next_poll = now + self.config.poll_interval;
                claim_due = true;
                if let Err(e) = self.reap(&mut pipelines).await {
                    tracing::warn!(error = %e, "reaping expired leases failed");
                }
                if let Some(run) = scope {
                    let state = self.store.run(run).await?.state;
                    // Settled elsewhere (cancelled by a user): stop what still runs.
                    if state.is_terminal() {
                        for f in inflight.into_values() {
                            f.abort.abort();
                            let lost = EngineEvent::LeaseLost {
                                run: f.run,
                                task: f.task,
                                attempt: f.attempt,
                            };
                            let _ = self.events.send(lost);
                        }
                        return Ok(Some(state));
                    }
                }
            }
            self.heartbeat(&mut inflight, now).await;
        }
    }

    /// Renews the leases that are due; stops attempts whose lease is lost, or could not be
    /// renewed for half the lease (another worker may take them over soon).
    async fn heartbeat(&self, inflight: &mut HashMap<Uuid, InFlight>, now: Instant) {
        let due: Vec<(Uuid, i64)> = inflight
            .iter()
            .filter(|(_, f)| f.next_beat <= now)
            .map(|(id, f)| (*id, f.epoch))
            .collect();
        if due.is_empty() {
            return;
        }
        let mut stop = Vec::new();
        match self.store.extend_leases(&due, Utc::now()).await {
            Ok(lost) => {
                for (id, _) in &due {
                    if let Some(f) = inflight.get_mut(id) {
                        f.last_renewed = now;
                        f.next_beat = now + f.interval;
                    }
                }
                stop.extend(lost);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew leases");
                for (id, f) in inflight.iter_mut() {
                    if now.duration_since(f.last_renewed) >= f.lease / 2 {
                        stop.push(*id);
                    } else {
                        f.next_beat = now + Duration::from_millis(200).min(f.interval);
                    }
                }
            }
        }
        for id in stop {
            if let Some(f) = inflight.remove(&id) {
                f.abort.abort();
                tracing::warn!(run = %f.run, task = %f.task, attempt = f.attempt, "lease lost; attempt stopped");
                let _ = self.events.send(EngineEvent::LeaseLost {
                    run: f.run,
                    task: f.task,
                    attempt: f.attempt,
                });
            }
        }
    }

    /// The reaper: every attempt whose lease expired is recorded as lost (`worker lost`) and
    /// its task retried or dead-lettered. Fenced like any finish: a holder that finished in the
    /// meantime wins, and several reapers may run at once.
    async fn reap(&self, pipelines: &mut HashMap<Uuid, Arc<Loaded>>) -> Result<usize, EngineError> {
        let filter = LeaseFilter {
            run: None,
            expired_before: Some(Utc::now()),
            limit: 500,
        };
        let expired = self.store.leased(&filter).await?;
        self.lose(expired, pipelines, "its lease expired").await
    }

    /// Takes back the running tasks (of `run`, or all) whose lease holder was a process on this
    /// host that no longer exists, without waiting for their leases to expire.
    pub async fn reap_orphans(&self, run: Option<Uuid>) -> Result<usize, EngineError> {
        let leased = self
            .store
            .leased(&LeaseFilter {
                run,
                expired_before: None,
                limit: 10_000,
            })
            .await?;
        let me = self
            .config
            .owner
            .rsplit_once(':')
            .map_or("", |(host, _)| host);
        let orphans = leased
            .into_iter()
            .filter(|l| holder_is_gone(&l.owner, me))
            .collect();
        self.lose(orphans, &mut HashMap::new(), "its process is gone")
            .await
    }

    async fn lose(
        &self,
        leased: Vec<LeasedTask>,
        pipelines: &mut HashMap<Uuid, Arc<Loaded>>,
        why: &str,
    ) -> Result<usize, EngineError> {
        if leased.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        let mut finished = Vec::with_capacity(leased.len());
        for l in leased {
            let loaded = self.loaded(pipelines, l.task.pipeline_id).await?;
            let failure = Failure::new(
                FailureKind::WorkerLost,
                format!("worker lost: {} held the lease and {why}", l.owner),
            );
            let transition = match loaded.dag.index_of(&l.task.task_name) {
                Some(i) => {
                    let policy = &loaded.stored.pipeline.tasks[i].retry;
                    on_attempt_finished(
                        &loaded.dag,
                        i,
                        policy,
                        l.task.tries,
                        Outcome::Failed(failure),
                        now,
                        fastrand::f64(),
                    )
                }
                None => Transition::Dead {
                    failure,
                    cancel: Vec::new(),
                },
            };
            finished.push(FinishedAttempt {
                started_at: l.task.claimed_at,
                task: l.task,
                worker: l.owner,
                finished_at: now,
                log: format!("[orbit] attempt abandoned: {why}\n"),
                transition,
                idempotency_key: None,
                reused: false,
                code_version: None,
            });
        }
        let outcome = self.store.finish_and_claim(&finished, None, now).await?;
        self.report(&finished, &outcome);
        Ok(finished.len() - outcome.lease_lost.len())
    }

    fn report(&self, finished: &[FinishedAttempt], outcome: &BatchOutcome) {
        for f in finished {
            let t = &f.task;
            if outcome.lease_lost.contains(&t.id) {
                tracing::warn!(run = %t.run_id, task = %t.task_name, "result refused: lease was taken over");
                let _ = self.events.send(EngineEvent::LeaseLost {
                    run: t.run_id,
                    task: t.task_name.clone(),
                    attempt: t.attempt,
                });
                continue;
            }
            let event = match &f.transition {
                Transition::Succeed { .. } => EngineEvent::TaskSucceeded {
                    run: t.run_id,
                    task: t.task_name.clone(),
                    attempt: t.attempt,
                    took: (f.finished_at - f.started_at).to_std().unwrap_or_default(),
                },
                Transition::Retry {
                    ready_at, failure, ..
                } => EngineEvent::TaskRetrying {
                    run: t.run_id,
                    task: t.task_name.clone(),
                    attempt: t.attempt,
                    error: failure.message.clone(),
                    at: *ready_at,
                },
                Transition::Dead { failure, cancel } => EngineEvent::TaskDead {
                    run: t.run_id,
                    task: t.task_name.clone(),
                    attempt: t.attempt,
                    error: failure.message.clone(),
                    cancelled: cancel.clone(),
                },
            };
            let _ = self.events.send(event);
        }
        for t in &outcome.claimed {
            let _ = self.events.send(EngineEvent::TaskStarted {
                run: t.run_id,
                task: t.task_name.clone(),
                attempt: t.attempt,
            });
        }
        for (run, state) in &outcome.settled_runs {
            let _ = self.events.send(EngineEvent::RunSettled {
                run: *run,
                state: *state,
            });
        }
    }

    async fn loaded(
        &self,
        cache: &mut HashMap<Uuid, Arc<Loaded>>,
        id: Uuid,
    ) -> Result<Arc<Loaded>, EngineError> {
        if let Some(l) = cache.get(&id) {
            return Ok(l.clone());
        }
        let stored = self.store.pipeline_version(id).await?;
        let dag = Dag::new(&stored.pipeline).map_err(|e| {
            StoreError::Corrupt(format!(
                "stored pipeline `{}` is not a DAG: {e}",
                stored.name
            ))
        })?;
        let l = Arc::new(Loaded { stored, dag });
        cache.insert(id, l.clone());
        Ok(l)
    }

    async fn input(
        &self,
        cache: &mut HashMap<Uuid, Arc<RunValues>>,
        run: Uuid,
    ) -> Result<Arc<RunValues>, EngineError> {
        if let Some(i) = cache.get(&run) {
            return Ok(i.clone());
        }
        let input = Arc::new(RunValues::new(self.store.run(run).await?.input));
        cache.insert(run, input.clone());
        Ok(input)
    }

    fn spawn(
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
        tokio::spawn(async move {
            let started_at = Utc::now();
            let log = live.start(task.run_id, task.id, &task.task_name);
            // Forgets the live log however the attempt ends, aborted included.
            let _forget = Forget(&live, task.id);
            let io = Io {
                store: store.as_ref(),
                storage: &storage,
                http: &http,
                idempotency_ttl: ttl,
                supervisor: supervisor.as_deref(),
            };
            let done_attempt = attempt(&io, &loaded, &task, &input, &log).await;
            let mut finished_at = Utc::now();
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
                    finished_at = Utc::now();
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

/// A task's rendered idempotency key, and the output an earlier task run stored under it within
/// the TTL (with the log line that says so), if any.
pub(crate) struct Keyed {
    pub key: Option<String>,
    pub reused: Option<(String, Value)>,
}

/// `to` is where a reused output that lives in object storage is copied for this attempt.
pub(crate) async fn keyed(
    store: &dyn Store,
    storage: &Storage,
    template: Option<&str>,
    ctx: &Context<'_>,
    ttl: Duration,
    to: &str,
) -> Result<Keyed, Failure> {
    let Some(template) = template else {
        return Ok(Keyed {
            key: None,
            reused: None,
        });
    };
    let k = template::render_str(template, ctx)
        .map_err(|e| Failure::fatal(format!("idempotency_key: {e}")))?;
    let since = Utc::now() - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    let found = store
        .keyed_output(&k, since)
        .await
        .map_err(|e| Failure::error(format!("cannot look up idempotency key `{k}`: {e}")))?;
    let reused = match found {
        None => None,
        Some((from, output)) => {
            let output = match ObjectRef::of(&output) {
                None => output,
                Some(r) => storage
                    .copy(&r, to)
                    .await
                    .map_err(|e| Failure::error(format!("cannot copy the reused output: {e}")))?
                    .to_value(),
            };
            let line = format!(
                "[orbit] reused the output of task run {from} (idempotency key `{k}`); nothing executed"
            );
            Some((line, output))
        }
    };
    Ok(Keyed {
        key: Some(k),
        reused,
    })
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
    idempotency_ttl: Duration,
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
    let run_id = task.run_id.to_string();
    let effect_key = task.id.to_string();
    let ctx = Context {
        input: &input,
        tasks: hydrated
            .iter()
            .map(|(name, output)| (*name, TaskOutput { output }))
            .collect::<BTreeMap<_, _>>(),
        run: RunInfo {
            id: &run_id,
            pipeline: &loaded.stored.name,
        },
        task: TaskInfo {
            name: &def.name,
            attempt: task.attempt,
        },
        effect_key: &effect_key,
        code_version: loaded.stored.version,
    };
    let to = storage::output_key(task.run_id, &task.task_name, task.attempt);
    let key = match keyed(
        io.store,
        io.storage,
        def.idempotency_key.as_deref(),
        &ctx,
        io.idempotency_ttl,
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
    let result = execute(def, &ctx, task, &effect_key, &run_id, log, io).await;
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

/// A run input that cannot be read from object storage fails the attempt (retried); the run
/// loses nothing.
pub(crate) fn input_failure(e: storage::StorageError) -> Failure {
    Failure::error(format!("cannot read the run's input: {e}"))
}

/// Upstream outputs with every object reference replaced by its (shared) content.
pub(crate) async fn hydrated<'a>(
    storage: &Storage,
    values: &RunValues,
    outputs: &'a [(String, Value)],
) -> Result<Vec<(&'a str, Shared<'a>)>, Failure> {
    let mut hydrated = Vec::with_capacity(outputs.len());
    for (name, output) in outputs {
        let output = values
            .content(storage, output)
            .await
            .map_err(|e| Failure::error(format!("cannot read the output of `{name}`: {e}")))?;
        hydrated.push((name.as_str(), output));
    }
    Ok(hydrated)
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

fn instant_of(at: DateTime<Utc>) -> Instant {
    Instant::now() + (at - Utc::now()).to_std().unwrap_or_default()
}

/// Whether a lease holder named `host:pid` was a process on `this_host` that has exited.
pub(crate) fn holder_is_gone(owner: &str, this_host: &str) -> bool {
    match owner.rsplit_once(':') {
        Some((host, pid)) if host == this_host && pid.parse::<u32>().is_ok() => {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}
