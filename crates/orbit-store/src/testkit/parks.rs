//! Parked task runs: durable sleeps, signals, approvals.

use super::*;
use crate::{Decision, StoreError};
use orbit_core::transition::{Park, ParkKind};

fn park(kind: ParkKind, until: Option<DateTime<Utc>>, event: Option<&str>) -> Outcome {
    Outcome::Parked(Park {
        kind,
        until,
        event: event.map(str::to_owned),
        note: (kind == ParkKind::Approval).then(|| "Ship it?".to_owned()),
    })
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// Claims every root of a fresh one-task run and parks it as told.
async fn parked(store: &dyn Store, p: &Pipeline, outcome: Outcome) -> (Uuid, ClaimedTask) {
    let (_, run) = start(store, p, t0()).await;
    let got = claim(store, Some(run), 1, t0()).await;
    assert_eq!(got.len(), 1);
    let out = store
        .finish_and_claim(&[finish(p, &got[0], outcome, t0())], None, t0())
        .await
        .unwrap();
    assert!(out.lease_lost.is_empty());
    (run, got[0].clone())
}

pub async fn parked_tasks_wake_at_their_time(store: &dyn Store) {
    let p = pipeline("napper", &[("nap", &[], 0), ("after", &["nap"], 0)]);
    let until = t0() + secs(3600);
    let (run, first) = parked(store, &p, park(ParkKind::Sleep, Some(until), None)).await;
    let tr = &store.task_runs(run).await.unwrap()[0];
    assert_eq!(tr.state, TaskState::Parked);
    let info = tr.park.as_ref().expect("park recorded");
    assert_eq!((info.kind.as_str(), info.until), ("sleep", Some(until)));
    assert_eq!(tr.finished_at, None, "a parked task has not finished");
    let attempts = store.attempts(run, Some("nap")).await.unwrap();
    assert_eq!(attempts[0].outcome, "parked");

    // Not before its time: nothing to claim, and the claimer is told when to come back.
    let req = ClaimRequest {
        owner: "w".into(),
        limit: 10,
        run: None,
        queues: Vec::new(),
        types: Vec::new(),
    };
    let early = store
        .finish_and_claim(&[], Some(&req), until - secs(1))
        .await
        .unwrap();
    assert!(early.claimed.is_empty());
    assert_eq!(early.wake_at.map(|w| w >= until), Some(true));
    assert!(early.wake_at.unwrap() - until < chrono::Duration::milliseconds(1));

    // At its time any claimer wakes it and takes it, with what woke it; parking spent no try.
    let late = store
        .finish_and_claim(&[], Some(&req), until + secs(1))
        .await
        .unwrap();
    assert_eq!(names(&late.claimed), ["nap"]);
    let woken = &late.claimed[0];
    assert_eq!(woken.wake, Some(json!({"by": "time"})));
    assert_eq!((woken.attempt, woken.tries), (2, 1));
    assert_eq!(woken.id, first.id);
    assert_eq!(late.wake_at, None, "nothing else is parked");
    record(
        store,
        finish(&p, woken, Outcome::Succeeded(json!(null)), t0()),
    )
    .await;
    assert_eq!(
        states(store, run).await,
        [
            ("nap".into(), TaskState::Succeeded),
            ("after".into(), TaskState::Ready)
        ]
    );
}

pub async fn a_signal_wakes_every_waiting_task_once(store: &dyn Store) {
    let p = pipeline("order", &[("pay", &[], 0)]);
    let wait = |ev: &str| park(ParkKind::Signal, None, Some(ev));
    let (a, _) = parked(store, &p, wait("payment.o-1")).await;
    let (b, _) = parked(store, &p, wait("payment.o-1")).await;
    let (other, _) = parked(store, &p, wait("payment.o-2")).await;
    let tr = &store.task_runs(a).await.unwrap()[0];
    assert_eq!(
        tr.park.as_ref().and_then(|p| p.event.as_deref()),
        Some("payment.o-1")
    );

    let far = t0() + secs(86400);
    let out = store
        .signal("payment.o-1", &json!({"amount": 42}), far, t0())
        .await
        .unwrap();
    let mut delivered: Vec<Uuid> = out.delivered.iter().map(|(r, _)| *r).collect();
    delivered.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(delivered, expected);
    assert!(!out.kept);
    // A second signal of the name finds no waiter: it is kept, and delivers nothing twice.
    let again = store
        .signal("payment.o-1", &json!({"amount": 7}), far, t0())
        .await
        .unwrap();
    assert!(again.delivered.is_empty() && again.kept);

    let got = claim(store, None, 10, t0()).await;
    assert_eq!(got.len(), 2);
    for t in &got {
        assert_eq!(
            t.wake,
            Some(json!({"by": "signal", "signal": "payment.o-1", "payload": {"amount": 42}}))
        );
    }
    assert_eq!(states(store, other).await[0].1, TaskState::Parked);
    let events = store.events(0, Some(a), 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "task_signalled" && e.task.as_deref() == Some("pay")),
        "{events:?}"
    );
}

pub async fn a_signal_sent_before_its_wait_is_kept(store: &dyn Store) {
    let p = pipeline("order", &[("pay", &[], 0)]);
    let out = store
        .signal("early", &json!("paid"), t0() + secs(60), t0())
        .await
        .unwrap();
    assert!(out.kept && out.delivered.is_empty());
    // An expired one is never taken.
    store
        .signal("stale", &json!("old"), t0() - secs(1), t0() - secs(10))
        .await
        .unwrap();

    let (a, _) = parked(store, &p, park(ParkKind::Signal, None, Some("early"))).await;
    assert_eq!(
        states(store, a).await[0].1,
        TaskState::Ready,
        "it took the kept signal as it parked"
    );
    let got = claim(store, Some(a), 1, t0()).await;
    assert_eq!(
        got[0].wake,
        Some(json!({"by": "signal", "signal": "early", "payload": "paid"}))
    );
    // Taken once: the next wait on the name parks.
    let (b, _) = parked(store, &p, park(ParkKind::Signal, None, Some("early"))).await;
    assert_eq!(states(store, b).await[0].1, TaskState::Parked);
    let (c, _) = parked(store, &p, park(ParkKind::Signal, None, Some("stale"))).await;
    assert_eq!(states(store, c).await[0].1, TaskState::Parked);
    // Retention forgets expired signals only: a new one still wakes `c` (it was kept before).
    store.forget_attempt_cells(t0()).await.unwrap();
    let out = store
        .signal("stale", &json!("new"), t0() + secs(60), t0())
        .await
        .unwrap();
    assert_eq!(out.delivered.len(), 1);
}

pub async fn a_wait_times_out_once(store: &dyn Store) {
    let p = pipeline("order", &[("pay", &[], 0)]);
    let deadline = t0() + secs(600);
    let (run, _) = parked(
        store,
        &p,
        park(ParkKind::Signal, Some(deadline), Some("late")),
    )
    .await;
    let got = claim(store, None, 10, deadline + secs(1)).await;
    assert_eq!(got[0].wake, Some(json!({"by": "time"})));
    // The signal that comes after the timeout woke it is not delivered to it.
    let out = store
        .signal("late", &json!(1), deadline + secs(600), deadline + secs(2))
        .await
        .unwrap();
    assert!(out.delivered.is_empty() && out.kept);
    record(
        store,
        finish(
            &p,
            &got[0],
            Outcome::Failed(orbit_core::transition::Failure::fatal("timed out")),
            t0(),
        ),
    )
    .await;
    // A retry puts it back to wait afresh: what woke it before is forgotten.
    store
        .requeue(run, &["pay".into()], crate::TriggeredBy::Cli, t0())
        .await
        .unwrap();
    let tr = &store.task_runs(run).await.unwrap()[0];
    assert_eq!((tr.state, &tr.wake), (TaskState::Ready, &None));
}

pub async fn a_decision_is_recorded_once(store: &dyn Store) {
    let p = pipeline("release", &[("review", &[], 0)]);
    let (run, _) = parked(store, &p, park(ParkKind::Approval, None, None)).await;
    let tr = &store.task_runs(run).await.unwrap()[0];
    assert_eq!(
        tr.park.as_ref().and_then(|p| p.note.as_deref()),
        Some("Ship it?")
    );
    // A signal never wakes an approval.
    let out = store
        .signal("review", &json!(1), t0() + secs(60), t0())
        .await
        .unwrap();
    assert!(out.delivered.is_empty());
    let yes = Decision {
        approved: true,
        by: "alice".into(),
        comment: Some("ok".into()),
    };
    store.decide(run, "review", &yes, t0()).await.unwrap();
    let twice = store.decide(run, "review", &yes, t0()).await;
    assert!(matches!(twice, Err(StoreError::Conflict(_))), "{twice:?}");
    let got = claim(store, Some(run), 1, t0()).await;
    let wake = got[0].wake.clone().expect("a wake-up");
    assert_eq!(
        (
            &wake["by"],
            &wake["approved"],
            &wake["decidedBy"],
            &wake["comment"]
        ),
        (
            &json!("decision"),
            &json!(true),
            &json!("alice"),
            &json!("ok")
        )
    );
    let events = store.events(0, Some(run), 100).await.unwrap();
    let decided = events
        .iter()
        .find(|e| e.kind == "task_decided")
        .expect("the decision is an event");
    assert_eq!(
        decided.data.as_ref().map(|d| d["decidedBy"].clone()),
        Some(json!("alice"))
    );
    // A task that is not parked for a decision refuses one.
    let (other, _) = parked(
        store,
        &p,
        park(ParkKind::Sleep, Some(t0() + secs(60)), None),
    )
    .await;
    assert!(matches!(
        store.decide(other, "review", &yes, t0()).await,
        Err(StoreError::Conflict(_))
    ));
    // Cancelling a run cancels its parked task runs too (and none wakes later).
    store.cancel_run(other, t0()).await.unwrap();
    assert_eq!(states(store, other).await[0].1, TaskState::Cancelled);
    let later = claim(store, None, 10, t0() + secs(120)).await;
    assert!(later.is_empty(), "{later:?}");
}

pub async fn a_rerun_takes_over_what_came_before_its_task(store: &dyn Store) {
    // a -> b -> c, and x beside them: a re-run from b keeps a and x, runs b and c.
    let p = pipeline(
        "again",
        &[
            ("a", &[], 0),
            ("b", &["a"], 0),
            ("c", &["b"], 0),
            ("x", &[], 0),
        ],
    );
    let stored = store.save_pipeline(&p, None, t0()).await.unwrap();
    let old = store
        .create_run(new_run(&stored, json!({"n": 1}), t0()))
        .await
        .unwrap()
        .run
        .id;
    let old_tasks = store.task_runs(old).await.unwrap();
    let id_of = |n: &str| old_tasks.iter().find(|t| t.task_name == n).unwrap().id;
    let mut new = new_run(&stored, json!({"n": 2}), t0());
    new.triggered_by = crate::TriggeredBy::Rerun;
    new.rerun = Some(crate::Rerun {
        of: old,
        from: "b".into(),
        reused: vec![
            crate::ReusedTask {
                name: "a".into(),
                origin: id_of("a"),
                state: TaskState::Succeeded,
                output: Some(json!({"rows": 3})),
            },
            crate::ReusedTask {
                name: "x".into(),
                origin: id_of("x"),
                state: TaskState::Succeeded,
                output: Some(json!("x")),
            },
        ],
    });
    let run = store.create_run(new).await.unwrap().run;
    assert_eq!(run.rerun_of, Some(old));
    assert_eq!(run.rerun_from.as_deref(), Some("b"));
    assert_eq!(run.tasks_pending, 2, "b and c are left to run");
    let tasks = store.task_runs(run.id).await.unwrap();
    let t = |n: &str| tasks.iter().find(|t| t.task_name == n).unwrap().clone();
    assert_eq!(
        (
            t("a").state,
            t("a").origin,
            t("a").output.clone(),
            t("a").attempt
        ),
        (
            TaskState::Succeeded,
            Some(id_of("a")),
            Some(json!({"rows": 3})),
            0
        )
    );
    assert_eq!(
        (t("x").state, t("x").origin),
        (TaskState::Succeeded, Some(id_of("x")))
    );
    assert_eq!(
        (t("b").state, t("b").origin),
        (TaskState::Ready, None),
        "its need is met"
    );
    assert_eq!(t("c").state, TaskState::Waiting);
    // Only b is claimable; its upstream output is the one taken over.
    let got = claim(store, Some(run.id), 10, t0()).await;
    assert_eq!(names(&got), ["b"]);
    let outs = store.outputs(run.id, &["a".into()]).await.unwrap();
    assert_eq!(outs, [("a".to_owned(), json!({"rows": 3}))]);
    record(
        store,
        finish(&p, &got[0], Outcome::Succeeded(json!(2)), t0()),
    )
    .await;
    let got = claim(store, Some(run.id), 10, t0()).await;
    assert_eq!(names(&got), ["c"]);
    let out = record(
        store,
        finish(&p, &got[0], Outcome::Succeeded(json!(3)), t0()),
    )
    .await;
    assert_eq!(
        out.settled_runs,
        [(run.id, orbit_core::RunState::Succeeded)],
        "the re-run settles when what it ran is done"
    );
}
