//! What follows every commit of finished attempts and claims, wherever it was made (an
//! engine's own loop, the worker protocol's group commit): its metrics, its trace spans, and
//! the signals to the parents of the sub-runs it settled.

use chrono::{DateTime, Utc};
use orbit_store::{BatchOutcome, ClaimedTask, FinishedAttempt, Store};
use std::sync::Arc;
use std::time::Instant;

/// When a commit began: its duration for the metrics, its start for its span.
pub(crate) struct Began {
    at: Instant,
    wall: DateTime<Utc>,
}

impl Began {
    pub(crate) fn now() -> Began {
        Began {
            at: Instant::now(),
            wall: Utc::now(),
        }
    }
}

/// A commit that began at `began` recorded `finished` and handed out `claimed` (one list per
/// claim request), with `outcome`.
pub(crate) fn after(
    store: &Arc<dyn Store>,
    began: &Began,
    finished: &[FinishedAttempt],
    claimed: &[Vec<ClaimedTask>],
    outcome: &BatchOutcome,
) {
    crate::telemetry::commit(finished.len(), began.at.elapsed());
    crate::telemetry::leases_lost(outcome.lease_lost.len());
    for tasks in claimed {
        crate::telemetry::claimed(tasks);
        crate::traces::claimed(tasks);
    }
    crate::traces::committed(finished, &outcome.lease_lost, (began.wall, Utc::now()));
    crate::traces::settled(store, &outcome.settled_runs);
    crate::subruns::notify_parents(store, &outcome.settled_subruns);
}
