//! The engine when its store misbehaves, through `orbit_store::faults::Faulty`: an unavailable
//! store makes it retry the same batch (nothing lost, nothing applied twice), and an attempt
//! whose lease cannot be renewed for half of it is stopped.

#![allow(clippy::unwrap_used, reason = "test code")]

use chrono::Utc;
use orbit_core::RunState;
use orbit_engine::storage::Storage;
use orbit_engine::{Engine, EngineConfig, EngineEvent};
use orbit_store::faults::{Fault, Faulty};
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
    p.tasks[0].params = serde_json::json!({"duration": "30s"})
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
