-- Settled runs by when they finished: what run retention deletes, oldest first, without a scan.
CREATE INDEX runs_by_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
