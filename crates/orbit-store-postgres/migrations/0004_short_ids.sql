-- Short ids are the last 12 hex digits of an id (`orbit_core::id`): found by these indexes,
-- whatever the tables' size. Queries use the same expression.
CREATE INDEX runs_by_tail ON runs (right(id::text, 12));
CREATE INDEX task_runs_by_tail ON task_runs (right(id::text, 12));
CREATE INDEX dead_letters_by_tail ON dead_letters (right(task_run_id::text, 12));
