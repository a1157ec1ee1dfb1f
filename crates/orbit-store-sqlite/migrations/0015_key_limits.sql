-- Named limits of concurrency keys (`orbit limits set KEY N`): they override what tasks declare.
CREATE TABLE concurrency_limits (
    key          TEXT PRIMARY KEY,
    max_running  INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
