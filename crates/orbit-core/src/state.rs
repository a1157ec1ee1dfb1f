//! Run and task states. The same snake_case strings are used in the database, JSON and the CLI.
//! `docs/state-machine.md` draws the transitions.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The state of one run of a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RunState {
    /// Created, no task claimed yet. The first claim of one of its tasks moves it to `running`.
    Pending,
    /// At least one task was claimed. The commit that settles its last task moves it on.
    Running,
    /// Every task succeeded or was skipped by routing. Terminal.
    Succeeded,
    /// Every task settled and at least one is dead. Terminal; `orbit retry` re-opens it.
    Failed,
    /// Stopped by a user. Terminal.
    Cancelled,
}

/// The state of one task inside one run (a "step").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TaskState {
    /// Some upstream task has not succeeded yet. The commit that records the last upstream
    /// success promotes it to `ready`.
    Waiting,
    /// Claimable once its `ready_at` has passed (a failed attempt with attempts left comes back
    /// here with `ready_at` set to the end of its backoff). A claim moves it to `running`.
    Ready,
    /// Holds no worker and no process until a wake-up makes it `ready`: its time passing (a
    /// long `sleep`, a `wait`'s timeout), a signal (`wait`) or a decision (`approval`).
    Parked,
    /// Claimed by a worker holding a lease. Only that lease holder (matching `lease_epoch`) can
    /// finish it; the reaper takes it back when the lease expires.
    Running,
    /// Finished with an output. Terminal: never executed again for this run.
    Succeeded,
    /// Attempts spent or a non-retryable error: in the dead-letter queue. A retry re-queues it.
    Dead,
    /// Not on the path chosen by dynamic routing. Terminal.
    Skipped,
    /// Stopped by a user, or never started because an upstream task is dead. A retry of the run
    /// puts the latter back to `waiting`.
    Cancelled,
}

impl RunState {
    pub const ALL: [RunState; 5] = [
        RunState::Pending,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Waiting,
        TaskState::Ready,
        TaskState::Parked,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Dead,
        TaskState::Skipped,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "waiting",
            TaskState::Ready => "ready",
            TaskState::Parked => "parked",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Dead => "dead",
            TaskState::Skipped => "skipped",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Dead | TaskState::Skipped | TaskState::Cancelled
        )
    }
}

/// An unknown state string: the database or a user gave a name that is not a state.
#[derive(Debug, thiserror::Error)]
#[error("unknown state `{0}`; expected one of: {1}")]
pub struct UnknownState(String, &'static str);

impl FromStr for RunState {
    type Err = UnknownState;
    /// Also the seeds' words: `success` and `completed` for `succeeded`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = match s {
            "success" | "completed" => "succeeded",
            other => other,
        };
        RunState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.into(), "pending, running, succeeded, failed, cancelled"))
    }
}

impl FromStr for TaskState {
    type Err = UnknownState;
    /// Also the words of the queue statistics (the seeds'): `pending` for `ready`, `completed`
    /// and `success` for `succeeded`, `failed` and `dlq` for `dead`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = match s {
            "pending" => "ready",
            "completed" | "success" => "succeeded",
            "failed" | "dlq" => "dead",
            other => other,
        };
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                UnknownState(
                    s.into(),
                    "waiting, ready, parked, running, succeeded, dead, skipped, cancelled",
                )
            })
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>().ok(), Some(s));
            assert_eq!(serde_json::to_value(s).ok(), Some(s.as_str().into()));
        }
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().ok(), Some(s));
            assert_eq!(serde_json::to_value(s).ok(), Some(s.as_str().into()));
        }
        assert!("done".parse::<RunState>().is_err());
    }
}
