//! A worker service: its registered handlers and the protocol client that serves them.

use crate::handler::{Context, Handler, Logger, ProgressSink, TaskError, TaskResult};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use orbit_core::protocol::{
    Assignment, Callback, CallbackStatus, PollRequest, Progress, Registered, Registration,
    TASK_AUDIENCE, TaskClaims, TaskHeartbeat, TaskRegistration, WorkerHeartbeat,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub(crate) use crate::protocol::Client;

/// What can stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error("worker configuration: {0}")]
    Config(String),
    #[error("no task `{0}` is registered with this worker")]
    UnknownTask(String),
    #[error("the orchestrator at {url} refused {what}: {status} {body}")]
    Refused {
        url: String,
        what: &'static str,
        status: u16,
        body: String,
    },
    #[error("cannot reach the orchestrator at {url}: {error}")]
    Unreachable { url: String, error: String },
    #[error("cannot serve push requests: {0}")]
    Listen(String),
}

/// Per-task options, sent with the registration.
#[derive(Clone, Debug, Default)]
pub struct TaskOptions {
    /// The tasks this one may choose among with [`TaskResult::run_next`].
    pub allowed_next: Vec<String>,
    /// A template over the context, e.g. `v{{ code_version }}-{{ input.orderId }}`: a task
    /// whose key matches a succeeded one within the TTL reuses its output instead of running.
    pub idempotency_key: Option<String>,
    /// Retries after the first attempt (the pipeline's policy when `None`).
    pub retries: Option<u32>,
    pub timeout: Option<Duration>,
    /// How often the SDK heartbeats while the handler runs (the orchestrator's interval for
    /// the task when shorter).
    pub heartbeat_interval: Option<Duration>,
    /// An explicit code version, instead of the handler's compile-time hash.
    pub code_version: Option<String>,
}

pub(crate) struct Registered_ {
    pub(crate) handler: Box<dyn Handler>,
    pub(crate) options: TaskOptions,
}

/// Builds a [`Worker`].
#[derive(Debug, Default)]
pub struct WorkerBuilder {
    url: Option<String>,
    service_id: Option<String>,
    secret_key: Option<String>,
    concurrency: Option<usize>,
    version: Option<String>,
}

impl WorkerBuilder {
    /// Where `orbit server` listens, e.g. `http://127.0.0.1:3000`.
    pub fn orchestrator_url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    pub fn service_id(mut self, id: impl Into<String>) -> Self {
        self.service_id = Some(id.into());
        self
    }

    /// The orchestrator's `ORBIT_SECRET_KEY`.
    pub fn secret_key(mut self, key: impl Into<String>) -> Self {
        self.secret_key = Some(key.into());
        self
    }

    /// Most handlers running at once (default 8).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// The service's own version, shown by `orbit services`.
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = Some(v.into());
        self
    }

    pub fn build(self) -> Result<Worker, SdkError> {
        let url = self.url.unwrap_or_default();
        let url = url.trim_end_matches('/').to_owned();
        let service_id = self.service_id.unwrap_or_default();
        if service_id.is_empty() {
            return Err(SdkError::Config("service_id is required".into()));
        }
        let secret = self.secret_key.unwrap_or_default();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        Ok(Worker {
            url,
            worker_id: format!("{service_id}@{host}:{}", std::process::id()),
            service_id,
            secret,
            concurrency: self.concurrency.unwrap_or(8).max(1),
            version: self.version,
            tasks: BTreeMap::new(),
        })
    }
}

/// A worker service: register handlers, then [`Worker::run`] (pull) or [`Worker::listen`]
/// (push). [`crate::run_local`] runs one handler with no orchestrator at all.
pub struct Worker {
    pub(crate) url: String,
    pub(crate) service_id: String,
    pub(crate) worker_id: String,
    pub(crate) secret: String,
    concurrency: usize,
    version: Option<String>,
    pub(crate) tasks: BTreeMap<String, Registered_>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("service_id", &self.service_id)
            .field("worker_id", &self.worker_id)
            .field("tasks", &self.tasks.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::default()
    }

    /// Registers `handler` as the task `name`.
    pub fn register(&mut self, name: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.register_with(name, TaskOptions::default(), handler)
    }

    pub fn register_with(
        &mut self,
        name: impl Into<String>,
        options: TaskOptions,
        handler: impl Handler,
    ) -> &mut Self {
        self.tasks.insert(
            name.into(),
            Registered_ {
                handler: Box::new(handler),
                options,
            },
        );
        self
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// What the orchestrator is told about each task. A task without a compile-time hash or an
    /// explicit version is versioned by its name and options only.
    pub fn registration(&self, push_url: Option<String>) -> Registration {
        Registration {
            service_id: self.service_id.clone(),
            worker_id: self.worker_id.clone(),
            version: self.version.clone(),
            url: push_url,
            concurrency: u32::try_from(self.concurrency).unwrap_or(u32::MAX),
            tasks: self
                .tasks
                .iter()
                .map(|(name, r)| TaskRegistration {
                    name: name.clone(),
                    code_hash: r
                        .options
                        .code_version
                        .clone()
                        .or_else(|| r.handler.code_hash())
                        .unwrap_or_else(|| format!("unversioned:{name}")),
                    allowed_next: r.options.allowed_next.clone(),
                    idempotency_key: r.options.idempotency_key.clone(),
                    retries: r.options.retries,
                    timeout_ms: r.options.timeout.map(|t| t.as_millis() as u64),
                    heartbeat_interval_ms: r
                        .options
                        .heartbeat_interval
                        .map(|t| t.as_millis() as u64),
                })
                .collect(),
        }
    }

    /// Pull mode: registers, then long-polls the orchestrator for work until `shutdown`;
    /// running handlers are let finish. Works behind NAT: the worker only makes requests.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SdkError> {
        let client = Client::new(&self)?;
        let registered = client.register(&self.registration(None)).await?;
        log_versions(&registered);
        let me = Arc::new(self);
        let slots = Arc::new(Semaphore::new(me.concurrency));
        let beat = tokio::spawn(worker_heartbeats(client.clone(), shutdown.clone()));
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            let free = slots.available_permits();
            if free == 0 {
                // Wait for a slot rather than poll for work we could not take.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permit = slots.clone().acquire_owned() => drop(permit),
                }
                continue;
            }
            let poll = PollRequest {
                worker_id: me.worker_id.clone(),
                max: u32::try_from(free).unwrap_or(u32::MAX),
                wait_ms: 20_000,
            };
            let got = tokio::select! {
                _ = shutdown.cancelled() => break,
                got = client.poll(&poll) => got,
            };
            match got {
                Ok(tasks) => {
                    backoff = Duration::from_millis(200);
                    for a in tasks {
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            break;
                        };
                        let (me, client) = (me.clone(), client.clone());
                        tokio::spawn(async move {
                            me.execute(&client, a).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "poll failed; retrying in {backoff:?}");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    // The orchestrator may have lost its database: say who we are again.
                    if let Ok(r) = client.register(&me.registration(None)).await {
                        log_versions(&r);
                    }
                }
            }
        }
        beat.abort();
        // Let running handlers finish and call back.
        let _ = slots
            .acquire_many(u32::try_from(me.concurrency).unwrap_or(u32::MAX))
            .await;
        Ok(())
    }

    /// Push mode: serves `POST /orbit/task` on `listener` (the orchestrator sends each attempt
    /// there with its task token), registered as `public_url` (how the orchestrator reaches
    /// this worker), until `shutdown`. For serverless platforms: nothing polls.
    pub async fn listen(
        self,
        listener: tokio::net::TcpListener,
        public_url: Option<String>,
        shutdown: CancellationToken,
    ) -> Result<(), SdkError> {
        let addr = listener
            .local_addr()
            .map_err(|e| SdkError::Listen(e.to_string()))?;
        let url = public_url.unwrap_or_else(|| format!("http://{addr}/orbit/task"));
        let client = Client::new(&self)?;
        let registered = client.register(&self.registration(Some(url))).await?;
        log_versions(&registered);
        let state = Arc::new(PushState {
            worker: self,
            client: client.clone(),
        });
        let beat = tokio::spawn(worker_heartbeats(client, shutdown.clone()));
        let app = axum::Router::new()
            .route("/orbit/task", axum::routing::post(accept))
            .with_state(state);
        let stop = shutdown.clone();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .map_err(|e| SdkError::Listen(e.to_string()));
        beat.abort();
        served
    }

    /// Runs one assignment: heartbeats while the handler runs, then calls back.
    async fn execute(&self, client: &Client, a: Assignment) {
        let Some(task) = self.tasks.get(&a.service_task) else {
            let cb = failure(
                &a,
                format!("this worker has no task `{}`", a.service_task),
                true,
                Vec::new(),
            );
            let _ = client.callback(&a, &cb).await;
            return;
        };
        let mut interval = Duration::from_millis(a.heartbeat_interval_ms.max(100));
        if let Some(own) = task.options.heartbeat_interval {
            interval = interval.min(own);
        }
        let timeout = match (
            a.timeout_ms.map(Duration::from_millis),
            task.options.timeout,
        ) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        let log = Logger::default();
        let (input, upstream) = match crate::objects::hydrate(client, &a).await {
            Ok(x) => x,
            Err(e) => {
                let cb = failure(&a, e, true, Vec::new());
                if let Err(e) = client.callback(&a, &cb).await {
                    tracing::warn!(error = %e, task = %a.task, "callback not recorded");
                }
                return;
            }
        };
        let ctx = Context {
            input,
            upstream,
            run_id: a.run_id,
            task_run_id: a.task_run_id,
            task: a.task.clone(),
            attempt: a.attempt,
            code_version: a.code_version,
            effect_key: a.effect_key.clone(),
            traceparent: a.traceparent.clone(),
            log: log.clone(),
            progress: progress_sink(client, &a),
            signals: signal_sink(client, &a),
        };
        let lost = CancellationToken::new();
        let beats = tokio::spawn(heartbeats(
            client.clone(),
            a.clone(),
            interval,
            lost.clone(),
        ));
        let run = task.handler.call(ctx);
        let result = tokio::select! {
            _ = lost.cancelled() => {
                beats.abort();
                tracing::warn!(task = %a.task, run = %a.run_id, "lease lost; the handler was stopped and its result is not sent");
                return;
            }
            r = async {
                match timeout {
                    Some(t) => tokio::time::timeout(t, run).await.map_err(|_| t),
                    None => Ok(run.await),
                }
            } => r,
        };
        beats.abort();
        let cb = callback(client, &a, result, log.lines()).await;
        if let Err(e) = client.callback(&a, &cb).await {
            tracing::warn!(error = %e, task = %a.task, "callback not recorded");
        }
    }
}

/// What `ctx.send_signal` sends, with the attempt's task token.
fn signal_sink(client: &Client, a: &Assignment) -> crate::handler::SignalSink {
    let (client, a) = (client.clone(), a.clone());
    Arc::new(move |name, payload, ttl| {
        let (client, a) = (client.clone(), a.clone());
        Box::pin(async move {
            let req = orbit_core::protocol::SignalRequest {
                task_run_id: a.task_run_id,
                name,
                payload,
                ttl,
            };
            client
                .task_request("/api/v1/worker/signal", &a, &req)
                .await
                .map_err(|e| e.to_string())
        })
    })
}

/// What `ctx.progress` sends: the attempt's progress, recorded by the orchestrator.
fn progress_sink(client: &Client, a: &Assignment) -> ProgressSink {
    let (client, a) = (client.clone(), a.clone());
    Arc::new(move |fraction, message| {
        let (client, a) = (client.clone(), a.clone());
        Box::pin(async move {
            let p = Progress {
                task_run_id: a.task_run_id,
                progress: fraction,
                message,
            };
            if let Err(e) = client.task_call("/api/v1/progress", &a, &p).await {
                tracing::warn!(error = %e, "progress not recorded");
            }
        })
    })
}

/// Beats every `interval` until aborted; a refused beat (409: the lease was taken over)
/// cancels `lost`.
async fn heartbeats(client: Client, a: Assignment, interval: Duration, lost: CancellationToken) {
    loop {
        tokio::time::sleep(interval).await;
        let beat = TaskHeartbeat {
            task_run_id: a.task_run_id,
        };
        match client.task_call("/api/v1/heartbeat", &a, &beat).await {
            Err(SdkError::Refused { status: 409, .. }) => {
                lost.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            Ok(()) => {}
        }
    }
}

/// The callback for how the handler ended (a large output uploaded first).
async fn callback(
    client: &Client,
    a: &Assignment,
    result: Result<Result<TaskResult, TaskError>, Duration>,
    logs: Vec<String>,
) -> Callback {
    match result {
        Ok(Ok(TaskResult { output, run_next })) => {
            match crate::objects::store_output(client, a, output).await {
                Ok(output) => Callback {
                    task_run_id: a.task_run_id,
                    status: CallbackStatus::Succeeded,
                    output,
                    run_next,
                    error: None,
                    retryable: true,
                    retry_after_ms: None,
                    logs,
                },
                Err(e) => failure(a, e, true, logs),
            }
        }
        Ok(Err(e)) => Callback {
            retry_after_ms: e
                .retry_after
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ..failure(a, e.message, e.retryable, logs)
        },
        Err(t) => Callback {
            status: CallbackStatus::Timeout,
            ..failure(
                a,
                format!("timed out after {} ms", t.as_millis()),
                true,
                logs,
            )
        },
    }
}

fn failure(a: &Assignment, error: String, retryable: bool, logs: Vec<String>) -> Callback {
    Callback {
        task_run_id: a.task_run_id,
        status: CallbackStatus::Failed,
        output: Value::Null,
        run_next: None,
        error: Some(error),
        retryable,
        retry_after_ms: None,
        logs,
    }
}

fn log_versions(r: &Registered) {
    for t in &r.tasks {
        tracing::info!(task = %t.name, version = t.code_version, changed = t.changed, "registered");
    }
}

async fn worker_heartbeats(client: Client, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let beat = WorkerHeartbeat {
            worker_id: client.worker_id.clone(),
        };
        if let Err(e) = client.service_call("/api/v1/worker/heartbeat", &beat).await {
            tracing::warn!(error = %e, "worker heartbeat failed");
        }
    }
}

struct PushState {
    worker: Worker,
    client: Client,
}

/// `POST /orbit/task`: checks the task token, answers 202 at once and runs the task.
async fn accept(
    axum::extract::State(state): axum::extract::State<Arc<PushState>>,
    headers: axum::http::HeaderMap,
    body: Result<axum::Json<Assignment>, axum::extract::rejection::JsonRejection>,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let Ok(axum::Json(a)) = body else {
        return (StatusCode::BAD_REQUEST, "expected an assignment".into());
    };
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&[TASK_AUDIENCE]);
    let key = DecodingKey::from_secret(state.worker.secret.as_bytes());
    match jsonwebtoken::decode::<TaskClaims>(token, &key, &v) {
        Ok(t) if t.claims.trid == a.task_run_id && token == a.token => {}
        _ => return (StatusCode::UNAUTHORIZED, "bad task token".into()),
    }
    tokio::spawn(async move { state.worker.execute(&state.client, a).await });
    (StatusCode::ACCEPTED, String::new())
}

impl TaskError {
    /// The error a handler reports when the SDK could not run it.
    pub(crate) fn unknown(task: &str) -> TaskError {
        TaskError::fatal(format!("no task `{task}` is registered with this worker"))
    }
}
