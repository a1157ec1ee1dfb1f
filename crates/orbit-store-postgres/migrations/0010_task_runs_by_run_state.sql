-- One run's task runs counted by state from an index: the run page of a run with 100,000
-- task runs counted them by reading every row.
CREATE INDEX task_runs_by_run_state ON task_runs (run_id, state);
