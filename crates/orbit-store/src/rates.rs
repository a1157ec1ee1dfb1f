//! Rate limits' token buckets, in SQL shared by SQLite and PostgreSQL.
//!
//! A bucket (`rate_buckets`) holds `tokens` as of `updated_at` (µs since the epoch) and refills
//! `capacity` tokens evenly over `per_ms`, never above `capacity`. A key without a bucket is
//! full. Claims run under the keyed claim's serialization (SQLite's one writer, PostgreSQL's
//! advisory lock), so reading a bucket, claiming and spending from it is one step.
//! Each function takes the SQL of "now in µs" (a placeholder) and gives a fragment.

/// The tokens bucket `b` holds at `now`.
pub fn tokens(b: &str, now: &str) -> String {
    let refilled =
        format!("{b}.tokens + ({now} - {b}.updated_at) * {b}.capacity / ({b}.per_ms * 1000.0)");
    format!("(CASE WHEN {refilled} > {b}.capacity THEN {b}.capacity ELSE {refilled} END)")
}

/// Candidates `t` whose key has no whole token left are passed over, so their backlog does not
/// hold up other work.
pub fn not_spent(now: &str) -> String {
    format!(
        " AND (t.rate_key IS NULL OR t.rate_key NOT IN (SELECT b.key FROM rate_buckets b WHERE {} < 1))",
        tokens("b", now)
    )
}

/// Numbers the candidates within their rate key.
pub const RANK: &str =
    "ROW_NUMBER() OVER (PARTITION BY rate_key ORDER BY priority DESC, ready_at, id) AS rate_nth";

/// Of the ranked candidates `c`, those with a token each (a new key's bucket is full).
pub fn within(now: &str) -> String {
    format!(
        " AND (c.rate_key IS NULL OR c.rate_nth <= COALESCE((SELECT {} FROM rate_buckets b \
         WHERE b.key = c.rate_key), c.rate_limit))",
        tokens("b", now)
    )
}

/// Spends `n` tokens of `key` (its bucket made full with `capacity` and `per_ms` if new, then
/// refilled to `now`): placeholders in this order.
pub fn spend(key: &str, n: &str, capacity: &str, per_ms: &str, now: &str) -> String {
    format!(
        "INSERT INTO rate_buckets (key, tokens, capacity, per_ms, updated_at) \
         VALUES ({key}, {capacity} - {n}, {capacity}, {per_ms}, {now}) \
         ON CONFLICT (key) DO UPDATE SET tokens = {} - {n}, capacity = excluded.capacity, \
         per_ms = excluded.per_ms, updated_at = excluded.updated_at",
        tokens("rate_buckets", now)
    )
}

/// When (µs) the first key with ready task runs and no whole token gets one; NULL if none waits.
pub fn next_token(now: &str) -> String {
    format!(
        "SELECT MIN(b.updated_at + (1 - b.tokens) * b.per_ms * 1000.0 / b.capacity) FROM rate_buckets b \
         WHERE {} < 1 AND EXISTS (SELECT 1 FROM task_runs t WHERE t.state = 'ready' AND t.rate_key = b.key)",
        tokens("b", now)
    )
}

/// The earlier of a wake-up already set and the next token's time (µs, from [`next_token`]),
/// a microsecond late rather than early: the claim then finds the token whole.
pub fn earliest(
    set: Option<chrono::DateTime<chrono::Utc>>,
    next_us: Option<f64>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let next = next_us.and_then(|n| chrono::DateTime::from_timestamp_micros(n.ceil() as i64 + 1));
    match (set, next) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Claimed task runs' rate keys: each key's count, capacity and period, to spend.
pub fn tally<'a>(
    claimed: impl IntoIterator<Item = (&'a str, i64, i64)>,
) -> Vec<(&'a str, i64, i64, i64)> {
    let mut keys: Vec<(&str, i64, i64, i64)> = Vec::new();
    for (key, capacity, per_ms) in claimed {
        match keys.iter_mut().find(|k| k.0 == key) {
            Some(k) => k.1 += 1,
            None => keys.push((key, 1, capacity, per_ms)),
        }
    }
    keys
}
