//! The orchestrator's side of the worker protocol (`docs/worker-protocol.md`): hands `worker`
//! tasks to SDK worker services, by poll or by push, and records what they report.
//!
//! Stateless between calls: an attempt handed out is a lease in the store plus a task token
//! that names it (run, task run, lease epoch, code version, idempotency key). Heartbeats,
//! progress and the callback are fenced by that epoch, so they may reach any server sharing the
//! database, and a worker that lost its lease changes nothing. An attempt whose worker goes
//! silent is taken back by the reaper when its lease expires, like any other.

mod assign;
mod complete;
mod push;
mod tokens;

use tokens::now_secs;
pub use tokens::{AuthError, SecretKey};

use crate::EngineError;
use crate::clock::Clock;
use crate::commit_queue::CommitQueue;
use crate::storage::Storage;
use orbit_core::dag::Dag;
use orbit_store::{Store, StoreError, StoredPipeline};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// Hands worker tasks out and takes their results in.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    storage: Arc<Storage>,
    key: SecretKey,
    idempotency_ttl: Duration,
    clock: Clock,
    /// No retry waits longer (MAX_RETRY_DELAY_MS).
    max_retry_delay: Duration,
    /// Pipeline versions never change: parse each once.
    pipelines: Mutex<HashMap<Uuid, Arc<(StoredPipeline, Dag)>>>,
    /// Push mode, per service: how many attempts its workers take at once (from their
    /// registrations here) and the attempts pushed and not yet called back, with when to stop
    /// counting them (a worker that died never calls back; the reaper takes its task back).
    pushed: Mutex<HashMap<String, PushState>>,
    /// Callbacks and polls share commits through it.
    commits: CommitQueue,
    /// Per service, its waiting pollers: a wake-up goes to one, which passes it on when it
    /// took all it asked for (more may be ready), so a commit wakes as many pollers as there
    /// is work for, not all of them.
    pollers: Mutex<HashMap<String, Arc<Notify>>>,
    /// When each worker's liveness was last written here: a poll writes it at most every
    /// [`SEEN_EVERY`], not on every call.
    seen: Mutex<HashMap<String, std::time::Instant>>,
    /// When a push round last found no push-mode service: the next rounds within a second
    /// need not ask the store again (rounds follow every commit).
    no_push_since: Mutex<Option<std::time::Instant>>,
}

/// How often a polling worker's liveness is written (its own heartbeat is every 5 s).
const SEEN_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct PushState {
    limit: usize,
    inflight: HashMap<Uuid, std::time::Instant>,
}

/// Attempts a push-mode service gets at once when no registration here said how many.
const DEFAULT_PUSH_LIMIT: usize = 4;

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

/// What a worker reported, as the store took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    Kept,
    /// The attempt's lease was taken over (it expired, or the run was cancelled): nothing kept.
    LeaseLost,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        storage: Arc<Storage>,
        key: SecretKey,
        idempotency_ttl: Duration,
    ) -> Dispatcher {
        Dispatcher {
            store: store.clone(),
            storage,
            key,
            idempotency_ttl,
            clock: Clock::System,
            max_retry_delay: orbit_core::retry::DEFAULT_MAX_DELAY,
            pipelines: Mutex::new(HashMap::new()),
            pushed: Mutex::new(HashMap::new()),
            commits: CommitQueue::new(store.clone(), Clock::System),
            pollers: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            no_push_since: Mutex::new(None),
        }
    }

    /// No retry of a worker task waits longer than `cap` (MAX_RETRY_DELAY_MS).
    pub fn with_max_retry_delay(mut self, cap: Duration) -> Dispatcher {
        self.max_retry_delay = cap;
        self
    }

    /// Leases, retries and attempt times read `clock` (a test's paused one).
    pub fn with_clock(mut self, clock: Clock) -> Dispatcher {
        self.clock = clock;
        self.commits = CommitQueue::new(self.store.clone(), clock);
        self
    }

    /// The wake-up of `service`'s waiting pollers.
    pub fn pollers(&self, service: &str) -> Arc<Notify> {
        let mut m = self.pollers.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(service.to_owned()).or_default().clone()
    }

    /// Wakes one waiting poller of every service; each passes the wake-up on while it finds
    /// work. Until `shutdown`: on every store signal, and once per `interval` for what comes
    /// due without one (a retry's backoff ending; on SQLite, another process's writes).
    pub async fn wake_pollers(
        &self,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut work = self.store.work_signal();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = work.changed() => {}
                _ = tokio::time::sleep(interval) => {}
            }
            let all: Vec<Arc<Notify>> = self
                .pollers
                .lock()
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            for n in all {
                n.notify_one();
            }
        }
    }

    /// Whether a poll should write its worker's liveness now (at most every `SEEN_EVERY`, 5 s).
    pub fn due_seen(&self, worker: &str) -> bool {
        let now = std::time::Instant::now();
        let mut m = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(worker)
            .is_some_and(|at| now.duration_since(*at) < SEEN_EVERY)
        {
            return false;
        }
        if m.len() > 10_000 {
            m.retain(|_, at| now.duration_since(*at) < SEEN_EVERY);
        }
        m.insert(worker.to_owned(), now);
        true
    }

    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    async fn loaded(&self, id: Uuid) -> Result<Arc<(StoredPipeline, Dag)>, EngineError> {
        if let Some(l) = self.pipelines.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(l);
        }
        let stored = self.store.pipeline_version(id).await?;
        let dag = Dag::new(&stored.pipeline).map_err(|e| {
            StoreError::Corrupt(format!(
                "stored pipeline `{}` is not a DAG: {e}",
                stored.name
            ))
        })?;
        let l = Arc::new((stored, dag));
        if let Ok(mut m) = self.pipelines.lock() {
            m.insert(id, l.clone());
        }
        Ok(l)
    }
}
