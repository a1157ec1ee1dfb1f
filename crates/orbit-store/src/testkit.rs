//! The conformance suite: behaviour every [`Store`] backend must show. A backend's tests call
//! [`conformance_tests!`](crate::conformance_tests) with a function that makes a fresh store.

#![allow(
    clippy::unwrap_used,
    reason = "the conformance suite is test code: a failed step should fail the test loudly"
)]

use crate::{
    ClaimRequest, ClaimedTask, EventRecord, FinishedAttempt, NewRun, NodeInfo, QueueFilter,
    RunFilter, Store, StoreError, StoredPipeline,
};
use chrono::{DateTime, Duration, Utc};
use orbit_core::dag::Dag;
use orbit_core::retry::RetryPolicy;
use orbit_core::transition::{Failure, Outcome, on_attempt_finished};
use orbit_core::{Pipeline, RunState, TaskDef, TaskState, TaskType};
use serde_json::{Value, json};
use uuid::Uuid;

/// Generates one `#[tokio::test]` per conformance case, each on a fresh store from `$setup`,
/// an async fn returning `(store, guard)`.
#[macro_export]
macro_rules! conformance_tests {
    ($setup:path) => {
        $crate::conformance_tests!(@cases $setup;
            saves_pipeline_versions_by_content,
            creates_runs_with_roots_ready,
            claims_by_priority_then_age,
            claims_only_the_requested_run,
            success_promotes_when_all_needs_succeeded,
            fences_writes_by_lease_epoch,
            retries_become_claimable_after_backoff,
            a_lost_attempt_keeps_its_place_in_the_queue,
            dead_task_cancels_downstream_and_fails_run,
            idempotency_key_returns_existing_run,
            finds_runs_by_prefix_and_filters,
            finds_runs_and_task_runs_by_short_id,
            extends_only_held_leases,
            records_attempts_with_logs,
            lists_expired_leases,
            cancel_stops_every_unsettled_task,
            requeue_gives_fresh_tries_and_reopens_the_run,
            joins_promote_once_when_upstreams_finish_together,
            claims_filter_by_queue_and_type,
            queue_stats_count_task_runs_by_state,
            deleted_pipelines_are_hidden_until_saved_again,
            nodes_are_listed_with_what_they_hold,
            task_runs_are_found_by_prefix,
            routing_skips_branches_not_chosen,
            registration_versions_task_code,
            progress_is_fenced_by_lease,
            events_are_read_in_commit_order,
            settled_runs_are_deleted_with_what_hangs_off_them,
            many_claims_share_one_commit,
        );
    };
    (@cases $setup:path; $($case:ident),* $(,)?) => {
        mod conformance {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, _guard) = $setup().await;
                    $crate::testkit::$case(&store).await;
                }
            )*
        }
    };
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(1_800_000_000_000_000).expect("valid time")
}

/// A pipeline of sleep tasks: `(name, needs, priority)`.
pub fn pipeline(name: &str, tasks: &[(&str, &[&str], i32)]) -> Pipeline {
    Pipeline {
        name: name.into(),
        description: None,
        schedule: None,
        tasks: tasks
            .iter()
            .map(|(n, needs, prio)| TaskDef {
                name: (*n).into(),
                task_type: TaskType::Sleep,
                params: json!({"duration": "0s"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                needs: needs.iter().map(|s| (*s).into()).collect(),
                retry: RetryPolicy {
                    max_attempts: 2,
                    jitter: false,
                    ..RetryPolicy::default()
                },
                timeout: None,
                priority: *prio,
                heartbeat_interval: std::time::Duration::from_secs(10),
                idempotency_key: None,
                queue: None,
                allowed_next: Vec::new(),
            })
            .collect(),
    }
}

async fn start(store: &dyn Store, p: &Pipeline, at: DateTime<Utc>) -> (StoredPipeline, Uuid) {
    let stored = store
        .save_pipeline(p, None, at)
        .await
        .expect("save pipeline");
    let run = store
        .create_run(NewRun {
            id: uuid::Uuid::now_v7(),
            pipeline: &stored,
            input: json!({"n": 1}),
            priority: 0,
            idempotency_key: None,
            idempotency_ttl: std::time::Duration::from_secs(3600),
            request_hash: None,
            triggered_by: crate::TriggeredBy::Cli,
            now: at,
        })
        .await
        .expect("create run");
    (stored, run.run.id)
}

async fn claim(
    store: &dyn Store,
    run: Option<Uuid>,
    limit: usize,
    at: DateTime<Utc>,
) -> Vec<ClaimedTask> {
    let req = ClaimRequest {
        owner: "test-worker".into(),
        limit,
        run,
        queues: Vec::new(),
        types: Vec::new(),
    };
    store
        .finish_and_claim(&[], Some(&req), at)
        .await
        .expect("claim")
        .claimed
}

fn finish(
    p: &Pipeline,
    task: &ClaimedTask,
    outcome: Outcome,
    at: DateTime<Utc>,
) -> FinishedAttempt {
    let dag = Dag::new(p).expect("dag");
    let idx = dag.index_of(&task.task_name).expect("task in dag");
    let policy = &p.tasks[idx].retry;
    FinishedAttempt {
        task: task.clone(),
        worker: "test-worker".into(),
        started_at: at,
        finished_at: at,
        log: format!("log of {}", task.task_name),
        transition: on_attempt_finished(&dag, idx, policy, task.tries, outcome, at, 0.0),
        idempotency_key: None,
        reused: false,
        code_version: Some(7),
    }
}

/// Records one finished attempt, claiming nothing.
async fn record(store: &dyn Store, f: FinishedAttempt) -> crate::BatchOutcome {
    store.finish_and_claim(&[f], None, t0()).await.unwrap()
}

async fn states(store: &dyn Store, run: Uuid) -> Vec<(String, TaskState)> {
    store
        .task_runs(run)
        .await
        .expect("task runs")
        .into_iter()
        .map(|t| (t.task_name, t.state))
        .collect()
}

fn names(tasks: &[ClaimedTask]) -> Vec<&str> {
    tasks.iter().map(|t| t.task_name.as_str()).collect()
}

pub async fn saves_pipeline_versions_by_content(store: &dyn Store) {
    let p1 = pipeline("p", &[("a", &[], 0)]);
    let v1 = store.save_pipeline(&p1, Some("src"), t0()).await.unwrap();
    let again = store.save_pipeline(&p1, None, t0()).await.unwrap();
    assert_eq!(
        (v1.version, again.id),
        (1, v1.id),
        "same content keeps its version"
    );
    let p2 = pipeline("p", &[("a", &[], 0), ("b", &["a"], 0)]);
    let v2 = store.save_pipeline(&p2, None, t0()).await.unwrap();
    assert_eq!(v2.version, 2);
    let versions: Vec<i64> = store
        .pipeline_versions("p")
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, vec![1, 2]);
    assert_eq!(store.pipeline("p").await.unwrap().pipeline, p2);
    assert_eq!(
        store
            .pipeline_version(v1.id)
            .await
            .unwrap()
            .source
            .as_deref(),
        Some("src")
    );
    let listed = store.list_pipelines().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|p| (p.name.as_str(), p.version))
            .collect::<Vec<_>>(),
        vec![("p", 2)]
    );
    assert!(matches!(
        store.pipeline("nope").await,
        Err(StoreError::NotFound(_))
    ));
}

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

pub async fn claims_by_priority_then_age(store: &dyn Store) {
    let p = pipeline(
        "prio",
        &[("low", &[], 1), ("high", &[], 9), ("mid", &[], 5)],
    );
    let (_, older) = start(store, &p, t0()).await;
    let (_, newer) = start(store, &p, t0() + Duration::seconds(1)).await;
    let got = claim(store, None, 4, t0() + Duration::seconds(2)).await;
    let order: Vec<(&str, Uuid)> = got
        .iter()
        .map(|t| (t.task_name.as_str(), t.run_id))
        .collect();
    assert_eq!(
        order,
        vec![
            ("high", older),
            ("high", newer),
            ("mid", older),
            ("mid", newer)
        ]
    );
    assert!(got.iter().all(|t| t.attempt == 1 && t.lease_epoch == 1));
    assert_eq!(store.run(older).await.unwrap().state, RunState::Running);
    let rest = claim(store, None, 10, t0() + Duration::seconds(2)).await;
    assert_eq!(names(&rest), vec!["low", "low"]);
    assert!(
        claim(store, None, 10, t0() + Duration::seconds(2))
            .await
            .is_empty(),
        "nothing is claimed twice"
    );
}

pub async fn claims_only_the_requested_run(store: &dyn Store) {
    let p = pipeline("two", &[("a", &[], 0)]);
    let (_, r1) = start(store, &p, t0()).await;
    let (_, r2) = start(store, &p, t0()).await;
    let got = claim(store, Some(r2), 10, t0()).await;
    assert_eq!(got.iter().map(|t| t.run_id).collect::<Vec<_>>(), vec![r2]);
    assert_eq!(store.run(r1).await.unwrap().state, RunState::Pending);
}

pub async fn success_promotes_when_all_needs_succeeded(store: &dyn Store) {
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
    let a = claim(store, Some(run), 10, t0()).await;
    let out = store
        .finish_and_claim(
            &[finish(&p, &a[0], Outcome::Succeeded(json!({"v": 1})), t0())],
            Some(&ClaimRequest {
                owner: "w".into(),
                limit: 10,
                run: Some(run),
                queues: Vec::new(),
                types: Vec::new(),
            }),
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(
        names(&out.claimed),
        vec!["b", "c"],
        "finish and claim in one commit"
    );
    let b = &out.claimed[0];
    let c = &out.claimed[1];
    record(store, finish(&p, b, Outcome::Succeeded(json!(2)), t0())).await;
    assert_eq!(
        states(store, run).await[3].1,
        TaskState::Waiting,
        "d still waits for c"
    );
    let out = store
        .finish_and_claim(
            &[finish(&p, c, Outcome::Succeeded(json!(3)), t0())],
            Some(&ClaimRequest {
                owner: "w".into(),
                limit: 10,
                run: Some(run),
                queues: Vec::new(),
                types: Vec::new(),
            }),
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(names(&out.claimed), vec!["d"]);
    let outputs = store
        .outputs(run, &["a".into(), "b".into(), "d".into()])
        .await
        .unwrap();
    let mut outputs: Vec<(String, Value)> = outputs;
    outputs.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        outputs,
        vec![("a".into(), json!({"v": 1})), ("b".into(), json!(2))],
        "only succeeded tasks have outputs"
    );
    let out = record(
        store,
        finish(&p, &out.claimed[0], Outcome::Succeeded(Value::Null), t0()),
    )
    .await;
    assert_eq!(out.settled_runs, vec![(run, RunState::Succeeded)]);
    let r = store.run(run).await.unwrap();
    assert_eq!((r.state, r.tasks_pending), (RunState::Succeeded, 0));
    assert!(r.finished_at.is_some());
}

pub async fn fences_writes_by_lease_epoch(store: &dyn Store) {
    let p = pipeline("fence", &[("a", &[], 0)]);
    let (_, run) = start(store, &p, t0()).await;
    let got = claim(store, Some(run), 1, t0()).await;
    let mut stale = got[0].clone();
    stale.lease_epoch += 7;
    let out = record(
        store,
        finish(&p, &stale, Outcome::Succeeded(json!("zombie")), t0()),
    )
    .await;
    assert_eq!(out.lease_lost, vec![stale.id]);
    let tr = &store.task_runs(run).await.unwrap()[0];
    assert_eq!(
        (tr.state, tr.output.clone()),
        (TaskState::Running, None),
        "a refused write changes nothing"
    );
    assert!(store.attempts(run, None).await.unwrap().is_empty());
    let out = record(
        store,
        finish(&p, &got[0], Outcome::Succeeded(json!("real")), t0()),
    )
    .await;
    assert!(out.lease_lost.is_empty());
    let again = record(
        store,
        finish(&p, &got[0], Outcome::Succeeded(json!("twice")), t0()),
    )
    .await;
    assert_eq!(
        again.lease_lost.len(),
        1,
        "a finished task cannot finish twice"
    );
    assert_eq!(
        store.task_runs(run).await.unwrap()[0].output,
        Some(json!("real"))
    );
}

pub async fn retries_become_claimable_after_backoff(store: &dyn Store) {
    let p = pipeline("retry", &[("a", &[], 0)]);
    let (_, run) = start(store, &p, t0()).await;
    let got = claim(store, Some(run), 1, t0()).await;
    record(
        store,
        finish(&p, &got[0], Outcome::Failed(Failure::error("flaky")), t0()),
    )
    .await;
    let tr = &store.task_runs(run).await.unwrap()[0];
    assert_eq!(
        (tr.state, tr.error.as_deref()),
        (TaskState::Ready, Some("flaky"))
    );
    assert_eq!(
        store.next_ready_at(Some(run)).await.unwrap(),
        Some(t0() + Duration::seconds(1))
    );
    assert!(
        claim(store, Some(run), 1, t0() + Duration::milliseconds(999))
            .await
            .is_empty(),
        "not before the backoff"
    );
    let second = claim(store, Some(run), 1, t0() + Duration::seconds(1)).await;
    assert_eq!((second[0].attempt, second[0].lease_epoch), (2, 2));
    assert_eq!(second[0].id, got[0].id, "same task run, new attempt");
}

/// A task whose worker was lost is claimed again before tasks that became ready after it did,
/// however long it ran; an ordinary failure queues behind them after its backoff.
pub async fn a_lost_attempt_keeps_its_place_in_the_queue(store: &dyn Store) {
    let mut p = pipeline("lost", &[("first", &[], 0)]);
    p.tasks[0].retry.max_attempts = 5;
    let (_, old_run) = start(store, &p, t0()).await;
    let lost = claim(store, Some(old_run), 1, t0()).await;
    // While it runs, a queue of newer work builds up.
    let later = pipeline("later", &[("x", &[], 0), ("y", &[], 0)]);
    start(store, &later, t0() + Duration::seconds(5)).await;
    let at = t0() + Duration::seconds(30);
    let gone = Failure::new(orbit_core::transition::FailureKind::WorkerLost, "gone");
    store
        .finish_and_claim(&[finish(&p, &lost[0], Outcome::Failed(gone), at)], None, at)
        .await
        .unwrap();
    let next = claim(store, None, 1, at).await;
    assert_eq!(
        names(&next),
        ["first"],
        "the lost attempt's task goes first"
    );
    assert_eq!(next[0].attempt, 2);
    // An ordinary failure does not keep its place.
    let err = Failure::error("flaky");
    let at = at + Duration::seconds(1);
    store
        .finish_and_claim(&[finish(&p, &next[0], Outcome::Failed(err), at)], None, at)
        .await
        .unwrap();
    let after_backoff = claim(store, None, 3, at + Duration::seconds(10)).await;
    assert_eq!(names(&after_backoff), ["x", "y", "first"]);
}

pub async fn dead_task_cancels_downstream_and_fails_run(store: &dyn Store) {
    let p = pipeline(
        "dead",
        &[
            ("a", &[], 0),
            ("b", &["a"], 0),
            ("c", &["b"], 0),
            ("side", &[], 0),
        ],
    );
    let (_, run) = start(store, &p, t0()).await;
    let got = claim(store, Some(run), 10, t0()).await;
    assert_eq!(names(&got), vec!["a", "side"]);
    let out = record(
        store,
        finish(
            &p,
            &got[0],
            Outcome::Failed(Failure::fatal("bad input")),
            t0(),
        ),
    )
    .await;
    assert!(out.settled_runs.is_empty(), "side is still running");
    assert_eq!(
        states(store, run).await,
        vec![
            ("a".into(), TaskState::Dead),
            ("b".into(), TaskState::Cancelled),
            ("c".into(), TaskState::Cancelled),
            ("side".into(), TaskState::Running)
        ]
    );
    let out = record(
        store,
        finish(&p, &got[1], Outcome::Succeeded(json!(1)), t0()),
    )
    .await;
    assert_eq!(out.settled_runs, vec![(run, RunState::Failed)]);
    let r = store.run(run).await.unwrap();
    assert_eq!(
        (r.state, r.tasks_dead, r.tasks_pending),
        (RunState::Failed, 1, 0)
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

pub async fn extends_only_held_leases(store: &dyn Store) {
    let p = pipeline("lease", &[("a", &[], 0), ("b", &[], 0)]);
    let (_, run) = start(store, &p, t0()).await;
    let got = claim(store, Some(run), 2, t0()).await;
    let later = t0() + Duration::seconds(5);
    let lost = store
        .extend_leases(
            &[
                (got[0].id, got[0].lease_epoch),
                (got[1].id, got[1].lease_epoch + 1),
            ],
            later,
        )
        .await
        .unwrap();
    assert_eq!(lost, vec![got[1].id]);
    let trs = store.task_runs(run).await.unwrap();
    assert_eq!(
        trs[0].lease_expires_at,
        Some(later + Duration::seconds(20)),
        "lease is twice the heartbeat interval"
    );
    assert_eq!(trs[1].lease_expires_at, Some(t0() + Duration::seconds(20)));
}

pub async fn records_attempts_with_logs(store: &dyn Store) {
    let p = pipeline("att", &[("a", &[], 0)]);
    let (_, run) = start(store, &p, t0()).await;
    let first = claim(store, Some(run), 1, t0()).await;
    record(
        store,
        finish(&p, &first[0], Outcome::Failed(Failure::error("boom")), t0()),
    )
    .await;
    let second = claim(store, Some(run), 1, t0() + Duration::seconds(2)).await;
    record(
        store,
        finish(&p, &second[0], Outcome::Succeeded(json!("ok")), t0()),
    )
    .await;
    let attempts = store.attempts(run, Some("a")).await.unwrap();
    let summary: Vec<(u32, &str, Option<&str>)> = attempts
        .iter()
        .map(|a| (a.attempt, a.outcome.as_str(), a.error.as_deref()))
        .collect();
    assert_eq!(
        summary,
        vec![(1, "error", Some("boom")), (2, "succeeded", None)]
    );
    assert_eq!(attempts[1].log, "log of a");
}

pub async fn lists_expired_leases(store: &dyn Store) {
    let p = pipeline("leases", &[("a", &[], 0), ("b", &[], 0)]);
    let (_, run) = start(store, &p, t0()).await;
    let got = claim(store, Some(run), 2, t0()).await;
    let all = store
        .leased(&crate::LeaseFilter {
            run: Some(run),
            expired_before: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert!(
        all.iter()
            .all(|l| l.owner == "test-worker" && l.task.claimed_at == t0())
    );
    store
        .extend_leases(
            &[(got[0].id, got[0].lease_epoch)],
            t0() + Duration::seconds(15),
        )
        .await
        .unwrap();
    let expired = store
        .leased(&crate::LeaseFilter {
            run: None,
            expired_before: Some(t0() + Duration::seconds(21)),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(
        expired.iter().map(|l| l.task.id).collect::<Vec<_>>(),
        vec![got[1].id],
        "only b's lease expired"
    );
    assert_eq!(expired[0].task.lease_epoch, got[1].lease_epoch);
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

pub async fn joins_promote_once_when_upstreams_finish_together(store: &dyn Store) {
    let p = pipeline(
        "join",
        &[("a", &[], 0), ("b", &[], 0), ("c", &["a", "b"], 0)],
    );
    let (_, run) = start(store, &p, t0()).await;
    let ab = claim(store, Some(run), 10, t0()).await;
    assert_eq!(ab.len(), 2);
    let finished: Vec<FinishedAttempt> = ab
        .iter()
        .map(|t| finish(&p, t, Outcome::Succeeded(json!(1)), t0()))
        .collect();
    let out = store
        .finish_and_claim(&finished, Some(&ClaimRequest::any("w", 10)), t0())
        .await
        .unwrap();
    assert_eq!(
        names(&out.claimed),
        vec!["c"],
        "both needs met in one batch make the join ready once"
    );
    let c = &out.claimed[0];
    let out = record(store, finish(&p, c, Outcome::Succeeded(json!(3)), t0())).await;
    assert_eq!(out.settled_runs, vec![(run, RunState::Succeeded)]);
}

pub async fn claims_filter_by_queue_and_type(store: &dyn Store) {
    let mut p = pipeline("queues", &[("cpu", &[], 0), ("gpu", &[], 0)]);
    p.tasks[1].queue = Some("gpu".into());
    let (_, run) = start(store, &p, t0()).await;
    let mut req = ClaimRequest::any("w", 10);
    req.types = vec!["shell".into()];
    let none = store.finish_and_claim(&[], Some(&req), t0()).await.unwrap();
    assert!(none.claimed.is_empty(), "no shell tasks here");
    req.types = vec!["sleep".into()];
    req.queues = vec!["gpu".into()];
    let gpu = store.finish_and_claim(&[], Some(&req), t0()).await.unwrap();
    assert_eq!(names(&gpu.claimed), vec!["gpu"]);
    let rest = claim(store, Some(run), 10, t0()).await;
    assert_eq!(names(&rest), vec!["cpu"]);
    let tr = store.task_runs(run).await.unwrap();
    assert_eq!(tr[0].queue, "default");
    assert_eq!(tr[1].queue, "gpu");
    assert_eq!(tr[1].task_type, "sleep");
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
    let recent = store
        .recent_attempts(t0() - Duration::seconds(1), 10)
        .await
        .unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].outcome, "fatal");
}

pub async fn deleted_pipelines_are_hidden_until_saved_again(store: &dyn Store) {
    let p = pipeline("gone", &[("a", &[], 0)]);
    let (stored, run) = start(store, &p, t0()).await;
    assert_eq!(store.delete_pipeline("gone", t0()).await.unwrap(), 1);
    assert!(matches!(
        store.pipeline("gone").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.list_pipelines().await.unwrap().is_empty());
    assert_eq!(
        store.run(run).await.unwrap().pipeline_id,
        stored.id,
        "runs stay"
    );
    assert_eq!(store.delete_pipeline("gone", t0()).await.unwrap(), 0);
    let again = store.save_pipeline(&p, None, t0()).await.unwrap();
    assert_eq!(
        again.version, 2,
        "saving it again brings it back as a new version"
    );
    assert_eq!(store.pipeline("gone").await.unwrap().id, again.id);
}

pub async fn nodes_are_listed_with_what_they_hold(store: &dyn Store) {
    let node = NodeInfo {
        id: "test-worker".into(),
        kind: "worker".into(),
        host: "h".into(),
        pid: 42,
        version: "0.1.0".into(),
        queues: vec!["gpu".into()],
        concurrency: 8,
        heartbeat_ms: 5000,
        service: None,
    };
    store.node_heartbeat(&node, t0()).await.unwrap();
    let p = pipeline("nodes", &[("a", &[], 0)]);
    let (_, run) = start(store, &p, t0()).await;
    claim(store, Some(run), 1, t0()).await;
    store
        .node_heartbeat(&node, t0() + Duration::seconds(5))
        .await
        .unwrap();
    let nodes = store.nodes(10).await.unwrap();
    assert_eq!(nodes.len(), 1);
    let n = &nodes[0];
    assert_eq!(n.info.queues, vec!["gpu".to_string()]);
    assert_eq!(n.started_at, t0());
    assert_eq!(n.last_seen_at, t0() + Duration::seconds(5));
    assert_eq!(n.running, 1, "it holds the task it claimed");
    store
        .node_stopped("test-worker", t0() + Duration::seconds(6))
        .await
        .unwrap();
    assert!(store.nodes(10).await.unwrap()[0].stopped_at.is_some());
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

pub async fn routing_skips_branches_not_chosen(store: &dyn Store) {
    // route -> a -> a2 -> join; route -> b -> join; c after join.
    let mut p = pipeline(
        "routing",
        &[
            ("route", &[], 0),
            ("a", &["route"], 0),
            ("a2", &["a"], 0),
            ("b", &["route"], 0),
            ("join", &["a2", "b"], 0),
            ("c", &["join"], 0),
        ],
    );
    p.tasks[0].allowed_next = vec!["a".into(), "b".into()];
    let (_, run) = start(store, &p, t0()).await;
    let route = claim(store, Some(run), 1, t0()).await;
    let routed = Outcome::Routed {
        output: json!({"went": "b"}),
        allowed: p.tasks[0].allowed_next.clone(),
        run_next: vec!["b".into()],
    };
    let out = store
        .finish_and_claim(
            &[finish(&p, &route[0], routed, t0())],
            Some(&ClaimRequest::any("w", 10)),
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(
        names(&out.claimed),
        vec!["b"],
        "only the chosen branch runs"
    );
    let st = states(store, run).await;
    assert!(st.contains(&("a".into(), TaskState::Skipped)), "{st:?}");
    assert!(st.contains(&("a2".into(), TaskState::Skipped)), "{st:?}");
    let out = store
        .finish_and_claim(
            &[finish(
                &p,
                &out.claimed[0],
                Outcome::Succeeded(json!(1)),
                t0(),
            )],
            Some(&ClaimRequest::any("w", 10)),
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(
        names(&out.claimed),
        vec!["join"],
        "a join runs when its chosen upstream succeeded and the other was skipped"
    );
    let out = store
        .finish_and_claim(
            &[finish(
                &p,
                &out.claimed[0],
                Outcome::Succeeded(json!(2)),
                t0(),
            )],
            Some(&ClaimRequest::any("w", 10)),
            t0(),
        )
        .await
        .unwrap();
    let out = record(
        store,
        finish(&p, &out.claimed[0], Outcome::Succeeded(json!(3)), t0()),
    )
    .await;
    assert_eq!(out.settled_runs, vec![(run, RunState::Succeeded)]);
    let r = store.run(run).await.unwrap();
    assert_eq!((r.tasks_pending, r.tasks_dead), (0, 0));
    let attempts = store.attempts(run, Some("route")).await.unwrap();
    assert_eq!(
        attempts[0].code_version,
        Some(7),
        "attempts keep their code version"
    );
}

pub async fn registration_versions_task_code(store: &dyn Store) {
    use orbit_core::protocol::{Registration, TaskRegistration};
    let reg = |hash: &str| Registration {
        service_id: "billing".into(),
        worker_id: "w1".into(),
        version: Some("1.0".into()),
        url: None,
        concurrency: 4,
        tasks: vec![
            TaskRegistration {
                name: "charge".into(),
                code_hash: hash.into(),
                retries: Some(3),
                ..TaskRegistration::default()
            },
            TaskRegistration {
                name: "refund".into(),
                code_hash: "r1".into(),
                ..TaskRegistration::default()
            },
        ],
    };
    let first = store.register_service(&reg("h1"), t0()).await.unwrap();
    assert!(first.iter().all(|t| t.changed && t.code_version == 1));
    let same = store
        .register_service(&reg("h1"), t0() + Duration::seconds(1))
        .await
        .unwrap();
    assert!(same.iter().all(|t| !t.changed && t.code_version == 1));
    let bumped = store
        .register_service(&reg("h2"), t0() + Duration::seconds(2))
        .await
        .unwrap();
    let charge = bumped.iter().find(|t| t.name == "charge").unwrap();
    assert_eq!((charge.code_version, charge.changed), (2, true));
    let refund = bumped.iter().find(|t| t.name == "refund").unwrap();
    assert_eq!((refund.code_version, refund.changed), (1, false));

    let history = store.task_history("charge").await.unwrap();
    let versions: Vec<(i64, &str)> = history
        .iter()
        .map(|c| (c.code_version, c.code_hash.as_str()))
        .collect();
    assert_eq!(versions, vec![(1, "h1"), (2, "h2")]);
    assert_eq!(history[1].created_at, t0() + Duration::seconds(2));

    let task = store.service_task("charge").await.unwrap();
    assert_eq!(task.options.retries, Some(3));
    assert_eq!(task.service_id, "billing");
    assert!(matches!(
        store.service_task("nope").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.service_tasks(Some("billing")).await.unwrap().len(), 2);
    assert_eq!(store.service_tasks(Some("other")).await.unwrap().len(), 0);
    let services = store.services().await.unwrap();
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].version.as_deref(), Some("1.0"));
    let worker = NodeInfo {
        id: "billing@h:1".into(),
        kind: "service".into(),
        host: "h".into(),
        pid: 1,
        version: "1.0".into(),
        queues: vec!["charge".into()],
        concurrency: 4,
        heartbeat_ms: 5000,
        service: Some("billing".into()),
    };
    store
        .node_heartbeat(&worker, t0() + Duration::seconds(9))
        .await
        .unwrap();
    assert_eq!(
        store.services().await.unwrap()[0].last_seen_at,
        t0() + Duration::seconds(9)
    );
}

pub async fn progress_is_fenced_by_lease(store: &dyn Store) {
    let p = pipeline("progress", &[("a", &[], 0)]);
    let (_, run) = start(store, &p, t0()).await;
    let a = &claim(store, Some(run), 1, t0()).await[0];
    assert!(
        store
            .set_progress(a.id, a.lease_epoch, 0.5, Some("half"), t0())
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_progress(a.id, a.lease_epoch + 1, 0.9, None, t0())
            .await
            .unwrap(),
        "a stale epoch changes nothing"
    );
    let tr = store.task_run(&a.id.to_string()).await.unwrap();
    assert_eq!(tr.progress, Some(0.5));
    assert_eq!(tr.progress_message.as_deref(), Some("half"));
}

pub async fn events_are_read_in_commit_order(store: &dyn Store) {
    let before = store.latest_event_id().await.unwrap();
    let mut changes = store.change_signal();
    changes.borrow_and_update();
    let p = pipeline("evented", &[("a", &[], 0), ("b", &["a"], 0)]);
    // On PostgreSQL the signal comes back through LISTEN, so it is awaited, not assumed.
    let wait = std::time::Duration::from_secs(5);
    let (_, run) = start(store, &p, t0()).await;
    tokio::time::timeout(wait, changes.changed())
        .await
        .expect("creating a run signals a change")
        .unwrap();
    let a = claim(store, Some(run), 10, t0()).await;
    tokio::time::timeout(wait, changes.changed())
        .await
        .expect("claiming signals a change")
        .unwrap();
    record(store, finish(&p, &a[0], Outcome::Succeeded(json!(1)), t0())).await;
    tokio::time::timeout(wait, changes.changed())
        .await
        .expect("finishing an attempt signals a change")
        .unwrap();

    let kinds = |events: &[EventRecord]| -> Vec<(String, Option<String>)> {
        events
            .iter()
            .map(|e| (e.kind.clone(), e.task.clone()))
            .collect()
    };
    let events = store.events(0, Some(run), 100).await.unwrap();
    let mut seen = kinds(&events);
    // The claim's two events share one commit, in no promised order.
    seen[1..3].sort();
    assert_eq!(
        seen,
        vec![
            ("run_created".to_owned(), None),
            ("run_started".to_owned(), None),
            ("task_started".to_owned(), Some("a".to_owned())),
            ("task_succeeded".to_owned(), Some("a".to_owned())),
        ]
    );
    assert!(events.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    assert!(
        events
            .iter()
            .all(|e| e.run_id == Some(run) && e.id > before)
    );
    assert!(store.latest_event_id().await.unwrap() >= events[3].id);

    // Resuming after an id gives only what came later; the limit caps a page.
    let rest = store.events(events[1].id, Some(run), 100).await.unwrap();
    assert_eq!(rest, events[2..].to_vec());
    let page = store.events(events[0].id, Some(run), 1).await.unwrap();
    assert_eq!(page, vec![events[1].clone()]);
    // Unfiltered, this run's events come in the same order among any others.
    let all: Vec<EventRecord> = store
        .events(before, None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.run_id == Some(run))
        .collect();
    assert_eq!(all, events);
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

/// A group commit: finished attempts of several requests and several claimers' claims in one
/// commit. Each claim gets its own tasks, never one another got, in priority order across
/// them; each finished attempt is fenced on its own.
pub async fn many_claims_share_one_commit(store: &dyn Store) {
    let p = pipeline(
        "group",
        &[
            ("a", &[], 9),
            ("b", &[], 8),
            ("c", &[], 7),
            ("d", &[], 6),
            ("e", &[], 5),
            ("after", &["a"], 0),
        ],
    );
    let (_, run) = start(store, &p, t0()).await;
    let first = claim(store, Some(run), 1, t0()).await;
    assert_eq!(names(&first), vec!["a"]);
    let mut stale = first[0].clone();
    stale.lease_epoch += 1;
    let done = [
        finish(&p, &first[0], Outcome::Succeeded(json!(1)), t0()),
        finish(&p, &stale, Outcome::Succeeded(json!(2)), t0()),
    ];
    let req = |owner: &str, limit| ClaimRequest {
        owner: owner.into(),
        limit,
        run: Some(run),
        queues: Vec::new(),
        types: Vec::new(),
    };
    let claims = [req("w1", 2), req("w2", 0), req("w3", 10)];
    let (outcome, each) = store
        .finish_and_claim_many(&done, &claims, t0())
        .await
        .expect("group commit");
    assert_eq!(
        outcome.lease_lost,
        vec![stale.id],
        "only the stale attempt is refused"
    );
    assert_eq!(each.len(), 3, "an answer per claim, in order");
    assert_eq!(names(&each[0]), vec!["b", "c"]);
    assert!(each[1].is_empty(), "a claim for none gets none");
    // `after` became ready in this very commit, from `a`'s success: the later claim sees it.
    assert_eq!(names(&each[2]), vec!["d", "e", "after"]);
    let by_owner = store
        .leased(&crate::LeaseFilter {
            run: Some(run),
            expired_before: None,
            limit: 100,
        })
        .await
        .expect("leases");
    let owner_of = |task: &str| {
        by_owner
            .iter()
            .find(|l| l.task.task_name == task)
            .map(|l| l.owner.clone())
    };
    assert_eq!(owner_of("b").as_deref(), Some("w1"));
    assert_eq!(owner_of("after").as_deref(), Some("w3"));
    assert!(
        claim(store, Some(run), 10, t0()).await.is_empty(),
        "nothing was claimed twice"
    );
}
