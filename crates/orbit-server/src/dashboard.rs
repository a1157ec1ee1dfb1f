//! The web dashboard: static files embedded in the binary (in debug builds rust-embed reads them
//! from `assets/`, so a reload shows an edit). Every page is the same shell; `app.js` renders the
//! page for the path from the JSON API, the one programs use, and follows `/api/v1/events`.

use axum::Router;
use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
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

async fn asset(Path(path): Path<String>) -> Response {
    file(&path)
}

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
                ],
                f.data,
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such dashboard file").into_response(),
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
