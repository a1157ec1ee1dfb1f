-- A run's task runs in file order, by page, without sorting all of them.
CREATE INDEX task_runs_by_run_seq ON task_runs (run_id, seq);
