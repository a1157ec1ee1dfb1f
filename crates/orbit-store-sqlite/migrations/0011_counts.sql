-- Counts the status pages read, kept by every commit (see orbit_store::tally) instead of
-- counted over task_runs and attempts at each request.
CREATE TABLE task_counts (
    state TEXT PRIMARY KEY,
    n     INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO task_counts (state, n) SELECT state, COUNT(*) FROM task_runs GROUP BY state;

-- Attempts per minute (Unix seconds / 60), outcome and duration bucket (a quarter doubling).
CREATE TABLE attempt_cells (
    minute   INTEGER NOT NULL,
    ok       INTEGER NOT NULL,
    bucket   INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    sum_us   INTEGER NOT NULL,
    max_us   INTEGER NOT NULL,
    PRIMARY KEY (minute, ok, bucket)
) WITHOUT ROWID;
