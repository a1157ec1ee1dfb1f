//! API errors: every one is a JSON body `{"error": {"code", "message", "details"?}}` with a
//! 4xx or 5xx status.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orbit_store::StoreError;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// Stable, for programs: `bad_request`, `invalid_pipeline`, `not_found`, `conflict`,
    /// `unauthorized`, `unavailable`, `internal`.
    pub code: String,
    /// For people: what was wrong and what to do.
    pub message: String,
    #[schema(value_type = Object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    /// The request's id (also in the `x-request-id` header and on the server's log lines
    /// about it): quote it when reporting a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ApiError {
    /// A message that quotes user input is cut to a sane length and cannot hide what it says
    /// (see [`echo`]), wherever it was made.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: orbit_core::echo::echo_within(&message.into(), 1000),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = crate::request_id::ErrorCode(self.code);
        if self.status.is_server_error() {
            // The details go to the log (with the request id); the body is rewritten to say
            // only that it failed (see request_id).
            tracing::error!(code = self.code, message = %self.message, "request failed");
            let mut response = self.status.into_response();
            response.extensions_mut().insert(code);
            return response;
        }
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(d) = self.details {
            error["details"] = d;
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        response.extensions_mut().insert(code);
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = match e {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
            StoreError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<orbit_engine::EngineError> for ApiError {
    fn from(e: orbit_engine::EngineError) -> ApiError {
        match e {
            orbit_engine::EngineError::Store(s) => s.into(),
            orbit_engine::EngineError::Storage(s) => s.into(),
            orbit_engine::EngineError::BadRequest(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_request", m)
            }
            e @ orbit_engine::EngineError::IdempotencyKeyReused { run, .. } => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                e.to_string(),
            )
            .with_details(serde_json::json!({ "run": run })),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        }
    }
}

impl From<orbit_engine::storage::StorageError> for ApiError {
    fn from(e: orbit_engine::storage::StorageError) -> ApiError {
        use orbit_engine::storage::StorageError as E;
        let (status, code) = match &e {
            E::NotFound(_) | E::UnknownBackend(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::BadKey(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            E::Backend { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            E::Config(_) | E::Corrupt(..) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        let status = match e {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(
            status,
            "bad_request",
            format!(
                "invalid JSON body: {}",
                orbit_core::echo::echo_within(&e.body_text(), 300)
            ),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::bad_request(format!(
            "invalid query: {}",
            orbit_core::echo::echo_within(&e.body_text(), 300)
        ))
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> ApiError {
        ApiError::bad_request(format!(
            "invalid path: {}",
            orbit_core::echo::echo_within(&e.body_text(), 300)
        ))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

pub use orbit_core::echo::echo;
