//! Many `orbit worker` processes sharing one PostgreSQL database.

mod support;

use chrono::Utc;
use orbit_core::retry::RetryPolicy;
use orbit_core::{Pipeline, RunState, TaskDef, TaskType};
use orbit_store::prelude::*;
use orbit_store::{LeaseFilter, NewRun};
use orbit_store_postgres::PgStore;
use orbit_store_postgres::testing::TestDb;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use support::{Proc, orbit_bin, worker, worker_with_env};
use uuid::Uuid;

fn sleep_task(name: String, ms: u64, heartbeat: Duration) -> TaskDef {
    TaskDef {
        name,
        task_type: TaskType::Sleep,
        params: json!({"duration": format!("{ms}ms")})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        needs: Vec::new(),
        retry: RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        },
        timeout: None,
        priority: 0,
        heartbeat_interval: heartbeat,
        idempotency_key: None,
        queue: None,
        allowed_next: Vec::new(),
        concurrency: None,
        rate_limit: None,
        for_each: None,
    }
}

async fn migrated(db: &TestDb) -> PgStore {
    let out = std::process::Command::new(orbit_bin())
        .args(["db", "migrate", "--database-url", &db.url])
        .output()
        .expect("orbit db migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PgStore::connect(&db.url, 4).await.expect("connect")
}

async fn start_run(store: &PgStore, tasks: Vec<TaskDef>) -> Uuid {
    let p = Pipeline {
        name: "many".into(),
        description: None,
        schedule: None,
        concurrency: None,
        output: None,
        tasks,
    };
    let stored = store
        .save_pipeline(&p, None, Utc::now())
        .await
        .expect("save");
    store
        .create_run(NewRun {
            id: uuid::Uuid::now_v7(),
            pipeline: &stored,
            input: json!({}),
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
        .expect("run")
        .run
        .id
}

async fn settle(store: &PgStore, run: Uuid, within: Duration) -> RunState {
    let end = Instant::now() + within;
    loop {
        let r = store.run(run).await.expect("run");
        if r.state.is_terminal() {
            return r.state;
        }
        assert!(
            Instant::now() < end,
            "run not settled after {within:?}: {} of {} pending",
            r.tasks_pending,
            r.tasks_total
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn four_workers_drain_ten_thousand_tasks_once_each() {
    let db = TestDb::create().await;
    let store = migrated(&db).await;
    let n = 10_000;
    let tasks = (0..n)
        .map(|i| sleep_task(format!("t{i:05}"), 0, Duration::from_secs(10)))
        .collect();
    let run = start_run(&store, tasks).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let mut workers: Vec<Proc> = (0..4)
        .map(|_| worker(dir.path(), &db.url, &["--concurrency", "32"]))
        .collect();
    assert_eq!(
        settle(&store, run, Duration::from_secs(240)).await,
        RunState::Succeeded
    );
    let took = started.elapsed();
    let attempts = store.attempts(run, None).await.expect("attempts");
    assert_eq!(
        attempts.len(),
        n,
        "one attempt per task: none lost, none run twice"
    );
    let distinct: HashSet<Uuid> = attempts.iter().map(|a| a.task_run_id).collect();
    assert_eq!(distinct.len(), n);
    assert!(attempts.iter().all(|a| a.outcome == "succeeded"));
    let per_worker: HashMap<&str, usize> = attempts.iter().fold(HashMap::new(), |mut m, a| {
        *m.entry(a.worker.as_str()).or_default() += 1;
        m
    });
    assert!(per_worker.len() >= 2, "the work was shared: {per_worker:?}");
    eprintln!("4 workers drained {n} tasks in {took:?}; per worker: {per_worker:?}");
    // Graceful shutdown: SIGTERM, exit 0, marked stopped.
    for w in &workers {
        w.signal("TERM");
    }
    for w in &mut workers {
        let status = w
            .wait_exit(Duration::from_secs(15))
            .expect("worker exits on SIGTERM");
        assert!(status.success(), "{status}");
    }
    let nodes = store.nodes(10).await.expect("nodes");
    assert_eq!(nodes.len(), 4);
    assert!(
        nodes
            .iter()
            .all(|n| n.stopped_at.is_some() && n.info.kind == "worker"),
        "{nodes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_tasks_are_finished_by_the_others_within_the_lease() {
    let db = TestDb::create().await;
    let store = migrated(&db).await;
    let lease = Duration::from_secs(2);
    // Shell tasks that mark their start and end and leave a grandchild in their group: the
    // killed worker's processes must all die with it, and no task may run twice at once.
    let tasks = (0..24)
        .map(|i| {
            let mut t = sleep_task(format!("t{i:02}"), 700, lease / 2);
            t.task_type = TaskType::Shell;
            t.params = json!({"shell": true, "command": format!(
                "{}; sleep 60 >/dev/null 2>&1 & sleep 0.7; {}",
                support::mark("start"),
                support::mark("end")
            )})
            .as_object()
            .cloned()
            .unwrap_or_default();
            t
        })
        .collect();
    let run = start_run(&store, tasks).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let marks: Vec<String> = (0..4)
        .map(|i| format!("{}#worker{i}", dir.path().display()))
        .collect();
    let workers: Vec<Proc> = marks
        .iter()
        .map(|mark| {
            worker_with_env(
                dir.path(),
                &db.url,
                &["--concurrency", "2", "--poll-interval-ms", "200"],
                &[("ORBIT_TEST_MARK", mark)],
            )
        })
        .collect();
    // Wait until the first worker holds a lease, then kill it outright.
    let victim = workers[0].pid().to_string();
    let end = Instant::now() + Duration::from_secs(20);
    let owner = loop {
        let leased = store
            .leased(&LeaseFilter {
                run: Some(run),
                expired_before: None,
                limit: 100,
            })
            .await
            .expect("leased");
        if let Some(l) = leased
            .iter()
            .find(|l| l.owner.ends_with(&format!(":{victim}")))
        {
            break l.owner.clone();
        }
        assert!(Instant::now() < end, "the first worker never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    workers[0].signal("KILL");
    let killed_at = Utc::now();
    let cleanup = support::gone_within(&marks[0], Duration::from_secs(2)).unwrap_or_else(|alive| {
        panic!(
            "the killed worker's task processes outlived it by 2 s: {:?}",
            support::describe(&alive)
        )
    });
    let gone_at = support::epoch_nanos();
    println!("the killed worker's task processes were gone {cleanup:?} after the kill");
    assert_eq!(
        settle(&store, run, Duration::from_secs(30)).await,
        RunState::Succeeded
    );
    let attempts = store.attempts(run, None).await.expect("attempts");
    let lost: Vec<_> = attempts
        .iter()
        .filter(|a| a.outcome == "worker_lost")
        .collect();
    assert!(!lost.is_empty(), "the killed worker held tasks");
    for l in &lost {
        assert_eq!(l.worker, owner);
        let redo = attempts
            .iter()
            .find(|a| a.task_run_id == l.task_run_id && a.outcome == "succeeded")
            .expect("every lost task succeeded later");
        assert_ne!(redo.worker, owner, "another worker finished it");
        let after = (redo.finished_at - killed_at).to_std().unwrap_or_default();
        // Lease expiry + one poll + the task's own 0.7 s, with slack for a loaded machine.
        assert!(
            after < lease + Duration::from_secs(4),
            "re-run finished {after:?} after the kill"
        );
    }
    let ran: HashSet<Uuid> = attempts
        .iter()
        .filter(|a| a.outcome == "succeeded")
        .map(|a| a.task_run_id)
        .collect();
    assert_eq!(ran.len(), 24, "every task succeeded exactly once");
    assert_eq!(
        attempts.iter().filter(|a| a.outcome == "succeeded").count(),
        24
    );
    let marks = std::fs::read_to_string(dir.path().join("marks.log")).expect("marks");
    let overlapping = support::overlaps(&marks, &[gone_at]);
    assert!(
        overlapping.is_empty(),
        "attempts of one task ran at once: {overlapping:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_hands_unfinished_leases_back_at_once() {
    let db = TestDb::create().await;
    let store = migrated(&db).await;
    // A 20 s lease: were the lease not handed back, the task would wait 20 s for the reaper.
    // A process, so the attempt holds its lease the whole time (a long sleep would park).
    let mut long = sleep_task("long".into(), 0, Duration::from_secs(10));
    long.task_type = TaskType::Shell;
    long.params = json!({"command": ["sleep", "3"]})
        .as_object()
        .cloned()
        .unwrap_or_default();
    let run = start_run(&store, vec![long]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = worker(dir.path(), &db.url, &["--grace", "200ms"]);
    let end = Instant::now() + Duration::from_secs(20);
    while store
        .leased(&LeaseFilter {
            run: Some(run),
            expired_before: None,
            limit: 1,
        })
        .await
        .expect("leased")
        .is_empty()
    {
        assert!(Instant::now() < end, "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _b = worker(dir.path(), &db.url, &[]);
    a.signal("TERM");
    let status = a
        .wait_exit(Duration::from_secs(5))
        .expect("exits within the grace period");
    assert!(status.success());
    let handed_back = Instant::now();
    assert_eq!(
        settle(&store, run, Duration::from_secs(15)).await,
        RunState::Succeeded
    );
    assert!(
        handed_back.elapsed() < Duration::from_secs(8),
        "picked up at once, not after the 20 s lease"
    );
    let attempts = store.attempts(run, None).await.expect("attempts");
    assert_eq!(attempts[0].outcome, "worker_lost");
    assert!(attempts[0].log.contains("shut down"), "{}", attempts[0].log);
    assert_eq!(attempts[1].outcome, "succeeded");
}
