//! The engine loop: claim, execute, group-commit, heartbeat.

mod attempt;
mod context;
mod leases;

pub(crate) use context::{Keyed, hydrated, input_failure, keyed, keys_since};
pub(crate) use leases::holder_is_gone;

use crate::clock::Clock;
use crate::log::LiveLogs;
use crate::storage::{RunValues, Storage};
use chrono::{DateTime, Utc};
use orbit_core::dag::Dag;
use orbit_core::transition::Transition;
use orbit_core::{RunState, TaskType};
use orbit_store::{
    BatchOutcome, ClaimRequest, ClaimedTask, FinishedAttempt, LeasedTask, Store, StoreError,
    StoredPipeline,
};
use std::collections::HashMap;
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
    /// Where leases, backoff, the reaper and attempt times read the time.
    pub clock: Clock,
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
            clock: Clock::System,
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
                    .finish_and_claim(&finished, claim.as_ref(), self.config.clock.now())
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
                        let at = self.config.clock.instant_of(*ready_at);
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
                                lease_expires_at: self.config.clock.now(),
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
                    // Settled elsewhere (cancelled by a user, or finished by a worker that took
                    // over a lease this one lost): stop what still runs. Attempts that finished
                    // meanwhile are committed first, so the store's fence says what became of
                    // them rather than this loop dropping them unreported.
                    if state.is_terminal() && !finished.is_empty() {
                        next_poll = now;
                    } else if state.is_terminal() {
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
}
