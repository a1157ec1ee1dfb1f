//! Every request gets an id: in the `x-request-id` response header, on every log line written
//! while it is served, and in every error body (`error.requestId`). A 5xx body says only that something
//! failed and names that id; the details (database, storage or file system text) go to the log
//! line that carries the same id, never to the client. A request that carries a W3C
//! `traceparent` (an SDK worker reporting on its attempt) is a span of that trace, whose id is
//! the request id.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::Instrument;

/// The stable code of an error response, for the 5xx rewrite to keep.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

pub async fn tag(request: Request, next: Next) -> Response {
    let id = uuid::Uuid::now_v7().simple().to_string()[16..].to_owned();
    // At error level so that the default filter (`warn`) keeps it: its id is on every line.
    let span = tracing::error_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %orbit_core::echo::echo(request.uri().path()),
    );
    let traced = orbit_engine::traces::enabled()
        .then(|| Traced::of(&request))
        .flatten();
    let mut response = next.run(request).instrument(span).await;
    if let Some(traced) = traced {
        record_span(&id, traced, response.status());
    }
    if response.status().is_server_error() {
        let status = response.status();
        let code = response
            .extensions()
            .get::<ErrorCode>()
            .map_or("internal", |c| c.0);
        let message = if status == StatusCode::SERVICE_UNAVAILABLE {
            format!("the server cannot serve this right now; try again shortly (request {id})")
        } else {
            format!(
                "the server failed to serve this request (request {id}); its log has the details"
            )
        };
        response = (
            status,
            axum::Json(json!({"error": {"code": code, "message": message, "requestId": id}})),
        )
            .into_response();
    } else if response.status().is_client_error() {
        response = with_request_id(response, &id).await;
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// A 4xx answer with `requestId` in its JSON error (whoever wrote it: a handler, an extractor's
/// rejection, the auth or host guard). Error bodies are small; anything else passes as it is.
async fn with_request_id(response: Response, id: &str) -> Response {
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "error body too large").into_response();
    };
    let mut value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return Response::from_parts(parts, axum::body::Body::from(bytes)),
    };
    if let Some(error) = value.get_mut("error").and_then(|e| e.as_object_mut()) {
        error.insert("requestId".into(), id.into());
    }
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(value.to_string()))
}

/// A request that continues a trace (its `traceparent`), as it began.
struct Traced {
    trace: u128,
    parent: u64,
    method: String,
    route: String,
    start: std::time::SystemTime,
}

impl Traced {
    fn of(request: &Request) -> Option<Traced> {
        let header = request.headers().get("traceparent")?.to_str().ok()?;
        let (trace, parent) = orbit_core::trace::parse(header)?;
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", |p| p.as_str());
        Some(Traced {
            trace,
            parent,
            method: request.method().to_string(),
            route: route.to_owned(),
            start: std::time::SystemTime::now(),
        })
    }
}

/// The server span of request `id` (the span's id too), answered with `status`.
fn record_span(id: &str, t: Traced, status: StatusCode) {
    use orbit_engine::traces::{Attr, SpanRecord};
    orbit_engine::traces::record(SpanRecord {
        trace: t.trace,
        id: u64::from_str_radix(id, 16).unwrap_or(1).max(1),
        parent: Some(t.parent),
        error: status.is_server_error().then(|| status.to_string()),
        name: format!("{} {}", t.method, t.route).into(),
        server: true,
        start: t.start,
        end: std::time::SystemTime::now(),
        attributes: vec![
            ("http.request.method", Attr::Str(t.method)),
            ("http.route", Attr::Str(t.route)),
            (
                "http.response.status_code",
                Attr::Int(status.as_u16().into()),
            ),
            ("orbit.request_id", Attr::Str(id.to_owned())),
        ],
        link: None,
    });
}

/// A handler that panicked: a 500 like any other (the rewrite above gives it its body), and
/// the panic in the log.
pub fn panicked(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    tracing::error!(panic = what, "a request handler panicked");
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}
