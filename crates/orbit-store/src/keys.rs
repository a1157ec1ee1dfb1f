//! Concurrency keys' usage, read the same way on SQLite and PostgreSQL.

use crate::KeyUsage;

/// The usage of the keys in `keys` (a relation with a `key` column, aliased `k`), by key: the
/// task runs and runs of each running now and its named limit, the columns [`usage`] reads.
/// Every named limit's: `usage_sql("concurrency_limits k")`.
pub fn usage_sql(keys: &str) -> String {
    format!(
        "SELECT k.key, \
         (SELECT COUNT(*) FROM task_runs r WHERE r.state = 'running' AND r.concurrency_key = k.key), \
         (SELECT COUNT(*) FROM runs r WHERE r.state = 'running' AND r.concurrency_key = k.key), \
         l.max_running FROM {keys} LEFT JOIN concurrency_limits l ON l.key = k.key ORDER BY k.key"
    )
}

/// One key's row: the key, its task runs running, its runs running, its named limit.
pub fn usage(key: String, running: i64, runs: i64, limit: Option<i64>) -> KeyUsage {
    KeyUsage {
        key,
        running: u64::try_from(running).unwrap_or(0),
        runs_running: u64::try_from(runs).unwrap_or(0),
        limit: limit.and_then(|l| u32::try_from(l).ok()),
    }
}

// The keyed claim's parts, the same on both stores (each adds its own placeholders, filters
// and locking). Candidates are ready task runs `t` of runs `r`:

/// The candidate's columns: its task's key and effective limit (a named limit wins), its
/// run's key, effective limit, whether it is pending, its age and id, and its rate key and
/// limit ([`crate::rates`]).
pub const CANDIDATE_COLUMNS: &str = "t.id, t.priority, t.ready_at, t.concurrency_key, \
     COALESCE((SELECT max_running FROM concurrency_limits l WHERE l.key = t.concurrency_key), \
     t.concurrency_limit) AS concurrency_limit, r.concurrency_key AS run_key, \
     COALESCE((SELECT max_running FROM concurrency_limits l WHERE l.key = r.concurrency_key), \
     r.concurrency_limit) AS run_limit, r.state = 'pending' AS run_pending, \
     r.created_at AS run_created, r.id AS run_id, t.rate_key, t.rate_limit";

/// Keys already at their limit are passed over, so their backlog does not hold up other keys
/// (a running run's tasks need no run slot).
pub const NOT_FULL: &str = " AND (t.concurrency_key IS NULL OR t.concurrency_key NOT IN (\
     SELECT concurrency_key FROM task_runs WHERE state = 'running' AND concurrency_key IS NOT NULL \
     GROUP BY concurrency_key HAVING COUNT(*) >= COALESCE((SELECT max_running FROM concurrency_limits l \
     WHERE l.key = task_runs.concurrency_key), MAX(concurrency_limit)))) \
     AND (r.concurrency_key IS NULL OR r.state <> 'pending' OR r.concurrency_key NOT IN (\
     SELECT concurrency_key FROM runs WHERE state = 'running' AND concurrency_key IS NOT NULL \
     GROUP BY concurrency_key HAVING COUNT(*) >= COALESCE((SELECT max_running FROM concurrency_limits l \
     WHERE l.key = runs.concurrency_key), MAX(concurrency_limit))))";

/// Numbers the candidates within their task key, and a key's pending runs (DENSE_RANK: one
/// run's tasks share one slot).
pub const RANKS: &str = "ROW_NUMBER() OVER (PARTITION BY concurrency_key ORDER BY priority DESC, ready_at, id) AS nth, \
     DENSE_RANK() OVER (PARTITION BY CASE WHEN run_pending THEN run_key END \
     ORDER BY run_created, run_id) AS run_nth";

/// Of the ranked candidates `c`, those within the slots their keys have left.
pub const WITHIN_LIMITS: &str = "(c.concurrency_key IS NULL OR c.nth + (SELECT COUNT(*) FROM task_runs k \
     WHERE k.state = 'running' AND k.concurrency_key = c.concurrency_key) <= c.concurrency_limit) \
     AND (c.run_key IS NULL OR NOT c.run_pending OR c.run_nth + (SELECT COUNT(*) FROM runs k \
     WHERE k.state = 'running' AND k.concurrency_key = c.run_key) <= c.run_limit)";
