-- Orbit's PostgreSQL schema. Times are timestamptz, ids UUIDv7, documents jsonb.

CREATE TABLE pipelines (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    version     bigint NOT NULL,
    hash        text NOT NULL,
    definition  jsonb NOT NULL,          -- orbit_core::Pipeline
    source      text,                    -- the file as written
    created_at  timestamptz NOT NULL,
    deleted_at  timestamptz,             -- hidden, kept for the runs that refer to it
    UNIQUE (name, version)
);

CREATE TABLE runs (
    id               uuid PRIMARY KEY,
    pipeline_id      uuid NOT NULL REFERENCES pipelines (id),
    pipeline_name    text NOT NULL,
    pipeline_version bigint NOT NULL,
    state            text NOT NULL,
    input            jsonb NOT NULL,
    priority         integer NOT NULL DEFAULT 0,
    idempotency_key  text UNIQUE,
    tasks_total      bigint NOT NULL,
    tasks_pending    bigint NOT NULL,    -- task runs not yet terminal; 0 settles the run
    tasks_dead       bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX runs_by_created ON runs (created_at DESC, id DESC);
CREATE INDEX runs_by_state ON runs (state, created_at DESC);
CREATE INDEX runs_by_pipeline ON runs (pipeline_name, created_at DESC);
CREATE INDEX runs_active ON runs (updated_at) WHERE state IN ('pending', 'running');

CREATE TABLE task_runs (
    id               uuid PRIMARY KEY,
    run_id           uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    pipeline_id      uuid NOT NULL,
    task_name        text NOT NULL,
    task_type        text NOT NULL,
    queue            text NOT NULL,
    seq              integer NOT NULL,   -- position in the pipeline file
    state            text NOT NULL,
    priority         integer NOT NULL,
    pending_needs    integer NOT NULL,   -- upstream tasks not yet succeeded
    attempt          integer NOT NULL DEFAULT 0,
    attempt_base     integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    lease_ms         bigint NOT NULL,
    lease_epoch      bigint NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    claimed_at       timestamptz,
    ready_at         timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL,
    output           jsonb,
    error            text,
    UNIQUE (run_id, task_name)
);
-- A claim reads the head of one of these, whatever the table's size.
CREATE INDEX task_runs_claim ON task_runs (priority DESC, ready_at, id) WHERE state = 'ready';
CREATE INDEX task_runs_claim_by_queue ON task_runs (queue, priority DESC, ready_at, id) WHERE state = 'ready';
CREATE INDEX task_runs_claim_by_run ON task_runs (run_id, priority DESC, ready_at, id) WHERE state = 'ready';
CREATE INDEX task_runs_ready_at ON task_runs (ready_at) WHERE state = 'ready';
CREATE INDEX task_runs_waiting ON task_runs (updated_at) WHERE state = 'waiting';
-- The reaper reads expired leases only.
CREATE INDEX task_runs_leases ON task_runs (lease_expires_at) WHERE state = 'running';

CREATE TABLE attempts (
    task_run_id uuid NOT NULL REFERENCES task_runs (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    run_id      uuid NOT NULL,
    task_name   text NOT NULL,
    worker      text NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    outcome     text NOT NULL,
    error       text,
    log         text NOT NULL DEFAULT '',
    PRIMARY KEY (task_run_id, attempt)
);
CREATE INDEX attempts_by_run ON attempts (run_id, task_name, attempt);
CREATE INDEX attempts_by_finished ON attempts (finished_at DESC);

CREATE TABLE events (
    id        bigserial PRIMARY KEY,
    run_id    uuid,
    task_name text,
    kind      text NOT NULL,
    data      jsonb,
    at        timestamptz NOT NULL
);
CREATE INDEX events_by_run ON events (run_id, id);

CREATE TABLE dead_letters (
    task_run_id uuid PRIMARY KEY REFERENCES task_runs (id) ON DELETE CASCADE,
    run_id      uuid NOT NULL,
    pipeline_id uuid NOT NULL,
    task_name   text NOT NULL,
    error       text,
    attempts    integer NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX dead_letters_by_created ON dead_letters (created_at DESC);
CREATE INDEX dead_letters_by_run ON dead_letters (run_id, task_name);

CREATE TABLE task_results (
    idempotency_key text PRIMARY KEY,
    task_run_id     uuid NOT NULL,
    output          jsonb NOT NULL,
    created_at      timestamptz NOT NULL
);

CREATE TABLE nodes (
    id           text PRIMARY KEY,
    kind         text NOT NULL,
    host         text NOT NULL,
    pid          bigint NOT NULL,
    version      text NOT NULL,
    queues       jsonb NOT NULL,
    concurrency  bigint NOT NULL,
    heartbeat_ms bigint NOT NULL,
    started_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    stopped_at   timestamptz
);
CREATE INDEX nodes_by_seen ON nodes (last_seen_at DESC);
