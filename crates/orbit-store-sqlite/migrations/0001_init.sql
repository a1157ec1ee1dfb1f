-- Times are microseconds since the Unix epoch (UTC); ids are UUIDv7 text.

CREATE TABLE pipelines (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    hash        TEXT NOT NULL,
    definition  TEXT NOT NULL,           -- orbit_core::Pipeline as JSON
    source      TEXT,                    -- the file as written
    created_at  INTEGER NOT NULL,
    UNIQUE (name, version)
);

CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    pipeline_id      TEXT NOT NULL REFERENCES pipelines (id),
    pipeline_name    TEXT NOT NULL,
    pipeline_version INTEGER NOT NULL,
    state            TEXT NOT NULL,
    input            TEXT NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    idempotency_key  TEXT UNIQUE,
    tasks_total      INTEGER NOT NULL,
    tasks_pending    INTEGER NOT NULL,   -- task runs not yet terminal; 0 settles the run
    tasks_dead       INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX runs_by_created ON runs (created_at DESC);
CREATE INDEX runs_by_state ON runs (state, created_at DESC);
CREATE INDEX runs_by_pipeline ON runs (pipeline_name, created_at DESC);

CREATE TABLE task_runs (
    id               TEXT PRIMARY KEY,
    run_id           TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    pipeline_id      TEXT NOT NULL,
    task_name        TEXT NOT NULL,
    seq              INTEGER NOT NULL,   -- position in the pipeline file
    state            TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    pending_needs    INTEGER NOT NULL,   -- upstream tasks not yet succeeded
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    lease_ms         INTEGER NOT NULL,
    lease_epoch      INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    ready_at         INTEGER,
    started_at       INTEGER,
    finished_at      INTEGER,
    updated_at       INTEGER NOT NULL,
    output           TEXT,
    error            TEXT,
    UNIQUE (run_id, task_name)
);
-- A claim reads the head of one of these, whatever the table's size.
CREATE INDEX task_runs_claim ON task_runs (priority DESC, ready_at, id) WHERE state = 'ready';
CREATE INDEX task_runs_claim_by_run ON task_runs (run_id, priority DESC, ready_at, id) WHERE state = 'ready';
-- The reaper reads expired leases only.
CREATE INDEX task_runs_leases ON task_runs (lease_expires_at) WHERE state = 'running';

CREATE TABLE attempts (
    task_run_id TEXT NOT NULL REFERENCES task_runs (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    run_id      TEXT NOT NULL,
    task_name   TEXT NOT NULL,
    worker      TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    error       TEXT,
    log         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (task_run_id, attempt)
);
CREATE INDEX attempts_by_run ON attempts (run_id, task_name, attempt);

CREATE TABLE events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id    TEXT,
    task_name TEXT,
    kind      TEXT NOT NULL,
    data      TEXT,
    at        INTEGER NOT NULL
);
CREATE INDEX events_by_run ON events (run_id, id);
