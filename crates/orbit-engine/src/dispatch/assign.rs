//! Handing attempts out: claims for a service, each made an assignment (or a reused output).

use crate::EngineError;
use crate::engine::{ContextIds, Keyed, hydrated, input_failure, keyed, keys_since};
use crate::storage::{self, RunValues, Shared, StorageError};
use chrono::Utc;
use object_store::signer::Method;
use orbit_core::TaskType;
use orbit_core::object::ObjectRef;
use orbit_core::protocol::{
    Assignment, OutputGrant, STORAGE_AUDIENCE, StorageClaims, TASK_AUDIENCE, TaskClaims,
};
use orbit_core::template::{self, Context, TaskInfo};
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
        let loaded = self
            .loaded(task.pipeline_id)
            .await
            .map_err(|e| Failure::error(e.to_string()))?;
        let (stored, dag) = (&loaded.0, &loaded.1);
        // A `for_each` child runs its parent's definition, with its element.
        let (name, index) = orbit_core::pipeline::parent_of(&task.task_name)
            .map_or((task.task_name.as_str(), None), |(p, i)| (p, Some(i)));
        let def = dag
            .index_of(name)
            .map(|i| &stored.pipeline.tasks[i])
            .ok_or_else(|| {
                Failure::fatal(format!("task `{}` is not in the pipeline", task.task_name))
            })?;
        let values = RunValues::new(self.run_input(task.run_id, seen).await?);
        let registered = self.registration(def.service_task(), seen).await?;
        let code_version = registered.map_or(0, |t| t.code_version);
        let options = registered.map(|t| &t.options);
        let outputs = self.upstream(task.run_id, &def.needs).await?;
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
        let ids = ContextIds::new(task.run_id, task.id);
        let mut ctx = ids.context(
            &ctx_input,
            ctx_outputs.iter().map(|(n, output)| (*n, &**output)),
            &stored.name,
            TaskInfo {
                name: &def.name,
                attempt: task.attempt,
            },
            code_version,
        );
        if index.is_some() {
            ctx.item = Some(task.item.as_ref().unwrap_or(&null));
            ctx.index = index;
        }
        let to = storage::output_key(task.run_id, &task.task_name, task.attempt);
        let now = self.clock.now();
        let keyed = keyed(
            self.store.as_ref(),
            &self.storage,
            template,
            &ctx,
            keys_since(now, self.idempotency_ttl),
            &to,
        )
        .await?;
        let key = match keyed {
            Keyed {
                key,
                reused: Some((line, output)),
            } => {
                let transition =
                    self.transition(dag, def, options, task, Outcome::Succeeded(output), now);
                return Ok(Assigned::Reused(Box::new(FinishedAttempt {
                    log: format!("{line}\n"),
                    idempotency_key: key,
                    code_version: Some(code_version),
                    ..reused(task, owner, transition, now)
                })));
            }
            Keyed { key, reused: None } => key,
        };
        // After the key lookup: a reused output needs no input written for a worker.
        let input = match def.params.get("input") {
            // A child's handler gets its element, unless an `input` template says otherwise.
            None if index.is_some() => task.item.clone().unwrap_or(Value::Null),
            None => values.into_input(),
            Some(template) => self.rendered_input(template, &ctx, def, task).await?,
        };
        let timeout = match (def.timeout, options.and_then(|o| o.timeout_ms)) {
            (Some(a), Some(b)) => Some(a.min(Duration::from_millis(b))),
            (a, b) => a.or(b.map(Duration::from_millis)),
        };
        let token = self.task_token(service, owner, task, timeout, code_version, key)?;
        let objects = self.object_urls(&input, &outputs).await?;
        Ok(Assigned::Hand(Box::new(Assignment {
            task_run_id: task.id,
            run_id: task.run_id,
            pipeline: stored.name.clone(),
            task: def.name.clone(),
            service_task: def.service_task().to_owned(),
            attempt: task.attempt,
            code_version,
            input,
            upstream: outputs.into_iter().collect(),
            objects,
            output_threshold: Some(self.storage.threshold() as u64),
            effect_key: task.id.to_string(),
            heartbeat_interval_ms: def.heartbeat_interval.as_millis() as u64,
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
            token,
            traceparent: Some(orbit_core::trace::traceparent(
                task.run_id,
                task.id,
                task.attempt,
            )),
        })))
    }

    /// The outputs of the tasks `needs` names.
    async fn upstream(&self, run: Uuid, needs: &[String]) -> Result<Vec<(String, Value)>, Failure> {
        if needs.is_empty() {
            return Ok(Vec::new());
        }
        self.store
            .outputs(run, needs)
            .await
            .map_err(|e| Failure::error(format!("cannot read upstream outputs: {e}")))
    }

    /// The run's input (read once per claim round).
    async fn run_input(&self, run: Uuid, seen: &mut Seen) -> Result<Value, Failure> {
        if let Some(input) = seen.inputs.get(&run) {
            return Ok(input.clone());
        }
        let input = self
            .store
            .run(run)
            .await
            .map_err(|e| Failure::error(e.to_string()))?
            .input;
        seen.inputs.insert(run, input.clone());
        Ok(input)
    }

    /// The registration of the task `name` (read once per claim round), if any.
    async fn registration<'s>(
        &self,
        name: &str,
        seen: &'s mut Seen,
    ) -> Result<Option<&'s ServiceTask>, Failure> {
        if !seen.registered.contains_key(name) {
            let found = match self.store.service_task(name).await {
                Ok(t) => Some(t),
                Err(StoreError::NotFound(_)) => None,
                Err(e) => return Err(Failure::error(e.to_string())),
            };
            seen.registered.insert(name.to_owned(), found);
        }
        Ok(seen.registered.get(name).and_then(|t| t.as_ref()))
    }

    /// The handler's input from the task's `input` template (kept in object storage when
    /// large); without one it gets the run's input.
    async fn rendered_input(
        &self,
        template: &Value,
        ctx: &Context<'_>,
        def: &orbit_core::pipeline::TaskDef,
        task: &ClaimedTask,
    ) -> Result<Value, Failure> {
        let mut one = Map::new();
        one.insert("input".into(), template.clone());
        let rendered = template::render_params(&one, ctx)
            .map_err(|e| Failure::fatal(format!("`input`: {e}")))?
            .remove("input")
            .unwrap_or(Value::Null);
        let key = storage::handler_input_key(task.run_id, &def.name, task.attempt);
        self.storage
            .offload(rendered, &key)
            .await
            .map_err(|e| Failure::error(format!("cannot store the task's input: {e}")))
    }

    /// The token a worker presents for this attempt: valid past its timeout (a day without
    /// one) plus ten minutes to report.
    fn task_token(
        &self,
        service: &str,
        owner: &str,
        task: &ClaimedTask,
        timeout: Option<Duration>,
        code_version: i64,
        key: Option<String>,
    ) -> Result<String, Failure> {
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
        self.key.sign(&claims).map_err(Failure::error)
    }

    /// Read access to every object the assignment refers to (its input, upstream outputs).
    async fn object_urls(
        &self,
        input: &Value,
        outputs: &[(String, Value)],
    ) -> Result<BTreeMap<String, String>, Failure> {
        let mut objects = BTreeMap::new();
        for value in std::iter::once(input).chain(outputs.iter().map(|(_, v)| v)) {
            if let Some(r) = ObjectRef::of(value) {
                let url = self
                    .grant(&r.backend, &r.key, Method::GET)
                    .await
                    .map_err(|e| Failure::error(format!("cannot grant access to {}: {e}", r.id())))?
                    .0;
                objects.insert(r.id(), url);
            }
        }
        Ok(objects)
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
/// An attempt finished at claim time with the output its idempotency key already holds.
fn reused(
    task: &ClaimedTask,
    owner: &str,
    transition: orbit_core::transition::Transition,
    now: chrono::DateTime<chrono::Utc>,
) -> FinishedAttempt {
    FinishedAttempt {
        task: task.clone(),
        worker: owner.to_owned(),
        started_at: task.claimed_at,
        finished_at: now,
        log: String::new(),
        transition,
        idempotency_key: None,
        reused: true,
        code_version: None,
    }
}

#[derive(Default)]
struct Seen {
    registered: HashMap<String, Option<ServiceTask>>,
    inputs: HashMap<Uuid, Value>,
}

enum Assigned {
    Hand(Box<Assignment>),
    Reused(Box<FinishedAttempt>),
}
