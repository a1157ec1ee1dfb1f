-- `orbit retry` gives a task a fresh set of tries while attempt numbers keep counting up:
-- the retry policy sees `attempt - attempt_base`.
ALTER TABLE task_runs ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;
-- When the current attempt was claimed, so a reaped attempt records its own start.
ALTER TABLE task_runs ADD COLUMN claimed_at INTEGER;
CREATE INDEX runs_active ON runs (updated_at) WHERE state IN ('pending', 'running');
