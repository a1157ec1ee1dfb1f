//! What a finished attempt does to its task and run. Pure: the engine computes a [`Transition`]
//! and the store applies it, fenced by the attempt's lease, in one transaction.

use crate::dag::Dag;
use crate::retry::RetryPolicy;
use crate::state::RunState;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    /// Succeeded and chose, among `allowed` (its `allowed_next`), which tasks run next.
    Routed {
        output: Value,
        allowed: Vec<String>,
        run_next: Vec<String>,
    },
    Failed(Failure),
    /// A `for_each` task rendered its list: one child per element.
    Expanded(Vec<Value>),
    /// A `sleep`, `wait` or `approval` task parks until its wake-up.
    Parked(Park),
}

/// Why a task run parks, and until when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Park {
    pub kind: ParkKind,
    /// Made `ready` at this instant (a sleep's end, a wait's timeout); `None`: only a signal or
    /// a decision wakes it.
    pub until: Option<DateTime<Utc>>,
    /// The signal a `wait` waits for.
    pub event: Option<String>,
    /// What an approver reads: an approval's rendered message.
    pub note: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParkKind {
    Sleep,
    Signal,
    Approval,
    /// A `pipeline` task waiting for its sub-run to settle (its event is the sub-run's
    /// `settled` signal; its time, a check in case that signal was lost).
    Run,
}

impl ParkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ParkKind::Sleep => "sleep",
            ParkKind::Signal => "signal",
            ParkKind::Approval => "approval",
            ParkKind::Run => "run",
        }
    }

    pub fn parse(s: &str) -> Option<ParkKind> {
        [
            ParkKind::Sleep,
            ParkKind::Signal,
            ParkKind::Approval,
            ParkKind::Run,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl Outcome {
    /// The output of a success (routed or not).
    pub fn output_mut(&mut self) -> Option<&mut Value> {
        match self {
            Outcome::Succeeded(output) | Outcome::Routed { output, .. } => Some(output),
            Outcome::Failed(_) | Outcome::Expanded(_) | Outcome::Parked(_) => None,
        }
    }
}

/// Why an attempt failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    /// The task asked to be retried no sooner than this.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::millis::option"
    )]
    pub retry_after: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// May succeed if tried again.
    Error,
    /// Will not succeed if tried again (bad parameters, a 4xx, a task that said so).
    Fatal,
    /// Ran past its timeout and was killed.
    Timeout,
    /// Its worker stopped heartbeating; the lease expired.
    WorkerLost,
    /// Asked to wait (`429` with `Retry-After`, an SDK's `retry_after`): tried again after its
    /// `retry_after` without spending one of its attempts.
    Throttled,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Error => "error",
            FailureKind::Fatal => "fatal",
            FailureKind::Timeout => "timeout",
            FailureKind::WorkerLost => "worker_lost",
            FailureKind::Throttled => "throttled",
        }
    }

    pub fn is_retryable(self) -> bool {
        !matches!(self, FailureKind::Fatal)
    }
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Failure {
        Failure::new(FailureKind::Error, message)
    }

    pub fn fatal(message: impl Into<String>) -> Failure {
        Failure::new(FailureKind::Fatal, message)
    }

    /// Try again after `after`, without spending an attempt.
    pub fn throttled(message: impl Into<String>, after: Duration) -> Failure {
        Failure {
            kind: FailureKind::Throttled,
            message: message.into(),
            retry_after: Some(after),
        }
    }

    /// Whether the attempt it ends counts against the task's retries.
    pub fn counts(&self) -> bool {
        self.kind != FailureKind::Throttled
    }
}

/// The effects of one finished attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// `running -> succeeded`, storing the output; each named downstream task has one fewer
    /// upstream to wait for (a name listed twice, two fewer) and becomes `ready` when none is
    /// left. The `skip` tasks, not chosen by routing, become `skipped`.
    Succeed {
        output: Value,
        promote: Vec<String>,
        skip: Vec<String>,
    },
    /// `running -> ready` again, claimable from `ready_at`. With `keep_place`, the task keeps
    /// the place in the queue it had when it was claimed (the store leaves its `ready_at` as it
    /// was), so a task whose worker was lost is not sent behind everything that became ready
    /// while it ran.
    Retry {
        ready_at: DateTime<Utc>,
        failure: Failure,
        keep_place: bool,
    },
    /// `running -> dead` (dead-letter queue); every task downstream that has not started is
    /// `cancelled`, since it can no longer get its input.
    Dead {
        failure: Failure,
        cancel: Vec<String>,
    },
    /// `running -> waiting` for its children: a `for_each` task gets one `ready` child task
    /// run per element, and is `ready` again (to gather their outputs) once every child has
    /// succeeded or died.
    Expand { items: Vec<Value> },
    /// `running -> parked`: holds no worker until its wake-up makes it `ready` again (its
    /// `until` passing, a signal, a decision); the attempt that follows finishes it.
    Park(Park),
}

impl Transition {
    /// Whether the attempt counts against the task's retries: a throttled one does not, nor
    /// a `for_each` task's expansion (its gathering is its first try), nor parking.
    pub fn spends_a_try(&self) -> bool {
        match self {
            Transition::Expand { .. } | Transition::Park(_) => false,
            other => other.failure().is_none_or(Failure::counts),
        }
    }

    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Transition::Succeed { .. } | Transition::Expand { .. } | Transition::Park(_) => None,
            Transition::Retry { failure, .. } | Transition::Dead { failure, .. } => Some(failure),
        }
    }
}

/// Decides what attempt number `attempt` (1-based) of task `task` (its index in `dag`) does.
/// `random` in [0, 1) spreads the retry delay.
pub fn on_attempt_finished(
    dag: &Dag,
    task: usize,
    policy: &RetryPolicy,
    attempt: u32,
    outcome: Outcome,
    now: DateTime<Utc>,
    random: f64,
) -> Transition {
    let outcome = match outcome {
        Outcome::Routed {
            allowed, run_next, ..
        } if run_next.iter().any(|n| !allowed.contains(n)) => {
            let stray: Vec<&str> = run_next
                .iter()
                .filter(|n| !allowed.contains(n))
                .map(String::as_str)
                .collect();
            Outcome::Failed(Failure::fatal(format!(
                "run_next names {}, not in allowed_next [{}]",
                stray
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                allowed.join(", ")
            )))
        }
        other => other,
    };
    match outcome {
        Outcome::Expanded(items) => Transition::Expand { items },
        Outcome::Parked(park) => Transition::Park(park),
        Outcome::Succeeded(output) => Transition::Succeed {
            output,
            promote: dag
                .downstream(task)
                .iter()
                .map(|&d| dag.name(d).to_owned())
                .collect(),
            skip: Vec::new(),
        },
        Outcome::Routed {
            output,
            allowed,
            run_next,
        } => {
            let (promote, skip) = route(dag, task, &allowed, &run_next);
            Transition::Succeed {
                output,
                promote,
                skip,
            }
        }
        Outcome::Failed(failure)
            if failure.kind.is_retryable()
                && (!failure.counts() || policy.allows_another(attempt)) =>
        {
            // A lost worker is not the task's fault: waiting, or queueing again behind newer
            // work, would only delay recovery.
            let keep_place = failure.kind == FailureKind::WorkerLost;
            let delay = if keep_place {
                Duration::ZERO
            } else if let (false, Some(after)) = (failure.counts(), failure.retry_after) {
                // The other side said when: backing off further would only lose time.
                after
            } else {
                policy
                    .delay_after(attempt, random)
                    .max(failure.retry_after.unwrap_or_default())
            };
            let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            Transition::Retry {
                ready_at: now
                    .checked_add_signed(delay)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
                failure,
                keep_place,
            }
        }
        Outcome::Failed(failure) => Transition::Dead {
            failure,
            cancel: dag
                .descendants(task)
                .into_iter()
                .map(|d| dag.name(d).to_owned())
                .collect(),
        },
    }
}

/// What an attempt of a `for_each` child of task `parent` does, given what `transition` (from
/// [`on_attempt_finished`] for `parent`) would do to the parent: success and death settle the
/// child's slot in the parent (which decides the outcome when it gathers), and only a
/// fail-fast death cancels anything: the parent and its descendants.
pub fn as_child(dag: &Dag, parent: usize, fail_fast: bool, transition: Transition) -> Transition {
    let name = dag.name(parent).to_owned();
    match transition {
        Transition::Succeed { output, .. } => Transition::Succeed {
            output,
            promote: vec![name],
            skip: Vec::new(),
        },
        Transition::Dead { failure, cancel } => Transition::Dead {
            failure,
            cancel: if fail_fast {
                std::iter::once(name).chain(cancel).collect()
            } else {
                Vec::new()
            },
        },
        other => other,
    }
}

/// What task `task` choosing `run_next` among `allowed` does downstream: the tasks to promote
/// (once per finished or skipped upstream) and the tasks to skip: the branches not chosen and
/// every task all of whose upstreams are skipped.
fn route(
    dag: &Dag,
    task: usize,
    allowed: &[String],
    run_next: &[String],
) -> (Vec<String>, Vec<String>) {
    let mut skipped = vec![false; dag.len()];
    for name in allowed.iter().filter(|n| !run_next.contains(n)) {
        if let Some(i) = dag.index_of(name) {
            skipped[i] = true;
        }
    }
    let below = dag.descendants(task);
    // Topological order: a task's upstreams are decided before it.
    for &i in dag.order() {
        if below.contains(&i) && !skipped[i] && dag.upstream(i).iter().all(|&u| skipped[u]) {
            skipped[i] = true;
        }
    }
    let mut promote = Vec::new();
    for from in std::iter::once(task).chain(below.iter().copied().filter(|&i| skipped[i])) {
        for &d in dag.downstream(from) {
            if !skipped[d] {
                promote.push(dag.name(d).to_owned());
            }
        }
    }
    let skip = dag
        .order()
        .iter()
        .filter(|&&i| skipped[i])
        .map(|&i| dag.name(i).to_owned())
        .collect();
    (promote, skip)
}

/// The final state of a run whose tasks have all settled.
pub fn settled_run_state(dead_tasks: u64) -> RunState {
    if dead_tasks == 0 {
        RunState::Succeeded
    } else {
        RunState::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain() -> Dag {
        let names = ["a", "b", "c"].map(String::from).to_vec();
        Dag::from_edges(names, vec![vec![], vec![0], vec![1]]).unwrap()
    }

    #[test]
    fn success_promotes_direct_downstream() {
        let t = on_attempt_finished(
            &chain(),
            0,
            &RetryPolicy::default(),
            1,
            Outcome::Succeeded(json!(1)),
            Utc::now(),
            0.5,
        );
        assert_eq!(
            t,
            Transition::Succeed {
                output: json!(1),
                promote: vec!["b".into()],
                skip: vec![]
            }
        );
    }

    /// router -> a -> a2 -> join; router -> b -> join; router -> c (not routable); x -> b.
    fn routed() -> Dag {
        let names = ["router", "a", "a2", "b", "join", "c", "x"]
            .map(String::from)
            .to_vec();
        Dag::from_edges(
            names,
            vec![
                vec![],
                vec![0],
                vec![1],
                vec![0, 6],
                vec![2, 3],
                vec![0],
                vec![],
            ],
        )
        .unwrap()
    }

    fn finish_routed(run_next: &[&str]) -> Transition {
        on_attempt_finished(
            &routed(),
            0,
            &RetryPolicy::default(),
            1,
            Outcome::Routed {
                output: json!({}),
                allowed: vec!["a".into(), "b".into()],
                run_next: run_next.iter().map(|s| s.to_string()).collect(),
            },
            Utc::now(),
            0.0,
        )
    }

    #[test]
    fn routing_skips_the_branches_not_chosen_and_what_only_they_lead_to() {
        let Transition::Succeed { promote, skip, .. } = finish_routed(&["b"]) else {
            panic!("expected success");
        };
        assert_eq!(skip, ["a", "a2"]);
        // b and c from the router; join once for its skipped upstream a2.
        let mut promote = promote;
        promote.sort();
        assert_eq!(promote, ["b", "c", "join"]);

        let Transition::Succeed {
            promote, mut skip, ..
        } = finish_routed(&[])
        else {
            panic!("expected success");
        };
        skip.sort();
        // Nothing chosen: both branches and the join they alone feed are skipped; c still runs.
        assert_eq!(skip, ["a", "a2", "b", "join"]);
        assert_eq!(promote, ["c"]);

        let Transition::Succeed { promote, skip, .. } = finish_routed(&["a", "b"]) else {
            panic!("expected success");
        };
        assert!(skip.is_empty());
        assert_eq!(promote.len(), 3);
    }

    #[test]
    fn a_choice_outside_allowed_next_fails_the_task_for_good() {
        match finish_routed(&["c", "nope"]) {
            Transition::Dead { failure, .. } => {
                assert_eq!(failure.kind, FailureKind::Fatal);
                assert!(
                    failure.message.contains("`c`, `nope`") && failure.message.contains("[a, b]"),
                    "{}",
                    failure.message
                );
            }
            other => panic!("expected dead, got {other:?}"),
        }
    }

    #[test]
    fn retryable_failure_with_attempts_left_retries_after_backoff() {
        let now = Utc::now();
        let policy = RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        };
        let t = on_attempt_finished(
            &chain(),
            1,
            &policy,
            2,
            Outcome::Failed(Failure::error("boom")),
            now,
            0.0,
        );
        match t {
            Transition::Retry {
                ready_at,
                failure,
                keep_place,
            } => {
                assert!(!keep_place, "an error waits its backoff in the queue");
                assert_eq!(ready_at - now, chrono::Duration::seconds(2));
                assert_eq!(failure.message, "boom");
            }
            other => panic!("expected retry, got {other:?}"),
        }
    }

    #[test]
    fn spent_attempts_or_fatal_errors_go_dead_and_cancel_everything_downstream() {
        let policy = RetryPolicy::default();
        let spent = on_attempt_finished(
            &chain(),
            0,
            &policy,
            3,
            Outcome::Failed(Failure::error("x")),
            Utc::now(),
            0.0,
        );
        assert!(matches!(&spent, Transition::Dead { cancel, .. } if cancel == &["b", "c"]));
        let fatal = on_attempt_finished(
            &chain(),
            1,
            &policy,
            1,
            Outcome::Failed(Failure::fatal("x")),
            Utc::now(),
            0.0,
        );
        assert!(matches!(&fatal, Transition::Dead { cancel, .. } if cancel == &["c"]));
    }

    #[test]
    fn retry_after_is_respected() {
        let now = Utc::now();
        let mut f = Failure::error("slow down");
        f.retry_after = Some(Duration::from_secs(60));
        let t = on_attempt_finished(
            &chain(),
            0,
            &RetryPolicy::default(),
            1,
            Outcome::Failed(f),
            now,
            0.0,
        );
        assert!(
            matches!(t, Transition::Retry { ready_at, .. } if ready_at - now >= chrono::Duration::seconds(60))
        );
    }

    #[test]
    fn a_throttled_attempt_waits_as_told_even_with_no_retries_left() {
        let now = Utc::now();
        let policy = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        let t = on_attempt_finished(
            &chain(),
            0,
            &policy,
            1,
            Outcome::Failed(Failure::throttled("429", Duration::from_millis(1500))),
            now,
            0.9,
        );
        assert!(
            matches!(t, Transition::Retry { ready_at, keep_place: false, .. } if ready_at - now == chrono::Duration::milliseconds(1500)),
            "{t:?}"
        );
        let spent = on_attempt_finished(
            &chain(),
            0,
            &policy,
            1,
            Outcome::Failed(Failure::error("500")),
            now,
            0.9,
        );
        assert!(matches!(spent, Transition::Dead { .. }));
    }

    #[test]
    fn a_lost_worker_is_retried_at_once_in_its_old_place() {
        let now = Utc::now();
        let lost = Failure::new(FailureKind::WorkerLost, "gone");
        let t = on_attempt_finished(
            &chain(),
            0,
            &RetryPolicy::default(),
            1,
            Outcome::Failed(lost),
            now,
            0.9,
        );
        assert!(
            matches!(t, Transition::Retry { ready_at, keep_place: true, .. } if ready_at == now)
        );
    }

    #[test]
    fn run_outcome() {
        assert_eq!(settled_run_state(0), RunState::Succeeded);
        assert_eq!(settled_run_state(2), RunState::Failed);
    }
}
