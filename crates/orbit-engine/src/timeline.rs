//! A run's timeline: for each task, its time in the queue, its attempts, backoffs, parks and
//! children on one time axis, from the store's own records; and the critical path, the chain
//! of tasks that decided when the run ended.

use chrono::{DateTime, Utc};
use orbit_core::{Pipeline, TaskState};
use orbit_store::{AttemptRecord, RunRecord, TaskRunRecord};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Timeline {
    pub start: DateTime<Utc>,
    /// The run's end, or now while it runs.
    pub end: DateTime<Utc>,
    pub lanes: Vec<Lane>,
}

/// One task's row.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Lane {
    pub task: String,
    pub state: TaskState,
    /// On the critical path.
    pub critical: bool,
    /// Taken over from the run this one re-runs.
    pub reused: bool,
    pub segments: Vec<Segment>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Segment {
    /// `queued` (ready, not yet claimed), `running` (an attempt), `backoff` (after a failed
    /// attempt), `parked` (a sleep, a wait, an approval), `children` (a `for_each` task's).
    pub kind: &'static str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// A finished attempt's outcome; `None` while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// The timeline of `run` (of `pipeline`) from its task runs and attempts, at `now`.
pub fn build(
    run: &RunRecord,
    pipeline: &Pipeline,
    tasks: &[TaskRunRecord],
    attempts: &[AttemptRecord],
    now: DateTime<Utc>,
) -> Timeline {
    let end = run.finished_at.unwrap_or(now);
    let by_name: HashMap<&str, &TaskRunRecord> =
        tasks.iter().map(|t| (t.task_name.as_str(), t)).collect();
    let mut lanes = Vec::with_capacity(pipeline.tasks.len());
    let mut ends: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for def in &pipeline.tasks {
        let Some(tr) = by_name.get(def.name.as_str()) else {
            continue;
        };
        let mine: Vec<&AttemptRecord> =
            attempts.iter().filter(|a| a.task_run_id == tr.id).collect();
        // It could start once its last upstream finished (the run's creation for a root).
        let ready = def
            .needs
            .iter()
            .filter_map(|n| ends.get(n.as_str()).copied())
            .max()
            .unwrap_or(run.created_at);
        let segments = segments_of(tr, &mine, ready, end);
        let finish = tr
            .finished_at
            .or_else(|| segments.last().map(|s| s.to))
            .unwrap_or(ready);
        ends.insert(&def.name, finish);
        lanes.push(Lane {
            task: def.name.clone(),
            state: tr.state,
            critical: false,
            reused: tr.origin.is_some(),
            segments,
        });
    }
    mark_critical(pipeline, &mut lanes, &ends);
    Timeline {
        start: run.created_at,
        end,
        lanes,
    }
}

fn segments_of(
    tr: &TaskRunRecord,
    attempts: &[&AttemptRecord],
    ready: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Vec<Segment> {
    let mut out = Vec::new();
    if tr.origin.is_some() {
        return out;
    }
    let gap =
        |kind: &'static str, from: DateTime<Utc>, to: DateTime<Utc>, out: &mut Vec<Segment>| {
            if to > from {
                out.push(Segment {
                    kind,
                    from,
                    to,
                    attempt: None,
                    outcome: None,
                });
            }
        };
    let mut at = ready;
    let mut next_gap = "queued";
    for a in attempts {
        gap(next_gap, at, a.started_at, &mut out);
        out.push(Segment {
            kind: "running",
            from: a.started_at,
            to: a.finished_at.max(a.started_at),
            attempt: Some(a.attempt),
            outcome: Some(a.outcome.clone()),
        });
        at = a.finished_at;
        next_gap = match a.outcome.as_str() {
            "parked" => "parked",
            "expanded" => "children",
            "succeeded" | "reused" => "queued",
            _ => "backoff",
        };
    }
    match tr.state {
        TaskState::Running => {
            let from = tr.claimed_at.unwrap_or(at).max(at);
            gap(next_gap, at, from, &mut out);
            out.push(Segment {
                kind: "running",
                from,
                to: end.max(from),
                attempt: Some(tr.attempt),
                outcome: None,
            });
        }
        TaskState::Parked => gap("parked", at, end, &mut out),
        TaskState::Ready => gap(next_gap, at, end, &mut out),
        TaskState::Waiting if next_gap == "children" => gap("children", at, end, &mut out),
        _ => {}
    }
    out
}

/// Marks the chain that ended last: from the task that finished last, back through the
/// upstream that finished last, to a root (or to a task a re-run kept).
fn mark_critical(pipeline: &Pipeline, lanes: &mut [Lane], ends: &HashMap<&str, DateTime<Utc>>) {
    let mut at = lanes
        .iter()
        .filter(|l| !l.segments.is_empty())
        .max_by_key(|l| ends.get(l.task.as_str()))
        .map(|l| l.task.clone());
    while let Some(name) = at {
        // A task taken over from an earlier run took no time in this one: the path ends there.
        let Some(lane) = lanes.iter_mut().find(|l| l.task == name && !l.reused) else {
            break;
        };
        lane.critical = true;
        at = pipeline
            .task(&name)
            .and_then(|d| {
                d.needs
                    .iter()
                    .filter(|n| ends.contains_key(n.as_str()))
                    .max_by_key(|n| ends.get(n.as_str()))
            })
            .cloned();
    }
}
