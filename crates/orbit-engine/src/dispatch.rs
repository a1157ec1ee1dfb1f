//! The orchestrator's side of the worker protocol (`docs/worker-protocol.md`): hands `worker`
//! tasks to SDK worker services, by poll or by push, and records what they report.
//!
//! Stateless between calls: an attempt handed out is a lease in the store plus a task token
//! that names it (run, task run, lease epoch, code version, idempotency key). Heartbeats,
//! progress and the callback are fenced by that epoch, so they may reach any server sharing the
//! database, and a worker that lost its lease changes nothing. An attempt whose worker goes
//! silent is taken back by the reaper when its lease expires, like any other.

use crate::EngineError;
use crate::commit_queue::CommitQueue;
use crate::engine::{Keyed, hydrated, input_failure, keyed};
use crate::storage::{self, RunValues, Shared, Storage, StorageError};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use object_store::signer::Method;
use orbit_core::dag::Dag;
use orbit_core::object::{ObjectRef, looks_like_reference};
use orbit_core::protocol::{
    Assignment, Callback, CallbackStatus, MAX_SERVICE_TOKEN_SECS, OutputGrant, SERVICE_AUDIENCE,
    STORAGE_AUDIENCE, ServiceClaims, StorageClaims, TASK_AUDIENCE, TaskClaims,
};
use orbit_core::template::{self, Context, RunInfo, TaskInfo, TaskOutput};
use orbit_core::transition::{Failure, FailureKind, Outcome, Transition, on_attempt_finished};
use orbit_core::{TaskDef, TaskType};
use orbit_store::{
    ClaimRequest, ClaimedTask, FinishedAttempt, ServiceTask, Store, StoreError, StoredPipeline,
};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// Why a worker call was refused before it changed anything.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "missing bearer token (send `Authorization: Bearer <JWT signed with ORBIT_SECRET_KEY>`)"
    )]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token is for task run {token}, not {asked}")]
    WrongTask { token: Uuid, asked: Uuid },
    #[error("the token does not grant {0}")]
    WrongObject(String),
}

/// The signing key shared by the orchestrator and its workers (`ORBIT_SECRET_KEY`).
#[derive(Clone)]
pub struct SecretKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// At least 16 bytes; `openssl rand -hex 32` makes a good one.
    pub fn new(secret: &str) -> Result<SecretKey, String> {
        if secret.len() < 16 {
            return Err(
                "ORBIT_SECRET_KEY must be at least 16 characters (try `openssl rand -hex 32`)"
                    .into(),
            );
        }
        Ok(SecretKey {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        })
    }

    fn validation(audience: &str) -> Validation {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "aud", "sub"]);
        v.leeway = 5;
        v
    }

    /// A worker's own token: it names the service.
    pub fn verify_service(&self, token: &str) -> Result<ServiceClaims, AuthError> {
        let claims = jsonwebtoken::decode::<ServiceClaims>(
            token,
            &self.decoding,
            &Self::validation(SERVICE_AUDIENCE),
        )
        .map_err(|e| AuthError::Invalid(e.to_string()))?
        .claims;
        if claims.exp > now_secs() + MAX_SERVICE_TOKEN_SECS + 5 {
            return Err(AuthError::Invalid(format!(
                "a service token may be valid for at most {MAX_SERVICE_TOKEN_SECS} s"
            )));
        }
        Ok(claims)
    }

    /// A task token, for the task run `asked`.
    pub fn verify_task(&self, token: &str, asked: Uuid) -> Result<TaskClaims, AuthError> {
        let claims = jsonwebtoken::decode::<TaskClaims>(
            token,
            &self.decoding,
            &Self::validation(TASK_AUDIENCE),
        )
        .map_err(|e| AuthError::Invalid(e.to_string()))?
        .claims;
        if claims.trid != asked {
            return Err(AuthError::WrongTask {
                token: claims.trid,
                asked,
            });
        }
        Ok(claims)
    }

    /// A storage token, for `method` on the object `key` of `backend`. No leeway: the
    /// orchestrator checks its own clock's tokens.
    pub fn verify_storage(
        &self,
        token: &str,
        backend: &str,
        key: &str,
        method: &str,
    ) -> Result<StorageClaims, AuthError> {
        let mut v = Self::validation(STORAGE_AUDIENCE);
        v.leeway = 0;
        let claims = jsonwebtoken::decode::<StorageClaims>(token, &self.decoding, &v)
            .map_err(|e| AuthError::Invalid(e.to_string()))?
            .claims;
        if claims.sub != backend || claims.key != key || claims.method != method {
            return Err(AuthError::WrongObject(format!("{method} {backend}/{key}")));
        }
        Ok(claims)
    }

    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| e.to_string())
    }
}

fn now_secs() -> u64 {
    Utc::now().timestamp().max(0) as u64
}

/// Hands worker tasks out and takes their results in.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    storage: Arc<Storage>,
    key: SecretKey,
    idempotency_ttl: Duration,
    /// No retry waits longer (MAX_RETRY_DELAY_MS).
    max_retry_delay: Duration,
    /// Pipeline versions never change: parse each once.
    pipelines: Mutex<HashMap<Uuid, Arc<(StoredPipeline, Dag)>>>,
    /// Push mode, per service: how many attempts its workers take at once (from their
    /// registrations here) and the attempts pushed and not yet called back, with when to stop
    /// counting them (a worker that died never calls back; the reaper takes its task back).
    pushed: Mutex<HashMap<String, PushState>>,
    /// Callbacks and polls share commits through it.
    commits: CommitQueue,
    /// Per service, its waiting pollers: a wake-up goes to one, which passes it on when it
    /// took all it asked for (more may be ready), so a commit wakes as many pollers as there
    /// is work for, not all of them.
    pollers: Mutex<HashMap<String, Arc<Notify>>>,
    /// When each worker's liveness was last written here: a poll writes it at most every
    /// [`SEEN_EVERY`], not on every call.
    seen: Mutex<HashMap<String, std::time::Instant>>,
    /// When a push round last found no push-mode service: the next rounds within a second
    /// need not ask the store again (rounds follow every commit).
    no_push_since: Mutex<Option<std::time::Instant>>,
}

/// How often a polling worker's liveness is written (its own heartbeat is every 5 s).
const SEEN_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct PushState {
    limit: usize,
    inflight: HashMap<Uuid, std::time::Instant>,
}

/// Attempts a push-mode service gets at once when no registration here said how many.
const DEFAULT_PUSH_LIMIT: usize = 4;

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

/// What a worker reported, as the store took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    Kept,
    /// The attempt's lease was taken over (it expired, or the run was cancelled): nothing kept.
    LeaseLost,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        storage: Arc<Storage>,
        key: SecretKey,
        idempotency_ttl: Duration,
    ) -> Dispatcher {
        Dispatcher {
            store: store.clone(),
            storage,
            key,
            idempotency_ttl,
            max_retry_delay: orbit_core::retry::DEFAULT_MAX_DELAY,
            pipelines: Mutex::new(HashMap::new()),
            pushed: Mutex::new(HashMap::new()),
            commits: CommitQueue::new(store.clone()),
            pollers: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            no_push_since: Mutex::new(None),
        }
    }

    /// No retry of a worker task waits longer than `cap` (MAX_RETRY_DELAY_MS).
    pub fn with_max_retry_delay(mut self, cap: Duration) -> Dispatcher {
        self.max_retry_delay = cap;
        self
    }

    /// Remembers how many attempts a push-mode service's workers take at once.
    pub fn set_push_limit(&self, service: &str, limit: u32) {
        if let Ok(mut m) = self.pushed.lock() {
            let state = m.entry(service.to_owned()).or_default();
            state.limit = (limit as usize).max(1);
        }
        if let Ok(mut n) = self.no_push_since.lock() {
            *n = None;
        }
    }

    /// One push round: for every push-mode service seen recently, claims what its free slots
    /// allow and POSTs each attempt to its URL with the task token. A refused or failed POST is
    /// a failed attempt (retried with backoff). Returns how many attempts were handed out.
    /// With no push-mode service at all, returns `None`: nothing to wait for work for.
    pub async fn push_round(&self, http: &reqwest::Client) -> Result<Option<usize>, EngineError> {
        let recently = |at: &std::time::Instant| at.elapsed() < Duration::from_secs(1);
        if self
            .no_push_since
            .lock()
            .is_ok_and(|n| n.as_ref().is_some_and(recently))
        {
            return Ok(None);
        }
        let now = Utc::now();
        let services = self.store.services().await?;
        if services.iter().all(|s| s.url.is_none()) {
            if let Ok(mut n) = self.no_push_since.lock() {
                *n = Some(std::time::Instant::now());
            }
            return Ok(None);
        }
        let mut handed = 0;
        for service in services {
            let Some(url) = service.url.clone() else {
                continue;
            };
            if (now - service.last_seen_at).num_seconds() > 60 {
                continue;
            }
            let free = {
                let Ok(mut m) = self.pushed.lock() else {
                    continue;
                };
                let state = m.entry(service.id.clone()).or_default();
                let at = std::time::Instant::now();
                state.inflight.retain(|_, until| *until > at);
                let limit = if state.limit == 0 {
                    DEFAULT_PUSH_LIMIT
                } else {
                    state.limit
                };
                limit.saturating_sub(state.inflight.len())
            };
            if free == 0 {
                continue;
            }
            let tasks: Vec<String> = self
                .store
                .service_tasks(Some(&service.id))
                .await?
                .into_iter()
                .map(|t| t.name)
                .collect();
            let owner = format!("push:{}", service.id);
            let assignments = self.claim(&service.id, &owner, &tasks, free).await?;
            handed += assignments.len();
            if let Ok(mut m) = self.pushed.lock() {
                let state = m.entry(service.id.clone()).or_default();
                for a in &assignments {
                    let deadline = std::time::Instant::now()
                        + a.timeout_ms
                            .map_or(Duration::from_secs(600), Duration::from_millis);
                    state.inflight.insert(a.task_run_id, deadline);
                }
            }
            // All at once: a worker answers a push at once (202) and runs it after, so the
            // round takes one round trip, not one per attempt.
            let pushes = assignments
                .iter()
                .map(|a| self.push_one(http, &service.id, &url, a));
            for result in futures::future::join_all(pushes).await {
                result?;
            }
        }
        Ok(Some(handed))
    }

    /// POSTs one attempt to a push-mode worker; a refused or failed POST is a failed attempt.
    async fn push_one(
        &self,
        http: &reqwest::Client,
        service: &str,
        url: &str,
        assignment: &Assignment,
    ) -> Result<(), EngineError> {
        let sent = http
            .post(url)
            .bearer_auth(&assignment.token)
            .json(assignment)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let refused = match sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the worker at {url} answered {}", r.status())),
            Err(e) => Some(format!("cannot reach the worker at {url}: {e}")),
        };
        let Some(why) = refused else {
            return Ok(());
        };
        tracing::warn!(service, task = %assignment.task, "{why}");
        if let Ok(claims) = self
            .key
            .verify_task(&assignment.token, assignment.task_run_id)
        {
            let failed = Callback {
                task_run_id: assignment.task_run_id,
                status: CallbackStatus::Failed,
                output: Value::Null,
                run_next: None,
                error: Some(format!("push failed: {why}")),
                retryable: true,
                logs: Vec::new(),
            };
            self.complete(&claims, failed).await?;
        }
        Ok(())
    }

    /// The wake-up of `service`'s waiting pollers.
    pub fn pollers(&self, service: &str) -> Arc<Notify> {
        let mut m = self.pollers.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(service.to_owned()).or_default().clone()
    }

    /// Wakes one waiting poller of every service; each passes the wake-up on while it finds
    /// work. Until `shutdown`: on every store signal, and once per `interval` for what comes
    /// due without one (a retry's backoff ending; on SQLite, another process's writes).
    pub async fn wake_pollers(
        &self,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut work = self.store.work_signal();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = work.changed() => {}
                _ = tokio::time::sleep(interval) => {}
            }
            let all: Vec<Arc<Notify>> = self
                .pollers
                .lock()
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            for n in all {
                n.notify_one();
            }
        }
    }

    /// Whether a poll should write its worker's liveness now (at most every [`SEEN_EVERY`]).
    pub fn due_seen(&self, worker: &str) -> bool {
        let now = std::time::Instant::now();
        let mut m = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(worker)
            .is_some_and(|at| now.duration_since(*at) < SEEN_EVERY)
        {
            return false;
        }
        if m.len() > 10_000 {
            m.retain(|_, at| now.duration_since(*at) < SEEN_EVERY);
        }
        m.insert(worker.to_owned(), now);
        true
    }

    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    async fn loaded(&self, id: Uuid) -> Result<Arc<(StoredPipeline, Dag)>, EngineError> {
        if let Some(l) = self.pipelines.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(l);
        }
        let stored = self.store.pipeline_version(id).await?;
        let dag = Dag::new(&stored.pipeline).map_err(|e| {
            StoreError::Corrupt(format!(
                "stored pipeline `{}` is not a DAG: {e}",
                stored.name
            ))
        })?;
        let l = Arc::new((stored, dag));
        if let Ok(mut m) = self.pipelines.lock() {
            m.insert(id, l.clone());
        }
        Ok(l)
    }

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
            self.idempotency_ttl,
            &to,
        )
        .await?;
        if let Some((line, output)) = reused {
            let now = Utc::now();
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
    async fn grant(
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

    /// A callback's output as the store keeps it: a reference is accepted only to this
    /// attempt's own object, which must exist (its size is read from the backend); an inline
    /// output over the threshold is stored here.
    /// Also returns a line for the attempt's log that says where a stored output came from.
    async fn output_of(
        &self,
        claims: &TaskClaims,
        output: Value,
    ) -> Result<(Value, Option<String>), EngineError> {
        let key = storage::output_key(claims.run, &claims.task, claims.attempt);
        if let Some(r) = ObjectRef::of(&output) {
            if r.key != key {
                return Err(EngineError::BadRequest(format!(
                    "the output refers to object `{}`; this attempt may only write `{key}`",
                    r.id()
                )));
            }
            let size = match self.storage.size(&r.backend, &r.key).await {
                Ok(size) => size,
                Err(StorageError::NotFound(_)) => {
                    return Err(EngineError::BadRequest(format!(
                        "the output object `{}` was not written; PUT it to the granted URL first",
                        r.id()
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            let line = format!(
                "[orbit] output ({size} bytes) written by the worker to object `{}`",
                r.id()
            );
            return Ok((ObjectRef { size, ..r }.to_value(), Some(line)));
        }
        if looks_like_reference(&output) {
            return Err(EngineError::BadRequest(
                "the output has the shape of an object reference but is not a valid one".into(),
            ));
        }
        let stored = self.storage.offload(output, &key).await?;
        let line = ObjectRef::of(&stored).map(|r| {
            format!(
                "[orbit] output ({} bytes) sent inline; stored as object `{}`",
                r.size,
                r.id()
            )
        });
        Ok((stored, line))
    }

    /// A claimed task that could not be handed out: recorded as a failed attempt.
    async fn failed(
        &self,
        task: &ClaimedTask,
        owner: &str,
        failure: Failure,
    ) -> Result<FinishedAttempt, EngineError> {
        let loaded = self.loaded(task.pipeline_id).await?;
        let now = Utc::now();
        let transition = match loaded.1.index_of(&task.task_name) {
            Some(i) => {
                let def = &loaded.0.pipeline.tasks[i];
                self.transition(
                    &loaded.1,
                    def,
                    None,
                    task,
                    Outcome::Failed(failure.clone()),
                    now,
                )
            }
            None => Transition::Dead {
                failure: failure.clone(),
                cancel: Vec::new(),
            },
        };
        Ok(FinishedAttempt {
            task: task.clone(),
            worker: owner.to_owned(),
            started_at: task.claimed_at,
            finished_at: now,
            log: format!(
                "[orbit] could not hand the task to a worker: {}\n",
                failure.message
            ),
            transition,
            idempotency_key: None,
            reused: false,
            code_version: None,
        })
    }

    fn transition(
        &self,
        dag: &Dag,
        def: &TaskDef,
        options: Option<&orbit_core::protocol::TaskRegistration>,
        task: &ClaimedTask,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> Transition {
        let Some(i) = dag.index_of(&def.name) else {
            return Transition::Dead {
                failure: Failure::fatal(format!("task `{}` is not in the pipeline", def.name)),
                cancel: Vec::new(),
            };
        };
        // The service's own retry count, when it gives one, wins over the pipeline default.
        let mut policy = def.retry.clone();
        policy.max_delay = policy.max_delay.min(self.max_retry_delay);
        if let Some(retries) = options.and_then(|o| o.retries) {
            policy.max_attempts = retries.saturating_add(1);
        }
        on_attempt_finished(dag, i, &policy, task.tries, outcome, now, fastrand::f64())
    }

    /// Renews the lease of the attempt the token names.
    pub async fn heartbeat(&self, claims: &TaskClaims) -> Result<Recorded, EngineError> {
        let lost = self
            .store
            .extend_leases(&[(claims.trid, claims.epoch)], Utc::now())
            .await?;
        Ok(if lost.is_empty() {
            Recorded::Kept
        } else {
            Recorded::LeaseLost
        })
    }

    /// Records progress and renews the lease.
    pub async fn progress(
        &self,
        claims: &TaskClaims,
        fraction: f64,
        message: Option<&str>,
    ) -> Result<Recorded, EngineError> {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let now = Utc::now();
        if !self
            .store
            .set_progress(claims.trid, claims.epoch, fraction, message, now)
            .await?
        {
            return Ok(Recorded::LeaseLost);
        }
        self.heartbeat(claims).await
    }

    /// Records how the attempt ended: its output and routing choice, or its failure.
    pub async fn complete(
        &self,
        claims: &TaskClaims,
        callback: Callback,
    ) -> Result<Recorded, EngineError> {
        let worker = claims.owner.as_str();
        let loaded = self.loaded(claims.pid).await?;
        let (stored, dag) = (&loaded.0, &loaded.1);
        let task = ClaimedTask {
            id: claims.trid,
            run_id: claims.run,
            pipeline_id: claims.pid,
            task_name: claims.task.clone(),
            attempt: claims.attempt,
            tries: claims.tries,
            lease_epoch: claims.epoch,
            lease_expires_at: Utc::now(),
            claimed_at: DateTime::from_timestamp_millis(claims.claimed_ms).unwrap_or_default(),
        };
        // By the DAG's index: a scan of the task list per callback is quadratic in big runs.
        let Some(def) = dag
            .index_of(&claims.task)
            .map(|i| &stored.pipeline.tasks[i])
        else {
            return Err(StoreError::Corrupt(format!(
                "task `{}` is not in its pipeline",
                claims.task
            ))
            .into());
        };
        // The registration matters only for a failure (its retry count) or a routing choice
        // the pipeline does not bound: read it only then, not on every success.
        let needs_options = callback.status != CallbackStatus::Succeeded
            || (callback.run_next.is_some() && def.allowed_next.is_empty());
        let options = if needs_options {
            match self.store.service_task(def.service_task()).await {
                Ok(t) => Some(t.options),
                Err(StoreError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        let (output, stored_line) = match callback.status {
            CallbackStatus::Succeeded => self.output_of(claims, callback.output).await?,
            _ => (Value::Null, None),
        };
        let outcome = match callback.status {
            CallbackStatus::Succeeded => match callback.run_next {
                None => Outcome::Succeeded(output),
                Some(run_next) => {
                    let allowed = if def.allowed_next.is_empty() {
                        options
                            .as_ref()
                            .map(|o| o.allowed_next.clone())
                            .unwrap_or_default()
                    } else {
                        def.allowed_next.clone()
                    };
                    Outcome::Routed {
                        output,
                        allowed,
                        run_next,
                    }
                }
            },
            CallbackStatus::Failed | CallbackStatus::Timeout => {
                let kind = match (callback.status, callback.retryable) {
                    (CallbackStatus::Timeout, _) => FailureKind::Timeout,
                    (_, true) => FailureKind::Error,
                    (_, false) => FailureKind::Fatal,
                };
                Outcome::Failed(Failure::new(
                    kind,
                    callback
                        .error
                        .unwrap_or_else(|| "the handler failed".into()),
                ))
            }
        };
        let now = Utc::now();
        let mut log = callback.logs.join("\n");
        if !log.is_empty() {
            log.push('\n');
        }
        if let Some(line) = stored_line {
            log.push_str(&line);
            log.push('\n');
        }
        let finished = FinishedAttempt {
            transition: self.transition(dag, def, options.as_ref(), &task, outcome, now),
            started_at: task.claimed_at,
            task,
            worker: worker.to_owned(),
            finished_at: now,
            log,
            idempotency_key: claims.key.clone(),
            reused: false,
            code_version: Some(claims.code_version),
        };
        // The worker's slot is free before the commit signals new work: freed after it, a push
        // round woken by that signal could still count the slot as taken and then sleep a
        // second with work ready (seen as 1 s stalls in push benchmarks).
        if let Ok(mut m) = self.pushed.lock()
            && let Some(state) = m.get_mut(&claims.sub)
        {
            state.inflight.remove(&claims.trid);
        }
        let outcome = self.commits.commit(vec![finished], None).await?;
        Ok(if outcome.lease_lost.is_empty() {
            Recorded::Kept
        } else {
            Recorded::LeaseLost
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
