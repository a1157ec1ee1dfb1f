//! Leases: renewed while attempts run, taken back when they expire (the reaper).

use orbit_core::transition::{Failure, FailureKind, Outcome, Transition, on_attempt_finished};
use orbit_store::{FinishedAttempt, LeaseFilter, LeasedTask};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Engine, EngineError, InFlight, Loaded};

impl Engine {
    /// Renews the leases that are due; stops attempts whose lease is lost, or could not be
    /// renewed for half the lease (another worker may take them over soon).
    pub(super) async fn heartbeat(&self, inflight: &mut HashMap<Uuid, InFlight>, now: Instant) {
        let due: Vec<(Uuid, i64)> = inflight
            .iter()
            .filter(|(_, f)| f.next_beat <= now)
            .map(|(id, f)| (*id, f.task.lease_epoch))
            .collect();
        if due.is_empty() {
            return;
        }
        let mut stop = Vec::new();
        match self
            .store
            .extend_leases(&due, self.config.clock.now())
            .await
        {
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
                let t = &f.task;
                tracing::warn!(run = %t.run_id, task = %t.task_name, attempt = t.attempt, "lease lost; attempt stopped");
                self.lost(t);
            }
        }
    }

    /// The reaper: every attempt whose lease expired is recorded as lost (`worker lost`) and
    /// its task retried or dead-lettered. Fenced like any finish: a holder that finished in the
    /// meantime wins, and several reapers may run at once.
    pub(super) async fn reap(
        &self,
        pipelines: &mut HashMap<Uuid, Arc<Loaded>>,
    ) -> Result<usize, EngineError> {
        let filter = LeaseFilter {
            run: None,
            expired_before: Some(self.config.clock.now()),
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

    pub(super) async fn lose(
        &self,
        leased: Vec<LeasedTask>,
        pipelines: &mut HashMap<Uuid, Arc<Loaded>>,
        why: &str,
    ) -> Result<usize, EngineError> {
        if leased.is_empty() {
            return Ok(0);
        }
        let now = self.config.clock.now();
        let mut finished = Vec::with_capacity(leased.len());
        for l in leased {
            let loaded = self.loaded(pipelines, l.task.pipeline_id).await?;
            let failure = Failure::new(
                FailureKind::WorkerLost,
                format!("worker lost: {} held the lease and {why}", l.owner),
            );
            let transition = match super::task_of(&loaded, &l.task.task_name) {
                Some((i, child)) => {
                    let def = &loaded.stored.pipeline.tasks[i];
                    let t = on_attempt_finished(
                        &loaded.dag,
                        i,
                        &def.retry,
                        l.task.tries,
                        Outcome::Failed(failure),
                        now,
                        fastrand::f64(),
                    );
                    match (child, &def.for_each) {
                        (Some(_), Some(fe)) => {
                            orbit_core::transition::as_child(&loaded.dag, i, fe.fail_fast, t)
                        }
                        _ => t,
                    }
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
