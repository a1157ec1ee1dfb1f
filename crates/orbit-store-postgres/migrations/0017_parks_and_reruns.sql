-- Durable waits and re-runs.
--
-- Durable waits: a parked task run (a long sleep, a wait for a signal, an approval) holds no
-- worker; it records why it parked and until when, and what woke it. The partial indexes find
-- the parks that are due and the waits of a signal without reading any other row.
ALTER TABLE task_runs ADD COLUMN park_kind text;
ALTER TABLE task_runs ADD COLUMN park_until timestamptz;
ALTER TABLE task_runs ADD COLUMN park_event text;
-- What an approver reads (an approval's rendered message).
ALTER TABLE task_runs ADD COLUMN park_note text;
ALTER TABLE task_runs ADD COLUMN wake jsonb;
CREATE INDEX task_runs_parked_until ON task_runs (park_until)
    WHERE state = 'parked' AND park_until IS NOT NULL;
CREATE INDEX task_runs_parked_event ON task_runs (park_event)
    WHERE state = 'parked' AND park_event IS NOT NULL;

-- Signals that arrived before any wait: kept until they expire, taken by the first wait.
CREATE TABLE signals (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX signals_by_name ON signals (name, id);
CREATE INDEX signals_by_expiry ON signals (expires_at);

-- Re-runs: a run made from an earlier one (from one of its tasks) names it; the task runs it
-- took over name the task run each comes from.
ALTER TABLE runs ADD COLUMN rerun_of uuid;
ALTER TABLE runs ADD COLUMN rerun_from text;
ALTER TABLE task_runs ADD COLUMN origin uuid;
