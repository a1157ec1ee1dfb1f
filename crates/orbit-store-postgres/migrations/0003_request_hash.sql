-- What an idempotency key's reuse is compared by: the pipeline and the input it was created with.
ALTER TABLE runs ADD COLUMN request_hash TEXT;
