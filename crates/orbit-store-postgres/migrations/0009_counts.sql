-- Counts the status pages read, kept by every commit (see orbit_store::tally) instead of
-- counted over task_runs and attempts at each request. Each count is spread over shards (a
-- connection writes the shard of its backend pid) so concurrent commits seldom share a row.
CREATE TABLE task_counts (
    state TEXT NOT NULL,
    shard SMALLINT NOT NULL,
    n     BIGINT NOT NULL,
    PRIMARY KEY (state, shard)
);
INSERT INTO task_counts (state, shard, n) SELECT state, 0, COUNT(*) FROM task_runs GROUP BY state;

-- Attempts per minute (Unix seconds / 60), outcome and duration bucket (a quarter doubling).
CREATE TABLE attempt_cells (
    minute   BIGINT NOT NULL,
    shard    SMALLINT NOT NULL,
    ok       BOOLEAN NOT NULL,
    bucket   SMALLINT NOT NULL,
    attempts BIGINT NOT NULL,
    sum_us   BIGINT NOT NULL,
    max_us   BIGINT NOT NULL,
    PRIMARY KEY (minute, shard, ok, bucket)
);
