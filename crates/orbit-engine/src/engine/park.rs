//! Tasks that wait (`sleep`, `wait`, `approval`): an attempt parks its task run in the store,
//! holding no worker and no process, or finishes with what woke it.

use chrono::{DateTime, Utc};
use orbit_core::params::{OnTimeout, Params};
use orbit_core::template::{self, Context};
use orbit_core::transition::{Failure, Park, ParkKind};
use orbit_core::{TaskDef, TaskType};
use serde_json::{Value, json};
use std::time::Duration;

/// Sleeps shorter than this run inside their attempt; longer ones park.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

pub(super) enum Step {
    Park(Park),
    /// Finished with this result; `skip_next`: the tasks only it leads to are skipped (a timeout
    /// with `on_timeout: skip`).
    Done {
        result: Result<Value, Failure>,
        skip_next: bool,
    },
    /// A short sleep: its attempt runs it.
    InProcess,
}

impl Step {
    fn done(result: Result<Value, Failure>) -> Step {
        Step::Done {
            result,
            skip_next: false,
        }
    }
}

/// Whether tasks of this type park.
pub(super) fn parks(task_type: TaskType) -> bool {
    matches!(
        task_type,
        TaskType::Sleep | TaskType::Wait | TaskType::Approval
    )
}

/// What this attempt of waiting task `def` does, woken by `wake` (if it parked before).
pub(super) fn step(
    def: &TaskDef,
    ctx: &Context<'_>,
    wake: Option<&Value>,
    now: DateTime<Utc>,
) -> Step {
    let rendered = match template::render_params(&def.params, ctx) {
        Ok(r) => r,
        Err(e) => return Step::done(Err(Failure::fatal(e))),
    };
    let params = match Params::from_json(def.task_type, &rendered, true) {
        Ok(p) => p,
        Err(e) => {
            return Step::done(Err(Failure::fatal(format!(
                "parameters after rendering: {e}"
            ))));
        }
    };
    let by = wake.and_then(|w| w.get("by")).and_then(Value::as_str);
    let deadline = || {
        def.timeout.map(|t| {
            now.checked_add_signed(chrono::Duration::from_std(t).unwrap_or(chrono::Duration::MAX))
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        })
    };
    match params {
        Params::Sleep(p) => {
            if by.is_some() {
                return Step::done(Ok(Value::Null));
            }
            let end = match p.end(now) {
                Ok(end) => end,
                Err(e) => return Step::done(Err(Failure::fatal(e))),
            };
            let left = (end - now).to_std().unwrap_or_default();
            // A timeout shorter than the sleep must still fire: such a sleep runs here.
            if p.hold || left < PARK_AFTER || def.timeout.is_some_and(|t| t < left) {
                return Step::InProcess;
            }
            Step::Park(Park {
                kind: ParkKind::Sleep,
                until: Some(end),
                event: None,
                note: None,
            })
        }
        Params::Wait(p) => match by {
            Some("signal") => Step::done(Ok(wake
                .and_then(|w| w.get("payload"))
                .cloned()
                .unwrap_or(Value::Null))),
            Some(_) => timed_out(
                p.on_timeout,
                format!("no signal `{}` came in time", p.event),
                def,
            ),
            None => Step::Park(Park {
                kind: ParkKind::Signal,
                until: deadline(),
                event: Some(p.event),
                note: None,
            }),
        },
        Params::Approval(p) => match by {
            Some("decision") => {
                let w = wake.cloned().unwrap_or_default();
                let approved = w.get("approved").and_then(Value::as_bool) == Some(true);
                let who = w
                    .get("decidedBy")
                    .and_then(Value::as_str)
                    .unwrap_or("someone");
                let comment = w.get("comment").and_then(Value::as_str);
                let mut output = json!({
                    "approved": approved,
                    "decidedBy": who,
                    "comment": comment,
                    "at": w.get("at"),
                });
                if def.allowed_next.is_empty() {
                    if !approved {
                        return Step::done(Err(Failure::fatal(match comment {
                            Some(c) => format!("rejected by {who}: {c}"),
                            None => format!("rejected by {who}"),
                        })));
                    }
                } else {
                    let chosen = if approved {
                        &p.on_approve
                    } else {
                        &p.on_reject
                    };
                    let other = if approved {
                        &p.on_reject
                    } else {
                        &p.on_approve
                    };
                    let run_next = match (chosen, other) {
                        (Some(names), _) => names.to_vec(),
                        // Only the other branch named: the rest of `allowed_next` is this one.
                        (None, Some(other)) => {
                            let other = other.to_vec();
                            def.allowed_next
                                .iter()
                                .filter(|n| !other.contains(n))
                                .cloned()
                                .collect()
                        }
                        (None, None) if approved => def.allowed_next.clone(),
                        (None, None) => Vec::new(),
                    };
                    output["run_next"] = json!(run_next);
                }
                Step::done(Ok(output))
            }
            Some(_) => timed_out(p.on_timeout, "no decision came in time".into(), def),
            None => Step::Park(Park {
                kind: ParkKind::Approval,
                until: deadline(),
                event: None,
                note: Some(
                    p.message
                        .unwrap_or_else(|| format!("Approve `{}`?", def.name)),
                ),
            }),
        },
        _ => Step::InProcess,
    }
}

fn timed_out(on_timeout: OnTimeout, message: String, def: &TaskDef) -> Step {
    let after = def
        .timeout
        .map(orbit_core::duration::display)
        .unwrap_or_default();
    match on_timeout {
        OnTimeout::Fail => Step::done(Err(Failure::fatal(format!(
            "timed out after {after}: {message}"
        )))),
        OnTimeout::Skip => Step::Done {
            result: Ok(Value::Null),
            skip_next: true,
        },
    }
}
