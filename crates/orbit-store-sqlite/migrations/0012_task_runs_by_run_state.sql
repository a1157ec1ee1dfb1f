-- One run's task runs counted by state from the index alone: the run page of a run with
-- 100,000 task runs counted them by reading every row (56 ms; 12 ms from this index).
CREATE INDEX task_runs_by_run_state ON task_runs (run_id, state);
