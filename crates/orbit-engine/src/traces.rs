//! A run's trace, for OpenTelemetry: its root span (creation to end), the trigger (creation to
//! its first claim), and per attempt its wait in the queue, the attempt and the commit that recorded its
//! end. Spans are written from store facts when they are final (a claim, a commit, a run
//! settling), by whichever process saw them, with ids derived from what they stand for
//! ([`orbit_core::trace::span_id`]): a run that outlives its engine, or whose attempts ran in
//! SDK workers, still forms one tree. The binary installs a sink that exports them; until it
//! does, nothing here costs more than a load.

use chrono::{DateTime, Utc};
use orbit_core::RunState;
use orbit_core::trace::{Span, span_id};
use orbit_core::transition::Transition;
use orbit_store::plan::AttemptOutcome;
use orbit_store::{ClaimedTask, FinishedAttempt, Store};
use std::borrow::Cow;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, SystemTime};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// One finished span.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    pub trace: u128,
    pub id: u64,
    pub parent: Option<u64>,
    pub name: Cow<'static, str>,
    /// A server span (an HTTP request) rather than an internal one.
    pub server: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attr)>,
    /// The span failed, with this message.
    pub error: Option<String>,
    /// A span of another trace this one follows from (a sub-run's parent run).
    pub link: Option<(u128, u64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
}

type Sink = Box<dyn Fn(SpanRecord) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();

/// The reads of settled runs still under way, for [`drain`].
static READS: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// Sends every span from now on to `sink` (once per process; later calls are ignored).
pub fn install(sink: impl Fn(SpanRecord) + Send + Sync + 'static) {
    let _ = SINK.set(Box::new(sink));
}

/// Whether spans are recorded at all: what they are built from is not gathered otherwise.
pub fn enabled() -> bool {
    SINK.get().is_some()
}

/// Waits (up to `within`) for the spans of runs settled so far to be recorded: before a
/// command that has just finished a run exits.
pub async fn drain(within: Duration) {
    READS.close();
    let _ = tokio::time::timeout(within, READS.wait()).await;
}

/// Records `span`, if a sink is installed.
pub fn record(span: SpanRecord) {
    if let Some(sink) = SINK.get() {
        sink(span);
    }
}

fn str(v: impl Into<String>) -> Attr {
    Attr::Str(v.into())
}

fn internal(
    run: Uuid,
    id: u64,
    parent: Option<u64>,
    name: String,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> SpanRecord {
    SpanRecord {
        trace: run.as_u128(),
        id,
        parent,
        name: name.into(),
        server: false,
        start: start.into(),
        end: end.max(start).into(),
        // The run's id is the trace's: only the root repeats it, for searches by attribute.
        attributes: Vec::with_capacity(4),
        error: None,
        link: None,
    }
}

/// Task runs just claimed: each one's wait in the queue, from ready to claimed.
pub(crate) fn claimed(tasks: &[ClaimedTask]) {
    if !enabled() {
        return;
    }
    for t in tasks {
        let Some(ready) = t.ready_at else { continue };
        let mut span = internal(
            t.run_id,
            span_id(t.id, Span::Queue(t.attempt)),
            Some(span_id(t.run_id, Span::Run)),
            format!("queue {}", t.task_name),
            (ready, t.claimed_at),
        );
        span.attributes.extend([
            ("orbit.task", str(&t.task_name)),
            ("orbit.attempt", Attr::Int(t.attempt.into())),
        ]);
        record(span);
    }
}

/// Attempts a commit recorded (those in `lease_lost` were refused: no span), each with the
/// commit as its child.
pub(crate) fn committed(
    finished: &[FinishedAttempt],
    lease_lost: &[Uuid],
    commit: (DateTime<Utc>, DateTime<Utc>),
) {
    if !enabled() {
        return;
    }
    for f in finished {
        let t = &f.task;
        if lease_lost.contains(&t.id) {
            continue;
        }
        let attempt = span_id(t.id, Span::Attempt(t.attempt));
        let mut span = internal(
            t.run_id,
            attempt,
            Some(span_id(t.run_id, Span::Run)),
            format!("attempt {}", t.task_name),
            (f.started_at, f.finished_at),
        );
        span.attributes.extend([
            ("orbit.task", str(&t.task_name)),
            ("orbit.attempt", Attr::Int(t.attempt.into())),
            ("orbit.outcome", str(AttemptOutcome::of(f).as_str())),
            ("orbit.worker", str(&f.worker)),
        ]);
        span.error = match &f.transition {
            Transition::Retry { failure, .. } | Transition::Dead { failure, .. } => {
                Some(failure.message.clone())
            }
            _ => None,
        };
        record(span);
        let mut commit = internal(
            t.run_id,
            span_id(t.id, Span::Commit(t.attempt)),
            Some(attempt),
            "commit".to_owned(),
            commit,
        );
        commit
            .attributes
            .push(("orbit.commit.attempts", Attr::Int(finished.len() as i64)));
        record(commit);
    }
}

/// Runs a commit settled: their root spans and triggers, from the store's record of each
/// (read in the background: the commit's callers do not wait for telemetry).
pub(crate) fn settled(store: &Arc<dyn Store>, runs: &[(Uuid, RunState)]) {
    if !enabled() || runs.is_empty() {
        return;
    }
    let store = store.clone();
    let runs: Vec<Uuid> = runs.iter().map(|(id, _)| *id).collect();
    READS.spawn(async move {
        for id in runs {
            match store.run(id).await {
                Ok(run) => run_spans(&run),
                Err(e) => tracing::debug!(run = %id, error = %e, "no trace for a settled run"),
            }
        }
    });
}

/// A run settled outside a commit (cancelled): its root span and trigger.
pub(crate) fn run_settled(run: &orbit_store::RunRecord) {
    if enabled() {
        run_spans(run);
    }
}

fn run_spans(run: &orbit_store::RunRecord) {
    let root = span_id(run.id, Span::Run);
    let end = run.finished_at.unwrap_or_else(Utc::now);
    let mut span = internal(
        run.id,
        root,
        None,
        format!("run {}", run.pipeline_name),
        (run.created_at, end),
    );
    span.attributes.extend([
        ("orbit.run_id", str(run.id.to_string())),
        ("orbit.pipeline", str(&run.pipeline_name)),
        ("orbit.pipeline_version", Attr::Int(run.pipeline_version)),
        ("orbit.state", str(run.state.as_str())),
        (
            "orbit.triggered_by",
            str(run.triggered_by.as_deref().unwrap_or("api")),
        ),
    ]);
    if run.state == RunState::Failed {
        span.error = Some(format!("{} task(s) dead", run.tasks_dead));
    }
    span.link = run
        .parent_run_id
        .map(|p| (p.as_u128(), span_id(p, Span::Run)));
    record(span);
    let mut trigger = internal(
        run.id,
        span_id(run.id, Span::Trigger),
        Some(root),
        "trigger".to_owned(),
        (run.created_at, run.started_at.unwrap_or(run.created_at)),
    );
    trigger.attributes.push((
        "orbit.triggered_by",
        str(run.triggered_by.as_deref().unwrap_or("api")),
    ));
    record(trigger);
}
