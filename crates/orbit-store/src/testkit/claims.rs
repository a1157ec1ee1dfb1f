//! Conformance: claims (order, filters, sharing one commit), leases and their fencing.

use crate::{ClaimRequest, Store};
use chrono::Duration;
use orbit_core::transition::Outcome;
use orbit_core::{RunState, TaskState};
use serde_json::json;
use uuid::Uuid;

use super::*;

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

fn keyed(p: &mut Pipeline, task: usize, key: &str, limit: impl Into<Option<u32>>) {
    p.tasks[task].concurrency = Some(orbit_core::pipeline::Concurrency {
        key: key.into(),
        limit: limit.into(),
    });
}

pub async fn concurrency_keys_cap_running_attempts(store: &dyn Store) {
    // Five tasks share key `k` (2 at once), two share `{{ input.c }}` (1 at once); one has none.
    // The keyed ones come first in the queue, so a backlog of a full key is passed over.
    let tasks: Vec<(String, i32)> = (0..5)
        .map(|i| (format!("k{i}"), 10))
        .chain([("c0".to_string(), 5), ("c1".to_string(), 5)])
        .chain([("free".to_string(), 0)])
        .collect();
    let spec: Vec<(&str, &[&str], i32)> = tasks
        .iter()
        .map(|(n, prio)| (n.as_str(), &[][..], *prio))
        .collect();
    let mut p = pipeline("keyed", &spec);
    for i in 0..5 {
        keyed(&mut p, i, "k", 2);
    }
    keyed(&mut p, 5, "cust-{{ input.n }}", 1);
    keyed(&mut p, 6, "cust-{{ input.n }}", 1);
    let (_, run) = start(store, &p, t0()).await;
    let first = claim(store, None, 10, t0()).await;
    assert_eq!(names(&first), ["k0", "k1", "c0", "free"]);
    assert!(
        claim(store, None, 10, t0()).await.is_empty(),
        "every key is full"
    );
    let keys: Vec<Option<String>> = store
        .task_runs(run)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.task_name == "c0")
        .map(|t| t.concurrency_key)
        .collect();
    assert_eq!(
        keys,
        [Some("cust-1".to_string())],
        "rendered from the input"
    );
    // A finished attempt frees its key's slot, for the next task of that key only.
    let at = t0() + Duration::seconds(1);
    store
        .finish_and_claim(
            &[finish(&p, &first[0], Outcome::Succeeded(json!(1)), at)],
            None,
            at,
        )
        .await
        .unwrap();
    assert_eq!(names(&claim(store, None, 10, at).await), ["k2"]);
    // So does a lost one (the reaper's failure of an expired lease).
    let gone = orbit_core::transition::Failure::new(
        orbit_core::transition::FailureKind::WorkerLost,
        "gone",
    );
    store
        .finish_and_claim(
            &[finish(&p, &first[2], Outcome::Failed(gone), at)],
            None,
            at,
        )
        .await
        .unwrap();
    assert_eq!(
        names(&claim(store, None, 10, at).await),
        ["c0"],
        "the lost task keeps its place, ahead of c1"
    );
}

pub async fn a_key_that_cannot_be_rendered_refuses_the_run(store: &dyn Store) {
    let mut p = pipeline("needs-input", &[("a", &[], 0)]);
    keyed(&mut p, 0, "{{ input.customerId }}", 1);
    let stored = store.save_pipeline(&p, None, t0()).await.unwrap();
    let err = store
        .create_run(crate::NewRun {
            id: Uuid::now_v7(),
            pipeline: &stored,
            input: json!({}),
            priority: 0,
            idempotency_key: None,
            idempotency_ttl: std::time::Duration::from_secs(60),
            request_hash: None,
            triggered_by: crate::TriggeredBy::Cli,
            parent: None,
            rerun: None,
            now: t0(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, crate::StoreError::Invalid(m) if m.contains("task `a`") && m.contains("customerId")),
        "{err}"
    );
    assert!(
        store
            .list_runs(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn named_key_limits_decide_what_runs(store: &dyn Store) {
    // `api` declares no limit: it waits for a named one. `k2` declares 2.
    let mut p = pipeline(
        "named",
        &[
            ("a0", &[], 9),
            ("a1", &[], 9),
            ("a2", &[], 9),
            ("b0", &[], 0),
            ("b1", &[], 0),
            ("b2", &[], 0),
        ],
    );
    for i in 0..3 {
        keyed(&mut p, i, "api", None);
        keyed(&mut p, i + 3, "k2", 2);
    }
    start(store, &p, t0()).await;
    assert_eq!(names(&claim(store, None, 10, t0()).await), ["b0", "b1"]);
    assert!(
        !store.set_key_limit("api", Some(2), t0()).await.unwrap(),
        "new"
    );
    assert_eq!(names(&claim(store, None, 10, t0()).await), ["a0", "a1"]);
    // A named limit overrides the declared one, down as well as up.
    store.set_key_limit("k2", Some(3), t0()).await.unwrap();
    assert_eq!(names(&claim(store, None, 10, t0()).await), ["b2"]);
    assert!(
        store.set_key_limit("k2", Some(1), t0()).await.unwrap(),
        "replaced"
    );
    let usage = |key: &str, running, limit| crate::KeyUsage {
        key: key.into(),
        running,
        runs_running: 0,
        limit,
    };
    assert_eq!(
        store.key_limits().await.unwrap(),
        [usage("api", 2, Some(2)), usage("k2", 3, Some(1))]
    );
    assert_eq!(
        store
            .key_usage(&["api".into(), "nope".into()])
            .await
            .unwrap(),
        [usage("api", 2, Some(2)), usage("nope", 0, None)]
    );
    assert!(store.set_key_limit("api", None, t0()).await.unwrap());
    assert_eq!(store.key_limits().await.unwrap(), [usage("k2", 3, Some(1))]);
    assert!(
        claim(store, None, 10, t0()).await.is_empty(),
        "a2 waits again"
    );
}

pub async fn a_pipeline_key_holds_further_runs_pending(store: &dyn Store) {
    let mut p = pipeline("batch", &[("a", &[], 0), ("b", &["a"], 0)]);
    p.concurrency = Some(orbit_core::pipeline::Concurrency {
        key: "tenant-{{ input.n }}".into(),
        limit: Some(1),
    });
    let (_, first) = start(store, &p, t0()).await;
    let (_, second) = start(store, &p, t0() + Duration::seconds(1)).await;
    let at = t0() + Duration::seconds(2);
    let got = claim(store, None, 10, at).await;
    assert_eq!(names(&got), ["a"]);
    assert_eq!(
        got[0].run_id, first,
        "the older run takes the key's one slot"
    );
    let run = store.run(second).await.unwrap();
    assert_eq!(run.state, RunState::Pending);
    assert_eq!(run.concurrency_key.as_deref(), Some("tenant-1"));
    // The running run goes on; the other waits until it settles.
    let out = |t: &ClaimedTask| finish(&p, t, Outcome::Succeeded(json!(1)), at);
    store
        .finish_and_claim(&[out(&got[0])], None, at)
        .await
        .unwrap();
    let b = claim(store, None, 10, at).await;
    assert_eq!((names(&b), b[0].run_id), (vec!["b"], first));
    store
        .finish_and_claim(&[out(&b[0])], None, at)
        .await
        .unwrap();
    assert_eq!(store.run(first).await.unwrap().state, RunState::Succeeded);
    let next = claim(store, None, 10, at).await;
    assert_eq!((names(&next), next[0].run_id), (vec!["a"], second));
    assert_eq!(store.run(second).await.unwrap().state, RunState::Running);
}

fn rated(p: &mut Pipeline, task: usize, key: &str, limit: u32, per_ms: u64) {
    p.tasks[task].rate_limit = Some(orbit_core::pipeline::RateLimit {
        key: key.into(),
        per: std::time::Duration::from_millis(per_ms),
        limit,
    });
}

pub async fn rate_limits_spend_tokens_and_refill(store: &dyn Store) {
    // Six tasks share `api-{{ input.n }}` at 2 per second, ahead of two without a limit.
    let tasks: Vec<(String, i32)> = (0..6)
        .map(|i| (format!("r{i}"), 10))
        .chain((0..2).map(|i| (format!("free{i}"), 0)))
        .collect();
    let spec: Vec<(&str, &[&str], i32)> = tasks
        .iter()
        .map(|(n, prio)| (n.as_str(), &[][..], *prio))
        .collect();
    let mut p = pipeline("rated", &spec);
    for i in 0..6 {
        rated(&mut p, i, "api-{{ input.n }}", 2, 1000);
    }
    let (_, run) = start(store, &p, t0()).await;
    let keys: Vec<Option<String>> = store
        .task_runs(run)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.rate_key)
        .collect();
    assert_eq!(keys[0].as_deref(), Some("api-1"), "rendered from the input");
    let req = |limit| ClaimRequest::any("test-worker", limit);
    let first = store
        .finish_and_claim(&[], Some(&req(3)), t0())
        .await
        .unwrap();
    assert_eq!(names(&first.claimed), ["r0", "r1"], "a full bucket");
    assert!(first.cut_short, "cut short by a key: claim again");
    assert_eq!(
        first.wake_at.map(|t| (t - t0()).num_milliseconds()),
        Some(500),
        "the next token comes after half a second"
    );
    assert_eq!(
        names(&claim(store, None, 10, t0()).await),
        ["free0", "free1"],
        "a spent key's backlog is passed over"
    );
    let at = |ms| t0() + Duration::milliseconds(ms);
    assert!(
        claim(store, None, 10, at(499)).await.is_empty(),
        "no whole token yet"
    );
    assert_eq!(names(&claim(store, None, 10, at(500)).await), ["r2"]);
    assert_eq!(
        names(&claim(store, None, 10, at(1500)).await),
        ["r3", "r4"],
        "two tokens in the second after"
    );
    let last = store
        .finish_and_claim(&[], Some(&req(10)), at(60_000))
        .await
        .unwrap();
    assert_eq!(
        names(&last.claimed),
        ["r5"],
        "a bucket never holds more than its limit"
    );
    assert_eq!(last.wake_at, None, "no task waits for a token");
    let key = ["api-1".to_string()];
    let bucket = &store.rate_buckets(&key).await.unwrap()[0];
    assert_eq!(bucket.tokens_at(at(60_000)), 1.0, "one token spent of two");
    store.forget_attempt_cells(at(60_999)).await.unwrap();
    assert_eq!(
        store.rate_buckets(&key).await.unwrap().len(),
        1,
        "not full yet"
    );
    store.forget_attempt_cells(at(61_001)).await.unwrap();
    assert!(
        store.rate_buckets(&key).await.unwrap().is_empty(),
        "a full bucket is forgotten"
    );
}

pub async fn a_throttled_attempt_costs_no_retry(store: &dyn Store) {
    let mut p = pipeline("throttled", &[("call", &[], 0)]);
    p.tasks[0].retry.max_attempts = 1;
    let (_, run) = start(store, &p, t0()).await;
    let got = claim(store, Some(run), 1, t0()).await;
    let later =
        orbit_core::transition::Failure::throttled("429", std::time::Duration::from_secs(2));
    store
        .finish_and_claim(
            &[finish(&p, &got[0], Outcome::Failed(later), t0())],
            None,
            t0(),
        )
        .await
        .unwrap();
    let tr = &store.task_runs(run).await.unwrap()[0];
    assert_eq!(tr.state, TaskState::Ready, "not dead with no retries left");
    assert_eq!(tr.ready_at, Some(t0() + Duration::seconds(2)));
    let at = t0() + Duration::seconds(2);
    let again = claim(store, Some(run), 1, at).await;
    assert_eq!(
        (again[0].attempt, again[0].tries),
        (2, 1),
        "the second attempt is its first try"
    );
    let err = orbit_core::transition::Failure::error("500");
    store
        .finish_and_claim(&[finish(&p, &again[0], Outcome::Failed(err), at)], None, at)
        .await
        .unwrap();
    let tr = &store.task_runs(run).await.unwrap()[0];
    assert_eq!(
        tr.state,
        TaskState::Dead,
        "a real failure spends the only try"
    );
    let attempts = store.attempts(run, Some("call")).await.unwrap();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["throttled", "error"]);
}

/// An attempt of `task` that ended with `transition` at `at` (for children and expansions,
/// which the pipeline's DAG does not name).
fn ended(
    task: &ClaimedTask,
    transition: orbit_core::transition::Transition,
    at: chrono::DateTime<chrono::Utc>,
) -> crate::FinishedAttempt {
    crate::FinishedAttempt {
        task: task.clone(),
        worker: "test-worker".into(),
        started_at: at,
        finished_at: at,
        log: String::new(),
        transition,
        idempotency_key: None,
        reused: false,
        code_version: Some(1),
    }
}

pub async fn map_children_are_made_once_and_gathered(store: &dyn Store) {
    use orbit_core::transition::{Failure, Transition};
    let p = pipeline("mapped", &[("m", &[], 0), ("after", &["m"], 0)]);
    let (_, run) = start(store, &p, t0()).await;
    let got = claim(store, Some(run), 1, t0()).await;
    let expand = ended(
        &got[0],
        Transition::Expand {
            items: vec![json!({"n": 1}), json!("two"), json!(3)],
        },
        t0(),
    );
    // The same expansion twice in one commit, then again: children are made once.
    let out = store
        .finish_and_claim(&[expand.clone(), expand.clone()], None, t0())
        .await
        .unwrap();
    assert_eq!(
        out.lease_lost,
        [got[0].id],
        "the duplicate is refused by its fence"
    );
    let again = store.finish_and_claim(&[expand], None, t0()).await.unwrap();
    assert_eq!(again.lease_lost, [got[0].id]);
    let r = store.run(run).await.unwrap();
    assert_eq!(
        (r.tasks_total, r.tasks_pending),
        (5, 5),
        "two tasks and three children"
    );
    let children = claim(store, Some(run), 10, t0()).await;
    assert_eq!(names(&children), ["m[0]", "m[1]", "m[2]"]);
    let items: Vec<_> = children.iter().map(|c| c.item.clone()).collect();
    assert_eq!(
        items,
        [Some(json!({"n": 1})), Some(json!("two")), Some(json!(3))]
    );
    let page = crate::TaskRunPage {
        children_of: Some("m".into()),
        limit: 10,
        ..Default::default()
    };
    let listed = store.task_runs_page(run, &page).await.unwrap();
    assert_eq!(
        listed.iter().map(|t| t.map_index).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)]
    );
    let own = store
        .task_runs_page(
            run,
            &crate::TaskRunPage {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        own.iter().map(|t| t.task_name.as_str()).collect::<Vec<_>>(),
        ["m", "after"],
        "children are listed apart"
    );
    // Two succeed, one dies without failing fast: the parent is ready to gather.
    let ok = |i: usize, v: i64| {
        ended(
            &children[i],
            Transition::Succeed {
                output: json!(v),
                promote: vec!["m".into()],
                skip: Vec::new(),
            },
            t0(),
        )
    };
    let dead = ended(
        &children[1],
        Transition::Dead {
            failure: Failure::fatal("no"),
            cancel: Vec::new(),
        },
        t0(),
    );
    store
        .finish_and_claim(&[ok(0, 10), dead, ok(2, 30)], None, t0())
        .await
        .unwrap();
    let results = store.children(run, "m").await.unwrap();
    let states: Vec<(u32, TaskState, Option<serde_json::Value>)> = results
        .iter()
        .map(|c| (c.index, c.state, c.output.clone()))
        .collect();
    assert_eq!(
        states,
        [
            (0, TaskState::Succeeded, Some(json!(10))),
            (1, TaskState::Dead, None),
            (2, TaskState::Succeeded, Some(json!(30)))
        ]
    );
    let counts = store.child_counts(run).await.unwrap();
    assert_eq!(
        counts
            .iter()
            .map(|c| (c.state, c.count))
            .collect::<Vec<_>>(),
        [(TaskState::Dead, 1), (TaskState::Succeeded, 2)]
    );
    assert!(
        store.dead_letters(10).await.unwrap().is_empty(),
        "the parent decides: no entry of the child's own"
    );
    let gather = claim(store, Some(run), 10, t0()).await;
    assert_eq!(names(&gather), ["m"]);
    assert_eq!(
        (gather[0].attempt, gather[0].tries),
        (2, 1),
        "the expansion spent no try"
    );
    store
        .finish_and_claim(
            &[finish(
                &p,
                &gather[0],
                Outcome::Succeeded(json!([10, null, 30])),
                t0(),
            )],
            None,
            t0(),
        )
        .await
        .unwrap();
    let last = claim(store, Some(run), 10, t0()).await;
    store
        .finish_and_claim(
            &[finish(&p, &last[0], Outcome::Succeeded(json!(1)), t0())],
            None,
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.run(run).await.unwrap().state,
        RunState::Succeeded,
        "a child the parent forgave fails nothing"
    );
}

pub async fn a_child_failing_fast_cancels_its_siblings(store: &dyn Store) {
    use orbit_core::transition::{Failure, Transition};
    let p = pipeline("fast", &[("m", &[], 0), ("after", &["m"], 0)]);
    let (_, run) = start(store, &p, t0()).await;
    let got = claim(store, Some(run), 1, t0()).await;
    let items = (0..5).map(|i| json!(i)).collect();
    store
        .finish_and_claim(
            &[ended(&got[0], Transition::Expand { items }, t0())],
            None,
            t0(),
        )
        .await
        .unwrap();
    let two = claim(store, Some(run), 2, t0()).await;
    let dead = ended(
        &two[0],
        Transition::Dead {
            failure: Failure::fatal("no"),
            cancel: vec!["m".into(), "after".into()],
        },
        t0(),
    );
    store.finish_and_claim(&[dead], None, t0()).await.unwrap();
    let counts = store.child_counts(run).await.unwrap();
    assert_eq!(
        counts
            .iter()
            .map(|c| (c.state, c.count))
            .collect::<Vec<_>>(),
        [
            (TaskState::Cancelled, 3),
            (TaskState::Dead, 1),
            (TaskState::Running, 1)
        ],
        "the siblings not started are cancelled"
    );
    let tasks = store.task_runs(run).await.unwrap();
    let parent = tasks.iter().find(|t| t.task_name == "m").unwrap();
    assert_eq!(parent.state, TaskState::Cancelled);
    assert!(
        parent
            .error
            .as_deref()
            .unwrap_or("")
            .contains("failed fast: `m[0]` is dead"),
        "{:?}",
        parent.error
    );
    // The one still running finishes; the run fails.
    store
        .finish_and_claim(
            &[ended(
                &two[1],
                Transition::Succeed {
                    output: json!(1),
                    promote: vec!["m".into()],
                    skip: Vec::new(),
                },
                t0(),
            )],
            None,
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(store.run(run).await.unwrap().state, RunState::Failed);
}

pub async fn map_children_share_their_parents_rate_limit(store: &dyn Store) {
    use orbit_core::transition::Transition;
    let mut p = pipeline("rated-map", &[("m", &[], 0)]);
    rated(&mut p, 0, "api", 2, 1000);
    keyed(&mut p, 0, "acct-{{ input.n }}", 5);
    p.tasks[0].for_each = Some(orbit_core::pipeline::ForEach {
        items: "{{ input.items }}".into(),
        allow_failures: 0.0,
        fail_fast: false,
    });
    let (_, run) = start(store, &p, t0()).await;
    let got = claim(store, Some(run), 1, t0()).await;
    assert!(
        store
            .rate_buckets(&["api".into()])
            .await
            .unwrap()
            .is_empty(),
        "the parent's own attempt takes no token"
    );
    let items = (0..5).map(|i| json!(i)).collect();
    let out = store
        .finish_and_claim(
            &[ended(&got[0], Transition::Expand { items }, t0())],
            Some(&ClaimRequest::any("w", 10)),
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(
        names(&out.claimed),
        ["m[0]", "m[1]"],
        "a full bucket: two at once"
    );
    let keys: Vec<Option<String>> = store
        .task_runs(run)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.rate_key)
        .collect();
    assert_eq!(
        keys[0], None,
        "the parent holds its children's keys, not its own"
    );
    assert!(
        keys[1..].iter().all(|k| k.as_deref() == Some("api")),
        "{keys:?}"
    );
    let slots: Vec<(Option<String>, Option<u32>)> = store
        .task_runs(run)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.concurrency_key, t.concurrency_limit))
        .collect();
    assert_eq!(slots[0], (None, None), "nor a slot of its own");
    assert!(
        slots[1..]
            .iter()
            .all(|s| *s == (Some("acct-1".to_string()), Some(5))),
        "the children share the rendered key: {slots:?}"
    );
}
