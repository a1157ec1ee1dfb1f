//! The engine: claims tasks, executes them, group-commits what they did, keeps their leases.

mod attempt;
mod context;
mod drive;
mod leases;
pub mod park;
mod replay;

pub(crate) use context::{ContextIds, Keyed, hydrated, input_failure, keyed, keys_since};
pub(crate) use leases::holder_is_gone;
pub use replay::{Recorded, Replayed};

use crate::clock::Clock;
use crate::log::LiveLogs;
use crate::storage::{RunValues, Storage};
use chrono::{DateTime, Utc};
use orbit_core::dag::Dag;
use orbit_core::transition::Transition;
use orbit_core::{RunState, TaskType};
use orbit_store::{BatchOutcome, ClaimedTask, FinishedAttempt, Store, StoreError, StoredPipeline};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
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
    /// An attempt cannot be replayed here (its type, or a value that cannot be read back).
    #[error("{0}")]
    Replay(String),
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
    /// A waiting task parked in the store until its wake-up.
    TaskParked {
        run: Uuid,
        task: String,
        park: orbit_core::transition::Park,
    },
    /// A `for_each` task made one child task run per element of its list.
    TaskExpanded {
        run: Uuid,
        task: String,
        children: usize,
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
                Transition::Expand { .. } | Transition::Park(_) => {}
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
pub(super) struct Loaded {
    stored: StoredPipeline,
    dag: Dag,
    /// Whether it runs other pipelines (`type: pipeline` tasks).
    nests: bool,
}

/// An attempt running here, and its lease.
struct InFlight {
    task: ClaimedTask,
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
                .map(|t| t.as_str())
                .chain([orbit_core::pipeline::MAPPED_WORKER])
                .map(str::to_owned)
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

    /// Executes tasks of any run until `shutdown`. Tasks still leased by a process of this host
    /// that is gone (this node killed with -9 and restarted) are taken back at once, not when
    /// their leases run out.
    pub async fn drive_all(&self, shutdown: CancellationToken) -> Result<(), EngineError> {
        if let Err(e) = self.reap_orphans(None).await {
            tracing::warn!(error = %e, "taking back the leases of gone processes failed");
        }
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
        run: Option<Uuid>,
        shutdown: CancellationToken,
        budget: Option<usize>,
        done: &mut Processed,
    ) -> Result<Option<RunState>, EngineError> {
        drive::Drive::new(self, drive::Scope { run, budget })
            .run(shutdown, done)
            .await
    }

    /// Tells displays that an attempt was stopped and its result will not be kept.
    fn lost(&self, task: &ClaimedTask) {
        let _ = self.events.send(EngineEvent::LeaseLost {
            run: task.run_id,
            task: task.task_name.clone(),
            attempt: task.attempt,
        });
    }

    fn report(&self, finished: &[FinishedAttempt], outcome: &BatchOutcome) {
        for f in finished {
            let t = &f.task;
            if outcome.lease_lost.contains(&t.id) {
                tracing::warn!(run = %t.run_id, task = %t.task_name, "result refused: lease was taken over");
                self.lost(t);
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
                Transition::Expand { items } => EngineEvent::TaskExpanded {
                    run: t.run_id,
                    task: t.task_name.clone(),
                    children: items.len(),
                },
                Transition::Park(park) => EngineEvent::TaskParked {
                    run: t.run_id,
                    task: t.task_name.clone(),
                    park: park.clone(),
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
        let nests = stored
            .pipeline
            .tasks
            .iter()
            .any(|t| t.task_type == orbit_core::TaskType::Pipeline);
        let l = Arc::new(Loaded { stored, dag, nests });
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

/// The pipeline task a task run runs (its index in the DAG) and, for a `for_each` child, its
/// index in the list.
pub(super) fn task_of(loaded: &Loaded, name: &str) -> Option<(usize, Option<u32>)> {
    match orbit_core::pipeline::parent_of(name) {
        Some((parent, index)) => loaded.dag.index_of(parent).map(|i| (i, Some(index))),
        None => loaded.dag.index_of(name).map(|i| (i, None)),
    }
}
