//! Rate limits: per key (in memory and shared through Redis), the server default, and refusal of
//! addresses that keep failing to authenticate.

use annals::config::ServeArgs;
use annals::server;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::helpers::{Backend, TestApp, TestDatabase, assert_error, status_json};

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn key_with_limit(app: &TestApp, client: &str, limit: u64) -> String {
    let body = json!({"client_id": client, "name": "limited", "rate_limit": limit});
    let (status, created) = status_json(app.post("/v1/keys", &app.admin_key, &body).await).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["key"].as_str().unwrap().to_string()
}

async fn a_key_gets_its_limit_then_429_with_headers(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let limited = key_with_limit(&app, "acme", 5).await;
    let other = key_with_limit(&app, "acme", 5).await;
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = app.get("/v1/events", &limited).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "ratelimit-limit"), Some(5));
        assert!(header(&r, "ratelimit-reset").is_some_and(|s| s <= 60));
        remaining.push(header(&r, "ratelimit-remaining").unwrap());
    }
    assert_eq!(remaining, [4, 3, 2, 1, 0]);
    let r = app.get("/v1/events", &limited).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&r, "retry-after").is_some_and(|s| (1..=60).contains(&s)));
    assert_eq!(header(&r, "ratelimit-remaining"), Some(0));
    let (_, body) = status_json(r).await;
    assert_error(&body, "rate_limited");
    // refused writes store nothing; other keys are not affected
    let r = app
        .post("/v1/events", &limited, &json!({"event_type": "x"}))
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.get("/v1/events", &other).await.status(), StatusCode::OK);
    assert!(app.list("/v1/events", &app.admin_key).await.is_empty());
    app.stop().await;
}

async fn the_server_default_applies_to_keys_without_their_own(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| a.rate_limit_per_minute = Some(3)).await
    else {
        return;
    };
    let plain = app.key("acme", "events:read").await;
    for _ in 0..3 {
        assert_eq!(app.get("/v1/events", &plain).await.status(), StatusCode::OK);
    }
    assert_eq!(
        app.get("/v1/events", &plain).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    app.stop().await;
}

async fn repeated_failed_logins_from_one_address_are_refused(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| a.failed_auth_per_minute = 3).await else {
        return;
    };
    for _ in 0..3 {
        assert_eq!(
            app.get("/v1/events", "ank_0123456789abcdef_wrong")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let r = app.get("/v1/events", "ank_0123456789abcdef_wrong").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    // the address is refused before any key is looked at, even a good one
    assert_eq!(
        app.get("/v1/events", &app.admin_key).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // health needs no key and is never refused
    assert_eq!(
        app.http
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    app.stop().await;
}

crate::conformance!(
    a_key_gets_its_limit_then_429_with_headers,
    the_server_default_applies_to_keys_without_their_own,
    repeated_failed_logins_from_one_address_are_refused,
);

/// `ANNALS_TEST_REDIS_URL`, or `None` after saying the test is skipped (a failure on CI).
fn test_redis_url() -> Option<String> {
    let url = std::env::var("ANNALS_TEST_REDIS_URL").ok();
    if url.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "ANNALS_TEST_REDIS_URL must be set on CI"
        );
        eprintln!("SKIPPED (no ANNALS_TEST_REDIS_URL)");
    }
    url
}

/// Two nodes on one PostgreSQL database sharing one Redis: the limit holds across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_shared_through_redis_holds_across_nodes() {
    let Some(redis_url) = test_redis_url() else {
        return;
    };
    let Some(db) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let mut args = ServeArgs::with_database(db.url.clone());
    args.api_key = Some("redis-test-admin".into());
    args.redis_url = Some(redis_url);
    let a = server::start(args.clone()).await.unwrap();
    let b = server::start(args).await.unwrap();
    let http = crate::helpers::http();
    let r = http
        .post(format!("http://{}/v1/keys", a.addr))
        .header("x-api-key", "redis-test-admin")
        .json(&json!({"client_id": "acme", "name": "shared", "rate_limit": 10}))
        .send()
        .await
        .unwrap();
    let created: Value = r.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let mut allowed = 0;
    for i in 0..20 {
        let node = if i % 2 == 0 { a.addr } else { b.addr };
        let r = http
            .get(format!("http://{node}/v1/events"))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(allowed, 10, "ten in total across both nodes, not ten each");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// Stands between a server and Redis: until `open`, it takes connections and never answers, as
/// a hung Redis does; then it forwards them to the real one.
struct RedisGate {
    addr: std::net::SocketAddr,
    open: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RedisGate {
    async fn start(redis_url: &str) -> Self {
        let redis = redis_url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(false));
        let is_open = open.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !is_open.load(Ordering::SeqCst) {
                    held.push(inbound);
                    continue;
                }
                let redis = redis.clone();
                tokio::spawn(async move {
                    let mut outbound = tokio::net::TcpStream::connect(&redis).await.unwrap();
                    tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                        .await
                        .ok();
                });
            }
        });
        Self { addr, open, task }
    }
}

async fn rate_limits_in_health(app: &TestApp) -> String {
    let (status, health) = status_json(app.get("/v1/health", "").await).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    health["rate_limits"].as_str().unwrap().to_string()
}

/// A Redis that does not answer neither stops a node from starting nor opens its limits: the
/// node counts each key on its own, health says so, and once Redis answers the limits are
/// shared again. A closed Redis port starts too; a URL that is no Redis URL is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_limits_on_its_own_while_redis_does_not_answer() {
    let Some(redis_url) = test_redis_url() else {
        return;
    };
    let gate = RedisGate::start(&redis_url).await;
    let gate_url = format!("redis://{}", gate.addr);
    let app = TestApp::spawn_with(Backend::Sqlite, |a| a.redis_url = Some(gate_url))
        .await
        .unwrap();
    assert_eq!(
        rate_limits_in_health(&app).await,
        "per node: Redis unavailable"
    );
    let limited = key_with_limit(&app, "acme", 3).await;
    let statuses =
        futures_util::future::join_all((0..5).map(|_| app.get("/v1/events", &limited))).await;
    let allowed = statuses
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert_eq!(allowed, 3, "the node counts the key's limit itself");

    gate.open.store(true, Ordering::SeqCst);
    let mut waited = Duration::ZERO;
    while rate_limits_in_health(&app).await != "shared through Redis" {
        assert!(waited < Duration::from_secs(15), "Redis answers again");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    let body = json!({"client_id": "acme", "name": "shared", "rate_limit": 2});
    let (_, created) = status_json(app.post("/v1/keys", &app.admin_key, &body).await).await;
    let (key, key_id) = (created["key"].as_str().unwrap(), &created["key_id"]);
    for expected in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        assert_eq!(app.get("/v1/events", key).await.status(), expected);
    }
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let counters: Vec<String> = redis::cmd("KEYS")
        .arg(format!("annals:rl:key:{}:*", key_id.as_str().unwrap()))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!counters.is_empty(), "the key is counted in Redis again");
    app.stop().await;
    gate.task.abort();

    let closed = TestApp::spawn_with(Backend::Sqlite, |a| {
        a.redis_url = Some("redis://127.0.0.1:1".into())
    })
    .await
    .unwrap();
    assert_eq!(
        rate_limits_in_health(&closed).await,
        "per node: Redis unavailable"
    );
    closed.stop().await;

    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let mut args = ServeArgs::with_database(db.url.clone());
    args.redis_url = Some("http://127.0.0.1:6379".into());
    let error = server::start(args).await.err().expect("refused");
    assert!(
        format!("{error:#}").contains("ANNALS_REDIS_URL is no Redis URL"),
        "{error:#}"
    );
}

/// Reads what the server sends until it closes the connection, failing the test if it is still
/// open after `within`.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut received))
        .await
        .expect("the server closes the connection")
        .ok();
    String::from_utf8_lossy(&received).into_owned()
}

/// Slow or silent clients can't hold connections: a connection that sends nothing, one that
/// dribbles its headers, and one that stops halfway through its body are each cut off after
/// `ANNALS_READ_TIMEOUT_SECS` (the last with a JSON `408`), and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, |a| a.read_timeout_secs = 1).await else {
        return;
    };
    let limit = Duration::from_secs(5);

    let mut silent = app.raw_connection().await;
    assert_eq!(read_until_closed(&mut silent, limit).await, "");

    let mut dribbling = app.raw_connection().await;
    dribbling
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: annals\r\nContent-")
        .await
        .unwrap();
    assert_eq!(read_until_closed(&mut dribbling, limit).await, "");

    let mut half_body = app.raw_connection().await;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: annals\r\nX-API-Key: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"event_type\":",
        app.admin_key
    );
    half_body.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut half_body, limit).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{answer}"));
    assert_error(&body, "request_timeout");

    // a client that keeps to the limit is served as before, on a kept-alive connection too
    for _ in 0..2 {
        app.record(&app.admin_key, json!({"event_type": "a.b.created"}))
            .await;
    }
    assert_eq!(app.list("/v1/events", &app.admin_key).await.len(), 2);
    app.stop().await;
}

/// Behind a trusted proxy the caller is the address its `X-Forwarded-For` names: one client
/// failing to authenticate is refused without locking out the others behind the same proxy,
/// and audit rows name each client. Without the setting, the header is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_is_its_own_address() {
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, |a| {
        a.failed_auth_per_minute = 3;
        a.trusted_proxies = annals::listener::TrustedProxies::parse("127.0.0.0/8").unwrap();
    })
    .await
    else {
        return;
    };
    let via = |client: &'static str, key: &str| {
        app.http
            .get(app.url("/v1/events"))
            .header("x-api-key", key)
            .header("x-forwarded-for", format!("6.6.6.6, {client}"))
            .send()
    };
    for _ in 0..3 {
        let r = via("203.0.113.7", "ank_0123456789abcdef_wrong")
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = via("203.0.113.7", &app.admin_key).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the failing client"
    );
    let r = via("198.51.100.9", &app.admin_key).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "another client behind the proxy"
    );
    let calls = "endpoint=/v1/events&status";
    let rows = crate::audit::logs_until(&app, &format!("{calls}=200"), &app.admin_key, 1).await;
    assert_eq!(rows[0]["ip_address"], "198.51.100.9", "{rows:?}");
    let rows = crate::audit::logs_until(&app, &format!("{calls}=401"), &app.admin_key, 3).await;
    assert!(
        rows.iter().all(|r| r["ip_address"] == "203.0.113.7"),
        "{rows:?}"
    );
    app.stop().await;

    // no trusted proxies: the header is the client's word, and not taken
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let r = app
        .http
        .get(app.url("/v1/events"))
        .header("x-api-key", &app.admin_key)
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let rows = crate::audit::logs_until(&app, "endpoint=/v1/events", &app.admin_key, 1).await;
    assert_eq!(rows[0]["ip_address"], "127.0.0.1", "{rows:?}");
    app.stop().await;
}

/// A URI over 8 KiB gets a JSON `414` naming `uri` (with its request id), headers over 32 KiB a
/// JSON `431` naming `headers`, before any handler or the audit log sees them; a head too large
/// for hyper's buffer gets hyper's bare `431` and its connection closed. Nothing is stored, and
/// the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_uris_are_refused() {
    use tokio::io::AsyncWriteExt;
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let long_path = format!("/v1/events/{}", "a".repeat(annals::config::MAX_URI_BYTES));
    let r = app.get(&long_path, &app.admin_key).await;
    assert!(r.headers().contains_key("x-request-id"));
    let (status, body) = status_json(r).await;
    assert_eq!(status, StatusCode::URI_TOO_LONG, "{body}");
    assert_error(&body, "uri_too_long");
    assert_eq!(body["field"], "uri");
    let long_query = format!(
        "/v1/events?user_id={}",
        "u".repeat(annals::config::MAX_URI_BYTES)
    );
    let r = app.get(&long_query, &app.admin_key).await;
    assert_eq!(r.status(), StatusCode::URI_TOO_LONG);
    // just under the limit is an ordinary request
    let fits = format!("/v1/events?user_id={}", "u".repeat(200));
    assert_eq!(
        app.get(&fits, &app.admin_key).await.status(),
        StatusCode::OK
    );

    let r = app
        .http
        .get(app.url("/v1/events"))
        .header("x-api-key", &app.admin_key)
        .header("x-padding", "p".repeat(annals::config::MAX_HEADER_BYTES))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(r).await;
    assert_eq!(
        status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{body}"
    );
    assert_error(&body, "headers_too_large");
    assert_eq!(body["field"], "headers");

    let mut huge_head = app.raw_connection().await;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: annals\r\nX-API-Key: {}\r\nX-Padding: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 28\r\n\r\n{{\"event_type\":\"a.b.created\"}}",
        app.admin_key,
        "p".repeat(2 * annals::config::HEAD_BUFFER_BYTES)
    );
    // The server may close the connection before it has read all of this.
    let _ = huge_head.write_all(head.as_bytes()).await;
    let answer = read_until_closed(&mut huge_head, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    assert!(app.list("/v1/events", &app.admin_key).await.is_empty());
    app.record(&app.admin_key, json!({"event_type": "a.b.created"}))
        .await;
    // Audited: the request that fit, the listing, the event. The refused heads never reached
    // the audit layer.
    let logs = crate::audit::logs_until(&app, "limit=1000", &app.admin_key, 3).await;
    for log in &logs {
        let path = log["path"].as_str().unwrap_or_default();
        assert!(path.len() < 300, "{}", path.len());
        assert!(
            ![414, 431].contains(&log["status"].as_u64().unwrap()),
            "{log}"
        );
    }
    app.stop().await;
}

/// The bodies being read hold at most `ANNALS_BODY_MEMORY_BYTES` between them: while one client
/// is halfway through a large body, another large body that would go over the budget gets
/// `503` + `Retry-After` (nothing stored); once the first is done, the retry succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_in_memory_are_bounded() {
    use tokio::io::AsyncWriteExt;
    const BODY: usize = 60_000;
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, |a| {
        a.max_body_bytes = 64 * 1024;
        a.body_memory_bytes = 100 * 1024;
    })
    .await
    else {
        return;
    };
    // An event of exactly BODY bytes.
    let event = |tag: &str| {
        let frame = format!(
            "{{\"event_type\":\"a.b.created\",\"data\":{{\"tag\":\"{tag}\",\"blob\":\"\"}}}}"
        );
        let blob = "x".repeat(BODY - frame.len());
        format!(
            "{{\"event_type\":\"a.b.created\",\"data\":{{\"tag\":\"{tag}\",\"blob\":\"{blob}\"}}}}"
        )
    };
    let first = event("first");
    assert_eq!(first.len(), BODY);
    let mut slow = app.raw_connection().await;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: annals\r\nX-API-Key: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {BODY}\r\nConnection: close\r\n\r\n",
        app.admin_key
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&first.as_bytes()[..50_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // read by the server, and held

    let second = event("second");
    let send_second = || {
        app.http
            .post(app.url("/v1/events"))
            .header("x-api-key", &app.admin_key)
            .header("content-type", "application/json")
            .body(second.clone())
            .send()
    };
    let refused = send_second().await.unwrap();
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let (status, body) = status_json(refused).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_error(&body, "overloaded");
    assert!(app.list("/v1/events", &app.admin_key).await.is_empty());

    slow.write_all(&first.as_bytes()[50_000..]).await.unwrap();
    let answer = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let (status, body) = status_json(send_second().await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let stored = app.list("/v1/events", &app.admin_key).await;
    let tags: Vec<&str> = stored
        .iter()
        .filter_map(|e| e["data"]["tag"].as_str())
        .collect();
    assert_eq!(tags, ["second", "first"]);
    app.stop().await;
}

#[test]
fn a_body_memory_budget_below_the_largest_body_is_refused_at_start() {
    let mut args = ServeArgs::with_database("unused.db");
    args.max_body_bytes = 2 * 1024 * 1024;
    args.body_memory_bytes = 1024 * 1024;
    let error = args.limits().unwrap_err().to_string();
    assert!(error.contains("ANNALS_BODY_MEMORY_BYTES"), "{error}");
    args.body_memory_bytes = 2 * 1024 * 1024;
    assert!(args.limits().is_ok());
}

/// At most `ANNALS_MAX_CONNECTIONS` connections are served at once: with two held open, a third
/// client waits unanswered in the backlog; once one of the two closes, it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, |a| a.max_connections = 2).await else {
        return;
    };
    let held = app.raw_connection().await;
    let _also_held = app.raw_connection().await;
    let health = || {
        crate::helpers::http()
            .get(app.url("/health"))
            .timeout(Duration::from_millis(700))
            .send()
    };
    assert!(health().await.is_err(), "a third connection is not served");
    drop(held);
    let mut served = false;
    for _ in 0..20 {
        if let Ok(r) = health().await {
            assert_eq!(r.status(), StatusCode::OK);
            served = true;
            break;
        }
    }
    assert!(served, "served once a slot is free");
    app.stop().await;
}
