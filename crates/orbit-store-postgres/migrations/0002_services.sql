-- SDK worker services, their tasks' code versions and the history of those versions.
CREATE TABLE services (
    id            text PRIMARY KEY,
    version       text,
    url           text,
    registered_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL
);
CREATE TABLE service_tasks (
    name         text PRIMARY KEY,
    service_id   text NOT NULL,
    code_hash    text NOT NULL,
    code_version bigint NOT NULL,
    options      jsonb NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX service_tasks_by_service ON service_tasks (service_id, name);
CREATE TABLE task_code_history (
    task_name    text NOT NULL,
    code_version bigint NOT NULL,
    service_id   text NOT NULL,
    code_hash    text NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (task_name, code_version)
);
ALTER TABLE attempts ADD COLUMN code_version bigint;
ALTER TABLE task_runs ADD COLUMN progress double precision;
ALTER TABLE task_runs ADD COLUMN progress_message text;
ALTER TABLE nodes ADD COLUMN service text;
