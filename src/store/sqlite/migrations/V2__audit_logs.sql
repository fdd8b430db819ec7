-- API-call audit log (one row per request). Written in batches by the audit writer.
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
CREATE INDEX audit_logs_at ON audit_logs (at);
