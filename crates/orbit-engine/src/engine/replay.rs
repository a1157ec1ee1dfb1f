//! `orbit context` and `orbit replay`: one attempt's context rebuilt from what the store
//! recorded (the run's input, the upstream outputs, the task's rendered parameters), and the
//! attempt executed again on this machine without touching the run.

use super::attempt::{Io, execute};
use super::{ContextIds, Engine, EngineError, hydrated, input_failure};
use crate::log::LogBuffer;
use crate::storage::RunValues;
use orbit_core::TaskType;
use orbit_core::template::{self, TaskInfo};
use orbit_store::{AttemptRecord, ClaimedTask, StoreError, TaskRunRecord};
use serde::Serialize;
use serde_json::Value;

/// What an attempt was given.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recorded {
    pub task_run: TaskRunRecord,
    /// The attempt this is the context of (the task run's next one when none ran yet).
    pub attempt: u32,
    /// That attempt's record, when it ran.
    pub record: Option<AttemptRecord>,
    /// The task's type and its parameters rendered over `context`.
    pub task_type: String,
    pub params: Value,
    /// Exactly what the attempt's templates saw (input and upstream outputs with large values
    /// read back from object storage): what an SDK's `run_local` can be fed.
    pub context: Value,
}

/// An attempt executed again here.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    pub recorded: Recorded,
    /// The output, or the failure's message.
    pub output: Result<Value, String>,
    pub log: String,
}

/// What a context is rebuilt from, owned.
struct Parts {
    task_run: TaskRunRecord,
    def: orbit_core::TaskDef,
    pipeline: String,
    version: i64,
    record: Option<AttemptRecord>,
    attempt: u32,
    index: Option<u32>,
    input: Value,
    upstream: Vec<(String, Value)>,
}

impl Parts {
    fn context<'a>(&'a self, ids: &'a ContextIds) -> template::Context<'a> {
        let mut ctx = ids.context(
            &self.input,
            self.upstream.iter().map(|(n, o)| (n.as_str(), o)),
            &self.pipeline,
            TaskInfo {
                name: &self.def.name,
                attempt: self.attempt,
            },
            self.version,
        );
        if self.index.is_some() {
            ctx.item = Some(self.task_run.map_item.as_ref().unwrap_or(&Value::Null));
            ctx.index = self.index;
        }
        ctx
    }

    fn recorded(&self, ctx: &template::Context<'_>) -> Result<Recorded, EngineError> {
        let params = template::render_params(&self.def.params, ctx)
            .map(Value::Object)
            .unwrap_or_else(|e| Value::String(format!("cannot render: {e}")));
        Ok(Recorded {
            task_type: self.def.task_type.as_str().to_owned(),
            context: serde_json::to_value(ctx).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            task_run: self.task_run.clone(),
            attempt: self.attempt,
            record: self.record.clone(),
            params,
        })
    }
}

impl Engine {
    /// The context of attempt `attempt` (the last one when `None`) of task run `id` (or a
    /// unique prefix of it).
    pub async fn recorded(&self, id: &str, attempt: Option<u32>) -> Result<Recorded, EngineError> {
        let parts = self.parts(id, attempt).await?;
        let ids = ContextIds::new(parts.task_run.run_id, parts.task_run.id);
        let ctx = parts.context(&ids);
        parts.recorded(&ctx)
    }

    /// Executes attempt `attempt` (the last when `None`) of built-in task run `id` again, here,
    /// from its recorded context. The run is not touched: nothing is claimed or written.
    pub async fn replay(&self, id: &str, attempt: Option<u32>) -> Result<Replayed, EngineError> {
        let parts = self.parts(id, attempt).await?;
        let def = &parts.def;
        if !TaskType::BUILT_IN.contains(&def.task_type)
            || def.task_type == TaskType::Pipeline
            || (def.for_each.is_some() && parts.index.is_none())
        {
            return Err(EngineError::Replay(format!(
                "task `{}` is a {} task: replay runs shell, http, sleep and script tasks (and a map's children); `orbit context` gives its context for an SDK's run_local",
                def.name,
                if def.for_each.is_some() {
                    "for_each"
                } else {
                    def.task_type.as_str()
                }
            )));
        }
        let ids = ContextIds::new(parts.task_run.run_id, parts.task_run.id);
        let ctx = parts.context(&ids);
        let claimed = ClaimedTask {
            id: parts.task_run.id,
            run_id: parts.task_run.run_id,
            pipeline_id: self.store.run(parts.task_run.run_id).await?.pipeline_id,
            task_name: parts.task_run.task_name.clone(),
            attempt: parts.attempt,
            tries: parts.attempt,
            lease_epoch: 0,
            lease_expires_at: chrono::Utc::now(),
            claimed_at: chrono::Utc::now(),
            item: parts.task_run.map_item.clone(),
            wake: parts.task_run.wake.clone(),
            ready_at: None,
        };
        let log = LogBuffer::new();
        let io = Io {
            store: self.store.as_ref(),
            storage: &self.storage,
            http: &self.http,
            keys_since: chrono::Utc::now(),
            supervisor: self.config.supervisor.as_deref(),
        };
        let (run, key) = (claimed.run_id.to_string(), claimed.id.to_string());
        let output = execute(def, &ctx, &claimed, &key, &run, &log, &io)
            .await
            .map_err(|f| f.message);
        let recorded = parts.recorded(&ctx)?;
        Ok(Replayed {
            recorded,
            output,
            log: log.take(),
        })
    }

    async fn parts(&self, id: &str, attempt: Option<u32>) -> Result<Parts, EngineError> {
        let task_run = self.store.task_run(id).await?;
        let run = self.store.run(task_run.run_id).await?;
        let stored = self.store.pipeline_version(run.pipeline_id).await?;
        let (name, index) = orbit_core::pipeline::parent_of(&task_run.task_name)
            .map_or((task_run.task_name.as_str(), None), |(p, i)| (p, Some(i)));
        let def =
            stored.pipeline.task(name).cloned().ok_or_else(|| {
                StoreError::Corrupt(format!("task `{name}` is not in its pipeline"))
            })?;
        let attempts = self
            .store
            .attempts(run.id, Some(&task_run.task_name))
            .await?;
        let record = match attempt {
            Some(n) => Some(
                attempts
                    .iter()
                    .find(|a| a.attempt == n)
                    .cloned()
                    .ok_or_else(|| {
                        StoreError::NotFound(format!(
                            "attempt {n} of task run {} (it has {})",
                            task_run.id,
                            attempts.len()
                        ))
                    })?,
            ),
            None => attempts.last().cloned(),
        };
        let values = RunValues::new(run.input.clone());
        let input = values
            .input(&self.storage)
            .await
            .map_err(|e| EngineError::Replay(input_failure(e).message))?;
        let input = Value::clone(&input);
        let outputs = self.store.outputs(run.id, &def.needs).await?;
        let upstream = hydrated(&self.storage, &values, &outputs)
            .await
            .map_err(|f| EngineError::Replay(f.message))?
            .into_iter()
            .map(|(n, o)| (n.to_owned(), Value::clone(&o)))
            .collect();
        Ok(Parts {
            attempt: record.as_ref().map_or(task_run.attempt + 1, |a| a.attempt),
            task_run,
            def,
            pipeline: stored.name,
            version: stored.version,
            record,
            index,
            input,
            upstream,
        })
    }
}
