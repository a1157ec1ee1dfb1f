-- SDK worker services, their tasks' code versions and the history of those versions.
CREATE TABLE services (
    id            TEXT PRIMARY KEY,
    version       TEXT,
    url           TEXT,
    registered_at INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL
);
CREATE TABLE service_tasks (
    name         TEXT PRIMARY KEY,
    service_id   TEXT NOT NULL,
    code_hash    TEXT NOT NULL,
    code_version INTEGER NOT NULL,
    options      TEXT NOT NULL,        -- JSON, as registered
    updated_at   INTEGER NOT NULL
);
CREATE INDEX service_tasks_by_service ON service_tasks (service_id, name);
CREATE TABLE task_code_history (
    task_name    TEXT NOT NULL,
    code_version INTEGER NOT NULL,
    service_id   TEXT NOT NULL,
    code_hash    TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (task_name, code_version)
);
ALTER TABLE attempts ADD COLUMN code_version INTEGER;
ALTER TABLE task_runs ADD COLUMN progress REAL;
ALTER TABLE task_runs ADD COLUMN progress_message TEXT;
ALTER TABLE nodes ADD COLUMN service TEXT;
