-- Named limits of concurrency keys (`orbit limits set KEY N`): they override what tasks declare.
CREATE TABLE concurrency_limits (
    key          text PRIMARY KEY,
    max_running  integer NOT NULL,
    updated_at   timestamptz NOT NULL
);
