//! Orbit's pure domain.
//!
//! Everything here is plain data and plain functions: no I/O, no async runtime, no database.
//!
//! - [`pipeline`] is the validated model of a pipeline (tasks, parameters, policies), and
//!   [`file`] turns a YAML document into it, reporting every problem with its line.
//! - [`dag`] orders the tasks (execution layers, cycle detection, downstream reachability).
//! - [`state`] names the run and task states; [`transition`] decides what a finished attempt
//!   does to its task and its run, returning the effects for a store to apply in one transaction.
//! - [`object`] is the reference a store keeps for a value held in object storage.
//! - [`protocol`] holds the worker protocol's messages, shared by the server and the SDK.
//! - [`echo`] repeats user input in messages safely; [`retry`] is the backoff math; [`template`] renders task parameters over the run context.
//!
//! The engine drives, the store persists, this crate decides.
//!
//! It depends on no other Orbit crate and does no I/O: never a database, a network or a runtime.

pub mod dag;
pub mod duration;
pub mod echo;
pub mod file;
pub mod id;
pub mod object;
pub mod params;
pub mod pipeline;
pub mod protocol;
pub mod retry;
pub mod state;
pub mod template;
pub mod trace;
pub mod transition;

pub use pipeline::{Pipeline, TaskDef, TaskType};
pub use state::{RunState, TaskState};
