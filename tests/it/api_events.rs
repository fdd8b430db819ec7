//! The seed-000 ApiEvent view: its rules (every failing field listed with its path), its
//! camelCase read-back, its filters, batch ingest, idempotency on the client's `id`, masking of
//! bodies and the user context, and its place in the one event table.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::conformance;
use crate::helpers::{Backend, TestApp, assert_error, status_json};

const CORRELATION: &str = "2f1c6c2e-8d2a-4b51-9a57-0c1f3e7d5b10";

fn api_event(event_type: &str, status: &str, time: &str) -> Value {
    json!({
        "eventType": event_type,
        "sourceSystem": "checkout",
        "eventTime": time,
        "eventData": {"endpoint": "/orders", "method": "POST", "statusCode": 201,
                      "requestBody": {"sku": "a1", "password": "hunter2"},
                      "responseBody": {"order": "o1"}},
        "correlationId": CORRELATION,
        "userContext": {"userId": "u1", "clientId": "web", "ipAddress": "203.0.113.7"},
        "status": status
    })
}

async fn post(app: &TestApp, key: &str, body: &Value) -> (StatusCode, Value) {
    status_json(app.post("/v1/api-events", key, body).await).await
}

async fn recorded_and_read_back_in_the_seed_shape(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| a.anonymize_ip = true).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let mut event = api_event("REQUEST", "SUCCESS", "2026-11-21T10:00:00+01:00");
    event["created_at"] = json!("1999-01-01T00:00:00Z"); // ignored: the server's time counts
    let (status, body) = post(&app, &key, &event).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();

    let (status, got) = status_json(app.get(&format!("/v1/api-events/{id}"), &key).await).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let fields: Vec<&str> = got
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        [
            "correlationId",
            "created_at",
            "eventData",
            "eventTime",
            "eventType",
            "id",
            "sourceSystem",
            "status",
            "updated_at",
            "userContext"
        ]
    );
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["eventType"], "REQUEST");
    assert_eq!(got["sourceSystem"], "checkout");
    assert_eq!(got["eventTime"], "2026-11-21T09:00:00Z");
    assert_eq!(got["correlationId"], CORRELATION);
    assert_eq!(got["status"], "SUCCESS");
    assert_eq!(got["eventData"]["statusCode"], 201);
    assert_eq!(
        got["eventData"]["requestBody"]["password"], "***",
        "masked before storage"
    );
    assert_eq!(got["userContext"]["clientId"], "web");
    assert_eq!(got["userContext"]["ipAddress"], "203.0.113.0", "anonymized");
    assert_eq!(got["created_at"], got["updated_at"]);
    assert_ne!(got["created_at"], "1999-01-01T00:00:00Z");

    // The same event in the one event table, under the DESIGN.md mapping.
    let (_, plain) = status_json(app.get(&format!("/v1/events/{id}"), &key).await).await;
    assert_eq!(plain["format"], "api_event");
    assert_eq!(plain["event_type"], "REQUEST");
    assert_eq!(plain["source"], "checkout");
    assert_eq!(plain["user_id"], "u1");
    assert_eq!(plain["ip_address"], "203.0.113.0");
    assert_eq!(plain["correlation_id"], CORRELATION);
    assert_eq!(plain["data"]["endpoint"], "/orders");
    assert_eq!(plain["headers"]["userContext"]["userId"], "u1");
    let by_data = app.list("/v1/events?endpoint=/orders", &key).await;
    assert_eq!(by_data.len(), 1);

    // An event that did not come in as an ApiEvent is not in this view.
    let other = app
        .record(&key, json!({"event_type": "iam.user.created"}))
        .await;
    let r = app.get(&format!("/v1/api-events/{other}"), &key).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.list("/v1/api-events", &key).await.len(), 1);
    // Another client's ApiEvent is invisible.
    let stranger = app.key("other", "events:read").await;
    let r = app.get(&format!("/v1/api-events/{id}"), &stranger).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(app.list("/v1/api-events", &stranger).await.is_empty());
    app.stop().await;
}

async fn every_rule_of_the_seed_is_enforced(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let valid = api_event("RESPONSE", "FAILURE", "2026-11-21T10:00:00Z");
    // (change, the failing field or None when the change is valid)
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("eventType", json!("REQUEST"), None),
        ("eventType", json!("ERROR"), None),
        ("eventType", json!("request"), Some("eventType")),
        ("eventType", json!(null), Some("eventType")),
        ("sourceSystem", json!("s".repeat(100)), None),
        ("sourceSystem", json!("s".repeat(101)), Some("sourceSystem")),
        ("sourceSystem", json!(7), Some("sourceSystem")),
        ("eventTime", json!("2026-11-21T10:00:00"), None),
        ("eventTime", json!("21/11/2026"), Some("eventTime")),
        ("correlationId", json!("not-a-uuid"), Some("correlationId")),
        ("status", json!("PENDING"), Some("status")),
        ("id", json!("7d444840-9dc0-11d1-b245-5ffdce74fad2"), None),
        ("id", json!("123"), Some("id")),
        ("userContext", json!(null), None),
        ("userContext", json!({"ipAddress": "2001:db8::1"}), None),
        (
            "userContext",
            json!({"ipAddress": "300.1.2.3"}),
            Some("userContext.ipAddress"),
        ),
        (
            "userContext",
            json!({"userId": "u".repeat(101)}),
            Some("userContext.userId"),
        ),
        (
            "userContext",
            json!({"clientId": "c".repeat(101)}),
            Some("userContext.clientId"),
        ),
        ("userContext", json!("u1"), Some("userContext")),
        ("colour", json!("red"), Some("colour")),
    ];
    for (field, value, failing) in cases {
        let mut event = valid.clone();
        event[field] = value.clone();
        let (status, body) = post(&app, &key, &event).await;
        match failing {
            None => assert!(status.is_success(), "{field}={value}: {body}"),
            Some(path) => {
                assert_eq!(
                    status,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{field}={value}: {body}"
                );
                assert_error(&body, "validation_failed");
                assert_eq!(body["field"], path, "{body}");
            }
        }
    }
    let data_cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("statusCode", json!(100), None),
        ("statusCode", json!(599), None),
        ("statusCode", json!(99), Some("eventData.statusCode")),
        ("statusCode", json!(600), Some("eventData.statusCode")),
        ("statusCode", json!("200"), Some("eventData.statusCode")),
        ("method", json!("OPTIONS"), None),
        ("method", json!("FETCH"), Some("eventData.method")),
        ("endpoint", json!("e".repeat(500)), None),
        (
            "endpoint",
            json!("e".repeat(501)),
            Some("eventData.endpoint"),
        ),
        ("requestBody", json!([1, 2]), Some("eventData.requestBody")),
        (
            "responseBody",
            json!({"blob": "x".repeat(1_048_600)}),
            Some("eventData.responseBody"),
        ),
    ];
    for (field, value, failing) in data_cases {
        let mut event = valid.clone();
        event["eventData"][field] = value;
        let (status, body) = post(&app, &key, &event).await;
        match failing {
            None => assert!(status.is_success(), "eventData.{field}: {body}"),
            Some(path) => {
                assert_eq!(
                    status,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "eventData.{field}: {body}"
                );
                assert_eq!(body["field"], path, "{body}");
            }
        }
    }

    // Every failing field is listed, not just the first.
    let (status, body) = post(
        &app,
        &key,
        &json!({"eventType": "X", "eventData": {"method": "GET", "statusCode": 700},
                "correlationId": "nope", "status": "MAYBE"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "correlationId",
            "eventData.endpoint",
            "eventData.statusCode",
            "eventTime",
            "eventType",
            "sourceSystem",
            "status"
        ]
    );
    // Nothing of the refused requests was stored: only the valid variants are there.
    let stored = app.list("/v1/api-events?limit=1000", &key).await;
    assert_eq!(
        stored.len(),
        11,
        "7 valid top-level + 4 valid eventData variants"
    );
    app.stop().await;
}

async fn filters_paging_and_idempotency(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    for (i, (event_type, status)) in [
        ("REQUEST", "SUCCESS"),
        ("RESPONSE", "SUCCESS"),
        ("ERROR", "FAILURE"),
    ]
    .iter()
    .enumerate()
    {
        let mut e = api_event(event_type, status, &format!("2026-11-2{}T10:00:00Z", i + 1));
        if i == 2 {
            e["sourceSystem"] = json!("billing");
            e["correlationId"] = json!("00000000-0000-4000-8000-000000000001");
        }
        let (s, body) = post(&app, &key, &e).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }
    let count = async |q: &str| app.list(&format!("/v1/api-events{q}"), &key).await.len();
    assert_eq!(count("").await, 3);
    assert_eq!(count("?eventType=ERROR").await, 1);
    assert_eq!(count("?status=SUCCESS").await, 2);
    assert_eq!(count("?sourceSystem=checkout").await, 2);
    assert_eq!(count(&format!("?correlationId={CORRELATION}")).await, 2);
    assert_eq!(count("?from=2026-11-22&to=2026-11-23T12:00:00Z").await, 2);
    let newest = app.list("/v1/api-events?limit=1", &key).await;
    assert_eq!(newest[0]["eventType"], "ERROR");

    // Paging follows the Link header, as for events.
    let r = app.get("/v1/api-events?limit=2&order=asc", &key).await;
    let link = r.headers()["link"].to_str().unwrap().to_string();
    let page: Vec<Value> = r.json().await.unwrap();
    assert_eq!(page.len(), 2);
    let next = &link[1..link.find('>').unwrap()];
    let rest = app.list(next, &key).await;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["eventType"], "ERROR");

    for (query, field) in [
        ("?eventType=BOGUS", "eventType"),
        ("?status=ok", "status"),
        ("?correlationId=abc", "correlationId"),
        ("?from=yesterday", "from"),
        ("?limit=0", "limit"),
        ("?endpoint=/orders", "endpoint"),
        ("?sourceSystem=", "sourceSystem"),
        ("?from=2026-11-21T10:00:00+01:00", "from"),
    ] {
        let (status, body) =
            status_json(app.get(&format!("/v1/api-events{query}"), &key).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["field"], field, "{body}");
    }

    // The client's id is the idempotency key (with sourceSystem).
    let mut e = api_event("REQUEST", "SUCCESS", "2026-11-21T10:00:00Z");
    e["id"] = json!("7d444840-9dc0-11d1-b245-5ffdce74fad2");
    let (s, first) = post(&app, &key, &e).await;
    assert_eq!(s, StatusCode::CREATED);
    e["updated_at"] = json!("2030-01-01T00:00:00Z"); // server-owned: not part of the content
    let (s, again) = post(&app, &key, &e).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["duplicate"], true);
    e["status"] = json!("FAILURE");
    let (s, body) = post(&app, &key, &e).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    app.stop().await;
}

async fn batches_are_all_or_nothing(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let good = api_event("REQUEST", "SUCCESS", "2026-11-21T10:00:00Z");
    let mut bad = good.clone();
    bad["eventData"]["statusCode"] = json!(42);
    bad["status"] = json!("MEH");
    let (status, body) = status_json(
        app.post(
            "/v1/api-events/batch",
            &key,
            &json!({"events": [good, bad, good]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(|e| e["index"] == 1));
    assert!(
        app.list("/v1/api-events", &key).await.is_empty(),
        "nothing stored"
    );

    // A bare array is accepted too.
    let (status, body) = status_json(
        app.post("/v1/api-events/batch", &key, &json!([good, good]))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["ids"].as_array().unwrap().len(), 2);
    assert_eq!(app.list("/v1/api-events", &key).await.len(), 2);
    let (status, _) = status_json(app.post("/v1/api-events/batch", &key, &json!([])).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    app.stop().await;
}

conformance!(
    recorded_and_read_back_in_the_seed_shape,
    every_rule_of_the_seed_is_enforced,
    filters_paging_and_idempotency,
    batches_are_all_or_nothing,
);
