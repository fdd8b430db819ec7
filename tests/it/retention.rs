//! Event retention (`ANNALS_EVENT_RETENTION_DAYS`): only events received before the cutoff go,
//! oldest first, in batches, with their idempotency keys; newer events and keys stay. On
//! PostgreSQL a monthly partition that ended before the cutoff is dropped whole.

use annals::domain::Timestamp;
use annals::jobs::retention::purge_events;
use reqwest::StatusCode;
use serde_json::json;

use crate::conformance;
use crate::helpers::{Backend, TestApp, all_events, status_json};

async fn event_retention_deletes_only_old_events_and_their_keys(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| a.event_retention_days = 30).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let event = |id: &str, n: i32| json!({"event_type": "iam.user.created", "source": "iam", "event_id": id, "user_id": format!("u{}", n % 2), "data": {"n": n}});
    for i in 0..30 {
        app.record(&key, event(&format!("old-{i}"), i)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let cutoff = Timestamp::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    for i in 0..5 {
        app.record(&key, event(&format!("new-{i}"), i)).await;
    }
    // The job the server runs (30 days) has nothing to delete yet.
    assert_eq!(all_events(&app.http, &app.base, &key).await.len(), 35);
    if backend == Backend::Sqlite {
        // Once the idle writer has copied every event into the user index, retention must
        // take the old ones' entries out of it too.
        let waited = std::time::Instant::now();
        while user_index_state(&app.db.url) != (35, 35) {
            assert!(waited.elapsed() < std::time::Duration::from_secs(10));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    // Retention takes only events the Merkle tree holds: bring it up to date.
    assert!(app.sign_checkpoint().await.0.is_success());
    let deleted = purge_events(app.store.as_ref(), cutoff, 7).await.unwrap();
    assert_eq!(deleted, 30, "in batches of 7");
    let kept = all_events(&app.http, &app.base, &key).await;
    let ids: Vec<&str> = kept
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["new-0", "new-1", "new-2", "new-3", "new-4"]);
    let by_user: Vec<serde_json::Value> = app
        .get("/v1/events?user_id=u1&order=asc", &key)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = by_user
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["new-1", "new-3"]);
    if backend == Backend::Sqlite {
        assert_eq!(
            user_index_state(&app.db.url),
            (5, 35),
            "the old entries went"
        );
    }
    let seqs: Vec<i64> = kept.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        [31, 32, 33, 34, 35],
        "seq keeps counting; the kept ones stay gapless"
    );
    assert_eq!(
        purge_events(app.store.as_ref(), cutoff, 7).await.unwrap(),
        0
    );

    // The deleted events' keys went with them; the kept ones still guard their events.
    let r = app.post("/v1/events", &key, &event("old-0", 99)).await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "a deleted event's id may be used again"
    );
    let r = app.post("/v1/events", &key, &event("new-0", 99)).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = app.post("/v1/events", &key, &event("new-1", 1)).await;
    assert_eq!(r.status(), StatusCode::OK, "still a duplicate");
    let r = app
        .record(&key, json!({"event_type": "iam.user.deleted"}))
        .await;
    assert!(!r.is_empty());
    assert_eq!(
        all_events(&app.http, &app.base, &key).await.last().unwrap()["seq"],
        37
    );

    if backend == Backend::Postgres {
        // A month long past: its partition goes whole, with its keys.
        let client = app.db.postgres_client().await;
        client
            .batch_execute(
                "CREATE TABLE events_2020_01 PARTITION OF events FOR VALUES FROM ('2020-01-01') TO ('2020-02-01'); \
                 INSERT INTO events (seq, id, client_id, event_type, occurred_at, received_at, data, headers) \
                 VALUES (-1, gen_random_uuid(), 'acme', 'x.y.created', '2020-01-15', '2020-01-15', '{}', '{}'); \
                 INSERT INTO idempotency_keys VALUES ('acme', 'iam', 'ancient', gen_random_uuid(), -1, '\\x00', '2020-01-15');",
            )
            .await
            .unwrap();
        purge_events(app.store.as_ref(), Timestamp::now(), 1000)
            .await
            .unwrap();
        let left: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_class WHERE relname = 'events_2020_01') \
                 + (SELECT count(*) FROM idempotency_keys WHERE event_id = 'ancient')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "the partition and its key are gone");
    }
    app.stop().await;
}

/// `(entries in user_index, user_index_progress.through_seq)` of a SQLite store.
fn user_index_state(path: &str) -> (i64, i64) {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
        .query_row(
            "SELECT (SELECT count(*) FROM user_index), through_seq FROM user_index_progress",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

/// Retention that takes every event, the newest included, must not let their seqs be handed out
/// again, even by a restarted server that reads the last seq back from the store.
async fn seqs_of_deleted_newest_events_are_never_reused(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    for n in 0..3 {
        app.record(
            &key,
            json!({"event_type": "iam.user.created", "data": {"n": n}}),
        )
        .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert!(app.sign_checkpoint().await.0.is_success());
    let deleted = purge_events(app.store.as_ref(), Timestamp::now(), 100)
        .await
        .unwrap();
    assert_eq!(deleted, 3, "every event was old enough");
    assert!(all_events(&app.http, &app.base, &key).await.is_empty());

    let app = app.restart().await;
    app.record(&key, json!({"event_type": "iam.user.deleted"}))
        .await;
    let kept = all_events(&app.http, &app.base, &key).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(
        kept[0]["seq"], 4,
        "seq goes on from the deleted newest event"
    );
    app.stop().await;
}

/// Retention never takes an event the Merkle tree has not taken yet: the tree is gapless, so a
/// keeper that found one gone would stop there for good (and every event after it would go
/// without proofs). A tree held back (its keeper runs hourly here) holds retention back.
async fn retention_waits_for_the_merkle_tree(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| {
        a.integrity.tree_interval = std::time::Duration::from_secs(3600)
    })
    .await
    else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let event = |n: i32| json!({"event_type": "iam.user.created", "event_id": format!("e{n}"), "user_id": "u1", "data": {"n": n}});
    for n in 0..5 {
        app.record(&key, event(n)).await;
    }
    // The keeper ran once, at start; the events came after it.
    let hashed = tree_size(&app, &key).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let deleted = purge_events(app.store.as_ref(), Timestamp::now(), 2)
        .await
        .unwrap();
    assert_eq!(deleted, hashed, "only the events in the tree");
    let kept = all_events(&app.http, &app.base, &key).await;
    assert_eq!(kept.len() as u64, 5 - hashed);
    assert_eq!(kept[0]["seq"], hashed + 1);
    if hashed < 5 {
        // A kept event's key still guards it.
        let r = app.post("/v1/events", &key, &event(4)).await;
        assert_eq!(r.status(), StatusCode::OK, "still a duplicate");
    }

    if backend == Backend::Postgres {
        // An expired partition holding an event the tree lacks stays.
        let client = app.db.postgres_client().await;
        client
            .batch_execute(
                "CREATE TABLE events_2020_02 PARTITION OF events FOR VALUES FROM ('2020-02-01') TO ('2020-03-01'); \
                 INSERT INTO events (seq, id, client_id, event_type, occurred_at, received_at, data, headers) \
                 VALUES (1000000, gen_random_uuid(), 'acme', 'x.y.created', '2020-02-15', '2020-02-15', '{}', '{}');",
            )
            .await
            .unwrap();
        purge_events(app.store.as_ref(), Timestamp::now(), 100)
            .await
            .unwrap();
        let partitions: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relname = 'events_2020_02'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(partitions, 1, "the partition stays");
        client
            .batch_execute("DROP TABLE events_2020_02")
            .await
            .unwrap();
    }

    // Once the tree has them, they go.
    assert_eq!(app.sign_checkpoint().await.0, StatusCode::CREATED);
    assert_eq!(tree_size(&app, &key).await, 5);
    let deleted = purge_events(app.store.as_ref(), Timestamp::now(), 2)
        .await
        .unwrap();
    assert_eq!(deleted, 5 - hashed);
    assert!(all_events(&app.http, &app.base, &key).await.is_empty());
    let r = app.post("/v1/events", &key, &event(4)).await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "its key went with the event"
    );
    // The tree goes on from the removed events.
    assert_eq!(app.sign_checkpoint().await.0, StatusCode::CREATED);
    assert_eq!(tree_size(&app, &key).await, 6);
    app.stop().await;
}

/// The Merkle tree's size (`GET /v1/integrity/tree`).
async fn tree_size(app: &TestApp, key: &str) -> u64 {
    let (status, tree) = status_json(app.get("/v1/integrity/tree", key).await).await;
    assert_eq!(status, StatusCode::OK, "{tree}");
    tree["tree_size"].as_u64().unwrap()
}

conformance!(
    event_retention_deletes_only_old_events_and_their_keys,
    seqs_of_deleted_newest_events_are_never_reused,
    retention_waits_for_the_merkle_tree,
);
