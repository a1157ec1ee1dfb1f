use crate::AppState;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `ok` when the store answers, else `degraded`.
    pub status: &'static str,
    pub version: &'static str,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// `standalone` or `serverless`.
    pub mode: &'static str,
    pub uptime_seconds: u64,
    /// Where large inputs and outputs go (never credentials).
    pub storage: StorageInfo,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageInfo {
    /// The backend new objects are written to.
    pub default: String,
    /// Values whose JSON is larger than this many bytes are stored as objects.
    pub threshold_bytes: usize,
    pub backends: Vec<BackendInfo>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendInfo {
    pub id: String,
    /// `local`, `aws-s3`, `minio` or `gcs`.
    pub provider: String,
    /// A directory or a bucket.
    pub location: String,
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
        storage: {
            let storage = s.engine.storage();
            StorageInfo {
                default: storage.default_backend().to_owned(),
                threshold_bytes: storage.threshold(),
                backends: storage
                    .backends()
                    .iter()
                    .map(|b| BackendInfo {
                        id: b.id.clone(),
                        provider: b.provider.clone(),
                        location: b.location.clone(),
                    })
                    .collect(),
            }
        },
    })
}
