//! What every attempt gets, built once for the engine, the dispatcher and recovery: its
//! idempotency key (and a reused output), and its input and upstream outputs from storage.

use crate::storage::{self, RunValues, Shared, Storage};
use chrono::{DateTime, Utc};
use orbit_core::object::ObjectRef;
use orbit_core::template::{self, Context, RunInfo, TaskInfo, TaskOutput};
use orbit_core::transition::Failure;
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

/// A task's rendered idempotency key, and the output an earlier task run stored under it within
/// the TTL (with the log line that says so), if any.
/// The oldest stored output an idempotency key still returns at `now`.
pub(crate) fn keys_since(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX)
}

pub(crate) struct Keyed {
    pub key: Option<String>,
    pub reused: Option<(String, Value)>,
}

/// Outputs stored at or after `since` count (see [`keys_since`]); `to` is where a reused output that lives in object storage is copied for this attempt.
pub(crate) async fn keyed(
    store: &dyn orbit_store::Runs,
    storage: &Storage,
    template: Option<&str>,
    ctx: &Context<'_>,
    since: DateTime<Utc>,
    to: &str,
) -> Result<Keyed, Failure> {
    let Some(template) = template else {
        return Ok(Keyed {
            key: None,
            reused: None,
        });
    };
    let k = template::render_str(template, ctx)
        .map_err(|e| Failure::fatal(format!("idempotency_key: {e}")))?;
    let found = store
        .keyed_output(&k, since)
        .await
        .map_err(|e| Failure::error(format!("cannot look up idempotency key `{k}`: {e}")))?;
    let reused = match found {
        None => None,
        Some((from, output)) => {
            let output = match ObjectRef::of(&output) {
                None => output,
                Some(r) => storage
                    .copy(&r, to)
                    .await
                    .map_err(|e| Failure::error(format!("cannot copy the reused output: {e}")))?
                    .to_value(),
            };
            let line = format!(
                "[orbit] reused the output of task run {from} (idempotency key `{k}`); nothing executed"
            );
            Some((line, output))
        }
    };
    Ok(Keyed {
        key: Some(k),
        reused,
    })
}

/// A run input that cannot be read from object storage fails the attempt (retried); the run
/// loses nothing.
pub(crate) fn input_failure(e: storage::StorageError) -> Failure {
    Failure::error(format!("cannot read the run's input: {e}"))
}

/// Upstream outputs with every object reference replaced by its (shared) content.
pub(crate) async fn hydrated<'a>(
    storage: &Storage,
    values: &RunValues,
    outputs: &'a [(String, Value)],
) -> Result<Vec<(&'a str, Shared<'a>)>, Failure> {
    let mut hydrated = Vec::with_capacity(outputs.len());
    for (name, output) in outputs {
        let output = values
            .content(storage, output)
            .await
            .map_err(|e| Failure::error(format!("cannot read the output of `{name}`: {e}")))?;
        hydrated.push((name.as_str(), output));
    }
    Ok(hydrated)
}

/// The strings a task's template context borrows: its run's id and its effect key (the task
/// run's id, stable across attempts).
pub(crate) struct ContextIds {
    run: String,
    effect_key: String,
}

impl ContextIds {
    pub(crate) fn new(run: Uuid, task_run: Uuid) -> ContextIds {
        ContextIds {
            run: run.to_string(),
            effect_key: task_run.to_string(),
        }
    }

    /// The context one attempt of `task` renders its templates with: the engine's parameters,
    /// the dispatcher's worker input and idempotency key, and what recovery shows, all built
    /// here so they cannot drift apart.
    pub(crate) fn context<'a>(
        &'a self,
        input: &'a Value,
        upstream: impl IntoIterator<Item = (&'a str, &'a Value)>,
        pipeline: &'a str,
        task: TaskInfo<'a>,
        code_version: i64,
    ) -> Context<'a> {
        Context {
            input,
            tasks: upstream
                .into_iter()
                .map(|(name, output)| (name, TaskOutput { output }))
                .collect(),
            run: RunInfo {
                id: &self.run,
                pipeline,
            },
            task,
            effect_key: &self.effect_key,
            code_version,
            item: None,
            index: None,
        }
    }
}
