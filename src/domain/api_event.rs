//! The seed-000 `ApiEvent` (DESIGN.md "Seed 000 view"): its exact validation rules, its mapping
//! onto the one event table, and its camelCase read-back shape.
//!
//! Rules, as in the seed's Pydantic model and field table: `eventType` REQUEST|RESPONSE|ERROR,
//! `sourceSystem` ≤ 100 characters, `eventTime` ISO 8601, `eventData.endpoint` ≤ 500,
//! `eventData.method` one of the HTTP methods, `eventData.requestBody`/`responseBody` objects of
//! at most 1 MiB each, `eventData.statusCode` an integer 100–599, `correlationId` a UUID,
//! `userContext.userId`/`clientId` ≤ 100, `userContext.ipAddress` an IPv4/IPv6 address, `status`
//! SUCCESS|FAILURE. Every failing field is reported with its JSON path.
//!
//! Mapping: eventType→`event_type`, sourceSystem→`source`, eventTime→`occurred_at`,
//! eventData→`data`, correlationId→`correlation_id`, userContext.userId→`user_id`,
//! userContext.ipAddress→`ip_address`, the whole userContext→`headers.userContext`,
//! status→`status`; a client `id` becomes `event_id` (the idempotency key with sourceSystem).
//! `created_at`/`updated_at` are always the server's (a client's are ignored). Extra fields
//! inside `eventData` and `userContext` are kept (the seed's "extensible JSON fields"); unknown
//! top-level fields are refused, since there is nowhere to keep them.

use std::net::IpAddr;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::StoredEvent;
use super::envelope::{EnvelopeRules, FieldError, NewEvent, Rejected, content_hash, json_kind};
use super::format::EventFormat;
use super::names::{ClientId, EventType};
use super::time::Timestamp;

pub const EVENT_TYPES: [&str; 3] = ["REQUEST", "RESPONSE", "ERROR"];
pub const STATUSES: [&str; 2] = ["SUCCESS", "FAILURE"];
pub const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
/// Largest `requestBody` / `responseBody`, as compact JSON (the seed's `max_size=1MB`).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// An ApiEvent may always carry two full bodies, whatever `ANNALS_MAX_EVENT_BYTES` says.
pub const MIN_EVENT_BYTES: usize = 2 * MAX_BODY_BYTES + 64 * 1024;

const TOP_FIELDS: &str = "id, eventType, sourceSystem, eventTime, eventData, correlationId, \
userContext, status, created_at, updated_at";

/// One of the seed's enum values (`eventType`, `status`, `method`), or why not.
pub fn one_of(value: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(format!("must be one of {}", allowed.join(", ")))
    }
}

/// A checked `userContext`: the object as sent, and the fields that map onto the envelope.
struct UserContext {
    object: Map<String, Value>,
    user_id: Option<String>,
    ip: Option<IpAddr>,
}

/// Collects the errors of one ApiEvent, each under its JSON path.
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn fail(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    /// A required (or, with `required = false`, optional) string of at most `max` characters.
    fn string(
        &mut self,
        obj: &Map<String, Value>,
        name: &str,
        path: &str,
        max: usize,
        required: bool,
    ) -> Option<String> {
        match obj.get(name) {
            None | Some(Value::Null) => {
                if required {
                    self.fail(path, "is required");
                }
                None
            }
            Some(Value::String(s)) if s.chars().count() > max => {
                self.fail(path, format!("must be at most {max} characters"));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.fail(path, format!("must be a string, not {}", json_kind(other)));
                None
            }
        }
    }

    /// A required string that must be one of `allowed`.
    fn one_of(
        &mut self,
        obj: &Map<String, Value>,
        name: &str,
        path: &str,
        allowed: &[&str],
    ) -> Option<String> {
        let value = self.string(obj, name, path, usize::MAX, true)?;
        match one_of(&value, allowed) {
            Ok(()) => Some(value),
            Err(message) => {
                self.fail(path, message);
                None
            }
        }
    }

    fn uuid(&mut self, obj: &Map<String, Value>, name: &str, required: bool) -> Option<Uuid> {
        let text = self.string(obj, name, name, 64, required)?;
        match Uuid::parse_str(&text) {
            Ok(id) => Some(id),
            Err(_) => {
                self.fail(
                    name,
                    "must be a UUID, e.g. 2f1c6c2e-8d2a-4b51-9a57-0c1f3e7d5b10",
                );
                None
            }
        }
    }

    /// The JSON object at `path`. Absent or null is noted as a problem when `required`; any
    /// other kind of value always is.
    fn object<'v>(
        &mut self,
        value: Option<&'v Value>,
        path: &str,
        required: bool,
    ) -> Option<&'v Map<String, Value>> {
        match value {
            None | Some(Value::Null) => {
                if required {
                    self.fail(path, "is required");
                }
                None
            }
            Some(Value::Object(map)) => Some(map),
            Some(other) => {
                self.fail(path, format!("must be an object, not {}", json_kind(other)));
                None
            }
        }
    }

    /// An optional JSON object of at most `MAX_BODY_BYTES`.
    fn body(&mut self, obj: &Map<String, Value>, name: &str, path: &str) {
        if let Some(body) = self.object(obj.get(name), path, false) {
            let size = serde_json::to_vec(body)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > MAX_BODY_BYTES {
                self.fail(
                    path,
                    format!("is {size} bytes; the limit is {MAX_BODY_BYTES} (1 MB)"),
                );
            }
        }
    }

    fn event_data(&mut self, value: Option<&Value>) -> Option<Map<String, Value>> {
        let data = self.object(value, "eventData", true)?;
        self.string(data, "endpoint", "eventData.endpoint", 500, true);
        self.one_of(data, "method", "eventData.method", &METHODS);
        self.body(data, "requestBody", "eventData.requestBody");
        self.body(data, "responseBody", "eventData.responseBody");
        match data.get("statusCode") {
            None | Some(Value::Null) => self.fail("eventData.statusCode", "is required"),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(code) if (100..=599).contains(&code) => {}
                Some(_) => self.fail("eventData.statusCode", "must be between 100 and 599"),
                None => self.fail("eventData.statusCode", "must be an integer"),
            },
            Some(other) => self.fail(
                "eventData.statusCode",
                format!("must be an integer, not {}", json_kind(other)),
            ),
        }
        Some(data.clone())
    }

    /// Returns the context object with the user id and IP address it carries.
    fn user_context(&mut self, value: Option<&Value>) -> Option<UserContext> {
        let context = self.object(value, "userContext", false)?;
        let user_id = self.string(context, "userId", "userContext.userId", 100, false);
        self.string(context, "clientId", "userContext.clientId", 100, false);
        let ip = self
            .string(context, "ipAddress", "userContext.ipAddress", 64, false)
            .and_then(|text| match text.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    self.fail(
                        "userContext.ipAddress",
                        format!("'{text}' is not a valid IPv4 or IPv6 address"),
                    );
                    None
                }
            });
        Some(UserContext {
            object: context.clone(),
            user_id: user_id.filter(|u| !u.is_empty()),
            ip,
        })
    }
}

/// Parses one `ApiEvent` into an event for the store, or every rule it breaks.
pub fn parse_api_event(
    value: Value,
    client: &ClientId,
    rules: &EnvelopeRules<'_>,
) -> Result<NewEvent, Rejected> {
    let Value::Object(mut obj) = value else {
        return Err(Rejected {
            errors: vec![FieldError::new("", "an ApiEvent must be a JSON object")],
            too_large: false,
        });
    };
    // The server's timestamps replace the client's; they take no part in idempotency.
    obj.remove("created_at");
    obj.remove("updated_at");
    // A client `id` is the idempotency key.
    let content_hash = content_hash(&obj, "id");
    let mut check = Checker { errors: Vec::new() };

    for name in obj.keys() {
        if !TOP_FIELDS.split(", ").any(|f| f == name) {
            check.fail(name, format!("unknown field; an ApiEvent has {TOP_FIELDS}"));
        }
    }
    let client_event_id = check.uuid(&obj, "id", false);
    let event_type = check.one_of(&obj, "eventType", "eventType", &EVENT_TYPES);
    let source = check.string(&obj, "sourceSystem", "sourceSystem", 100, true);
    let occurred_at = check
        .string(&obj, "eventTime", "eventTime", 64, true)
        .and_then(|text| match Timestamp::parse_iso8601(&text) {
            Ok(t) => Some(t),
            Err(message) => {
                check.fail("eventTime", message);
                None
            }
        });
    let data = check.event_data(obj.get("eventData"));
    let correlation_id = check.uuid(&obj, "correlationId", true);
    let context = check.user_context(obj.get("userContext"));
    let status = check.one_of(&obj, "status", "status", &STATUSES);

    let (
        Some(event_type),
        Some(source),
        Some(occurred_at),
        Some(data),
        Some(correlation_id),
        Some(status),
        true,
    ) = (
        event_type,
        source,
        occurred_at,
        data,
        correlation_id,
        status,
        check.errors.is_empty(),
    )
    else {
        let mut errors = check.errors;
        errors.sort_by(|a, b| a.field.cmp(&b.field));
        return Err(Rejected {
            errors,
            too_large: false,
        });
    };

    let (user_id, ip_address, mut headers) = match context {
        Some(context) => {
            let mut headers = Map::new();
            headers.insert(String::from("userContext"), Value::Object(context.object));
            (context.user_id, context.ip, Value::Object(headers))
        }
        None => (None, None, Value::Object(Map::new())),
    };
    let mut data = Value::Object(data);
    rules.mask.mask(&mut data);
    rules.mask.mask(&mut headers);
    let ip_address = ip_address.map(|ip| rules.mask.ip(ip));
    if let (Some(ip), Some(context)) = (ip_address, headers.get_mut("userContext")) {
        context["ipAddress"] = Value::String(ip.to_string());
    }
    let data = data.to_string();
    let headers = headers.to_string();
    let limit = rules.max_event_bytes.max(MIN_EVENT_BYTES);
    if data.len() + headers.len() > limit {
        return Err(Rejected {
            errors: vec![FieldError::new(
                "eventData",
                format!(
                    "eventData and userContext together are {} bytes; the limit is {limit}",
                    data.len() + headers.len()
                ),
            )],
            too_large: true,
        });
    }
    Ok(NewEvent {
        client_id: client.clone(),
        event_type: EventType::parse(&event_type)
            .expect("the ApiEvent types are valid event types"),
        user_id,
        data,
        event_id: client_event_id.map(|id| id.to_string()),
        source: (!source.is_empty()).then_some(source),
        subject: None,
        occurred_at: Some(occurred_at),
        correlation_id: Some(correlation_id.to_string()),
        status: Some(status),
        ip_address,
        headers,
        partition_key: None,
        format: EventFormat::ApiEvent,
        content_hash,
    })
}

/// The seed-000 shape of a stored ApiEvent (camelCase, with the seed's snake_case times).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiEventView<'a> {
    /// The server's id of the event.
    pub id: Uuid,
    pub event_type: &'a str,
    pub source_system: &'a str,
    pub event_time: String,
    pub event_data: Value,
    pub correlation_id: Option<&'a str>,
    pub user_context: Value,
    pub status: Option<&'a str>,
    #[serde(rename = "created_at")]
    pub created_at: String,
    /// Events are never updated: always `created_at`.
    #[serde(rename = "updated_at")]
    pub updated_at: String,
}

/// A stored ApiEvent in the seed's shape: the server's `id`, `created_at` = `updated_at` = the
/// time it was recorded.
pub fn render_api_event(event: &StoredEvent) -> ApiEventView<'_> {
    let mut headers: Map<String, Value> = serde_json::from_str(&event.headers).unwrap_or_default();
    let recorded = event.received_at.to_rfc3339();
    ApiEventView {
        id: event.id,
        event_type: &event.event_type,
        source_system: event.source.as_deref().unwrap_or(""),
        event_time: event.occurred_at.to_rfc3339(),
        event_data: serde_json::from_str(&event.data).unwrap_or(Value::Null),
        correlation_id: event.correlation_id.as_deref(),
        user_context: headers.remove("userContext").unwrap_or(Value::Null),
        status: event.status.as_deref(),
        created_at: recorded.clone(),
        updated_at: recorded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::masking::MaskPolicy;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "eventType": "REQUEST",
            "sourceSystem": "checkout",
            "eventTime": "2026-11-21T10:00:00Z",
            "eventData": {"endpoint": "/orders", "method": "POST", "statusCode": 201,
                          "requestBody": {"sku": "a1", "password": "hunter2"}},
            "correlationId": "2f1c6c2e-8d2a-4b51-9a57-0c1f3e7d5b10",
            "userContext": {"userId": "u1", "clientId": "web", "ipAddress": "203.0.113.7"},
            "status": "SUCCESS"
        })
    }

    fn parse_with(v: Value, mask: &MaskPolicy) -> Result<NewEvent, Rejected> {
        parse_api_event(
            v,
            &ClientId::parse("acme").unwrap(),
            &EnvelopeRules {
                max_event_bytes: 1024,
                mask,
            },
        )
    }

    fn parse(v: Value) -> Result<NewEvent, Rejected> {
        parse_with(v, &MaskPolicy::new("password", false))
    }

    fn failing(v: Value) -> Vec<String> {
        parse(v)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn maps_onto_the_envelope_columns() {
        let e = parse(valid()).unwrap();
        assert_eq!(e.event_type.as_str(), "REQUEST");
        assert_eq!(e.source.as_deref(), Some("checkout"));
        assert_eq!(e.user_id.as_deref(), Some("u1"));
        assert_eq!(e.ip_address.unwrap().to_string(), "203.0.113.7");
        assert_eq!(
            e.correlation_id.as_deref(),
            Some("2f1c6c2e-8d2a-4b51-9a57-0c1f3e7d5b10")
        );
        assert_eq!(e.format, EventFormat::ApiEvent);
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(data["requestBody"]["password"], "***");
        let headers: Value = serde_json::from_str(&e.headers).unwrap();
        assert_eq!(headers["userContext"]["clientId"], "web");
    }

    #[test]
    fn every_failing_field_is_listed_with_its_path() {
        let fields = failing(json!({
            "id": "not-a-uuid",
            "eventType": "request",
            "sourceSystem": "s".repeat(101),
            "eventTime": "yesterday",
            "eventData": {"endpoint": "e".repeat(501), "method": "FETCH", "statusCode": 600,
                          "requestBody": [1], "responseBody": "x"},
            "correlationId": "123",
            "userContext": {"userId": "u".repeat(101), "clientId": 7, "ipAddress": "999.1.1.1"},
            "status": "OK",
            "extra": true
        }));
        assert_eq!(
            fields,
            [
                "correlationId",
                "eventData.endpoint",
                "eventData.method",
                "eventData.requestBody",
                "eventData.responseBody",
                "eventData.statusCode",
                "eventTime",
                "eventType",
                "extra",
                "id",
                "sourceSystem",
                "status",
                "userContext.clientId",
                "userContext.ipAddress",
                "userContext.userId",
            ]
        );
    }

    #[test]
    fn required_fields_are_required() {
        assert_eq!(
            failing(json!({})),
            [
                "correlationId",
                "eventData",
                "eventTime",
                "eventType",
                "sourceSystem",
                "status"
            ]
        );
        let mut v = valid();
        v["eventData"] = json!({});
        assert_eq!(
            failing(v),
            [
                "eventData.endpoint",
                "eventData.method",
                "eventData.statusCode"
            ]
        );
    }

    #[test]
    fn boundaries_of_the_ranges() {
        for (code, ok) in [(99, false), (100, true), (599, true), (600, false)] {
            let mut v = valid();
            v["eventData"]["statusCode"] = json!(code);
            assert_eq!(parse(v).is_ok(), ok, "statusCode {code}");
        }
        let mut v = valid();
        v["eventData"]["statusCode"] = json!(200.5);
        assert_eq!(failing(v), ["eventData.statusCode"]);
        let mut v = valid();
        v["sourceSystem"] = json!("s".repeat(100));
        v["eventData"]["endpoint"] = json!("e".repeat(500));
        assert!(parse(v).is_ok());
        let mut v = valid();
        v["userContext"] = json!({"ipAddress": "2001:db8::1"});
        assert!(parse(v).is_ok());
        let mut v = valid();
        v["userContext"] = Value::Null;
        v["eventData"]["requestBody"] = Value::Null;
        assert!(parse(v).is_ok());
    }

    #[test]
    fn bodies_over_one_megabyte_are_refused() {
        let mut v = valid();
        v["eventData"]["responseBody"] = json!({"blob": "x".repeat(MAX_BODY_BYTES)});
        assert_eq!(failing(v), ["eventData.responseBody"]);
        let mut v = valid();
        v["eventData"]["responseBody"] = json!({"blob": "x".repeat(MAX_BODY_BYTES - 20)});
        assert!(
            parse(v).is_ok(),
            "a body just under 1 MB is fine even above the event limit"
        );
    }

    #[test]
    fn server_times_replace_the_clients_and_client_id_is_the_event_id() {
        let mut a = valid();
        a["id"] = json!("7d444840-9dc0-11d1-b245-5ffdce74fad2");
        let mut b = a.clone();
        b["created_at"] = json!("2000-01-01T00:00:00Z");
        let (a, b) = (parse(a).unwrap(), parse(b).unwrap());
        assert_eq!(a.content_hash, b.content_hash);
        assert_eq!(
            a.event_id.as_deref(),
            Some("7d444840-9dc0-11d1-b245-5ffdce74fad2")
        );
    }

    #[test]
    fn anonymizes_the_context_address_too() {
        let e = parse_with(valid(), &MaskPolicy::new("", true)).unwrap();
        assert_eq!(e.ip_address.unwrap().to_string(), "203.0.113.0");
        let headers: Value = serde_json::from_str(&e.headers).unwrap();
        assert_eq!(headers["userContext"]["ipAddress"], "203.0.113.0");
    }
}
