-- Rate limits: a task run's rendered key, limit and period, and one token bucket per key.
-- Ready task runs with a rate key go through the keyed claim (found by the same partial index
-- as keyed ones); the second index finds the keys that still have ready task runs.
ALTER TABLE task_runs ADD COLUMN rate_key TEXT;
ALTER TABLE task_runs ADD COLUMN rate_limit INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_runs ADD COLUMN rate_per_ms INTEGER NOT NULL DEFAULT 0;
DROP INDEX task_runs_ready_by_key;
CREATE INDEX task_runs_ready_by_key ON task_runs (concurrency_key)
    WHERE state = 'ready' AND (concurrency_key IS NOT NULL OR run_keyed = 1 OR rate_key IS NOT NULL);
CREATE INDEX task_runs_ready_by_rate ON task_runs (rate_key)
    WHERE state = 'ready' AND rate_key IS NOT NULL;
-- `tokens` as of `updated_at` (µs since the epoch); refilled `capacity` per `per_ms`.
CREATE TABLE rate_buckets (
    key TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    capacity REAL NOT NULL,
    per_ms REAL NOT NULL,
    updated_at INTEGER NOT NULL
);
