//! Bad input over HTTP, generated: arbitrary JSON (and non-JSON) bodies against every ingest
//! route and wire format always get a 2xx or a clear 4xx JSON error — never a 5xx, never a
//! non-JSON error body — and the server keeps serving.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use crate::conformance;
use crate::helpers::{Backend, TestApp};

fn body() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "1.0",
            "x.y.created",
            "REQUEST",
            "GET",
            "SUCCESS",
            "2026-11-21T10:00:00Z",
            "2f1c6c2e-8d2a-4b51-9a57-0c1f3e7d5b10",
            "::1",
            "acme",
            "other",
            "a b",
            "*",
            "#",
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    let names = prop::sample::select(vec![
        "event_type",
        "data",
        "headers",
        "event_id",
        "source",
        "occurred_at",
        "client_id",
        "ip_address",
        "id",
        "type",
        "specversion",
        "time",
        "data_base64",
        "eventType",
        "sourceSystem",
        "eventTime",
        "eventData",
        "correlationId",
        "userContext",
        "status",
        "statusCode",
        "method",
        "endpoint",
        "events",
        "zz",
    ]);
    leaf.prop_recursive(3, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((names.clone(), inner), 0..7).prop_map(|pairs| {
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

async fn generated_bad_input_gets_clear_answers(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let mut runner = TestRunner::deterministic();
    let bodies: Vec<Value> = (0..150)
        .map(|_| body().new_tree(&mut runner).unwrap().current())
        .collect();
    let targets: [(&str, Option<&str>); 5] = [
        ("/v1/events", None),
        ("/v1/events/batch", None),
        ("/v1/api-events", None),
        ("/v1/events", Some("application/cloudevents+json")),
        ("/v1/events", Some("application/cloudevents-batch+json")),
    ];
    for (n, value) in bodies.iter().enumerate() {
        let (path, content_type) = targets[n % targets.len()];
        let text = if n % 10 == 9 {
            value.to_string().chars().rev().collect() // not JSON any more
        } else {
            value.to_string()
        };
        let r = app
            .post_raw(
                path,
                &key,
                Some(content_type.unwrap_or("application/json")),
                text.clone(),
            )
            .await;
        let status = r.status();
        let answer = r.text().await.unwrap();
        assert!(
            !status.is_server_error(),
            "{path} {text} → {status} {answer}"
        );
        if status.is_client_error() {
            let error: Value = serde_json::from_str(&answer)
                .unwrap_or_else(|_| panic!("{path} {text} → non-JSON {status} {answer}"));
            assert!(
                error["error"].is_string() && error["message"].is_string(),
                "{answer}"
            );
        }
    }
    // Binary-mode CloudEvents with generated attribute headers.
    for (n, value) in bodies.iter().take(40).enumerate() {
        let attribute = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let r = app
            .http
            .post(app.url("/v1/events"))
            .header("x-api-key", &key)
            .header(
                "ce-specversion",
                if n % 3 == 0 {
                    "1.0".to_string()
                } else {
                    attribute(value)
                },
            )
            .header("ce-id", format!("gen-{n}"))
            .header("ce-source", "/gen")
            .header(
                "ce-type",
                attribute(&value["type"]).replace(['\n', '\r'], ""),
            )
            .header("content-type", "application/json")
            .body(value.to_string())
            .send()
            .await
            .unwrap();
        assert!(!r.status().is_server_error(), "{value} → {}", r.status());
    }
    // Still serving, and what was accepted reads back.
    let r = app
        .post("/v1/events", &key, &json!({"event_type": "x.y.created"}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(!app.list("/v1/events?limit=1000", &key).await.is_empty());
    app.stop().await;
}

conformance!(generated_bad_input_gets_clear_answers);
