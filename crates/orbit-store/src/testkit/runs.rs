//! Conformance: runs and task runs — created, found, cancelled, retried, deleted, counted.

use crate::{NewRun, QueueFilter, RunFilter, Store, StoreError};
use chrono::Duration;
use orbit_core::transition::{Failure, Outcome};
use orbit_core::{RunState, TaskState};
use serde_json::json;
use uuid::Uuid;

use super::*;

pub async fn creates_runs_with_roots_ready(store: &dyn Store) {
    let p = pipeline(
        "diamond",
        &[
            ("a", &[], 0),
            ("b", &["a"], 0),
            ("c", &["a"], 0),
            ("d", &["b", "c"], 0),
        ],
    );
    let (_, run) = start(store, &p, t0()).await;
    let r = store.run(run).await.unwrap();
    assert_eq!(
        (r.state, r.tasks_total, r.tasks_pending),
        (RunState::Pending, 4, 4)
    );
    assert_eq!(r.input, json!({"n": 1}));
    assert_eq!(
        states(store, run).await,
        vec![
            ("a".into(), TaskState::Ready),
            ("b".into(), TaskState::Waiting),
            ("c".into(), TaskState::Waiting),
            ("d".into(), TaskState::Waiting)
        ]
    );
}

pub async fn idempotency_key_returns_existing_run(store: &dyn Store) {
    let p = store
        .save_pipeline(&pipeline("idem", &[("a", &[], 0)]), None, t0())
        .await
        .unwrap();
    let new = |key: &str| NewRun {
        id: uuid::Uuid::now_v7(),
        pipeline: &p,
        input: json!({}),
        priority: 0,
        idempotency_key: Some(key.into()),
        idempotency_ttl: std::time::Duration::from_secs(3600),
        request_hash: None,
        triggered_by: crate::TriggeredBy::Cli,
        parent: None,
        rerun: None,
        now: t0(),
    };
    let first = store.create_run(new("order-1")).await.unwrap();
    let second = store.create_run(new("order-1")).await.unwrap();
    let other = store.create_run(new("order-2")).await.unwrap();
    assert!(first.created && !second.created && other.created);
    assert!(second.same_request, "the same pipeline and input");
    assert_eq!(first.run.id, second.run.id);
    assert_ne!(first.run.id, other.run.id);
    // The same key with another input is a different request: the earlier run comes back,
    // marked as not the same, and nothing is created.
    let changed = store
        .create_run(NewRun {
            input: json!({"amount": 2}),
            ..new("order-1")
        })
        .await
        .unwrap();
    assert!(!changed.created && !changed.same_request);
    assert_eq!(changed.run.id, first.run.id);
    assert_eq!(
        store
            .list_runs(&RunFilter {
                limit: 10,
                ..RunFilter::default()
            })
            .await
            .unwrap()
            .len(),
        2
    );
}

/// The short form of an id (its last 12 hex digits) finds what the full id finds, even among
/// runs made in the same millisecond, whose prefixes are alike.
pub async fn finds_runs_and_task_runs_by_short_id(store: &dyn Store) {
    let p = pipeline("short", &[("a", &[], 0)]);
    let mut runs = Vec::new();
    for _ in 0..20 {
        runs.push(start(store, &p, t0()).await.1);
    }
    for run in &runs {
        let short = orbit_core::id::short(run);
        assert_eq!(store.find_run(&short).await.unwrap().id, *run);
        assert_eq!(
            store.find_run(&short.to_uppercase()).await.unwrap().id,
            *run
        );
        let tr = store.task_runs(*run).await.unwrap()[0].id;
        assert_eq!(
            store
                .task_run(&orbit_core::id::short(&tr))
                .await
                .unwrap()
                .id,
            tr
        );
    }
    // A prefix they all share is ambiguous, and says so.
    let shared = &runs[0].to_string()[..8];
    assert!(matches!(
        store.find_run(shared).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.find_run("000000000000").await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn finds_runs_by_prefix_and_filters(store: &dyn Store) {
    let p = pipeline("find", &[("a", &[], 0)]);
    let q = pipeline("other", &[("a", &[], 0)]);
    let (_, r1) = start(store, &p, t0()).await;
    let (_, r2) = start(store, &q, t0() + Duration::seconds(1)).await;
    let full = r1.to_string();
    assert_eq!(store.find_run(&full).await.unwrap().id, r1);
    assert_eq!(store.find_run(&full[..30]).await.unwrap().id, r1);
    assert!(matches!(
        store.find_run("ffffffff").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.find_run("'; drop table runs; --").await,
        Err(StoreError::NotFound(_))
    ));
    let all = store
        .list_runs(&RunFilter {
            limit: 10,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![r2, r1],
        "newest first"
    );
    let only = store
        .list_runs(&RunFilter {
            pipeline: Some("find".into()),
            limit: 10,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(only.iter().map(|r| r.id).collect::<Vec<_>>(), vec![r1]);
    let paged = store
        .list_runs(&RunFilter {
            limit: 1,
            offset: 1,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(paged.iter().map(|r| r.id).collect::<Vec<_>>(), vec![r1]);
    claim(store, Some(r2), 1, t0() + Duration::seconds(2)).await;
    let running = store
        .list_runs(&RunFilter {
            state: Some(RunState::Running),
            limit: 10,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(running.iter().map(|r| r.id).collect::<Vec<_>>(), vec![r2]);
}

pub async fn cancel_stops_every_unsettled_task(store: &dyn Store) {
    let p = pipeline("cancel", &[("a", &[], 0), ("b", &["a"], 0), ("c", &[], 0)]);
    let (_, run) = start(store, &p, t0()).await;
    let got = claim(store, Some(run), 1, t0()).await;
    let cancelled = store.cancel_run(run, t0()).await.unwrap();
    assert_eq!(
        (cancelled.state, cancelled.tasks_pending),
        (RunState::Cancelled, 0)
    );
    assert!(
        states(store, run)
            .await
            .iter()
            .all(|(_, s)| *s == TaskState::Cancelled)
    );
    let late = record(
        store,
        finish(&p, &got[0], Outcome::Succeeded(json!(1)), t0()),
    )
    .await;
    assert_eq!(
        late.lease_lost,
        vec![got[0].id],
        "a cancelled attempt cannot finish"
    );
    assert!(claim(store, None, 10, t0()).await.is_empty());
    assert!(matches!(
        store.cancel_run(run, t0()).await,
        Err(StoreError::Conflict(_))
    ));
}

pub async fn requeue_gives_fresh_tries_and_reopens_the_run(store: &dyn Store) {
    let p = pipeline("requeue", &[("a", &[], 0), ("b", &["a"], 0)]);
    let (_, run) = start(store, &p, t0()).await;
    for i in 0..2 {
        let got = claim(store, Some(run), 1, t0() + Duration::seconds(10 * i)).await;
        record(
            store,
            finish(&p, &got[0], Outcome::Failed(Failure::error("down")), t0()),
        )
        .await;
    }
    let failed = store.run(run).await.unwrap();
    assert_eq!(failed.state, RunState::Failed);
    assert_eq!(failed.triggered_by.as_deref(), Some("cli"), "as created");
    let done = store
        .requeue(
            run,
            &["a".into(), "b".into()],
            crate::TriggeredBy::Retry,
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(done.tasks, vec!["a", "b"]);
    let r = store.run(run).await.unwrap();
    assert_eq!(
        (r.state, r.tasks_pending, r.tasks_dead),
        (RunState::Running, 2, 0)
    );
    assert_eq!(
        r.triggered_by.as_deref(),
        Some("retry"),
        "re-opened by a retry"
    );
    assert_eq!(
        states(store, run).await,
        vec![
            ("a".into(), TaskState::Ready),
            ("b".into(), TaskState::Waiting)
        ]
    );
    let got = claim(store, Some(run), 1, t0()).await;
    assert_eq!(
        (got[0].attempt, got[0].tries),
        (3, 1),
        "attempts keep counting; tries start again"
    );
    let out = record(
        store,
        finish(
            &p,
            &got[0],
            Outcome::Failed(Failure::error("still down")),
            t0(),
        ),
    )
    .await;
    assert!(
        out.settled_runs.is_empty(),
        "one failure after a requeue is retried, not dead"
    );
    let none = store
        .requeue(run, &["a".into()], crate::TriggeredBy::Retry, t0())
        .await
        .unwrap();
    assert!(
        none.tasks.is_empty(),
        "only dead or cancelled tasks are re-queued"
    );
}

pub async fn queue_stats_count_task_runs_by_state(store: &dyn Store) {
    let p = pipeline("stats", &[("a", &[], 0), ("b", &[], 0), ("c", &["a"], 0)]);
    let (_, run) = start(store, &p, t0()).await;
    let stats = store.queue_stats().await.unwrap();
    assert_eq!((stats.pending, stats.running, stats.waiting), (2, 0, 1));
    assert_eq!(stats.oldest_pending, Some(t0()));
    let a = claim(store, Some(run), 1, t0()).await;
    let stats = store.queue_stats().await.unwrap();
    assert_eq!((stats.pending, stats.running, stats.waiting), (1, 1, 1));
    let mut depths = store.queue_depths().await.unwrap();
    depths.sort_by_key(|(q, s, _)| (q.clone(), s.as_str()));
    assert_eq!(
        depths,
        [
            ("default".to_owned(), TaskState::Ready, 1),
            ("default".to_owned(), TaskState::Running, 1)
        ],
        "waiting task runs are in no queue yet"
    );
    let fatal = Outcome::Failed(Failure::fatal("boom"));
    record(store, finish(&p, &a[0], fatal, t0())).await;
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.running, stats.failed, stats.dlq),
        (1, 0, 1, 1)
    );
    let items = store
        .queue_items(&QueueFilter {
            limit: 10,
            ..QueueFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(items.len(), 1, "only b is still in the queue: {items:?}");
    assert_eq!(items[0].task_name, "b");
    let dead = store
        .queue_items(&QueueFilter {
            state: Some(TaskState::Dead),
            limit: 10,
            ..QueueFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].task_name, "a");
    let cells = store
        .attempt_cells(t0() - Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(cells.len(), 1, "{cells:?}");
    let (key, cell) = cells[0];
    assert!(!key.ok, "the fatal attempt failed");
    assert_eq!(cell.attempts, 1);
    assert_eq!(key.minute, t0().timestamp() / 60);
    assert_eq!(
        store.forget_attempt_cells(t0()).await.unwrap(),
        0,
        "its minute is kept"
    );
    assert_eq!(
        store
            .forget_attempt_cells(t0() + Duration::minutes(2))
            .await
            .unwrap(),
        1
    );
    assert!(store.attempt_cells(t0()).await.unwrap().is_empty());
}

pub async fn task_runs_are_found_by_prefix(store: &dyn Store) {
    let p = pipeline("prefix", &[("a", &[], 0)]);
    let (_, run) = start(store, &p, t0()).await;
    let id = store.task_runs(run).await.unwrap()[0].id;
    let full = id.to_string();
    assert_eq!(store.task_run(&full).await.unwrap().id, id);
    assert_eq!(store.task_run(&full[..13]).await.unwrap().id, id);
    assert!(matches!(
        store.task_run("zz").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.task_run(&Uuid::now_v7().to_string()).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn settled_runs_are_deleted_with_what_hangs_off_them(store: &dyn Store) {
    let p = pipeline("gone", &[("a", &[], 0), ("side", &[], 0)]);
    // A failed run: `a` dead (one dead letter), `side` succeeded.
    let (_, failed) = start(store, &p, t0()).await;
    let got = claim(store, Some(failed), 10, t0()).await;
    record(
        store,
        finish(&p, &got[0], Outcome::Failed(Failure::fatal("no")), t0()),
    )
    .await;
    record(
        store,
        finish(&p, &got[1], Outcome::Succeeded(json!(1)), t0()),
    )
    .await;
    assert_eq!(store.run(failed).await.unwrap().state, RunState::Failed);

    // A succeeded run whose task stored its output under an idempotency key.
    let (_, done) = start(store, &p, t0()).await;
    for t in claim(store, Some(done), 10, t0()).await {
        let mut f = finish(
            &p,
            &t,
            Outcome::Succeeded(json!({"from": t.task_name})),
            t0(),
        );
        f.idempotency_key = Some(format!("key-{}", t.task_name));
        record(store, f).await;
    }
    assert!(store.keyed_output("key-a", t0()).await.unwrap().is_some());

    // Unsettled runs and unknown ids are refused.
    let (_, pending) = start(store, &p, t0()).await;
    assert!(matches!(
        store.delete_run(pending).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.delete_run(Uuid::now_v7()).await,
        Err(StoreError::NotFound(_))
    ));

    // Run retention's list: settled runs finished before the time, never a pending one.
    assert!(store.settled_before(t0(), 10).await.unwrap().is_empty());
    let mut old = store
        .settled_before(t0() + Duration::seconds(1), 10)
        .await
        .unwrap();
    old.sort();
    let mut want = vec![failed, done];
    want.sort();
    assert_eq!(old, want);
    assert_eq!(
        store
            .settled_before(t0() + Duration::seconds(1), 1)
            .await
            .unwrap()
            .len(),
        1
    );

    store.delete_run(done).await.unwrap();
    assert!(matches!(
        store.run(done).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.task_runs(done).await.unwrap_or_default().is_empty());
    assert!(
        store
            .attempts(done, None)
            .await
            .unwrap_or_default()
            .is_empty()
    );
    assert!(store.events(0, Some(done), 100).await.unwrap().is_empty());
    assert!(
        store.keyed_output("key-a", t0()).await.unwrap().is_none(),
        "a deleted run lends its output to nobody"
    );
    let last = store.events(0, None, 1000).await.unwrap();
    assert_eq!(last.last().map(|e| e.kind.as_str()), Some("run_deleted"));
    assert_eq!(
        store.run(pending).await.unwrap().state,
        RunState::Pending,
        "others stay"
    );

    // Retention: nothing is older than t0; then the failed run's only entry goes, and the
    // store names the run for deletion without deleting it itself.
    let none = store
        .purge_dead_letters(t0() - Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!((none.entries, none.runs.len()), (0, 0));
    let purged = store
        .purge_dead_letters(t0() + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(purged.entries, 1);
    assert_eq!(purged.runs, vec![failed]);
    assert!(store.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(store.run(failed).await.unwrap().state, RunState::Failed);
    store.delete_run(failed).await.unwrap();
    assert!(store.dead_letter(&failed.to_string()).await.is_err());
}

pub async fn a_big_run_is_deleted_in_slices(store: &dyn Store) {
    // More task runs than one deletion slice, half of them finished.
    let names: Vec<String> = (0..2_500).map(|i| format!("t{i}")).collect();
    let tasks: Vec<(&str, &[&str], i32)> = names.iter().map(|n| (n.as_str(), &[][..], 0)).collect();
    let p = pipeline("big", &tasks);
    let (_, big) = start(store, &p, t0()).await;
    let done: Vec<_> = claim(store, Some(big), 1_250, t0())
        .await
        .iter()
        .map(|t| finish(&p, t, Outcome::Succeeded(json!(1)), t0()))
        .collect();
    store.finish_and_claim(&done, None, t0()).await.unwrap();
    let (_, kept) = start(store, &pipeline("kept", &[("a", &[], 0)]), t0()).await;
    store.cancel_run(big, t0()).await.unwrap();
    let before = store.queue_stats().await.unwrap();
    assert_eq!((before.completed, before.pending), (1_250, 1));
    // One slice leaves the run, fewer task runs, and the counts moved by what went.
    assert!(!store.delete_run_slice(big).await.unwrap());
    assert_eq!(store.run(big).await.unwrap().state, RunState::Cancelled);
    let left = store.task_runs(big).await.unwrap().len() as i64;
    assert_eq!(left, 2_500 - crate::plan::DELETE_SLICE);
    counts_match_rows(store).await;
    store.delete_run(big).await.unwrap();
    assert!(matches!(store.run(big).await, Err(StoreError::NotFound(_))));
    assert!(store.task_runs(big).await.unwrap_or_default().is_empty());
    assert!(store.events(0, Some(big), 10).await.unwrap().is_empty());
    let after = store.queue_stats().await.unwrap();
    assert_eq!((after.completed, after.pending), (0, 1));
    assert_eq!(store.task_runs(kept).await.unwrap().len(), 1, "others stay");
}

pub async fn sub_runs_name_their_parent(store: &dyn Store) {
    let p = pipeline("inner", &[("a", &[], 0)]);
    let (stored, parent) = start(store, &p, t0()).await;
    let mut new = new_run(&stored, json!({"n": 2}), t0());
    new.idempotency_key = Some("orbit-subrun:x".into());
    new.triggered_by = crate::TriggeredBy::Pipeline;
    new.parent = Some((parent, "call".into()));
    let child = store.create_run(new).await.unwrap().run;
    assert_eq!(
        (
            child.parent_run_id,
            child.parent_task.as_deref(),
            child.triggered_by.as_deref()
        ),
        (Some(parent), Some("call"), Some("pipeline"))
    );
    // The key finds the same child again (a retried attempt does not make another).
    let mut again = new_run(&stored, json!({"n": 2}), t0());
    again.idempotency_key = Some("orbit-subrun:x".into());
    again.parent = Some((parent, "call".into()));
    let found = store.create_run(again).await.unwrap();
    assert!(!found.created);
    assert_eq!(found.run.id, child.id);
    let subs = store.child_runs(parent).await.unwrap();
    assert_eq!(subs.iter().map(|r| r.id).collect::<Vec<_>>(), [child.id]);
    assert!(store.child_runs(child.id).await.unwrap().is_empty());
}
