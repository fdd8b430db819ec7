//! Security events (seed 004 `SECURITY_EVENT`): failed logins, permission denials, suspicious
//! activity, with a severity and a review workflow. Annals records its own under
//! `SYSTEM_CLIENT`; clients report their applications' ones under their own client.

use serde_json::Value;

use super::page::IdPage;
use super::time::Timestamp;

/// The client Annals' own security events belong to (never a key's client: ids can't contain `$`).
pub const SYSTEM_CLIENT: &str = "$annals";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityEventType {
    FailedLogin,
    PermissionDenied,
    SuspiciousActivity,
}

impl SecurityEventType {
    pub const ALL: [Self; 3] = [
        Self::FailedLogin,
        Self::PermissionDenied,
        Self::SuspiciousActivity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailedLogin => "FAILED_LOGIN",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::SuspiciousActivity => "SUSPICIOUS_ACTIVITY",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == text)
            .ok_or_else(|| {
                String::from("must be FAILED_LOGIN, PERMISSION_DENIED or SUSPICIOUS_ACTIVITY")
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Self; 4] = [Self::Low, Self::Medium, Self::High, Self::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "LOW",
            Self::Medium => "MEDIUM",
            Self::High => "HIGH",
            Self::Critical => "CRITICAL",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| String::from("must be LOW, MEDIUM, HIGH or CRITICAL"))
    }
}

/// A security event to record. Events with the same `dedup_key` are one row whose `count` grows:
/// a flood of failures from one address is one row per minute, not one per request.
#[derive(Clone, Debug)]
pub struct NewSecurityEvent {
    pub client_id: String,
    pub event_type: SecurityEventType,
    pub severity: Severity,
    pub user_id: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    /// Serialized JSON object.
    pub details: String,
    pub requires_review: bool,
    pub occurred_at: Timestamp,
    pub dedup_key: Option<String>,
    pub count: i64,
}

#[derive(Clone, Debug)]
pub struct StoredSecurityEvent {
    pub id: i64,
    pub event: NewSecurityEvent,
    pub reviewed_by: Option<String>,
    pub reviewed_at: Option<Timestamp>,
}

/// A security event as `GET /v1/security-events` shows it (seed 004's fields).
#[derive(Debug, serde::Serialize)]
pub struct SecurityEventView<'a> {
    pub id: i64,
    /// `null` for Annals' own events (`system: true`).
    pub client_id: Option<&'a str>,
    pub system: bool,
    pub event_type: &'static str,
    pub severity: &'static str,
    pub user_id: Option<&'a str>,
    pub ip_address: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub event_details: Value,
    pub count: i64,
    pub requires_review: bool,
    pub reviewed_by: Option<&'a str>,
    pub reviewed_at: Option<String>,
    pub occurred_at: String,
}

impl StoredSecurityEvent {
    pub fn view(&self) -> SecurityEventView<'_> {
        let e = &self.event;
        let system = e.client_id == SYSTEM_CLIENT;
        SecurityEventView {
            id: self.id,
            client_id: (!system).then_some(e.client_id.as_str()),
            system,
            event_type: e.event_type.as_str(),
            severity: e.severity.as_str(),
            user_id: e.user_id.as_deref(),
            ip_address: e.ip_address.as_deref(),
            user_agent: e.user_agent.as_deref(),
            event_details: serde_json::from_str(&e.details).unwrap_or(Value::Null),
            count: e.count,
            requires_review: e.requires_review,
            reviewed_by: self.reviewed_by.as_deref(),
            reviewed_at: self.reviewed_at.map(Timestamp::to_rfc3339),
            occurred_at: e.occurred_at.to_rfc3339(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SecurityQuery {
    /// Clients whose events are visible; `None` = all (admin).
    pub client_id: Option<String>,
    pub event_type: Option<SecurityEventType>,
    pub severity: Option<Severity>,
    pub requires_review: Option<bool>,
    pub page: IdPage,
}
