//! Conformance: what finished attempts do — promotions, retries, dead tasks, routing, logs.

use crate::{ClaimRequest, FinishedAttempt, Store};
use chrono::Duration;
use orbit_core::transition::{Failure, Outcome};
use orbit_core::{RunState, TaskState};
use serde_json::{Value, json};

use super::*;

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
    assert!(out.settled_subruns.is_empty(), "a run of its own");
    let r = store.run(run).await.unwrap();
    assert_eq!((r.state, r.tasks_pending), (RunState::Succeeded, 0));
    assert!(r.finished_at.is_some());
}

/// The commit that settles a sub-run says so: its parent's task waits for it.
pub async fn a_settled_sub_run_is_reported(store: &dyn Store) {
    let p = pipeline("child", &[("a", &[], 0)]);
    let (stored, parent) = start(store, &p, t0()).await;
    let child = store
        .create_run(NewRun {
            parent: Some((parent, "call".into())),
            ..new_run(&stored, json!({}), t0())
        })
        .await
        .unwrap()
        .run
        .id;
    let got = claim(store, Some(child), 1, t0()).await;
    let out = record(
        store,
        finish(&p, &got[0], Outcome::Failed(Failure::fatal("no")), t0()),
    )
    .await;
    assert_eq!(out.settled_runs, vec![(child, RunState::Failed)]);
    assert_eq!(out.settled_subruns, vec![child]);
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
    assert_eq!(tr.ready_at, Some(t0() + Duration::seconds(1)));
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
