//! Group commit for the worker protocol: every callback and poll that reaches this server
//! while a commit is on its way joins the next one, so a hundred workers calling back at once
//! cost one fsync, not a hundred. Each request still gets its answer only after the commit
//! that holds it is durable.

use crate::clock::Clock;
use orbit_store::{ClaimRequest, ClaimedTask, FinishedAttempt, Store, StoreError};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// What one request's part of a group commit came to.
#[derive(Debug, Default)]
pub struct Committed {
    /// What its claim got.
    pub claimed: Vec<ClaimedTask>,
    /// Its finished attempts refused because their lease was taken over.
    pub lease_lost: Vec<Uuid>,
}

struct Job {
    finished: Vec<FinishedAttempt>,
    claim: Option<ClaimRequest>,
    reply: oneshot::Sender<Result<Committed, StoreError>>,
}

/// Most requests one commit takes: a bound on a transaction's length, so a burst cannot hold
/// the writer for long.
const MAX_GROUP: usize = 512;

pub struct CommitQueue {
    tx: mpsc::UnboundedSender<Job>,
    /// Taken by the first request, which starts the writer: queues are built before a runtime
    /// may exist.
    rx: Mutex<Option<Idle>>,
}

/// The writer's half, until the first request starts it.
type Idle = (mpsc::UnboundedReceiver<Job>, Arc<dyn Store>, Clock);

impl CommitQueue {
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> CommitQueue {
        let (tx, rx) = mpsc::unbounded_channel();
        CommitQueue {
            tx,
            rx: Mutex::new(Some((rx, store, clock))),
        }
    }

    /// Records `finished` and serves `claim` in the next group commit; returns once it is
    /// durable.
    pub async fn commit(
        &self,
        finished: Vec<FinishedAttempt>,
        claim: Option<ClaimRequest>,
    ) -> Result<Committed, StoreError> {
        if let Some((rx, store, clock)) = self.rx.lock().ok().and_then(|mut r| r.take()) {
            tokio::spawn(writer(rx, store, clock));
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job {
                finished,
                claim,
                reply,
            })
            .map_err(|_| StoreError::Unavailable("the commit queue has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the commit queue dropped a request".into()))?
    }
}

/// Takes whatever is queued (up to [`MAX_GROUP`] requests) and commits it as one; requests
/// that arrive meanwhile form the next group. Two reports on one task run (a stale worker and
/// the current one) never share a commit: the later waits for the next, so the store's answer
/// per task run is unambiguous.
async fn writer(mut rx: mpsc::UnboundedReceiver<Job>, store: Arc<dyn Store>, clock: Clock) {
    let mut pending: Vec<Job> = Vec::with_capacity(64);
    let mut jobs: Vec<Job> = Vec::with_capacity(64);
    let mut ids: HashSet<Uuid> = HashSet::new();
    loop {
        if pending.is_empty() {
            if rx.recv_many(&mut pending, MAX_GROUP).await == 0 {
                return;
            }
        } else {
            while pending.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => pending.push(job),
                    Err(_) => break,
                }
            }
        }
        ids.clear();
        let mut deferred = Vec::new();
        for job in pending.drain(..) {
            if job.finished.iter().any(|f| ids.contains(&f.task.id)) {
                deferred.push(job);
            } else {
                ids.extend(job.finished.iter().map(|f| f.task.id));
                jobs.push(job);
            }
        }
        pending = deferred;
        let mut finished = Vec::new();
        let mut claims = Vec::new();
        // Per job: its finished attempts (a range of `finished`) and its claim's index.
        let mut parts = Vec::with_capacity(jobs.len());
        for job in &mut jobs {
            let from = finished.len();
            finished.append(&mut job.finished);
            let claim = job.claim.take().map(|c| {
                claims.push(c);
                claims.len() - 1
            });
            parts.push((from..finished.len(), claim));
        }
        let began = crate::committed::Began::now();
        let committed = store
            .finish_and_claim_many(&finished, &claims, clock.now())
            .await;
        match committed {
            Ok((outcome, mut each)) => {
                crate::committed::after(&store, &began, &finished, &each, &outcome);
                for (job, (range, claim)) in jobs.drain(..).zip(parts) {
                    let lease_lost = finished[range]
                        .iter()
                        .map(|f| f.task.id)
                        .filter(|id| outcome.lease_lost.contains(id))
                        .collect();
                    let claimed = claim
                        .and_then(|i| each.get_mut(i).map(std::mem::take))
                        .unwrap_or_default();
                    let _ = job.reply.send(Ok(Committed {
                        claimed,
                        lease_lost,
                    }));
                }
            }
            // One request's failure must not fail the others: each alone, to find out whose.
            Err(e) if jobs.len() > 1 => {
                crate::telemetry::store_error(&e);
                tracing::debug!(error = %e, requests = jobs.len(), "group commit failed; committing one by one");
                for (job, (range, claim)) in jobs.drain(..).zip(parts) {
                    let claim: Vec<ClaimRequest> =
                        claim.map(|i| claims[i].clone()).into_iter().collect();
                    let began = crate::committed::Began::now();
                    let finished = &finished[range];
                    let result = store
                        .finish_and_claim_many(finished, &claim, clock.now())
                        .await
                        .map(|(outcome, mut each)| {
                            crate::committed::after(&store, &began, finished, &each, &outcome);
                            Committed {
                                claimed: each.pop().unwrap_or_default(),
                                lease_lost: outcome.lease_lost,
                            }
                        });
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                crate::telemetry::store_error(&e);
                if let Some(job) = jobs.pop() {
                    let _ = job.reply.send(Err(e));
                }
                jobs.clear();
            }
        }
    }
}
