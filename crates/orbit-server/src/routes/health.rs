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

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    pub name: &'static str,
    pub version: &'static str,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// `standalone` or `serverless`.
    pub mode: &'static str,
    /// Embedded worker slots.
    pub workers: usize,
    /// Whether SDK worker services can connect (ORBIT_SECRET_KEY is set).
    pub worker_protocol: bool,
    /// Whether API calls need a bearer token.
    pub auth: bool,
}

/// What this server is and how it runs (the PipeWeave seed's `/api/info`).
#[utoipa::path(get, path = "/info", tag = "health", responses((status = 200, body = Info)))]
pub async fn info(State(s): State<AppState>) -> Json<Info> {
    Json(Info {
        name: "orbit",
        version: env!("CARGO_PKG_VERSION"),
        store: s.config.store_kind,
        mode: match s.config.mode {
            crate::Mode::Standalone => "standalone",
            crate::Mode::Serverless => "serverless",
        },
        workers: s.config.workers,
        worker_protocol: s.dispatcher.is_some(),
        auth: s.config.api_token.is_some(),
    })
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageBackend {
    pub id: String,
    /// `local`, `aws-s3`, `minio` or `gcs`.
    pub provider: String,
    /// A directory or a bucket, never credentials.
    pub location: String,
    pub is_default: bool,
}

/// The configured object storage backends (the PipeWeave seed's `/api/storage/backends`).
#[utoipa::path(get, path = "/storage/backends", tag = "storage",
    responses((status = 200, body = [StorageBackend])))]
pub async fn storage_backends(State(s): State<AppState>) -> Json<Vec<StorageBackend>> {
    let storage = s.engine.storage();
    Json(
        storage
            .backends()
            .iter()
            .map(|b| StorageBackend {
                id: b.id.clone(),
                provider: b.provider.clone(),
                location: b.location.clone(),
                is_default: b.id == storage.default_backend(),
            })
            .collect(),
    )
}
