-- API-call audit log (one row per request). Written in batches by each node's audit writer.
CREATE TABLE audit_logs (
    id         BIGSERIAL   PRIMARY KEY,
    at         TIMESTAMPTZ NOT NULL,
    client_id  TEXT,
    key_id     TEXT,
    method     TEXT        NOT NULL,
    route      TEXT,
    path       TEXT        NOT NULL,
    status     SMALLINT    NOT NULL,
    latency_us BIGINT      NOT NULL,
    ip         TEXT,
    user_agent TEXT,
    request_id TEXT
);
CREATE INDEX audit_logs_client_id ON audit_logs (client_id, id);
-- No index on `at`: rows arrive in time order, so retention walks the primary key from the
-- oldest id and stops at the cutoff; one index fewer keeps auditing cheap.
