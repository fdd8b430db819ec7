-- Analytics rollups: events counted per minute and per hour of their occurred_at (Unix
-- seconds, floored), by client, type and source (empty when none). Writers add each group's
-- counts in the group's transaction (under the sequence row lock, so nodes never race on a
-- row); here the events already stored are counted.
CREATE TABLE event_counts_minute (
    client_id  TEXT   NOT NULL COLLATE "C",
    bucket     BIGINT NOT NULL,
    event_type TEXT   NOT NULL COLLATE "C",
    source     TEXT   NOT NULL COLLATE "C",
    count      BIGINT NOT NULL,
    PRIMARY KEY (client_id, bucket, event_type, source)
);
CREATE INDEX event_counts_minute_bucket ON event_counts_minute (bucket);

CREATE TABLE event_counts_hour (
    client_id  TEXT   NOT NULL COLLATE "C",
    bucket     BIGINT NOT NULL,
    event_type TEXT   NOT NULL COLLATE "C",
    source     TEXT   NOT NULL COLLATE "C",
    count      BIGINT NOT NULL,
    PRIMARY KEY (client_id, bucket, event_type, source)
);
CREATE INDEX event_counts_hour_bucket ON event_counts_hour (bucket);

INSERT INTO event_counts_minute (client_id, bucket, event_type, source, count)
SELECT client_id, (floor(extract(epoch FROM occurred_at) / 60) * 60)::bigint,
       event_type, coalesce(source, ''), count(*)
FROM events GROUP BY 1, 2, 3, 4;

INSERT INTO event_counts_hour (client_id, bucket, event_type, source, count)
SELECT client_id, bucket - ((bucket % 3600) + 3600) % 3600, event_type, source, sum(count)
FROM event_counts_minute GROUP BY 1, 2, 3, 4;

-- Ingest latency: per client and hour, how many appends took a time in each log-linear slot.
CREATE TABLE ingest_latency (
    client_id TEXT    NOT NULL,
    bucket    BIGINT  NOT NULL,
    slot      INTEGER NOT NULL,
    count     BIGINT  NOT NULL,
    PRIMARY KEY (client_id, bucket, slot)
);
CREATE INDEX ingest_latency_bucket ON ingest_latency (bucket);

-- Deliveries still to go and the dead-letter queue, counted per owner (queue-status) without
-- reading the finished ones.
CREATE INDEX deliveries_unfinished ON deliveries (status, client_id, created_at)
    WHERE status <> 'COMPLETED';
