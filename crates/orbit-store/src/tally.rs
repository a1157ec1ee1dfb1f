//! What status pages count, kept by the commits instead of read from the rows: how many task
//! runs are in each state, and the attempts of each minute by outcome and duration. A commit
//! adds up its changes in a [`Tally`] and writes them in the same transaction, as its last
//! statement (on PostgreSQL, a hot row locked last is held only for the commit itself). So
//! queue status, `/metrics` and the worker figures cost the same with ten rows as with a
//! million, and a count never drifts from the rows it counts.

use crate::FinishedAttempt;
use chrono::{DateTime, Utc};
use orbit_core::TaskState;
use orbit_core::transition::Transition;
use std::collections::BTreeMap;

/// Histogram buckets per doubling of an attempt's duration: each bucket spans a factor of
/// 2^(1/4) ≈ 1.19, so a percentile read from them is within 10 % of the exact one.
const PER_DOUBLING: f64 = 4.0;

/// The bucket of a duration in microseconds (0 for anything under 1 µs).
pub fn bucket_of(micros: i64) -> i16 {
    if micros <= 1 {
        return 0;
    }
    ((micros as f64).log2() * PER_DOUBLING).floor() as i16
}

/// The middle of a bucket (geometric), in microseconds: what a percentile reports.
pub fn bucket_middle(bucket: i16) -> f64 {
    2f64.powf((f64::from(bucket) + 0.5) / PER_DOUBLING)
}

/// The attempts of one minute with one outcome and one duration bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    pub attempts: i64,
    pub sum_us: i64,
    pub max_us: i64,
}

impl Cell {
    pub fn add(&mut self, other: Cell) {
        self.attempts += other.attempts;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
    }
}

/// Where a [`Cell`] belongs: the minute (Unix seconds / 60), whether the attempts succeeded
/// (or reused a kept result), and the duration bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CellKey {
    pub minute: i64,
    pub ok: bool,
    pub bucket: i16,
}

/// The dead-letter queue's size, and the oldest ready task run's `ready_at` found by one index
/// seek per distinct priority on the claim index (a skip scan) instead of reading every ready
/// row. The same SQL on SQLite and PostgreSQL.
pub const DLQ_AND_OLDEST_READY: &str = "WITH RECURSIVE p (v) AS ( \
     SELECT MAX(priority) FROM task_runs WHERE state = 'ready' \
     UNION ALL \
     SELECT (SELECT MAX(priority) FROM task_runs WHERE state = 'ready' AND priority < p.v) FROM p WHERE p.v IS NOT NULL) \
     SELECT (SELECT COUNT(*) FROM dead_letters), \
     (SELECT MIN((SELECT MIN(ready_at) FROM task_runs WHERE state = 'ready' AND priority = p.v)) FROM p WHERE p.v IS NOT NULL)";

/// Task runs ready, running and parked by queue (one partial index each). The same SQL on
/// SQLite and PostgreSQL.
pub const DEPTH_BY_QUEUE: &str = "SELECT queue, 'ready', COUNT(*) FROM task_runs WHERE state = 'ready' GROUP BY queue \
     UNION ALL SELECT queue, 'running', COUNT(*) FROM task_runs WHERE state = 'running' GROUP BY queue \
     UNION ALL SELECT queue, 'parked', COUNT(*) FROM task_runs WHERE state = 'parked' GROUP BY queue";

/// [`DEPTH_BY_QUEUE`]'s rows, typed.
pub fn depths(rows: Vec<(String, String, i64)>) -> Vec<(String, TaskState, i64)> {
    rows.into_iter()
        .filter_map(|(queue, state, n)| Some((queue, state.parse().ok()?, n)))
        .collect()
}

/// Queue status from the per-state counters (`(state, n)` rows), the dead-letter queue's size
/// and the oldest ready task run.
pub fn queue_stats(
    counts: &[(String, i64)],
    dlq: i64,
    oldest_pending: Option<DateTime<Utc>>,
) -> crate::QueueStats {
    let n = |state: TaskState| {
        counts
            .iter()
            .find(|(s, _)| s == state.as_str())
            .map_or(0, |(_, n)| *n)
    };
    crate::QueueStats {
        pending: n(TaskState::Ready),
        running: n(TaskState::Running),
        waiting: n(TaskState::Waiting),
        parked: n(TaskState::Parked),
        completed: n(TaskState::Succeeded),
        failed: n(TaskState::Dead),
        dlq,
        oldest_pending,
    }
}

/// A stored cell: `(minute, ok, bucket, attempts, sum_us, max_us)`.
pub fn from_row(row: (i64, bool, i16, i64, i64, i64)) -> (CellKey, Cell) {
    let (minute, ok, bucket, attempts, sum_us, max_us) = row;
    (
        CellKey { minute, ok, bucket },
        Cell {
            attempts,
            sum_us,
            max_us,
        },
    )
}

/// One commit's changes to the counts.
#[derive(Debug, Default)]
pub struct Tally {
    states: [i64; TaskState::ALL.len()],
    cells: BTreeMap<CellKey, Cell>,
}

fn slot(state: TaskState) -> usize {
    TaskState::ALL
        .iter()
        .position(|s| *s == state)
        .unwrap_or_default()
}

impl Tally {
    /// `n` task runs created in `state`.
    pub fn entered(&mut self, state: TaskState, n: i64) {
        self.states[slot(state)] += n;
    }

    /// `n` task runs in `state` deleted.
    pub fn left(&mut self, state: TaskState, n: i64) {
        self.states[slot(state)] -= n;
    }

    pub fn moved(&mut self, from: TaskState, to: TaskState, n: i64) {
        if from != to {
            self.left(from, n);
            self.entered(to, n);
        }
    }

    /// A finished attempt the fence accepted: its task run leaves `running`.
    pub fn finished(&mut self, f: &FinishedAttempt) {
        let to = match f.transition {
            Transition::Succeed { .. } => TaskState::Succeeded,
            Transition::Retry { .. } => TaskState::Ready,
            Transition::Dead { .. } => TaskState::Dead,
            Transition::Expand { .. } => TaskState::Waiting,
            Transition::Park(_) => TaskState::Parked,
        };
        self.moved(TaskState::Running, to, 1);
        self.attempt(
            f.transition.failure().is_none(),
            f.started_at,
            f.finished_at,
        );
    }

    /// One finished attempt.
    pub fn attempt(&mut self, ok: bool, started: DateTime<Utc>, finished: DateTime<Utc>) {
        let us = (finished - started).num_microseconds().unwrap_or(0).max(0);
        let key = CellKey {
            minute: finished.timestamp().div_euclid(60),
            ok,
            bucket: bucket_of(us),
        };
        self.cells.entry(key).or_default().add(Cell {
            attempts: 1,
            sum_us: us,
            max_us: us,
        });
    }

    /// The states whose count changed, with the change, in `TaskState::ALL` order (the order
    /// every backend locks counter rows in).
    pub fn states(&self) -> impl Iterator<Item = (TaskState, i64)> + '_ {
        TaskState::ALL
            .iter()
            .zip(self.states)
            .filter(|(_, n)| *n != 0)
            .map(|(s, n)| (*s, n))
    }

    /// The attempt cells, in key order.
    pub fn cells(&self) -> impl Iterator<Item = (&CellKey, &Cell)> {
        self.cells.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty() && self.states().next().is_none()
    }
}

/// Figures over a set of cells: counts, mean, percentiles from the histogram, max.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    buckets: BTreeMap<i16, i64>,
    pub attempts: i64,
    pub succeeded: i64,
    pub sum_us: i64,
    pub max_us: i64,
}

impl Summary {
    pub fn add(&mut self, key: &CellKey, cell: &Cell) {
        *self.buckets.entry(key.bucket).or_default() += cell.attempts;
        self.attempts += cell.attempts;
        if key.ok {
            self.succeeded += cell.attempts;
        }
        self.sum_us += cell.sum_us;
        self.max_us = self.max_us.max(cell.max_us);
    }

    pub fn mean_us(&self) -> f64 {
        if self.attempts == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.attempts as f64
        }
    }

    /// The `p` quantile (0..1) in microseconds: the middle of the bucket it falls in, never
    /// above the largest duration seen.
    pub fn quantile_us(&self, p: f64) -> f64 {
        if self.attempts == 0 {
            return 0.0;
        }
        let rank = ((self.attempts as f64 - 1.0) * p).round() as i64;
        let mut seen = 0;
        for (bucket, n) in &self.buckets {
            seen += n;
            if seen > rank {
                return bucket_middle(*bucket).min(self.max_us as f64);
            }
        }
        self.max_us as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn moves_cancel_out_and_come_in_state_order() {
        let mut t = Tally::default();
        t.entered(TaskState::Ready, 3);
        t.moved(TaskState::Ready, TaskState::Running, 2);
        t.moved(TaskState::Running, TaskState::Succeeded, 2);
        t.moved(TaskState::Dead, TaskState::Dead, 5);
        assert_eq!(
            t.states().collect::<Vec<_>>(),
            [(TaskState::Ready, 1), (TaskState::Succeeded, 2)]
        );
    }

    #[test]
    fn quantiles_land_within_a_bucket_of_the_exact_value() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut t = Tally::default();
        // 1 ms .. 100 ms, one attempt each.
        for ms in 1..=100 {
            t.attempt(ms % 10 != 0, t0, t0 + Duration::milliseconds(ms));
        }
        let mut s = Summary::default();
        for (k, c) in t.cells() {
            s.add(k, c);
        }
        assert_eq!((s.attempts, s.succeeded), (100, 90));
        assert_eq!(s.max_us, 100_000);
        assert!((s.mean_us() - 50_500.0).abs() < 1.0, "{}", s.mean_us());
        let p50 = s.quantile_us(0.5) / 1000.0;
        let p95 = s.quantile_us(0.95) / 1000.0;
        assert!((45.0..=56.0).contains(&p50), "p50 {p50}");
        assert!((86.0..=100.0).contains(&p95), "p95 {p95}");
    }

    #[test]
    fn buckets_grow_by_a_quarter_doubling() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1024), 40);
        assert_eq!(bucket_of(2048), 44);
        assert!(bucket_middle(40) > 1024.0 && bucket_middle(40) < 1218.0);
    }
}
