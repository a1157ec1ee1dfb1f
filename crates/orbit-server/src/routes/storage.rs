//! Object storage through the orchestrator: `GET /api/v1/storage/{backend}/{key}` serves a
//! stored input or output to an API caller (the dashboard shows large outputs with it) or to a
//! worker holding a storage token; `PUT` takes a worker's output with a token for exactly that
//! object; `POST /api/v1/grant` gives a running attempt access to write its output.
//!
//! Workers get storage tokens only for backends that cannot pre-sign URLs (the local one); for
//! S3 and GCS they talk to the bucket directly and these routes carry no data.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::routes::protocol::{dispatcher, task};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orbit_core::protocol::{GrantRequest, OutputGrant};
use orbit_engine::storage::{MAX_UPLOAD_BYTES, UploadError};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    /// A storage token from a worker's grant.
    token: Option<String>,
}

/// Checks a storage token for `method` on this one object. Without a token the caller got past
/// the API token check (or the server has none), which allows reading only.
fn authorize(
    s: &AppState,
    token: Option<&str>,
    backend: &str,
    key: &str,
    method: &str,
) -> Result<(), ApiError> {
    match token {
        Some(t) => {
            dispatcher(s)?
                .key()
                .verify_storage(t, backend, key, method)?;
            Ok(())
        }
        None if method == "GET" => Ok(()),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "writing an object needs the storage token of a grant (`?token=`)",
        )),
    }
}

/// The content of a stored input or output (JSON).
#[utoipa::path(get, path = "/api/v1/storage/{backend}/{key}", tag = "storage",
    params(("backend" = String, Path, description = "Storage backend id"),
           ("key" = String, Path, description = "Object key, e.g. runs/{run}/{task}/attempt-1.json"),
           ("token" = Option<String>, Query, description = "A worker's storage token instead of the API token")),
    responses((status = 200, description = "The object's JSON"), (status = 401, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_object(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Path((backend, key)) = path?;
    let Query(q) = query?;
    authorize(&s, q.token.as_deref(), &backend, &key, "GET")?;
    let bytes = s.engine.storage().get(&backend, &key).await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Objects are written once under a key that is never reused.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600, immutable"),
    );
    Ok((headers, bytes).into_response())
}

/// Writes a worker's output with the storage token of its grant. The body must be JSON. The
/// token (and the size it allows) is checked before a byte of the body is read, and the body
/// streams to the backend: a forged or oversized upload costs the server nothing.
#[utoipa::path(put, path = "/api/v1/storage/{backend}/{key}", tag = "storage",
    params(("backend" = String, Path, description = "Storage backend id"),
           ("key" = String, Path, description = "Object key"),
           ("token" = String, Query, description = "The storage token of the grant")),
    request_body = Object,
    responses((status = 201, description = "Stored"), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody)))]
pub async fn put_object(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<TokenQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let Path((backend, key)) = path?;
    let Query(q) = query?;
    let Some(token) = q.token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "writing an object needs the storage token of a grant (`?token=`)",
        ));
    };
    let claims = dispatcher(&s)?
        .key()
        .verify_storage(token, &backend, &key, "PUT")?;
    let max = claims.max.unwrap_or(MAX_UPLOAD_BYTES).min(MAX_UPLOAD_BYTES);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    s.engine
        .storage()
        .put_stream(&backend, &key, body.into_data_stream(), max)
        .await
        .map_err(|e| match e {
            UploadError::Storage(e) => e.into(),
            UploadError::TooLarge(max) => too_large(max),
            e @ (UploadError::NotJson(_) | UploadError::Body(_)) => {
                ApiError::bad_request(e.to_string())
            }
        })?;
    Ok(StatusCode::CREATED)
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("an object may hold at most {max} bytes"),
    )
}

/// With a task token: where this attempt may write an output too large to send inline. PUT its
/// JSON to `url`, then call back with `reference` as the output.
#[utoipa::path(post, path = "/grant", tag = "worker protocol",
    request_body = GrantRequest,
    responses((status = 200, body = OutputGrant), (status = 401, body = crate::error::ErrorBody)))]
pub async fn grant(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<GrantRequest>, JsonRejection>,
) -> ApiResult<Json<OutputGrant>> {
    let Json(g) = body?;
    let claims = task(&s, &headers, g.task_run_id)?;
    Ok(Json(dispatcher(&s)?.output_grant(&claims).await?))
}
