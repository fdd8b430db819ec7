//! `GET /v1/stream`: new events as Server-Sent Events, filtered, scoped to the caller's client,
//! resumable with `Last-Event-ID` — on both stores.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_error, status_json};

/// An open stream's messages as (id, data), read as they arrive.
struct Messages {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Messages {
    async fn open(app: &TestApp, path: &str, key: &str, last_event_id: Option<&str>) -> Self {
        let mut request = app.http.get(app.url(path)).header("x-api-key", key);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        Self {
            body: Box::pin(r.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next message with data (keep-alive comments skipped), within five seconds.
    async fn next(&mut self) -> (i64, Value) {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let message: String = self.buffer.drain(..end + 2).collect();
                    let mut id = None;
                    let mut data = None;
                    for line in message.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            id = Some(v.trim().parse().unwrap());
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data = Some(serde_json::from_str(v.trim()).unwrap());
                        }
                    }
                    if let (Some(id), Some(data)) = (id, data) {
                        return (id, data);
                    }
                    continue;
                }
                let chunk = self
                    .body
                    .next()
                    .await
                    .expect("the stream stays open")
                    .unwrap();
                self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("a message within 5 s")
    }

    /// Nothing more arrives for a while.
    async fn silent(&mut self) {
        let quiet = tokio::time::timeout(Duration::from_millis(400), self.next()).await;
        assert!(quiet.is_err(), "unexpected message: {quiet:?}");
    }
}

async fn new_matching_events_stream_in_order_and_resume(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let acme = app.key("acme", "events:read,events:write").await;
    let other = app.key("other", "events:read,events:write").await;
    app.record(
        &acme,
        json!({"event_type": "billing.invoice.paid", "data": {"old": true}}),
    )
    .await;
    let mut stream = Messages::open(&app, "/v1/stream?pattern=billing.%23", &acme, None).await;
    app.record(
        &other,
        json!({"event_type": "billing.invoice.paid", "data": {}}),
    )
    .await;
    app.record(&acme, json!({"event_type": "iam.user.created", "data": {}}))
        .await;
    let first = app
        .record(
            &acme,
            json!({"event_type": "billing.invoice.paid", "data": {"n": 1}}),
        )
        .await;
    let batch = app
        .post(
            "/v1/events/batch",
            &acme,
            &json!({"events": [
                {"event_type": "billing.invoice.sent", "data": {"n": 2}},
                {"event_type": "billing.refund.made", "data": {"n": 3}}
            ]}),
        )
        .await;
    assert_eq!(batch.status(), StatusCode::CREATED);
    let (seq1, e1) = stream.next().await;
    assert_eq!(
        e1["id"],
        first.as_str(),
        "old events and other clients' are not sent"
    );
    let (seq2, e2) = stream.next().await;
    let (seq3, e3) = stream.next().await;
    assert_eq!(
        (e2["data"]["n"].as_i64(), e3["data"]["n"].as_i64()),
        (Some(2), Some(3))
    );
    assert!(seq1 < seq2 && seq2 < seq3);
    stream.silent().await;
    drop(stream);
    // A reconnect resumes after the last id it saw.
    app.record(
        &acme,
        json!({"event_type": "billing.invoice.paid", "data": {"n": 4}}),
    )
    .await;
    let mut resumed = Messages::open(
        &app,
        "/v1/stream?pattern=billing.%23",
        &acme,
        Some(&seq2.to_string()),
    )
    .await;
    assert_eq!(resumed.next().await.0, seq3);
    assert_eq!(resumed.next().await.1["data"]["n"], 4);
    // Data filters apply too; an admin may watch one client.
    let mut filtered = Messages::open(&app, "/v1/stream?n=5", &acme, None).await;
    let mut admin = Messages::open(&app, "/v1/stream?client_id=acme", &app.admin_key, None).await;
    app.record(&acme, json!({"event_type": "x.y", "data": {"n": 6}}))
        .await;
    app.record(&acme, json!({"event_type": "x.y", "data": {"n": 5}}))
        .await;
    assert_eq!(filtered.next().await.1["data"]["n"], 5);
    assert_eq!(admin.next().await.1["data"]["n"], 6);
    assert_eq!(admin.next().await.1["data"]["n"], 5);
    drop((filtered, admin, resumed));
    app.stop().await;
}

async fn bad_stream_requests_are_refused(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let acme = app.key("acme", "events:read").await;
    let writer = app.key("acme", "events:write").await;
    for (path, field) in [
        ("/v1/stream?pattern=a..b", "event_type"),
        ("/v1/stream?after=-1", "after"),
        ("/v1/stream?limit=5", "limit"),
        ("/v1/stream?from=yesterday", "from"),
    ] {
        let (status, body) = status_json(app.get(path, &acme).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
        assert_error(&body, "validation_failed");
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    let r = app
        .http
        .get(app.url("/v1/stream"))
        .header("x-api-key", &acme)
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.get("/v1/stream", &writer).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get("/v1/stream?client_id=other", &acme).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get("/v1/stream", "nope").await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.stop().await;
}

/// A server stop ends open streams instead of waiting for them.
async fn stopping_the_server_ends_open_streams(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:read").await;
    let mut stream = Messages::open(&app, "/v1/stream", &key, None).await;
    let started = std::time::Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let rest = tokio::time::timeout(Duration::from_secs(2), stream.body.next()).await;
    assert!(
        matches!(rest, Ok(None) | Ok(Some(Err(_)))),
        "the stream ended"
    );
}

crate::conformance!(
    new_matching_events_stream_in_order_and_resume,
    bad_stream_requests_are_refused,
    stopping_the_server_ends_open_streams,
);
