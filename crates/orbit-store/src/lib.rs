//! The store: where every pipeline, run, task run, attempt and event is kept.
//!
//! [`Store`] speaks in domain verbs, grouped by role ([`Registry`], [`Runs`], [`Claims`],
//! [`Queues`], [`Events`], [`Nodes`], [`Retention`]) so each caller depends on what it uses. Each verb is one short transaction; every write that
//! follows a claim is fenced by the task run's `lease_epoch`, so a worker that lost its lease can
//! change nothing. Decisions (what a finished attempt does) are made by `orbit-core`'s state
//! machine, and what a batch of them writes (skips, cancels, promotions, kept results, dead
//! letters, run counters and settling, every event) by [`plan`], once for every backend; a
//! backend only executes the plan with its own statements, atomically:
//!
//! - [`Runs::create_run`] inserts a run and all its task runs; tasks that need nothing are
//!   `ready` at once.
//! - [`Claims::finish_and_claim`] is the engine's one write per round: it records a batch of
//!   finished attempts (their outputs, the downstream tasks they promote, the runs they settle)
//!   and claims the next ready tasks, all in one commit. Grouping many state changes into one
//!   durable commit is where throughput comes from.
//! - [`Claims::extend_leases`] is the heartbeat.
//!
//! Backends: `orbit-store-sqlite` (embedded default) and `orbit-store-postgres` (many machines).
//! The `testkit` feature holds the conformance suite every backend must pass, and
//! [`faults::Faulty`], a wrapper that makes chosen verbs fail or stall.
//!
//! This crate depends on `orbit-core` only: never on a backend, the engine or the server.

pub mod alarm;
#[cfg(feature = "testkit")]
pub mod faults;
pub mod keys;
mod model;
pub mod parks;
pub mod plan;
pub mod rates;
mod roles;
pub mod tally;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use model::*;
pub use roles::*;
pub use tally::{Cell, CellKey};

use uuid::Uuid;

/// Splits a batch of finished attempts by the fence: those whose `(task run, lease epoch)` the
/// store `accepted` are kept, the first of each only (the same attempt reported twice in one
/// batch counts once); the ids of the others are refused as lease-lost.
pub fn fenced<'a>(
    finished: &'a [FinishedAttempt],
    accepted: &std::collections::HashSet<(Uuid, i64)>,
) -> (Vec<&'a FinishedAttempt>, Vec<Uuid>) {
    let mut seen = std::collections::HashSet::with_capacity(finished.len());
    let mut kept = Vec::with_capacity(finished.len());
    let mut lost = Vec::new();
    for f in finished {
        let key = (f.task.id, f.task.lease_epoch);
        if accepted.contains(&key) && seen.insert(key) {
            kept.push(f);
        } else {
            lost.push(f.task.id);
        }
    }
    (kept, lost)
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What can go wrong in a store, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request does not fit the current state (an ambiguous id prefix, a lost lease).
    #[error("{0}")]
    Conflict(String),
    /// The database could not be reached or refused the operation; retrying may help.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be read back (a bad state string, invalid JSON).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The request cannot be carried out as given (a run input a concurrency key cannot be
    /// rendered from).
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// A stable code for APIs and exit statuses.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::NotFound(_) => "not_found",
            StoreError::Conflict(_) => "conflict",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::Invalid(_) => "invalid",
        }
    }
}
