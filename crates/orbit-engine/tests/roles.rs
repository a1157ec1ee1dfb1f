//! The node roles driven in-process with the time each test chooses (`tick(now)`): cron, the node
//! heartbeat and dead-letter retention, with no sleeps and no processes.

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

/// A run whose one task died (fatal) at `died_at`: the run failed then, with a dead letter.
async fn failed_run(store: &dyn Store, died_at: chrono::DateTime<Utc>) -> uuid::Uuid {
    use orbit_core::transition::{Failure, Transition};
    use orbit_store::{ClaimRequest, FinishedAttempt, NewRun};

    let stored = store
        .save_pipeline(&pipeline("fails", &[("a", &[], 0)]), None, died_at)
        .await
        .unwrap();
    let run = store
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
            now: died_at,
        })
        .await
        .unwrap()
        .run;
    let claim = ClaimRequest {
        owner: "w".into(),
        limit: 1,
        run: Some(run.id),
        queues: vec![],
        types: vec![],
    };
    let task = store
        .finish_and_claim(&[], Some(&claim), died_at)
        .await
        .unwrap()
        .claimed
        .remove(0);
    let dead = FinishedAttempt {
        task,
        worker: "w".into(),
        started_at: died_at,
        finished_at: died_at,
        log: String::new(),
        transition: Transition::Dead {
            failure: Failure::fatal("boom"),
            cancel: vec![],
        },
        idempotency_key: None,
        reused: false,
        code_version: None,
    };
    store
        .finish_and_claim(&[dead], None, died_at)
        .await
        .unwrap();
    run.id
}

#[tokio::test]
async fn retention_purges_dead_letters_older_than_it_keeps_at_the_time_it_is_given() {
    use orbit_engine::roles::Retention;

    let (dir, store) = store().await;
    let died_at = Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap();
    let run = failed_run(store.as_ref(), died_at).await;
    let storage =
        Arc::new(orbit_engine::storage::Storage::local(&dir.path().join("objects")).unwrap());
    let retention = Retention::new(
        store.clone(),
        storage,
        Span::days(7),
        Duration::from_secs(3600),
    );
    // Six days on, the entry is kept; eight days on, it goes with the run nobody retried.
    assert_eq!(retention.tick(died_at + Span::days(6)).await.unwrap(), 0);
    assert_eq!(store.dead_letters(10).await.unwrap().len(), 1);
    assert_eq!(retention.tick(died_at + Span::days(8)).await.unwrap(), 1);
    assert!(store.dead_letters(10).await.unwrap().is_empty());
    assert!(store.run(run).await.is_err(), "the failed run went too");
}

#[tokio::test]
async fn run_retention_deletes_runs_finished_before_what_it_keeps() {
    use orbit_engine::roles::RunRetention;

    let (dir, store) = store().await;
    let old_day = Utc.with_ymd_and_hms(2026, 10, 1, 12, 0, 0).unwrap();
    let old = failed_run(store.as_ref(), old_day).await;
    let recent = failed_run(store.as_ref(), old_day + Span::days(20)).await;
    let storage =
        Arc::new(orbit_engine::storage::Storage::local(&dir.path().join("objects")).unwrap());
    let retention = RunRetention::new(
        store.clone(),
        storage,
        Span::days(30),
        Duration::from_secs(60),
    );
    assert_eq!(retention.tick(old_day + Span::days(29)).await.unwrap(), 0);
    assert_eq!(retention.tick(old_day + Span::days(31)).await.unwrap(), 1);
    assert!(store.run(old).await.is_err(), "finished 31 days ago: gone");
    assert!(
        store
            .attempts(old, None)
            .await
            .unwrap_or_default()
            .is_empty()
    );
    assert!(
        store.run(recent).await.is_ok(),
        "finished 11 days ago: kept"
    );
    assert_eq!(retention.tick(old_day + Span::days(31)).await.unwrap(), 0);
}

#[tokio::test]
async fn ready_tasks_without_a_token_are_explained() {
    let (_dir, store) = store().await;
    let mut p = pipeline("rated", &[("a", &[], 0), ("b", &[], 0), ("c", &[], 0)]);
    for t in &mut p.tasks {
        t.rate_limit = Some(orbit_core::pipeline::RateLimit {
            key: "api".into(),
            per: std::time::Duration::from_secs(10),
            limit: 1,
        });
    }
    let stored = store.save_pipeline(&p, None, Utc::now()).await.unwrap();
    let t0 = Utc::now();
    let run = store
        .create_run(orbit_store::testkit::new_run(
            &stored,
            serde_json::json!({}),
            t0,
        ))
        .await
        .unwrap()
        .run;
    let tasks = store.task_runs(run.id).await.unwrap();
    let why = orbit_engine::waiting::held_by_rates(store.as_ref(), &tasks, t0);
    assert!(
        why.await.unwrap().is_empty(),
        "a full bucket holds nothing back"
    );
    let claim = orbit_store::ClaimRequest::any("w", 10);
    let got = store.finish_and_claim(&[], Some(&claim), t0).await.unwrap();
    assert_eq!(got.claimed.len(), 1);
    let tasks = store.task_runs(run.id).await.unwrap();
    let later = t0 + chrono::Duration::milliseconds(7_500);
    assert_eq!(
        orbit_engine::waiting::held_by_rates(store.as_ref(), &tasks, later)
            .await
            .unwrap(),
        ["2 tasks wait for rate limit `api` (next token in 2.5 s)"]
    );
}

#[tokio::test]
async fn ready_tasks_behind_a_full_key_are_explained() {
    let (_dir, store) = store().await;
    let mut p = pipeline("keyed", &[("a", &[], 0), ("b", &[], 0), ("c", &[], 0)]);
    for t in &mut p.tasks {
        t.concurrency = Some(orbit_core::pipeline::Concurrency {
            key: "tenant-{{ input.n }}".into(),
            limit: Some(1),
        });
    }
    let stored = store.save_pipeline(&p, None, Utc::now()).await.unwrap();
    let input = serde_json::json!({"n": 7});
    let run = store
        .create_run(orbit_store::testkit::new_run(&stored, input, Utc::now()))
        .await
        .unwrap()
        .run;
    let tasks = store.task_runs(run.id).await.unwrap();
    assert!(
        orbit_engine::waiting::held_by_keys(store.as_ref(), &run, &tasks)
            .await
            .unwrap()
            .is_empty(),
        "nothing runs yet: the key has room"
    );
    let claim = orbit_store::ClaimRequest::any("w", 10);
    let got = store
        .finish_and_claim(&[], Some(&claim), Utc::now())
        .await
        .unwrap();
    assert_eq!(got.claimed.len(), 1);
    let tasks = store.task_runs(run.id).await.unwrap();
    assert_eq!(
        orbit_engine::waiting::held_by_keys(store.as_ref(), &run, &tasks)
            .await
            .unwrap(),
        ["2 tasks wait for concurrency key `tenant-7` (1/1 in use)"]
    );
}

#[tokio::test]
async fn a_run_held_by_its_pipelines_key_is_explained() {
    let (_dir, store) = store().await;
    let mut p = pipeline("tenant", &[("a", &[], 0)]);
    p.concurrency = Some(orbit_core::pipeline::Concurrency {
        key: "tenant-{{ input.n }}".into(),
        limit: Some(1),
    });
    let stored = store.save_pipeline(&p, None, Utc::now()).await.unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let input = serde_json::json!({"n": 7});
        let run = store
            .create_run(orbit_store::testkit::new_run(&stored, input, Utc::now()))
            .await
            .unwrap()
            .run;
        runs.push(run.id);
    }
    let claim = orbit_store::ClaimRequest::any("w", 10);
    let got = store
        .finish_and_claim(&[], Some(&claim), Utc::now())
        .await
        .unwrap();
    assert_eq!(got.claimed.len(), 1, "one run's task: the key has one slot");
    let why = |id| {
        let store = store.clone();
        async move {
            let run = store.run(id).await.unwrap();
            let tasks = store.task_runs(id).await.unwrap();
            orbit_engine::waiting::held_by_keys(store.as_ref(), &run, &tasks)
                .await
                .unwrap()
        }
    };
    assert!(why(runs[0]).await.is_empty(), "it runs");
    assert_eq!(
        why(runs[1]).await,
        ["the run waits for concurrency key `tenant-7` (1/1 runs in use)"]
    );
}

/// `orbit why`'s lines, exactly, for each reason a task can wait: on a running upstream, in a
/// backoff, asked to wait (throttled), behind a full key, behind a spent rate, for a worker of
/// its queue, for its children; parked asleep, for a signal, for an approval.
#[tokio::test]
async fn why_names_each_reason_a_task_waits() {
    use orbit_core::transition::{Failure, Outcome, Transition};
    let (_dir, store) = store().await;
    let t0 = Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap();
    let mut p = pipeline(
        "why",
        &[
            ("slow", &[], 9),
            ("after", &["slow"], 0),
            ("flaky", &[], 8),
            ("polite", &[], 8),
            ("k1", &[], 7),
            ("k2", &[], 6),
            ("r1", &[], 5),
            ("r2", &[], 4),
            ("gpu", &[], 0),
            ("each", &[], 3),
            ("nap", &[], 2),
            ("pay", &[], 2),
            ("review", &[], 2),
        ],
    );
    p.tasks[12].params = serde_json::json!({"approvers": ["ann", "bob"]})
        .as_object()
        .cloned()
        .unwrap();
    for (i, key) in [(4, "one"), (5, "one")] {
        p.tasks[i].concurrency = Some(orbit_core::pipeline::Concurrency {
            key: key.into(),
            limit: Some(1),
        });
    }
    for i in [6, 7] {
        p.tasks[i].rate_limit = Some(orbit_core::pipeline::RateLimit {
            key: "api".into(),
            per: Duration::from_secs(60),
            limit: 1,
        });
    }
    p.tasks[8].queue = Some("gpu".into());
    p.tasks[2].retry.initial = Duration::from_secs(10);
    p.tasks[2].retry.jitter = false;
    p.tasks[9].for_each = Some(orbit_core::pipeline::ForEach {
        items: "{{ input.items }}".into(),
        allow_failures: 0.0,
        fail_fast: false,
    });
    let stored = store.save_pipeline(&p, None, t0).await.unwrap();
    let run = store
        .create_run(orbit_store::testkit::new_run(
            &stored,
            serde_json::json!({}),
            t0,
        ))
        .await
        .unwrap()
        .run;
    // One claimer on the default queue takes what it can: slow, flaky, polite, k1, r1, each.
    let mut claim = orbit_store::ClaimRequest::any("w-3", 20);
    claim.queues = vec!["default".into()];
    let got = store
        .finish_and_claim(&[], Some(&claim), t0)
        .await
        .unwrap()
        .claimed;
    let by = |n: &str| got.iter().find(|t| t.task_name == n).unwrap().clone();
    let dag = orbit_core::dag::Dag::new(&p).unwrap();
    let ended = |name: &str, transition: Transition| orbit_store::FinishedAttempt {
        task: by(name),
        worker: "w-3".into(),
        started_at: t0,
        finished_at: t0,
        log: String::new(),
        transition,
        idempotency_key: None,
        reused: false,
        code_version: Some(1),
    };
    let fail = orbit_core::transition::on_attempt_finished(
        &dag,
        dag.index_of("flaky").unwrap(),
        &p.tasks[2].retry,
        1,
        Outcome::Failed(Failure::error("exit 1")),
        t0,
        0.0,
    );
    let later = Transition::Retry {
        ready_at: t0 + Span::seconds(30),
        failure: Failure::throttled("429 from api", Duration::from_secs(30)),
        keep_place: false,
    };
    let expand = Transition::Expand {
        items: vec![
            serde_json::json!(1),
            serde_json::json!(2),
            serde_json::json!(3),
        ],
    };
    let ok = Transition::Succeed {
        output: serde_json::json!(1),
        promote: Vec::new(),
        skip: Vec::new(),
    };
    use orbit_core::transition::{Park, ParkKind};
    let park = |kind, until: Option<i64>, event: Option<&str>, note: Option<&str>| {
        Transition::Park(Park {
            kind,
            until: until.map(|s| t0 + Span::seconds(s)),
            event: event.map(str::to_owned),
            note: note.map(str::to_owned),
        })
    };
    store
        .finish_and_claim(
            &[
                ended("flaky", fail),
                ended("polite", later),
                ended("each", expand),
                ended("r1", ok),
                ended("nap", park(ParkKind::Sleep, Some(3600), None, None)),
                ended(
                    "pay",
                    park(ParkKind::Signal, Some(1800), Some("paid.o-1"), None),
                ),
                ended(
                    "review",
                    park(ParkKind::Approval, None, None, Some("Ship it?")),
                ),
            ],
            None,
            t0,
        )
        .await
        .unwrap();
    let now = t0 + Span::seconds(2);
    let lines: Vec<String> = orbit_engine::why::explain(store.as_ref(), &run, None, now)
        .await
        .unwrap()
        .into_iter()
        .map(|w| format!("{} {}: {}", w.task.unwrap_or_default(), w.state, w.reason))
        .collect();
    assert_eq!(
        lines,
        [
            "after waiting: waiting on `slow` (running on w-3 for 2.0s, lease until 12:00:20)",
            "flaky ready: backing off until 12:00:10.000 after attempt 1 failed: exit 1",
            "polite ready: asked to wait until 12:00:30.000: 429 from api",
            "k2 ready: concurrency key `one` is full (1/1 in use)",
            "r2 ready: rate limited by `api` until 12:01:00.000",
            "gpu ready: ready, but no worker is claiming queue `gpu`",
            "each waiting: waiting for its children: 0/3 done, 0 running",
            "nap parked: sleeping until 2026-11-26 13:00:00 UTC (in 59m58s)",
            "pay parked: waiting for signal `paid.o-1` since 2026-11-26 12:00:00 UTC (2.0s ago); times out 2026-11-26 12:30:00 UTC (in 29m58s)",
            "review parked: waiting for approval by ann or bob (Ship it?) since 2026-11-26 12:00:00 UTC (2.0s ago)",
        ]
    );
}
