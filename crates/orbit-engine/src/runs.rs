//! Creating and deleting runs where object storage is involved: a large run input is written
//! before the run row that refers to it, and a deleted run's objects go after its rows. Either
//! order leaves at worst an unreferenced object behind a crash, never a reference to nothing.

use crate::EngineError;
use crate::storage::{self, Storage};
use chrono::{DateTime, Utc};
use orbit_core::object::ObjectRef;
use orbit_store::{CreatedRun, NewRun, Runs};
use uuid::Uuid;

/// Creates a run; its input goes to object storage when it is over the threshold. When an
/// idempotency key returns an earlier run instead, the object written for this one is removed;
/// when that run was created for a different request (another pipeline or input), the key's
/// reuse is refused ([`EngineError::IdempotencyKeyReused`]).
pub async fn create_run(
    store: &dyn Runs,
    storage: &Storage,
    mut new: NewRun<'_>,
) -> Result<CreatedRun, EngineError> {
    let id = new.id;
    // Compared before the input may become a reference, which names this run.
    new.request_hash = Some(new.request_hash());
    let key = new.idempotency_key.clone();
    new.input = storage.offload(new.input, &storage::input_key(id)).await?;
    let stored = ObjectRef::of(&new.input).is_some();
    let created = store.create_run(new).await?;
    if stored && !created.created {
        storage.delete_run(id).await?;
    }
    if !created.same_request {
        return Err(EngineError::IdempotencyKeyReused {
            key: key.unwrap_or_default(),
            run: created.run.id,
        });
    }
    Ok(created)
}

/// How a deletion shares the store with claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Slice after slice: someone asked, and waits for it.
    AtOnce,
    /// A background role's: after each slice it pauses three times as long as the slice took,
    /// so it holds the store's writer (one at a time on SQLite) at most a quarter of the time
    /// and claims keep their pace.
    Gently,
}

/// Deletes a settled run slice by slice, then every object it left in any backend. Returns how
/// many objects.
pub async fn delete_run(
    store: &dyn orbit_store::Retention,
    storage: &Storage,
    id: Uuid,
    pace: Pace,
) -> Result<usize, EngineError> {
    loop {
        let started = std::time::Instant::now();
        if store.delete_run_slice(id).await? {
            break;
        }
        if pace == Pace::Gently {
            tokio::time::sleep(started.elapsed() * 3).await;
        }
    }
    Ok(storage.delete_run(id).await?)
}

/// What dead-letter retention removed.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Retention {
    /// Dead-letter entries older than the retention.
    pub entries: u64,
    /// Failed runs left with no entry, deleted with their objects.
    pub runs: usize,
    pub objects: usize,
}

/// Dead-letter retention: entries created before `before` go, and so does every failed run that
/// is left with none (its rows and its objects): nobody retried it within the retention.
pub async fn purge_dead_letters(
    store: &dyn orbit_store::Retention,
    storage: &Storage,
    before: DateTime<Utc>,
    pace: Pace,
) -> Result<Retention, EngineError> {
    let purged = store.purge_dead_letters(before).await?;
    let mut done = Retention {
        entries: purged.entries,
        ..Retention::default()
    };
    for run in purged.runs {
        match delete_run(store, storage, run, pace).await {
            Ok(n) => {
                done.runs += 1;
                done.objects += n;
            }
            // Retried (running again) or deleted meanwhile: not retention's to remove.
            Err(EngineError::Store(
                orbit_store::StoreError::Conflict(_) | orbit_store::StoreError::NotFound(_),
            )) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `ORBIT_RUN_RETENTION` (off unless set; `30d`, `12h`, `off`): how long settled runs are kept
/// after they finished.
pub fn run_retention(env: Option<String>) -> Result<Option<chrono::Duration>, String> {
    let Some(v) = env
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v != "off")
    else {
        return Ok(None);
    };
    let d = orbit_core::duration::parse(&v).map_err(|e| format!("ORBIT_RUN_RETENTION: {e}"))?;
    if d < std::time::Duration::from_secs(60) {
        return Err(format!(
            "ORBIT_RUN_RETENTION `{v}` is under a minute: runs would go before anyone saw them"
        ));
    }
    Ok(chrono::Duration::from_std(d).ok())
}

/// `DLQ_RETENTION_DAYS` (30 unless set): how long dead letters are kept.
pub fn dlq_retention(env: Option<String>) -> Result<chrono::Duration, String> {
    let days = match env {
        Some(v) => v
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("DLQ_RETENTION_DAYS `{v}` is not a whole number of days"))?,
        None => 30,
    };
    Ok(chrono::Duration::days(days.max(0)))
}

/// What a re-run changes from the run it re-runs.
#[derive(Clone, Debug, Default)]
pub struct RerunEdits {
    /// A new run input; the old run's when `None`.
    pub input: Option<serde_json::Value>,
    /// New outputs for upstream tasks of the task re-run from (each one of its needs, reused).
    pub upstream: serde_json::Map<String, serde_json::Value>,
}

/// Re-runs `run` from task `from`: a new run of the same pipeline version in which every task
/// not downstream of `from` that succeeded (or was skipped) keeps its recorded output (each
/// task run names its origin), and `from` and everything after it run afresh; with `edits`,
/// another input or other outputs for `from`'s upstream tasks. Outputs kept in object storage
/// are copied under the new run, so deleting the old run takes nothing from it. Works for runs
/// in any state.
pub async fn rerun(
    store: &dyn orbit_store::Store,
    storage: &Storage,
    run: Uuid,
    from: &str,
    edits: RerunEdits,
    now: DateTime<Utc>,
) -> Result<CreatedRun, EngineError> {
    use orbit_core::TaskState;
    let old = store.run(run).await?;
    let stored = store.pipeline_version(old.pipeline_id).await?;
    let p = &stored.pipeline;
    let dag = orbit_core::dag::Dag::new(p).map_err(|e| EngineError::BadRequest(e.to_string()))?;
    let Some(at) = dag.index_of(from) else {
        return Err(EngineError::BadRequest(format!(
            "pipeline `{}` version {} has no task `{from}`",
            p.name, stored.version
        )));
    };
    let mut fresh: std::collections::HashSet<usize> = dag.descendants(at).into_iter().collect();
    fresh.insert(at);
    let needs = &p.tasks[at].needs;
    for name in edits.upstream.keys() {
        if !needs.contains(name) {
            return Err(EngineError::BadRequest(format!(
                "`{name}` is not an upstream task of `{from}` (its needs: {})",
                if needs.is_empty() {
                    "none".to_owned()
                } else {
                    needs.join(", ")
                }
            )));
        }
    }
    let id = Uuid::now_v7();
    let old_tasks = store.task_runs(run).await?;
    let mut reused = Vec::new();
    for (i, def) in p.tasks.iter().enumerate() {
        if fresh.contains(&i) {
            continue;
        }
        let Some(tr) = old_tasks.iter().find(|t| t.task_name == def.name) else {
            continue;
        };
        let output = match (tr.state, edits.upstream.get(&def.name)) {
            (TaskState::Succeeded, Some(edited)) => Some(edited.clone()),
            (TaskState::Succeeded, None) => {
                Some(match tr.output.as_ref().and_then(ObjectRef::of) {
                    Some(r) => storage
                        .copy(&r, &storage::output_key(id, &def.name, 1))
                        .await?
                        .to_value(),
                    None => tr.output.clone().unwrap_or(serde_json::Value::Null),
                })
            }
            (TaskState::Skipped, _) => None,
            (state, Some(_)) => {
                return Err(EngineError::BadRequest(format!(
                    "`{}` has no output to change: it is {state} in run {run}",
                    def.name
                )));
            }
            // Not finished there: it runs again here.
            _ => continue,
        };
        reused.push(orbit_store::ReusedTask {
            name: def.name.clone(),
            origin: tr.id,
            state: tr.state,
            output,
        });
    }
    let input = match edits.input {
        Some(input) => input,
        None => match ObjectRef::of(&old.input) {
            Some(r) => storage.copy(&r, &storage::input_key(id)).await?.to_value(),
            None => old.input.clone(),
        },
    };
    create_run(
        store,
        storage,
        NewRun {
            id,
            pipeline: &stored,
            input,
            priority: old.priority,
            idempotency_key: None,
            idempotency_ttl: std::time::Duration::ZERO,
            triggered_by: orbit_store::TriggeredBy::Rerun,
            parent: None,
            rerun: Some(orbit_store::Rerun {
                of: run,
                from: from.to_owned(),
                reused,
            }),
            request_hash: None,
            now,
        },
    )
    .await
}
