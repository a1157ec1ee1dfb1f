//! Concurrency keys' usage, read the same way on SQLite and PostgreSQL.

use crate::KeyUsage;

/// Every named limit with the task runs and runs of its key running now, by key: the
/// columns [`usage`] reads.
pub const KEY_LIMITS: &str = "SELECT l.key, \
     (SELECT COUNT(*) FROM task_runs r WHERE r.state = 'running' AND r.concurrency_key = l.key), \
     (SELECT COUNT(*) FROM runs r WHERE r.state = 'running' AND r.concurrency_key = l.key), \
     l.max_running FROM concurrency_limits l ORDER BY l.key";

/// One key's row: the key, its task runs running, its runs running, its named limit.
pub fn usage(key: String, running: i64, runs: i64, limit: Option<i64>) -> KeyUsage {
    KeyUsage {
        key,
        running: u64::try_from(running).unwrap_or(0),
        runs_running: u64::try_from(runs).unwrap_or(0),
        limit: limit.and_then(|l| u32::try_from(l).ok()),
    }
}
