//! Operations: health, restart durability, graceful drain, overload.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, status_json};

#[tokio::test]
async fn health_answers_without_a_key_on_every_path() {
    let app = TestApp::spawn().await;
    for path in ["/v1/health", "/health", "/api/v1/health"] {
        let (status, body) = status_json(app.http.get(app.url(path)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(body["status"], "ok");
        assert_eq!(body["store"], "sqlite");
    }
    let r = app.http.get(app.url("/health")).send().await.unwrap();
    assert!(r.headers().contains_key("x-request-id"));
    app.stop().await;
}

#[tokio::test]
async fn events_survive_a_restart_and_seq_continues() {
    let app = TestApp::spawn_with(|a| a.api_key = Some("static".into())).await;
    let db = app.dir.path().join("annals.db").display().to_string();
    let first = app
        .record("static", json!({"event_type": "a", "event_id": "e1"}))
        .await;
    let stopped = app.stop_keep_dir().await;
    let mut args = annals::config::ServeArgs::with_database(db);
    args.api_key = Some("static".into());
    let server = annals::server::start(args).await.unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.addr);
    let r = http
        .post(format!("{base}/v1/events"))
        .header("x-api-key", "static")
        .json(&json!({"event_type": "a", "event_id": "e1"}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(r).await;
    assert_eq!(status, StatusCode::OK, "idempotency survives restart");
    assert_eq!(body["id"], first);
    let r = http
        .post(format!("{base}/v1/events"))
        .header("x-api-key", "static")
        .json(&json!({"event_type": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let list: Vec<Value> = http
        .get(format!("{base}/v1/events?order=asc"))
        .header("x-api-key", "static")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seqs: Vec<i64> = list.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2]);
    server.stop().await.unwrap();
    drop(stopped);
}

#[tokio::test]
async fn stop_drains_every_accepted_write() {
    let app = TestApp::spawn_with(|a| a.api_key = Some("static".into())).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (http, url) = (app.http.clone(), app.url("/v1/events"));
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("x-api-key", "static")
                .json(&json!({"event_type": "drain.test.sent", "event_id": format!("d{i}")}))
                .send()
                .await
                .unwrap();
            r.status()
        }));
    }
    let mut created = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::CREATED {
            created += 1;
        }
    }
    assert_eq!(created, 200);
    let db = app.dir.path().join("annals.db").display().to_string();
    let stopped = app.stop_keep_dir().await;
    let store = annals::server::open_store(&annals::config::ServeArgs::with_database(db).store)
        .await
        .unwrap();
    let page = store
        .query_events(annals::store::EventQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.events.len(), 200);
    store.shutdown().await;
    drop(stopped);
}

#[tokio::test]
async fn a_full_write_queue_answers_503_with_retry_after_and_loses_nothing_acknowledged() {
    // One job and a few bytes of queue: concurrent requests must overflow it.
    let app = TestApp::spawn_with(|a| {
        a.api_key = Some("static".into());
        a.store.write_queue_jobs = 1;
        a.store.write_queue_bytes = 1;
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (http, url) = (app.http.clone(), app.url("/v1/events"));
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("x-api-key", "static")
                .json(&json!({"event_type": "flood", "data": {"i": i, "pad": "p".repeat(2000)}}))
                .send()
                .await
                .unwrap();
            let retry_after = r.headers().get("retry-after").cloned();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (status, retry_after, body)
        }));
    }
    let (mut created, mut refused) = (0, 0);
    for t in tasks {
        let (status, retry_after, body) = t.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                assert!(retry_after.is_some());
                assert_eq!(body["error"], "overloaded");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(refused > 0, "the queue never filled");
    let stored = app.list("/v1/events?limit=1000", "static").await.len();
    assert_eq!(stored, created);
    app.stop().await;
}
