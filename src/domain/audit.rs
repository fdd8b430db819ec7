//! API-call audit records (seed 002): one per request, rejected ones included.

use serde_json::{Value, json};

use super::names::ClientId;
use super::page::IdPage;
use super::time::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub at: Timestamp,
    /// `None` when the caller was not authenticated.
    pub client_id: Option<String>,
    pub key_id: Option<String>,
    pub method: String,
    /// The matched route template (`/v1/events/{id}`), `None` for unknown paths.
    pub route: Option<String>,
    pub path: String,
    pub status: u16,
    pub latency_us: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// With `ANNALS_AUDIT_BODIES`: the masked request body (JSON, at most 4 KiB) or a
    /// description of one that is not kept.
    pub request_body: Option<String>,
    /// The same for the response body.
    pub response_body: Option<String>,
}

/// A stored audit record with its id.
#[derive(Clone, Debug)]
pub struct StoredAudit {
    pub id: i64,
    pub record: AuditRecord,
}

impl StoredAudit {
    pub fn to_json(&self) -> Value {
        let r = &self.record;
        let mut out = json!({
            "id": self.id,
            "timestamp": r.at.to_rfc3339(),
            "client_id": r.client_id,
            "key_id": r.key_id,
            "method": r.method,
            "endpoint": r.route,
            "path": r.path,
            "status": r.status,
            "latency_ms": r.latency_us as f64 / 1000.0,
            "ip_address": r.ip,
            "user_agent": r.user_agent,
            "request_id": r.request_id,
        });
        for (name, body) in [
            ("request_body", &r.request_body),
            ("response_body", &r.response_body),
        ] {
            if let Some(body) = body {
                out[name] = Value::String(body.clone());
            }
        }
        out
    }
}

#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// `None` = every client (admin only).
    pub client_id: Option<ClientId>,
    /// Matches the route template exactly, or any path starting with it.
    pub endpoint: Option<String>,
    pub method: Option<String>,
    pub status: Option<u16>,
    pub page: IdPage,
}

/// Longest user agent kept, in characters.
pub const MAX_USER_AGENT: usize = 512;
