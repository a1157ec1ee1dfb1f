//! W3C trace context for what tasks call: one trace per run (its id is the run id's 128 bits),
//! one span per attempt (derived from the task run and the attempt number), so a program, an
//! HTTP service or an SDK handler can continue the run's trace (`TRACEPARENT`, the
//! `traceparent` header, an assignment's `traceparent`).

use uuid::Uuid;

/// The `traceparent` of attempt `attempt` of task run `task_run` of run `run` (sampled).
pub fn traceparent(run: Uuid, task_run: Uuid, attempt: u32) -> String {
    let (hi, lo) = task_run.as_u64_pair();
    // A span id of zeros is invalid in the W3C format.
    let span = (hi ^ lo ^ u64::from(attempt).rotate_left(32)).max(1);
    format!("00-{}-{span:016x}-01", run.simple())
}

#[cfg(test)]
mod tests {
    use super::traceparent;
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
    }
}
