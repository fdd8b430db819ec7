//! `SecurityRecorder`: Annals' own security events (failed logins, permission denials, floods,
//! keys hammering their rate limit), aggregated in memory and flushed every `FLUSH` so a flood
//! costs one row per (minute, kind, address or key) with a count — never one write per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::domain::masking::MaskPolicy;
use crate::domain::security::{NewSecurityEvent, SYSTEM_CLIENT, SecurityEventType, Severity};
use crate::domain::{ClientId, EnvelopeRules, Timestamp, parse_event};
use crate::store::Store;

const FLUSH: Duration = Duration::from_secs(1);
/// Largest published security event: their details are small and bounded.
const PUBLISHED_MAX_BYTES: usize = 64 * 1024;
/// Distinct pending rows held between flushes; past this, new kinds are dropped (counted rows
/// already pending keep counting).
const MAX_PENDING: usize = 10_000;

/// What happened, for one system security event.
pub struct Incident<'a> {
    pub event_type: SecurityEventType,
    pub severity: Severity,
    /// What the row is about besides the address: a key id, a reason.
    pub subject: &'a str,
    pub key_id: Option<&'a str>,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
    pub requires_review: bool,
    pub details: Value,
}

#[derive(Clone, Default)]
pub struct SecurityRecorder {
    pending: Arc<Mutex<HashMap<String, NewSecurityEvent>>>,
    /// What the published events' fields go through, as every event's do.
    mask: MaskPolicy,
}

impl SecurityRecorder {
    /// Starts the flusher; it runs until aborted (the last flush happens in `flush`).
    pub fn start(store: Arc<dyn Store>, mask: MaskPolicy) -> (Self, JoinHandle<()>) {
        let recorder = Self {
            mask,
            ..Self::default()
        };
        let this = recorder.clone();
        let task = crate::jobs::every(FLUSH, move || {
            let (this, store) = (this.clone(), store.clone());
            async move { this.flush(store.as_ref()).await }
        });
        (recorder, task)
    }

    pub fn record(&self, incident: Incident<'_>) {
        let now = Timestamp::now();
        let minute = now.as_micros() / 60_000_000;
        let ip = incident.ip.map(|ip| ip.to_string());
        let key = format!(
            "{minute}:{}:{}:{}",
            incident.event_type.as_str(),
            ip.as_deref().unwrap_or("-"),
            incident.subject
        );
        let mut pending = self.pending.lock().expect("security recorder lock");
        if let Some(existing) = pending.get_mut(&key) {
            existing.count += 1;
            return;
        }
        if pending.len() >= MAX_PENDING {
            return;
        }
        pending.insert(
            key.clone(),
            NewSecurityEvent {
                client_id: String::from(SYSTEM_CLIENT),
                event_type: incident.event_type,
                severity: incident.severity,
                user_id: incident.key_id.map(String::from),
                ip_address: ip,
                user_agent: incident.user_agent.map(|u| u.chars().take(512).collect()),
                details: incident.details.to_string(),
                requires_review: incident.requires_review,
                occurred_at: now,
                dedup_key: Some(key),
                count: 1,
            },
        );
    }

    /// Writes what is pending (also called once at shutdown).
    pub async fn flush(&self, store: &dyn Store) {
        let batch: Vec<NewSecurityEvent> = {
            let mut pending = self.pending.lock().expect("security recorder lock");
            pending.drain().map(|(_, e)| e).collect()
        };
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        let published: Vec<Value> = batch.iter().map(published_envelope).collect();
        let ids = match store.record_security(batch).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, rows = n, "security events could not be stored");
                return;
            }
        };
        self.publish(store, published, ids).await;
    }

    /// Records the flushed system security events as events of the system client, typed
    /// `annals.security.<kind>`: on the bus they reach admin subscriptions (a client's match only
    /// its own events), and admins read them with the other events.
    async fn publish(&self, store: &dyn Store, envelopes: Vec<Value>, ids: Vec<i64>) {
        let rules = EnvelopeRules {
            max_event_bytes: PUBLISHED_MAX_BYTES,
            mask: &self.mask,
        };
        let system = ClientId::system();
        let mut events = Vec::with_capacity(envelopes.len());
        for (mut envelope, id) in envelopes.into_iter().zip(ids) {
            envelope["data"]["security_event_id"] = Value::from(id);
            match parse_event(envelope, &system, &rules) {
                Ok(event) => events.push(event),
                Err(rejected) => tracing::warn!(
                    errors = ?rejected.errors,
                    "a system security event could not be published"
                ),
            }
        }
        if events.is_empty() {
            return;
        }
        if let Err(e) = store.append(events).await {
            tracing::warn!(error = %e, "system security events could not be published");
        }
    }
}

/// A system security event as the envelope of its published event (its row id is added once
/// stored). Client-reported security events are not published: they are the client's own.
fn published_envelope(e: &NewSecurityEvent) -> Value {
    let details: Value = serde_json::from_str(&e.details).unwrap_or(Value::Null);
    let mut envelope = serde_json::json!({
        "event_type": format!("annals.security.{}", e.event_type.as_str().to_ascii_lowercase()),
        "occurred_at": e.occurred_at.to_rfc3339(),
        "data": {
            "severity": e.severity.as_str(),
            "count": e.count,
            "requires_review": e.requires_review,
            "user_agent": e.user_agent,
            "details": details,
        },
    });
    if let Some(key) = &e.user_id {
        envelope["user_id"] = Value::from(key.as_str());
    }
    if let Some(ip) = &e.ip_address {
        envelope["ip_address"] = Value::from(ip.as_str());
    }
    envelope
}
