//! The worker protocol (`docs/worker-protocol.md`): registration, long-poll, heartbeats,
//! progress and callbacks. These routes authenticate with JWTs signed by `ORBIT_SECRET_KEY`
//! (a service token the worker makes, or the task token it was handed), not the API token.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use orbit_core::pipeline::is_valid_name;
use orbit_core::protocol::{
    Ack, Callback, PollRequest, PollResponse, Progress, Registered, RegisteredTask, Registration,
    ServiceClaims, TaskClaims, TaskHeartbeat, WorkerHeartbeat,
};
use orbit_engine::dispatch::{AuthError, Dispatcher, Recorded};
use orbit_store::{NodeInfo, ServiceTask};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How often SDK workers say they are alive; three missed ones mark them unhealthy.
pub const WORKER_HEARTBEAT_MS: u64 = 5000;
/// The longest a poll is held open.
const MAX_WAIT: Duration = Duration::from_secs(30);

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
    }
}

pub(crate) fn dispatcher(s: &AppState) -> Result<&Arc<Dispatcher>, ApiError> {
    s.dispatcher.as_ref().ok_or_else(|| {
        // Not a failure of the server: a feature it was started without.
        ApiError::new(
            StatusCode::NOT_FOUND,
            "worker_protocol_off",
            "the worker protocol is off: start `orbit server` with ORBIT_SECRET_KEY set (the same key as the workers)",
        )
    })
}

fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)
}

fn service(s: &AppState, headers: &HeaderMap) -> Result<ServiceClaims, ApiError> {
    Ok(dispatcher(s)?.key().verify_service(bearer(headers)?)?)
}

pub(crate) fn task(s: &AppState, headers: &HeaderMap, id: Uuid) -> Result<TaskClaims, ApiError> {
    Ok(dispatcher(s)?.key().verify_task(bearer(headers)?, id)?)
}

fn ack(recorded: Recorded) -> ApiResult<Json<Ack>> {
    match recorded {
        Recorded::Kept => Ok(Json(Ack { ok: true })),
        Recorded::LeaseLost => Err(ApiError::new(
            StatusCode::CONFLICT,
            "lease_lost",
            "this attempt no longer holds its task (its lease expired or the run was cancelled); stop working on it",
        )),
    }
}

fn worker_node(
    service: &str,
    worker: &str,
    version: Option<&str>,
    tasks: Vec<String>,
    concurrency: u32,
) -> NodeInfo {
    let (host, pid) = worker
        .rsplit_once('@')
        .map_or(worker, |(_, at)| at)
        .rsplit_once(':')
        .map_or(("", "0"), |(h, p)| (h, p));
    NodeInfo {
        id: worker.to_owned(),
        kind: "service".into(),
        host: host.to_owned(),
        pid: pid.parse().unwrap_or(0),
        version: version.unwrap_or("").to_owned(),
        queues: tasks,
        concurrency,
        heartbeat_ms: WORKER_HEARTBEAT_MS,
        service: Some(service.to_owned()),
    }
}

/// The same registration at the PipeWeave seed's path.
#[utoipa::path(post, path = "/register", tag = "worker protocol",
    request_body = Registration,
    responses((status = 200, body = Registered), (status = 401, body = crate::error::ErrorBody)))]
pub async fn register_alias(
    state: State<AppState>,
    headers: HeaderMap,
    body: Result<Json<Registration>, JsonRejection>,
) -> ApiResult<Json<Registered>> {
    register(state, headers, body).await
}

/// A worker registers its service and tasks with their code hashes; a changed hash is a new
/// code version.
#[utoipa::path(post, path = "/services/register", tag = "worker protocol",
    request_body = Registration,
    responses((status = 200, body = Registered), (status = 401, body = crate::error::ErrorBody)))]
pub async fn register(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<Registration>, JsonRejection>,
) -> ApiResult<Json<Registered>> {
    let claims = service(&s, &headers)?;
    let Json(reg) = body?;
    if reg.service_id != claims.sub {
        return Err(AuthError::Invalid(format!(
            "the token is for service `{}`, not `{}`",
            claims.sub, reg.service_id
        ))
        .into());
    }
    if !is_valid_name(&reg.service_id) {
        return Err(ApiError::bad_request(format!(
            "serviceId `{}` may only use letters, digits, `-`, `_` and `.`",
            reg.service_id
        )));
    }
    if reg.worker_id.is_empty() || reg.worker_id.len() > 200 {
        return Err(ApiError::bad_request(
            "workerId must be 1 to 200 characters",
        ));
    }
    if let Some(t) = reg.tasks.iter().find(|t| !is_valid_name(&t.name)) {
        return Err(ApiError::bad_request(format!(
            "task name `{}` may only use letters, digits, `-`, `_` and `.`",
            t.name
        )));
    }
    if let Some(t) = reg.tasks.iter().find(|t| t.code_hash.is_empty()) {
        return Err(ApiError::bad_request(format!(
            "task `{}` has an empty codeHash",
            t.name
        )));
    }
    if let Some(url) = &reg.url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(ApiError::bad_request(format!(
            "url `{url}` must start with http:// or https://"
        )));
    }
    let now = Utc::now();
    let tasks: Vec<ServiceTask> = s.store.register_service(&reg, now).await?;
    let names = tasks.iter().map(|t| t.name.clone()).collect();
    s.store
        .node_heartbeat(
            &worker_node(
                &reg.service_id,
                &reg.worker_id,
                reg.version.as_deref(),
                names,
                reg.concurrency,
            ),
            now,
        )
        .await?;
    if reg.url.is_some() {
        dispatcher(&s)?.set_push_limit(&reg.service_id, reg.concurrency);
    }
    for t in tasks.iter().filter(|t| t.changed) {
        tracing::info!(service = %reg.service_id, task = %t.name, version = t.code_version, "task code version");
    }
    Ok(Json(Registered {
        service_id: reg.service_id,
        tasks: tasks
            .into_iter()
            .map(|t| RegisteredTask {
                name: t.name,
                code_hash: t.code_hash,
                code_version: t.code_version,
                changed: t.changed,
            })
            .collect(),
    }))
}

/// A worker process says it is alive (push-mode workers, and pull-mode ones between polls).
#[utoipa::path(post, path = "/worker/heartbeat", tag = "worker protocol",
    request_body = WorkerHeartbeat,
    responses((status = 200, body = Ack), (status = 401, body = crate::error::ErrorBody)))]
pub async fn worker_heartbeat(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<WorkerHeartbeat>, JsonRejection>,
) -> ApiResult<Json<Ack>> {
    let claims = service(&s, &headers)?;
    let Json(beat) = body?;
    seen(&s, &claims.sub, &beat.worker_id).await?;
    Ok(Json(Ack { ok: true }))
}

/// One write: the worker's node row. The service's `last_seen_at` is derived from its workers'.
async fn seen(s: &AppState, service: &str, worker: &str) -> ApiResult<()> {
    // An existing node row keeps what its registration said; only `last_seen_at` moves.
    s.store
        .node_heartbeat(
            &worker_node(service, worker, None, Vec::new(), 0),
            Utc::now(),
        )
        .await?;
    Ok(())
}

/// Long poll: up to `max` attempts of the tasks this service registered, waiting up to
/// `waitMs` (at most 30 s) for one to become ready.
#[utoipa::path(post, path = "/worker/poll", tag = "worker protocol",
    request_body = PollRequest,
    responses((status = 200, body = PollResponse), (status = 401, body = crate::error::ErrorBody)))]
pub async fn poll(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<PollRequest>, JsonRejection>,
) -> ApiResult<Json<PollResponse>> {
    let claims = service(&s, &headers)?;
    let Json(req) = body?;
    if req.worker_id.is_empty() || req.worker_id.len() > 200 {
        return Err(ApiError::bad_request(
            "workerId must be 1 to 200 characters",
        ));
    }
    let d = dispatcher(&s)?;
    // The worker heartbeats on its own every 5 s; a poll only fills the gaps.
    if d.due_seen(&req.worker_id) {
        seen(&s, &claims.sub, &req.worker_id).await?;
    }
    let tasks: Vec<String> = s
        .store
        .service_tasks(Some(&claims.sub))
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    if tasks.is_empty() {
        return Err(ApiError::not_found(format!(
            "service `{}` has registered no tasks: POST /api/v1/services/register first",
            claims.sub
        )));
    }
    let max = (req.max as usize).min(256);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms).min(MAX_WAIT);
    let pollers = d.pollers(&claims.sub);
    loop {
        // Listening before claiming, so a wake-up sent while the claim runs is not missed.
        let woken = pollers.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let handed = d.claim(&claims.sub, &req.worker_id, &tasks, max).await?;
        if !handed.is_empty() || max == 0 {
            // A full claim may have left more: the next waiting poller looks.
            if handed.len() >= max {
                pollers.notify_one();
            }
            return Ok(Json(PollResponse { tasks: handed }));
        }
        // Woken by the dispatcher on every store signal and once per poll interval; no
        // timer of our own, so an idle poll costs nothing.
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(Json(PollResponse::default()));
            }
        }
    }
}

/// The attempt is alive: renews its lease. 409 when the lease was lost.
#[utoipa::path(post, path = "/heartbeat", tag = "worker protocol",
    request_body = TaskHeartbeat,
    responses((status = 200, body = Ack), (status = 401, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn heartbeat(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<TaskHeartbeat>, JsonRejection>,
) -> ApiResult<Json<Ack>> {
    let Json(beat) = body?;
    let claims = task(&s, &headers, beat.task_run_id)?;
    ack(dispatcher(&s)?.heartbeat(&claims).await?)
}

/// The attempt's progress (0..1 and a message); also renews its lease.
#[utoipa::path(post, path = "/progress", tag = "worker protocol",
    request_body = Progress,
    responses((status = 200, body = Ack), (status = 401, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn progress(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<Progress>, JsonRejection>,
) -> ApiResult<Json<Ack>> {
    let Json(p) = body?;
    let claims = task(&s, &headers, p.task_run_id)?;
    if !(0.0..=1.0).contains(&p.progress) {
        return Err(ApiError::bad_request("progress must be between 0 and 1"));
    }
    ack(dispatcher(&s)?
        .progress(&claims, p.progress, p.message.as_deref())
        .await?)
}

/// A handler's `ctx.send_signal`: sends a signal as `POST /signals/{name}` does, with its
/// attempt's task token.
#[utoipa::path(post, path = "/worker/signal", tag = "worker protocol",
    request_body = orbit_core::protocol::SignalRequest,
    responses((status = 200, body = crate::routes::signals::Signalled), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)))]
pub async fn signal(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<orbit_core::protocol::SignalRequest>, JsonRejection>,
) -> ApiResult<Json<crate::routes::signals::Signalled>> {
    let Json(req) = body?;
    task(&s, &headers, req.task_run_id)?;
    crate::routes::signals::send(&s, req.name, req.payload, req.ttl.as_deref())
        .await
        .map(Json)
}

/// How the attempt ended: output (and `runNext`) or error. 409 when the lease was lost; the
/// result is then not kept.
#[utoipa::path(post, path = "/callback/{run_id}", tag = "worker protocol",
    params(("run_id" = String, Path, description = "The run the task belongs to")),
    request_body = Callback,
    responses((status = 200, body = Ack), (status = 401, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn callback(
    State(s): State<AppState>,
    headers: HeaderMap,
    run: Result<Path<String>, PathRejection>,
    body: Result<Json<Callback>, JsonRejection>,
) -> ApiResult<Json<Ack>> {
    let Path(run) = run?;
    let Json(cb) = body?;
    let claims = task(&s, &headers, cb.task_run_id)?;
    if run != claims.run.to_string() {
        return Err(ApiError::bad_request(format!(
            "task run {} belongs to run {}, not {run}",
            cb.task_run_id, claims.run
        )));
    }
    ack(dispatcher(&s)?.complete(&claims, cb).await?)
}

/// The tasks a service registered, with their code versions.
#[utoipa::path(get, path = "/services/{id}/tasks", tag = "workers",
    params(("id" = String, Path, description = "Service id")),
    responses((status = 200, body = [ServiceTask]), (status = 404, body = crate::error::ErrorBody)))]
pub async fn service_tasks(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<ServiceTask>>> {
    let Path(id) = id?;
    let tasks = s.store.service_tasks(Some(&id)).await?;
    if tasks.is_empty() && !s.store.services().await?.iter().any(|x| x.id == id) {
        return Err(ApiError::not_found(format!(
            "no service `{}` has registered",
            crate::error::echo(&id)
        )));
    }
    Ok(Json(tasks))
}
