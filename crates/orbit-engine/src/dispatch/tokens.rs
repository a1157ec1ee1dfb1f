//! The worker protocol's tokens: the shared secret that signs and checks them.

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use orbit_core::protocol::{
    MAX_SERVICE_TOKEN_SECS, SERVICE_AUDIENCE, STORAGE_AUDIENCE, ServiceClaims, StorageClaims,
    TASK_AUDIENCE, TaskClaims,
};
use uuid::Uuid;

/// Why a worker call was refused before it changed anything.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "missing bearer token (send `Authorization: Bearer <JWT signed with ORBIT_SECRET_KEY>`)"
    )]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token is for task run {token}, not {asked}")]
    WrongTask { token: Uuid, asked: Uuid },
    #[error("the token does not grant {0}")]
    WrongObject(String),
}

/// The signing key shared by the orchestrator and its workers (`ORBIT_SECRET_KEY`).
#[derive(Clone)]
pub struct SecretKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// At least 16 bytes; `openssl rand -hex 32` makes a good one.
    pub fn new(secret: &str) -> Result<SecretKey, String> {
        if secret.len() < 16 {
            return Err(
                "ORBIT_SECRET_KEY must be at least 16 characters (try `openssl rand -hex 32`)"
                    .into(),
            );
        }
        Ok(SecretKey {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        })
    }

    fn validation(audience: &str) -> Validation {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "aud", "sub"]);
        v.leeway = 5;
        v
    }

    /// A worker's own token: it names the service.
    pub fn verify_service(&self, token: &str) -> Result<ServiceClaims, AuthError> {
        let claims = jsonwebtoken::decode::<ServiceClaims>(
            token,
            &self.decoding,
            &Self::validation(SERVICE_AUDIENCE),
        )
        .map_err(|e| AuthError::Invalid(e.to_string()))?
        .claims;
        if claims.exp > now_secs() + MAX_SERVICE_TOKEN_SECS + 5 {
            return Err(AuthError::Invalid(format!(
                "a service token may be valid for at most {MAX_SERVICE_TOKEN_SECS} s"
            )));
        }
        Ok(claims)
    }

    /// A task token, for the task run `asked`.
    pub fn verify_task(&self, token: &str, asked: Uuid) -> Result<TaskClaims, AuthError> {
        let claims = jsonwebtoken::decode::<TaskClaims>(
            token,
            &self.decoding,
            &Self::validation(TASK_AUDIENCE),
        )
        .map_err(|e| AuthError::Invalid(e.to_string()))?
        .claims;
        if claims.trid != asked {
            return Err(AuthError::WrongTask {
                token: claims.trid,
                asked,
            });
        }
        Ok(claims)
    }

    /// A storage token, for `method` on the object `key` of `backend`. No leeway: the
    /// orchestrator checks its own clock's tokens.
    pub fn verify_storage(
        &self,
        token: &str,
        backend: &str,
        key: &str,
        method: &str,
    ) -> Result<StorageClaims, AuthError> {
        let mut v = Self::validation(STORAGE_AUDIENCE);
        v.leeway = 0;
        let claims = jsonwebtoken::decode::<StorageClaims>(token, &self.decoding, &v)
            .map_err(|e| AuthError::Invalid(e.to_string()))?
            .claims;
        if claims.sub != backend || claims.key != key || claims.method != method {
            return Err(AuthError::WrongObject(format!("{method} {backend}/{key}")));
        }
        Ok(claims)
    }

    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| e.to_string())
    }
}

pub(super) fn now_secs() -> u64 {
    Utc::now().timestamp().max(0) as u64
}
