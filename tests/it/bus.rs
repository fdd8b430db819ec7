//! The event bus end to end: subscriptions, signed webhook deliveries to a real receiver,
//! retries, the dead-letter queue, `410 Gone`, replays, pull subscriptions, secret rotation,
//! the integration log, the SSRF guard and tenant isolation — on both stores.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_error, status_json};

/// One request a receiver got.
#[derive(Clone, Debug)]
pub(crate) struct Hit {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A webhook receiver on a random local port that answers from a script (then 200).
#[derive(Clone)]
pub(crate) struct Receiver {
    pub(crate) url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    pub(crate) async fn start(answers: &[u16]) -> Self {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let script: Arc<Mutex<VecDeque<u16>>> =
            Arc::new(Mutex::new(answers.iter().copied().collect()));
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post({
                let hits = hits.clone();
                let script = script.clone();
                move |headers: HeaderMap, body: axum::body::Bytes| async move {
                    hits.lock().unwrap().push(Hit {
                        headers,
                        body: body.to_vec(),
                    });
                    let status = script.lock().unwrap().pop_front().unwrap_or(200);
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        "receiver says hello",
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: format!("http://{addr}/hook"),
            hits,
        }
    }

    pub(crate) fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests came in; returns them.
    pub(crate) async fn wait_for(&self, n: usize) -> Vec<Hit> {
        for _ in 0..200 {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the receiver got {} requests, not {n}", self.hits().len());
    }
}

/// A server whose webhooks may reach the local receiver, retrying after ~50 ms.
async fn bus_app(backend: Backend) -> Option<TestApp> {
    TestApp::spawn_with(backend, |a| {
        a.webhook_allow_private = true;
        a.webhook_retry_base_ms = 50;
    })
    .await
}

async fn subscribe(app: &TestApp, key: &str, body: Value) -> Value {
    let (status, created) = status_json(app.post("/v1/subscriptions", key, &body).await).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

/// Polls `GET path` until `pred` holds for its array.
async fn until(
    app: &TestApp,
    path: &str,
    key: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    for _ in 0..200 {
        let rows = app.list(path, key).await;
        if pred(&rows) {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never matched: {:?}", app.list(path, key).await);
}

pub(crate) fn header<'h>(hit: &'h Hit, name: &str) -> &'h str {
    hit.headers.get(name).unwrap().to_str().unwrap()
}

async fn matching_events_are_delivered_signed_and_logged(backend: Backend) {
    let Some(app) = bus_app(backend).await else {
        return;
    };
    let receiver = Receiver::start(&[]).await;
    let acme = app.key("acme", "events:read,events:write").await;
    let other = app.key("other", "events:read,events:write").await;
    let sub = subscribe(
        &app,
        &acme,
        json!({"subscriber_name": "billing", "topic_pattern": "billing.invoice.*", "webhook_url": receiver.url}),
    )
    .await;
    let secret = sub["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{sub}");
    assert_eq!(sub["client_id"], "acme");
    assert_eq!(sub["max_retries"], 3);
    // Only acme's events of a matching type go out.
    app.record(&acme, json!({"event_type": "billing.invoice", "data": {}}))
        .await;
    app.record(&acme, json!({"event_type": "iam.user.created", "data": {}}))
        .await;
    app.record(
        &other,
        json!({"event_type": "billing.invoice.paid", "data": {}}),
    )
    .await;
    let id = app
        .record(
            &acme,
            json!({"event_type": "billing.invoice.paid", "data": {"amount": 42}}),
        )
        .await;
    let hits = receiver.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.hits().len(), 1, "one matching event, one delivery");
    let hit = &hits[0];
    let body: Value = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!(body["type"], "billing.invoice.paid");
    assert_eq!(body["data"]["id"], id.as_str());
    assert_eq!(body["data"]["data"]["amount"], 42);
    let webhook_id = header(hit, "webhook-id");
    let timestamp: i64 = header(hit, "webhook-timestamp").parse().unwrap();
    assert!(webhook_id.starts_with("msg_"));
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);
    assert!(annals::bus::signing::verify(
        &secret,
        webhook_id,
        timestamp,
        &hit.body,
        header(hit, "webhook-signature")
    ));
    assert!(!annals::bus::signing::verify(
        "whsec_AAAAAAAAAAAAAAAA",
        webhook_id,
        timestamp,
        &hit.body,
        header(hit, "webhook-signature")
    ));
    // The delivery and its attempt are on record, for acme only.
    let deliveries = until(&app, "/v1/deliveries", &acme, |d| {
        d.len() == 1 && d[0]["status"] == "COMPLETED"
    })
    .await;
    let d = &deliveries[0];
    assert_eq!(d["event_id"], id.as_str());
    assert_eq!(d["subscription_id"], sub["id"]);
    assert_eq!(d["message_id"], webhook_id);
    assert_eq!(d["last_status_code"], 200);
    assert_eq!(d["retry_count"], 0);
    let logs = until(&app, "/v1/integration-logs", &acme, |l| !l.is_empty()).await;
    assert_eq!(logs[0]["operation"], "API_CALL_MADE");
    assert_eq!(logs[0]["success"], true);
    assert_eq!(logs[0]["http_status_code"], 200);
    assert_eq!(logs[0]["delivery_id"], d["id"]);
    assert_eq!(logs[0]["integration_name"], "billing");
    assert_eq!(logs[0]["response_data"]["body"], "receiver says hello");
    assert!(app.list("/v1/deliveries", &other).await.is_empty());
    assert!(app.list("/v1/integration-logs", &other).await.is_empty());
    let path = format!("/v1/deliveries/{}", d["id"]);
    assert_eq!(app.get(&path, &other).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.get(&path, &acme).await.status(), StatusCode::OK);
    let sub_path = format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap());
    assert_eq!(
        app.get(&sub_path, &other).await.status(),
        StatusCode::NOT_FOUND
    );
    let (status, shown) = status_json(app.get(&sub_path, &acme).await).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        shown.get("secret").is_none(),
        "the secret is shown only once: {shown}"
    );
    app.stop().await;
}

async fn failures_are_retried_then_dead_lettered_and_retried_by_hand(backend: Backend) {
    let Some(app) = bus_app(backend).await else {
        return;
    };
    let receiver = Receiver::start(&[500, 503]).await;
    let key = app.key("acme", "events:read,events:write").await;
    subscribe(
        &app,
        &key,
        json!({"subscriber_name": "flaky", "topic_pattern": "#", "webhook_url": receiver.url, "max_retries": 1}),
    )
    .await;
    app.record(&key, json!({"event_type": "a.b", "data": {}}))
        .await;
    let failed = until(&app, "/v1/deliveries?status=FAILED", &key, |d| d.len() == 1).await;
    let hits = receiver.hits();
    assert_eq!(hits.len(), 2, "one attempt and one retry");
    assert_eq!(
        header(&hits[0], "webhook-id"),
        header(&hits[1], "webhook-id")
    );
    assert_eq!(failed[0]["retry_count"], 1);
    assert_eq!(failed[0]["last_status_code"], 503);
    assert_eq!(failed[0]["failure_reason"], "the receiver answered 503");
    let id = failed[0]["id"].as_i64().unwrap();
    let logs = app
        .list(
            &format!("/v1/integration-logs?delivery_id={id}&success=false"),
            &key,
        )
        .await;
    assert_eq!(logs.len(), 2);
    // Out of the dead-letter queue by hand; the receiver answers 200 now.
    let (status, queued) = status_json(
        app.post(&format!("/v1/deliveries/{id}/retry"), &key, &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    assert_eq!(queued["status"], "PENDING");
    until(&app, "/v1/deliveries?status=COMPLETED", &key, |d| {
        d.len() == 1
    })
    .await;
    assert_eq!(receiver.hits().len(), 3);
    let (status, body) = status_json(
        app.post(&format!("/v1/deliveries/{id}/retry"), &key, &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&body, "conflict");
    let other = app.key("other", "events:read").await;
    let r = app
        .post(&format!("/v1/deliveries/{id}/retry"), &other, &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn gone_turns_a_subscription_off(backend: Backend) {
    let Some(app) = bus_app(backend).await else {
        return;
    };
    let receiver = Receiver::start(&[410]).await;
    let key = app.key("acme", "events:read,events:write").await;
    let sub = subscribe(
        &app,
        &key,
        json!({"subscriber_name": "gone", "topic_pattern": "#", "webhook_url": receiver.url}),
    )
    .await;
    let path = format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap());
    app.record(&key, json!({"event_type": "a.b", "data": {}}))
        .await;
    receiver.wait_for(1).await;
    for _ in 0..100 {
        let (_, s) = status_json(app.get(&path, &key).await).await;
        if s["is_active"] == false {
            assert!(
                s["disabled_reason"].as_str().unwrap().contains("410"),
                "{s}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = until(&app, "/v1/deliveries?status=FAILED", &key, |d| d.len() == 1).await;
    assert_eq!(failed[0]["last_status_code"], 410);
    // Turned off: new events queue nothing.
    app.record(&key, json!({"event_type": "a.b", "data": {}}))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.list("/v1/deliveries", &key).await.len(), 1);
    assert_eq!(receiver.hits().len(), 1);
    // A retry of its dead letter is refused while it is off; turned on again, it delivers.
    let id = failed[0]["id"].as_i64().unwrap();
    let r = app
        .post(&format!("/v1/deliveries/{id}/retry"), &key, &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let (status, on) = status_json(app.patch(&path, &key, &json!({"is_active": true})).await).await;
    assert_eq!(status, StatusCode::OK, "{on}");
    assert_eq!(on["disabled_reason"], Value::Null);
    app.record(&key, json!({"event_type": "a.b", "data": {}}))
        .await;
    receiver.wait_for(2).await;
    app.stop().await;
}

async fn admin_subscriptions_see_every_client_and_clients_only_their_own(backend: Backend) {
    let Some(app) = bus_app(backend).await else {
        return;
    };
    let receiver = Receiver::start(&[]).await;
    let admin = app.admin_key.clone();
    let acme = app.key("acme", "events:read,events:write").await;
    let beta = app.key("beta", "events:read,events:write").await;
    let all = subscribe(
        &app,
        &admin,
        json!({"subscriber_name": "everything", "topic_pattern": "#", "webhook_url": receiver.url}),
    )
    .await;
    assert_eq!(all["client_id"], Value::Null);
    let for_beta = subscribe(
        &app,
        &admin,
        json!({"subscriber_name": "beta-only", "topic_pattern": "#", "webhook_url": receiver.url, "client_id": "beta"}),
    )
    .await;
    assert_eq!(for_beta["client_id"], "beta");
    // A client may not subscribe to someone else's events, nor to everyone's.
    for client in [json!("beta"), Value::Null] {
        let (status, body) = status_json(
            app.post(
                "/v1/subscriptions",
                &acme,
                &json!({"subscriber_name": "x", "topic_pattern": "#", "webhook_url": receiver.url, "client_id": client}),
            )
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["field"], "client_id");
    }
    app.record(&acme, json!({"event_type": "a.b", "data": {}}))
        .await;
    app.record(&beta, json!({"event_type": "a.b", "data": {}}))
        .await;
    receiver.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.hits().len(),
        3,
        "two for the admin's, one for beta's"
    );
    // Listings: each client sees its own subscriptions and deliveries; the admin all.
    assert!(app.list("/v1/subscriptions", &acme).await.is_empty());
    let beta_subs = app.list("/v1/subscriptions", &beta).await;
    assert_eq!(beta_subs.len(), 1);
    assert_eq!(app.list("/v1/subscriptions", &admin).await.len(), 2);
    assert_eq!(
        app.list("/v1/subscriptions?client_id=beta", &admin)
            .await
            .len(),
        1
    );
    let r = app.get("/v1/subscriptions?client_id=beta", &acme).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    until(&app, "/v1/deliveries?status=COMPLETED", &admin, |d| {
        d.len() == 3
    })
    .await;
    assert!(app.list("/v1/deliveries", &acme).await.is_empty());
    assert_eq!(app.list("/v1/deliveries", &beta).await.len(), 1);
    // beta manages its subscription; acme can't touch it.
    let beta_path = format!("/v1/subscriptions/{}", for_beta["id"].as_str().unwrap());
    assert_eq!(
        app.patch(&beta_path, &acme, &json!({"is_active": false}))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&beta_path, &acme).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&beta_path, &beta).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&beta_path, &beta).await.status(),
        StatusCode::NOT_FOUND
    );
    assert!(
        app.list("/v1/deliveries", &beta).await.is_empty(),
        "deleted with it"
    );
    app.stop().await;
}

async fn bad_subscriptions_are_refused_field_by_field(backend: Backend) {
    // The default: webhooks to internal addresses are refused.
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:read").await;
    let writer = app.key("acme", "events:write").await;
    let cases = [
        (
            json!({"topic_pattern": "#", "webhook_url": "https://example.com/"}),
            "subscriber_name",
        ),
        (
            json!({"subscriber_name": "n", "webhook_url": "https://example.com/"}),
            "topic_pattern",
        ),
        (
            json!({"subscriber_name": "n", "topic_pattern": "a..b", "webhook_url": "https://example.com/"}),
            "topic_pattern",
        ),
        (
            json!({"subscriber_name": "n", "topic_pattern": "#"}),
            "webhook_url",
        ),
        (
            json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": "http://127.0.0.1:8080/"}),
            "webhook_url",
        ),
        (
            json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": "http://169.254.169.254/"}),
            "webhook_url",
        ),
        (
            json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": "http://[fd00::1]/"}),
            "webhook_url",
        ),
        (
            json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": "http://localhost/"}),
            "webhook_url",
        ),
        (
            json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": "file:///etc/passwd"}),
            "webhook_url",
        ),
        (
            json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": "https://u:p@example.com/"}),
            "webhook_url",
        ),
        (
            json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": format!("https://example.com/{}", "a".repeat(500))}),
            "webhook_url",
        ),
        (
            json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": "https://example.com/", "callback_method": "m"}),
            "callback_method",
        ),
        (
            json!({"subscriber_name": "x".repeat(101), "topic_pattern": "#", "webhook_url": "https://example.com/"}),
            "subscriber_name",
        ),
        (
            json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": "https://example.com/", "max_retries": 21}),
            "max_retries",
        ),
        (
            json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": "https://example.com/", "subscription_config": "x"}),
            "subscription_config",
        ),
        (
            json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": "https://example.com/", "is_active": 1}),
            "is_active",
        ),
        (
            json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": "https://example.com/", "extra": 1}),
            "extra",
        ),
    ];
    for (body, field) in cases {
        let (status, error) = status_json(app.post("/v1/subscriptions", &key, &body).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        assert_error(&error, "validation_failed");
        let named = error["field"] == field
            || error["errors"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["field"] == field));
        assert!(named, "{body} must name {field}: {error}");
    }
    let r = app
        .post_raw(
            "/v1/subscriptions",
            &key,
            Some("application/json"),
            "{not json",
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app
        .post("/v1/subscriptions", &writer, &json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": "https://example.com/"}))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "events:read is needed");
    // Nothing was stored by any of them; a good one is.
    assert!(app.list("/v1/subscriptions", &key).await.is_empty());
    let sub = subscribe(
        &app,
        &key,
        json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": "https://example.com/x", "subscription_config": {"team": "ops"}}),
    )
    .await;
    assert_eq!(sub["subscription_config"]["team"], "ops");
    let path = format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap());
    let (status, error) =
        status_json(app.patch(&path, &key, &json!({"webhook_url": null})).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    let (_, unchanged) = status_json(app.get(&path, &key).await).await;
    assert_eq!(unchanged["webhook_url"], "https://example.com/x");
    for bad in [
        "/v1/subscriptions/nope",
        "/v1/subscriptions/00000000-0000-0000-0000-000000000000",
    ] {
        let (status, body) = status_json(app.get(bad, &key).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_error(&body, "not_found");
    }
    let (status, body) = status_json(app.get("/v1/deliveries?status=LOST", &key).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    app.stop().await;
}

async fn a_private_target_is_refused_when_sending(backend: Backend) {
    let Some(app) = bus_app(backend).await else {
        return;
    };
    let receiver = Receiver::start(&[]).await;
    let key = app.key("acme", "events:read,events:write").await;
    subscribe(
        &app,
        &key,
        json!({"subscriber_name": "internal", "topic_pattern": "#", "webhook_url": receiver.url}),
    )
    .await;
    // The operator takes the permission back: the stored subscription's calls are refused.
    let mut app = app;
    app.args.webhook_allow_private = false;
    let app = app.restart().await;
    app.record(&key, json!({"event_type": "a.b", "data": {}}))
        .await;
    let failed = until(&app, "/v1/deliveries?status=FAILED", &key, |d| d.len() == 1).await;
    assert!(
        failed[0]["failure_reason"]
            .as_str()
            .unwrap()
            .starts_with("refused"),
        "{failed:?}"
    );
    assert!(
        receiver.hits().is_empty(),
        "no request reached the internal address"
    );
    app.stop().await;
}

async fn replays_queue_stored_events(backend: Backend) {
    let Some(app) = bus_app(backend).await else {
        return;
    };
    let receiver = Receiver::start(&[]).await;
    let key = app.key("acme", "events:read,events:write").await;
    for n in 0..3 {
        app.record(
            &key,
            json!({"event_type": "order.placed", "data": {"n": n}}),
        )
        .await;
    }
    app.record(&key, json!({"event_type": "order.cancelled", "data": {}}))
        .await;
    let sub = subscribe(
        &app,
        &key,
        json!({"subscriber_name": "late", "topic_pattern": "order.placed", "webhook_url": receiver.url}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver.hits().is_empty(),
        "past events go only on a replay"
    );
    let path = format!("/v1/subscriptions/{}/replay", sub["id"].as_str().unwrap());
    let (status, body) = status_json(
        app.post(&format!("{path}?from=yesterday"), &key, &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "from");
    let (status, replayed) = status_json(app.post(&path, &key, &json!({})).await).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replayed}");
    assert_eq!(replayed["queued"], 3);
    assert_eq!(replayed["complete"], true);
    let hits = receiver.wait_for(3).await;
    let mut ns: Vec<i64> = hits
        .iter()
        .map(|h| {
            serde_json::from_slice::<Value>(&h.body).unwrap()["data"]["data"]["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    ns.sort();
    assert_eq!(ns, [0, 1, 2]);
    // A window in the future holds nothing.
    let (_, none) = status_json(
        app.post(
            &format!("{path}?from=2999-01-01T00:00:00Z"),
            &key,
            &json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(none["queued"], 0);
    app.stop().await;
}

async fn pull_subscriptions_lease_and_acknowledge(backend: Backend) {
    let Some(app) = bus_app(backend).await else {
        return;
    };
    let key = app.key("acme", "events:read,events:write").await;
    let sub = subscribe(
        &app,
        &key,
        json!({"subscriber_name": "worker", "topic_pattern": "job.#", "callback_method": "jobs.handle", "max_retries": 1}),
    )
    .await;
    let pull = format!("/v1/subscriptions/{}/pull", sub["id"].as_str().unwrap());
    for n in 0..3 {
        app.record(&key, json!({"event_type": "job.queued", "data": {"n": n}}))
            .await;
    }
    let (status, first) =
        status_json(app.post(&format!("{pull}?limit=2"), &key, &json!({})).await).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let first = first.as_array().unwrap().clone();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0]["event"]["event_type"], "job.queued");
    let (_, second) = status_json(
        app.post(&format!("{pull}?lease_secs=1"), &key, &json!({}))
            .await,
    )
    .await;
    assert_eq!(second.as_array().unwrap().len(), 1, "the others are leased");
    let ack = |d: &Value| format!("/v1/deliveries/{}/ack", d["id"]);
    let (status, done) = status_json(
        app.post(&ack(&first[0]), &key, &json!({"success": true}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "COMPLETED");
    let (_, again) = status_json(
        app.post(
            &ack(&first[1]),
            &key,
            &json!({"success": false, "error": "busy"}),
        )
        .await,
    )
    .await;
    assert_eq!(again["status"], "PENDING");
    assert_eq!(again["retry_count"], 1);
    assert_eq!(again["failure_reason"], "busy");
    let (status, body) = status_json(
        app.post(&ack(&first[1]), &key, &json!({"success": true}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "not leased: {body}");
    let (status, body) =
        status_json(app.post(&ack(&first[0]), &key, &json!({"ok": true})).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // The one-second lease runs out, the retry comes due: both are pulled again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, later) = status_json(app.post(&pull, &key, &json!({})).await).await;
    assert_eq!(later.as_array().unwrap().len(), 2, "{later}");
    // Its last retry failed: into the dead-letter queue.
    let retried = later
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == first[1]["id"])
        .unwrap()
        .clone();
    let (_, dead) = status_json(
        app.post(&ack(&retried), &key, &json!({"success": false}))
            .await,
    )
    .await;
    assert_eq!(dead["status"], "FAILED");
    // Another client can neither pull nor acknowledge.
    let other = app.key("other", "events:read").await;
    assert_eq!(
        app.post(&pull, &other, &json!({})).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post(&ack(&later[0]), &other, &json!({"success": true}))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    // Out-of-range parameters name themselves.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("lease_secs=3601", "lease_secs"),
        ("lease=5", "lease"),
    ] {
        let (status, body) =
            status_json(app.post(&format!("{pull}?{query}"), &key, &json!({})).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["field"], field, "{query}: {body}");
    }
    // A webhook subscription is not pulled.
    let hook = subscribe(
        &app,
        &key,
        json!({"subscriber_name": "hook", "topic_pattern": "#", "webhook_url": "https://example.com/"}),
    )
    .await;
    let r = app
        .post(
            &format!("/v1/subscriptions/{}/pull", hook["id"].as_str().unwrap()),
            &key,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    app.stop().await;
}

async fn a_rotated_secret_signs_beside_the_new_one(backend: Backend) {
    let Some(app) = bus_app(backend).await else {
        return;
    };
    let receiver = Receiver::start(&[]).await;
    let key = app.key("acme", "events:read,events:write").await;
    let sub = subscribe(
        &app,
        &key,
        json!({"subscriber_name": "r", "topic_pattern": "#", "webhook_url": receiver.url}),
    )
    .await;
    let old = sub["secret"].as_str().unwrap().to_string();
    let (status, rotated) = status_json(
        app.post(
            &format!(
                "/v1/subscriptions/{}/rotate-secret",
                sub["id"].as_str().unwrap()
            ),
            &key,
            &json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(old, new);
    app.record(&key, json!({"event_type": "a.b", "data": {}}))
        .await;
    let hit = receiver.wait_for(1).await.remove(0);
    let signature = header(&hit, "webhook-signature");
    assert_eq!(signature.split(' ').count(), 2, "{signature}");
    let (id, ts) = (
        header(&hit, "webhook-id"),
        header(&hit, "webhook-timestamp").parse().unwrap(),
    );
    assert!(annals::bus::signing::verify(
        &new, id, ts, &hit.body, signature
    ));
    assert!(annals::bus::signing::verify(
        &old, id, ts, &hit.body, signature
    ));
    app.stop().await;
}

async fn clients_report_their_integrations(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:read,events:write").await;
    let other = app.key("other", "events:read,events:write").await;
    let (status, created) = status_json(
        app.post(
            "/v1/integration-logs",
            &key,
            &json!({"integration_name": "STRIPE", "operation": "DATA_SYNC", "external_id": "cus_1",
                    "request_data": {"page": 1}, "response_data": {"synced": 20}, "http_status_code": 200,
                    "success": true, "duration_ms": 35}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    app.post(
        "/v1/integration-logs",
        &key,
        &json!({"integration_name": "PAYPAL", "operation": "WEBHOOK_RECEIVED", "success": false, "error_message": "bad signature"}),
    )
    .await;
    let stripe = app
        .list("/v1/integration-logs?integration_name=STRIPE", &key)
        .await;
    assert_eq!(stripe.len(), 1);
    assert_eq!(stripe[0]["external_id"], "cus_1");
    assert_eq!(stripe[0]["response_data"]["synced"], 20);
    assert_eq!(
        app.list("/v1/integration-logs?success=false", &key)
            .await
            .len(),
        1
    );
    assert_eq!(
        app.list("/v1/integration-logs?operation=DATA_SYNC", &key)
            .await
            .len(),
        1
    );
    assert!(app.list("/v1/integration-logs", &other).await.is_empty());
    assert_eq!(
        app.list("/v1/integration-logs?client_id=acme", &app.admin_key)
            .await
            .len(),
        2
    );
    for (body, field) in [
        (
            json!({"operation": "DATA_SYNC", "success": true}),
            "integration_name",
        ),
        (
            json!({"integration_name": "S", "operation": "SYNC", "success": true}),
            "operation",
        ),
        (
            json!({"integration_name": "S", "operation": "DATA_SYNC"}),
            "success",
        ),
        (
            json!({"integration_name": "S", "operation": "DATA_SYNC", "success": true, "http_status_code": 999}),
            "http_status_code",
        ),
        (
            json!({"integration_name": "S", "operation": "DATA_SYNC", "success": true, "request_data": "x"}),
            "request_data",
        ),
        (
            json!({"integration_name": "S", "operation": "DATA_SYNC", "success": true, "when": 1}),
            "when",
        ),
    ] {
        let (status, error) =
            status_json(app.post("/v1/integration-logs", &key, &body).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        let named = error["field"] == field
            || error["errors"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["field"] == field));
        assert!(named, "{body} must name {field}: {error}");
    }
    let reader = app.key("acme", "events:read").await;
    let r = app
        .post(
            "/v1/integration-logs",
            &reader,
            &json!({"integration_name": "S", "operation": "DATA_SYNC", "success": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.list("/v1/integration-logs", &key).await.len(), 2);
    app.stop().await;
}

async fn retention_removes_finished_deliveries_and_old_log_rows_only(backend: Backend) {
    let Some(app) = bus_app(backend).await else {
        return;
    };
    let key = app.key("acme", "events:read,events:write").await;
    let sub = subscribe(
        &app,
        &key,
        json!({"subscriber_name": "w", "topic_pattern": "#", "callback_method": "w", "max_retries": 0}),
    )
    .await;
    for n in 0..3 {
        app.record(&key, json!({"event_type": "a.b", "data": {"n": n}}))
            .await;
    }
    let pull = format!(
        "/v1/subscriptions/{}/pull?limit=2",
        sub["id"].as_str().unwrap()
    );
    let (_, taken) = status_json(app.post(&pull, &key, &json!({})).await).await;
    let taken = taken.as_array().unwrap().clone();
    for (d, success) in taken.iter().zip([true, false]) {
        let r = app
            .post(
                &format!("/v1/deliveries/{}/ack", d["id"]),
                &key,
                &json!({"success": success}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    app.post(
        "/v1/integration-logs",
        &key,
        &json!({"integration_name": "S", "operation": "DATA_SYNC", "success": true}),
    )
    .await;
    let statuses = |rows: &[Value]| {
        let mut s: Vec<String> = rows
            .iter()
            .map(|d| d["status"].as_str().unwrap().to_string())
            .collect();
        s.sort();
        s
    };
    assert_eq!(
        statuses(&app.list("/v1/deliveries", &key).await),
        ["COMPLETED", "FAILED", "PENDING"]
    );
    let deleted = annals::jobs::retention::purge_deliveries(
        app.store.as_ref(),
        annals::domain::Timestamp::now(),
        1,
    )
    .await
    .unwrap();
    assert_eq!(
        deleted, 3,
        "two finished deliveries and one log row, one at a time"
    );
    assert_eq!(
        statuses(&app.list("/v1/deliveries", &key).await),
        ["PENDING"]
    );
    assert!(app.list("/v1/integration-logs", &key).await.is_empty());
    app.stop().await;
}

/// System security events (here: failed logins) are published as `annals.security.*` events of
/// the system client: an admin's subscription gets them, a client's `#` does not, and only
/// admins read them.
async fn system_security_events_reach_admin_subscriptions_only(backend: Backend) {
    let Some(app) = bus_app(backend).await else {
        return;
    };
    let acme = app.key("acme", "events:read,events:write").await;
    let admin = app.admin_key.clone();
    let soc = subscribe(
        &app,
        &admin,
        json!({"subscriber_name": "soc", "topic_pattern": "annals.security.#", "callback_method": "soc.alert"}),
    )
    .await;
    let theirs = subscribe(
        &app,
        &acme,
        json!({"subscriber_name": "all", "topic_pattern": "#", "callback_method": "all.handle"}),
    )
    .await;
    for _ in 0..2 {
        let r = app.get("/v1/events", "ank_wrong").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let pull = |id: &Value| format!("/v1/subscriptions/{}/pull", id.as_str().unwrap());
    let waited = std::time::Instant::now();
    let pulled = loop {
        let (status, body) =
            status_json(app.post(&pull(&soc["id"]), &admin, &json!({})).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if !body.as_array().unwrap().is_empty() {
            break body;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "nothing published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let event = &pulled[0]["event"];
    assert_eq!(
        event["event_type"], "annals.security.failed_login",
        "{pulled}"
    );
    assert_eq!(event["client_id"], "$annals");
    assert_eq!(event["data"]["count"], 2, "one aggregated row: {event}");
    assert!(event["data"]["security_event_id"].is_i64());
    let (_, none) = status_json(app.post(&pull(&theirs["id"]), &acme, &json!({})).await).await;
    assert_eq!(
        none,
        json!([]),
        "a client's subscription matches only its own events"
    );

    let listed = app.list("/v1/events?client_id=%24annals", &admin).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let r = app.get("/v1/events?client_id=%24annals", &acme).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(app.list("/v1/events", &acme).await.is_empty());
    app.stop().await;
}

crate::conformance!(
    system_security_events_reach_admin_subscriptions_only,
    retention_removes_finished_deliveries_and_old_log_rows_only,
    matching_events_are_delivered_signed_and_logged,
    failures_are_retried_then_dead_lettered_and_retried_by_hand,
    gone_turns_a_subscription_off,
    admin_subscriptions_see_every_client_and_clients_only_their_own,
    bad_subscriptions_are_refused_field_by_field,
    a_private_target_is_refused_when_sending,
    replays_queue_stored_events,
    pull_subscriptions_lease_and_acknowledge,
    a_rotated_secret_signs_beside_the_new_one,
    clients_report_their_integrations,
);
