-- ANNALS_AUDIT_BODIES: masked request/response bodies (JSON, at most 4 KiB each).
ALTER TABLE audit_logs ADD COLUMN request_body TEXT;
ALTER TABLE audit_logs ADD COLUMN response_body TEXT;
