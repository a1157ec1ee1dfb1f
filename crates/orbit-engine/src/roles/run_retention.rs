//! Run retention (`ORBIT_RUN_RETENTION`): settled runs that finished longer ago than it are
//! deleted with everything that hangs off them (task runs, attempts, events, dead letters, their
//! objects), a slice of each run per short transaction with pauses between, so the tables stay
//! the size of the window and claims keep their pace meanwhile.

use super::pause;
use crate::EngineError;
use crate::clock::Clock;
use crate::runs::{Pace, delete_run};
use crate::storage::Storage;
use chrono::{DateTime, Utc};
use orbit_store::StoreError;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs listed per store round trip.
const BATCH: u32 = 100;

/// At most this many runs per round: a backlog (retention switched on over a year of runs)
/// drains over rounds with pauses between, not in one long burst.
const PER_ROUND: usize = 1000;

pub struct RunRetention {
    store: Arc<dyn orbit_store::Retention>,
    storage: Arc<Storage>,
    keep: chrono::Duration,
    every: Duration,
}

impl RunRetention {
    /// Keeps settled runs for `keep` after they finished; looks once per `every` (at once
    /// again while a backlog remains).
    pub fn new(
        store: Arc<dyn orbit_store::Retention>,
        storage: Arc<Storage>,
        keep: chrono::Duration,
        every: Duration,
    ) -> RunRetention {
        RunRetention {
            store,
            storage,
            keep,
            every,
        }
    }

    /// Deletes up to [`PER_ROUND`] runs that finished before `now - keep`; how many went.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<usize, EngineError> {
        let before = now - self.keep;
        let mut deleted = 0;
        while deleted < PER_ROUND {
            let runs = self.store.settled_before(before, BATCH).await?;
            if runs.is_empty() {
                break;
            }
            for run in runs {
                match delete_run(self.store.as_ref(), &self.storage, run, Pace::Gently).await {
                    Ok(_) => deleted += 1,
                    // Retried (running again) or deleted by someone else meanwhile.
                    Err(EngineError::Store(StoreError::Conflict(_) | StoreError::NotFound(_))) => {}
                    Err(e) => return Err(e),
                }
            }
            // Let claims and commits in between batches.
            tokio::task::yield_now().await;
        }
        if deleted > 0 {
            tracing::info!(runs = deleted, "run retention");
            metrics::counter!("orbit_runs_deleted_total").increment(deleted as u64);
        }
        Ok(deleted)
    }

    pub async fn run(self, shutdown: CancellationToken, clock: Clock) {
        loop {
            let wait = match self.tick(clock.now()).await {
                Ok(n) if n >= PER_ROUND => Duration::from_millis(100),
                Ok(_) => self.every,
                Err(e) => {
                    tracing::warn!(error = %e, "run retention failed");
                    self.every
                }
            };
            if !pause(&shutdown, wait).await {
                break;
            }
        }
    }
}
