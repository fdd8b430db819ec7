-- API-call audit log (one row per request), in its own database file next to the events
-- (`<name>.audit.db`) so its batches never hold up the events' group-commit writer.
CREATE TABLE audit_logs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    client_id  TEXT,
    key_id     TEXT,
    method     TEXT    NOT NULL,
    route      TEXT,
    path       TEXT    NOT NULL,
    status     INTEGER NOT NULL,
    latency_us INTEGER NOT NULL,
    ip         TEXT,
    user_agent TEXT,
    request_id TEXT
);
CREATE INDEX audit_logs_client_id ON audit_logs (client_id, id);
-- No index on `at`: rows arrive in time order, so retention walks the primary key from the
-- oldest id and stops at the cutoff; one index fewer keeps auditing cheap.
