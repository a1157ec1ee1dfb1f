//! Push mode: attempts POSTed to the services that registered a URL, within their limits.

use crate::EngineError;
use orbit_core::protocol::{Assignment, Callback, CallbackStatus};
use serde_json::Value;
use std::time::Duration;

use super::{DEFAULT_PUSH_LIMIT, Dispatcher};

impl Dispatcher {
    /// Remembers how many attempts a push-mode service's workers take at once.
    pub fn set_push_limit(&self, service: &str, limit: u32) {
        if let Ok(mut m) = self.pushed.lock() {
            let state = m.entry(service.to_owned()).or_default();
            state.limit = (limit as usize).max(1);
        }
        if let Ok(mut n) = self.no_push_since.lock() {
            *n = None;
        }
    }

    /// One push round: for every push-mode service seen recently, claims what its free slots
    /// allow and POSTs each attempt to its URL with the task token. A refused or failed POST is
    /// a failed attempt (retried with backoff). Returns how many attempts were handed out.
    /// With no push-mode service at all, returns `None`: nothing to wait for work for.
    pub async fn push_round(&self, http: &reqwest::Client) -> Result<Option<usize>, EngineError> {
        let recently = |at: &std::time::Instant| at.elapsed() < Duration::from_secs(1);
        if self
            .no_push_since
            .lock()
            .is_ok_and(|n| n.as_ref().is_some_and(recently))
        {
            return Ok(None);
        }
        let now = self.clock.now();
        let services = self.store.services().await?;
        if services.iter().all(|s| s.url.is_none()) {
            if let Ok(mut n) = self.no_push_since.lock() {
                *n = Some(std::time::Instant::now());
            }
            return Ok(None);
        }
        let mut handed = 0;
        for service in services {
            let Some(url) = service.url.clone() else {
                continue;
            };
            if (now - service.last_seen_at).num_seconds() > 60 {
                continue;
            }
            let free = {
                let Ok(mut m) = self.pushed.lock() else {
                    continue;
                };
                let state = m.entry(service.id.clone()).or_default();
                let at = std::time::Instant::now();
                state.inflight.retain(|_, until| *until > at);
                let limit = if state.limit == 0 {
                    DEFAULT_PUSH_LIMIT
                } else {
                    state.limit
                };
                limit.saturating_sub(state.inflight.len())
            };
            if free == 0 {
                continue;
            }
            let tasks: Vec<String> = self
                .store
                .service_tasks(Some(&service.id))
                .await?
                .into_iter()
                .map(|t| t.name)
                .collect();
            let owner = format!("push:{}", service.id);
            let assignments = self.claim(&service.id, &owner, &tasks, free).await?;
            handed += assignments.len();
            if let Ok(mut m) = self.pushed.lock() {
                let state = m.entry(service.id.clone()).or_default();
                for a in &assignments {
                    let deadline = std::time::Instant::now()
                        + a.timeout_ms
                            .map_or(Duration::from_secs(600), Duration::from_millis);
                    state.inflight.insert(a.task_run_id, deadline);
                }
            }
            // All at once: a worker answers a push at once (202) and runs it after, so the
            // round takes one round trip, not one per attempt.
            let pushes = assignments
                .iter()
                .map(|a| self.push_one(http, &service.id, &url, a));
            for result in futures::future::join_all(pushes).await {
                result?;
            }
        }
        Ok(Some(handed))
    }

    /// POSTs one attempt to a push-mode worker; a refused or failed POST is a failed attempt.
    pub(super) async fn push_one(
        &self,
        http: &reqwest::Client,
        service: &str,
        url: &str,
        assignment: &Assignment,
    ) -> Result<(), EngineError> {
        let sent = http
            .post(url)
            .bearer_auth(&assignment.token)
            .json(assignment)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let refused = match sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the worker at {url} answered {}", r.status())),
            Err(e) => Some(format!("cannot reach the worker at {url}: {e}")),
        };
        let Some(why) = refused else {
            return Ok(());
        };
        tracing::warn!(service, task = %assignment.task, "{why}");
        if let Ok(claims) = self
            .key
            .verify_task(&assignment.token, assignment.task_run_id)
        {
            let failed = Callback {
                task_run_id: assignment.task_run_id,
                status: CallbackStatus::Failed,
                output: Value::Null,
                run_next: None,
                error: Some(format!("push failed: {why}")),
                retryable: true,
                retry_after_ms: None,
                logs: Vec::new(),
            };
            self.complete(&claims, failed).await?;
        }
        Ok(())
    }
}
