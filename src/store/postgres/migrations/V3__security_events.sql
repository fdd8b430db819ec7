-- Security events (seed 004). dedup_key folds a flood into one row per key with a count.
CREATE TABLE security_events (
    id              BIGSERIAL   PRIMARY KEY,
    client_id       TEXT        NOT NULL,
    event_type      TEXT        NOT NULL,
    severity        TEXT        NOT NULL,
    user_id         TEXT,
    ip_address      TEXT,
    user_agent      TEXT,
    event_details   JSONB       NOT NULL,
    requires_review BOOLEAN     NOT NULL,
    reviewed_by     TEXT,
    reviewed_at     TIMESTAMPTZ,
    occurred_at     TIMESTAMPTZ NOT NULL,
    dedup_key       TEXT UNIQUE,
    count           BIGINT      NOT NULL
);
CREATE INDEX security_events_client_id ON security_events (client_id, id);
