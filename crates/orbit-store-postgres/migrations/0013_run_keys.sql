-- A pipeline's concurrency key, rendered for each run: claims count the running runs of a key
-- (the first index) and look for pending keyed runs (the second) only when there are any.
ALTER TABLE runs ADD COLUMN concurrency_key text;
ALTER TABLE runs ADD COLUMN concurrency_limit integer NOT NULL DEFAULT 0;
CREATE INDEX runs_running_by_key ON runs (concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;
CREATE INDEX runs_pending_by_key ON runs (concurrency_key)
    WHERE state = 'pending' AND concurrency_key IS NOT NULL;
-- The task runs of a run with a key go through the keyed claim too: ready ones are found by the
-- same partial index as keyed task runs.
ALTER TABLE task_runs ADD COLUMN run_keyed boolean NOT NULL DEFAULT false;
DROP INDEX task_runs_ready_by_key;
CREATE INDEX task_runs_ready_by_key ON task_runs (concurrency_key)
    WHERE state = 'ready' AND (concurrency_key IS NOT NULL OR run_keyed);
