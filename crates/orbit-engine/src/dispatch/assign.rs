//! Handing attempts out: claims for a service, each made an assignment (or a reused output).

use crate::EngineError;
use crate::engine::{Keyed, hydrated, input_failure, keyed, keys_since};
use crate::storage::{self, RunValues, Shared, StorageError};
use chrono::Utc;
use object_store::signer::Method;
use orbit_core::TaskType;
use orbit_core::object::ObjectRef;
use orbit_core::protocol::{
    Assignment, OutputGrant, STORAGE_AUDIENCE, StorageClaims, TASK_AUDIENCE, TaskClaims,
};
use orbit_core::template::{self, Context, RunInfo, TaskInfo, TaskOutput};
use orbit_core::transition::{Failure, Outcome};
use orbit_store::{ClaimRequest, ClaimedTask, FinishedAttempt, ServiceTask, StoreError};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use uuid::Uuid;

use super::{Dispatcher, now_secs};

impl Dispatcher {
    /// Claims up to `max` ready tasks served by `tasks` (registered task names) for `owner`,
    /// and returns them as assignments. A task whose idempotency key already holds an output
    /// is finished with that output here and not handed out.
    pub async fn claim(
        &self,
        service: &str,
        owner: &str,
        tasks: &[String],
        max: usize,
    ) -> Result<Vec<Assignment>, EngineError> {
        if max == 0 || tasks.is_empty() {
            return Ok(Vec::new());
        }
        let request = ClaimRequest {
            owner: owner.to_owned(),
            limit: max,
            run: None,
            queues: tasks.to_vec(),
            types: vec![TaskType::Worker.as_str().to_owned()],
        };
        let claimed = self
            .commits
            .commit(Vec::new(), Some(request))
            .await?
            .claimed;
        let mut seen = Seen::default();
        let mut assignments = Vec::with_capacity(claimed.len());
        let mut reused = Vec::new();
        for task in claimed {
            match self.assign(service, owner, &task, &mut seen).await {
                Ok(Assigned::Hand(a)) => assignments.push(*a),
                Ok(Assigned::Reused(f)) => reused.push(*f),
                Err(failure) => reused.push(self.failed(&task, owner, failure).await?),
            }
        }
        if !reused.is_empty() {
            self.commits.commit(reused, None).await?;
        }
        Ok(assignments)
    }

    async fn assign(
        &self,
        service: &str,
        owner: &str,
        task: &ClaimedTask,
        seen: &mut Seen,
    ) -> Result<Assigned, Failure> {
        let registered = &mut seen.registered;
        let loaded = self
            .loaded(task.pipeline_id)
            .await
            .map_err(|e| Failure::error(e.to_string()))?;
        let (stored, dag) = (&loaded.0, &loaded.1);
        let def = dag
            .index_of(&task.task_name)
            .map(|i| &stored.pipeline.tasks[i])
            .ok_or_else(|| {
                Failure::fatal(format!("task `{}` is not in the pipeline", task.task_name))
            })?;
        let name = def.service_task().to_owned();
        if !registered.contains_key(&name) {
            let found = match self.store.service_task(&name).await {
                Ok(t) => Some(t),
                Err(StoreError::NotFound(_)) => None,
                Err(e) => return Err(Failure::error(e.to_string())),
            };
            registered.insert(name.clone(), found);
        }
        let code_version = registered
            .get(&name)
            .and_then(|t| t.as_ref())
            .map_or(0, |t| t.code_version);
        let options = registered
            .get(&name)
            .and_then(|t| t.as_ref())
            .map(|t| &t.options);
        let input = match seen.inputs.get(&task.run_id) {
            Some(input) => input.clone(),
            None => {
                let input = self
                    .store
                    .run(task.run_id)
                    .await
                    .map_err(|e| Failure::error(e.to_string()))?
                    .input;
                seen.inputs.insert(task.run_id, input.clone());
                input
            }
        };
        let values = RunValues::new(input);
        let outputs = if def.needs.is_empty() {
            Vec::new()
        } else {
            self.store
                .outputs(task.run_id, &def.needs)
                .await
                .map_err(|e| Failure::error(format!("cannot read upstream outputs: {e}")))?
        };
        let template = def
            .idempotency_key
            .as_deref()
            .or(options.and_then(|o| o.idempotency_key.as_deref()));
        // Large values go to the worker by reference. Only a template that reads them (a
        // rendered `input`, an idempotency key) makes the orchestrator fetch them itself.
        let null = Value::Null;
        let (ctx_input, ctx_outputs) = if def.params.contains_key("input") || template.is_some() {
            let i = values.input(&self.storage).await.map_err(input_failure)?;
            (i, hydrated(&self.storage, &values, &outputs).await?)
        } else {
            (Shared::Inline(&null), Vec::new())
        };
        let run_id = task.run_id.to_string();
        let effect_key = task.id.to_string();
        let ctx = Context {
            input: &ctx_input,
            tasks: ctx_outputs
                .iter()
                .map(|(n, output)| (*n, TaskOutput { output }))
                .collect::<BTreeMap<_, _>>(),
            run: RunInfo {
                id: &run_id,
                pipeline: &stored.name,
            },
            task: TaskInfo {
                name: &def.name,
                attempt: task.attempt,
            },
            effect_key: &effect_key,
            code_version,
        };
        let to = storage::output_key(task.run_id, &task.task_name, task.attempt);
        let Keyed { key, reused } = keyed(
            self.store.as_ref(),
            &self.storage,
            template,
            &ctx,
            keys_since(self.clock.now(), self.idempotency_ttl),
            &to,
        )
        .await?;
        if let Some((line, output)) = reused {
            let now = self.clock.now();
            return Ok(Assigned::Reused(Box::new(FinishedAttempt {
                task: task.clone(),
                worker: owner.to_owned(),
                started_at: task.claimed_at,
                finished_at: now,
                log: format!("{line}\n"),
                transition: self.transition(
                    dag,
                    def,
                    options,
                    task,
                    Outcome::Succeeded(output),
                    now,
                ),
                idempotency_key: key,
                reused: true,
                code_version: Some(code_version),
            })));
        }
        // After the key lookup: a reused output needs no input written for a worker.
        let handler_input = match def.params.get("input") {
            None => values.into_input(),
            Some(template_value) => {
                let mut one = Map::new();
                one.insert("input".into(), template_value.clone());
                let rendered = template::render_params(&one, &ctx)
                    .map_err(|e| Failure::fatal(format!("`input`: {e}")))?
                    .remove("input")
                    .unwrap_or(Value::Null);
                let key = storage::handler_input_key(task.run_id, &def.name, task.attempt);
                self.storage
                    .offload(rendered, &key)
                    .await
                    .map_err(|e| Failure::error(format!("cannot store the task's input: {e}")))?
            }
        };
        let timeout = match (def.timeout, options.and_then(|o| o.timeout_ms)) {
            (Some(a), Some(b)) => Some(a.min(Duration::from_millis(b))),
            (a, b) => a.or(b.map(Duration::from_millis)),
        };
        let exp = now_secs() + timeout.unwrap_or(Duration::from_secs(24 * 3600)).as_secs() + 600;
        let claims = TaskClaims {
            sub: service.to_owned(),
            aud: TASK_AUDIENCE.to_owned(),
            exp,
            trid: task.id,
            run: task.run_id,
            pid: task.pipeline_id,
            task: task.task_name.clone(),
            attempt: task.attempt,
            tries: task.tries,
            epoch: task.lease_epoch,
            claimed_ms: task.claimed_at.timestamp_millis(),
            code_version,
            owner: owner.to_owned(),
            key,
        };
        let token = self.key.sign(&claims).map_err(Failure::error)?;
        let mut objects = BTreeMap::new();
        for value in std::iter::once(&handler_input).chain(outputs.iter().map(|(_, v)| v)) {
            if let Some(r) = ObjectRef::of(value) {
                let url = self
                    .grant(&r.backend, &r.key, Method::GET)
                    .await
                    .map_err(|e| Failure::error(format!("cannot grant access to {}: {e}", r.id())))?
                    .0;
                objects.insert(r.id(), url);
            }
        }
        Ok(Assigned::Hand(Box::new(Assignment {
            task_run_id: task.id,
            run_id: task.run_id,
            pipeline: stored.name.clone(),
            task: def.name.clone(),
            service_task: name,
            attempt: task.attempt,
            code_version,
            input: handler_input,
            upstream: outputs.into_iter().collect(),
            objects,
            output_threshold: Some(self.storage.threshold() as u64),
            effect_key,
            heartbeat_interval_ms: def.heartbeat_interval.as_millis() as u64,
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
            token,
        })))
    }

    /// Access to one object for `grant_ttl`: a pre-signed URL when the backend can sign one,
    /// else this server's `/api/v1/storage/…` with a storage token. Returns the URL and when
    /// it expires (ms since the epoch).
    pub(super) async fn grant(
        &self,
        backend: &str,
        key: &str,
        method: Method,
    ) -> Result<(String, i64), StorageError> {
        let ttl = self.storage.grant_ttl();
        let expires_ms = Utc::now().timestamp_millis() + ttl.as_millis() as i64;
        if let Some(url) = self
            .storage
            .presign(backend, key, method.clone(), ttl)
            .await?
        {
            return Ok((url, expires_ms));
        }
        let claims = StorageClaims {
            sub: backend.to_owned(),
            aud: STORAGE_AUDIENCE.to_owned(),
            exp: (expires_ms / 1000) as u64,
            key: key.to_owned(),
            max: (method == Method::PUT).then_some(storage::MAX_UPLOAD_BYTES),
            method: method.as_str().to_owned(),
        };
        let token = self.key.sign(&claims).map_err(|e| StorageError::Backend {
            backend: backend.to_owned(),
            message: format!("cannot sign a storage token: {e}"),
        })?;
        Ok((
            format!("/api/v1/storage/{backend}/{key}?token={token}"),
            expires_ms,
        ))
    }

    /// Where the attempt the token names may PUT its output: its own key, nothing else.
    pub async fn output_grant(&self, claims: &TaskClaims) -> Result<OutputGrant, EngineError> {
        let key = storage::output_key(claims.run, &claims.task, claims.attempt);
        let backend = self.storage.default_backend().to_owned();
        let (url, expires_at_ms) = self.grant(&backend, &key, Method::PUT).await?;
        Ok(OutputGrant {
            url,
            reference: ObjectRef {
                backend,
                key,
                size: 0,
            },
            expires_at_ms,
        })
    }
}

/// What one claim's assignments read once and share: registrations by task name, run inputs.
#[derive(Default)]
struct Seen {
    registered: HashMap<String, Option<ServiceTask>>,
    inputs: HashMap<Uuid, Value>,
}

enum Assigned {
    Hand(Box<Assignment>),
    Reused(Box<FinishedAttempt>),
}
