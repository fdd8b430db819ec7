//! Ingest: the envelope, batches, idempotency, and every kind of bad input.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_error, status_json};

async fn auditor_post_and_query_with_the_static_key(backend: Backend) {
    let Some(app) =
        TestApp::spawn_with(backend, |a| a.api_key = Some("s3cret-static-key".into())).await
    else {
        return;
    };
    assert!(
        app.admin_key.is_empty(),
        "no bootstrap key when ANNALS_API_KEY is set"
    );
    let r = app
        .post(
            "/events",
            "s3cret-static-key",
            &json!({"user_id": "user-1", "event_type": "login", "data": {"device": "phone", "attempts": 3}}),
        )
        .await;
    let (status, body) = status_json(r).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["message"], "Event recorded");
    let id = body["id"].as_str().unwrap();

    let events = app
        .list(
            "/events?user_id=user-1&event_type=login&device=phone",
            "s3cret-static-key",
        )
        .await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["id"], id);
    assert_eq!(e["user_id"], "user-1");
    assert_eq!(e["event_type"], "login");
    assert_eq!(e["data"], json!({"device": "phone", "attempts": 3}));
    assert_eq!(e["client_id"], "default");
    assert!(e["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(
        app.list("/events?user_id=user-1&device=tablet", "s3cret-static-key")
            .await
            .is_empty()
    );
    app.stop().await;
}

async fn envelope_fields_round_trip_with_server_headers(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let id = app
        .record(
            &app.admin_key,
            json!({
                "event_type": "billing.invoice.paid", "user_id": "user-123",
                "payload": {"invoice": "in_42", "amount": 1200}, "event_id": "evt-1",
                "source": "billing-service", "subject": "invoice/in_42",
                "occurred_at": "2026-11-21T11:00:00+01:00", "correlation_id": "corr-1",
                "headers": {"actor": "alice", "auth_level": "mfa"}, "status": "SUCCESS",
                "ip_address": "203.0.113.7", "partition_key": "tenant-9"
            }),
        )
        .await;
    let (status, e) = status_json(app.get(&format!("/v1/events/{id}"), &app.admin_key).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(e["data"], json!({"invoice": "in_42", "amount": 1200}));
    assert_eq!(e["occurred_at"], "2026-11-21T10:00:00Z");
    assert_eq!(e["seq"], 1);
    let h = &e["headers"];
    assert_eq!(h["actor"], "alice");
    assert_eq!(h["event_type"], "billing.invoice.paid");
    assert_eq!(h["event_id"], "evt-1");
    assert_eq!(h["source"], "billing-service");
    assert_eq!(h["partition_key"], "tenant-9");
    assert_eq!(h["occurred_at"], "2026-11-21T10:00:00Z");
    assert_eq!(h["created_at"], e["received_at"]);
    for f in ["subject", "correlation_id", "status", "ip_address"] {
        assert!(e[f].is_string(), "{f}");
    }
    app.stop().await;
}

async fn idempotency_same_content_is_a_duplicate_different_is_a_conflict(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let event = json!({"event_type": "order.placed", "event_id": "evt-7", "data": {"n": 1}});
    let first = app.record(&app.admin_key, event.clone()).await;
    let (status, body) = status_json(app.post("/v1/events", &app.admin_key, &event).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], first);
    assert_eq!(body["duplicate"], true);

    // payload alias of the same content is the same request
    let alias = json!({"event_type": "order.placed", "event_id": "evt-7", "payload": {"n": 1}});
    let (status, _) = status_json(app.post("/v1/events", &app.admin_key, &alias).await).await;
    assert_eq!(status, StatusCode::OK);

    let changed = json!({"event_type": "order.placed", "event_id": "evt-7", "data": {"n": 2}});
    let (status, body) = status_json(app.post("/v1/events", &app.admin_key, &changed).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&body, "conflict");
    assert_eq!(body["field"], "event_id");

    // the same event_id from another source is a different key
    let other_source =
        json!({"event_type": "order.placed", "event_id": "evt-7", "source": "b", "data": {"n": 2}});
    app.record(&app.admin_key, other_source).await;
    assert_eq!(app.list("/v1/events", &app.admin_key).await.len(), 2);
    app.stop().await;
}

async fn concurrent_duplicates_are_stored_once(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let event = json!({"event_type": "order.placed", "event_id": "race-1", "data": {"k": "v"}});
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (http, url, key, event) = (
            app.http.clone(),
            app.url("/v1/events"),
            app.admin_key.clone(),
            event.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("x-api-key", key)
                .json(&event)
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{status} {body}"
        );
        created += usize::from(status == StatusCode::CREATED);
        ids.insert(body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    assert_eq!(app.list("/v1/events", &app.admin_key).await.len(), 1);
    app.stop().await;
}

async fn batch_is_atomic_and_reports_every_bad_item(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let batch = json!({"events": [
        {"event_type": "a.b.created"},
        {"user_id": "no type"},
        {"event_type": "a.b.created", "data": "not an object"},
        {"event_type": "a.b.created", "occurred_at": "yesterday"}
    ]});
    let (status, body) =
        status_json(app.post("/v1/events/batch", &app.admin_key, &batch).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "validation_failed");
    let errors: Vec<(u64, String)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            (1, "event_type".into()),
            (2, "data".into()),
            (3, "occurred_at".into())
        ]
    );
    assert_eq!(body["field"], "events[1].event_type");
    assert!(
        app.list("/v1/events", &app.admin_key).await.is_empty(),
        "nothing stored"
    );
    app.stop().await;
}

async fn batch_ids_in_order_duplicates_and_conflicts(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    app.record(
        &app.admin_key,
        json!({"event_type": "t.x.done", "event_id": "old", "data": {"v": 1}}),
    )
    .await;
    let batch = json!({"events": [
        {"event_type": "t.x.done", "event_id": "new-1"},
        {"event_type": "t.x.done", "event_id": "old", "data": {"v": 1}},
        {"event_type": "t.x.done", "event_id": "new-1"},
        {"event_type": "t.x.done"}
    ]});
    let (status, body) =
        status_json(app.post("/v1/events/batch", &app.admin_key, &batch).await).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let ids = body["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids[0], ids[2], "a repeated identical item is stored once");
    assert_eq!(body["duplicates"], json!([1, 2]));
    assert_eq!(app.list("/v1/events", &app.admin_key).await.len(), 3);

    // a conflict anywhere stores nothing
    let conflicting = json!({"events": [
        {"event_type": "t.x.done", "event_id": "fresh"},
        {"event_type": "t.x.done", "event_id": "old", "data": {"v": 2}},
        {"event_type": "t.x.done", "event_id": "twin", "data": {"a": 1}},
        {"event_type": "t.x.done", "event_id": "twin", "data": {"a": 2}}
    ]});
    let (status, body) = status_json(
        app.post("/api/v1/events/batch", &app.admin_key, &conflicting)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["indexes"], json!([1, 3]));
    assert_eq!(app.list("/v1/events", &app.admin_key).await.len(), 3);
    app.stop().await;
}

async fn batch_limits_and_shape(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| a.max_batch = 3).await else {
        return;
    };
    let four = json!({"events": [{"event_type": "a"}, {"event_type": "a"}, {"event_type": "a"}, {"event_type": "a"}]});
    let (status, body) =
        status_json(app.post("/v1/events/batch", &app.admin_key, &four).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["field"], "events");
    for (bad, field) in [
        (json!({"events": []}), json!("events")),
        (json!({"events": {}}), json!("events")),
        (json!({}), json!("events")),
        (json!([{"event_type": "a"}]), Value::Null), // the whole body: no field
        (
            json!({"events": [{"event_type": "a"}], "extra": 1}),
            json!("extra"),
        ),
    ] {
        let (status, body) =
            status_json(app.post("/v1/events/batch", &app.admin_key, &bad).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(body["field"], field, "{bad}");
    }
    assert!(app.list("/v1/events", &app.admin_key).await.is_empty());
    app.stop().await;
}

async fn bad_inputs_get_clear_json_errors_and_store_nothing(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| {
        a.max_event_bytes = 2048;
        a.max_body_bytes = 8192;
    })
    .await
    else {
        return;
    };
    let key = app.admin_key.clone();
    // (content type, body, status, error code, field)
    type Case<'a> = (
        Option<&'a str>,
        String,
        StatusCode,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            Some("application/json"),
            "{\"event_type\":".into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        (
            Some("application/json"),
            "".into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        (
            Some("text/plain"),
            "{\"event_type\":\"a\"}".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        ),
        // Read as UTF-8 whatever it says, so another charset is refused rather than misread.
        (
            Some("application/json; charset=utf-16"),
            "{\"event_type\":\"a\"}".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            Some("content-type"),
        ),
        (
            None,
            "[1,2]".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some(""),
        ),
        (
            None,
            "{}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("event_type"),
        ),
        (
            None,
            "{\"event_type\": 5}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("event_type"),
        ),
        (
            // In the year 10000 once in UTC: no RFC 3339 reader could take it back.
            None,
            r#"{"event_type": "a.b.created", "occurred_at": "9999-12-31T23:59:59-01:00"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("occurred_at"),
        ),
        (
            None,
            "{\"event_type\": \"a\", \"evnt\": 1}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("evnt"),
        ),
        (
            None,
            "{\"event_type\": \"a\", \"id\": \"mine\"}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("id"),
        ),
        (
            None,
            format!("{{\"event_type\": \"{}\"}}", "x".repeat(300)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("event_type"),
        ),
        (
            None,
            "{\"event_type\": \"a\", \"ip_address\": \"999.1.1.1\"}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("ip_address"),
        ),
        (
            None,
            "{\"event_type\": \"a\", \"occurred_at\": \"2026-11-21T10:00:00\"}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("occurred_at"),
        ),
        (
            None,
            "{\"event_type\": \"a\", \"headers\": {\"event_type\": \"b\"}}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("headers.event_type"),
        ),
        (
            None,
            format!(
                "{{\"event_type\": \"a\", \"data\": {}1{}}}",
                "{\"a\":".repeat(70),
                "}".repeat(70)
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some(""),
        ),
        (
            None,
            format!(
                "{{\"event_type\": \"a\", \"data\": {{\"x\": \"{}\"}}}}",
                "y".repeat(3000)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            Some("data"),
        ),
        (
            None,
            format!(
                "{{\"event_type\": \"a\", \"pad\": \"{}\"}}",
                "y".repeat(9000)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        ),
    ];
    for (content_type, body, want_status, want_code, want_field) in cases {
        let r = app
            .post_raw("/v1/events", &key, content_type, body.clone())
            .await;
        let (status, json) = status_json(r).await;
        let short: String = body.chars().take(60).collect();
        assert_eq!(status, want_status, "{short}: {json}");
        assert_error(&json, want_code);
        match want_field {
            // a problem with the whole document names no field
            Some("") => assert!(json.get("field").is_none(), "{short}: {json}"),
            Some(field) => assert_eq!(json["field"], field, "{short}: {json}"),
            None => {}
        }
    }
    // chunked body over the limit (no Content-Length) is refused the same way
    let chunks = futures_util_stream(vec![vec![b' '; 5000], vec![b' '; 5000]]);
    let r = app
        .post_raw(
            "/v1/events",
            &key,
            Some("application/json"),
            reqwest::Body::wrap_stream(chunks),
        )
        .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        app.list("/v1/events", &key).await.is_empty(),
        "nothing was stored"
    );
    // A UTF-8 byte order mark (some Windows tools write one) is no reason to refuse a body.
    let r = app
        .post_raw(
            "/v1/events",
            &key,
            Some("application/json; charset=UTF-8"),
            "\u{feff}{\"event_type\": \"tool.file.saved\"}",
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    app.stop().await;
}

fn futures_util_stream(
    chunks: Vec<Vec<u8>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::iter(chunks.into_iter().map(Ok))
}

async fn unknown_routes_and_methods_are_json(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (status, body) = status_json(app.get("/v2/nothing", &app.admin_key).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "not_found");
    let r = app.http.delete(app.url("/v1/events")).send().await.unwrap();
    let (status, body) = status_json(r).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error(&body, "method_not_allowed");
    app.stop().await;
}

async fn sensitive_fields_are_masked_and_a_masked_retry_is_a_duplicate(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| a.anonymize_ip = true).await else {
        return;
    };
    let event = json!({
        "event_type": "iam.user.created", "event_id": "mask-1", "ip_address": "203.0.113.77",
        "data": {"user": {"name": "al", "Password": "hunter2"}, "cards": [{"card_number": "4111"}, {"ok": 1}]},
        "headers": {"Authorization": "Bearer abc", "actor": "al"}
    });
    let id = app.record(&app.admin_key, event.clone()).await;
    let (_, stored) = status_json(app.get(&format!("/v1/events/{id}"), &app.admin_key).await).await;
    assert_eq!(
        stored["data"]["user"],
        json!({"name": "al", "Password": "***"})
    );
    assert_eq!(
        stored["data"]["cards"],
        json!([{"card_number": "***"}, {"ok": 1}])
    );
    assert_eq!(stored["headers"]["Authorization"], "***");
    assert_eq!(stored["headers"]["actor"], "al");
    assert_eq!(stored["ip_address"], "203.0.113.0");
    let text = serde_json::to_string(&stored).unwrap();
    assert!(!text.contains("hunter2") && !text.contains("4111") && !text.contains("Bearer abc"));
    // the same request again is a duplicate (idempotency compares what was sent), not a conflict
    let (status, body) = status_json(app.post("/v1/events", &app.admin_key, &event).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], id);
    app.stop().await;
}

/// Asserts that `r` is a `422 validation_failed` naming `field`, its message saying `said`.
async fn assert_invalid_field(r: reqwest::Response, field: &str, said: &str) {
    let (status, body) = status_json(r).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {body}");
    assert_error(&body, "validation_failed");
    assert_eq!(body["field"], field, "{body}");
    assert!(body["message"].as_str().unwrap().contains(said), "{body}");
}

/// U+0000 anywhere a client writes text: PostgreSQL keeps none (in `text` or `jsonb`), so it is
/// a 422 naming where it was, on both stores alike, and nothing is stored.
async fn the_nul_character_is_refused_everywhere_with_its_field(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let refused = |r, field| assert_invalid_field(r, field, "U+0000");
    for (event, field) in [
        (
            json!({"event_type": "iam.user.created", "user_id": "a\u{0}b"}),
            "user_id",
        ),
        (
            json!({"event_type": "iam.user.created", "data": {"note": "a\u{0}b"}}),
            "data.note",
        ),
        (
            json!({"event_type": "iam.user.created", "data": {"k\u{0}": 1}}),
            "data.k\\u0000",
        ),
        (
            json!({"event_type": "iam.user.created", "headers": {"h": "\u{0}"}}),
            "headers.h",
        ),
    ] {
        refused(app.post("/v1/events", &key, &event).await, field).await;
    }
    let batch = json!({"events": [
        {"event_type": "iam.user.created"},
        {"event_type": "iam.user.created", "source": "s\u{0}"},
    ]});
    refused(
        app.post("/v1/events/batch", &key, &batch).await,
        "events.1.source",
    )
    .await;
    // A binary CloudEvent's text body is not JSON: the event itself is checked.
    let attributes = [
        ("ce-type", "com.example.noted"),
        ("ce-id", "nul-1"),
        ("ce-source", "/probe"),
    ];
    let r = app
        .post_binary_cloudevent(&key, &attributes, "text/plain", "a\u{0}b")
        .await;
    refused(r, "data").await;
    assert!(
        app.list("/v1/events", &key).await.is_empty(),
        "nothing stored"
    );

    // Key names and security reports alike.
    let key_body = json!({"client_id": "acme", "name": "n\u{0}", "scopes": ["events:read"]});
    refused(
        app.post("/v1/keys", &app.admin_key, &key_body).await,
        "name",
    )
    .await;
    let report = json!({"event_type": "FAILED_LOGIN", "severity": "LOW", "user_id": "\u{0}"});
    refused(
        app.post("/v1/security-events", &key, &report).await,
        "user_id",
    )
    .await;
    // Nor can a listing look for it.
    for (path, field) in [
        ("/v1/events?user_id=%00", "user_id"),
        ("/v1/events?data.note=a%00", "data.note"),
        ("/v1/audit/logs?endpoint=%00", "endpoint"),
        ("/v1/security-events?user_id=%00", "user_id"),
    ] {
        refused(app.get(path, &app.admin_key).await, field).await;
    }
    // A key id with one is no key's.
    let r = app
        .http
        .delete(app.url("/v1/keys/a%00"))
        .header("x-api-key", &app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // An escaped backslash before `u0000` is no NUL.
    let fine = json!({"event_type": "iam.user.created", "data": {"note": "\\u0000"}});
    assert_eq!(
        app.post("/v1/events", &key, &fine).await.status(),
        StatusCode::CREATED
    );
    app.stop().await;
}

/// A key given twice in one object: parsers disagree on which value counts, so an audit trail
/// takes neither. A 422 names the key's path, on every JSON body, and nothing is stored.
async fn a_key_given_twice_in_one_object_is_refused_with_its_path(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let refused = |r, field| assert_invalid_field(r, field, "more than once");
    let json = Some("application/json");
    for (body, field) in [
        (
            r#"{"event_type": "iam.user.created", "event_type": "iam.user.deleted"}"#,
            "event_type",
        ),
        (
            r#"{"event_type": "iam.user.created", "data": {"role": "admin", "role": "viewer"}}"#,
            "data.role",
        ),
        (
            r#"{"event_type": "iam.user.created", "data": {"a": [{"b": 1, "b": 1}]}}"#,
            "data.a.0.b",
        ),
    ] {
        refused(app.post_raw("/v1/events", &key, json, body).await, field).await;
    }
    let batch = r#"{"events": [{"event_type": "iam.user.created"},
        {"event_type": "iam.user.created", "user_id": "u1", "user_id": "u2"}]}"#;
    refused(
        app.post_raw("/v1/events/batch", &key, json, batch).await,
        "events.1.user_id",
    )
    .await;
    let attributes = [
        ("ce-type", "com.example.noted"),
        ("ce-id", "twice-1"),
        ("ce-source", "/probe"),
    ];
    let r = app
        .post_binary_cloudevent(&key, &attributes, "application/json", r#"{"n": 1, "n": 2}"#)
        .await;
    refused(r, "body.n").await;
    let key_body = r#"{"client_id": "acme", "client_id": "other", "scopes": ["events:read"]}"#;
    refused(
        app.post_raw("/v1/keys", &app.admin_key, json, key_body)
            .await,
        "client_id",
    )
    .await;
    assert!(
        app.list("/v1/events", &key).await.is_empty(),
        "nothing stored"
    );
    // The same key in different objects is no repetition.
    let fine =
        r#"{"event_type": "iam.user.created", "data": {"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}]}}"#;
    let (status, body) = status_json(app.post_raw("/v1/events", &key, json, fine).await).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.stop().await;
}

/// Numbers are kept as sent, not as the nearest `f64`: a 23-digit id or a long decimal reads
/// back digit for digit, and two ids that differ only past an `f64`'s precision are different
/// content for idempotency (they were one "duplicate" before). Numbers no reader could take
/// are refused.
async fn numbers_are_stored_digit_for_digit(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.admin_key.clone();
    let send = |id: &str, n: &str| {
        format!(
            r#"{{"event_type": "ledger.entry.posted", "event_id": "{id}",
                 "data": {{"big": {n}, "exact": 0.1000000000000000055511151231257827, "neg": -9223372036854775809}}}}"#
        )
    };
    let post = |body: String| app.post_raw("/v1/events", &key, Some("application/json"), body);
    let (status, created) = status_json(post(send("e1", "12345678901234567890123")).await).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (_, event) = status_json(
        app.get(
            &format!("/v1/events/{}", created["id"].as_str().unwrap()),
            &key,
        )
        .await,
    )
    .await;
    assert_eq!(event["data"]["big"].to_string(), "12345678901234567890123");
    assert_eq!(
        event["data"]["exact"].to_string(),
        "0.1000000000000000055511151231257827"
    );
    assert_eq!(event["data"]["neg"].to_string(), "-9223372036854775809");
    let listed = app
        .list("/v1/events?big=12345678901234567890123", &key)
        .await;
    assert_eq!(listed.len(), 1, "a data filter finds it by its digits");

    let (status, again) = status_json(post(send("e1", "12345678901234567890123")).await).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["duplicate"], true);
    let (status, other) = status_json(post(send("e1", "12345678901234567890124")).await).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "another number is other content: {other}"
    );

    for n in ["1e400", "1e-400", &format!("1{}", "0".repeat(120))] {
        let (status, body) = status_json(post(send("e2", n)).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{n}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("number out of range"),
            "{body}"
        );
    }
    assert_eq!(app.list("/v1/events", &key).await.len(), 1);
    app.stop().await;
}

crate::conformance!(
    numbers_are_stored_digit_for_digit,
    a_key_given_twice_in_one_object_is_refused_with_its_path,
    the_nul_character_is_refused_everywhere_with_its_field,
    sensitive_fields_are_masked_and_a_masked_retry_is_a_duplicate,
    auditor_post_and_query_with_the_static_key,
    envelope_fields_round_trip_with_server_headers,
    idempotency_same_content_is_a_duplicate_different_is_a_conflict,
    concurrent_duplicates_are_stored_once,
    batch_is_atomic_and_reports_every_bad_item,
    batch_ids_in_order_duplicates_and_conflicts,
    batch_limits_and_shape,
    bad_inputs_get_clear_json_errors_and_store_nothing,
    unknown_routes_and_methods_are_json,
);
