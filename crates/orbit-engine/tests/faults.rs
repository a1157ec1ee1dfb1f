//! The engine when its store misbehaves, through `orbit_store::faults::Faulty`: an unavailable
//! store makes it retry the same batch (nothing lost, nothing applied twice), and an attempt
//! whose lease cannot be renewed for half of it is stopped.

#![allow(clippy::unwrap_used, reason = "test code")]

use chrono::Utc;
use orbit_core::RunState;
use orbit_engine::storage::Storage;
use orbit_engine::{Engine, EngineConfig, EngineEvent};
use orbit_store::faults::{Fault, Faulty};
use orbit_store::prelude::*;
use orbit_store::testkit::pipeline;
use orbit_store::{NewRun, Store};
use orbit_store_sqlite::{Durability, SqliteStore};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

async fn setup() -> (tempfile::TempDir, Arc<Faulty>, Arc<Storage>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let real = SqliteStore::open(&url, Durability::Normal).await.unwrap();
    let storage = Arc::new(Storage::local(&dir.path().join("objects")).unwrap());
    (dir, Faulty::new(Arc::new(real)), storage)
}

async fn start(store: &dyn Store, p: &orbit_core::Pipeline) -> uuid::Uuid {
    let stored = store.save_pipeline(p, None, Utc::now()).await.unwrap();
    store
        .create_run(NewRun {
            id: uuid::Uuid::now_v7(),
            pipeline: &stored,
            input: serde_json::json!({}),
            priority: 0,
            idempotency_key: None,
            idempotency_ttl: Duration::from_secs(60),
            request_hash: None,
            triggered_by: orbit_store::TriggeredBy::Cli,
            parent: None,
            rerun: None,
            now: Utc::now(),
        })
        .await
        .unwrap()
        .run
        .id
}

async fn settled(store: &dyn Store, run: uuid::Uuid, within: Duration) -> RunState {
    let end = Instant::now() + within;
    loop {
        let state = store.run(run).await.unwrap().state;
        if state.is_terminal() || Instant::now() > end {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unavailable_store_makes_the_engine_retry_the_same_batch() {
    let (_dir, store, storage) = setup().await;
    let p = pipeline(
        "retry-batch",
        &[("a", &[], 0), ("b", &["a"], 0), ("c", &["b"], 0)],
    );
    let run = start(store.as_ref(), &p).await;
    // Every third commit fails for a while: claims and finishes alike.
    store.set("finish_and_claim", Fault::FailTimes(4));
    let engine = Arc::new(Engine::new(store.clone(), storage, EngineConfig::default()).unwrap());
    let stop = CancellationToken::new();
    let driving = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.drive_all(stop).await }
    });
    let state = settled(store.as_ref(), run, Duration::from_secs(20)).await;
    stop.cancel();
    driving.await.unwrap().unwrap();
    assert_eq!(state, RunState::Succeeded);
    assert!(
        store.calls("finish_and_claim") > 4,
        "the failed batches were tried again"
    );
    let attempts = store.attempts(run, None).await.unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.task_name.as_str(), a.attempt))
            .collect::<Vec<_>>(),
        [("a", 1), ("b", 1), ("c", 1)],
        "each task ran and was recorded once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_that_cannot_renew_its_lease_for_half_of_it_is_stopped() {
    let (_dir, store, storage) = setup().await;
    let mut p = pipeline("lease", &[("long", &[], 0)]);
    // A process, so the attempt holds its lease the whole time (a long sleep would park).
    p.tasks[0].task_type = orbit_core::TaskType::Shell;
    p.tasks[0].params = serde_json::json!({"command": ["sleep", "30"]})
        .as_object()
        .cloned()
        .unwrap();
    // A lease of 2 × 200 ms: renewals fail, so after 200 ms without one the attempt must stop.
    p.tasks[0].heartbeat_interval = Duration::from_millis(200);
    let run = start(store.as_ref(), &p).await;
    store.set("extend_leases", Fault::Fail);
    let config = EngineConfig {
        grace: Duration::from_millis(100),
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::new(store.clone(), storage, config).unwrap());
    let mut events = engine.subscribe();
    let stop = CancellationToken::new();
    let driving = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.drive_all(stop).await }
    });
    let started = Instant::now();
    let lost = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(EngineEvent::LeaseLost { task, .. }) = events.recv().await {
                return task;
            }
        }
    })
    .await
    .expect("the attempt was stopped");
    let took = started.elapsed();
    assert_eq!(lost, "long");
    assert!(
        took < Duration::from_secs(2),
        "stopped {took:?} after it started, long before its 30 s sleep"
    );
    assert!(store.calls("extend_leases") >= 1, "it tried to renew");
    // Once the store is back, the lease that ran out is reaped and the task runs again.
    store.clear("extend_leases");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let attempts = store.attempts(run, None).await.unwrap();
        if attempts.iter().any(|a| a.outcome == "worker_lost") {
            break;
        }
        assert!(Instant::now() < end, "the lost attempt was never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let _ = driving.await;
}

/// Under a constant stream of finishing attempts the loop never sleeps on its timer, yet the
/// reaper must run every poll interval and leases must be renewed: a lost task is taken back
/// within its lease and a poll, ahead of the queue, and a long task of this engine keeps its
/// lease.
#[tokio::test(flavor = "multi_thread")]
async fn timed_work_keeps_its_pace_under_load() {
    let (_dir, store, storage) = setup().await;
    let mut p = pipeline("lost", &[("victim", &[], 0), ("long", &[], 0)]);
    for t in &mut p.tasks {
        t.heartbeat_interval = Duration::from_millis(100);
        t.retry.max_attempts = 5;
    }
    p.tasks[1].task_type = orbit_core::TaskType::Shell;
    p.tasks[1].params = serde_json::json!({"command": ["sleep", "1.5"]})
        .as_object()
        .cloned()
        .unwrap();
    let run = start(store.as_ref(), &p).await;
    // A process that then vanished holds the victim: its 200 ms lease runs out unrenewed.
    let ghost = orbit_store::ClaimRequest {
        owner: "ghost:1".into(),
        limit: 1,
        run: Some(run),
        queues: Vec::new(),
        types: Vec::new(),
    };
    let held = store
        .finish_and_claim(&[], Some(&ghost), Utc::now())
        .await
        .unwrap()
        .claimed;
    assert_eq!(held.len(), 1);
    let lost_at = held[0].lease_expires_at;
    // Behind them, a long queue of short tasks keeps the engine busy.
    let names: Vec<String> = (0..400).map(|i| format!("t{i}")).collect();
    let spec: Vec<(&str, &[&str], i32)> = names.iter().map(|n| (n.as_str(), &[][..], 0)).collect();
    let mut queue = pipeline("queue", &spec);
    for t in &mut queue.tasks {
        t.params = serde_json::json!({"duration": "20ms"})
            .as_object()
            .cloned()
            .unwrap();
    }
    let queued = start(store.as_ref(), &queue).await;
    let config = EngineConfig {
        concurrency: 4,
        poll_interval: Duration::from_millis(300),
        grace: Duration::from_millis(100),
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::new(store.clone(), storage, config).unwrap());
    let stop = CancellationToken::new();
    let driving = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.drive_all(stop).await }
    });
    let state = settled(store.as_ref(), run, Duration::from_secs(20)).await;
    let rerun = store
        .task_runs(run)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.task_name == "victim")
        .unwrap()
        .started_at;
    let attempts = store.attempts(run, None).await.unwrap();
    let second = attempts
        .iter()
        .find(|a| a.task_name == "victim" && a.attempt == 2)
        .expect("the victim ran again");
    let after = (second.started_at - lost_at).to_std().unwrap_or_default();
    let queue_left = store
        .task_runs(queued)
        .await
        .unwrap()
        .iter()
        .filter(|t| t.state == orbit_core::TaskState::Ready)
        .count();
    stop.cancel();
    let _ = driving.await;
    assert_eq!(state, RunState::Succeeded);
    assert!(rerun.is_some());
    assert!(
        after < Duration::from_secs(1),
        "the lost task ran again {after:?} after its lease ended"
    );
    assert!(queue_left > 0, "it did not wait for the queue to drain");
    let long: Vec<&str> = attempts
        .iter()
        .filter(|a| a.task_name == "long")
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(
        long,
        ["succeeded"],
        "the long task kept its lease under load"
    );
}
