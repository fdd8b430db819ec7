//! Inbound webhooks: integrations an admin configures, third-party webhooks verified by
//! Standard Webhooks or Stripe signatures or an API key, recorded as events (redeliveries are
//! duplicates) and integration log rows; unverified ones refused — on both stores.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_error, status_json};

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn integrate(app: &TestApp, body: Value) -> Value {
    let (status, created) =
        status_json(app.post("/v1/integrations", &app.admin_key, &body).await).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

async fn send(
    app: &TestApp,
    name: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (StatusCode, Value) {
    let mut request = app
        .http
        .post(app.url(&format!("/v1/inbound/{name}")))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (h, v) in headers {
        request = request.header(*h, v);
    }
    status_json(request.send().await.unwrap()).await
}

fn standard(secret: &str, id: &str, at: i64, body: &str) -> Vec<(&'static str, String)> {
    vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", at.to_string()),
        (
            "webhook-signature",
            annals::bus::signing::sign(&[secret], id, at, body.as_bytes()),
        ),
    ]
}

async fn standard_webhooks_become_events_once(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let acme = app.key("acme", "events:read").await;
    let created = integrate(
        &app,
        json!({"name": "SVIX", "client_id": "acme", "verification": "standard_webhooks"}),
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_string();
    assert_eq!(created["event_type"], "inbound.svix.received");
    let body = r#"{"type":"user.created","user":{"id":7}}"#;
    let (status, first) = send(&app, "SVIX", &standard(&secret, "msg_1", now(), body), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["duplicate"], false);
    let (status, again) = send(&app, "SVIX", &standard(&secret, "msg_1", now(), body), body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["id"], first["id"]);
    let events = app.list("/v1/events?source=inbound:SVIX", &acme).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_type"], "inbound.svix.received");
    assert_eq!(events[0]["event_id"], "msg_1");
    assert_eq!(events[0]["data"]["user"]["id"], 7);
    let logs = app
        .list("/v1/integration-logs?operation=WEBHOOK_RECEIVED", &acme)
        .await;
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0]["integration_name"], "SVIX");
    assert_eq!(logs[0]["external_id"], "msg_1");
    // Refusals: a wrong secret, a changed body, an old timestamp, no signature.
    let other_secret = annals::domain::bus::new_secret();
    let refusals = [
        standard(&other_secret, "msg_2", now(), body),
        standard(&secret, "msg_2", now(), "{}"),
        standard(&secret, "msg_2", now() - 600, body),
        vec![("webhook-id", "msg_2".to_string())],
    ];
    for headers in refusals {
        let (status, error) = send(&app, "SVIX", &headers, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
        assert_error(&error, "unauthorized");
    }
    assert_eq!(
        app.list("/v1/events?source=inbound:SVIX", &acme)
            .await
            .len(),
        1
    );
    let (status, error) = send(&app, "NOPE", &[], body).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    app.stop().await;
}

async fn stripe_and_api_key_integrations(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let reader = app.key("acme", "events:read").await;
    let writer = app.key("acme", "events:write").await;
    let stranger = app.key("other", "events:write").await;
    let secret = "whsec_stripe_given_secret_1234";
    integrate(
        &app,
        json!({"name": "STRIPE", "client_id": "acme", "verification": "stripe", "secret": secret, "event_type": "billing.stripe.notified"}),
    )
    .await;
    let body = r#"{"id":"evt_1","type":"invoice.paid","data":{"object":{"amount":1200}}}"#;
    let signed = |body: &str| {
        vec![(
            "stripe-signature",
            annals::bus::inbound::stripe_signature(secret, now(), body.as_bytes()),
        )]
    };
    let (status, first) = send(&app, "STRIPE", &signed(body), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (_, again) = send(&app, "STRIPE", &signed(body), body).await;
    assert_eq!(
        again["duplicate"], true,
        "Stripe's event id is the idempotency key"
    );
    let (status, _) = send(&app, "STRIPE", &signed("{}"), body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let events = app
        .list("/v1/events?event_type=billing.stripe.notified", &reader)
        .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_id"], "evt_1");

    integrate(
        &app,
        json!({"name": "CRM", "client_id": "acme", "verification": "api_key"}),
    )
    .await;
    let body = r#"[1, 2, 3]"#;
    let (status, ok) = send(&app, "CRM", &[("x-api-key", writer.clone())], body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ok}");
    for headers in [
        vec![("x-api-key", stranger.clone())],
        vec![("x-api-key", reader.clone())],
        vec![],
    ] {
        let (status, error) = send(&app, "CRM", &headers, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
    }
    let crm = app.list("/v1/events?source=inbound:CRM", &reader).await;
    assert_eq!(crm.len(), 1);
    assert_eq!(crm[0]["data"]["payload"], json!([1, 2, 3]));
    // Not JSON: refused after verification, nothing stored.
    let (status, _) = send(&app, "CRM", &[("x-api-key", writer.clone())], "{oops").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.list("/v1/events?source=inbound:CRM", &reader)
            .await
            .len(),
        1
    );
    app.stop().await;
}

async fn integrations_are_managed_by_admins_with_checked_fields(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let client = app.key("acme", "events:read,events:write").await;
    let body = json!({"name": "SVIX", "client_id": "acme", "verification": "standard_webhooks"});
    assert_eq!(
        app.post("/v1/integrations", &client, &body).await.status(),
        StatusCode::FORBIDDEN
    );
    integrate(&app, body.clone()).await;
    let (status, error) =
        status_json(app.post("/v1/integrations", &app.admin_key, &body).await).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    for (bad, field) in [
        (
            json!({"client_id": "acme", "verification": "api_key"}),
            "name",
        ),
        (
            json!({"name": "has space", "client_id": "acme", "verification": "api_key"}),
            "name",
        ),
        (
            json!({"name": "X", "client_id": "a$b", "verification": "api_key"}),
            "client_id",
        ),
        (
            json!({"name": "X", "client_id": "acme", "verification": "magic"}),
            "verification",
        ),
        (
            json!({"name": "X", "client_id": "acme", "verification": "stripe"}),
            "secret",
        ),
        (
            json!({"name": "X", "client_id": "acme", "verification": "api_key", "secret": "0123456789abcdefg"}),
            "secret",
        ),
        (
            json!({"name": "X", "client_id": "acme", "verification": "standard_webhooks", "secret": "not-base64-secret!"}),
            "secret",
        ),
        (
            json!({"name": "X", "client_id": "acme", "verification": "api_key", "event_type": "a b"}),
            "event_type",
        ),
        (
            json!({"name": "X", "client_id": "acme", "verification": "api_key", "extra": 1}),
            "extra",
        ),
    ] {
        let (status, error) =
            status_json(app.post("/v1/integrations", &app.admin_key, &bad).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {error}");
        assert_eq!(error["field"], field, "{bad}: {error}");
    }
    let listed = app.list("/v1/integrations", &app.admin_key).await;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].get("secret").is_none(), "{listed:?}");
    assert_eq!(
        app.get("/v1/integrations", &client).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.delete("/v1/integrations/SVIX", &app.admin_key)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete("/v1/integrations/SVIX", &app.admin_key)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let (status, _) = send(&app, "SVIX", &[], "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn an_address_that_keeps_failing_verification_is_refused(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| a.failed_auth_per_minute = 3).await else {
        return;
    };
    let created = integrate(
        &app,
        json!({"name": "SVIX", "client_id": "acme", "verification": "standard_webhooks"}),
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_string();
    let body = "{}";
    let wrong = annals::domain::bus::new_secret();
    for _ in 0..3 {
        let (status, _) = send(&app, "SVIX", &standard(&wrong, "m", now(), body), body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Past the limit even a good signature waits: the address is refused before any read.
    let (status, error) = send(&app, "SVIX", &standard(&secret, "m", now(), body), body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{error}");
    assert_error(&error, "rate_limited");
    app.stop().await;
}

crate::conformance!(
    an_address_that_keeps_failing_verification_is_refused,
    standard_webhooks_become_events_once,
    stripe_and_api_key_integrations,
    integrations_are_managed_by_admins_with_checked_fields,
);
