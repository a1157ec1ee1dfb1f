//! Dead-letter retention: entries older than the retention go, with the objects only they kept.

use super::pause;
use crate::EngineError;
use crate::clock::Clock;
use crate::runs::{Pace, purge_dead_letters};
use crate::storage::Storage;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Retention {
    store: Arc<dyn orbit_store::Retention>,
    storage: Arc<Storage>,
    keep: chrono::Duration,
    every: Duration,
}

impl Retention {
    /// Keeps dead letters for `keep`; looks once per `every`.
    pub fn new(
        store: Arc<dyn orbit_store::Retention>,
        storage: Arc<Storage>,
        keep: chrono::Duration,
        every: Duration,
    ) -> Retention {
        Retention {
            store,
            storage,
            keep,
            every,
        }
    }

    /// Purges what is older than `now - keep`; how many entries went.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<u64, EngineError> {
        let purged = purge_dead_letters(
            self.store.as_ref(),
            &self.storage,
            now - self.keep,
            Pace::Gently,
        )
        .await?;
        // The dashboard's series reach back a day; keep two.
        self.store
            .forget_attempt_cells(now - chrono::Duration::days(2))
            .await?;
        if purged.entries > 0 {
            tracing::info!(
                entries = purged.entries,
                runs = purged.runs,
                objects = purged.objects,
                "dead-letter retention"
            );
        }
        Ok(purged.entries)
    }

    pub async fn run(self, shutdown: CancellationToken, clock: Clock) {
        loop {
            if let Err(e) = self.tick(clock.now()).await {
                tracing::warn!(error = %e, "dead-letter retention failed");
            }
            if !pause(&shutdown, self.every).await {
                break;
            }
        }
    }
}
