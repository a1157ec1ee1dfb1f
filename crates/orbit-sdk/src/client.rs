//! A small client of Orbit's HTTP API (the TypeScript SDK's `OrbitClient`, the Python SDK's
//! `Client`): trigger a pipeline, follow, list, cancel and retry runs; set concurrency keys'
//! named limits. Answers are the API's
//! camelCase JSON; the fields a caller needs most are typed, the rest kept in `extra`.

use crate::SdkError;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::time::Duration;

/// A run as the API lists it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: String,
    pub pipeline_name: String,
    pub pipeline_version: i64,
    /// `pending`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    pub input: Value,
    pub tasks_total: i64,
    pub tasks_pending: i64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Run {
    /// Whether the run succeeded, failed or was cancelled.
    pub fn is_settled(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

/// A concurrency key's named limit, with its task runs and runs running now.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyLimit {
    pub key: String,
    pub running: u64,
    #[serde(default)]
    pub runs_running: u64,
    /// `None`: no named limit (the tasks' own limits apply).
    pub limit: Option<u32>,
}

/// One task run of a run.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRun {
    pub id: String,
    pub task_name: String,
    pub state: String,
    pub attempt: i64,
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A run with one page of its task runs (`GET /api/v1/runs/{id}`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDetail {
    pub run: Run,
    pub tasks: Vec<TaskRun>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl RunDetail {
    /// The task run of pipeline task `name`, if it is on this page.
    pub fn task(&self, name: &str) -> Option<&TaskRun> {
        self.tasks.iter().find(|t| t.task_name == name)
    }
}

#[derive(Deserialize)]
struct Triggered {
    run: Run,
}

#[derive(Deserialize)]
struct RunPage {
    runs: Vec<Run>,
}

/// Which runs [`Client::list_runs`] returns, newest first.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub status: Option<String>,
    pub pipeline: Option<String>,
    pub limit: Option<u32>,
}

/// What a signal did.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signalled {
    pub name: String,
    /// The `wait` tasks it woke, each once.
    pub delivered: Vec<Woken>,
    /// None waited: it is kept for the first that does.
    pub kept: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Woken {
    pub run_id: String,
    pub task: String,
}

/// One line of `why`: a task (or the run) and what it waits for.
#[derive(Clone, Debug, Deserialize)]
pub struct WhyLine {
    pub task: Option<String>,
    pub state: String,
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<secrecy::SecretString>,
}

impl Client {
    /// A client of the server at `url` (e.g. `http://127.0.0.1:3000`).
    pub fn new(url: impl Into<String>) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: format!("{}/api/v1", url.into().trim_end_matches('/')),
            token: None,
        }
    }

    /// The server's ORBIT_API_TOKEN, when it has one.
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into().into());
        self
    }

    /// ORBIT_URL, with ORBIT_API_TOKEN when set.
    pub fn from_env() -> Result<Client, SdkError> {
        let url = std::env::var("ORBIT_URL")
            .map_err(|_| SdkError::Config("set ORBIT_URL to the server's address".into()))?;
        let client = Client::new(url);
        Ok(match std::env::var("ORBIT_API_TOKEN") {
            Ok(t) if !t.is_empty() => client.with_token(t),
            _ => client,
        })
    }

    /// Starts a run of a saved pipeline; `idempotency_key` returns the existing run instead.
    pub async fn trigger(
        &self,
        pipeline: &str,
        input: Value,
        idempotency_key: Option<&str>,
    ) -> Result<Run, SdkError> {
        let mut body = json!({ "input": input });
        if let Some(key) = idempotency_key {
            body["idempotencyKey"] = json!(key);
        }
        let path = format!("/pipelines/{pipeline}/trigger");
        let t: Triggered = self
            .send(reqwest::Method::POST, &path, Some(body), &[])
            .await?;
        Ok(t.run)
    }

    pub async fn get_run(&self, id: &str) -> Result<RunDetail, SdkError> {
        let page = [("taskLimit", "1000".to_owned())];
        self.send(reqwest::Method::GET, &format!("/runs/{id}"), None, &page)
            .await
    }

    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>, SdkError> {
        let mut query = Vec::new();
        if let Some(s) = &filter.status {
            query.push(("status", s.clone()));
        }
        if let Some(p) = &filter.pipeline {
            query.push(("pipeline", p.clone()));
        }
        if let Some(l) = filter.limit {
            query.push(("limit", l.to_string()));
        }
        let page: RunPage = self
            .send(reqwest::Method::GET, "/runs", None, &query)
            .await?;
        Ok(page.runs)
    }

    pub async fn cancel(&self, id: &str) -> Result<Run, SdkError> {
        let path = format!("/runs/{id}/cancel");
        self.send(reqwest::Method::POST, &path, None, &[]).await
    }

    /// Puts the run's dead and cancelled tasks back in the queue; the names of those requeued.
    pub async fn retry(&self, id: &str) -> Result<Vec<String>, SdkError> {
        let path = format!("/runs/{id}/retry");
        #[derive(Deserialize)]
        struct Retried {
            requeued: Vec<String>,
        }
        let answer: Retried = self.send(reqwest::Method::POST, &path, None, &[]).await?;
        Ok(answer.requeued)
    }

    /// Sends signal `name`: every `wait` task waiting for it gets `payload` as its output; with
    /// none waiting yet, it is kept (`ttl`, e.g. `10m`; 24 h when `None`) for the first that
    /// waits.
    pub async fn signal(
        &self,
        name: &str,
        payload: Value,
        ttl: Option<&str>,
    ) -> Result<Signalled, SdkError> {
        let query: Vec<(&str, String)> = ttl.map(|t| ("ttl", t.to_owned())).into_iter().collect();
        let path = format!("/signals/{}", segment(name));
        self.send(reqwest::Method::POST, &path, Some(payload), &query)
            .await
    }

    /// Approves (`approved`) or rejects an `approval` task of run `run` that waits for a
    /// decision, as `by`, with `comment`.
    pub async fn decide(
        &self,
        run: &str,
        task: &str,
        approved: bool,
        by: Option<&str>,
        comment: Option<&str>,
    ) -> Result<TaskRun, SdkError> {
        let body = json!({
            "decision": if approved { "approve" } else { "reject" },
            "by": by,
            "comment": comment,
        });
        let path = format!("/runs/{}/tasks/{}/decision", segment(run), segment(task));
        self.send(reqwest::Method::POST, &path, Some(body), &[])
            .await
    }

    /// Runs run `run` again from task `from`: a new run that keeps the outputs of the tasks not
    /// downstream of it (with `input`, another run input; with `upstream`, other outputs for
    /// `from`'s upstream tasks). The new run.
    pub async fn rerun(
        &self,
        run: &str,
        from: &str,
        input: Option<Value>,
        upstream: Option<Map<String, Value>>,
    ) -> Result<Run, SdkError> {
        let mut body = json!({ "from": from });
        if let Some(i) = input {
            body["input"] = i;
        }
        if let Some(u) = upstream {
            body["upstream"] = Value::Object(u);
        }
        #[derive(Deserialize)]
        struct Rerun {
            run: Run,
        }
        let path = format!("/runs/{}/rerun", segment(run));
        let r: Rerun = self
            .send(reqwest::Method::POST, &path, Some(body), &[])
            .await?;
        Ok(r.run)
    }

    /// Why each task of run `run` that is not running waits (`orbit why`): one line each.
    pub async fn why(&self, run: &str, task: Option<&str>) -> Result<Vec<WhyLine>, SdkError> {
        #[derive(Deserialize)]
        struct Answer {
            why: Vec<WhyLine>,
        }
        let query: Vec<(&str, String)> = task.map(|t| ("task", t.to_owned())).into_iter().collect();
        let a: Answer = self
            .send(
                reqwest::Method::GET,
                &format!("/runs/{}/why", segment(run)),
                None,
                &query,
            )
            .await?;
        Ok(a.why)
    }

    /// Run `run`'s timeline (queue waits, attempts, backoffs, parks; the critical path), as the
    /// API's JSON.
    pub async fn timeline(&self, run: &str) -> Result<Value, SdkError> {
        let path = format!("/runs/{}/timeline", segment(run));
        self.send(reqwest::Method::GET, &path, None, &[]).await
    }

    /// Every named limit of a concurrency key (`orbit limits`).
    pub async fn limits(&self) -> Result<Vec<KeyLimit>, SdkError> {
        self.send(reqwest::Method::GET, "/limits", None, &[]).await
    }

    /// Sets `key`'s named limit: at most `limit` task runs (or runs) with it run at once.
    pub async fn set_limit(&self, key: &str, limit: u32) -> Result<KeyLimit, SdkError> {
        let path = format!("/limits/{}", segment(key));
        self.send(
            reqwest::Method::PUT,
            &path,
            Some(json!({ "limit": limit })),
            &[],
        )
        .await
    }

    /// Removes `key`'s named limit.
    pub async fn delete_limit(&self, key: &str) -> Result<(), SdkError> {
        let path = format!("/limits/{}", segment(key));
        self.send(reqwest::Method::DELETE, &path, None, &[]).await
    }

    /// Waits until the run is settled (looking every `every`), at most `timeout`.
    pub async fn wait_for_run(
        &self,
        id: &str,
        timeout: Duration,
        every: Duration,
    ) -> Result<RunDetail, SdkError> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let detail = self.get_run(id).await?;
            if detail.run.is_settled() {
                return Ok(detail);
            }
            if tokio::time::Instant::now() >= end {
                return Err(SdkError::Config(format!(
                    "run {id} is still {} after {timeout:?}",
                    detail.run.state
                )));
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        query: &[(&str, String)],
    ) -> Result<T, SdkError> {
        let mut address = reqwest::Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| SdkError::Config(format!("the server's address: {e}")))?;
        if !query.is_empty() {
            let mut pairs = address.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        let url = address.to_string();
        let mut req = self.http.request(method, address);
        if let Some(token) = &self.token {
            req = req.bearer_auth(secrecy::ExposeSecret::expose_secret(token));
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.map_err(|e| SdkError::Unreachable {
            url: url.clone(),
            error: e.to_string(),
        })?;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(SdkError::Refused {
                url,
                what: "the request",
                status: status.as_u16(),
                body: text,
            });
        }
        // An empty answer (204) is JSON's null: `()` for a caller that expects nothing.
        let text = if text.is_empty() { "null".into() } else { text };
        serde_json::from_str(&text).map_err(|e| SdkError::Unreachable {
            url,
            error: format!("the answer is not what the API describes: {e}"),
        })
    }
}

/// `key` as one URL path segment: every byte outside RFC 3986's unreserved set escaped.
fn segment(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_never_prints_its_token() {
        let client = super::Client::new("http://127.0.0.1:9").with_token("tok-0123456789-secret");
        let shown = format!("{client:?}");
        assert!(!shown.contains("tok-0123456789-secret"), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
    }
}
