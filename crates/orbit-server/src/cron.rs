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
use orbit_store::{NewRun, Store, StoreError};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Creates the run of every schedule's latest fire time at or before `now` that has none yet.
/// Returns `(pipeline, fire time, created)` for each scheduled pipeline that is due.
pub async fn fire_due(
    store: &dyn Store,
    now: DateTime<Utc>,
) -> Result<Vec<(String, DateTime<Utc>, bool)>, StoreError> {
    let mut fired = Vec::new();
    for stored in store.list_pipelines().await? {
        let Some(expr) = &stored.pipeline.schedule else {
            continue;
        };
        let cron = match orbit_core::pipeline::parse_schedule(expr) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(pipeline = %stored.name, error = %e, "schedule ignored");
                continue;
            }
        };
        let Ok(at) = cron.find_previous_occurrence(&now, true) else {
            continue;
        };
        if at < stored.created_at {
            continue;
        }
        let created = store
            .create_run(NewRun {
                id: uuid::Uuid::now_v7(),
                pipeline: &stored,
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
        fired.push((stored.name.clone(), at, created.created));
    }
    Ok(fired)
}

/// Fires schedules until `shutdown`: sleeps until the next fire time of any schedule, and
/// looks again at least every 10 s for new or changed pipelines.
pub async fn run(store: Arc<dyn Store>, shutdown: CancellationToken) {
    loop {
        let now = Utc::now();
        if let Err(e) = fire_due(store.as_ref(), now).await {
            tracing::warn!(error = %e, "cron tick failed");
        }
        let next = next_fire(store.as_ref(), Utc::now()).await;
        let wait = next
            .and_then(|n| (n - Utc::now()).to_std().ok())
            .unwrap_or_default()
            .min(Duration::from_secs(10));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            // A little after the fire time, so `find_previous_occurrence` sees it.
            _ = tokio::time::sleep(wait + Duration::from_millis(5)) => {}
        }
    }
}

async fn next_fire(store: &dyn Store, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let pipelines = store.list_pipelines().await.ok()?;
    pipelines
        .iter()
        .filter_map(|p| orbit_core::pipeline::parse_schedule(p.pipeline.schedule.as_deref()?).ok())
        .filter_map(|c| c.find_next_occurrence(&now, false).ok())
        .min()
}
