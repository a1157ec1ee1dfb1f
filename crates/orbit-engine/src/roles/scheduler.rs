//! Cron: a pipeline's `schedule` creates runs on time, on exactly one node.
//!
//! Every server node runs this loop. A fire is a run whose idempotency key is
//! `cron:<pipeline>:<fire time>`, so when several nodes fire the same instant the store's
//! UNIQUE constraint keeps one run and the others get it back.
//!
//! Missed fires (every node was down): on the next tick only the most recent missed fire time
//! is run, once; older ones are skipped. A fire time before the pipeline's current version was
//! saved never runs.

use crate::clock::Clock;
use chrono::{DateTime, Utc};
use croner::Cron;
use orbit_store::{NewRun, Registry, Runs, Store, StoreError, StoredPipeline};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The pipelines that have a valid schedule, with it parsed.
fn scheduled(pipelines: &[StoredPipeline]) -> Vec<(&StoredPipeline, Cron)> {
    pipelines
        .iter()
        .filter_map(|stored| {
            let expr = stored.pipeline.schedule.as_deref()?;
            match orbit_core::pipeline::parse_schedule(expr) {
                Ok(c) => Some((stored, c)),
                Err(e) => {
                    tracing::warn!(pipeline = %stored.name, error = %e, "schedule ignored");
                    None
                }
            }
        })
        .collect()
}

/// Creates the run of every schedule's latest fire time at or before `now` that has none yet.
async fn fire(
    store: &dyn Runs,
    schedules: &[(&StoredPipeline, Cron)],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for (stored, cron) in schedules {
        let Ok(at) = cron.find_previous_occurrence(&now, true) else {
            continue;
        };
        if at < stored.created_at {
            continue;
        }
        let created = store
            .create_run(NewRun {
                id: uuid::Uuid::now_v7(),
                pipeline: stored,
                input: json!({ "scheduledAt": at }),
                priority: 0,
                idempotency_key: Some(format!("cron:{}:{}", stored.name, at.to_rfc3339())),
                // A fire time never repeats: its key never needs to expire.
                idempotency_ttl: Duration::MAX,
                request_hash: None,
                triggered_by: orbit_store::TriggeredBy::Cron,
                parent: None,
                rerun: None,
                now,
            })
            .await?;
        if created.created {
            tracing::info!(pipeline = %stored.name, %at, run = %created.run.id, "cron fired");
            metrics::counter!("orbit_cron_fires_total").increment(1);
        }
    }
    Ok(())
}

/// How often the loop looks for new or changed schedules: the longest an idle server goes
/// without touching the store for cron. A pipeline saved through this server wakes it at once;
/// one saved through another server sharing the database is seen within this.
const RESCAN: Duration = Duration::from_secs(10);

/// Cron as a role: [`Scheduler::tick`] fires what is due at `now`; [`Scheduler::run`] sleeps
/// until the next fire time of any schedule, and looks again at least every `RESCAN` (10 s) for new
/// or changed pipelines, or when `saved` says this server saved one.
pub struct Scheduler {
    registry: Arc<dyn Registry>,
    runs: Arc<dyn Runs>,
    saved: Arc<Notify>,
}

impl Scheduler {
    pub fn new(store: Arc<dyn Store>, saved: Arc<Notify>) -> Scheduler {
        Scheduler {
            registry: store.clone(),
            runs: store,
            saved,
        }
    }

    /// Fires every schedule due at `now`; how long until the next fire time (at most
    /// `RESCAN` (10 s)).
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<Duration, StoreError> {
        let pipelines = self.registry.scheduled_pipelines().await?;
        let schedules = scheduled(&pipelines);
        fire(self.runs.as_ref(), &schedules, now).await?;
        Ok(schedules
            .iter()
            .filter_map(|(_, c)| c.find_next_occurrence(&now, false).ok())
            .min()
            .and_then(|next| (next - now).to_std().ok())
            // A little after the fire time, so `find_previous_occurrence` sees it.
            .map_or(RESCAN, |w| (w + Duration::from_millis(5)).min(RESCAN)))
    }

    pub async fn run(self, shutdown: CancellationToken, clock: Clock) {
        loop {
            let wait = self.tick(clock.now()).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cron tick failed");
                RESCAN
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.saved.notified() => {}
            }
        }
    }
}
