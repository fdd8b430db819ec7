-- Inbound webhook integrations: how a third party's webhooks to /v1/inbound/{name} are verified
-- and whose events they become.
CREATE TABLE integrations (
    name         TEXT    PRIMARY KEY,
    client_id    TEXT    NOT NULL,
    verification TEXT    NOT NULL,
    secret       TEXT,
    event_type   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL
) WITHOUT ROWID;
