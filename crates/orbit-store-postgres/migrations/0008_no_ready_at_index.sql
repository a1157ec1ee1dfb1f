-- Served only `next_ready_at`, which nothing calls; every claim and promotion paid to keep it,
-- and it drew the planner away from the claim indexes (a claim read and sorted every ready task
-- run with a fresh million queued).
DROP INDEX IF EXISTS task_runs_ready_at;
