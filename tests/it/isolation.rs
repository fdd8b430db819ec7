//! The isolation sweep: two clients, every read endpoint there is, neither sees the other's
//! data, and a key without `admin` reaches no admin endpoint.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, TestApp};

async fn two_clients_never_see_each_other_anywhere(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let a = app.key("client-a", "events:write,events:read").await;
    let b = app.key("client-b", "events:write,events:read").await;
    let a_event = app
        .record(&a, json!({"event_type": "secret.a.made", "user_id": "shared", "event_id": "same", "data": {"owner": "alpha"}}))
        .await;
    let b_event = app
        .record(&b, json!({"event_type": "secret.b.made", "user_id": "shared", "event_id": "same", "data": {"owner": "bravo"}}))
        .await;
    // and an ApiEvent each, with the same source and correlation id
    let mut api_ids = Vec::new();
    for (key, marker) in [(&a, "alpha"), (&b, "bravo")] {
        let api_event = json!({
            "eventType": "REQUEST", "sourceSystem": "shared", "eventTime": "2026-11-21T10:00:00Z",
            "eventData": {"endpoint": format!("/{marker}"), "method": "GET", "statusCode": 200},
            "correlationId": "2f1c6c2e-8d2a-4b51-9a57-0c1f3e7d5b10", "status": "SUCCESS"});
        let r = app.post("/v1/api-events", key, &api_event).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: serde_json::Value = r.json().await.unwrap();
        api_ids.push(body["id"].as_str().unwrap().to_string());
    }
    // each reports a security event of its own, marked with its data marker
    for (key, marker) in [(&a, "alpha"), (&b, "bravo")] {
        let report = json!({"event_type": "FAILED_LOGIN", "severity": "LOW", "event_details": {"owner": marker}});
        assert_eq!(
            app.post("/v1/security-events", key, &report).await.status(),
            StatusCode::CREATED
        );
    }
    // let the audit log catch up so its rows exist for both
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let reads = |own: &str, other: &str, other_api: &str| {
        vec![
            String::from("/v1/api-events"),
            String::from("/api/v1/api-events"),
            String::from("/v1/api-events?sourceSystem=shared"),
            format!("/v1/api-events/{other_api}"),
            format!("/api/v1/api-events/{other_api}"),
            String::from("/v1/events"),
            String::from("/v1/events/export"),
            String::from("/v1/events/export?format=csv"),
            String::from("/api/v1/events/export"),
            String::from("/events"),
            String::from("/api/v1/events"),
            String::from("/v1/events?user_id=shared"),
            String::from("/v1/events?event_type=secret.%23"),
            String::from("/v1/events?owner=bravo"),
            String::from("/v1/events?owner=alpha"),
            format!("/v1/events/{own}"),
            format!("/v1/events/{other}"),
            format!("/api/v1/events/{other}"),
            String::from("/v1/audit/logs"),
            String::from("/api/v1/audit/logs"),
            String::from("/v1/audit/logs?endpoint=/v1/events"),
            String::from("/v1/security-events"),
            String::from("/api/v1/security-events"),
        ]
    };
    for (key, me, them, own_event, other_event, other_api, their_marker) in [
        (
            &a,
            "client-a",
            "client-b",
            &a_event,
            &b_event,
            &api_ids[1],
            "bravo",
        ),
        (
            &b,
            "client-b",
            "client-a",
            &b_event,
            &a_event,
            &api_ids[0],
            "alpha",
        ),
    ] {
        for path in reads(own_event, other_event, other_api) {
            let r = app.get(&path, key).await;
            let status = r.status();
            let body = r.text().await.unwrap();
            assert!(
                status == StatusCode::OK || status == StatusCode::NOT_FOUND,
                "{me} {path}: {status} {body}"
            );
            assert!(!body.contains(them), "{me} sees {them} at {path}: {body}");
            // (A 404 or one's own audit row may echo an id one asked for; listings must not.)
            if status == StatusCode::OK && !path.contains("audit") {
                assert!(
                    !body.contains(other_event.as_str()),
                    "{me} sees {them}'s event at {path}"
                );
            }
            assert!(
                !body.contains(their_marker),
                "{me} sees {them}'s data at {path}"
            );
        }
        assert_eq!(
            app.get(&format!("/v1/events/{other_event}"), key)
                .await
                .status(),
            StatusCode::NOT_FOUND
        );
        // naming the other client is refused on every listing
        for path in [
            "/v1/events",
            "/v1/api-events",
            "/v1/audit/logs",
            "/v1/security-events",
        ] {
            let r = app.get(&format!("{path}?client_id={them}"), key).await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{me} {path}");
        }
        // admin endpoints are closed to non-admin keys, whatever the method
        for (method, path) in [
            (Method::GET, "/v1/keys"),
            (Method::POST, "/v1/keys"),
            (Method::PATCH, "/v1/keys/0123456789abcdef"),
            (Method::DELETE, "/v1/keys/0123456789abcdef"),
            (Method::GET, "/api/v1/keys"),
            (Method::POST, "/api/v1/keys/"),
        ] {
            let r = app
                .http
                .request(method.clone(), app.url(path))
                .header("x-api-key", key)
                .json(&json!({"client_id": me, "name": "escalate"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{me} {method} {path}");
        }
    }
    app.stop().await;
}

crate::conformance!(two_clients_never_see_each_other_anywhere);
