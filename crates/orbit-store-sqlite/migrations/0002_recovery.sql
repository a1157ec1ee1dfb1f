-- `orbit retry` gives a task a fresh set of tries while attempt numbers keep counting up:
-- the retry policy sees `attempt - attempt_base`.
ALTER TABLE task_runs ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;
-- When the current attempt was claimed, so a reaped attempt records its own start.
ALTER TABLE task_runs ADD COLUMN claimed_at INTEGER;
CREATE INDEX runs_active ON runs (updated_at) WHERE state IN ('pending', 'running');

-- The dead-letter queue: one entry per task run that went dead, written in the same transaction.
CREATE TABLE dead_letters (
    task_run_id TEXT PRIMARY KEY REFERENCES task_runs (id) ON DELETE CASCADE,
    run_id      TEXT NOT NULL,
    pipeline_id TEXT NOT NULL,
    task_name   TEXT NOT NULL,
    error       TEXT,
    attempts    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX dead_letters_by_created ON dead_letters (created_at DESC);

-- Outputs of succeeded task runs that had an idempotency key: a later task with the same key
-- reuses the output instead of running.
CREATE TABLE task_results (
    idempotency_key TEXT PRIMARY KEY,
    task_run_id     TEXT NOT NULL,
    output          TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
