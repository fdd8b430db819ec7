-- The event bus (seed 004): subscriptions, their deliveries (the transactional outbox, written
-- in the event's transaction and referencing the event by seq) and the integration log.
-- Every change to subscriptions bumps event_sequence.subscriptions_version under that row's
-- lock, so a writer (which takes the lock first) always matches against the current set.
ALTER TABLE event_sequence ADD COLUMN subscriptions_version BIGINT NOT NULL DEFAULT 0;

CREATE TABLE subscriptions (
    id                    UUID        PRIMARY KEY,
    client_id             TEXT,
    subscriber_name       TEXT        NOT NULL,
    topic_pattern         TEXT        NOT NULL,
    webhook_url           TEXT,
    callback_method       TEXT,
    is_active             BOOLEAN     NOT NULL,
    subscription_config   JSONB,
    max_retries           INTEGER     NOT NULL,
    secret                TEXT        NOT NULL,
    previous_secret       TEXT,
    previous_secret_until TIMESTAMPTZ,
    disabled_reason       TEXT,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL
);
CREATE INDEX subscriptions_client ON subscriptions (client_id);

-- status: PENDING, PROCESSING, COMPLETED, FAILED. While PENDING or PROCESSING, next_retry_at is
-- when it is due: the next attempt's time, or the end of a sender's lease.
CREATE TABLE deliveries (
    id               BIGSERIAL   PRIMARY KEY,
    message_id       UUID        NOT NULL,
    subscription_id  UUID        NOT NULL,
    client_id        TEXT        NOT NULL,
    event_seq        BIGINT      NOT NULL,
    event_uuid       UUID        NOT NULL,
    topic            TEXT        NOT NULL,
    status           TEXT        NOT NULL,
    pull             BOOLEAN     NOT NULL,
    retry_count      INTEGER     NOT NULL,
    max_retries      INTEGER     NOT NULL,
    next_retry_at    TIMESTAMPTZ,
    failure_reason   TEXT,
    last_status_code INTEGER,
    created_at       TIMESTAMPTZ NOT NULL,
    processed_at     TIMESTAMPTZ
);
-- Due deliveries: the push worker's across all webhook subscriptions, a pull subscription's own.
CREATE INDEX deliveries_due_push ON deliveries (next_retry_at)
    WHERE status IN ('PENDING', 'PROCESSING') AND pull = false;
CREATE INDEX deliveries_due_pull ON deliveries (subscription_id, next_retry_at)
    WHERE status IN ('PENDING', 'PROCESSING') AND pull = true;
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, id);
CREATE INDEX deliveries_client ON deliveries (client_id, id);
CREATE INDEX deliveries_created ON deliveries (created_at);

CREATE TABLE integration_logs (
    id               BIGSERIAL   PRIMARY KEY,
    client_id        TEXT        NOT NULL,
    integration_name TEXT        NOT NULL,
    operation        TEXT        NOT NULL,
    external_id      TEXT,
    request_data     JSONB,
    response_data    JSONB,
    http_status_code INTEGER,
    success          BOOLEAN     NOT NULL,
    error_message    TEXT,
    occurred_at      TIMESTAMPTZ NOT NULL,
    delivery_id      BIGINT,
    duration_ms      BIGINT
);
CREATE INDEX integration_logs_client ON integration_logs (client_id, id);
CREATE INDEX integration_logs_delivery ON integration_logs (delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX integration_logs_occurred ON integration_logs (occurred_at);
