//! The web dashboard: static files embedded in the binary (in debug builds rust-embed reads them
//! from `assets/`, so a reload shows an edit). Every page is the same shell; `app.js` renders the
//! page for the path from the JSON API, the one programs use, and follows `/api/v1/events`.

use crate::error::ApiError;
use axum::Router;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::HeaderValue;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "assets/"]
struct Assets;

/// The dashboard's pages and files.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(shell))
        .route("/runs", get(shell))
        .route("/runs/{id}", get(shell))
        .route("/pipelines", get(shell))
        .route("/pipelines/{name}", get(shell))
        .route("/dlq", get(shell))
        .route("/tasks", get(shell))
        .route("/tasks/{name}", get(shell))
        .route("/assets/{*path}", get(asset))
}

async fn shell() -> Response {
    file("index.html")
}

async fn asset(path: Result<Path<String>, PathRejection>) -> Response {
    match path {
        Ok(Path(path)) => file(&path),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The pages load only their own scripts and styles and talk only to their own server: an
/// injected `<script>` or a foreign form target does nothing. (Inline style attributes are the
/// SVG graph's colours.)
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

fn file(path: &str) -> Response {
    match Assets::get(path) {
        Some(f) => {
            let mime = f.metadata.mimetype();
            (
                [
                    (
                        CONTENT_TYPE,
                        HeaderValue::from_str(mime)
                            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
                    ),
                    // Small files; a new binary must never show an old page.
                    (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    (CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
                    (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
                ],
                f.data,
            )
                .into_response()
        }
        None => ApiError::not_found(format!("no dashboard file `{}`", crate::error::echo(path)))
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::Assets;

    #[test]
    fn every_page_asset_is_embedded() {
        let shell = String::from_utf8(Assets::get("index.html").expect("shell").data.to_vec())
            .expect("utf-8");
        for referenced in ["app.js", "app.css", "vendor/dagre-3.1.3.min.js"] {
            assert!(
                shell.contains(&format!("/assets/{referenced}")),
                "{referenced} linked"
            );
            assert!(Assets::get(referenced).is_some(), "{referenced} embedded");
        }
    }
}
