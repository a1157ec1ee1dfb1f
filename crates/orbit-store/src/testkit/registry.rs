//! Conformance: pipelines, nodes, registered task code, and the event log.

use crate::{EventRecord, NodeInfo, Store, StoreError};
use chrono::Duration;
use orbit_core::transition::Outcome;
use serde_json::json;

use super::*;

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

pub async fn only_scheduled_pipelines_are_read_for_cron(store: &dyn Store) {
    let names = |list: Vec<StoredPipeline>| -> Vec<(String, i64)> {
        list.into_iter().map(|p| (p.name, p.version)).collect()
    };
    let mut nightly = pipeline("nightly", &[("a", &[], 0)]);
    nightly.schedule = Some("0 3 * * *".into());
    store.save_pipeline(&nightly, None, t0()).await.unwrap();
    store
        .save_pipeline(&pipeline("adhoc", &[("a", &[], 0)]), None, t0())
        .await
        .unwrap();
    let mut hourly = pipeline("hourly", &[("a", &[], 0)]);
    hourly.schedule = Some("0 * * * *".into());
    store.save_pipeline(&hourly, None, t0()).await.unwrap();
    assert_eq!(
        names(store.scheduled_pipelines().await.unwrap()),
        vec![("hourly".into(), 1), ("nightly".into(), 1)]
    );
    // The latest version decides: a schedule taken away (or the pipeline deleted) stops cron.
    hourly.schedule = None;
    store.save_pipeline(&hourly, None, t0()).await.unwrap();
    store.delete_pipeline("nightly", t0()).await.unwrap();
    assert!(store.scheduled_pipelines().await.unwrap().is_empty());
    hourly.schedule = Some("*/5 * * * *".into());
    let again = store.save_pipeline(&hourly, None, t0()).await.unwrap();
    let scheduled = store.scheduled_pipelines().await.unwrap();
    assert_eq!(names(scheduled.clone()), vec![("hourly".into(), 3)]);
    assert_eq!(scheduled[0].pipeline, again.pipeline);
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
