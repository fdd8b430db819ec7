//! `GET /v1/ws/metrics`: live metrics over a WebSocket — subscribe with a key in the header or
//! in the message, scoped to the caller's client, refused keys closed — on both stores.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{Backend, TestApp};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, key: Option<&str>) -> Socket {
    let url = app.url("/v1/ws/metrics").replace("http://", "ws://");
    let mut request = url.into_client_request().unwrap();
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("x-api-key", key.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .unwrap();
}

/// The next text message as JSON, or `None` once the server closed the socket.
async fn next(socket: &mut Socket) -> Option<Value> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("a message within 5 s")
}

async fn subscribers_get_their_own_live_metrics(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let acme = app.key("acme", "events:read,events:write").await;
    let other = app.key("other", "events:read,events:write").await;
    for _ in 0..3 {
        app.record(&acme, json!({"event_type": "user.created", "data": {}}))
            .await;
    }
    app.record(&other, json!({"event_type": "user.deleted", "data": {}}))
        .await;

    // A browser's way: the key in the subscribe message.
    let mut socket = connect(&app, None).await;
    send(
        &mut socket,
        json!({"type": "subscribe", "client_id": "acme", "api_key": acme}),
    )
    .await;
    let metrics = next(&mut socket).await.unwrap();
    assert_eq!(metrics["type"], "metrics", "{metrics}");
    assert_eq!(metrics["client_id"], "acme");
    let seen = metrics["events_last_minute"].as_i64().unwrap();
    assert!((1..=3).contains(&seen), "{metrics}");
    assert_eq!(metrics["by_type"][0]["event_type"], "user.created");
    assert!(
        metrics.get("write_queue").is_none(),
        "node queues are for admins"
    );
    // Another client's numbers are refused, and the socket stays open.
    send(
        &mut socket,
        json!({"type": "subscribe", "client_id": "other"}),
    )
    .await;
    let refused = loop {
        let m = next(&mut socket).await.unwrap();
        if m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(refused["status"], 403, "{refused}");
    assert_eq!(refused["field"], "client_id");
    send(
        &mut socket,
        json!({"type": "subscribe", "interval_secs": 0}),
    )
    .await;
    let bad = loop {
        let m = next(&mut socket).await.unwrap();
        if m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(bad["field"], "interval_secs", "{bad}");

    // The header's way, as an admin: every client, and the node's queue.
    let mut admin = connect(&app, Some(&app.admin_key)).await;
    send(&mut admin, json!({"type": "subscribe"})).await;
    let all = next(&mut admin).await.unwrap();
    assert_eq!(all["client_id"], Value::Null, "{all}");
    let types: Vec<&str> = all["by_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["event_type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"user.deleted"), "{all}");
    assert!(all["write_queue"]["max_jobs"].as_u64().unwrap() > 0);

    // A server stop closes the sockets.
    app.stop().await;
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while next(&mut admin).await.is_some() {}
    })
    .await;
    assert!(rest.is_ok(), "the socket closed");
}

async fn bad_keys_and_messages_are_refused(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    // A wrong key in the header is refused before the upgrade.
    let url = app.url("/v1/ws/metrics").replace("http://", "ws://");
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-api-key", "ank_wrong".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected a 401, got {:?}", other.map(|r| r.1)),
    }
    // A wrong key in the message closes the socket.
    let mut socket = connect(&app, None).await;
    send(
        &mut socket,
        json!({"type": "subscribe", "api_key": "ank_wrong"}),
    )
    .await;
    assert_eq!(next(&mut socket).await, None);
    // Without any key: told how to send one.
    let mut socket = connect(&app, None).await;
    send(&mut socket, json!({"type": "subscribe"})).await;
    let m = next(&mut socket).await.unwrap();
    assert_eq!(m["field"], "api_key", "{m}");
    socket.send(Message::text("not json")).await.unwrap();
    let m = next(&mut socket).await.unwrap();
    assert_eq!(m["error"], "invalid_json", "{m}");
    send(&mut socket, json!({"type": "dance"})).await;
    let m = next(&mut socket).await.unwrap();
    assert_eq!(m["field"], "type", "{m}");
    // A plain GET is told to upgrade.
    let r = app.get("/v1/ws/metrics", &app.admin_key).await;
    assert_eq!(r.status(), 400);
    // Write-only keys can't read metrics.
    let writer = app.key("acme", "events:write").await;
    let mut socket = connect(&app, Some(&writer)).await;
    send(&mut socket, json!({"type": "subscribe"})).await;
    let m = next(&mut socket).await.unwrap();
    assert_eq!(m["status"], 403, "{m}");
    app.stop().await;
}

/// The dashboard page and its files are served with a policy that keeps them to this server.
#[tokio::test]
async fn the_dashboard_is_served_with_a_strict_policy() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    for (path, kind, needle) in [
        ("/dashboard", "text/html", "/dashboard/app.js"),
        ("/dashboard/app.js", "text/javascript", "/v1/ws/metrics"),
        ("/dashboard/style.css", "text/css", "body"),
    ] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let headers = r.headers().clone();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }
    app.stop().await;
}

crate::conformance!(
    subscribers_get_their_own_live_metrics,
    bad_keys_and_messages_are_refused,
);
