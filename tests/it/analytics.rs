//! `/v1/analytics/*`: counts from the rollups (exact, scoped per client, by type, over time,
//! grouped), ingest latency percentiles, and the queue status — on both stores.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_error, status_json};

async fn get(app: &TestApp, path: &str, key: &str) -> (StatusCode, Value) {
    status_json(app.get(path, key).await).await
}

async fn ok(app: &TestApp, path: &str, key: &str) -> Value {
    let (status, body) = get(app, path, key).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

fn counts(body: &Value) -> Vec<(String, i64)> {
    body["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["event_type"].as_str().unwrap().to_string(),
                t["count"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn event(event_type: &str, at: &str) -> Value {
    json!({"event_type": event_type, "occurred_at": at, "data": {}})
}

async fn counts_are_exact_scoped_and_grouped_over_time(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let acme = app.key("acme", "events:read,events:write").await;
    let other = app.key("other", "events:read,events:write").await;
    let mut batch = Vec::new();
    for _ in 0..3 {
        batch.push(event("user.created", "2026-01-01T10:05:10Z"));
    }
    batch.push(event("user.deleted", "2026-01-01T10:59:30Z"));
    batch.push(event("user.deleted", "2026-01-01T10:59:31.5Z"));
    let (status, body) = status_json(
        app.post("/v1/events/batch", &acme, &json!({"events": batch}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let order = json!({"event_type": "order.placed", "occurred_at": "2026-01-01T11:00:10Z",
        "source": "shop", "event_id": "o-1", "data": {}});
    app.record(&acme, order.clone()).await;
    // A duplicate is not counted again.
    let (status, _) = status_json(app.post("/v1/events", &acme, &order).await).await;
    assert_eq!(status, StatusCode::OK);
    for n in 0..5 {
        app.record(
            &other,
            event("user.created", &format!("2026-01-01T10:0{n}:00Z")),
        )
        .await;
    }

    let all = ok(&app, "/v1/analytics/events-by-type", &acme).await;
    assert_eq!(all["total"], 6, "{all}");
    assert_eq!(
        counts(&all),
        [
            ("user.created".into(), 3),
            ("user.deleted".into(), 2),
            ("order.placed".into(), 1)
        ]
    );
    // The seed's path answers the same.
    assert_eq!(
        ok(&app, "/api/v1/analytics/events-by-type", &acme).await,
        all
    );
    // Bounds go to the minute: 10:30 to 11:00:30 holds 10:59's two and 11:00's one.
    let ranged = ok(
        &app,
        "/v1/analytics/events-by-type?from=2026-01-01T10:30:00Z&to=2026-01-01T11:00:30Z",
        &acme,
    )
    .await;
    assert_eq!(ranged["total"], 3, "{ranged}");
    assert_eq!(ranged["to"], "2026-01-01T11:01:00Z");
    // Across whole hours plus edge minutes.
    let wide = ok(
        &app,
        "/v1/analytics/events-by-type?from=2026-01-01T09:58:00Z&to=2026-01-01T11:00:11Z",
        &acme,
    )
    .await;
    assert_eq!(wide["total"], 6, "{wide}");
    let users = ok(
        &app,
        "/v1/analytics/events-by-type?event_type=user.%2A",
        &acme,
    )
    .await;
    assert_eq!(users["total"], 5);
    let shop = ok(&app, "/v1/analytics/events-by-type?source=shop", &acme).await;
    assert_eq!(counts(&shop), [("order.placed".into(), 1)]);
    let limited = ok(&app, "/v1/analytics/events-by-type?limit=1", &acme).await;
    assert_eq!(limited["event_types"].as_array().unwrap().len(), 1);
    assert_eq!(limited["distinct_types"], 3);

    // Tenancy: a client sees its own counts; an admin all, or one client's.
    let theirs = ok(&app, "/v1/analytics/events-by-type", &other).await;
    assert_eq!(counts(&theirs), [("user.created".into(), 5)]);
    let (status, body) = get(&app, "/v1/analytics/events-by-type?client_id=other", &acme).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error(&body, "forbidden");
    let admin = &app.admin_key;
    assert_eq!(
        ok(&app, "/v1/analytics/events-by-type", admin).await["total"],
        11
    );
    assert_eq!(
        ok(&app, "/v1/analytics/events-by-type?client_id=other", admin).await["total"],
        5
    );

    // Hourly series, grouped by type: dense, in order.
    let hourly = ok(
        &app,
        "/v1/analytics/timeseries?interval=hour&from=2026-01-01T09:00:00Z&to=2026-01-01T12:00:00Z&group_by=event_type",
        &acme,
    )
    .await;
    let buckets = hourly["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 3, "{hourly}");
    assert_eq!(buckets[0]["count"], 0);
    assert_eq!(buckets[1]["start"], "2026-01-01T10:00:00Z");
    assert_eq!(
        buckets[1]["groups"],
        json!({"user.created": 3, "user.deleted": 2})
    );
    assert_eq!(buckets[2]["groups"], json!({"order.placed": 1}));
    assert_eq!(hourly["total"], 6);
    let minutes = ok(
        &app,
        "/v1/analytics/timeseries?interval=minute&from=2026-01-01T10:04:00Z&to=2026-01-01T10:07:00Z",
        &acme,
    )
    .await;
    let counts_per_minute: Vec<i64> = minutes["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts_per_minute, [0, 3, 0], "{minutes}");
    let daily = ok(
        &app,
        "/v1/analytics/timeseries?interval=day&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&group_by=source",
        &acme,
    )
    .await;
    assert_eq!(daily["buckets"][0]["count"], 6, "{daily}");
    assert_eq!(daily["buckets"][0]["groups"]["shop"], 1);
    let by_client = ok(
        &app,
        "/v1/analytics/timeseries?interval=day&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&group_by=client_id",
        admin,
    )
    .await;
    assert_eq!(
        by_client["buckets"][0]["groups"],
        json!({"acme": 6, "other": 5})
    );
    app.stop().await;
}

async fn bad_analytics_requests_are_refused(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:read,events:write").await;
    let writer = app.key("acme", "events:write").await;
    for (path, field) in [
        ("/v1/analytics/timeseries?interval=week", "interval"),
        ("/v1/analytics/timeseries?group_by=colour", "group_by"),
        (
            "/v1/analytics/timeseries?interval=minute&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
            "from",
        ),
        (
            "/v1/analytics/events-by-type?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "to",
        ),
        ("/v1/analytics/events-by-type?from=yesterday", "from"),
        ("/v1/analytics/timeseries?from=9999-01-01T00:00:00Z", "from"),
        ("/v1/analytics/events-by-type?event_type=a..b", "event_type"),
        ("/v1/analytics/events-by-type?limit=0", "limit"),
        ("/v1/analytics/events-by-type?colour=red", "colour"),
        ("/v1/analytics/events-by-type?source=", "source"),
        ("/v1/analytics/events-by-type?limit=1&limit=2", "limit"),
        ("/v1/analytics/processing-metrics?days=0", "days"),
        ("/v1/analytics/processing-metrics?days=many", "days"),
        ("/v1/analytics/queue-status?interval=hour", "interval"),
    ] {
        let (status, body) = get(&app, path, &key).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
        assert_error(&body, "validation_failed");
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    let (status, body) = get(&app, "/v1/analytics/timeseries?group_by=client_id", &key).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["field"], "group_by");
    let (status, _) = get(&app, "/v1/analytics/events-by-type", &writer).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = get(&app, "/v1/analytics/events-by-type", "nope").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

async fn processing_metrics_and_queue_status(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let acme = app.key("acme", "events:read,events:write").await;
    let other = app.key("other", "events:read,events:write").await;
    let empty = ok(&app, "/v1/analytics/processing-metrics", &acme).await;
    assert_eq!(empty["appends"], 0, "{empty}");
    assert_eq!(empty["p50_ms"], Value::Null);

    let (status, sub) = status_json(
        app.post(
            "/v1/subscriptions",
            &acme,
            &json!({"subscriber_name": "worker", "topic_pattern": "job.#", "callback_method": "jobs.handle"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    for n in 0..4 {
        app.record(&acme, json!({"event_type": "job.queued", "data": {"n": n}}))
            .await;
    }
    app.record(&other, json!({"event_type": "job.queued", "data": {}}))
        .await;

    let queue = ok(&app, "/v1/analytics/queue-status", &acme).await;
    assert_eq!(queue["deliveries"]["pending"], 4, "{queue}");
    assert_eq!(queue["deliveries"]["failed"], 0);
    assert!(queue["deliveries"]["oldest_waiting"].is_string(), "{queue}");
    assert!(
        queue.get("write_queue").is_none(),
        "node queues are for admins"
    );
    let theirs = ok(&app, "/v1/analytics/queue-status", &other).await;
    assert_eq!(theirs["deliveries"]["pending"], 0);
    let admin = ok(&app, "/v1/analytics/queue-status", &app.admin_key).await;
    assert_eq!(admin["deliveries"]["pending"], 4, "{admin}");
    assert!(
        admin["write_queue"]["max_jobs"].as_u64().unwrap() > 0,
        "{admin}"
    );
    assert!(admin["audit_queue"]["dropped"].is_u64(), "{admin}");

    // Latencies are stored every few seconds and at a stop.
    let app = app.restart().await;
    let metrics = ok(&app, "/v1/analytics/processing-metrics?days=1", &acme).await;
    assert_eq!(metrics["appends"], 4, "{metrics}");
    let ms = |name: &str| metrics[name].as_f64().unwrap();
    assert!(ms("p50_ms") > 0.0, "{metrics}");
    assert!(ms("p50_ms") <= ms("p95_ms") && ms("p95_ms") <= ms("p99_ms"));
    assert!(ms("p99_ms") <= ms("max_ms") * 1.13, "{metrics}");
    let all = ok(&app, "/v1/analytics/processing-metrics", &app.admin_key).await;
    assert_eq!(all["appends"], 5, "{all}");
    app.stop().await;
}

/// `n` events posted at once.
async fn post_many(app: &TestApp, key: &str, n: usize) -> Vec<reqwest::Response> {
    let requests = (0..n).map(|i| {
        let body = json!({"event_type": format!("load.t{}", i % 3), "data": {"i": i}});
        async move { app.post("/v1/events", key, &body).await }
    });
    futures_util::future::join_all(requests).await
}

/// Under concurrent load the writer may hold counts back for a moment; they arrive, exactly,
/// and a stop writes what it held.
async fn counts_stay_exact_under_concurrent_load_and_across_a_restart(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:read,events:write").await;
    for r in post_many(&app, &key, 300).await {
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let waited = std::time::Instant::now();
    loop {
        let total = ok(&app, "/v1/analytics/events-by-type", &key).await["total"]
            .as_i64()
            .unwrap();
        assert!(total <= 300, "never more than was stored: {total}");
        if total == 300 {
            break;
        }
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(5),
            "{total} of 300 counted after 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for r in post_many(&app, &key, 200).await {
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let app = app.restart().await;
    let counted = ok(&app, "/v1/analytics/events-by-type", &key).await;
    assert_eq!(counted["total"], 500, "{counted}");
    assert_eq!(counted["distinct_types"], 3);
    app.stop().await;
}

/// Event retention takes the rollups of the minutes and hours before its cutoff.
async fn retention_removes_rollups_before_the_cutoff(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:read,events:write").await;
    app.record(&key, event("old.thing", "2020-01-01T00:00:00Z"))
        .await;
    app.record(&key, json!({"event_type": "new.thing", "data": {}}))
        .await;
    let cutoff = annals::domain::Timestamp::now().plus_days(-1);
    annals::jobs::retention::purge_events(app.store.as_ref(), cutoff, 100)
        .await
        .unwrap();
    let left = ok(&app, "/v1/analytics/events-by-type", &key).await;
    assert_eq!(counts(&left), [("new.thing".into(), 1)], "{left}");
    app.stop().await;
}

crate::conformance!(
    counts_stay_exact_under_concurrent_load_and_across_a_restart,
    retention_removes_rollups_before_the_cutoff,
    counts_are_exact_scoped_and_grouped_over_time,
    bad_analytics_requests_are_refused,
    processing_metrics_and_queue_status,
);
