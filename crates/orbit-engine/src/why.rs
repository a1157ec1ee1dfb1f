//! `orbit why`: one line for every task of a run that is not running and not finished, saying
//! what it waits for, from the store's own facts (leases, keys, buckets, attempts, nodes).

use chrono::{DateTime, Utc};
use orbit_core::{RunState, TaskState};
use orbit_store::{RunRecord, Store, StoreError, TaskRunRecord};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Why one task (or the run itself, `task: None`) is not running.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Why {
    pub task: Option<String>,
    pub state: String,
    pub reason: String,
}

/// Every task of `run` (its own tasks; a `for_each` task's children are summed up on it) that
/// waits, with its reason; `only` keeps one task's line.
pub async fn explain(
    store: &dyn Store,
    run: &RunRecord,
    only: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<Why>, StoreError> {
    let mut out = Vec::new();
    if run.state == RunState::Pending
        && let Some(key) = &run.concurrency_key
    {
        let lines = crate::waiting::held_by_keys(store, run, &[]).await?;
        out.push(Why {
            task: None,
            state: "pending".into(),
            reason: lines
                .into_iter()
                .next()
                .unwrap_or_else(|| format!("the run waits for a slot of concurrency key `{key}`")),
        });
    }
    if run.state.is_terminal() {
        return Ok(out);
    }
    let own = orbit_store::TaskRunPage {
        limit: u32::MAX,
        ..Default::default()
    };
    let tasks = store.task_runs_page(run.id, &own).await?;
    let children = store.child_counts(run.id).await?;
    let pipeline = store.pipeline_version(run.pipeline_id).await?.pipeline;
    let by_name: HashMap<&str, &TaskRunRecord> =
        tasks.iter().map(|t| (t.task_name.as_str(), t)).collect();
    let ready: Vec<&TaskRunRecord> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Ready)
        .collect();
    let keys: Vec<String> = ready
        .iter()
        .filter_map(|t| t.concurrency_key.clone())
        .collect();
    let usage: HashMap<String, orbit_store::KeyUsage> = if keys.is_empty() {
        HashMap::new()
    } else {
        store
            .key_usage(&keys)
            .await?
            .into_iter()
            .map(|u| (u.key.clone(), u))
            .collect()
    };
    let rate_keys: Vec<String> = ready.iter().filter_map(|t| t.rate_key.clone()).collect();
    let buckets: HashMap<String, orbit_store::RateBucket> = store
        .rate_buckets(&rate_keys)
        .await?
        .into_iter()
        .map(|b| (b.key.clone(), b))
        .collect();
    let unclaimed = crate::waiting::unserved(store, &tasks, now).await?;
    for t in &tasks {
        if only.is_some_and(|o| o != t.task_name) {
            continue;
        }
        let reason = match t.state {
            TaskState::Waiting => {
                let needs = pipeline
                    .tasks
                    .iter()
                    .find(|d| d.name == t.task_name)
                    .map(|d| d.needs.clone())
                    .unwrap_or_default();
                waiting_on(t, &needs, &by_name, &children, now)
            }
            TaskState::Ready => ready_because(store, t, &usage, &buckets, &unclaimed, now).await?,
            TaskState::Parked => {
                let since = store
                    .attempts(t.run_id, Some(&t.task_name))
                    .await?
                    .last()
                    .map(|a| a.finished_at);
                let approvers = pipeline
                    .task(&t.task_name)
                    .and_then(|d| d.params.get("approvers"))
                    .and_then(|a| serde_json::from_value::<Vec<String>>(a.clone()).ok())
                    .unwrap_or_default();
                parked_because(t, since, &approvers, now)
            }
            _ => continue,
        };
        out.push(Why {
            task: Some(t.task_name.clone()),
            state: t.state.to_string(),
            reason,
        });
    }
    Ok(out)
}

/// A parked task: until when it sleeps, the signal or the decision it waits for, since when,
/// and when it times out.
fn parked_because(
    t: &TaskRunRecord,
    since: Option<DateTime<Utc>>,
    approvers: &[String],
    now: DateTime<Utc>,
) -> String {
    let Some(park) = &t.park else {
        return "parked".to_owned();
    };
    let at = |when: DateTime<Utc>| {
        let d = orbit_core::duration::display((when - now).abs().to_std().unwrap_or_default());
        if when >= now {
            format!("{} (in {d})", when.format("%Y-%m-%d %H:%M:%S UTC"))
        } else {
            format!("{} ({d} ago)", when.format("%Y-%m-%d %H:%M:%S UTC"))
        }
    };
    let since = since
        .map(|s| format!(" since {}", at(s)))
        .unwrap_or_default();
    let timeout = park
        .until
        .map(|u| format!("; times out {}", at(u)))
        .unwrap_or_default();
    match park.kind.as_str() {
        "signal" => format!(
            "waiting for signal `{}`{since}{timeout}",
            park.event.as_deref().unwrap_or("?")
        ),
        "approval" => {
            let who = if approvers.is_empty() {
                String::new()
            } else {
                format!(" by {}", approvers.join(" or "))
            };
            format!(
                "waiting for approval{who} ({}){since}{timeout}",
                park.note.as_deref().unwrap_or("")
            )
        }
        "run" => format!(
            "waiting for {}{since}, holding no worker",
            park.note.as_deref().unwrap_or("its sub-run")
        ),
        _ => match park.until {
            Some(u) => format!("sleeping until {}", at(u)),
            None => "parked".to_owned(),
        },
    }
}

/// A waiting task: the upstream tasks it still needs, each with where it is; a `for_each`
/// task, its children.
fn waiting_on(
    t: &TaskRunRecord,
    needs: &[String],
    by_name: &HashMap<&str, &TaskRunRecord>,
    children: &[orbit_store::ChildCount],
    now: DateTime<Utc>,
) -> String {
    let mine: Vec<&orbit_store::ChildCount> = children
        .iter()
        .filter(|c| c.task_name == t.task_name)
        .collect();
    if !mine.is_empty() {
        let by_state: BTreeMap<String, u64> = mine
            .iter()
            .map(|c| (c.state.to_string(), c.count))
            .collect();
        let total: u64 = by_state.values().sum();
        let done = by_state.get("succeeded").copied().unwrap_or(0);
        let running = by_state.get("running").copied().unwrap_or(0);
        let parked = match by_state.get("parked").copied().unwrap_or(0) {
            0 => String::new(),
            n => format!(", {n} parked"),
        };
        return format!("waiting for its children: {done}/{total} done, {running} running{parked}");
    }
    let pending: Vec<String> = needs
        .iter()
        .filter_map(|n| by_name.get(n.as_str()).map(|u| (n, u)))
        .filter(|(_, u)| u.state != TaskState::Succeeded && u.state != TaskState::Skipped)
        .map(|(n, u)| match u.state {
            TaskState::Running => {
                let since = u
                    .started_at
                    .map(|s| orbit_core::duration::display((now - s).to_std().unwrap_or_default()));
                format!(
                    "`{n}` (running on {} for {}{})",
                    u.lease_owner.as_deref().unwrap_or("?"),
                    since.as_deref().unwrap_or("?"),
                    u.lease_expires_at
                        .map(|l| format!(", lease until {}", l.format("%H:%M:%S")))
                        .unwrap_or_default()
                )
            }
            state => format!("`{n}` ({state})"),
        })
        .collect();
    if pending.is_empty() {
        "waiting to be promoted (its upstream tasks have finished)".to_owned()
    } else {
        format!("waiting on {}", pending.join(", "))
    }
}

/// A ready task: not due yet (backing off, or asked to wait), its key full, its rate spent,
/// nobody to claim it, or simply next in line.
async fn ready_because(
    store: &dyn Store,
    t: &TaskRunRecord,
    usage: &HashMap<String, orbit_store::KeyUsage>,
    buckets: &HashMap<String, orbit_store::RateBucket>,
    unclaimed: &[String],
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    if let Some(at) = t.ready_at.filter(|at| *at > now) {
        let attempts = store.attempts(t.run_id, Some(&t.task_name)).await?;
        let when = at.format("%H:%M:%S%.3f");
        return Ok(match attempts.last() {
            Some(a) if a.outcome == "throttled" => format!(
                "asked to wait until {when}: {}",
                a.error.as_deref().unwrap_or("throttled")
            ),
            Some(a) => format!(
                "backing off until {when} after attempt {} failed: {}",
                a.attempt,
                a.error.as_deref().unwrap_or(&a.outcome)
            ),
            None => format!("ready at {when}"),
        });
    }
    if let Some(key) = &t.concurrency_key {
        let u = usage.get(key);
        let limit = u.and_then(|u| u.limit).or(t.concurrency_limit);
        let running = u.map_or(0, |u| u.running);
        match limit {
            None => {
                return Ok(format!(
                    "concurrency key `{key}` has no limit yet: orbit limits set {key} N"
                ));
            }
            Some(l) if running >= u64::from(l) => {
                return Ok(format!(
                    "concurrency key `{key}` is full ({running}/{l} in use)"
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(b) = t.rate_key.as_ref().and_then(|k| buckets.get(k)) {
        let wait = b.next_token_in(now);
        if !wait.is_zero() {
            let at = now + chrono::Duration::from_std(wait).unwrap_or_default();
            return Ok(format!(
                "rate limited by `{}` until {}",
                b.key,
                at.format("%H:%M:%S%.3f")
            ));
        }
    }
    let queue = format!("queue `{}`", t.queue);
    if let Some(line) = unclaimed
        .iter()
        .find(|l| l.contains(&queue) || l.contains(&format!("task `{}`", t.queue)))
    {
        return Ok(format!("ready, but {line}"));
    }
    Ok(match t.ready_at {
        Some(since) => format!(
            "ready for {}: every claimer is busy",
            orbit_core::duration::display((now - since).to_std().unwrap_or_default())
        ),
        None => "ready: every claimer is busy".to_owned(),
    })
}
