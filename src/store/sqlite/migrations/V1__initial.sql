-- Events: one table for every kind of event. `seq` is assigned by the writer thread, gapless.
-- Times are microseconds since the Unix epoch (UTC).
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY,
    id             BLOB    NOT NULL,
    client_id      TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    user_id        TEXT,
    event_id       TEXT,
    source         TEXT,
    subject        TEXT,
    correlation_id TEXT,
    status         TEXT,
    ip_address     TEXT,
    partition_key  TEXT,
    occurred_at    INTEGER NOT NULL,
    received_at    INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    headers        TEXT    NOT NULL
);

CREATE UNIQUE INDEX events_id ON events (id);
-- Composite indexes end in the sort key so "newest N for X" is an index walk, not a sort.
CREATE INDEX events_client_seq ON events (client_id, seq);
-- Optional fields are indexed only where present (`x = ?` implies `x IS NOT NULL`, so the
-- planner still uses them), which keeps inserts of events without them cheaper.
CREATE INDEX events_client_user_seq ON events (client_id, user_id, seq) WHERE user_id IS NOT NULL;
CREATE INDEX events_client_type_seq ON events (client_id, event_type, seq);
CREATE INDEX events_client_source_seq ON events (client_id, source, seq) WHERE source IS NOT NULL;
CREATE INDEX events_client_correlation_seq ON events (client_id, correlation_id, seq)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX events_client_occurred ON events (client_id, occurred_at);

-- Idempotency keys: (client, source, event_id) -> the event stored under it and a hash of the
-- request that stored it. Kept apart from events so retention can drop them together.
CREATE TABLE idempotency_keys (
    client_id    TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    event_uuid   BLOB    NOT NULL,
    event_seq    INTEGER NOT NULL,
    content_hash BLOB    NOT NULL,
    PRIMARY KEY (client_id, source, event_id)
) WITHOUT ROWID;

-- The last assigned seq survives deletion of the newest rows, so seq never repeats.
CREATE TABLE event_sequence (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL
);
INSERT INTO event_sequence (id, last_seq) VALUES (1, 0);

CREATE TABLE api_keys (
    key_id      TEXT    PRIMARY KEY,
    client_id   TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    scopes      TEXT    NOT NULL,
    rate_limit  INTEGER,
    is_active   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    secret_hash BLOB    NOT NULL
);
CREATE INDEX api_keys_client ON api_keys (client_id);
