//! Property tests over every wire-format parser: any JSON at all is either a valid event or a
//! rejection that names at least one field — never a panic, never an empty rejection — and an
//! accepted event always satisfies the `NewEvent` invariants (serialized JSON within the size
//! limit, no server header names in `headers`).

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::envelope::{EnvelopeRules, NewEvent, Rejected, SERVER_HEADERS};
use super::masking::MaskPolicy;
use super::{ClientId, api_event, cloudevents, parse_event};

/// Field names the parsers know, mixed with arbitrary ones, so generated objects reach deep.
const NAMES: &[&str] = &[
    "event_type",
    "data",
    "payload",
    "headers",
    "event_id",
    "source",
    "subject",
    "occurred_at",
    "ip_address",
    "client_id",
    "partition_key",
    "id",
    "type",
    "specversion",
    "time",
    "data_base64",
    "datacontenttype",
    "dataschema",
    "eventType",
    "sourceSystem",
    "eventTime",
    "eventData",
    "correlationId",
    "userContext",
    "status",
    "endpoint",
    "method",
    "statusCode",
    "requestBody",
    "userId",
    "ipAddress",
    "password",
    "x",
];

fn leaf() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-zA-Z0-9 .:_/@-]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("1.0"),
            Just("REQUEST"),
            Just("SUCCESS"),
            Just("GET"),
            Just("2026-11-21T10:00:00Z"),
            Just("2f1c6c2e-8d2a-4b51-9a57-0c1f3e7d5b10"),
            Just("203.0.113.7"),
            Just("billing.invoice.paid"),
            Just(""),
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(NAMES), inner), 0..8).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

fn check(result: Result<NewEvent, Rejected>, limit: usize) {
    match result {
        Ok(event) => {
            let data: Value = serde_json::from_str(&event.data).expect("data is JSON");
            let headers: Value = serde_json::from_str(&event.headers).expect("headers are JSON");
            assert!(headers.is_object());
            assert!(data.is_object() || event.format != super::EventFormat::Annals);
            for name in SERVER_HEADERS {
                assert!(
                    headers.get(name).is_none(),
                    "server header {name} in {headers}"
                );
            }
            assert!(
                event.data.len() + event.headers.len() <= limit.max(api_event::MIN_EVENT_BYTES)
            );
        }
        Err(rejected) => assert!(!rejected.errors.is_empty(), "a rejection names its problem"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn every_parser_accepts_or_explains_any_json(value in json_value()) {
        let client = ClientId::parse("acme").unwrap();
        let mask = MaskPolicy::new("password", true);
        let rules = EnvelopeRules { max_event_bytes: 4096, mask: &mask };
        check(parse_event(value.clone(), &client, &rules), 4096);
        check(cloudevents::parse_structured(value.clone(), &client, &rules), 4096);
        check(api_event::parse_api_event(value, &client, &rules), 4096);
    }

    /// A valid event of each format with one field (at the top or one level down) replaced
    /// by arbitrary JSON: still accepted or explained.
    #[test]
    fn one_changed_field_is_accepted_or_explained(
        field in prop::sample::select(NAMES),
        nested in any::<bool>(),
        value in prop_oneof![3 => leaf(), 1 => json_value()],
    ) {
        let client = ClientId::parse("acme").unwrap();
        let mask = MaskPolicy::new("password", true);
        let rules = EnvelopeRules { max_event_bytes: 4096, mask: &mask };
        let valid = [
            serde_json::json!({"event_type": "iam.user.created", "data": {"a": 1},
                "headers": {"actor": "al"}, "event_id": "e1", "ip_address": "203.0.113.7"}),
            serde_json::json!({"specversion": "1.0", "id": "1", "source": "/s",
                "type": "com.example.someevent", "data": {"a": 1}}),
            serde_json::json!({"eventType": "REQUEST", "sourceSystem": "s",
                "eventTime": "2026-11-21T10:00:00Z",
                "eventData": {"endpoint": "/", "method": "GET", "statusCode": 200},
                "correlationId": "2f1c6c2e-8d2a-4b51-9a57-0c1f3e7d5b10",
                "userContext": {"userId": "u"}, "status": "SUCCESS"}),
        ];
        let mut changed = Vec::new();
        for mut event in valid {
            let target = if nested {
                event.as_object_mut().unwrap().values_mut().find(|v| v.is_object())
            } else {
                Some(&mut event)
            };
            if let Some(Value::Object(map)) = target {
                map.insert(field.to_string(), value.clone());
            }
            changed.push(event);
        }
        check(parse_event(changed[0].clone(), &client, &rules), 4096);
        check(cloudevents::parse_structured(changed[1].clone(), &client, &rules), 4096);
        check(api_event::parse_api_event(changed[2].clone(), &client, &rules), 4096);
    }
}
