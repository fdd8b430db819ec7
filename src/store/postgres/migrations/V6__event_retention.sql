-- Event retention (ANNALS_EVENT_RETENTION_DAYS) deletes idempotency keys by the time their
-- event was received, in batches.
CREATE INDEX idempotency_keys_received_at ON idempotency_keys (received_at);
