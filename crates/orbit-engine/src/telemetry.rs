//! The engine's Prometheus metrics, named by Prometheus's conventions (`_total` counters, base
//! units in the name, HELP for each). The `metrics` facade records them; a process that serves
//! `/metrics` installs the exporter and renders them (see `orbit-server`). Labels stay bounded:
//! pipeline and task names (a `for_each` child counts as its task), outcomes, never run ids.

use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};
use orbit_store::FinishedAttempt;
use orbit_store::plan::AttemptOutcome;
use std::time::Duration;

/// Says what each of the engine's metrics is; `describe` once per process, before a scrape.
pub fn describe() {
    describe_counter!(
        "orbit_attempts_total",
        Unit::Count,
        "Attempts that finished, by pipeline, task and outcome (succeeded, reused, parked, expanded, or the failure kind)"
    );
    describe_histogram!(
        "orbit_attempt_duration_seconds",
        Unit::Seconds,
        "How long attempts ran, from their claim to their end, by pipeline and task"
    );
    describe_histogram!(
        "orbit_queue_wait_seconds",
        Unit::Seconds,
        "How long claimed task runs waited in the queue, from ready to claimed"
    );
    describe_counter!(
        "orbit_leases_lost_total",
        Unit::Count,
        "Attempts whose result was refused because their lease had been taken over"
    );
    describe_counter!(
        "orbit_commits_total",
        Unit::Count,
        "Commits of finished attempts and claims"
    );
    describe_histogram!(
        "orbit_commit_duration_seconds",
        Unit::Seconds,
        "How long a commit of finished attempts and claims took"
    );
    describe_histogram!(
        "orbit_commit_attempts",
        Unit::Count,
        "Finished attempts recorded per commit (group commit's batch size)"
    );
    describe_counter!(
        "orbit_store_errors_total",
        Unit::Count,
        "Store calls of the engine that failed, by kind (unavailable, conflict, ...)"
    );
    describe_counter!(
        "orbit_worker_process_restarts_total",
        Unit::Count,
        "Supervised worker processes that exited and were started again (orbit server --workers-processes)"
    );
    describe_counter!(
        "orbit_recovery_runs_resumed_total",
        Unit::Count,
        "Interrupted runs resumed by recovery"
    );
    describe_counter!(
        "orbit_recovery_steps_executed_total",
        Unit::Count,
        "Steps (attempts) that resumed runs executed"
    );
}

/// A finished attempt of pipeline `pipeline`.
pub fn attempt(pipeline: &str, f: &FinishedAttempt) {
    let task = orbit_core::pipeline::parent_of(&f.task.task_name)
        .map_or(f.task.task_name.as_str(), |p| p.0)
        .to_owned();
    let outcome = AttemptOutcome::of(f).as_str();
    counter!("orbit_attempts_total", "pipeline" => pipeline.to_owned(), "task" => task.clone(), "outcome" => outcome)
        .increment(1);
    let took = (f.finished_at - f.started_at).to_std().unwrap_or_default();
    histogram!("orbit_attempt_duration_seconds", "pipeline" => pipeline.to_owned(), "task" => task)
        .record(took.as_secs_f64());
}

/// A commit that recorded `attempts` finished attempts, in `took`.
pub fn commit(attempts: usize, took: Duration) {
    counter!("orbit_commits_total").increment(1);
    histogram!("orbit_commit_duration_seconds").record(took.as_secs_f64());
    histogram!("orbit_commit_attempts").record(attempts as f64);
}

/// Results refused because their leases were taken over.
pub fn leases_lost(n: usize) {
    if n > 0 {
        counter!("orbit_leases_lost_total").increment(n as u64);
    }
}

/// A supervised worker process exited and is started again.
pub fn worker_process_restarted() {
    counter!("orbit_worker_process_restarts_total").increment(1);
}

/// A store call that failed.
pub fn store_error(e: &orbit_store::StoreError) {
    counter!("orbit_store_errors_total", "kind" => e.code()).increment(1);
}

/// Task runs just claimed: how long each waited in the queue.
pub fn claimed(tasks: &[orbit_store::ClaimedTask]) {
    for t in tasks {
        if let Some(ready) = t.ready_at {
            let waited = (t.claimed_at - ready).to_std().unwrap_or_default();
            histogram!("orbit_queue_wait_seconds").record(waited.as_secs_f64());
        }
    }
}
