//! `annals copy`: everything a store holds moves into another — SQLite into PostgreSQL, back,
//! or into a new file — with its seqs, ids, times, idempotency keys, API keys, security events
//! and audit log; a second run takes only what arrived since; a destination holding other
//! events, the source itself, or a SQLite file being served is refused.

use std::process::{Command, Output};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestDatabase, all_events, status_json};

/// Runs `annals copy --to <to>` from the store at `from`, two rows a transaction (so every
/// table takes several).
async fn copy(from: &str, to: &str) -> Output {
    copy_in_batches(from, to, 2).await
}

async fn copy_in_batches(from: &str, to: &str, batch: usize) -> Output {
    let (from, to) = (from.to_string(), to.to_string());
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_annals"))
            .args(["copy", "--to", &to, "--batch", &batch.to_string()])
            .env("ANNALS_DATABASE_URL", &from)
            .env_remove("ANNALS_API_KEY")
            .env_remove("ANNALS_LOG")
            .env_remove("RUST_LOG")
            .output()
            .expect("annals runs")
    })
    .await
    .unwrap()
}

fn succeeded(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Every row of an admin listing (audit logs, security events), sorted by id.
async fn by_id(app: &TestApp, path: &str) -> Vec<Value> {
    let (status, body) = status_json(app.get(path, &app.admin_key).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut rows = body.as_array().unwrap().clone();
    rows.sort_by_key(|r| r["id"].as_i64());
    rows
}

/// What a store shows of itself over HTTP: every event (admin), the seed-000 view, keys,
/// security events and the audit log.
struct Snapshot {
    events: Vec<Value>,
    api_events: Vec<Value>,
    keys: Vec<Value>,
    security: Vec<Value>,
    audit: Vec<Value>,
    /// Events per type, from the analytics rollups.
    counts: Value,
    subscriptions: Value,
    integrations: Value,
}

async fn snapshot(app: &TestApp) -> Snapshot {
    let admin = &app.admin_key;
    let (status, keys) = status_json(app.get("/v1/keys", admin).await).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    Snapshot {
        events: all_events(&app.http, &app.base, admin).await,
        api_events: app.list("/v1/api-events?limit=1000", admin).await,
        keys: keys.as_array().unwrap().clone(),
        security: by_id(app, "/v1/security-events?limit=1000").await,
        audit: by_id(app, "/v1/audit/logs?limit=1000").await,
        counts: status_json(
            app.get("/v1/analytics/events-by-type?limit=1000", admin)
                .await,
        )
        .await
        .1,
        subscriptions: status_json(app.get("/v1/subscriptions", admin).await)
            .await
            .1,
        integrations: status_json(app.get("/v1/integrations", admin).await)
            .await
            .1,
    }
}

/// The same structured CloudEvent each time (its idempotency key is source + id).
async fn post_cloudevent(app: &TestApp, key: &str) -> reqwest::Response {
    let event = json!({"specversion": "1.0", "id": "ce-1", "source": "/shop",
        "type": "shop.order.placed", "data": "plain text data", "datacontenttype": "text/plain"});
    app.post_raw(
        "/v1/events",
        key,
        Some("application/cloudevents+json"),
        event.to_string(),
    )
    .await
}

/// Fills the source with one of each kind of thing a store keeps.
async fn fill(app: &TestApp, client_key: &str) {
    app.record(
        client_key,
        json!({
            "event_type": "billing.invoice.paid", "event_id": "evt-1", "source": "billing",
            "user_id": "user-1", "subject": "invoice/1", "correlation_id": "corr-1",
            "status": "SUCCESS", "ip_address": "203.0.113.7", "partition_key": "p-1",
            "occurred_at": "2026-01-15T10:00:00.123456Z",
            "data": {"amount": 12345678901234567890123_u128, "nested": {"a": [1, "two", null]}},
            "headers": {"actor": "alice"}
        }),
    )
    .await;
    let r = app
        .post(
            "/v1/events/batch",
            client_key,
            &json!({"events": [
                {"event_type": "user.session.started", "user_id": "user-2", "event_id": "b-1"},
                {"event_type": "user.session.ended", "user_id": "user-2"}
            ]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .post(
            "/v1/api-events",
            client_key,
            &json!({
                "eventType": "REQUEST", "sourceSystem": "gateway",
                "eventTime": "2026-02-01T00:00:00Z",
                "eventData": {"endpoint": "/orders", "method": "POST", "statusCode": 201},
                "correlationId": "2f1c6c2e-8d2a-4b51-9a57-0c1f3e7d5b10", "status": "SUCCESS",
                "userContext": {"userId": "user-3", "ipAddress": "198.51.100.1"}
            }),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let r = post_cloudevent(app, client_key).await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    // Another tenant, and a failed login (a security event of Annals' own).
    let other = app.key("globex", "events:write,events:read").await;
    app.record(
        &other,
        json!({"event_type": "globex.thing.done", "user_id": "user-1"}),
    )
    .await;
    let r = app.get("/v1/events", "not-a-key-at-all").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The event bus's configuration: a subscription and an inbound integration.
    let r = app
        .post(
            "/v1/subscriptions",
            client_key,
            &json!({"subscriber_name": "worker", "topic_pattern": "billing.#", "callback_method": "jobs.handle"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .post(
            "/v1/integrations",
            &app.admin_key,
            &json!({"name": "SVIX", "client_id": "acme", "verification": "standard_webhooks"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

async fn copy_moves_everything(from: Backend, to: Backend) {
    let Some(source) = TestApp::spawn(from).await else {
        return;
    };
    let Some(destination) = TestDatabase::create(to).await else {
        return;
    };
    let client_key = source.key("acme", "events:write,events:read").await;
    fill(&source, &client_key).await;
    // Stopping flushes the audit log and the security events.
    let source = source.restart().await;
    let before = snapshot(&source).await;
    // The client's six, and the failed login published as an event of the system client.
    assert_eq!(before.events.len(), 7);
    assert!(
        before
            .events
            .iter()
            .any(|e| e["client_id"] == "$annals"
                && e["event_type"] == "annals.security.failed_login"),
        "{:?}",
        before.events
    );
    assert!(!before.security.is_empty() && !before.audit.is_empty());

    // First pass while the source keeps serving.
    let text = succeeded(&copy(&source.db.url, &destination.url).await);
    assert!(text.contains("Copied 7 events"), "{text}");

    // More arrives at the source; the second pass takes only that.
    let late = source
        .record(
            &client_key,
            json!({"event_type": "billing.invoice.voided", "event_id": "evt-2"}),
        )
        .await;
    let source = source.restart().await;
    let after = snapshot(&source).await;
    // A signed checkpoint of the whole source goes over with its tree.
    let (status, checkpoint) = source.sign_checkpoint().await;
    assert_eq!(status, StatusCode::CREATED, "{checkpoint}");
    assert_eq!(checkpoint["tree_size"], 8, "{checkpoint}");
    let text = succeeded(&copy(&source.db.url, &destination.url).await);
    assert!(text.contains("Copied 1 event "), "{text}");
    assert!(
        text.contains(
            "1 subscription, 1 integration, and 1 signed checkpoint (Merkle tree of 8 leaves)"
        ),
        "{text}"
    );
    assert!(
        text.contains("Both stores hold 8 events up to seq 8"),
        "{text}"
    );
    let admin_key = source.admin_key.clone();
    source.stop().await;

    // The copy serves everything as the source did, under the same keys.
    let mut copied = TestApp::serve(destination).await;
    copied.admin_key = admin_key;
    // The source's checkpoint holds at the copy: same tree, proofs check against it.
    let (_, latest) = status_json(
        copied
            .get("/v1/integrity/checkpoints/latest", &client_key)
            .await,
    )
    .await;
    assert_eq!(latest, checkpoint);
    let (status, proof) = status_json(
        copied
            .get(&format!("/v1/events/{late}/proof?tree_size=8"), &client_key)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{proof}");
    assert_eq!(proof["checkpoint"], checkpoint);
    assert_eq!(proof["leaf_matches_event"], true);
    assert!(crate::helpers::inclusion_holds(
        &proof,
        &crate::helpers::hash(&checkpoint["root_hash"])
    ));
    let report = annals::integrity::verify::verify(copied.store.as_ref(), None)
        .await
        .unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.checkpoints, 1);
    let now = snapshot(&copied).await;
    assert_eq!(now.events, after.events, "events differ");
    assert_eq!(now.events.last().unwrap()["id"], late.as_str());
    assert_eq!(now.api_events, after.api_events);
    assert_eq!(now.keys, after.keys);
    assert_eq!(now.security, after.security);
    assert_eq!(
        now.counts, after.counts,
        "the copy's rollups count what it holds"
    );
    assert_eq!(now.counts["total"], 8, "{}", now.counts);
    assert_eq!(now.subscriptions, after.subscriptions);
    assert_eq!(now.subscriptions.as_array().map(Vec::len), Some(1));
    assert_eq!(now.integrations, after.integrations);
    assert_eq!(now.integrations.as_array().map(Vec::len), Some(1));
    // The copy's own calls (the snapshot's reads) come after the source's records.
    assert_eq!(now.audit[..after.audit.len()], after.audit[..]);
    assert_eq!(
        copied
            .list("/v1/events?user_id=user-2&order=asc", &client_key)
            .await,
        after.events[1..3].to_vec(),
        "the user index of the copy"
    );

    // Idempotency keys came along: a retry is a duplicate of the original, other content a 409.
    let retry = json!({"event_type": "billing.invoice.voided", "event_id": "evt-2"});
    let (status, body) = status_json(copied.post("/v1/events", &client_key, &retry).await).await;
    assert_eq!(
        (status, &body["id"]),
        (StatusCode::OK, &json!(late)),
        "{body}"
    );
    let changed =
        json!({"event_type": "billing.invoice.voided", "event_id": "evt-2", "data": {"x": 1}});
    let r = copied.post("/v1/events", &client_key, &changed).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = post_cloudevent(&copied, &client_key).await;
    assert_eq!(r.status(), StatusCode::OK, "a CloudEvent's retry");

    // New events carry on after the copied seqs.
    let id = copied
        .record(&client_key, json!({"event_type": "after.copy.recorded"}))
        .await;
    let newest = copied.list("/v1/events?limit=1", &client_key).await;
    assert_eq!(newest[0]["id"], id.as_str());
    assert_eq!(
        newest[0]["seq"],
        after.events.last().unwrap()["seq"].as_i64().unwrap() + 1
    );
    copied.stop().await;
}

async fn copy_refuses_what_would_mix_two_stores(backend: Backend) {
    let Some(source) = TestApp::spawn(backend).await else {
        return;
    };
    let Some(other) = TestApp::spawn(backend).await else {
        return;
    };
    let key = source.key("acme", "events:write").await;
    source.record(&key, json!({"event_type": "a.b.c"})).await;
    let other_key = other.key("acme", "events:write").await;
    other
        .record(&other_key, json!({"event_type": "x.y.z"}))
        .await;
    // Not served, or a SQLite destination would be refused for that first.
    let other = other.stop_keep_db().await;

    // A destination with events of its own.
    let out = copy(&source.db.url, &other.db.url).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("holds events that are not this source's"),
        "{stderr}"
    );

    // The source itself.
    let out = copy(&source.db.url, &source.db.url).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    if backend == Backend::Sqlite {
        // Its server holds the serve lock, which a SQLite destination needs first.
        assert!(stderr.contains("being served"), "{stderr}");
    } else {
        assert!(stderr.contains("names the store being copied"), "{stderr}");
    }
    let out = copy(&other.db.url, &other.db.url).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("names the store being copied"), "{stderr}");

    // Nothing was written anywhere.
    let events = source.list("/v1/events", &source.admin_key).await;
    assert_eq!(events.len(), 1);
    let other = other.restart().await;
    assert_eq!(other.list("/v1/events", &other.admin_key).await.len(), 1);
    other.stop().await;
    source.stop().await;
}

/// Events received in months long past get their PostgreSQL partitions; seqs that retention
/// deleted stay unused (the oldest and, through the sequence, the newest); events too large to
/// hold many of in memory go over in batches bounded in bytes, none lost at a batch's edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_months_deleted_seqs_and_large_events_are_copied() {
    let Some(source) = TestApp::spawn_with(Backend::Sqlite, |a| a.max_event_bytes = 5 << 20).await
    else {
        return;
    };
    let Some(destination) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let key = source.key("acme", "events:write,events:read").await;
    let big = "x".repeat(4 << 20);
    for n in 0..10 {
        source
            .record(
                &key,
                json!({"event_type": "file.blob.stored", "data": {"n": n, "blob": big}}),
            )
            .await;
    }
    let source = source.stop_keep_db().await;
    {
        let conn = rusqlite::Connection::open(&source.db.url).unwrap();
        conn.execute_batch(
            "DELETE FROM events WHERE seq = 1; \
             UPDATE events SET received_at = 1709600000000000 WHERE seq = 2; \
             UPDATE event_sequence SET last_seq = 1000;",
        )
        .unwrap();
    }
    let source = source.restart().await;
    let before = all_events(&source.http, &source.base, &key).await;
    assert_eq!(before.len(), 9);
    assert!(
        before[0]["received_at"]
            .as_str()
            .unwrap()
            .starts_with("2024-03-05")
    );
    let source = source.stop_keep_db().await;

    let text = succeeded(&copy_in_batches(&source.db.url, &destination.url, 1000).await);
    assert!(text.contains("Copied 9 events"), "{text}");
    // An event gone at the source since (deleted by hand): the counts disagree, and it is said.
    rusqlite::Connection::open(&source.db.url)
        .unwrap()
        .execute_batch("DELETE FROM events WHERE seq = 5")
        .unwrap();
    let out = copy_in_batches(&source.db.url, &destination.url, 1000).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("holds 9 events up to seq 10, the source 8"),
        "{stderr}"
    );
    let admin_key = source.admin_key.clone();
    let mut copied = TestApp::serve(destination).await;
    copied.admin_key = admin_key;
    assert_eq!(all_events(&copied.http, &copied.base, &key).await, before);
    let id = copied
        .record(&key, json!({"event_type": "after.copy.recorded"}))
        .await;
    let newest = copied.list("/v1/events?limit=1", &key).await;
    assert_eq!(
        (&newest[0]["id"], &newest[0]["seq"]),
        (&json!(id), &json!(1001))
    );
    copied.stop().await;
}

crate::conformance!(copy_refuses_what_would_mix_two_stores);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_postgres_copies_everything() {
    copy_moves_everything(Backend::Sqlite, Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_sqlite_copies_everything() {
    copy_moves_everything(Backend::Postgres, Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_sqlite_copies_everything() {
    copy_moves_everything(Backend::Sqlite, Backend::Sqlite).await
}
