//! The node roles driven in-process with the time each test chooses (`tick(now)`): no sleeps,
//! no processes.

#![allow(clippy::unwrap_used, reason = "test code")]

use chrono::{Duration as Span, TimeZone, Utc};
use orbit_engine::roles::{NodeHeartbeat, Scheduler};
use orbit_store::testkit::pipeline;
use orbit_store::{NodeInfo, RunFilter, Store};
use orbit_store_sqlite::{Durability, SqliteStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

async fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let store = SqliteStore::open(&url, Durability::Normal).await.unwrap();
    (dir, Arc::new(store))
}

async fn runs(store: &dyn Store) -> Vec<orbit_store::RunRecord> {
    let filter = RunFilter {
        state: None,
        pipeline: None,
        limit: 100,
        offset: 0,
    };
    store.list_runs(&filter).await.unwrap()
}

#[tokio::test]
async fn the_scheduler_fires_each_due_time_once_at_the_time_it_is_given() {
    let (_dir, store) = store().await;
    let saved_at = Utc.with_ymd_and_hms(2026, 11, 26, 8, 0, 30).unwrap();
    let mut hourly = pipeline("hourly", &[("a", &[], 0)]);
    hourly.schedule = Some("0 * * * *".into());
    store.save_pipeline(&hourly, None, saved_at).await.unwrap();
    let cron = Scheduler::new(store.clone(), Arc::new(Notify::new()));

    // Before the first fire time after the save: nothing; it waits at most its rescan.
    let wait = cron.tick(saved_at + Span::minutes(10)).await.unwrap();
    assert!(runs(store.as_ref()).await.is_empty());
    assert!(wait <= Duration::from_secs(10), "{wait:?}");
    // Past 09:00: one run, however often it ticks.
    let after = Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 2).unwrap();
    cron.tick(after).await.unwrap();
    cron.tick(after + Span::seconds(1)).await.unwrap();
    let fired = runs(store.as_ref()).await;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].triggered_by.as_deref(), Some("cron"));
    assert_eq!(fired[0].input["scheduledAt"], "2026-11-26T09:00:00Z");
    // Down from 09:00 to 11:30: only the latest missed time (11:00) runs.
    cron.tick(Utc.with_ymd_and_hms(2026, 11, 26, 11, 30, 0).unwrap())
        .await
        .unwrap();
    let fired = runs(store.as_ref()).await;
    assert_eq!(fired.len(), 2);
    assert_eq!(fired[0].input["scheduledAt"], "2026-11-26T11:00:00Z");
}

#[tokio::test]
async fn a_node_heartbeat_records_the_time_it_is_given_and_the_stop() {
    let (_dir, store) = store().await;
    let node = NodeInfo {
        id: "host:1".into(),
        kind: "worker".into(),
        host: "host".into(),
        pid: 1,
        version: "test".into(),
        queues: vec![],
        concurrency: 2,
        heartbeat_ms: 5000,
        service: None,
    };
    let beat = NodeHeartbeat::new(store.clone(), node, Duration::from_secs(5));
    let at = Utc.with_ymd_and_hms(2026, 11, 26, 8, 0, 0).unwrap();
    beat.tick(at).await.unwrap();
    beat.tick(at + Span::seconds(5)).await.unwrap();
    let nodes = store.nodes(10).await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].last_seen_at, at + Span::seconds(5));
    assert!(nodes[0].stopped_at.is_none());
    beat.stopped(at + Span::seconds(6)).await.unwrap();
    assert_eq!(
        store.nodes(10).await.unwrap()[0].stopped_at,
        Some(at + Span::seconds(6))
    );
}
