-- Concurrency keys: a task run's rendered key and limit. Claims count the running task runs of
-- a key (the first index), and look for ready keyed ones (the second) only when there are any.
ALTER TABLE task_runs ADD COLUMN concurrency_key TEXT;
ALTER TABLE task_runs ADD COLUMN concurrency_limit INTEGER NOT NULL DEFAULT 0;
CREATE INDEX task_runs_running_by_key ON task_runs (concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;
CREATE INDEX task_runs_ready_by_key ON task_runs (concurrency_key)
    WHERE state = 'ready' AND concurrency_key IS NOT NULL;
