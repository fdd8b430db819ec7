-- The health check's write probe (`writer::probe`): while appends fail for want of storage,
-- each health check rewrites this one row, so a freed disk is seen without waiting for an
-- append.
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at INTEGER NOT NULL
);
