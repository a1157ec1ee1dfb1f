//! What keeps a web page the user visits from driving the server (DESIGN: "safe by default on a
//! laptop"). A page can send requests to `127.0.0.1:3000` from any origin, and with DNS
//! rebinding it can even make them same-origin under a name of its own; so:
//!
//! - without `ORBIT_API_TOKEN`, only `Host` names that are loopback (`localhost`, `*.localhost`,
//!   `127.0.0.0/8`, `[::1]`) or listed in `ORBIT_ALLOWED_HOSTS` are served: a rebound name is not;
//! - a state-changing request (`POST`, `PUT`, `PATCH`, `DELETE`), and every live stream
//!   (WebSocket and SSE, which a page could read), with an `Origin` other than the server's own
//!   or one in `ORBIT_CORS_ORIGINS` is refused: browsers always send `Origin` on those;
//! - a request that carries a body must say it is JSON: the content types a page can send
//!   without a CORS preflight (`text/plain`, forms) are refused, and so is no content type.
//!
//! `curl` and scripts send no `Origin`, so a bodyless `POST` from them still works. With
//! `ORBIT_CORS_ORIGINS`, real CORS headers and preflight answers are sent for those origins.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::net::IpAddr;

/// Who may reach the server from where.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// `ORBIT_ALLOWED_HOSTS`: more `Host` names to serve without a token (`name` or
    /// `name:port`).
    pub allowed_hosts: Vec<String>,
    /// `ORBIT_CORS_ORIGINS`: origins (`https://app.example.com`) whose pages may call the API.
    pub cors_origins: Vec<String>,
}

impl Access {
    /// From comma-separated lists, as the variables hold them.
    pub fn from_lists(allowed_hosts: Option<&str>, cors_origins: Option<&str>) -> Access {
        let list = |v: Option<&str>| -> Vec<String> {
            v.unwrap_or_default()
                .split(',')
                .map(|s| s.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Access {
            allowed_hosts: list(allowed_hosts),
            cors_origins: list(cors_origins),
        }
    }
}

pub async fn check(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let access = &state.config.access;
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase)
        .or_else(|| {
            request
                .uri()
                .authority()
                .map(|a| a.as_str().to_ascii_lowercase())
        });
    let tokenless = state.config.api_token.is_none();
    if let Some(host) = host
        .as_deref()
        .filter(|h| tokenless && !host_allowed(h, access))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            format!(
                "this server has no ORBIT_API_TOKEN and serves only loopback names (localhost, 127.0.0.1, [::1]), not `{}`; add the name to ORBIT_ALLOWED_HOSTS, or set ORBIT_API_TOKEN",
                crate::error::echo(host)
            ),
        ));
    }
    let changes_state = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let path = crate::routes::canonical(request.uri().path());
    let streams = path == "/api/v1/ws" || path == "/api/v1/events";
    let foreign = headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("null").to_ascii_lowercase())
        .filter(|o| (changes_state || streams) && !origin_allowed(o, host.as_deref(), access));
    if let Some(origin) = foreign {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!(
                "requests from the web page at `{}` are refused; list its origin in ORBIT_CORS_ORIGINS to allow it",
                crate::error::echo(&origin)
            ),
        ));
    }
    if changes_state && has_body(headers) && !is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a request body must be JSON, sent with `Content-Type: application/json`",
        ));
    }
    Ok(next.run(request).await)
}

/// Whether `host` (a `Host` header: name or address, maybe with a port) may be served without
/// a token.
fn host_allowed(host: &str, access: &Access) -> bool {
    let name = host_name(host);
    let loopback = name == "localhost"
        || name.ends_with(".localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback || access.allowed_hosts.iter().any(|a| a == host || a == name)
}

/// The name of `host:port`, `[v6]:port`, `name` or `[v6]`.
fn host_name(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The server's own origin (the page was served by this host) or one the operator allowed.
fn origin_allowed(origin: &str, host: Option<&str>, access: &Access) -> bool {
    let own = host.is_some_and(|h| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|rest| rest == h)
    });
    own || access.cors_origins.iter().any(|o| o == origin || o == "*")
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| {
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        })
}

/// Real CORS (headers and preflight answers) for the origins in `ORBIT_CORS_ORIGINS`.
pub fn cors(access: &Access) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if access.cors_origins.is_empty() {
        return None;
    }
    let origin = if access.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            access
                .cors_origins
                .iter()
                .filter_map(|o| o.parse::<axum::http::HeaderValue>().ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
                header::HeaderName::from_static("idempotency-key"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_are_served_and_others_are_not() {
        let none = Access::default();
        for ok in [
            "localhost",
            "localhost:3000",
            "127.0.0.1:3000",
            "127.1.2.3",
            "[::1]:3000",
            "[::1]",
            "app.localhost:8080",
        ] {
            assert!(host_allowed(ok, &none), "{ok}");
        }
        for bad in [
            "evil.example:3000",
            "evil.example",
            "0.0.0.0:3000",
            "192.168.1.4:3000",
            "localhost.evil.example",
            "[::2]:3000",
            "",
        ] {
            assert!(!host_allowed(bad, &none), "{bad}");
        }
        let some = Access::from_lists(Some("orbit.internal, box:3000"), None);
        assert!(host_allowed("orbit.internal:3000", &some));
        assert!(host_allowed("box:3000", &some));
        assert!(!host_allowed("box:4000", &some));
    }

    #[test]
    fn only_the_own_or_listed_origins_may_change_state() {
        let none = Access::default();
        let host = Some("127.0.0.1:3000");
        assert!(origin_allowed("http://127.0.0.1:3000", host, &none));
        assert!(!origin_allowed("http://localhost:3000", host, &none));
        assert!(!origin_allowed("http://evil.example", host, &none));
        assert!(!origin_allowed("null", host, &none));
        assert!(!origin_allowed("http://127.0.0.1:3000", None, &none));
        let listed = Access::from_lists(None, Some("https://app.example.com/"));
        assert!(origin_allowed("https://app.example.com", host, &listed));
    }
}
