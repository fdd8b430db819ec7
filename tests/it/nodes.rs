//! Several `annals serve` nodes on one PostgreSQL database.

use std::collections::HashSet;

use annals::config::ServeArgs;
use annals::server;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestDatabase, all_events};

const KEY: &str = "two-node-static-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_write_concurrently_and_agree() {
    let Some(db) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let mut args = ServeArgs::with_database(db.url.clone());
    args.api_key = Some(KEY.into());
    // Both start at once: migrations and partitions must not race.
    let (a, b) = tokio::join!(server::start(args.clone()), server::start(args.clone()));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut heard_on_b = b.store.commits();
    let bases = [format!("http://{}", a.addr), format!("http://{}", b.addr)];
    let http = crate::helpers::http();

    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (http, base) = (http.clone(), bases[worker % 2].clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let r = http
                    .post(format!("{base}/v1/events"))
                    .header("x-api-key", KEY)
                    .json(&json!({"event_type": "node.write.made", "data": {"w": worker, "i": i}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
            }
        }));
    }
    // The same event_id raced to both nodes: stored once, both answers name the same id.
    let mut raced = Vec::new();
    for n in 0..10 {
        for base in &bases {
            let (http, base) = (http.clone(), base.clone());
            raced.push(tokio::spawn(async move {
                let r = http
                    .post(format!("{base}/v1/events"))
                    .header("x-api-key", KEY)
                    .json(&json!({"event_type": "node.race.made", "event_id": format!("race-{n}")}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let body: Value = r.json().await.unwrap();
                (n, status, body["id"].as_str().unwrap().to_string())
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut ids_by_race = std::collections::HashMap::<i32, HashSet<String>>::new();
    let mut created = 0;
    for t in raced {
        let (n, status, id) = t.await.unwrap();
        assert!(status == StatusCode::CREATED || status == StatusCode::OK);
        created += usize::from(status == StatusCode::CREATED);
        ids_by_race.entry(n).or_default().insert(id);
    }
    assert_eq!(created, 10, "each raced event_id was created exactly once");
    assert!(ids_by_race.values().all(|ids| ids.len() == 1));

    let from_a = all_events(&http, &bases[0], KEY).await;
    let from_b = all_events(&http, &bases[1], KEY).await;
    assert_eq!(from_a.len(), 210);
    let ids = |events: &[Value]| {
        events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&from_a),
        ids(&from_b),
        "both nodes see the same events in the same order"
    );
    let seqs: Vec<i64> = from_a.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=210).collect::<Vec<_>>(),
        "seq is gapless across nodes"
    );

    // Node b heard every committed range, including node a's.
    let mut next = 1;
    while next <= 210 {
        let range = tokio::time::timeout(std::time::Duration::from_secs(5), heard_on_b.recv())
            .await
            .expect("commit announced")
            .expect("no lag");
        assert_eq!(range.first, next);
        next = range.last + 1;
    }

    // Both nodes' tree keepers extend one tree: racing catch-ups end in the same tree (the
    // loser of each compare-and-set starts again), and a proof read on b checks against the
    // checkpoint a signed.
    use annals::integrity::{keeper, verify};
    let (on_a, on_b) = tokio::join!(
        keeper::catch_up(a.store.as_ref()),
        keeper::catch_up(b.store.as_ref())
    );
    let (on_a, on_b) = (on_a.unwrap(), on_b.unwrap());
    assert_eq!(on_a.size, 210);
    assert_eq!(on_a, on_b);
    let checkpoint: Value = http
        .post(format!("{}/v1/integrity/checkpoints", bases[0]))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(checkpoint["tree_size"], 210, "{checkpoint}");
    let id = from_a[123]["id"].as_str().unwrap();
    let proof: Value = http
        .get(format!("{}/v1/events/{id}/proof", bases[1]))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(proof["checkpoint"], checkpoint);
    assert_eq!(proof["leaf_index"], 123);
    assert!(crate::helpers::inclusion_holds(
        &proof,
        &crate::helpers::hash(&checkpoint["root_hash"])
    ));
    let report = verify::verify(b.store.as_ref(), None).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_span_monthly_partitions() {
    let Some(db) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let mut args = ServeArgs::with_database(db.url.clone());
    args.api_key = Some(KEY.into());
    let app = server::start(args).await.unwrap();
    let base = format!("http://{}", app.addr);
    let http = crate::helpers::http();
    let r = http
        .post(format!("{base}/v1/events"))
        .header("x-api-key", KEY)
        .json(&json!({"event_type": "new.event.made", "user_id": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // The service made this month's partition and the next two.
    let client = db.postgres_client().await;
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        count("SELECT COUNT(*) FROM pg_inherits WHERE inhparent = 'events'::regclass").await,
        3
    );

    // An event kept from an older month lives in its own partition (as after an import).
    client
        .batch_execute(
            "CREATE TABLE events_2020_01 PARTITION OF events FOR VALUES FROM ('2020-01-01') TO ('2020-02-01');
             WITH s AS (UPDATE event_sequence SET last_seq = last_seq + 1 RETURNING last_seq)
             INSERT INTO events (seq, id, client_id, event_type, user_id, occurred_at, received_at, data, headers)
             SELECT last_seq, gen_random_uuid(), 'default', 'old.event.made', 'u',
                    '2020-01-15T00:00:00Z', '2020-01-15T00:00:00Z', '{\"k\": 1}', '{}' FROM s;",
        )
        .await
        .unwrap();
    let list = |q: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http
                .get(format!("{base}/v1/events?{q}"))
                .header("x-api-key", KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let events: Vec<Value> = r.json().await.unwrap();
            events
                .iter()
                .map(|e| e["event_type"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list("user_id=u&order=asc").await,
        ["new.event.made", "old.event.made"]
    );
    assert_eq!(list("event_type=old.%23").await, ["old.event.made"]);
    assert_eq!(list("to=2021-01-01").await, ["old.event.made"]);
    assert_eq!(list("k=1").await, ["old.event.made"]);
    assert_eq!(
        list("limit=1").await,
        ["old.event.made"],
        "newest seq first, whatever its partition"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_disabled_on_one_node_stops_working_on_the_other_at_once() {
    let Some(db) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let mut args = ServeArgs::with_database(db.url.clone());
    args.api_key = Some(KEY.into());
    let a = server::start(args.clone()).await.unwrap();
    let b = server::start(args).await.unwrap();
    let http = crate::helpers::http();
    let r = http
        .post(format!("http://{}/v1/keys", a.addr))
        .header("x-api-key", KEY)
        .json(&json!({"client_id": "acme", "name": "moving key"}))
        .send()
        .await
        .unwrap();
    let created: Value = r.json().await.unwrap();
    let (key, key_id) = (
        created["key"].as_str().unwrap().to_string(),
        created["key_id"].as_str().unwrap().to_string(),
    );
    let on_b = |key: String| {
        let (http, url) = (http.clone(), format!("http://{}/v1/events", b.addr));
        async move {
            http.get(url)
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        on_b(key.clone()).await,
        StatusCode::OK,
        "node b now has the key cached"
    );

    let r = http
        .patch(format!("http://{}/v1/keys/{key_id}", a.addr))
        .header("x-api-key", KEY)
        .json(&json!({"is_active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    while on_b(key.clone()).await != StatusCode::UNAUTHORIZED {
        assert!(
            started.elapsed() < std::time::Duration::from_millis(500),
            "node b still accepts the disabled key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A subscription made on one node applies at once to the events another node writes, and the
/// two nodes' delivery workers never send one delivery twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_on_one_node_delivers_what_another_writes_once() {
    let Some(db) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let mut args = ServeArgs::with_database(db.url.clone());
    args.api_key = Some(KEY.into());
    args.webhook_allow_private = true;
    let (a, b) = tokio::join!(server::start(args.clone()), server::start(args.clone()));
    let (a, b) = (a.unwrap(), b.unwrap());
    let (base_a, base_b) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let http = crate::helpers::http();
    let post = |base: &str, path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .header("x-api-key", KEY)
            .json(&body)
            .send()
    };
    // Node B writes first, so its writer holds the (empty) subscription set already.
    let r = post(&base_b, "/v1/events", json!({"event_type": "before.sub"}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let receiver = crate::bus::Receiver::start(&[]).await;
    let r = post(
        &base_a,
        "/v1/subscriptions",
        json!({"subscriber_name": "n", "topic_pattern": "after.#", "webhook_url": receiver.url}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    for i in 0..20 {
        let base = if i % 2 == 0 { &base_b } else { &base_a };
        let r = post(
            base,
            "/v1/events",
            json!({"event_type": "after.sub", "data": {"i": i}}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    receiver.wait_for(20).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let hits = receiver.hits();
    let ids: HashSet<&str> = hits
        .iter()
        .map(|h| crate::bus::header(h, "webhook-id"))
        .collect();
    assert_eq!(hits.len(), 20, "each delivery sent once");
    assert_eq!(ids.len(), 20);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
