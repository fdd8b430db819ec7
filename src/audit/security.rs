//! `SecurityRecorder`: Annals' own security events (failed logins, permission denials, floods,
//! keys hammering their rate limit), aggregated in memory and flushed every `FLUSH` so a flood
//! costs one row per (minute, kind, address or key) with a count — never one write per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::domain::Timestamp;
use crate::domain::security::{NewSecurityEvent, SYSTEM_CLIENT, SecurityEventType, Severity};
use crate::store::Store;

const FLUSH: Duration = Duration::from_secs(1);
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
}

impl SecurityRecorder {
    /// Starts the flusher; it runs until aborted (the last flush happens in `flush`).
    pub fn start(store: Arc<dyn Store>) -> (Self, JoinHandle<()>) {
        let recorder = Self::default();
        let this = recorder.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH);
            loop {
                tick.tick().await;
                this.flush(store.as_ref()).await;
            }
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
        if let Err(e) = store.record_security(batch).await {
            tracing::warn!(error = %e, rows = n, "security events could not be stored");
        }
    }
}
