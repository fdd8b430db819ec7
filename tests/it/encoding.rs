//! Compression at the edge and the event-type policy: gzip/deflate request bodies (the size
//! limit counts inflated bytes, so a gzip bomb is a 413 without the memory), gzip answers, and
//! the `Warning` header / 422 of `ANNALS_EVENT_TYPE_POLICY`.

use std::io::Write;

use flate2::Compression;
use flate2::write::{GzEncoder, ZlibEncoder};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::conformance;
use crate::helpers::{Backend, TestApp, assert_error, status_json};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn post_encoded(
    app: &TestApp,
    key: &str,
    encoding: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let r = app
        .http
        .post(app.url("/v1/events"))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("content-encoding", encoding)
        .body(body)
        .send()
        .await
        .unwrap();
    status_json(r).await
}

async fn compressed_bodies(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| a.max_body_bytes = 1024 * 1024).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let event = json!({"event_type": "iam.user.created", "data": {"n": 1}}).to_string();

    let (status, body) = post_encoded(&app, &key, "gzip", gzip(event.as_bytes())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
    zlib.write_all(event.as_bytes()).unwrap();
    let (status, body) = post_encoded(&app, &key, "deflate", zlib.finish().unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // A gzip bomb: 16 MiB of zeros inside a ~16 KiB body, against a 1 MiB limit. (Small
    // enough that the server has read all of it when it answers, so the client sees the 413
    // rather than a reset connection.)
    let mut bomb = br#"{"event_type": "x.y.created", "data": {"pad": ""#.to_vec();
    bomb.extend(std::iter::repeat_n(b'0', 16 * 1024 * 1024));
    bomb.extend(br#""}}"#);
    let compressed = gzip(&bomb);
    assert!(
        compressed.len() < 1024 * 1024,
        "the compressed body is under the limit"
    );
    let (status, body) = post_encoded(&app, &key, "gzip", compressed).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_error(&body, "payload_too_large");

    let (status, body) = post_encoded(&app, &key, "gzip", b"not gzip at all".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = post_encoded(&app, &key, "br", event.clone().into_bytes()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert_eq!(body["field"], "content-encoding");
    assert_eq!(
        app.list("/v1/events", &key).await.len(),
        2,
        "only the two good ones"
    );

    // Large answers are gzip-compressed for clients that accept it; small ones are not.
    let events: Vec<Value> = (0..200)
        .map(|i| json!({"event_type": "iam.user.created", "data": {"i": i, "text": "some repeated text"}}))
        .collect();
    let r = app
        .post("/v1/events/batch", &key, &json!({"events": events}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let get = async |path: &str| {
        app.http
            .get(app.url(path))
            .header("x-api-key", &key)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap()
    };
    let r = get("/v1/events?limit=1000").await;
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let compressed = r.bytes().await.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&compressed[..]),
        &mut text,
    )
    .unwrap();
    let listed: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(listed.len(), 202);
    assert!(compressed.len() * 4 < text.len(), "compressed well");
    let r = get("/v1/events?limit=1").await;
    assert!(
        r.headers().get("content-encoding").is_none(),
        "small answers stay plain"
    );
    app.stop().await;
}

async fn open_policy_warns(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let r = app
        .post(
            "/v1/events",
            &key,
            &json!({"event_type": "billing.invoice.paid"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().get("warning").is_none());

    let r = app
        .post("/v1/events", &key, &json!({"event_type": "UserLogin"}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED, "open mode accepts it");
    let warning = r.headers()["warning"].to_str().unwrap().to_string();
    assert!(warning.starts_with("299 annals \""), "{warning}");
    assert!(
        warning.contains("UserLogin") && warning.contains("segment"),
        "{warning}"
    );
    let body: Value = r.json().await.unwrap();
    assert!(body["warning"].as_str().unwrap().contains("UserLogin"));

    let r = app
        .post(
            "/v1/events/batch",
            &key,
            &json!({"events": [
            {"event_type": "iam.user.created"}, {"event_type": "iam.user.create"}]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(
        r.headers()["warning"]
            .to_str()
            .unwrap()
            .contains("past-tense")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["warnings"][0]["index"], 1);

    // ApiEvents keep the seed's REQUEST/RESPONSE/ERROR types without a warning.
    let r = app
        .post(
            "/v1/api-events",
            &key,
            &json!({
            "eventType": "REQUEST", "sourceSystem": "s", "eventTime": "2026-11-21T10:00:00Z",
            "eventData": {"endpoint": "/", "method": "GET", "statusCode": 200},
            "correlationId": "2f1c6c2e-8d2a-4b51-9a57-0c1f3e7d5b10", "status": "SUCCESS"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().get("warning").is_none());
    app.stop().await;
}

async fn convention_policy_refuses(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| {
        a.event_type_policy = annals::domain::type_policy::EventTypePolicy::Convention
    })
    .await
    else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    for ok in [
        "iam.user.created",
        "billing.invoice.paid",
        "mail.message.sent",
        "ci.image.built",
    ] {
        let r = app
            .post("/v1/events", &key, &json!({"event_type": ok}))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "{ok}");
    }
    for bad in [
        "user_login",
        "billing.invoice",
        "Billing.Invoice.Paid",
        "billing.invoice.pay",
    ] {
        let (status, body) = status_json(
            app.post("/v1/events", &key, &json!({"event_type": bad}))
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["field"], "event_type");
    }
    // A CloudEvent's type names its own field.
    let r = app
        .post_raw("/v1/events", &key, Some("application/cloudevents+json"),
            json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "com.example.someevent"}).to_string())
        .await;
    let (status, body) = status_json(r).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "type");
    // A batch with one bad type stores nothing.
    let (status, body) = status_json(
        app.post(
            "/v1/events/batch",
            &key,
            &json!({"events": [
            {"event_type": "iam.user.created"}, {"event_type": "login"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["index"], 1);
    assert_eq!(app.list("/v1/events", &key).await.len(), 4);
    app.stop().await;
}

conformance!(
    compressed_bodies,
    open_policy_warns,
    convention_policy_refuses
);
