-- Fan-out over data: a `for_each` task's children are task runs named `parent[i]`, with their
-- parent's name, their index and their element; the index finds a parent's children in order.
ALTER TABLE task_runs ADD COLUMN map_parent TEXT;
ALTER TABLE task_runs ADD COLUMN map_index INTEGER;
ALTER TABLE task_runs ADD COLUMN map_item TEXT;
CREATE INDEX task_runs_children ON task_runs (run_id, map_parent, map_index)
    WHERE map_parent IS NOT NULL;
