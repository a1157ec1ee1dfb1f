//! Why a run's ready tasks may sit unclaimed: their concurrency key is at its limit, their rate
//! limit has no token left, or no live server, worker or worker service takes their queue. Said by `orbit status`, the API's run
//! detail and the dashboard, so nobody stares at a `pending` run wondering.

use chrono::{DateTime, Utc};
use orbit_core::{RunState, TaskState};
use orbit_store::{RunRecord, Store, StoreError, TaskRunRecord};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What holds `run` and its ready `tasks` back by a concurrency key at its limit, one line per
/// key: its pipeline's key while it is pending ("the run waits for concurrency key `tenant-1`
/// (1/1 runs in use)"), and each key of its ready tasks ("3 tasks wait for concurrency key
/// `c-42` (2/2 in use)"). One look at the keys' usage for all of them.
pub async fn held_by_keys(
    store: &dyn Store,
    run: &RunRecord,
    tasks: &[TaskRunRecord],
) -> Result<Vec<String>, StoreError> {
    let run_key = run
        .concurrency_key
        .as_deref()
        .filter(|_| run.state == RunState::Pending);
    // Per task key: how many ready task runs wait on it, and the limit they declare.
    let mut waiting: BTreeMap<&str, (usize, Option<u32>)> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.state == TaskState::Ready) {
        if let Some(key) = &t.concurrency_key {
            waiting.entry(key).or_insert((0, t.concurrency_limit)).0 += 1;
        }
    }
    let keys: BTreeSet<&str> = waiting.keys().copied().chain(run_key).collect();
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = keys.into_iter().map(str::to_owned).collect();
    let usage: HashMap<String, orbit_store::KeyUsage> = store
        .key_usage(&keys)
        .await?
        .into_iter()
        .map(|u| (u.key.clone(), u))
        .collect();
    // A named limit (`orbit limits set`) wins over the declared one.
    let line = |who: &str, key: &str, in_use: u64, declared: Option<u32>, unit: &str| match usage
        .get(key)
        .and_then(|u| u.limit)
        .or(declared)
    {
        None => Some(format!(
            "{who} for concurrency key `{key}`, which has no limit yet: orbit limits set {key} N"
        )),
        Some(limit) => (in_use >= u64::from(limit))
            .then(|| format!("{who} for concurrency key `{key}` ({in_use}/{limit}{unit} in use)")),
    };
    let running = |key: &str, of: fn(&orbit_store::KeyUsage) -> u64| usage.get(key).map_or(0, of);
    let mut lines = Vec::new();
    if let Some(key) = run_key {
        let in_use = running(key, |u| u.runs_running);
        lines.extend(line(
            "the run waits",
            key,
            in_use,
            run.concurrency_limit,
            " runs",
        ));
    }
    for (key, (n, declared)) in waiting {
        let who = if n == 1 {
            "1 task waits".to_owned()
        } else {
            format!("{n} tasks wait")
        };
        lines.extend(line(&who, key, running(key, |u| u.running), declared, ""));
    }
    Ok(lines)
}

/// A page of the ready children of each `for_each` task of `run` that has some (`children`:
/// the run's child counts): what the explanations below read besides the run's own tasks.
pub async fn ready_children(
    store: &dyn Store,
    run: uuid::Uuid,
    children: &[orbit_store::ChildCount],
) -> Result<Vec<TaskRunRecord>, StoreError> {
    let mut ready = Vec::new();
    for c in children.iter().filter(|c| c.state == TaskState::Ready) {
        let page = orbit_store::TaskRunPage {
            state: Some(TaskState::Ready),
            children_of: Some(c.task_name.clone()),
            limit: 200,
            offset: 0,
        };
        ready.extend(store.task_runs_page(run, &page).await?);
    }
    Ok(ready)
}

/// One line per rate limit key of `tasks` whose ready task runs wait for a token, e.g.
/// ``3 tasks wait for rate limit `openai` (next token in 0.4 s)``.
pub async fn held_by_rates(
    store: &dyn Store,
    tasks: &[TaskRunRecord],
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.state == TaskState::Ready) {
        // Not yet due (a backoff): not the rate limit's doing.
        if t.ready_at.is_some_and(|at| at > now) {
            continue;
        }
        if let Some(key) = &t.rate_key {
            *waiting.entry(key).or_default() += 1;
        }
    }
    if waiting.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = waiting.keys().map(|k| (*k).to_owned()).collect();
    let buckets = store.rate_buckets(&keys).await?;
    let mut lines = Vec::new();
    for b in buckets {
        let wait = b.next_token_in(now);
        if wait.is_zero() {
            continue;
        }
        let n = waiting.get(b.key.as_str()).copied().unwrap_or(0);
        let who = if n == 1 {
            "1 task waits".to_owned()
        } else {
            format!("{n} tasks wait")
        };
        lines.push(format!(
            "{who} for rate limit `{}` (next token in {:.1} s)",
            b.key,
            wait.as_secs_f64()
        ));
    }
    Ok(lines)
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
    unserved(store, tasks, now).await
}

/// One line per queue of `tasks`' ready ones that no live server, worker or worker service
/// claims from, whatever else runs.
pub async fn unserved(
    store: &dyn Store,
    tasks: &[TaskRunRecord],
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
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
