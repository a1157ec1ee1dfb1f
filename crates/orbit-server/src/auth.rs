//! Bearer-token auth for the API (`ORBIT_API_TOKEN`).

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

/// Refuses a request without `Authorization: Bearer <ORBIT_API_TOKEN>` when a token is set.
/// The token is compared in constant time and never logged.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = state
        .config
        .api_token
        .as_ref()
        .map(secrecy::ExposeSecret::expose_secret)
    else {
        return Ok(next.run(request).await);
    };
    // The seeds' paths (`/api/...`, `/health`) are the same routes as `/api/v1/...`.
    let path = crate::routes::canonical(request.uri().path());
    let path = path.as_ref();
    // The dashboard's pages and files hold no data; the API calls they make carry the token.
    // A worker's storage token (`?token=`) is checked by the storage handlers themselves.
    let storage_token = path.starts_with("/api/v1/storage/")
        && request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("token=")));
    if is_worker_protocol(path)
        || storage_token
        || !(path.starts_with("/api/") || path.starts_with("/docs") || path == "/metrics")
    {
        return Ok(next.run(request).await);
    }
    if state.config.public_health && (path == "/api/v1/health" || path == "/metrics") {
        return Ok(next.run(request).await);
    }
    let bearer = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // The dashboard keeps the token in a SameSite=Strict cookie: EventSource cannot send headers.
    let cookie = || {
        request
            .headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix("orbit_token="))
    };
    let given = bearer.or_else(cookie).unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (send `Authorization: Bearer $ORBIT_API_TOKEN`, or sign in on the dashboard)",
        ))
    }
}

/// Worker protocol routes carry their own JWT (signed with ORBIT_SECRET_KEY), checked by
/// their handlers; workers are not given the API token.
fn is_worker_protocol(path: &str) -> bool {
    matches!(
        path,
        "/api/v1/services/register"
            | "/api/v1/register"
            | "/api/v1/worker/heartbeat"
            | "/api/v1/worker/poll"
            | "/api/v1/heartbeat"
            | "/api/v1/progress"
            | "/api/v1/worker/signal"
            | "/api/v1/grant"
    ) || path.starts_with("/api/v1/callback/")
}
