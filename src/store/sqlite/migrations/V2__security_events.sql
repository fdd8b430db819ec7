-- Security events (seed 004). dedup_key folds a flood into one row per key with a count.
CREATE TABLE security_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id       TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    severity        TEXT    NOT NULL,
    user_id         TEXT,
    ip_address      TEXT,
    user_agent      TEXT,
    event_details   TEXT    NOT NULL,
    requires_review INTEGER NOT NULL,
    reviewed_by     TEXT,
    reviewed_at     INTEGER,
    occurred_at     INTEGER NOT NULL,
    dedup_key       TEXT UNIQUE,
    count           INTEGER NOT NULL
);
CREATE INDEX security_events_client_id ON security_events (client_id, id);
