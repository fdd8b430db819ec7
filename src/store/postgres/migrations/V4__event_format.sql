-- The wire format an event came in (0 Annals envelope, 1 seed-000 ApiEvent, 2 CloudEvent,
-- 3 CloudEvent with binary data), so it can be read back in its own shape.
ALTER TABLE events ADD COLUMN format SMALLINT NOT NULL DEFAULT 0;
-- `GET /v1/api-events` lists only ApiEvents: partial indexes cost nothing for other events.
CREATE INDEX events_api_client_seq ON events (client_id, seq) WHERE format = 1;
CREATE INDEX events_api_seq ON events (seq) WHERE format = 1;
