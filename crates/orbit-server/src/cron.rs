//! Cron: a pipeline's `schedule` creates runs on time, on exactly one node.
//!
//! Every server node runs this loop. A fire is a run whose idempotency key is
//! `cron:<pipeline>:<fire time>`, so when several nodes fire the same instant the store's
//! UNIQUE constraint keeps one run and the others get it back.
//!
//! Missed fires (every node was down): on the next tick only the most recent missed fire time
//! is run, once; older ones are skipped. A fire time before the pipeline's current version was
//! saved never runs.

use chrono::{DateTime, Utc};
use croner::Cron;
use orbit_store::{NewRun, Store, StoreError, StoredPipeline};
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
    store: &dyn Store,
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

/// How often the loop looks for new or changed schedules. Reading every pipeline is not free
/// (a big one takes milliseconds to parse), so this is also the longest an idle server goes
/// without touching the store for cron. A pipeline saved through this server wakes it at once;
/// one saved through another server sharing the database is seen within this.
const RESCAN: Duration = Duration::from_secs(10);

/// Fires schedules until `shutdown`: sleeps until the next fire time of any schedule, and
/// looks again at least every [`RESCAN`] for new or changed pipelines, or when `saved` says
/// this server saved one. With no schedule it only rescans.
pub async fn run(store: Arc<dyn Store>, saved: Arc<Notify>, shutdown: CancellationToken) {
    loop {
        let wait = match store.list_pipelines().await {
            Ok(pipelines) => {
                let schedules = scheduled(&pipelines);
                if let Err(e) = fire(store.as_ref(), &schedules, Utc::now()).await {
                    tracing::warn!(error = %e, "cron tick failed");
                }
                let now = Utc::now();
                schedules
                    .iter()
                    .filter_map(|(_, c)| c.find_next_occurrence(&now, false).ok())
                    .min()
                    .and_then(|next| (next - now).to_std().ok())
                    // A little after the fire time, so `find_previous_occurrence` sees it.
                    .map_or(RESCAN, |w| (w + Duration::from_millis(5)).min(RESCAN))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cron tick failed");
                RESCAN
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = saved.notified() => {}
        }
    }
}
