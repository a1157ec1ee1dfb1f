-- Cron reads the pipelines that have a schedule every few seconds: a column says which, so it
-- never parses the others' definitions (one of 100,000 tasks is tens of megabytes of JSON).
ALTER TABLE pipelines ADD COLUMN schedule TEXT;
UPDATE pipelines SET schedule = json_extract(definition, '$.schedule');
