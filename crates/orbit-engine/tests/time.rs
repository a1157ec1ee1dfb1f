//! The engine's time-based behaviour under tokio's paused clock (`Clock::tokio`): timeouts,
//! backoff, heartbeats and lease expiry take virtual time only, so a test of a minute-long
//! backoff neither sleeps nor depends on the machine's speed.

#![allow(clippy::unwrap_used, reason = "test code")]

use chrono::{DateTime, Utc};
use orbit_core::RunState;
use orbit_engine::clock::Clock;
use orbit_engine::storage::Storage;
use orbit_engine::{Engine, EngineConfig};
use orbit_store::faults::Faulty;
use orbit_store::{ClaimRequest, NewRun, Store};
use orbit_store_sqlite::{Durability, SqliteStore};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    storage: Arc<Storage>,
    clock: Clock,
}

/// The store runs on a real-time runtime of its own (see `Faulty::on_runtime`): the paused
/// clock moves only when everything here waits on a timer, never while the database works.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("orbit.db").display());
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap(),
    ));
    let real = std::thread::scope(|s| {
        s.spawn(|| rt.block_on(SqliteStore::open(&url, Durability::Normal)))
            .join()
            .unwrap()
    })
    .unwrap();
    let storage = Arc::new(Storage::local(&dir.path().join("objects")).unwrap());
    Setup {
        _dir: dir,
        store: Faulty::on_runtime(Arc::new(real), rt.handle().clone()),
        storage,
        clock: Clock::tokio(),
    }
}

impl Setup {
    async fn start(&self, yaml: &str) -> uuid::Uuid {
        let p = orbit_core::file::parse_pipeline("test.yaml", yaml).unwrap();
        let now = self.clock.now();
        let stored = self.store.save_pipeline(&p, None, now).await.unwrap();
        self.store
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
                now,
            })
            .await
            .unwrap()
            .run
            .id
    }

    fn engine(&self, owner: &str) -> Engine {
        let config = EngineConfig {
            owner: owner.into(),
            clock: self.clock,
            ..EngineConfig::default()
        };
        Engine::new(self.store.clone(), self.storage.clone(), config).unwrap()
    }
}

fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

#[tokio::test(start_paused = true)]
async fn timeouts_and_backoff_take_the_times_the_policy_says() {
    let t = setup().await;
    let run = t
        .start(
            "name: slow\ntasks:\n  - name: hang\n    type: sleep\n    duration: 1h\n    timeout: 2s\n    \
             retry: { max_attempts: 3, initial: 30s, factor: 4, max_delay: 10m, jitter: false }\n",
        )
        .await;
    let real = std::time::Instant::now();
    let state = t
        .engine("e")
        .drive_run(run, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(state, Some(RunState::Failed));
    let attempts = t.store.attempts(run, None).await.unwrap();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["timeout", "timeout", "timeout"]);
    for a in &attempts {
        let took = secs(a.started_at, a.finished_at);
        assert!(
            (2.0..2.5).contains(&took),
            "each attempt is cut at 2 s: {took}"
        );
    }
    // Backoff: 30 s, then 30 × 4 = 120 s, measured from one attempt's end to the next's start.
    let waits: Vec<f64> = attempts
        .windows(2)
        .map(|w| secs(w[0].finished_at, w[1].started_at))
        .collect();
    assert!((30.0..31.5).contains(&waits[0]), "{waits:?}");
    assert!((120.0..121.5).contains(&waits[1]), "{waits:?}");
    assert!(
        real.elapsed() < Duration::from_secs(20),
        "virtual minutes, not real ones: {:?}",
        real.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_long_attempt_and_a_reaper_leaves_it_alone() {
    let t = setup().await;
    let run = t
        .start(
            "name: long\ntasks:\n  - name: work\n    type: sleep\n    duration: 90s\n    hold: true\n    heartbeat_interval: 1s\n",
        )
        .await;
    let worker = t.engine("worker");
    let reaper = Arc::new(t.engine("reaper"));
    let stop = CancellationToken::new();
    let reaping = tokio::spawn({
        let (reaper, stop) = (reaper.clone(), stop.clone());
        async move {
            while !stop.is_cancelled() {
                reaper.process(0).await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let state = worker.drive_run(run, CancellationToken::new()).await;
    stop.cancel();
    reaping.await.unwrap();
    assert_eq!(state.unwrap(), Some(RunState::Succeeded));
    let attempts = t.store.attempts(run, None).await.unwrap();
    assert_eq!(
        attempts.len(),
        1,
        "a lease renewed every second never expires"
    );
    let took = secs(attempts[0].started_at, attempts[0].finished_at);
    assert!((90.0..91.0).contains(&took), "{took}");
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_taken_back_and_the_task_runs_again() {
    let t = setup().await;
    let run = t
        .start(
            "name: lost\ntasks:\n  - name: work\n    type: sleep\n    duration: 0s\n    heartbeat_interval: 5s\n",
        )
        .await;
    // A worker claims the task and dies: nobody renews its 10 s lease.
    let ghost = ClaimRequest {
        owner: "ghost:1".into(),
        limit: 1,
        run: Some(run),
        queues: vec![],
        types: vec![],
    };
    let claimed_at = t.clock.now();
    let held = t
        .store
        .finish_and_claim(&[], Some(&ghost), claimed_at)
        .await
        .unwrap();
    assert_eq!(held.claimed.len(), 1);
    let state = t
        .engine("rescuer")
        .drive_run(run, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(state, Some(RunState::Succeeded));
    let attempts = t.store.attempts(run, None).await.unwrap();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["worker_lost", "succeeded"]);
    assert!(attempts[0].error.as_deref().unwrap().contains("ghost:1"));
    let rescued_after = secs(claimed_at, attempts[1].started_at);
    assert!(
        (10.0..13.0).contains(&rescued_after),
        "taken back once the lease ran out, not before: {rescued_after}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restarted_node_takes_back_at_once_what_its_dead_process_held() {
    let t = setup().await;
    let run = t
        .start(
            "name: orphan\ntasks:\n  - name: work\n    type: sleep\n    duration: 0s\n    heartbeat_interval: 30s\n",
        )
        .await;
    // This host's earlier process (no such pid: it is gone) held the task; its lease has a
    // minute to run.
    let dead = ClaimRequest {
        owner: "testhost:4999999".into(),
        limit: 1,
        run: Some(run),
        queues: vec![],
        types: vec![],
    };
    let claimed_at = t.clock.now();
    t.store
        .finish_and_claim(&[], Some(&dead), claimed_at)
        .await
        .unwrap();
    let node = Arc::new(t.engine("testhost:1"));
    let stop = CancellationToken::new();
    let driving = tokio::spawn({
        let (node, stop) = (node.clone(), stop.clone());
        async move { node.drive_all(stop).await }
    });
    while !t.store.run(run).await.unwrap().state.is_terminal() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    driving.await.unwrap().unwrap();
    let attempts = t.store.attempts(run, None).await.unwrap();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["worker_lost", "succeeded"]);
    let rescued_after = secs(claimed_at, attempts[1].started_at);
    assert!(
        rescued_after < 1.0,
        "taken back at start, not after the 60 s lease: {rescued_after}"
    );
}
