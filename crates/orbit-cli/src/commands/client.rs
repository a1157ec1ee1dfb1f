//! The CLI's HTTP client for `--url` / `ORBIT_URL`: a server's API with the token from
//! ORBIT_API_TOKEN; a refusal (4xx) is bad input (exit 2) with the server's own message.

use crate::BadInput;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<secrecy::SecretString>,
}

impl Client {
    pub fn new(base: &str) -> anyhow::Result<Client> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(BadInput(format!("--url {base}: expected http://host:port")).into());
        }
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()?,
            token: crate::settings::var("ORBIT_API_TOKEN").map(Into::into),
        })
    }

    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        Ok(self.call_with_status(method, path, body).await?.1)
    }

    /// [`Client::call`], and the status it answered with.
    pub async fn call_with_status<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, T)> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(secrecy::ExposeSecret::expose_secret(t));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", self.base))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            let e = anyhow::anyhow!("server said {status}: {message}");
            return Err(if status.is_client_error() {
                e.context(BadInput(message))
            } else {
                e
            });
        }
        let value = if text.is_empty() {
            "null"
        } else {
            text.as_str()
        };
        serde_json::from_str(value)
            .map(|v| (status, v))
            .map_err(|e| anyhow::anyhow!("unexpected answer from {url}: {e}"))
    }
}
