//! Why a run's ready tasks may sit unclaimed: their concurrency key is at its limit, or no live
//! server, worker or worker service takes their queue. Said by `orbit status`, the API's run
//! detail and the dashboard, so nobody stares at a `pending` run wondering.

use chrono::{DateTime, Utc};
use orbit_core::{RunState, TaskState};
use orbit_store::{RunRecord, Store, StoreError, TaskRunRecord};
use std::collections::BTreeSet;

/// A pending run held back by its pipeline's concurrency key:
/// "the run waits for concurrency key `tenant-1` (1/1 runs in use)".
pub async fn run_key(store: &dyn Store, run: &RunRecord) -> Result<Option<String>, StoreError> {
    let Some(key) = run
        .concurrency_key
        .as_ref()
        .filter(|_| run.state == RunState::Pending)
    else {
        return Ok(None);
    };
    let usage = store.key_usage(std::slice::from_ref(key)).await?.pop();
    let in_use = usage.as_ref().map_or(0, |u| u.runs_running);
    Ok(
        match usage.and_then(|u| u.limit).or(run.concurrency_limit) {
            None => Some(format!(
                "the run waits for concurrency key `{key}`, which has no limit yet: orbit limits set {key} N"
            )),
            Some(limit) => (in_use >= u64::from(limit)).then(|| {
                format!("the run waits for concurrency key `{key}` ({in_use}/{limit} runs in use)")
            }),
        },
    )
}

/// Ready task runs held back by a concurrency key at its limit, one line per key:
/// "3 tasks wait for concurrency key `c-42` (2/2 in use)".
pub async fn full_keys(
    store: &dyn Store,
    tasks: &[TaskRunRecord],
) -> Result<Vec<String>, StoreError> {
    let mut waiting: std::collections::BTreeMap<&str, (usize, Option<u32>)> = Default::default();
    for t in tasks.iter().filter(|t| t.state == TaskState::Ready) {
        if let Some(key) = &t.concurrency_key {
            let entry = waiting
                .entry(key.as_str())
                .or_insert((0, t.concurrency_limit));
            entry.0 += 1;
        }
    }
    if waiting.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = waiting.keys().map(|k| (*k).to_owned()).collect();
    let usage: std::collections::HashMap<String, orbit_store::KeyUsage> = store
        .key_usage(&keys)
        .await?
        .into_iter()
        .map(|u| (u.key.clone(), u))
        .collect();
    Ok(waiting
        .into_iter()
        .filter_map(|(key, (n, declared))| {
            let u = usage.get(key);
            let in_use = u.map_or(0, |u| u.running);
            // A named limit (`orbit limits set`) wins over what the tasks declare.
            let limit = u.and_then(|u| u.limit).or(declared);
            let tasks = if n == 1 {
                "1 task waits".to_owned()
            } else {
                format!("{n} tasks wait")
            };
            match limit {
                None => Some(format!(
                    "{tasks} for concurrency key `{key}`, which has no limit yet: orbit limits set {key} N"
                )),
                Some(limit) => (in_use >= u64::from(limit)).then(|| {
                    format!("{tasks} for concurrency key `{key}` ({in_use}/{limit} in use)")
                }),
            }
        })
        .collect())
}

/// One line per queue of `tasks` that has ready work and nobody to claim it, e.g.
/// ``no worker is claiming queue `default` ``. Empty while any task of the run is running
/// (something is working on it) or when every ready task has a claimer.
pub async fn unclaimed(
    store: &dyn Store,
    tasks: &[TaskRunRecord],
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    if tasks.iter().any(|t| t.state == TaskState::Running) {
        return Ok(Vec::new());
    }
    let ready: Vec<&TaskRunRecord> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Ready)
        .collect();
    if ready.is_empty() {
        return Ok(Vec::new());
    }
    let nodes = store.nodes(500).await?;
    let live: Vec<_> = nodes
        .iter()
        .filter(|n| n.status(now) == "healthy")
        .collect();
    let mut lines = BTreeSet::new();
    for t in ready {
        if t.task_type == "worker" {
            let served = match store.service_task(&t.queue).await {
                Ok(st) => live
                    .iter()
                    .any(|n| n.info.service.as_deref() == Some(st.service_id.as_str())),
                Err(StoreError::NotFound(_)) => false,
                Err(e) => return Err(e),
            };
            if !served {
                lines.insert(format!(
                    "no worker service is running that registered task `{}`",
                    t.queue
                ));
            }
            continue;
        }
        let claimed = live.iter().any(|n| {
            n.info.service.is_none()
                && n.info.concurrency > 0
                && (n.info.queues.is_empty() || n.info.queues.contains(&t.queue))
        });
        if !claimed {
            lines.insert(format!("no worker is claiming queue `{}`", t.queue));
        }
    }
    Ok(lines.into_iter().collect())
}
