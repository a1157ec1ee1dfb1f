//! Taking results in: heartbeats, progress and callbacks, fenced by the attempt's lease.

use crate::EngineError;
use crate::storage::{self, StorageError};
use chrono::{DateTime, Utc};
use orbit_core::TaskDef;
use orbit_core::dag::Dag;
use orbit_core::object::{ObjectRef, looks_like_reference};
use orbit_core::protocol::{Callback, CallbackStatus, TaskClaims};
use orbit_core::transition::{Failure, FailureKind, Outcome, Transition, on_attempt_finished};
use orbit_store::{ClaimedTask, FinishedAttempt, StoreError};
use serde_json::Value;

use super::{Dispatcher, Recorded};

impl Dispatcher {
    /// A callback's output as the store keeps it: a reference is accepted only to this
    /// attempt's own object, which must exist (its size is read from the backend); an inline
    /// output over the threshold is stored here.
    /// Also returns a line for the attempt's log that says where a stored output came from.
    pub(super) async fn output_of(
        &self,
        claims: &TaskClaims,
        output: Value,
    ) -> Result<(Value, Option<String>), EngineError> {
        let key = storage::output_key(claims.run, &claims.task, claims.attempt);
        if let Some(r) = ObjectRef::of(&output) {
            if r.key != key {
                return Err(EngineError::BadRequest(format!(
                    "the output refers to object `{}`; this attempt may only write `{key}`",
                    r.id()
                )));
            }
            let size = match self.storage.size(&r.backend, &r.key).await {
                Ok(size) => size,
                Err(StorageError::NotFound(_)) => {
                    return Err(EngineError::BadRequest(format!(
                        "the output object `{}` was not written; PUT it to the granted URL first",
                        r.id()
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            let line = format!(
                "[orbit] output ({size} bytes) written by the worker to object `{}`",
                r.id()
            );
            return Ok((ObjectRef { size, ..r }.to_value(), Some(line)));
        }
        if looks_like_reference(&output) {
            return Err(EngineError::BadRequest(
                "the output has the shape of an object reference but is not a valid one".into(),
            ));
        }
        let stored = self.storage.offload(output, &key).await?;
        let line = ObjectRef::of(&stored).map(|r| {
            format!(
                "[orbit] output ({} bytes) sent inline; stored as object `{}`",
                r.size,
                r.id()
            )
        });
        Ok((stored, line))
    }

    /// A claimed task that could not be handed out: recorded as a failed attempt.
    pub(super) async fn failed(
        &self,
        task: &ClaimedTask,
        owner: &str,
        failure: Failure,
    ) -> Result<FinishedAttempt, EngineError> {
        let loaded = self.loaded(task.pipeline_id).await?;
        let now = self.clock.now();
        let name = orbit_core::pipeline::parent_of(&task.task_name)
            .map_or(task.task_name.as_str(), |p| p.0);
        let transition = match loaded.1.index_of(name) {
            Some(i) => {
                let def = &loaded.0.pipeline.tasks[i];
                self.transition(
                    &loaded.1,
                    def,
                    None,
                    task,
                    Outcome::Failed(failure.clone()),
                    now,
                )
            }
            None => Transition::Dead {
                failure: failure.clone(),
                cancel: Vec::new(),
            },
        };
        Ok(FinishedAttempt {
            task: task.clone(),
            worker: owner.to_owned(),
            started_at: task.claimed_at,
            finished_at: now,
            log: format!(
                "[orbit] could not hand the task to a worker: {}\n",
                failure.message
            ),
            transition,
            idempotency_key: None,
            reused: false,
            code_version: None,
        })
    }

    pub(super) fn transition(
        &self,
        dag: &Dag,
        def: &TaskDef,
        options: Option<&orbit_core::protocol::TaskRegistration>,
        task: &ClaimedTask,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> Transition {
        let Some(i) = dag.index_of(&def.name) else {
            return Transition::Dead {
                failure: Failure::fatal(format!("task `{}` is not in the pipeline", def.name)),
                cancel: Vec::new(),
            };
        };
        // The service's own retry count, when it gives one, wins over the pipeline default.
        let mut policy = def.retry.clone();
        policy.max_delay = policy.max_delay.min(self.max_retry_delay);
        if let Some(retries) = options.and_then(|o| o.retries) {
            policy.max_attempts = retries.saturating_add(1);
        }
        let t = on_attempt_finished(dag, i, &policy, task.tries, outcome, now, fastrand::f64());
        match (
            &def.for_each,
            orbit_core::pipeline::parent_of(&task.task_name),
        ) {
            (Some(fe), Some(_)) => orbit_core::transition::as_child(dag, i, fe.fail_fast, t),
            _ => t,
        }
    }

    /// Renews the lease of the attempt the token names.
    pub async fn heartbeat(&self, claims: &TaskClaims) -> Result<Recorded, EngineError> {
        let lost = self
            .store
            .extend_leases(&[(claims.trid, claims.epoch)], self.clock.now())
            .await?;
        Ok(if lost.is_empty() {
            Recorded::Kept
        } else {
            Recorded::LeaseLost
        })
    }

    /// Records progress and renews the lease.
    pub async fn progress(
        &self,
        claims: &TaskClaims,
        fraction: f64,
        message: Option<&str>,
    ) -> Result<Recorded, EngineError> {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let now = self.clock.now();
        if !self
            .store
            .set_progress(claims.trid, claims.epoch, fraction, message, now)
            .await?
        {
            return Ok(Recorded::LeaseLost);
        }
        self.heartbeat(claims).await
    }

    /// Records how the attempt ended: its output and routing choice, or its failure.
    pub async fn complete(
        &self,
        claims: &TaskClaims,
        callback: Callback,
    ) -> Result<Recorded, EngineError> {
        let loaded = self.loaded(claims.pid).await?;
        let (stored, dag) = (&loaded.0, &loaded.1);
        // By the DAG's index: a scan of the task list per callback is quadratic in big runs.
        let name =
            orbit_core::pipeline::parent_of(&claims.task).map_or(claims.task.as_str(), |p| p.0);
        let Some(def) = dag.index_of(name).map(|i| &stored.pipeline.tasks[i]) else {
            return Err(StoreError::Corrupt(format!(
                "task `{}` is not in its pipeline",
                claims.task
            ))
            .into());
        };
        // The registration matters only for a failure (its retry count) or a routing choice
        // the pipeline does not bound: read it only then, not on every success.
        let needs_options = callback.status != CallbackStatus::Succeeded
            || (callback.run_next.is_some() && def.allowed_next.is_empty());
        let options = if needs_options {
            match self.store.service_task(def.service_task()).await {
                Ok(t) => Some(t.options),
                Err(StoreError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        let Callback {
            status,
            output,
            run_next,
            error,
            retryable,
            retry_after_ms,
            logs,
            ..
        } = callback;
        let (output, stored_line) = match status {
            CallbackStatus::Succeeded => self.output_of(claims, output).await?,
            _ => (Value::Null, None),
        };
        let outcome = match status {
            CallbackStatus::Succeeded => succeeded(output, run_next, def, options.as_ref()),
            CallbackStatus::Failed | CallbackStatus::Timeout => {
                let kind = match (status, retryable) {
                    (CallbackStatus::Timeout, _) => FailureKind::Timeout,
                    (_, true) => FailureKind::Error,
                    (_, false) => FailureKind::Fatal,
                };
                let message = error.unwrap_or_else(|| "the handler failed".into());
                match retry_after_ms {
                    Some(ms) if status == CallbackStatus::Failed => Outcome::Failed(
                        Failure::throttled(message, std::time::Duration::from_millis(ms)),
                    ),
                    _ => Outcome::Failed(Failure::new(kind, message)),
                }
            }
        };
        let now = self.clock.now();
        let task = held(claims, now);
        let finished = FinishedAttempt {
            transition: self.transition(dag, def, options.as_ref(), &task, outcome, now),
            started_at: task.claimed_at,
            task,
            worker: claims.owner.clone(),
            finished_at: now,
            log: attempt_log(logs, stored_line),
            idempotency_key: claims.key.clone(),
            reused: false,
            code_version: Some(claims.code_version),
        };
        crate::telemetry::attempt(&stored.name, &finished);
        // The worker's slot is free before the commit signals new work: freed after it, a push
        // round woken by that signal could still count the slot as taken and then sleep a
        // second with work ready (seen as 1 s stalls in push benchmarks).
        if let Ok(mut m) = self.pushed.lock()
            && let Some(state) = m.get_mut(&claims.sub)
        {
            state.inflight.remove(&claims.trid);
        }
        let outcome = self.commits.commit(vec![finished], None).await?;
        Ok(if outcome.lease_lost.is_empty() {
            Recorded::Kept
        } else {
            Recorded::LeaseLost
        })
    }
}

/// The claim a task token carries, as the store's fence checks it.
fn held(claims: &TaskClaims, now: DateTime<Utc>) -> ClaimedTask {
    ClaimedTask {
        id: claims.trid,
        run_id: claims.run,
        pipeline_id: claims.pid,
        task_name: claims.task.clone(),
        attempt: claims.attempt,
        tries: claims.tries,
        lease_epoch: claims.epoch,
        lease_expires_at: now,
        claimed_at: DateTime::from_timestamp_millis(claims.claimed_ms).unwrap_or_default(),
        item: None,
        wake: None,
        ready_at: None,
    }
}

/// A success, routed when the handler chose what runs next (within the pipeline's
/// `allowed_next`, else the registration's).
fn succeeded(
    output: Value,
    run_next: Option<Vec<String>>,
    def: &TaskDef,
    options: Option<&orbit_core::protocol::TaskRegistration>,
) -> Outcome {
    let Some(run_next) = run_next else {
        return Outcome::Succeeded(output);
    };
    let allowed = if def.allowed_next.is_empty() {
        options.map(|o| o.allowed_next.clone()).unwrap_or_default()
    } else {
        def.allowed_next.clone()
    };
    Outcome::Routed {
        output,
        allowed,
        run_next,
    }
}

/// The handler's log lines, then the line saying where a large output went.
fn attempt_log(lines: Vec<String>, stored_line: Option<String>) -> String {
    let mut log = lines.join("\n");
    if !log.is_empty() {
        log.push('\n');
    }
    if let Some(line) = stored_line {
        log.push_str(&line);
        log.push('\n');
    }
    log
}
