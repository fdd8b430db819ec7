//! `StoredEvent`: an event as read back from a store, and its JSON form (DESIGN.md "Stored/
//! returned event"): every request field plus `id`, `client_id`, `seq`, `received_at` and
//! `timestamp`, with `headers` carrying the server-set names beside the client's own.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use std::net::IpAddr;

use super::envelope::NewEvent;
use super::format::EventFormat;
use super::names::{ClientId, EventType};
use super::time::Timestamp;

#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub seq: i64,
    pub id: Uuid,
    pub client_id: String,
    pub event_type: String,
    pub user_id: Option<String>,
    /// Serialized JSON as stored: an object, except for a CloudEvent, whose data may be any
    /// JSON value (a string for text data, the base64 text for binary data).
    pub data: String,
    pub event_id: Option<String>,
    pub source: Option<String>,
    pub subject: Option<String>,
    pub occurred_at: Timestamp,
    pub received_at: Timestamp,
    pub correlation_id: Option<String>,
    pub status: Option<String>,
    pub ip_address: Option<String>,
    /// Serialized JSON object of the client's own headers.
    pub headers: String,
    pub partition_key: Option<String>,
    /// The wire format it came in.
    pub format: EventFormat,
}

impl StoredEvent {
    /// This stored event as a write to another store (`annals copy`), with its idempotency
    /// key's `content_hash` (all zeros without one, as for a new event). Its `seq`, `id` and
    /// `received_at` are the caller's to keep. The client id, event type and address are
    /// checked again: a row that no longer passes is named rather than carried over.
    pub fn into_new(self, content_hash: Option<[u8; 32]>) -> Result<NewEvent, String> {
        let seq = self.seq;
        let bad = |field: &str, e: String| format!("event {seq}: {field}: {e}");
        Ok(NewEvent {
            client_id: ClientId::parse_stored(self.client_id).map_err(|e| bad("client_id", e))?,
            event_type: EventType::parse_owned(self.event_type)
                .map_err(|e| bad("event_type", e))?,
            user_id: self.user_id,
            data: self.data,
            event_id: self.event_id,
            source: self.source,
            subject: self.subject,
            occurred_at: Some(self.occurred_at),
            correlation_id: self.correlation_id,
            status: self.status,
            ip_address: self
                .ip_address
                .map(|ip| {
                    ip.parse::<IpAddr>()
                        .map_err(|e| bad("ip_address", e.to_string()))
                })
                .transpose()?,
            headers: self.headers,
            partition_key: self.partition_key,
            format: self.format,
            content_hash: content_hash.unwrap_or_default(),
        })
    }

    /// Approximate size of the rendered event, for byte-bounded pages.
    pub fn approx_bytes(&self) -> usize {
        self.data.len() + self.headers.len() + 512
    }

    /// The headers object a reader sees: the client's own plus the seed-003 server headers.
    pub fn full_headers(&self) -> Map<String, Value> {
        let mut headers: Map<String, Value> =
            serde_json::from_str(&self.headers).unwrap_or_default();
        let text = |s: &Option<String>| s.clone().map(Value::String).unwrap_or(Value::Null);
        headers.insert("event_type".into(), Value::String(self.event_type.clone()));
        headers.insert("event_id".into(), text(&self.event_id));
        headers.insert(
            "occurred_at".into(),
            Value::String(self.occurred_at.to_rfc3339()),
        );
        headers.insert(
            "created_at".into(),
            Value::String(self.received_at.to_rfc3339()),
        );
        headers.insert("source".into(), text(&self.source));
        headers.insert(
            "partition_key".into(),
            Value::String(
                self.partition_key
                    .clone()
                    .unwrap_or_else(|| self.client_id.clone()),
            ),
        );
        headers
    }
}

impl Serialize for StoredEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let received = self.received_at.to_rfc3339();
        let data: &RawValue =
            serde_json::from_str(&self.data).map_err(serde::ser::Error::custom)?;
        let mut map = serializer.serialize_map(Some(18))?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("seq", &self.seq)?;
        map.serialize_entry("client_id", &self.client_id)?;
        map.serialize_entry("event_type", &self.event_type)?;
        map.serialize_entry("user_id", &self.user_id)?;
        map.serialize_entry("data", data)?;
        map.serialize_entry("event_id", &self.event_id)?;
        map.serialize_entry("source", &self.source)?;
        map.serialize_entry("subject", &self.subject)?;
        map.serialize_entry("occurred_at", &self.occurred_at.to_rfc3339())?;
        map.serialize_entry("correlation_id", &self.correlation_id)?;
        map.serialize_entry("status", &self.status)?;
        map.serialize_entry("ip_address", &self.ip_address)?;
        map.serialize_entry("partition_key", &self.partition_key)?;
        map.serialize_entry("headers", &self.full_headers())?;
        map.serialize_entry("received_at", &received)?;
        map.serialize_entry("timestamp", &received)?;
        map.serialize_entry("format", self.format.name())?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_server_headers_and_auditor_timestamp() {
        let e = StoredEvent {
            seq: 7,
            id: Uuid::nil(),
            client_id: "acme".into(),
            event_type: "iam.user.created".into(),
            user_id: Some("u1".into()),
            data: r#"{"k":1}"#.into(),
            event_id: None,
            source: Some("iam".into()),
            subject: None,
            occurred_at: Timestamp::from_micros(0),
            received_at: Timestamp::from_micros(1_000_000),
            correlation_id: None,
            status: None,
            ip_address: None,
            headers: r#"{"actor":"alice"}"#.into(),
            partition_key: None,
            format: EventFormat::Annals,
        };
        let v: Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["data"]["k"], 1);
        assert_eq!(v["timestamp"], "1970-01-01T00:00:01Z");
        assert_eq!(v["headers"]["actor"], "alice");
        assert_eq!(v["headers"]["partition_key"], "acme");
        assert_eq!(v["headers"]["created_at"], "1970-01-01T00:00:01Z");
        assert_eq!(v["headers"]["source"], "iam");
    }
}
