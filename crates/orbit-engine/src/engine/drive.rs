//! The engine loop, as its roles: the claimer/committer ([`Drive::commit`], one fenced commit
//! per round of everything that finished plus the next claims), the attempt starter
//! ([`Drive::start`]), the heartbeater ([`Engine::heartbeat`]) and the reaper
//! ([`Engine::reap`]), sharing the table of attempts this process holds. Each round waits for
//! whatever comes first: a finished attempt, a wake-up from the store, a timer, a shutdown.

use crate::storage::RunValues;
use orbit_core::RunState;
use orbit_core::transition::Transition;
use orbit_store::{ClaimRequest, ClaimedTask, FinishedAttempt, LeasedTask, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Engine, EngineError, InFlight, Loaded, Processed};

/// What the loop works on and what it may do.
pub(super) struct Scope {
    /// Only this run's tasks (`orbit run`), else any run's.
    pub run: Option<Uuid>,
    /// Claim at most this many tasks, then return once they are recorded (serverless).
    pub budget: Option<usize>,
}

pub(super) struct Drive<'e> {
    engine: &'e Engine,
    scope: Scope,
    done_tx: mpsc::UnboundedSender<FinishedAttempt>,
    done_rx: mpsc::UnboundedReceiver<FinishedAttempt>,
    pipelines: HashMap<Uuid, Arc<Loaded>>,
    inputs: HashMap<Uuid, Arc<RunValues>>,
    inflight: HashMap<Uuid, InFlight>,
    /// Finished attempts waiting for the next commit.
    finished: Vec<FinishedAttempt>,
    received: Vec<FinishedAttempt>,
    claim_due: bool,
    retry_wake: Option<Instant>,
    stopping: bool,
    grace_ends: Option<Instant>,
    work: watch::Receiver<u64>,
    control: watch::Receiver<u64>,
    next_poll: Instant,
    /// Commits in a row that failed because the store was unavailable.
    store_down: u32,
    /// A scoped run that runs other pipelines: its sub-runs (not settled yet), claimed from
    /// alongside it, since no other engine may be running (`orbit run`). Read from the store
    /// once; then each parent task that parks names its child, and each settled run leaves.
    nests: bool,
    sub_runs: Vec<Uuid>,
    sub_runs_read: bool,
    /// Which of the runs claimed from goes first this round.
    turn: usize,
    /// Rounds in a row that claimed nothing while runs were left out for want of slots.
    idle_turns: usize,
    /// Runs left out of the last round may have work for the slots still free: claim again
    /// at once.
    next_turn: bool,
}

impl<'e> Drive<'e> {
    pub(super) fn new(engine: &'e Engine, scope: Scope) -> Drive<'e> {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Drive {
            engine,
            scope,
            done_tx,
            done_rx,
            pipelines: HashMap::new(),
            inputs: HashMap::new(),
            inflight: HashMap::new(),
            finished: Vec::new(),
            received: Vec::with_capacity(256),
            claim_due: true,
            retry_wake: None,
            stopping: false,
            grace_ends: None,
            work: engine.store.work_signal(),
            control: engine.store.control_signal(),
            next_poll: Instant::now() + engine.config.poll_interval,
            store_down: 0,
            nests: false,
            sub_runs: Vec::new(),
            sub_runs_read: false,
            turn: 0,
            idle_turns: 0,
            next_turn: false,
        }
    }

    /// Rounds until the scoped run settles, the budget is spent, or shutdown's grace is over.
    pub(super) async fn run(
        mut self,
        shutdown: CancellationToken,
        done: &mut Processed,
    ) -> Result<Option<RunState>, EngineError> {
        loop {
            let free = self.free(done);
            if self.scope.budget.is_some()
                && free == 0
                && self.inflight.is_empty()
                && self.finished.is_empty()
            {
                return Ok(None);
            }
            if let Some(state) = self.commit(free, done).await? {
                return Ok(Some(state));
            }
            if self.store_down > 0 {
                continue; // the same batch again, after the backoff `commit` waited
            }
            if (self.stopping && self.inflight.is_empty())
                || (self.scope.budget.is_some()
                    && self.inflight.is_empty()
                    && self.finished.is_empty()
                    && !self.claim_due)
            {
                return Ok(None);
            }
            if self.grace_ends.is_some_and(|g| g <= Instant::now()) {
                self.hand_back().await?;
                return Ok(None);
            }
            self.engine
                .running
                .store(self.inflight.len(), std::sync::atomic::Ordering::Relaxed);
            if std::mem::take(&mut self.next_turn) {
                continue;
            }
            self.wait(&shutdown).await;
            // Timed work is checked on every round, not only when the timer wins the wait:
            // under load finished attempts arrive without pause, and neither heartbeats nor
            // the reaper may wait for a lull.
            let now = Instant::now();
            if let Some(state) = self.timed(now).await? {
                return Ok(Some(state));
            }
            self.engine.heartbeat(&mut self.inflight, now).await;
        }
    }

    /// Slots free for new attempts (within the budget).
    fn free(&self, done: &Processed) -> usize {
        let free = self
            .engine
            .config
            .concurrency
            .saturating_sub(self.inflight.len());
        match self.scope.budget {
            Some(b) => free.min(b.saturating_sub(done.claimed)),
            None => free,
        }
    }

    /// The claimer/committer: records what finished and claims into `free` slots, in one
    /// commit; starts what it claimed. Returns the scoped run's state once it settled.
    async fn commit(
        &mut self,
        free: usize,
        done: &mut Processed,
    ) -> Result<Option<RunState>, EngineError> {
        let engine = self.engine;
        let claiming = self.claim_due && !self.stopping && free > 0;
        if claiming && self.nests && !self.sub_runs_read {
            self.sub_runs = self.open_sub_runs().await?;
            self.sub_runs_read = true;
        }
        if self.scope.run.is_some() {
            for f in &self.finished {
                if let Transition::Park(park) = &f.transition
                    && let Some(child) = crate::subruns::waited_for(park)
                    && !self.sub_runs.contains(&child)
                {
                    self.nests = true;
                    self.sub_runs.push(child);
                }
            }
        }
        // The scoped run's claim, and one per sub-run, sharing the free slots. Parents park
        // while their sub-runs work, so none has to go first: they take turns, and a parent's
        // next sub-pipeline starts while the first one's tasks still run.
        let mut claims = Vec::new();
        // Runs left out of this round's claims (fewer free slots than runs).
        let mut left_out = 0;
        if claiming {
            let mut runs: Vec<Option<Uuid>> = self
                .sub_runs
                .iter()
                .map(|r| Some(*r))
                .chain([self.scope.run])
                .collect();
            let first = self.turn % runs.len();
            runs.rotate_left(first);
            self.turn = self.turn.wrapping_add(1);
            left_out = runs.len().saturating_sub(free);
            runs.truncate(free);
            let share = free / runs.len();
            for (i, run) in runs.iter().enumerate() {
                claims.push(ClaimRequest {
                    owner: engine.config.owner.clone(),
                    limit: share + usize::from(i < free % runs.len()),
                    run: *run,
                    queues: engine.config.queues.clone(),
                    types: engine.types.clone(),
                });
            }
        }
        if self.finished.is_empty() && claims.is_empty() {
            return Ok(None);
        }
        let asked: usize = claims.iter().map(|c| c.limit).sum();
        let began = crate::committed::Began::now();
        let committed = if claims.len() > 1 {
            engine
                .store
                .finish_and_claim_many(&self.finished, &claims, engine.config.clock.now())
                .await
                .map(|(mut out, each)| {
                    out.claimed = each.into_iter().flatten().collect();
                    out
                })
        } else {
            engine
                .store
                .finish_and_claim(&self.finished, claims.first(), engine.config.clock.now())
                .await
        };
        if let Err(e) = &committed {
            crate::telemetry::store_error(e);
        }
        let outcome = match committed {
            Ok(o) => {
                self.store_down = 0;
                let claimed = std::slice::from_ref(&o.claimed);
                crate::committed::after(&engine.store, &began, &self.finished, claimed, &o);
                o
            }
            // A database restart or a deadlock victim: the commit did not happen, so try the
            // same batch again next round. Leases keep running out meanwhile; a batch that
            // comes back too late is refused by its fence, not applied twice.
            Err(StoreError::Unavailable(e))
                if self.scope.run.is_none() && self.scope.budget.is_none() =>
            {
                self.store_down += 1;
                let wait = Duration::from_millis(50 << self.store_down.min(6));
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "store unavailable; retrying the batch");
                tokio::time::sleep(wait).await;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        done.count(&self.finished, &outcome);
        for f in &self.finished {
            if let Transition::Retry { ready_at, .. } = &f.transition {
                let at = engine.config.clock.instant_of(*ready_at);
                self.retry_wake = Some(self.retry_wake.map_or(at, |w| w.min(at)));
            }
        }
        engine.report(&self.finished, &outcome);
        self.finished.clear();
        // A full claim means more may be waiting; finishing tasks will free slots for them.
        self.claim_due =
            !claims.is_empty() && (outcome.claimed.len() >= asked || outcome.cut_short);
        // Slots still free, and runs not asked: their turn comes now, not at the next wake-up,
        // until a whole round of turns has found nothing.
        if left_out > 0 && outcome.claimed.len() < asked {
            self.idle_turns = if outcome.claimed.is_empty() {
                self.idle_turns + 1
            } else {
                0
            };
            self.next_turn = self.idle_turns <= left_out;
            self.claim_due |= self.next_turn;
        } else {
            self.idle_turns = 0;
        }
        self.start(outcome.claimed).await?;
        for (run, state) in outcome.settled_runs {
            self.inputs.remove(&run);
            self.sub_runs.retain(|r| *r != run);
            if self.scope.run == Some(run) {
                return Ok(Some(state));
            }
        }
        Ok(None)
    }

    /// The scoped run's sub-runs, and theirs, that have not settled.
    async fn open_sub_runs(&self) -> Result<Vec<Uuid>, EngineError> {
        let mut open = Vec::new();
        let mut below: Vec<Uuid> = self.scope.run.into_iter().collect();
        while let Some(run) = below.pop() {
            for child in self.engine.store.child_runs(run).await? {
                below.push(child.id);
                if !child.state.is_terminal() {
                    open.push(child.id);
                }
            }
        }
        Ok(open)
    }

    /// Starts an attempt for each claimed task and holds its lease.
    async fn start(&mut self, claimed: Vec<ClaimedTask>) -> Result<(), EngineError> {
        let engine = self.engine;
        for task in claimed {
            let loaded = engine.loaded(&mut self.pipelines, task.pipeline_id).await?;
            // A scoped run that runs other pipelines claims from their runs too.
            self.nests |= self.scope.run.is_some() && loaded.nests;
            let input = engine.input(&mut self.inputs, task.run_id).await?;
            let interval = super::task_of(&loaded, &task.task_name).map_or(
                orbit_core::pipeline::DEFAULT_HEARTBEAT_INTERVAL,
                |(i, _)| loaded.stored.pipeline.tasks[i].heartbeat_interval,
            );
            let now = Instant::now();
            let id = task.id;
            let abort = engine.spawn(task.clone(), loaded, input, self.done_tx.clone());
            let flight = InFlight {
                task,
                interval,
                lease: interval * 2,
                next_beat: now + interval,
                last_renewed: now,
                abort,
            };
            // The same task run claimed again (cancelled and retried while its old attempt ran
            // here): the old attempt is over, whatever it was doing.
            if let Some(old) = self.inflight.insert(id, flight) {
                old.abort.abort();
                engine.lost(&old.task);
            }
        }
        Ok(())
    }

    /// Shutdown's grace is over: hands what still runs back now rather than let the leases
    /// run out.
    async fn hand_back(&mut self) -> Result<(), EngineError> {
        let engine = self.engine;
        let held: Vec<LeasedTask> = self
            .inflight
            .drain()
            .map(|(_, f)| {
                f.abort.abort();
                LeasedTask {
                    task: f.task,
                    owner: engine.config.owner.clone(),
                }
            })
            .collect();
        let released = engine
            .lose(
                held,
                &mut self.pipelines,
                "it shut down before the attempt finished",
            )
            .await?;
        tracing::info!(released, "shutdown grace over; leases handed back");
        Ok(())
    }

    /// Waits for the first of: finished attempts, a shutdown, new work, a cancelled run, or
    /// the next timer (poll, heartbeat, retry, end of grace).
    async fn wait(&mut self, shutdown: &CancellationToken) {
        let beat_at = self.inflight.values().map(|f| f.next_beat).min();
        let deadline = [
            Some(self.next_poll),
            beat_at,
            self.retry_wake,
            self.grace_ends,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.next_poll);
        let claim_new = !self.stopping && self.scope.budget.is_none();
        tokio::select! {
            biased;
            _ = self.done_rx.recv_many(&mut self.received, 1024) => {
                for f in self.received.drain(..) {
                    // Attempts dropped for a lost lease may still report, and so may an
                    // attempt whose task run was claimed again since: only the attempt this
                    // engine holds now (same lease epoch) counts.
                    let current = self
                        .inflight
                        .get(&f.task.id)
                        .is_some_and(|held| held.task.lease_epoch == f.task.lease_epoch);
                    if current {
                        self.inflight.remove(&f.task.id);
                        self.finished.push(f);
                    }
                }
                self.claim_due = true;
            }
            _ = shutdown.cancelled(), if !self.stopping => {
                self.stopping = true;
                self.grace_ends = Some(Instant::now() + self.engine.config.grace);
            }
            Ok(()) = self.work.changed(), if claim_new => self.claim_due = true,
            // A run was cancelled: whatever of it runs here stops now, not at its next beat.
            Ok(()) = self.control.changed(), if !self.inflight.is_empty() => {
                let now = Instant::now();
                for f in self.inflight.values_mut() {
                    f.next_beat = now;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }

    /// Retries that came due, and the poll: reaping expired leases, and for a scoped run,
    /// whether it settled elsewhere.
    async fn timed(&mut self, now: Instant) -> Result<Option<RunState>, EngineError> {
        if self.retry_wake.is_some_and(|w| w <= now) {
            self.retry_wake = None;
            self.claim_due = true;
        }
        if self.next_poll > now {
            return Ok(None);
        }
        self.next_poll = now + self.engine.config.poll_interval;
        self.claim_due = true;
        if let Err(e) = self.engine.reap(&mut self.pipelines).await {
            tracing::warn!(error = %e, "reaping expired leases failed");
        }
        let Some(run) = self.scope.run else {
            return Ok(None);
        };
        let state = self.engine.store.run(run).await?.state;
        if !state.is_terminal() {
            return Ok(None);
        }
        // Settled elsewhere (cancelled by a user, or finished by a worker that took over a
        // lease this one lost): stop what still runs. Attempts that finished meanwhile are
        // committed first, so the store's fence says what became of them rather than this
        // loop dropping them unreported.
        if !self.finished.is_empty() {
            self.next_poll = now;
            return Ok(None);
        }
        for (_, f) in self.inflight.drain() {
            f.abort.abort();
            self.engine.lost(&f.task);
        }
        Ok(Some(state))
    }
}
