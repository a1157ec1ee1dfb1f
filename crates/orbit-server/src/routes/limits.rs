//! Named limits of concurrency keys: `orbit limits set KEY N` over HTTP.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use orbit_store::KeyUsage;
use serde::Deserialize;
use utoipa::ToSchema;

/// Every named limit, by key, with its task runs running now.
#[utoipa::path(get, path = "/limits", tag = "limits", responses((status = 200, body = Vec<KeyUsage>)))]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<KeyUsage>>> {
    Ok(Json(s.store.key_limits().await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLimit {
    /// At most so many task runs with this key run at once (1 to 1000000).
    pub limit: u32,
}

/// Sets a concurrency key's named limit: it overrides what tasks declare, and tasks that
/// declare none wait for it. Answers the key's usage.
#[utoipa::path(put, path = "/limits/{key}", tag = "limits", params(("key" = String, Path)), request_body = SetLimit,
    responses((status = 200, body = KeyUsage), (status = 400, body = crate::error::ErrorBody)))]
pub async fn set(
    State(s): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    body: Result<Json<SetLimit>, JsonRejection>,
) -> ApiResult<Json<KeyUsage>> {
    let Path(key) = key?;
    let Json(body) = body?;
    check_key(&key)?;
    if !(1..=1_000_000).contains(&body.limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to 1000000, not {}",
            body.limit
        )));
    }
    s.store
        .set_key_limit(&key, Some(body.limit), Utc::now())
        .await?;
    usage(&s, key).await
}

/// Removes a key's named limit (tasks that declare a limit keep it; the others wait).
#[utoipa::path(delete, path = "/limits/{key}", tag = "limits", params(("key" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(key) = key?;
    check_key(&key)?;
    if s.store.set_key_limit(&key, None, Utc::now()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(orbit_store::StoreError::NotFound(format!(
            "limit of key `{}`",
            orbit_core::echo::echo(&key)
        ))
        .into())
    }
}

fn check_key(key: &str) -> ApiResult<()> {
    if key.is_empty() || key.len() > orbit_core::pipeline::MAX_CONCURRENCY_KEY {
        return Err(ApiError::bad_request(format!(
            "a concurrency key is 1 to {} bytes",
            orbit_core::pipeline::MAX_CONCURRENCY_KEY
        )));
    }
    Ok(())
}

async fn usage(s: &AppState, key: String) -> ApiResult<Json<KeyUsage>> {
    let mut found = s.store.key_usage(std::slice::from_ref(&key)).await?;
    Ok(Json(found.pop().unwrap_or(KeyUsage {
        key,
        running: 0,
        runs_running: 0,
        limit: None,
    })))
}
