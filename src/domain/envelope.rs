//! The event envelope (DESIGN.md "The event envelope"): parsing a JSON request object into a
//! `NewEvent`, collecting every problem with its field path rather than stopping at the first.
//!
//! Invariants of a `NewEvent`: `data` and `headers` are serialized JSON objects whose combined
//! size is within the configured limit; `headers` never holds a name the server sets itself;
//! `content_hash` is the SHA-256 of the request object as the client sent it (after the
//! `payload` → `data` alias, before any server default), which is what idempotency compares;
//! an event without an idempotency key is never compared, so its hash is left all zeros
//! (`content_hash`, shared by every wire format).

use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::format::EventFormat;
use super::masking::MaskPolicy;
use super::names::{ClientId, EventType};
use super::nul::json_has_nul;
use super::time::Timestamp;

/// Header names the server fills in from the envelope (seed 003). A client sets them through
/// the top-level fields instead, so the two can never disagree.
pub const SERVER_HEADERS: [&str; 5] = [
    "event_type",
    "event_id",
    "occurred_at",
    "created_at",
    "source",
];

const ALLOWED_FIELDS: &str = "event_type, user_id, data (or payload), event_id, source, subject, \
occurred_at, correlation_id, headers, status, ip_address, partition_key, client_id";

/// Maximum length, in characters, of the short string fields.
pub const MAX_ID_LEN: usize = 255;
pub const MAX_SUBJECT_LEN: usize = 1024;
pub const MAX_STATUS_LEN: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct EnvelopeRules<'a> {
    /// Largest `data` + `headers`, in serialized bytes (after masking).
    pub max_event_bytes: usize,
    /// What is masked before storage.
    pub mask: &'a MaskPolicy,
}

/// One problem with one field of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            index: None,
        }
    }
}

/// Why an event was refused: rule violations (`422`), or a size limit (`413`).
#[derive(Debug)]
pub struct Rejected {
    pub errors: Vec<FieldError>,
    pub too_large: bool,
}

/// A checked event, ready for a store. Built only by `parse_event`.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub client_id: ClientId,
    pub event_type: EventType,
    pub user_id: Option<String>,
    /// Serialized JSON: an object, except for a CloudEvent (see `StoredEvent::data`).
    pub data: String,
    pub event_id: Option<String>,
    pub source: Option<String>,
    pub subject: Option<String>,
    pub occurred_at: Option<Timestamp>,
    pub correlation_id: Option<String>,
    pub status: Option<String>,
    pub ip_address: Option<IpAddr>,
    /// Serialized JSON object of the client's own headers (never a `SERVER_HEADERS` name).
    pub headers: String,
    pub partition_key: Option<String>,
    /// The wire format it came in (read-back shape).
    pub format: EventFormat,
    /// Compared only between events with the same idempotency key (see the module's invariants).
    pub content_hash: [u8; 32],
}

impl NewEvent {
    /// Bytes this event occupies in the write queue (for byte-bounded backpressure).
    pub fn approx_bytes(&self) -> usize {
        self.data.len() + self.headers.len() + 256
    }

    /// The first field holding U+0000, which no store keeps (see `nul`): a JSON body was
    /// checked as it was parsed, but an event also comes from bodies that are not JSON.
    pub fn nul_field(&self) -> Option<&'static str> {
        let text = [
            ("event_type", Some(self.event_type.as_str())),
            ("user_id", self.user_id.as_deref()),
            ("event_id", self.event_id.as_deref()),
            ("source", self.source.as_deref()),
            ("subject", self.subject.as_deref()),
            ("correlation_id", self.correlation_id.as_deref()),
            ("status", self.status.as_deref()),
            ("partition_key", self.partition_key.as_deref()),
        ];
        text.into_iter()
            .find(|(_, value)| value.is_some_and(|v| v.contains('\0')))
            .map(|(field, _)| field)
            .or_else(|| json_has_nul(self.data.as_bytes()).then_some("data"))
            .or_else(|| json_has_nul(self.headers.as_bytes()).then_some("headers"))
    }
}

/// A valid envelope as an event of client `c` with the default rules, for other modules' tests.
#[cfg(test)]
pub(crate) fn test_event(envelope: Value) -> NewEvent {
    parse_event(
        envelope,
        &ClientId::parse("c").expect("valid client id"),
        &EnvelopeRules {
            max_event_bytes: 1 << 20,
            mask: &MaskPolicy::default(),
        },
    )
    .expect("a valid test envelope")
}

/// Parses one envelope. `default_client` is the calling key's client, used when the request
/// does not name one; the caller checks the key may write for the client the event names.
pub fn parse_event(
    value: Value,
    default_client: &ClientId,
    limits: &EnvelopeRules<'_>,
) -> Result<NewEvent, Rejected> {
    let Value::Object(mut map) = value else {
        return Err(Rejected {
            errors: vec![FieldError::new("", "an event must be a JSON object")],
            too_large: false,
        });
    };
    let mut errors = Vec::new();

    if let Some(payload) = map.remove("payload") {
        if map.contains_key("data") {
            errors.push(FieldError::new(
                "payload",
                "send either data or payload (an alias of data), not both",
            ));
        } else {
            map.insert(String::from("data"), payload);
        }
    }
    let content_hash = content_hash(&map, "event_id");

    let mut event_type = None;
    let mut user_id = None;
    let mut data = None;
    let mut event_id = None;
    let mut source = None;
    let mut subject = None;
    let mut occurred_at = None;
    let mut correlation_id = None;
    let mut status = None;
    let mut ip_address = None;
    let mut headers = None;
    let mut partition_key = None;
    let mut client_id = None;

    for (name, value) in map {
        if value.is_null() && name != "event_type" {
            continue; // an explicit null is the same as leaving the field out
        }
        let field = name.as_str();
        let result: Result<(), String> = match field {
            "event_type" => string(value, MAX_ID_LEN)
                .and_then(EventType::parse_owned)
                .map(|v| event_type = Some(v)),
            "user_id" => string(value, MAX_ID_LEN).map(|v| user_id = Some(v)),
            "event_id" => string(value, MAX_ID_LEN).map(|v| event_id = Some(v)),
            "source" => string(value, MAX_ID_LEN).map(|v| source = Some(v)),
            "subject" => string(value, MAX_SUBJECT_LEN).map(|v| subject = Some(v)),
            "correlation_id" => string(value, MAX_ID_LEN).map(|v| correlation_id = Some(v)),
            "status" => string(value, MAX_STATUS_LEN).map(|v| status = Some(v)),
            "partition_key" => string(value, MAX_ID_LEN).map(|v| partition_key = Some(v)),
            "occurred_at" => string(value, 64)
                .and_then(|s| Timestamp::parse_rfc3339(&s))
                .map(|v| occurred_at = Some(v)),
            "ip_address" => string(value, 64).and_then(|s| {
                s.parse::<IpAddr>()
                    .map(|ip| ip_address = Some(ip))
                    .map_err(|_| format!("'{s}' is not a valid IPv4 or IPv6 address"))
            }),
            "client_id" => string(value, ClientId::MAX_LEN)
                .and_then(ClientId::parse_owned)
                .map(|v| client_id = Some(v)),
            "data" => match value {
                Value::Object(obj) => {
                    data = Some(obj);
                    Ok(())
                }
                _ => Err(String::from("must be a JSON object")),
            },
            "headers" => match value {
                Value::Object(obj) => {
                    headers = Some(obj);
                    Ok(())
                }
                _ => Err(String::from("must be a JSON object")),
            },
            "id" => Err(String::from(
                "the event id is assigned by the server; send your own identifier as event_id",
            )),
            _ => Err(format!(
                "unknown field; allowed fields are {ALLOWED_FIELDS}"
            )),
        };
        if let Err(message) = result {
            errors.push(FieldError::new(field, message));
        }
    }

    let event_type = match event_type {
        Some(t) => Some(t),
        None => {
            if !errors.iter().any(|e| e.field == "event_type") {
                errors.push(FieldError::new("event_type", "is required"));
            }
            None
        }
    };

    let mut headers = headers.unwrap_or_default();
    check_headers(&mut headers, &mut partition_key, &mut errors);

    // Masking happens after the content hash: a retried event is compared as it was sent.
    let mut data = Value::Object(data.unwrap_or_default());
    let mut headers = Value::Object(headers);
    limits.mask.mask(&mut data);
    limits.mask.mask(&mut headers);
    let ip_address = ip_address.map(|ip| limits.mask.ip(ip));
    // Straight into a buffer: `Display` would pass every piece through a `fmt::Formatter`.
    let data_text = serde_json::to_string(&data).expect("a JSON value always serializes");
    let headers_text = serde_json::to_string(&headers).expect("a JSON value always serializes");
    if data_text.len() + headers_text.len() > limits.max_event_bytes {
        return Err(Rejected {
            errors: vec![FieldError::new(
                "data",
                format!(
                    "data and headers together are {} bytes; the limit is {} (ANNALS_MAX_EVENT_BYTES)",
                    data_text.len() + headers_text.len(),
                    limits.max_event_bytes
                ),
            )],
            too_large: true,
        });
    }

    match (event_type, errors.is_empty()) {
        (Some(event_type), true) => Ok(NewEvent {
            client_id: client_id.unwrap_or_else(|| default_client.clone()),
            event_type,
            user_id,
            data: data_text,
            event_id,
            source,
            subject,
            occurred_at,
            correlation_id,
            status,
            ip_address,
            headers: headers_text,
            partition_key,
            format: EventFormat::Annals,
            content_hash,
        }),
        _ => {
            errors.sort_by(|a, b| a.field.cmp(&b.field));
            Err(Rejected {
                errors,
                too_large: false,
            })
        }
    }
}

/// The hash idempotency compares (see the module's invariants): `hash_json` of the request
/// object when it carries its format's idempotency key `key_field`, else all zeros, since an
/// event without a key is never compared. Every wire format's parser takes it from here.
pub(crate) fn content_hash(map: &Map<String, Value>, key_field: &str) -> [u8; 32] {
    if map.contains_key(key_field) {
        hash_json(map)
    } else {
        [0; 32]
    }
}

/// SHA-256 of the canonical serialization (keys sorted: `serde_json::Map` is a B-tree), streamed
/// into the hasher without building the text.
fn hash_json(map: &Map<String, Value>) -> [u8; 32] {
    struct HashWriter(Sha256);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut writer = HashWriter(Sha256::new());
    serde_json::to_writer(&mut writer, map).expect("a JSON map always serializes");
    writer.0.finalize().into()
}

/// Refuses server-set header names and lifts `headers.partition_key` into the envelope field.
fn check_headers(
    headers: &mut Map<String, Value>,
    partition_key: &mut Option<String>,
    errors: &mut Vec<FieldError>,
) {
    for name in SERVER_HEADERS {
        if headers.contains_key(name) {
            errors.push(FieldError::new(
                format!("headers.{name}"),
                "is set by the server from the event itself; use the top-level field",
            ));
        }
    }
    if let Some(value) = headers.remove("partition_key") {
        match string(value, MAX_ID_LEN) {
            Ok(key) if partition_key.is_none() => *partition_key = Some(key),
            Ok(_) => errors.push(FieldError::new(
                "headers.partition_key",
                "send partition_key either at the top level or in headers, not both",
            )),
            Err(message) => errors.push(FieldError::new("headers.partition_key", message)),
        }
    }
}

/// A non-empty string of at most `max` characters, taken out of `value` (not copied).
pub(crate) fn string(value: Value, max: usize) -> Result<String, String> {
    match value {
        // No "leave it out" advice: required fields (`event_type`, a CloudEvent's `id`,
        // `source`, `type`) come through here too.
        Value::String(s) if s.is_empty() => Err(String::from("must not be empty")),
        Value::String(s) if s.chars().count() > max => {
            Err(format!("must be at most {max} characters"))
        }
        Value::String(s) => Ok(s),
        Value::Null => Err(String::from("is required")),
        other => Err(format!("must be a string, not {}", json_kind(&other))),
    }
}

pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NewEvent, Rejected> {
        parse_event(
            v,
            &ClientId::parse("acme").unwrap(),
            &EnvelopeRules {
                max_event_bytes: 1024,
                mask: &MaskPolicy::new("password", false),
            },
        )
    }

    fn fields(r: Rejected) -> Vec<String> {
        r.errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn minimal_event_gets_defaults() {
        let p = parse(json!({"event_type": "user.login"})).unwrap();
        assert_eq!(p.client_id.as_str(), "acme");
        assert_eq!(p.data, "{}");
        assert_eq!(p.headers, "{}");
    }

    #[test]
    fn payload_is_an_alias_of_data_and_hashes_the_same() {
        let a = parse(json!({"event_type": "t", "event_id": "e", "payload": {"x": 1}})).unwrap();
        let b = parse(json!({"event_type": "t", "event_id": "e", "data": {"x": 1}})).unwrap();
        assert_eq!(a.data, r#"{"x":1}"#);
        assert_eq!(a.content_hash, b.content_hash);
        let c = parse(json!({"event_type": "t", "event_id": "e", "data": {"x": 2}})).unwrap();
        assert_ne!(a.content_hash, c.content_hash);
    }

    #[test]
    fn only_an_event_with_an_idempotency_key_is_hashed() {
        let keyed = parse(json!({"event_type": "t", "event_id": "e"})).unwrap();
        assert_ne!(keyed.content_hash, [0; 32]);
        let unkeyed = parse(json!({"event_type": "t", "data": {"x": 1}})).unwrap();
        assert_eq!(unkeyed.content_hash, [0; 32]);
    }

    #[test]
    fn every_bad_field_is_reported() {
        let r = parse(json!({
            "user_id": 5, "data": [1], "occurred_at": "noon", "ip_address": "300.1.1.1",
            "id": "mine", "colour": "red", "headers": {"source": "x"}
        }))
        .unwrap_err();
        assert!(!r.too_large);
        assert_eq!(
            fields(r),
            [
                "colour",
                "data",
                "event_type",
                "headers.source",
                "id",
                "ip_address",
                "occurred_at",
                "user_id"
            ]
        );
    }

    #[test]
    fn both_data_and_payload_is_refused() {
        let r = parse(json!({"event_type": "t", "data": {}, "payload": {}})).unwrap_err();
        assert_eq!(fields(r), ["payload"]);
    }

    #[test]
    fn oversized_events_are_too_large() {
        let r = parse(json!({"event_type": "t", "data": {"x": "y".repeat(2000)}})).unwrap_err();
        assert!(r.too_large);
    }

    #[test]
    fn partition_key_may_come_from_headers() {
        let p =
            parse(json!({"event_type": "t", "headers": {"partition_key": "p1", "actor": "al"}}))
                .unwrap();
        assert_eq!(p.partition_key.as_deref(), Some("p1"));
        assert_eq!(p.headers, r#"{"actor":"al"}"#);
    }

    #[test]
    fn a_named_client_replaces_the_default() {
        let p = parse(json!({"event_type": "t", "client_id": "other"})).unwrap();
        assert_eq!(p.client_id.as_str(), "other");
    }
}
