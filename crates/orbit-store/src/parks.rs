//! Parked task runs' wake-ups, written the same way by every backend: what woke a task run is
//! kept in its `wake` column as JSON and handed to the attempt that follows.

use crate::Decision;
use crate::plan::{Event, EventKind};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// The wake-up of a task run whose time came.
pub const TIME_WAKE: &str = r#"{"by":"time"}"#;

/// Due task runs made ready per statement: a claim round wakes at most so many, and claims
/// again at once when more are due.
pub const WAKE_SLICE: i64 = 5000;

/// How long a signal no wait took is kept when its sender does not say.
pub const DEFAULT_SIGNAL_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The wake-up of a wait that took signal `name` with `payload`.
pub fn signal_wake(name: &str, payload: &Value) -> Value {
    json!({"by": "signal", "signal": name, "payload": payload})
}

/// The wake-up of a wait that took a kept signal, its payload as SQLite stores it (text).
pub fn signal_wake_text(name: &str, payload: &str) -> String {
    let payload: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
    signal_wake(name, &payload).to_string()
}

/// The events of a signal delivered to `delivered` (run, task).
pub fn delivered_events(name: &str, delivered: &[(uuid::Uuid, String)]) -> Vec<Event> {
    delivered
        .iter()
        .map(|(run, task)| {
            Event::task(
                *run,
                task,
                EventKind::TaskSignalled,
                Some(json!({"signal": name})),
            )
        })
        .collect()
}

/// The wake-up of an approval that got `decision` at `at`.
pub fn decision_wake(decision: &Decision, at: DateTime<Utc>) -> Value {
    json!({
        "by": "decision",
        "approved": decision.approved,
        "decidedBy": decision.by,
        "comment": decision.comment,
        "at": at,
    })
}
