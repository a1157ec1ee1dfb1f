//! Waking parked tasks from outside: signals for `wait` tasks, decisions for `approval` tasks.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::OptionalJson;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use orbit_engine::waits::DecideError;
use orbit_store::{Decision, TaskRunRecord, parks};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SignalQuery {
    /// How long the signal is kept when no task waits for it yet (`10m`, `2h`; default 24h,
    /// at most 30 days).
    pub ttl: Option<String>,
}

/// A task run a signal woke.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Woken {
    pub run_id: Uuid,
    pub task: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Signalled {
    pub name: String,
    /// The `wait` tasks it woke, each once.
    pub delivered: Vec<Woken>,
    /// No task waited: it is kept for the first one that waits for it, until `expiresAt`.
    pub kept: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Longest a kept signal lives.
const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Send signal `name`: every `wait` task waiting for it gets the body (any JSON; `null` when
/// empty) as its output, each exactly once; when none waits yet, the signal is kept (`ttl`) for
/// the first that does.
#[utoipa::path(post, path = "/signals/{name}", tag = "runs", params(("name" = String, Path), SignalQuery),
    request_body(content = Object, description = "The payload: any JSON"),
    responses((status = 200, body = Signalled), (status = 400, body = crate::error::ErrorBody)))]
pub async fn signal(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<SignalQuery>, QueryRejection>,
    OptionalJson(payload): OptionalJson<Value>,
) -> ApiResult<Json<Signalled>> {
    let Path(name) = name?;
    let Query(q) = q?;
    send(&s, name, payload.unwrap_or(Value::Null), q.ttl.as_deref())
        .await
        .map(Json)
}

/// Sends a signal: the API's route, and a worker's `ctx.send_signal`.
pub async fn send(
    s: &AppState,
    name: String,
    payload: Value,
    ttl: Option<&str>,
) -> ApiResult<Signalled> {
    if !orbit_core::params::is_valid_event(&name) {
        return Err(ApiError::bad_request(format!(
            "`{}` is not a signal name (letters, digits, `-`, `_`, `.`, `:`, `@`; at most 200)",
            orbit_core::echo::echo(&name)
        )));
    }
    let ttl = match ttl {
        None => parks::DEFAULT_SIGNAL_TTL,
        Some(t) => orbit_core::duration::parse(t)
            .map_err(|e| ApiError::bad_request(format!("`ttl`: {e}")))?,
    };
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(ApiError::bad_request(
            "`ttl` must be more than 0 and at most 30 days",
        ));
    }
    let now = Utc::now();
    let expires_at = now + chrono::Duration::from_std(ttl).unwrap_or_default();
    let out = s.store.signal(&name, &payload, expires_at, now).await?;
    Ok(Signalled {
        name,
        delivered: out
            .delivered
            .into_iter()
            .map(|(run_id, task)| Woken { run_id, task })
            .collect(),
        kept: out.kept,
        expires_at: out.kept.then_some(expires_at),
    })
}

#[derive(Deserialize, ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Reject,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    pub decision: Verdict,
    /// Recorded with the decision.
    pub comment: Option<String>,
    /// Who decides (checked against the task's `approvers`); `api` when absent. With one
    /// shared API token this is the caller's word, not an identity the server proved.
    pub by: Option<String>,
}

/// Approve or reject an `approval` task that waits for a decision; it is recorded with who,
/// when and the comment, and routes the run like a `run_next` choice.
#[utoipa::path(post, path = "/runs/{id}/tasks/{task}/decision", tag = "runs",
    params(("id" = String, Path), ("task" = String, Path)), request_body = DecisionBody,
    responses((status = 200, body = TaskRunRecord), (status = 400, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub async fn decide(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<DecisionBody>, JsonRejection>,
) -> ApiResult<Json<TaskRunRecord>> {
    let Path((id, task)) = path?;
    let Json(body) = body?;
    let by = body.by.unwrap_or_else(|| "api".into()).trim().to_owned();
    if by.is_empty() || by.len() > 200 {
        return Err(ApiError::bad_request("`by` must be 1 to 200 characters"));
    }
    if body.comment.as_ref().is_some_and(|c| c.len() > 10_000) {
        return Err(ApiError::bad_request(
            "`comment` is longer than 10000 bytes",
        ));
    }
    let run = s.store.find_run(&id).await?;
    let decision = Decision {
        approved: body.decision == Verdict::Approve,
        by,
        comment: body.comment.filter(|c| !c.trim().is_empty()),
    };
    match orbit_engine::waits::decide(s.store.as_ref(), run.id, &task, &decision).await {
        Ok(tr) => Ok(Json(tr)),
        Err(e @ DecideError::NotAnApprover { .. }) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            e.to_string(),
        )),
        Err(DecideError::Store(e)) => Err(e.into()),
    }
}
