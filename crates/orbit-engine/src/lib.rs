//! Orbit's runtime: it claims ready task runs from the store, executes them, and records what
//! happened.
//!
//! One loop, the [`Engine`], owns all writes of a process. Each round it hands the store every
//! attempt that finished since the last round together with a claim for as many tasks as it has
//! free slots, and the store applies both in ONE commit ([`orbit_store::Store::finish_and_claim`]).
//! That is group commit: under load, dozens of state changes share one fsync, and a chain of
//! tasks moves one step per commit. Claimed tasks run as tokio tasks ([`executor`]); when one
//! ends it computes its transition with `orbit-core`'s state machine and sends it back to the
//! loop. The loop sleeps until a task finishes, a lease needs renewing, a retry's backoff ends,
//! or (as a fallback for work created elsewhere) the poll interval passes.
//!
//! The node's other background work are [`roles`] (heartbeat, reaper, cron, retention, push),
//! each a `tick(now)` round and a `run(shutdown)` loop. This crate depends on `orbit-core` and
//! `orbit-store` (the trait, never a backend: the caller picks one), never on the server or CLI.

pub mod clock;
mod commit_queue;
mod committed;
pub mod dispatch;
mod engine;
pub mod executor;
mod log;
pub mod recovery;
pub mod roles;
pub mod runs;
pub mod storage;
pub mod subruns;
pub mod telemetry;
pub mod timeline;
pub mod traces;
pub mod waiting;
pub mod waits;
pub mod why;

pub use engine::{Engine, EngineConfig, EngineError, EngineEvent, Processed, Recorded, Replayed};
pub use log::{LiveLine, LiveLogs, LogBuffer};
