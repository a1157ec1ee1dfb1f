-- Sub-pipelines: a run made by a `type: pipeline` task names its parent run and that task, so
-- cancelling or looking at the parent finds its children (the index).
ALTER TABLE runs ADD COLUMN parent_run_id uuid;
ALTER TABLE runs ADD COLUMN parent_task text;
CREATE INDEX runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
