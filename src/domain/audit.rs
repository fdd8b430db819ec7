//! API-call audit records (seed 002): one per request, rejected ones included.

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

#[cfg(test)]
impl AuditRecord {
    /// A record of client `c`'s `POST /v1/events/{n}`, answered 201, for tests.
    pub fn sample(n: usize) -> Self {
        Self {
            at: Timestamp::now(),
            client_id: Some(String::from("c")),
            key_id: None,
            method: String::from("POST"),
            route: Some(String::from("/v1/events")),
            path: format!("/v1/events/{n}"),
            status: 201,
            latency_us: 1,
            ip: None,
            user_agent: None,
            request_id: None,
            request_body: None,
            response_body: None,
        }
    }
}

impl AuditRecord {
    /// Roughly the memory this record holds while it waits in the audit queue.
    pub fn approx_bytes(&self) -> usize {
        let text = |t: &Option<String>| t.as_ref().map_or(0, String::len);
        std::mem::size_of::<Self>()
            + self.method.len()
            + self.path.len()
            + text(&self.client_id)
            + text(&self.key_id)
            + text(&self.route)
            + text(&self.ip)
            + text(&self.user_agent)
            + text(&self.request_id)
            + text(&self.request_body)
            + text(&self.response_body)
    }
}

/// An audit record as `GET /v1/audit/logs` shows it (seed 002's field names).
#[derive(Debug, serde::Serialize)]
pub struct AuditView<'a> {
    pub id: i64,
    pub timestamp: String,
    pub client_id: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub method: &'a str,
    /// The matched route template.
    pub endpoint: Option<&'a str>,
    pub path: &'a str,
    pub status: u16,
    pub latency_ms: f64,
    pub ip_address: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_id: Option<&'a str>,
    /// Only with `ANNALS_AUDIT_BODIES`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body: Option<&'a str>,
}

/// A stored audit record with its id.
#[derive(Clone, Debug)]
pub struct StoredAudit {
    pub id: i64,
    pub record: AuditRecord,
}

impl StoredAudit {
    pub fn view(&self) -> AuditView<'_> {
        let r = &self.record;
        AuditView {
            id: self.id,
            timestamp: r.at.to_rfc3339(),
            client_id: r.client_id.as_deref(),
            key_id: r.key_id.as_deref(),
            method: &r.method,
            endpoint: r.route.as_deref(),
            path: &r.path,
            status: r.status,
            latency_ms: r.latency_us as f64 / 1000.0,
            ip_address: r.ip.as_deref(),
            user_agent: r.user_agent.as_deref(),
            request_id: r.request_id.as_deref(),
            request_body: r.request_body.as_deref(),
            response_body: r.response_body.as_deref(),
        }
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
    /// Only calls answered with an error (status 400 or above): seed 002's
    /// `?endpoint=failed`, or `?failed=true`.
    pub failed: bool,
    pub page: IdPage,
}

/// Longest user agent kept, in characters.
pub const MAX_USER_AGENT: usize = 512;
