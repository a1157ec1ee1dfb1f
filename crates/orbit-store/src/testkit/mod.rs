//! The conformance suite: behaviour every [`Store`] backend must show. A backend's tests call
//! [`conformance_tests!`](crate::conformance_tests) with a function that makes a fresh store.

#![allow(
    clippy::unwrap_used,
    reason = "the conformance suite is test code: a failed step should fail the test loudly"
)]

mod claims;
mod finish;
mod parks;
mod registry;
mod runs;

pub use claims::*;
pub use finish::*;
pub use parks::*;
pub use registry::*;
pub use runs::*;

use crate::{ClaimRequest, ClaimedTask, FinishedAttempt, NewRun, Store, StoredPipeline};
use chrono::{DateTime, Utc};
use orbit_core::dag::Dag;
use orbit_core::retry::RetryPolicy;
use orbit_core::transition::{Outcome, on_attempt_finished};
use orbit_core::{Pipeline, TaskDef, TaskState, TaskType};
use serde_json::{Value, json};
use uuid::Uuid;

/// Generates one `#[tokio::test]` per conformance case, each on a fresh store from `$setup`,
/// an async fn returning `(store, guard)`.
#[macro_export]
macro_rules! conformance_tests {
    ($setup:path) => {
        $crate::conformance_tests!(@cases $setup;
            saves_pipeline_versions_by_content,
            creates_runs_with_roots_ready,
            claims_by_priority_then_age,
            claims_only_the_requested_run,
            success_promotes_when_all_needs_succeeded,
            fences_writes_by_lease_epoch,
            retries_become_claimable_after_backoff,
            a_lost_attempt_keeps_its_place_in_the_queue,
            dead_task_cancels_downstream_and_fails_run,
            idempotency_key_returns_existing_run,
            finds_runs_by_prefix_and_filters,
            finds_runs_and_task_runs_by_short_id,
            extends_only_held_leases,
            records_attempts_with_logs,
            lists_expired_leases,
            cancel_stops_every_unsettled_task,
            requeue_gives_fresh_tries_and_reopens_the_run,
            joins_promote_once_when_upstreams_finish_together,
            claims_filter_by_queue_and_type,
            concurrency_keys_cap_running_attempts,
            rate_limits_spend_tokens_and_refill,
            a_throttled_attempt_costs_no_retry,
            map_children_are_made_once_and_gathered,
            a_child_failing_fast_cancels_its_siblings,
            sub_runs_name_their_parent,
            a_settled_sub_run_is_reported,
            map_children_share_their_parents_rate_limit,
            a_key_that_cannot_be_rendered_refuses_the_run,
            named_key_limits_decide_what_runs,
            a_pipeline_key_holds_further_runs_pending,
            queue_stats_count_task_runs_by_state,
            deleted_pipelines_are_hidden_until_saved_again,
            only_scheduled_pipelines_are_read_for_cron,
            nodes_are_listed_with_what_they_hold,
            task_runs_are_found_by_prefix,
            routing_skips_branches_not_chosen,
            registration_versions_task_code,
            progress_is_fenced_by_lease,
            events_are_read_in_commit_order,
            settled_runs_are_deleted_with_what_hangs_off_them,
            many_claims_share_one_commit,
            a_big_run_is_deleted_in_slices,
            parked_tasks_wake_at_their_time,
            a_signal_wakes_every_waiting_task_once,
            a_signal_sent_before_its_wait_is_kept,
            a_wait_times_out_once,
            a_decision_is_recorded_once,
            a_rerun_takes_over_what_came_before_its_task,
        );
    };
    (@cases $setup:path; $($case:ident),* $(,)?) => {
        mod conformance {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, _guard) = $setup().await;
                    $crate::testkit::$case(&store).await;
                    $crate::testkit::counts_match_rows(&store).await;
                }
            )*
        }
    };
}

/// The counters the commits keep ([`crate::tally`]) equal a count of the rows: checked after
/// every conformance case, so a verb that moves a task run without counting it fails here.
pub async fn counts_match_rows(store: &dyn Store) {
    let runs = store
        .list_runs(&crate::RunFilter {
            limit: 10_000,
            ..crate::RunFilter::default()
        })
        .await
        .expect("list runs");
    let mut rows = std::collections::BTreeMap::<&str, i64>::new();
    for run in &runs {
        for (state, n) in store.task_run_counts(run.id).await.expect("counts") {
            *rows.entry(state.as_str()).or_default() += n as i64;
        }
    }
    let stats = store.queue_stats().await.expect("queue stats");
    let row = |s: &str| rows.get(s).copied().unwrap_or(0);
    assert_eq!(
        (
            stats.waiting,
            stats.parked,
            stats.pending,
            stats.running,
            stats.completed,
            stats.failed
        ),
        (
            row("waiting"),
            row("parked"),
            row("ready"),
            row("running"),
            row("succeeded"),
            row("dead")
        ),
        "counters (left) against the task runs' rows (right)"
    );
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(1_800_000_000_000_000).expect("valid time")
}

/// A pipeline of sleep tasks: `(name, needs, priority)`.
pub fn pipeline(name: &str, tasks: &[(&str, &[&str], i32)]) -> Pipeline {
    Pipeline {
        name: name.into(),
        description: None,
        schedule: None,
        concurrency: None,
        output: None,
        tasks: tasks
            .iter()
            .map(|(n, needs, prio)| TaskDef {
                name: (*n).into(),
                task_type: TaskType::Sleep,
                params: json!({"duration": "0s"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                needs: needs.iter().map(|s| (*s).into()).collect(),
                retry: RetryPolicy {
                    max_attempts: 2,
                    jitter: false,
                    ..RetryPolicy::default()
                },
                timeout: None,
                priority: *prio,
                heartbeat_interval: std::time::Duration::from_secs(10),
                idempotency_key: None,
                queue: None,
                allowed_next: Vec::new(),
                concurrency: None,
                rate_limit: None,
                for_each: None,
            })
            .collect(),
    }
}

/// A run of `stored` with `input`, created `at`, triggered from the CLI, no key.
pub fn new_run(stored: &StoredPipeline, input: Value, at: DateTime<Utc>) -> NewRun<'_> {
    NewRun {
        id: uuid::Uuid::now_v7(),
        pipeline: stored,
        input,
        priority: 0,
        idempotency_key: None,
        idempotency_ttl: std::time::Duration::from_secs(3600),
        request_hash: None,
        triggered_by: crate::TriggeredBy::Cli,
        parent: None,
        rerun: None,
        now: at,
    }
}

async fn start(store: &dyn Store, p: &Pipeline, at: DateTime<Utc>) -> (StoredPipeline, Uuid) {
    let stored = store
        .save_pipeline(p, None, at)
        .await
        .expect("save pipeline");
    let run = store
        .create_run(new_run(&stored, json!({"n": 1}), at))
        .await
        .expect("create run");
    (stored, run.run.id)
}

async fn claim(
    store: &dyn Store,
    run: Option<Uuid>,
    limit: usize,
    at: DateTime<Utc>,
) -> Vec<ClaimedTask> {
    let req = ClaimRequest {
        owner: "test-worker".into(),
        limit,
        run,
        queues: Vec::new(),
        types: Vec::new(),
    };
    store
        .finish_and_claim(&[], Some(&req), at)
        .await
        .expect("claim")
        .claimed
}

/// `task`'s attempt ended with `outcome` at `at`, as the engine would record it.
pub fn finish(
    p: &Pipeline,
    task: &ClaimedTask,
    outcome: Outcome,
    at: DateTime<Utc>,
) -> FinishedAttempt {
    let dag = Dag::new(p).expect("dag");
    let idx = dag.index_of(&task.task_name).expect("task in dag");
    let policy = &p.tasks[idx].retry;
    FinishedAttempt {
        task: task.clone(),
        worker: "test-worker".into(),
        started_at: at,
        finished_at: at,
        log: format!("log of {}", task.task_name),
        transition: on_attempt_finished(&dag, idx, policy, task.tries, outcome, at, 0.0),
        idempotency_key: None,
        reused: false,
        code_version: Some(7),
    }
}

/// Records one finished attempt, claiming nothing.
async fn record(store: &dyn Store, f: FinishedAttempt) -> crate::BatchOutcome {
    store.finish_and_claim(&[f], None, t0()).await.unwrap()
}

async fn states(store: &dyn Store, run: Uuid) -> Vec<(String, TaskState)> {
    store
        .task_runs(run)
        .await
        .expect("task runs")
        .into_iter()
        .map(|t| (t.task_name, t.state))
        .collect()
}

fn names(tasks: &[ClaimedTask]) -> Vec<&str> {
    tasks.iter().map(|t| t.task_name.as_str()).collect()
}
