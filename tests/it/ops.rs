//! Operations: health, restart durability, graceful drain, overload — on both stores.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, get_array, status_json};

async fn health_answers_without_a_key_on_every_path(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let store = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    for path in ["/v1/health", "/health", "/api/v1/health"] {
        let (status, body) = status_json(app.http.get(app.url(path)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(body["status"], "ok");
        assert_eq!(body["store"], store);
    }
    let r = app.http.get(app.url("/health")).send().await.unwrap();
    assert!(r.headers().contains_key("x-request-id"));
    app.stop().await;
}

async fn events_survive_a_restart_and_seq_continues(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.admin_key.clone();
    let first = app
        .record(&key, json!({"event_type": "a", "event_id": "e1"}))
        .await;
    let app = app.restart().await;
    let (status, body) = status_json(
        app.post(
            "/v1/events",
            &key,
            &json!({"event_type": "a", "event_id": "e1"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "idempotency survives restart");
    assert_eq!(body["id"], first);
    app.record(&key, json!({"event_type": "b"})).await;
    let seqs: Vec<i64> = app
        .list("/v1/events?order=asc", &key)
        .await
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
    app.stop().await;
}

async fn stop_drains_every_accepted_write(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (http, url, key) = (
            app.http.clone(),
            app.url("/v1/events"),
            app.admin_key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("x-api-key", key)
                .json(&json!({"event_type": "drain.test.sent", "event_id": format!("d{i}")}))
                .send()
                .await
                .unwrap();
            r.status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    let stopped = app.stop_keep_db().await;
    let store = annals::server::open_store(&stopped.args.store)
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
}

async fn a_full_write_queue_answers_503_with_retry_after_and_loses_nothing_acknowledged(
    backend: Backend,
) {
    // One job and a few bytes of queue: concurrent requests must overflow it.
    let Some(app) = TestApp::spawn_with(backend, |a| {
        a.store.write_queue_jobs = 1;
        a.store.write_queue_bytes = 1;
    })
    .await
    else {
        return;
    };
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (http, url, key) = (
            app.http.clone(),
            app.url("/v1/events"),
            app.admin_key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("x-api-key", key)
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
    let stored = app
        .list("/v1/events?limit=1000", &app.admin_key)
        .await
        .len();
    assert_eq!(stored, created);
    app.stop().await;
}

async fn committed_ranges_are_announced_to_subscribers(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let mut commits = app.store.commits();
    app.record(&app.admin_key, json!({"event_type": "n.one.made"}))
        .await;
    let batch = json!({"events": [{"event_type": "n.b.made"}, {"event_type": "n.b.made"}, {"event_type": "n.b.made"}]});
    assert_eq!(
        app.post("/v1/events/batch", &app.admin_key, &batch)
            .await
            .status(),
        StatusCode::CREATED
    );
    let mut next = 1;
    while next <= 4 {
        let range = tokio::time::timeout(std::time::Duration::from_secs(5), commits.recv())
            .await
            .expect("a commit is announced")
            .expect("no lag");
        assert_eq!(range.first, next, "ranges arrive in order without gaps");
        next = range.last + 1;
    }
    assert_eq!(next, 5);
    app.stop().await;
}

/// The value of the sample `name` (with its labels) in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

/// `GET /metrics`: Prometheus text for admin keys, counting what this node did and reading the
/// store's figures at each scrape.
async fn metrics_count_requests_events_and_deliveries(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:read,events:write").await;
    let r = app
        .post(
            "/v1/subscriptions",
            &key,
            &json!({"subscriber_name": "w", "topic_pattern": "#", "callback_method": "m"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let event = json!({"event_type": "a.b", "event_id": "e-1", "data": {}});
    for _ in 0..2 {
        app.post("/v1/events", &key, &event).await;
    }
    app.record(&key, json!({"event_type": "a.c", "data": {}}))
        .await;
    let r = app.get("/metrics", &app.admin_key).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    let value = |name: &str| metric(&text, name);
    assert_eq!(value("annals_events_stored_total"), 2.0);
    assert_eq!(value("annals_events_duplicate_total"), 1.0);
    assert_eq!(value("annals_append_seconds_count"), 3.0);
    assert!(value("annals_http_responses_total{class=\"2xx\"}") >= 4.0);
    assert_eq!(value("annals_deliveries{status=\"pending\"}"), 2.0);
    assert_eq!(value("annals_store_up"), 1.0);
    assert_eq!(value("annals_write_queue_jobs"), 0.0);
    assert_eq!(value("annals_streams_open"), 0.0);
    // The tree, whether or not its keeper has come round yet: every event is in it or behind.
    assert_eq!(
        value("annals_merkle_tree_size") + value("annals_merkle_events_behind"),
        2.0
    );
    assert_eq!(value("annals_merkle_checkpoint_size"), 0.0);
    assert_eq!(app.sign_checkpoint().await.0, StatusCode::CREATED);
    let text = app
        .get("/metrics", &app.admin_key)
        .await
        .text()
        .await
        .unwrap();
    let value = |name: &str| metric(&text, name);
    assert_eq!(value("annals_merkle_tree_size"), 2.0);
    assert_eq!(value("annals_merkle_events_behind"), 0.0);
    assert_eq!(value("annals_merkle_checkpoint_size"), 2.0);

    let r = app.get("/metrics", &key).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

crate::conformance!(
    metrics_count_requests_events_and_deliveries,
    committed_ranges_are_announced_to_subscribers,
    health_answers_without_a_key_on_every_path,
    events_survive_a_restart_and_seq_continues,
    stop_drains_every_accepted_write,
    a_full_write_queue_answers_503_with_retry_after_and_loses_nothing_acknowledged,
);

/// `/openapi.json` describes the API, and every operation it lists is served: none is answered
/// by the unknown-route or wrong-method fallbacks. `/docs` renders it.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
            let url = app.url(
                &path
                    .replace("{id}", "00000000-0000-0000-0000-000000000000")
                    .replace("{name}", "nope"),
            );
            let request = match method.as_str() {
                "get" => app.http.get(url),
                "post" => app.http.post(url).json(&json!({})),
                "patch" => app.http.patch(url).json(&json!({})),
                "delete" => app.http.delete(url),
                other => panic!("unexpected method {other}"),
            };
            let r = request
                .header("x-api-key", &app.admin_key)
                .send()
                .await
                .unwrap();
            let status = r.status();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            if status == StatusCode::NOT_FOUND {
                let body: Value = r.json().await.unwrap();
                let message = body["message"].as_str().unwrap_or("");
                assert!(!message.contains("no route"), "{method} {path}: {body}");
            }
        }
    }
    assert!(operations >= 51, "{operations} operations");
    let page = app.http.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("/docs/docs.js"));
    let script = app.http.get(app.url("/docs/docs.js")).send().await.unwrap();
    assert!(script.text().await.unwrap().contains("/openapi.json"));
    app.stop().await;
}

/// Every answer — success, error, a new key's secret, a route no one has — tells caches not to
/// keep it (answers are per key) and browsers not to sniff its type.
#[tokio::test]
async fn every_answer_forbids_caching_and_sniffing() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let admin = app.admin_key.clone();
    let answers = [
        app.http.get(app.url("/health")).send().await.unwrap(),
        app.get("/v1/events", &admin).await,
        app.get("/v1/events", "ank_wrong").await,
        app.get("/v1/nowhere", &admin).await,
        app.post(
            "/v1/keys",
            &admin,
            &json!({"client_id": "acme", "name": "cached?"}),
        )
        .await,
    ];
    for r in answers {
        let (status, headers) = (r.status(), r.headers());
        assert_eq!(headers["cache-control"], "no-store", "{status}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{status}");
    }
    app.stop().await;
}

/// A stop waits for the requests in flight, but not for ever: a route that never answers holds
/// it up for `ANNALS_SHUTDOWN_TIMEOUT_SECS`, after which the server stops (and drains its write
/// queue) without it. An event acknowledged before the stop is still there after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_requests_in_flight_only_so_long() {
    let stuck = axum::Router::new().route(
        "/v1/stuck",
        axum::routing::post(std::future::pending::<StatusCode>),
    );
    let Some(app) =
        TestApp::spawn_with_routes(Backend::Sqlite, |a| a.shutdown_timeout_secs = 1, stuck).await
    else {
        return;
    };
    let id = app
        .record(&app.admin_key, json!({"event_type": "a.b.created"}))
        .await;
    let stuck = tokio::spawn(
        app.http
            .post(app.url("/v1/stuck"))
            .header("x-api-key", &app.admin_key)
            .send(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let app = tokio::time::timeout(std::time::Duration::from_secs(10), app.stop_keep_db())
        .await
        .expect("the stop gives up on the stuck request");
    stuck.abort();
    let app = app.restart().await;
    let (status, event) =
        status_json(app.get(&format!("/v1/events/{id}"), &app.admin_key).await).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    app.stop().await;
}

/// A SQLite store is served by one process: a second server on the same file is refused at start
/// (it would hand out the same seqs and fail every append), and starts once the first has
/// stopped, with everything the first stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_sqlite_store_is_refused_until_the_first_stops() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    app.record(&key, json!({"event_type": "iam.user.created"}))
        .await;
    let second = annals::config::ServeArgs::with_database(app.db.url.clone());
    let refused = annals::server::start(second.clone())
        .await
        .err()
        .expect("a second server on the same store is refused")
        .to_string();
    assert!(refused.contains("already serving"), "{refused}");
    // The first is unharmed and still takes events.
    app.record(&key, json!({"event_type": "iam.user.updated"}))
        .await;

    let app = app.stop_keep_db().await;
    let server = annals::server::start(second)
        .await
        .expect("starts once the first has stopped");
    let events = get_array(&format!("http://{}/v1/events?order=asc", server.addr), &key).await;
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2]);
    server.stop().await.unwrap();
    drop(app);
}

/// Two SQLite stores whose names differ only in their extension share one audit database
/// (`annals.db` and `annals.sqlite` both keep theirs in `annals.audit.db`): the second server is
/// refused at start (else each would show its tenants the other's calls), the first unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_audit_database_is_in_use_is_not_served() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let sibling = std::path::Path::new(&app.db.url).with_extension("sqlite");
    let refused = annals::server::start(annals::config::ServeArgs::with_database(
        sibling.display().to_string(),
    ))
    .await
    .err()
    .expect("a store sharing the audit database is refused")
    .to_string();
    assert!(refused.contains("annals.audit.db"), "{refused}");
    assert!(refused.contains("audit log"), "{refused}");

    let (status, logs) = status_json(app.get("/v1/audit/logs", &app.admin_key).await).await;
    assert_eq!(status, StatusCode::OK, "{logs}");
    app.stop().await;
}
