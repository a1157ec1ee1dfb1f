//! The worker protocol's messages: what an SDK worker service and the orchestrator send each
//! other over HTTP (`docs/worker-protocol.md`). Field names are camelCase on the wire.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::object::ObjectRef;

/// Audience of the tokens a worker signs for itself (register, poll, worker heartbeat).
pub const SERVICE_AUDIENCE: &str = "orbit-service";
/// Audience of the tokens the orchestrator signs for one attempt (task heartbeat, progress,
/// callback, and the push request itself).
pub const TASK_AUDIENCE: &str = "orbit-task";
/// Audience of the tokens that let a worker read or write one object through the
/// orchestrator's `/api/v1/storage/…` (backends that cannot pre-sign URLs, such as the local one).
pub const STORAGE_AUDIENCE: &str = "orbit-storage";

/// Claims of a storage token: one method on one object, until `exp`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StorageClaims {
    /// The backend id.
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    /// The object's key.
    pub key: String,
    /// `GET` or `PUT`.
    pub method: String,
    /// For `PUT`: the most bytes the upload may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
}

/// Claims of a service token: HS256 over `ORBIT_SECRET_KEY`, made by the worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceClaims {
    /// The service id.
    pub sub: String,
    pub aud: String,
    /// Expiry, seconds since the epoch. The orchestrator refuses tokens valid for longer than
    /// [`MAX_SERVICE_TOKEN_SECS`].
    pub exp: u64,
    pub iat: u64,
}

/// The longest a service token may be valid for.
pub const MAX_SERVICE_TOKEN_SECS: u64 = 600;

/// Claims of a task token: HS256 over `ORBIT_SECRET_KEY`, made by the orchestrator when it
/// hands an attempt to a worker. It names exactly one attempt; every write it allows is fenced
/// by `epoch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskClaims {
    /// The service id.
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    /// Task run id.
    pub trid: Uuid,
    pub run: Uuid,
    /// Pipeline version id.
    pub pid: Uuid,
    /// The task's name in the pipeline.
    pub task: String,
    pub attempt: u32,
    pub tries: u32,
    pub epoch: i64,
    /// When the attempt was claimed, in milliseconds since the epoch.
    pub claimed_ms: i64,
    pub code_version: i64,
    /// The lease holder: the worker it was handed to (`push:<service>` in push mode).
    #[serde(default)]
    pub owner: String,
    /// The rendered idempotency key, if the task has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// One task a worker serves, as it registers it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskRegistration {
    pub name: String,
    /// SHA-256 of the handler's source (or an explicit version): a new hash bumps the task's
    /// code version.
    pub code_hash: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_next: Vec<String>,
    /// A template such as `v{{ code_version }}-{{ input.orderId }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Retries after the first attempt; the pipeline's policy when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
}

/// `POST /api/v1/services/register`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registration {
    pub service_id: String,
    /// This worker process; several may serve one service.
    pub worker_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Push mode: where the orchestrator POSTs tasks. Pull mode when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub concurrency: u32,
    pub tasks: Vec<TaskRegistration>,
}

/// The answer to a registration: each task's current code version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registered {
    pub service_id: String,
    pub tasks: Vec<RegisteredTask>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisteredTask {
    pub name: String,
    pub code_hash: String,
    pub code_version: i64,
    /// This registration changed the hash (a new version) or registered the task first.
    pub changed: bool,
}

/// `POST /api/v1/worker/poll`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PollRequest {
    pub worker_id: String,
    /// Most tasks to hand out; the worker's free slots.
    pub max: u32,
    /// How long to hold the request open when there is no work (long poll), at most 30 s.
    #[serde(default)]
    pub wait_ms: u64,
}

/// One attempt handed to a worker, by poll or by push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    pub task_run_id: Uuid,
    pub run_id: Uuid,
    pub pipeline: String,
    /// The task's name in the pipeline.
    pub task: String,
    /// The registered task whose handler runs it.
    pub service_task: String,
    pub attempt: u32,
    pub code_version: i64,
    /// The handler's input.
    pub input: Value,
    /// Outputs of the upstream tasks, by task name.
    pub upstream: Map<String, Value>,
    /// `input` or an `upstream` value may be a reference to an object
    /// (`{"$orbit_object": …}`, see [`crate::object`]): a URL to GET each one, by
    /// [`ObjectRef::id`]. Short-lived; absolute (pre-signed) or relative to the orchestrator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub objects: BTreeMap<String, String>,
    /// An output whose JSON is larger than this many bytes goes to object storage: ask for an
    /// [`OutputGrant`], PUT it there, and call back with the reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_threshold: Option<u64>,
    /// Stable across attempts: pass it on as the idempotency key of external calls.
    pub effect_key: String,
    /// Send a task heartbeat at least this often, or lose the attempt.
    pub heartbeat_interval_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The task token: bearer for this attempt's heartbeat, progress and callback.
    pub token: String,
    /// The attempt's W3C trace context: continue the run's trace from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PollResponse {
    pub tasks: Vec<Assignment>,
}

/// `POST /api/v1/heartbeat` with a task token: the attempt is alive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskHeartbeat {
    pub task_run_id: Uuid,
}

/// `POST /api/v1/worker/heartbeat` with a service token: this worker process is alive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerHeartbeat {
    pub worker_id: String,
}

/// `POST /api/v1/progress` with a task token; also renews the lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    pub task_run_id: Uuid,
    /// 0.0 to 1.0.
    pub progress: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /api/v1/worker/signal` with a task token: a handler sends a signal (`ctx.send_signal`),
/// as `POST /api/v1/signals/{name}` does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignalRequest {
    pub task_run_id: Uuid,
    pub name: String,
    /// What the waiting tasks get as their output.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: serde_json::Value,
    /// How long it is kept when no task waits yet (`10m`; 24h when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// `POST /api/v1/callback/{runId}` with a task token: how the attempt ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Callback {
    pub task_run_id: Uuid,
    pub status: CallbackStatus,
    #[serde(default)]
    pub output: Value,
    /// Dynamic routing: the chosen subset of the task's `allowed_next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_next: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A failure the handler marked as permanent goes to the dead-letter queue at once.
    #[serde(default = "yes")]
    pub retryable: bool,
    /// A failed attempt that asks to be tried again after so many milliseconds (a quota, an
    /// upstream's `Retry-After`): it waits that long and does not count against the task's
    /// retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The handler's log lines, kept as the attempt's log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CallbackStatus {
    Succeeded,
    Failed,
    /// The handler ran past its timeout.
    Timeout,
}

/// `POST /api/v1/storage/grant` with a task token: where this attempt may write its output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GrantRequest {
    pub task_run_id: Uuid,
}

/// The answer to a [`GrantRequest`]: PUT the output's JSON to `url` before `expires_at_ms`,
/// then call back with `reference` (its `size` filled in by the orchestrator) as the output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputGrant {
    /// Absolute (pre-signed) or relative to the orchestrator.
    pub url: String,
    pub reference: ObjectRef,
    pub expires_at_ms: i64,
}

/// What the orchestrator answers a heartbeat, progress or callback with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ack {
    /// False when the attempt's lease was lost (HTTP 409): stop working on it.
    pub ok: bool,
}
