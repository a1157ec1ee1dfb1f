use crate::AppState;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` when the store answers, else `degraded`.
    pub status: &'static str,
    pub version: &'static str,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// `standalone` or `serverless`.
    pub mode: &'static str,
    pub uptime_seconds: u64,
}

/// Health check: is the server up and can it reach its store.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = Health)))]
pub async fn health(State(s): State<AppState>) -> Json<Health> {
    let ok = s.store.queue_stats().await.is_ok();
    Json(Health {
        status: if ok { "ok" } else { "degraded" },
        version: env!("CARGO_PKG_VERSION"),
        store: s.config.store_kind,
        mode: match s.config.mode {
            crate::Mode::Standalone => "standalone",
            crate::Mode::Serverless => "serverless",
        },
        uptime_seconds: s.started.elapsed().as_secs(),
    })
}
