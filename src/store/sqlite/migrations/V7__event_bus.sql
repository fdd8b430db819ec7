-- The event bus (seed 004): subscriptions, their deliveries (the transactional outbox, written
-- in the event's transaction and referencing the event by seq) and the integration log.
CREATE TABLE subscriptions (
    id                    BLOB    PRIMARY KEY,
    client_id             TEXT,
    subscriber_name       TEXT    NOT NULL,
    topic_pattern         TEXT    NOT NULL,
    webhook_url           TEXT,
    callback_method       TEXT,
    is_active             INTEGER NOT NULL,
    subscription_config   TEXT,
    max_retries           INTEGER NOT NULL,
    secret                TEXT    NOT NULL,
    previous_secret       TEXT,
    previous_secret_until INTEGER,
    disabled_reason       TEXT,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX subscriptions_client ON subscriptions (client_id);

-- status: PENDING, PROCESSING, COMPLETED, FAILED. While PENDING or PROCESSING, next_retry_at is
-- when it is due: the next attempt's time, or the end of a sender's lease.
CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id       BLOB    NOT NULL,
    subscription_id  BLOB    NOT NULL,
    client_id        TEXT    NOT NULL,
    event_seq        INTEGER NOT NULL,
    event_uuid       BLOB    NOT NULL,
    topic            TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    pull             INTEGER NOT NULL,
    retry_count      INTEGER NOT NULL,
    max_retries      INTEGER NOT NULL,
    next_retry_at    INTEGER,
    failure_reason   TEXT,
    last_status_code INTEGER,
    created_at       INTEGER NOT NULL,
    processed_at     INTEGER
);
-- Due deliveries: the push worker's across all webhook subscriptions, a pull subscription's own.
CREATE INDEX deliveries_due_push ON deliveries (next_retry_at)
    WHERE status IN ('PENDING', 'PROCESSING') AND pull = 0;
CREATE INDEX deliveries_due_pull ON deliveries (subscription_id, next_retry_at)
    WHERE status IN ('PENDING', 'PROCESSING') AND pull = 1;
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, id);
CREATE INDEX deliveries_client ON deliveries (client_id, id);
CREATE INDEX deliveries_created ON deliveries (created_at);

CREATE TABLE integration_logs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id        TEXT    NOT NULL,
    integration_name TEXT    NOT NULL,
    operation        TEXT    NOT NULL,
    external_id      TEXT,
    request_data     TEXT,
    response_data    TEXT,
    http_status_code INTEGER,
    success          INTEGER NOT NULL,
    error_message    TEXT,
    occurred_at      INTEGER NOT NULL,
    delivery_id      INTEGER,
    duration_ms      INTEGER
);
CREATE INDEX integration_logs_client ON integration_logs (client_id, id);
CREATE INDEX integration_logs_delivery ON integration_logs (delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX integration_logs_occurred ON integration_logs (occurred_at);
