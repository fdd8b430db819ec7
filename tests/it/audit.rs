//! The API-call audit log: every request recorded (rejected ones too), read back with filters
//! and paging, each client seeing only its own; retention.

use annals::domain::Timestamp;
use annals::domain::audit::AuditRecord;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_error, status_json};

/// Audit rows are written in batches off the request path: wait until `want` are visible.
pub(crate) async fn logs_until(app: &TestApp, query: &str, key: &str, want: usize) -> Vec<Value> {
    logs_once(app, query, key, |rows| rows.len() >= want).await
}

/// Waits until the rows of `query` satisfy `done` (say, the test's last call is among them: the
/// log is written in the order calls end, so the earlier ones are there too).
async fn logs_once(
    app: &TestApp,
    query: &str,
    key: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    for _ in 0..100 {
        let (status, body) =
            status_json(app.get(&format!("/v1/audit/logs?{query}"), key).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let rows = body.as_array().unwrap().clone();
        if done(&rows) {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the audit rows for {query} never showed what the test waits for");
}

async fn every_call_is_recorded_and_clients_see_only_their_own(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let admin = app.admin_key.clone();
    let a = app.key("client-a", "events:write,events:read").await;
    let b = app.key("client-b", "events:write,events:read").await;
    app.record(&a, json!({"event_type": "a.thing.done"})).await;
    assert_eq!(app.get("/v1/events", &a).await.status(), StatusCode::OK);
    assert_eq!(
        app.get("/v1/events/01a200bf-bc77-7522-a4a9-c5ec20956460", &b)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v1/events", "ank_0123456789abcdef_wrong")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/nowhere", &admin).await.status(),
        StatusCode::NOT_FOUND
    );
    let r = app
        .http
        .get(app.url("/v1/events"))
        .header("x-api-key", &b)
        .header("user-agent", "a".repeat(600))
        .header("x-request-id", "req-long-agent")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // The last call's row: the polls' own GETs could make up a count of rows.
    let rows = logs_once(&app, "limit=1000", &admin, |rows| {
        rows.iter().any(|r| r["request_id"] == "req-long-agent")
    })
    .await;
    let long = rows
        .iter()
        .find(|r| r["request_id"] == "req-long-agent")
        .expect("the caller's request id is kept");
    assert_eq!(
        long["user_agent"].as_str().map(str::len),
        Some(512),
        "a long user agent is cut to 512 characters"
    );
    let post = rows
        .iter()
        .find(|r| r["method"] == "POST" && r["endpoint"] == "/v1/events")
        .expect("the ingest call is recorded");
    assert_eq!(post["status"], 201);
    assert_eq!(post["client_id"], "client-a");
    assert!(post["key_id"].as_str().is_some_and(|k| a.contains(k)));
    assert_eq!(post["path"], "/v1/events");
    assert_eq!(post["ip_address"], "127.0.0.1");
    assert!(post["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(post["latency_ms"].as_f64().is_some_and(|l| l >= 0.0));
    assert!(post["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    let failed = rows
        .iter()
        .find(|r| r["status"] == 401)
        .expect("the rejected call is recorded");
    assert_eq!(failed["client_id"], Value::Null);
    assert!(
        rows.iter()
            .any(|r| r["path"] == "/nowhere" && r["status"] == 404 && r["endpoint"].is_null())
    );

    // a client sees only its own rows, and reading is itself recorded
    let mine = logs_until(&app, "", &a, 2).await;
    assert!(mine.iter().all(|r| r["client_id"] == "client-a"));
    let again = logs_until(&app, "endpoint=/v1/audit/logs", &a, 1).await;
    assert!(again.iter().all(|r| r["client_id"] == "client-a"));
    let (status, body) = status_json(app.get("/v1/audit/logs?client_id=client-b", &a).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error(&body, "forbidden");
    let theirs = logs_until(&app, "client_id=client-b", &admin, 1).await;
    assert!(theirs.iter().all(|r| r["client_id"] == "client-b"));

    // filters and paging
    let posts = logs_until(&app, "method=post", &admin, 1).await;
    assert!(posts.iter().all(|r| r["method"] == "POST"));
    let unauthorized = logs_until(&app, "status=401", &admin, 1).await;
    assert!(unauthorized.iter().all(|r| r["status"] == 401));
    let r = app.get("/v1/audit/logs?limit=1", &admin).await;
    let link = r
        .headers()
        .get("link")
        .expect("a next page")
        .to_str()
        .unwrap()
        .to_string();
    let next = &link[1..link.find('>').unwrap()];
    let first: Vec<Value> = r.json().await.unwrap();
    let (_, second) = status_json(app.get(next, &admin).await).await;
    assert!(second[0]["id"].as_i64().unwrap() < first[0]["id"].as_i64().unwrap());

    for (query, field) in [
        ("status=999", "status"),
        ("limit=0", "limit"),
        ("colour=red", "colour"),
        ("from=soon", "from"),
        ("endpoint=", "endpoint"),
        ("method=", "method"),
    ] {
        let (status, body) =
            status_json(app.get(&format!("/v1/audit/logs?{query}"), &admin).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(body["field"], field);
    }
    app.stop().await;
}

async fn audit_retention_deletes_only_old_records(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| {
        a.audit_log = false;
        a.audit_retention_days = 0; // the job would race this test to the old rows
    })
    .await
    else {
        return;
    };
    let day = 86_400_000_000i64;
    let now = Timestamp::now().as_micros();
    let row = |age_days: i64, path: &str| AuditRecord {
        at: Timestamp::from_micros(now - age_days * day),
        client_id: Some("acme".into()),
        key_id: None,
        method: "GET".into(),
        route: Some("/v1/events".into()),
        path: path.into(),
        status: 200,
        latency_us: 10,
        ip: None,
        user_agent: None,
        request_id: None,
        request_body: None,
        response_body: None,
    };
    let rows = vec![
        row(120, "/old-1"),
        row(100, "/old-2"),
        row(95, "/old-3"),
        row(10, "/new-1"),
        row(0, "/new-2"),
    ];
    app.store.append_audit(rows).await.unwrap();
    let deleted = annals::jobs::retention::purge_audit(app.store.as_ref(), 90, 2)
        .await
        .unwrap();
    assert_eq!(deleted, 3, "in batches of two, until none is left");
    let (_, body) = status_json(app.get("/v1/audit/logs", &app.admin_key).await).await;
    let paths: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/new-2", "/new-1"]);
    app.stop().await;
}

/// `ANNALS_AUDIT_BODIES=true`: bodies are kept masked and cut to 4 KiB; what can't be masked
/// (not JSON, too large) and key-management answers are described, never stored.
async fn bodies_are_kept_masked_when_asked(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| a.audit_bodies = true).await else {
        return;
    };
    let admin = app.admin_key.clone();
    let key = app.key("acme", "events:write,events:read").await;
    let r = app
        .post(
            "/v1/events",
            &key,
            &json!({"event_type": "iam.user.created",
            "data": {"user": "u1", "password": "hunter2", "nested": [{"Token": "t0ps3cret"}]}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .post_raw("/v1/events", &key, Some("text/plain"), "password=hunter2")
        .await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let attributes = [
        ("ce-id", "b1"),
        ("ce-source", "/s"),
        ("ce-type", "blob.file.uploaded"),
    ];
    let r = app
        .post_binary_cloudevent(
            &key,
            &attributes,
            "application/octet-stream",
            "password=hunter2",
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .post(
            "/v1/keys",
            &admin,
            &json!({"client_id": "acme", "name": "second"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let new_key = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let big: Vec<Value> = (0..100)
        .map(|i| json!({"event_type": "x.y.created", "data": {"i": i, "pad": "p".repeat(100)}}))
        .collect();
    let r = app
        .post("/v1/events/batch", &key, &json!({"events": big}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // The five POSTs above, every one (the polls' own GETs must not make up the count).
    let rows = logs_until(&app, "method=post&limit=1000", &admin, 5).await;
    let text = serde_json::to_string(&rows).unwrap();
    for secret in ["hunter2", "t0ps3cret", new_key.as_str()] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the audit log: {text}"
        );
    }
    let find = |status: u64, path: &str| {
        rows.iter()
            .find(|r| r["status"] == status && r["path"] == path)
            .unwrap_or_else(|| panic!("no {status} {path} row"))
    };
    let created = rows
        .iter()
        .find(|r| {
            r["request_body"]
                .as_str()
                .is_some_and(|b| b.contains("iam.user.created"))
        })
        .expect("the JSON ingest row keeps its body");
    let request: Value = serde_json::from_str(created["request_body"].as_str().unwrap()).unwrap();
    assert_eq!(request["data"]["user"], "u1");
    assert_eq!(request["data"]["password"], "***");
    assert!(created["response_body"].as_str().unwrap().contains(&id));
    assert!(
        find(415, "/v1/events").get("request_body").is_none(),
        "a body never read is not kept"
    );
    let binary = rows
        .iter()
        .filter(|r| r["status"] == 201 && r["path"] == "/v1/events")
        .find(|r| {
            r["request_body"]
                .as_str()
                .is_some_and(|b| b.contains("not JSON"))
        });
    assert!(
        binary.is_some(),
        "the binary CloudEvent's body is described, not kept"
    );
    assert!(
        find(201, "/v1/keys")["response_body"]
            .as_str()
            .unwrap()
            .contains("not kept")
    );
    let batch = find(201, "/v1/events/batch")["request_body"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        batch.ends_with("[truncated]") && batch.len() < 4200,
        "{batch}"
    );
    app.stop().await;

    // Off by default: no bodies.
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    app.record(
        &key,
        json!({"event_type": "iam.user.created", "data": {"user": "u1"}}),
    )
    .await;
    let rows = logs_until(&app, "limit=10", &app.admin_key, 1).await;
    assert!(
        rows.iter().all(|r| r.get("request_body").is_none()),
        "{rows:?}"
    );
    app.stop().await;
}

/// Routes added with `server::start_with` (the benchmark's no-op on the full stack) pass the
/// same key check and are audited like the API's own.
async fn extra_routes_sit_behind_the_key_check_and_the_audit_log(backend: Backend) {
    let probe = axum::Router::new().route(
        "/v1/probe",
        axum::routing::post(|| async { axum::http::StatusCode::NO_CONTENT }),
    );
    let Some(app) = TestApp::spawn_with_routes(backend, |_| {}, probe).await else {
        return;
    };
    let anonymous = app.http.post(app.url("/v1/probe")).send().await.unwrap();
    let (status, body) = status_json(anonymous).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_error(&body, "unauthorized");
    let r = app.post("/v1/probe", &app.admin_key, &json!({})).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers().contains_key("ratelimit-remaining"));
    let rows = logs_until(&app, "endpoint=/v1/probe", &app.admin_key, 2).await;
    let mut statuses: Vec<u64> = rows.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, [204, 401], "{rows:?}");
    app.stop().await;
}

async fn a_call_abandoned_by_its_client_is_recorded(backend: Backend) {
    abandoned_and_panicking_calls_are_recorded(backend, false).await;
}

/// The same with `ANNALS_AUDIT_BODIES`, whose records are made on another path.
async fn with_bodies_a_call_abandoned_by_its_client_is_recorded(backend: Backend) {
    abandoned_and_panicking_calls_are_recorded(backend, true).await;
}

/// A call whose client hangs up before the answer is still on record, as status 499; one whose
/// route panics, as the 500 it gets.
async fn abandoned_and_panicking_calls_are_recorded(backend: Backend, bodies: bool) {
    let stuck = axum::Router::new()
        .route(
            "/v1/stuck",
            axum::routing::post(std::future::pending::<axum::http::StatusCode>),
        )
        .route(
            "/v1/boom",
            axum::routing::post(|| async {
                if true {
                    panic!("a route that fails");
                }
                axum::http::StatusCode::NO_CONTENT
            }),
        );
    let Some(app) = TestApp::spawn_with_routes(backend, |a| a.audit_bodies = bodies, stuck).await
    else {
        return;
    };
    let gave_up = app
        .http
        .post(app.url("/v1/stuck"))
        .header("x-api-key", &app.admin_key)
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    let rows = logs_until(&app, "endpoint=/v1/stuck", &app.admin_key, 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["status"], 499, "{rows:?}");
    assert_eq!(rows[0]["method"], "POST", "{rows:?}");
    let boom = app.post("/v1/boom", &app.admin_key, &json!({})).await;
    assert_eq!(boom.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let rows = logs_until(&app, "endpoint=/v1/boom", &app.admin_key, 1).await;
    assert_eq!(rows[0]["status"], 500, "{rows:?}");
    app.stop().await;
}

/// Seed 002's `?endpoint=failed` (and `?failed=true`) lists the calls answered with an error.
async fn failed_calls_are_listed_on_their_own(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let admin = app.admin_key.clone();
    assert_eq!(app.get("/v1/events", &admin).await.status(), StatusCode::OK);
    assert_eq!(
        app.get("/v1/nowhere", &admin).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v1/events?limit=0", &admin).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let failed = logs_until(&app, "endpoint=failed", &admin, 2).await;
    assert!(
        failed.iter().all(|r| r["status"].as_u64().unwrap() >= 400),
        "{failed:?}"
    );
    let paths: Vec<&str> = failed.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"/v1/nowhere"), "{paths:?}");
    let also = logs_until(&app, "failed=true", &admin, 2).await;
    assert_eq!(also.len(), failed.len());
    let (status, body) = status_json(app.get("/v1/audit/logs?failed=maybe", &admin).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["field"], "failed");
    app.stop().await;
}

crate::conformance!(
    failed_calls_are_listed_on_their_own,
    a_call_abandoned_by_its_client_is_recorded,
    with_bodies_a_call_abandoned_by_its_client_is_recorded,
    extra_routes_sit_behind_the_key_check_and_the_audit_log,
    bodies_are_kept_masked_when_asked,
    every_call_is_recorded_and_clients_see_only_their_own,
    audit_retention_deletes_only_old_records,
);
