-- Analytics rollups: events counted per minute and per hour of their occurred_at (Unix
-- seconds, floored), by client, type and source (empty when none). The writer adds each
-- group's counts in the group's transaction; here the events already stored are counted.
CREATE TABLE event_counts_minute (
    client_id  TEXT    NOT NULL,
    bucket     INTEGER NOT NULL,
    event_type TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    count      INTEGER NOT NULL,
    PRIMARY KEY (client_id, bucket, event_type, source)
) WITHOUT ROWID;
CREATE INDEX event_counts_minute_bucket ON event_counts_minute (bucket);

CREATE TABLE event_counts_hour (
    client_id  TEXT    NOT NULL,
    bucket     INTEGER NOT NULL,
    event_type TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    count      INTEGER NOT NULL,
    PRIMARY KEY (client_id, bucket, event_type, source)
) WITHOUT ROWID;
CREATE INDEX event_counts_hour_bucket ON event_counts_hour (bucket);

-- occurred_at is in microseconds; SQLite's / truncates toward zero, so times before 1970 step
-- down one more minute unless they fall on one.
INSERT INTO event_counts_minute (client_id, bucket, event_type, source, count)
SELECT client_id,
       (occurred_at / 60000000 - (occurred_at % 60000000 < 0)) * 60,
       event_type, coalesce(source, ''), count(*)
FROM events GROUP BY 1, 2, 3, 4;

INSERT INTO event_counts_hour (client_id, bucket, event_type, source, count)
SELECT client_id, bucket - ((bucket % 3600) + 3600) % 3600, event_type, source, sum(count)
FROM event_counts_minute GROUP BY 1, 2, 3, 4;

-- Ingest latency: per client and hour, how many appends took a time in each log-linear slot.
CREATE TABLE ingest_latency (
    client_id TEXT    NOT NULL,
    bucket    INTEGER NOT NULL,
    slot      INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    PRIMARY KEY (client_id, bucket, slot)
) WITHOUT ROWID;
CREATE INDEX ingest_latency_bucket ON ingest_latency (bucket);

-- Deliveries still to go and the dead-letter queue, counted per owner (queue-status) without
-- reading the finished ones.
CREATE INDEX deliveries_unfinished ON deliveries (status, client_id, created_at)
    WHERE status <> 'COMPLETED';

-- The last seq whose event the rollups count; the writer keeps the counts of later events in
-- memory for a moment and, after a crash, counts them again from `events`.
CREATE TABLE rollup_progress (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    through_seq INTEGER NOT NULL
);
INSERT INTO rollup_progress (id, through_seq) SELECT 1, coalesce(max(seq), 0) FROM events;
