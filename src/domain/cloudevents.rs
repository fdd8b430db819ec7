//! CloudEvents 1.0 (DESIGN.md "CloudEvents"): the JSON event format (structured and batch
//! mode), the HTTP binary mode, and rendering any stored event as a structured CloudEvent.
//!
//! Mapping: `type`→`event_type`, `source`→`source`, `id`→`event_id` (so source + id is the
//! idempotency key, as CloudEvents requires), `time`→`occurred_at`, `subject`→`subject`,
//! `partitionkey` (the partitioning extension)→`partition_key`; `datacontenttype`, `dataschema`
//! and every extension→`headers`. `data` is kept as it came: a JSON value as JSON (it need not be
//! an object), text as a JSON string, `data_base64` as its text with the
//! `CloudEventBase64` format; an event without data stores JSON `null`.
//!
//! Invariant: an event that came in as a CloudEvent renders back with exactly the attributes
//! it was sent with (times normalized to UTC), so a consumer can compare or forward it.

use serde_json::{Map, Value};

use super::StoredEvent;
use super::envelope::{
    EnvelopeRules, FieldError, MAX_ID_LEN, MAX_SUBJECT_LEN, NewEvent, Rejected, content_hash,
    json_kind, string,
};
use super::format::EventFormat;
use super::names::{ClientId, EventType};
use super::time::Timestamp;
use super::unique_keys::{self, JsonError};

/// Media type of one structured-mode event.
pub const STRUCTURED_TYPE: &str = "application/cloudevents+json";
/// Media type of a batch of structured events (a JSON array).
pub const BATCH_TYPE: &str = "application/cloudevents-batch+json";
pub const SPEC_VERSION: &str = "1.0";
/// Extension names may be longer than the spec's recommended 20 characters, but not unbounded.
const MAX_EXTENSION_NAME: usize = 64;

/// The essence of a media type: `type/subtype`, lower-case, without parameters. Borrowed
/// when the type is already lower-case (nearly always: it is read for every ingested event).
pub fn media_essence(content_type: &str) -> std::borrow::Cow<'_, str> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(essence.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(essence)
    }
}

/// Is `content_type` (a media type, parameters allowed) JSON, so `data` is a JSON value?
/// No content type means JSON (the CloudEvents default).
pub fn is_json_media_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let essence = media_essence(content_type);
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// Is `content_type` text that is kept as a string (rather than base64) when it is UTF-8?
fn is_text_media_type(content_type: &str) -> bool {
    let essence = media_essence(content_type);
    essence.starts_with("text/")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_ref(),
            "application/xml" | "application/javascript" | "application/x-www-form-urlencoded"
        )
}

/// An absolute URI: a scheme, then `:` and the rest, without spaces.
fn absolute_uri(text: &str) -> Result<(), String> {
    let scheme_ok = text.split_once(':').is_some_and(|(scheme, rest)| {
        !rest.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if scheme_ok && !text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Ok(())
    } else {
        Err(String::from(
            "must be an absolute URI, e.g. https://example.com/schema",
        ))
    }
}

/// A URI-reference: non-empty, without whitespace or control characters.
fn uri_reference(text: String) -> Result<String, String> {
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(String::from(
            "must be a URI-reference (no spaces or control characters)",
        ))
    } else {
        Ok(text)
    }
}

fn extension_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name.len() <= MAX_EXTENSION_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(format!(
            "unknown attribute; an extension attribute name must be 1 to {MAX_EXTENSION_NAME} lower-case letters or digits"
        ))
    }
}

/// An extension value: a string, a boolean or an integer (the JSON forms of the CloudEvents
/// types; URI, timestamp and binary values travel as strings).
fn extension_value(value: &Value) -> Result<(), String> {
    match value {
        Value::String(_) | Value::Bool(_) => Ok(()),
        Value::Number(n) if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) => Ok(()),
        Value::Number(_) => Err(String::from("an integer attribute must fit in 32 bits")),
        other => Err(format!(
            "must be a string, boolean or integer, not {}",
            json_kind(other)
        )),
    }
}

/// Parses one structured-mode CloudEvent (a JSON object), collecting every problem.
pub fn parse_structured(
    value: Value,
    client: &ClientId,
    rules: &EnvelopeRules<'_>,
) -> Result<NewEvent, Rejected> {
    let Value::Object(map) = value else {
        return Err(Rejected {
            errors: vec![FieldError::new("", "a CloudEvent must be a JSON object")],
            too_large: false,
        });
    };
    let content_hash = content_hash(&map, "id");
    let mut errors = Vec::new();
    let mut event_type = None;
    let mut event_id = None;
    let mut source = None;
    let mut spec_version = None;
    let mut subject = None;
    let mut occurred_at = None;
    let mut partition_key = None;
    let mut data = None;
    let mut data_base64 = None;
    let mut headers = Map::new();

    for (name, value) in map {
        if value.is_null() {
            continue; // the JSON format's way of leaving an attribute out
        }
        let result: Result<(), String> = match name.as_str() {
            "specversion" => match &value {
                Value::String(v) if v == SPEC_VERSION => {
                    spec_version = Some(());
                    Ok(())
                }
                Value::String(v) => Err(format!(
                    "'{}' is not supported; this server accepts CloudEvents {SPEC_VERSION}",
                    super::time::truncate_for_message(v)
                )),
                other => Err(format!(
                    "must be the string \"{SPEC_VERSION}\", not {}",
                    json_kind(other)
                )),
            },
            "id" => string(value, MAX_ID_LEN).map(|v| event_id = Some(v)),
            "source" => string(value, MAX_ID_LEN)
                .and_then(uri_reference)
                .map(|v| source = Some(v)),
            "type" => string(value, EventType::MAX_LEN)
                .and_then(EventType::parse_owned)
                .map(|v| event_type = Some(v)),
            "subject" => string(value, MAX_SUBJECT_LEN).map(|v| subject = Some(v)),
            "time" => string(value, 64)
                .and_then(|v| Timestamp::parse_rfc3339(&v))
                .map(|v| occurred_at = Some(v)),
            "datacontenttype" => string(value, MAX_ID_LEN).map(|v| {
                headers.insert(name.clone(), Value::String(v));
            }),
            "dataschema" => string(value, MAX_SUBJECT_LEN).and_then(|v| {
                absolute_uri(&v)?;
                headers.insert(name.clone(), Value::String(v));
                Ok(())
            }),
            "partitionkey" => string(value, MAX_ID_LEN).map(|v| partition_key = Some(v)),
            "data" => {
                data = Some(value);
                Ok(())
            }
            "data_base64" => match value {
                Value::String(text) => {
                    data_base64 = Some(text);
                    Ok(())
                }
                other => Err(format!(
                    "must be a base64 string, not {}",
                    json_kind(&other)
                )),
            },
            other => extension_name(other)
                .and_then(|()| extension_value(&value))
                .map(|()| {
                    headers.insert(name.clone(), value);
                }),
        };
        if let Err(message) = result {
            errors.push(FieldError::new(name, message));
        }
    }
    for (present, name) in [
        (spec_version.is_some(), "specversion"),
        (event_id.is_some(), "id"),
        (source.is_some(), "source"),
        (event_type.is_some(), "type"),
    ] {
        if !present && !errors.iter().any(|e| e.field == name) {
            errors.push(FieldError::new(name, "is required"));
        }
    }
    if data.is_some() && data_base64.is_some() {
        errors.push(FieldError::new(
            "data_base64",
            "send either data or data_base64, not both",
        ));
    }
    let Some(event_type) = event_type.filter(|_| errors.is_empty()) else {
        errors.sort_by(|a, b| a.field.cmp(&b.field));
        return Err(Rejected {
            errors,
            too_large: false,
        });
    };

    let (mut data, format) = match (data, data_base64) {
        (_, Some(text)) => (Value::String(text), EventFormat::CloudEventBase64),
        (Some(value), None) => (value, EventFormat::CloudEvent),
        (None, None) => (Value::Null, EventFormat::CloudEvent),
    };
    let mut headers = Value::Object(headers);
    if format == EventFormat::CloudEvent {
        rules.mask.mask(&mut data);
    }
    rules.mask.mask(&mut headers);
    let data = data.to_string();
    let headers = headers.to_string();
    if data.len() + headers.len() > rules.max_event_bytes {
        return Err(Rejected {
            errors: vec![FieldError::new(
                if format == EventFormat::CloudEventBase64 {
                    "data_base64"
                } else {
                    "data"
                },
                format!(
                    "data and attributes together are {} bytes; the limit is {} (ANNALS_MAX_EVENT_BYTES)",
                    data.len() + headers.len(),
                    rules.max_event_bytes
                ),
            )],
            too_large: true,
        });
    }
    Ok(NewEvent {
        client_id: client.clone(),
        event_type,
        user_id: None,
        data,
        event_id,
        source,
        subject,
        occurred_at,
        correlation_id: None,
        status: None,
        ip_address: None,
        headers,
        partition_key,
        format,
        content_hash,
    })
}

/// The structured form of a binary-mode message: `attributes` are the `ce-*` headers (names
/// without the prefix, lower-case; values percent-decoded), `content_type` the message's, `body`
/// its bytes. JSON bodies become `data` (a body that is not JSON, or repeats a key, is the
/// `Err`), UTF-8 text bodies a string `data`, anything else `data_base64`; an empty body is an
/// event without data.
pub fn binary_to_structured(
    attributes: Vec<(String, String)>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Value, JsonError> {
    let mut map: Map<String, Value> = attributes
        .into_iter()
        .map(|(name, value)| (name, Value::String(value)))
        .collect();
    if let Some(content_type) = content_type {
        map.insert(
            String::from("datacontenttype"),
            Value::String(content_type.to_string()),
        );
    }
    if !body.is_empty() {
        if is_json_media_type(content_type) {
            let data = unique_keys::from_slice(body)?;
            map.insert(String::from("data"), data);
        } else if let Some(text) = content_type
            .filter(|t| is_text_media_type(t))
            .and_then(|_| std::str::from_utf8(body).ok())
        {
            map.insert(String::from("data"), Value::String(text.to_string()));
        } else {
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(body);
            map.insert(String::from("data_base64"), Value::String(encoded));
        }
    }
    Ok(Value::Object(map))
}

/// The attribute a binary-mode error is about, named as the client sent it (`ce-id`,
/// `content-type`, the body).
pub fn binary_field_name(field: &str) -> String {
    match field {
        "datacontenttype" => String::from("content-type"),
        "data" | "data_base64" | "" => String::from("body"),
        other => format!("ce-{other}"),
    }
}

/// Any stored event as a structured CloudEvent. An event that came in as one renders as it
/// came; others map their envelope fields (`id` = `event_id`, else the server id; `source` =
/// `source`, else `urn:annals:client:<client_id>`) and keep their JSON `data`, with the other
/// envelope fields and the headers whose names are valid extension names as extensions.
pub fn render_cloudevent(event: &StoredEvent) -> Value {
    let mut out = Map::new();
    out.insert("specversion".into(), Value::String(SPEC_VERSION.into()));
    out.insert(
        "id".into(),
        Value::String(
            event
                .event_id
                .clone()
                .unwrap_or_else(|| event.id.to_string()),
        ),
    );
    out.insert(
        "source".into(),
        Value::String(
            event
                .source
                .clone()
                .unwrap_or_else(|| format!("urn:annals:client:{}", event.client_id)),
        ),
    );
    out.insert("type".into(), Value::String(event.event_type.clone()));
    out.insert("time".into(), Value::String(event.occurred_at.to_rfc3339()));
    if let Some(subject) = &event.subject {
        out.insert("subject".into(), Value::String(subject.clone()));
    }
    if let Some(key) = &event.partition_key {
        out.insert("partitionkey".into(), Value::String(key.clone()));
    }
    let headers: Map<String, Value> = serde_json::from_str(&event.headers).unwrap_or_default();
    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
    match event.format {
        EventFormat::CloudEvent | EventFormat::CloudEventBase64 => {
            out.extend(headers);
            match (event.format, data) {
                (_, Value::Null) => {}
                (EventFormat::CloudEventBase64, data) => {
                    out.insert("data_base64".into(), data);
                }
                (_, data) => {
                    out.insert("data".into(), data);
                }
            }
        }
        EventFormat::Annals | EventFormat::ApiEvent => {
            for (name, value) in [
                ("userid", &event.user_id),
                ("correlationid", &event.correlation_id),
                ("status", &event.status),
                ("ipaddress", &event.ip_address),
            ] {
                if let Some(value) = value {
                    out.insert(name.into(), Value::String(value.clone()));
                }
            }
            for (name, value) in headers {
                if extension_name(&name).is_ok() && extension_value(&value).is_ok() {
                    out.entry(name).or_insert(value);
                }
            }
            out.insert(
                "datacontenttype".into(),
                Value::String("application/json".into()),
            );
            out.insert("data".into(), data);
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::masking::MaskPolicy;
    use serde_json::json;

    fn parse(v: Value) -> Result<NewEvent, Rejected> {
        parse_structured(
            v,
            &ClientId::parse("acme").unwrap(),
            &EnvelopeRules {
                max_event_bytes: 4096,
                mask: &MaskPolicy::new("password", false),
            },
        )
    }

    fn stored(e: NewEvent) -> StoredEvent {
        StoredEvent {
            seq: 1,
            id: uuid::Uuid::nil(),
            client_id: e.client_id.as_str().into(),
            event_type: e.event_type.as_str().into(),
            user_id: e.user_id,
            data: e.data,
            event_id: e.event_id,
            source: e.source,
            subject: e.subject,
            occurred_at: e.occurred_at.unwrap_or(Timestamp::from_micros(0)),
            received_at: Timestamp::from_micros(0),
            correlation_id: e.correlation_id,
            status: e.status,
            ip_address: e.ip_address.map(|ip| ip.to_string()),
            headers: e.headers,
            partition_key: e.partition_key,
            format: e.format,
        }
    }

    /// The JSON format specification's own examples (v1.0.2, section 3.1), minus the null
    /// attributes, which mean "absent".
    fn spec_examples() -> Vec<Value> {
        vec![
            json!({
                "specversion": "1.0", "type": "com.example.someevent", "source": "/mycontext",
                "id": "A234-1234-1234", "time": "2018-04-05T17:31:00Z",
                "comexampleextension1": "value", "comexampleothervalue": 5,
                "datacontenttype": "application/vnd.apache.thrift.binary",
                "data_base64": "... base64 encoded string ..."
            }),
            json!({
                "specversion": "1.0", "type": "com.example.someevent", "source": "/mycontext",
                "id": "B234-1234-1234", "time": "2018-04-05T17:31:00Z",
                "comexampleextension1": "value", "comexampleothervalue": 5,
                "datacontenttype": "text/xml", "data": "<much wow=\"xml\"/>"
            }),
            json!({
                "specversion": "1.0", "type": "com.example.someevent", "source": "/mycontext",
                "id": "C234-1234-1234", "time": "2018-04-05T17:31:00Z",
                "comexampleextension1": "value", "comexampleothervalue": 5,
                "datacontenttype": "application/json",
                "data": {"appinfoA": "abc", "appinfoB": 123, "appinfoC": true}
            }),
        ]
    }

    #[test]
    fn spec_examples_round_trip_exactly() {
        for example in spec_examples() {
            let event = parse(example.clone()).unwrap();
            assert_eq!(render_cloudevent(&stored(event)), example);
        }
    }

    #[test]
    fn null_attributes_are_absent() {
        let mut v = spec_examples().remove(2);
        v["subject"] = Value::Null;
        v["unsetextension"] = Value::Null;
        let e = parse(v).unwrap();
        assert_eq!(e.subject, None);
        assert!(!e.headers.contains("unsetextension"));
    }

    #[test]
    fn maps_onto_the_envelope() {
        let e = parse(spec_examples().remove(2)).unwrap();
        assert_eq!(e.event_id.as_deref(), Some("C234-1234-1234"));
        assert_eq!(e.source.as_deref(), Some("/mycontext"));
        assert_eq!(e.event_type.as_str(), "com.example.someevent");
        assert_eq!(e.occurred_at.unwrap().to_rfc3339(), "2018-04-05T17:31:00Z");
        let headers: Value = serde_json::from_str(&e.headers).unwrap();
        assert_eq!(headers["comexampleothervalue"], 5);
        assert_eq!(headers["datacontenttype"], "application/json");
    }

    #[test]
    fn required_attributes_and_bad_values() {
        let fields = |v: Value| -> Vec<String> {
            parse(v)
                .unwrap_err()
                .errors
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields(json!({})), ["id", "source", "specversion", "type"]);
        assert_eq!(
            fields(json!({
                "specversion": "0.3", "id": "", "source": "has space", "type": "a b",
                "time": "noon", "dataschema": "relative/path", "Bad-Name": 1,
                "objext": {"a": 1}, "bigint": 5_000_000_000i64,
                "data": {}, "data_base64": "AAAA"
            })),
            [
                "Bad-Name",
                "bigint",
                "data_base64",
                "dataschema",
                "id",
                "objext",
                "source",
                "specversion",
                "time",
                "type"
            ]
        );
    }

    #[test]
    fn data_of_any_json_type_is_kept() {
        for data in [
            json!([1, 2]),
            json!("text"),
            json!(42),
            json!({"password": "x"}),
        ] {
            let mut v = spec_examples().remove(2);
            v["data"] = data.clone();
            let e = parse(v).unwrap();
            let back = render_cloudevent(&stored(e));
            if data.is_object() {
                assert_eq!(back["data"]["password"], "***", "masked before storage");
            } else {
                assert_eq!(back["data"], data);
            }
        }
    }

    #[test]
    fn binary_mode_bodies() {
        let attrs = || {
            vec![
                ("specversion".to_string(), "1.0".to_string()),
                ("id".to_string(), "1".to_string()),
            ]
        };
        let v = binary_to_structured(
            attrs(),
            Some("application/json; charset=utf-8"),
            br#"{"a":1}"#,
        )
        .unwrap();
        assert_eq!(v["data"]["a"], 1);
        let v = binary_to_structured(attrs(), Some("text/plain"), b"hello").unwrap();
        assert_eq!(v["data"], "hello");
        let v = binary_to_structured(attrs(), Some("application/octet-stream"), &[0, 159, 146])
            .unwrap();
        assert_eq!(v["data_base64"], "AJ+S");
        let v = binary_to_structured(attrs(), None, b"").unwrap();
        assert!(v.get("data").is_none());
        assert!(binary_to_structured(attrs(), Some("application/json"), b"{").is_err());
    }

    #[test]
    fn envelope_events_render_as_cloudevents() {
        let e = crate::domain::parse_event(
            json!({"event_type": "billing.invoice.paid", "data": {"n": 1}, "user_id": "u1",
                   "headers": {"actor": "al", "Not-Ext": "x"}}),
            &ClientId::parse("acme").unwrap(),
            &EnvelopeRules {
                max_event_bytes: 4096,
                mask: &MaskPolicy::default(),
            },
        )
        .unwrap();
        let ce = render_cloudevent(&stored(e));
        assert_eq!(ce["id"], uuid::Uuid::nil().to_string());
        assert_eq!(ce["source"], "urn:annals:client:acme");
        assert_eq!(ce["type"], "billing.invoice.paid");
        assert_eq!(ce["userid"], "u1");
        assert_eq!(ce["actor"], "al");
        assert!(ce.get("Not-Ext").is_none());
        assert_eq!(ce["data"]["n"], 1);
    }
}
