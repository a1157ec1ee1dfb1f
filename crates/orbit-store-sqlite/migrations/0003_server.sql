-- Workers claim by queue and by task type.
ALTER TABLE task_runs ADD COLUMN task_type TEXT NOT NULL DEFAULT '';
ALTER TABLE task_runs ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
UPDATE task_runs SET task_type = COALESCE((
    SELECT json_extract(t.value, '$.type') FROM pipelines p, json_each(p.definition, '$.tasks') t
    WHERE p.id = task_runs.pipeline_id AND json_extract(t.value, '$.name') = task_runs.task_name), '');
CREATE INDEX task_runs_claim_by_queue ON task_runs (queue, priority DESC, ready_at, id) WHERE state = 'ready';
CREATE INDEX task_runs_ready_at ON task_runs (ready_at) WHERE state = 'ready';
CREATE INDEX task_runs_waiting ON task_runs (updated_at) WHERE state = 'waiting';
CREATE INDEX attempts_by_finished ON attempts (finished_at DESC);

-- A deleted pipeline keeps its versions (runs refer to them) but is hidden.
ALTER TABLE pipelines ADD COLUMN deleted_at INTEGER;

-- Running `orbit server` / `orbit worker` processes and when they were last seen.
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT NOT NULL,
    queues       TEXT NOT NULL,        -- JSON array
    concurrency  INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    stopped_at   INTEGER
);
CREATE INDEX nodes_by_seen ON nodes (last_seen_at DESC);
