-- Event retention (ANNALS_EVENT_RETENTION_DAYS) deletes the oldest events by seq, and the
-- idempotency keys that point at them.
CREATE INDEX idempotency_keys_event_seq ON idempotency_keys (event_seq);
