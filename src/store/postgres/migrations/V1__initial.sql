-- Events, range-partitioned by month of received_at (partitions are created ahead by the
-- service). seq is assigned under the event_sequence row lock: gapless and in commit order
-- across every node. Uniqueness of seq and id is guaranteed by the writers, not by constraints
-- (a partitioned table can only enforce uniqueness that includes the partition key).
CREATE TABLE events (
    seq            BIGINT      NOT NULL,
    id             UUID        NOT NULL,
    client_id      TEXT        NOT NULL,
    event_type     TEXT        NOT NULL,
    user_id        TEXT,
    event_id       TEXT,
    source         TEXT,
    subject        TEXT,
    correlation_id TEXT,
    status         TEXT,
    ip_address     TEXT,
    partition_key  TEXT,
    occurred_at    TIMESTAMPTZ NOT NULL,
    received_at    TIMESTAMPTZ NOT NULL,
    data           JSONB       NOT NULL,
    headers        JSONB       NOT NULL
) PARTITION BY RANGE (received_at);

CREATE INDEX events_seq ON events (seq);
CREATE INDEX events_id ON events (id);
CREATE INDEX events_client_seq ON events (client_id, seq);
CREATE INDEX events_client_user_seq ON events (client_id, user_id, seq) WHERE user_id IS NOT NULL;
CREATE INDEX events_client_type_seq ON events (client_id, event_type, seq);
CREATE INDEX events_client_source_seq ON events (client_id, source, seq) WHERE source IS NOT NULL;
CREATE INDEX events_client_correlation_seq ON events (client_id, correlation_id, seq)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX events_client_occurred ON events (client_id, occurred_at);
-- Data-field filters are containment queries (`data @> …`) this index serves.
CREATE INDEX events_data ON events USING GIN (data jsonb_path_ops);

-- Idempotency keys live in their own unpartitioned table so uniqueness holds across partitions.
CREATE TABLE idempotency_keys (
    client_id    TEXT        NOT NULL,
    source       TEXT        NOT NULL,
    event_id     TEXT        NOT NULL,
    event_uuid   UUID        NOT NULL,
    event_seq    BIGINT      NOT NULL,
    content_hash BYTEA       NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (client_id, source, event_id)
);

CREATE TABLE event_sequence (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq BIGINT  NOT NULL
);
INSERT INTO event_sequence (id, last_seq) VALUES (1, 0);

CREATE TABLE api_keys (
    key_id      TEXT        PRIMARY KEY,
    client_id   TEXT        NOT NULL,
    name        TEXT        NOT NULL,
    scopes      TEXT        NOT NULL,
    rate_limit  INTEGER,
    is_active   BOOLEAN     NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ,
    secret_hash BYTEA       NOT NULL
);
CREATE INDEX api_keys_client ON api_keys (client_id);
