//! W3C trace context for what tasks call: one trace per run (its id is the run id's 128 bits),
//! one span per attempt (derived from the task run and the attempt number), so a program, an
//! HTTP service or an SDK handler can continue the run's trace (`TRACEPARENT`, the
//! `traceparent` header, an assignment's `traceparent`).

use uuid::Uuid;

/// The `traceparent` of attempt `attempt` of task run `task_run` of run `run` (sampled).
pub fn traceparent(run: Uuid, task_run: Uuid, attempt: u32) -> String {
    format!(
        "00-{}-{:016x}-01",
        run.simple(),
        span_id(task_run, Span::Attempt(attempt))
    )
}

/// The spans of a run's trace. Their ids are derived from what they stand for, not drawn:
/// whichever process records a span (the one that committed an attempt, the one that saw the
/// run settle, after any number of restarts) names the same parent as the others.
#[derive(Clone, Copy, Debug)]
pub enum Span {
    /// The run itself, the trace's root (of the run's id).
    Run,
    /// From the run's creation to its start (of the run's id).
    Trigger,
    /// A task run's wait in the queue before attempt `n` (of the task run's id).
    Queue(u32),
    /// Attempt `n` (of the task run's id): the span tasks continue.
    Attempt(u32),
    /// The commit that recorded attempt `n`'s end (of the task run's id).
    Commit(u32),
}

/// The span id of `span` of the run or task run `id`; never zero (invalid in W3C).
pub fn span_id(id: Uuid, span: Span) -> u64 {
    let (hi, lo) = id.as_u64_pair();
    let salt = match span {
        Span::Attempt(n) => u64::from(n).rotate_left(32),
        Span::Run => 0x5255_4e00_0000_0001,
        Span::Trigger => 0x5452_4700_0000_0002,
        Span::Queue(n) => 0x5155_4500_0000_0000 ^ u64::from(n),
        Span::Commit(n) => 0x434f_4d00_0000_0000 ^ u64::from(n),
    };
    (hi ^ lo ^ salt).max(1)
}

/// The trace id and parent span id of a W3C `traceparent` (version 00), if it is one.
pub fn parse(traceparent: &str) -> Option<(u128, u64)> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok()?;
    let span = u64::from_str_radix(span, 16).ok()?;
    (trace != 0 && span != 0).then_some((trace, span))
}

#[cfg(test)]
mod tests {
    use super::{Span, parse, span_id, traceparent};
    use uuid::Uuid;

    #[test]
    fn one_trace_per_run_one_span_per_attempt() {
        let run = Uuid::now_v7();
        let task = Uuid::now_v7();
        let a = traceparent(run, task, 1);
        let b = traceparent(run, task, 2);
        assert_eq!(a.len(), 55, "{a}");
        assert!(a.starts_with(&format!("00-{}-", run.simple())));
        assert!(a.ends_with("-01"));
        assert_ne!(a, b, "each attempt is its own span");
        assert_eq!(a[..36], b[..36], "in the same trace");
        assert_eq!(a, traceparent(run, task, 1), "stable");
        let (trace, span) = parse(&a).expect("parses");
        assert_eq!(trace, run.as_u128());
        assert_eq!(span, span_id(task, Span::Attempt(1)));
    }

    #[test]
    fn a_runs_spans_differ() {
        let id = Uuid::now_v7();
        let ids: std::collections::HashSet<u64> = [
            Span::Run,
            Span::Trigger,
            Span::Queue(1),
            Span::Attempt(1),
            Span::Commit(1),
            Span::Queue(2),
            Span::Attempt(2),
        ]
        .into_iter()
        .map(|s| span_id(id, s))
        .collect();
        assert_eq!(ids.len(), 7);
    }

    #[test]
    fn only_well_formed_traceparents_parse() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-zzad6b7169203331-01",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert!(parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_some());
    }
}
