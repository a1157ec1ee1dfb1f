//! The worker protocol's HTTP client: registration, claims, heartbeats, progress and
//! callbacks, each signed as docs/worker-protocol.md says.

use crate::worker::{SdkError, Worker};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use orbit_core::protocol::{
    Assignment, Callback, PollRequest, PollResponse, Registered, Registration, SERVICE_AUDIENCE,
    ServiceClaims,
};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The protocol's HTTP client.
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) url: String,
    pub(crate) service_id: String,
    pub(crate) worker_id: String,
    pub(crate) key: EncodingKey,
}

impl Client {
    pub(crate) fn new(w: &Worker) -> Result<Client, SdkError> {
        if w.url.is_empty() {
            return Err(SdkError::Config("orchestrator_url is required".into()));
        }
        if w.secret.len() < 16 {
            return Err(SdkError::Config(
                "secret_key must be the orchestrator's ORBIT_SECRET_KEY (at least 16 characters)"
                    .into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| SdkError::Config(e.to_string()))?;
        Ok(Client {
            http,
            url: w.url.clone(),
            service_id: w.service_id.clone(),
            worker_id: w.worker_id.clone(),
            key: EncodingKey::from_secret(w.secret.as_bytes()),
        })
    }

    pub(crate) fn service_token(&self) -> Result<String, SdkError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = ServiceClaims {
            sub: self.service_id.clone(),
            aud: SERVICE_AUDIENCE.into(),
            iat: now,
            exp: now + 300,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| SdkError::Config(format!("cannot sign a token: {e}")))
    }

    pub(crate) async fn send<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        (token, traceparent): (&str, Option<&str>),
        body: &T,
        what: &'static str,
        timeout: Duration,
    ) -> Result<R, SdkError> {
        let url = format!("{}{path}", self.url);
        let mut request = self.http.post(&url).bearer_auth(token);
        // A call about an attempt continues the run's trace: the orchestrator's span for it
        // is a child of the attempt's.
        if let Some(tp) = traceparent {
            request = request.header("traceparent", tp);
        }
        let r = request
            .json(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| SdkError::Unreachable {
                url: self.url.clone(),
                error: e.to_string(),
            })?;
        let status = r.status().as_u16();
        if !r.status().is_success() {
            return Err(SdkError::Refused {
                url: url.clone(),
                what,
                status,
                body: r.text().await.unwrap_or_default(),
            });
        }
        r.json().await.map_err(|e| SdkError::Unreachable {
            url,
            error: format!("unreadable answer: {e}"),
        })
    }

    pub(crate) async fn register(&self, reg: &Registration) -> Result<Registered, SdkError> {
        let token = self.service_token()?;
        self.send(
            "/api/v1/services/register",
            (&token, None),
            reg,
            "the registration",
            Duration::from_secs(30),
        )
        .await
    }

    pub(crate) async fn poll(&self, req: &PollRequest) -> Result<Vec<Assignment>, SdkError> {
        let token = self.service_token()?;
        let wait = Duration::from_millis(req.wait_ms) + Duration::from_secs(15);
        let r: PollResponse = self
            .send("/api/v1/worker/poll", (&token, None), req, "the poll", wait)
            .await?;
        Ok(r.tasks)
    }

    pub(crate) async fn service_call<T: serde::Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<(), SdkError> {
        let token = self.service_token()?;
        self.send::<_, Value>(
            path,
            (&token, None),
            body,
            "a worker heartbeat",
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A granted URL as given (pre-signed by a bucket) or relative to the orchestrator.
    pub(crate) fn resolve(&self, url: &str) -> String {
        if url.starts_with("http://") || url.starts_with("https://") {
            url.to_owned()
        } else {
            format!("{}{url}", self.url)
        }
    }

    /// A call about attempt `a` (with its task token) whose answer matters.
    pub(crate) async fn task_request<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        a: &Assignment,
        body: &T,
    ) -> Result<R, SdkError> {
        let auth = (a.token.as_str(), a.traceparent.as_deref());
        self.send(path, auth, body, "a task call", Duration::from_secs(30))
            .await
    }

    /// A call about attempt `a`.
    pub(crate) async fn task_call<T: serde::Serialize>(
        &self,
        path: &str,
        a: &Assignment,
        body: &T,
    ) -> Result<(), SdkError> {
        let auth = (a.token.as_str(), a.traceparent.as_deref());
        self.send::<_, Value>(path, auth, body, "a task call", Duration::from_secs(10))
            .await
            .map(|_| ())
    }

    /// The result matters: try a few times before giving up (the lease then expires and the
    /// task is retried elsewhere).
    pub(crate) async fn callback(&self, a: &Assignment, cb: &Callback) -> Result<(), SdkError> {
        let path = format!("/api/v1/callback/{}", a.run_id);
        let mut wait = Duration::from_millis(200);
        let mut last = None;
        for _ in 0..5 {
            match self.task_call(&path, a, cb).await {
                Ok(()) => return Ok(()),
                Err(e @ SdkError::Refused { status, .. }) if status < 500 => return Err(e),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        Err(last.unwrap_or(SdkError::Config("callback not sent".into())))
    }
}
