//! Security events: recorded by Annals itself (aggregated, never one write per request), reported
//! by clients, read with filters, reviewed.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_error, status_json};

/// Security events are flushed every second: wait until `pred` holds for the list.
async fn events_until(
    app: &TestApp,
    query: &str,
    key: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    for _ in 0..60 {
        let (status, body) =
            status_json(app.get(&format!("/v1/security-events?{query}"), key).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let rows = body.as_array().unwrap().clone();
        if pred(&rows) {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("security events for {query} never matched");
}

async fn annals_records_its_own_security_events_aggregated(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| a.failed_auth_per_minute = 5).await else {
        return;
    };
    let admin = app.admin_key.clone();
    let reader = app.key("acme", "events:read").await;
    // a scope denial
    assert_eq!(
        app.post("/v1/events", &reader, &json!({"event_type": "x"}))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    // a flood of bad keys from another address (127.0.0.2): 5 failures, then refusals; the
    // admin's reads below come from 127.0.0.1 and are not refused
    annals::bus::client::install_crypto_provider();
    let flooder = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .user_agent("flood-tester/1.0")
        .build()
        .unwrap();
    for _ in 0..20 {
        flooder
            .get(app.url("/v1/events"))
            .header("x-api-key", "ank_0123456789abcdef_wrong")
            .send()
            .await
            .unwrap();
    }
    let rows = events_until(&app, "", &admin, |rows| {
        rows.iter()
            .any(|r| r["event_type"] == "SUSPICIOUS_ACTIVITY")
            && rows.iter().any(|r| r["event_type"] == "PERMISSION_DENIED")
            && rows.iter().any(|r| r["event_type"] == "FAILED_LOGIN")
    })
    .await;
    let failed: Vec<&Value> = rows
        .iter()
        .filter(|r| r["event_type"] == "FAILED_LOGIN")
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "failures from one address in one minute are one row"
    );
    assert_eq!(failed[0]["count"], 5);
    assert_eq!(failed[0]["ip_address"], "127.0.0.2");
    assert_eq!(failed[0]["system"], true);
    assert_eq!(failed[0]["user_agent"], "flood-tester/1.0");
    assert_eq!(failed[0]["event_details"]["method"], "GET");
    assert_eq!(failed[0]["event_details"]["path"], "/v1/events");
    let flood = rows
        .iter()
        .find(|r| r["event_type"] == "SUSPICIOUS_ACTIVITY")
        .unwrap();
    assert_eq!(flood["severity"], "HIGH");
    assert_eq!(flood["requires_review"], true);
    assert_eq!(flood["count"], 15);
    let denied = rows
        .iter()
        .find(|r| r["event_type"] == "PERMISSION_DENIED")
        .unwrap();
    assert!(
        reader.contains(denied["user_id"].as_str().unwrap()),
        "the denied key is named"
    );
    assert_eq!(denied["event_details"]["method"], "POST");
    assert_eq!(denied["event_details"]["path"], "/v1/events");

    // filters
    let high = events_until(&app, "severity=HIGH", &admin, |r| !r.is_empty()).await;
    assert!(high.iter().all(|r| r["severity"] == "HIGH"));
    let open = events_until(&app, "requires_review=true", &admin, |r| !r.is_empty()).await;
    assert!(open.iter().all(|r| r["requires_review"] == true));

    // review (admin): reviewed_by is the reviewing key's name
    let id = flood["id"].as_i64().unwrap();
    let (status, reviewed) = status_json(
        app.post(
            &format!("/v1/security-events/{id}/review"),
            &admin,
            &json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reviewed}");
    assert_eq!(reviewed["reviewed_by"], "initial admin key");
    assert!(reviewed["reviewed_at"].is_string());
    assert_eq!(reviewed["requires_review"], false);

    // a client never sees Annals' own events, nor reviews them
    let (_, mine) = status_json(app.get("/v1/security-events", &reader).await).await;
    assert_eq!(mine, json!([]));
    let writer = app.key("acme", "events:write,events:read").await;
    let (status, _) = status_json(
        app.post(
            &format!("/v1/security-events/{id}/review"),
            &writer,
            &json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn clients_report_read_and_review_their_own(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let a = app.key("client-a", "events:write,events:read").await;
    let b = app.key("client-b", "events:write,events:read").await;
    let report = json!({"event_type": "FAILED_LOGIN", "severity": "CRITICAL", "user_id": "42",
                        "ip_address": "203.0.113.9", "event_details": {"attempts": 12}});
    let (status, created) = status_json(app.post("/v1/security-events", &a, &report).await).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_i64().unwrap();
    let (_, mine) = status_json(app.get("/v1/security-events", &a).await).await;
    let mine = mine.as_array().unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["client_id"], "client-a");
    assert_eq!(mine[0]["event_details"]["attempts"], 12);
    assert_eq!(
        mine[0]["requires_review"], true,
        "critical events wait for review"
    );
    let (_, theirs) = status_json(app.get("/v1/security-events", &b).await).await;
    assert_eq!(theirs, json!([]));
    let (status, _) = status_json(
        app.post(&format!("/v1/security-events/{id}/review"), &b, &json!({}))
            .await,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another client can't review it"
    );
    let (status, reviewed) = status_json(
        app.post(&format!("/v1/security-events/{id}/review"), &a, &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reviewed["reviewed_by"], "client-a test key");

    for (bad, field) in [
        (json!({"severity": "LOW"}), "event_type"),
        (
            json!({"event_type": "HACKED", "severity": "LOW"}),
            "event_type",
        ),
        (
            json!({"event_type": "FAILED_LOGIN", "severity": "URGENT"}),
            "severity",
        ),
        (
            json!({"event_type": "FAILED_LOGIN", "severity": "LOW", "ip_address": "nope"}),
            "ip_address",
        ),
        (
            json!({"event_type": "FAILED_LOGIN", "severity": "LOW", "event_details": [1]}),
            "event_details",
        ),
        (
            json!({"event_type": "FAILED_LOGIN", "severity": "LOW", "colour": 1}),
            "colour",
        ),
    ] {
        let (status, body) = status_json(app.post("/v1/security-events", &a, &bad).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_error(&body, "validation_failed");
        assert_eq!(body["field"], field, "{bad}");
    }
    for (query, field) in [
        ("severity=urgent", "severity"),
        ("requires_review=maybe", "requires_review"),
        ("event_type=x", "event_type"),
    ] {
        let (status, body) =
            status_json(app.get(&format!("/v1/security-events?{query}"), &a).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(body["field"], field);
    }
    app.stop().await;
}

crate::conformance!(
    annals_records_its_own_security_events_aggregated,
    clients_report_read_and_review_their_own,
);
