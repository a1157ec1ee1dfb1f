-- Who or what started a run going (cli, api, cron, retry, recover, dlq): the seeds' triggeredBy.
ALTER TABLE runs ADD COLUMN triggered_by TEXT;
