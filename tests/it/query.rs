//! Queries: every filter, data-field matching, ordering and cursor paging.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_error, status_json};

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect()
}

async fn seeded(backend: Backend) -> Option<TestApp> {
    let app = TestApp::spawn(backend).await?;
    let events = json!({"events": [
        {"event_type": "billing.invoice.paid", "user_id": "u1", "source": "billing", "subject": "inv/1",
         "correlation_id": "c1", "status": "SUCCESS", "occurred_at": "2026-01-01T00:00:00Z",
         "data": {"amount": 1200, "currency": "EUR", "paid": true, "status": "settled", "customer": {"tier": "gold"}}},
        {"event_type": "billing.invoice.drafted", "user_id": "u1", "source": "billing",
         "occurred_at": "2026-01-02T00:00:00Z", "data": {"amount": "1200", "currency": "USD", "paid": false}},
        {"event_type": "billing.refund.sent", "user_id": "u2", "source": "billing",
         "occurred_at": "2026-01-03T00:00:00Z", "data": {"amount": 1200.5, "customer": {"tier": "silver"}}},
        {"event_type": "iam.user.created", "user_id": "u2", "source": "iam", "correlation_id": "c1",
         "status": "FAILURE", "occurred_at": "2026-01-04T00:00:00Z", "data": {"email": "a@b.c"}},
        {"event_type": "billing", "user_id": "u3", "occurred_at": "2026-01-05T00:00:00Z"}
    ]});
    let r = app.post("/v1/events/batch", &app.admin_key, &events).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    Some(app)
}

async fn filters_on_envelope_fields(backend: Backend) {
    let Some(app) = seeded(backend).await else {
        return;
    };
    let k = app.admin_key.clone();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "user_id=u1",
            vec!["billing.invoice.drafted", "billing.invoice.paid"],
        ),
        (
            "event_type=billing.invoice.paid",
            vec!["billing.invoice.paid"],
        ),
        (
            "event_type=billing.invoice.*",
            vec!["billing.invoice.drafted", "billing.invoice.paid"],
        ),
        (
            "event_type=billing.%23",
            vec![
                "billing",
                "billing.refund.sent",
                "billing.invoice.drafted",
                "billing.invoice.paid",
            ],
        ),
        ("event_type=*.*.sent", vec!["billing.refund.sent"]),
        ("event_type=%23.created", vec!["iam.user.created"]),
        ("source=iam", vec!["iam.user.created"]),
        ("subject=inv/1", vec!["billing.invoice.paid"]),
        (
            "correlation_id=c1",
            vec!["iam.user.created", "billing.invoice.paid"],
        ),
        ("status=FAILURE", vec!["iam.user.created"]),
        (
            "from=2026-01-02T00:00:00Z&to=2026-01-04T00:00:00Z",
            vec!["billing.refund.sent", "billing.invoice.drafted"],
        ),
        ("from=2026-01-04", vec!["billing", "iam.user.created"]),
        ("user_id=u2&event_type=iam.%23", vec!["iam.user.created"]),
    ];
    for (query, want) in cases {
        let got = types(&app.list(&format!("/v1/events?{query}"), &k).await);
        assert_eq!(got, want, "{query}");
    }
    app.stop().await;
}

async fn filters_on_data_fields(backend: Backend) {
    let Some(app) = seeded(backend).await else {
        return;
    };
    let k = app.admin_key.clone();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        // a number or a string whose text is 1200; not 1200.5
        (
            "amount=1200",
            vec!["billing.invoice.drafted", "billing.invoice.paid"],
        ),
        ("amount=1200.5", vec!["billing.refund.sent"]),
        ("currency=EUR", vec!["billing.invoice.paid"]),
        ("paid=true", vec!["billing.invoice.paid"]),
        ("paid=false", vec!["billing.invoice.drafted"]),
        ("data.customer.tier=gold", vec!["billing.invoice.paid"]),
        ("data.status=settled", vec!["billing.invoice.paid"]),
        ("email=a@b.c&user_id=u2", vec!["iam.user.created"]),
        ("currency=GBP", vec![]),
        ("nothing=here", vec![]),
    ];
    for (query, want) in cases {
        let got = types(&app.list(&format!("/events?{query}"), &k).await);
        assert_eq!(got, want, "{query}");
    }
    app.stop().await;
}

async fn order_limit_and_cursor_paging_visit_every_event_once(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let events: Vec<Value> = (0..25)
        .map(|i| json!({"event_type": "page.item.made", "data": {"i": i}}))
        .collect();
    let r = app
        .post(
            "/v1/events/batch",
            &app.admin_key,
            &json!({"events": events}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    for (order, expected_first) in [("desc", 24), ("asc", 0)] {
        let mut seen = Vec::new();
        let mut next = Some(format!(
            "/v1/events?event_type=page.item.made&limit=10&order={order}"
        ));
        let mut pages = 0;
        while let Some(path) = next.take() {
            let r = app.get(&path, &app.admin_key).await;
            assert_eq!(r.status(), StatusCode::OK);
            next = r.headers().get("link").map(|l| {
                let l = l.to_str().unwrap();
                assert!(l.ends_with("; rel=\"next\""), "{l}");
                l[1..l.find('>').unwrap()].to_string()
            });
            let page: Vec<Value> = r.json().await.unwrap();
            seen.extend(page.iter().map(|e| e["data"]["i"].as_i64().unwrap()));
            pages += 1;
            assert!(pages <= 4, "paging must end");
        }
        assert_eq!(seen.len(), 25, "{order}");
        assert_eq!(seen[0], expected_first, "{order}");
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 25, "no event twice");
    }
    let page = app.list("/v1/events?limit=5", &app.admin_key).await;
    assert_eq!(page.len(), 5);
    let seqs: Vec<i64> = page.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [25, 24, 23, 22, 21], "newest first, gapless seq");
    app.stop().await;
}

/// The seqs of every page of the listing `path`, following its `Link` headers.
async fn seqs_of_all_pages(app: &TestApp, path: &str, key: &str) -> Vec<i64> {
    crate::helpers::all_pages(&app.http, &app.base, path, key)
        .await
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect()
}

/// Type patterns page through every match, for each client's key and for an admin, whether
/// the store merges the matching types' ranges or (past 64 types) sorts one range.
async fn type_patterns_page_through_every_match(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let mut keys = vec![(None, app.admin_key.clone())];
    for client in ["acme", "globex"] {
        keys.push((
            Some(client),
            app.key(client, "events:write events:read").await,
        ));
    }
    let types = [
        "billing",
        "billing.invoice.paid",
        "billing.invoice.sent",
        "billing.refund.paid",
        "billingx.invoice.paid",
        "shop.order.paid",
    ];
    // (client, type) in seq order: the clients interleave, and acme has 70 types of its own.
    let mut stored: Vec<(&str, String)> = Vec::new();
    for i in 0..48 {
        let client = if i % 3 == 0 { "globex" } else { "acme" };
        stored.push((client, types[i * 5 % types.len()].to_string()));
    }
    for i in 0..70 {
        stored.push(("acme", format!("bulk.t{i}.made")));
    }
    for chunk in stored.chunks(20) {
        for client in ["acme", "globex"] {
            let key = &keys.iter().find(|(c, _)| *c == Some(client)).unwrap().1;
            let events: Vec<Value> = chunk
                .iter()
                .filter(|(c, _)| *c == client)
                .map(|(_, t)| json!({"event_type": t}))
                .collect();
            if !events.is_empty() {
                let r = app
                    .post("/v1/events/batch", key, &json!({"events": events}))
                    .await;
                assert_eq!(r.status(), StatusCode::CREATED);
            }
        }
    }
    let all = crate::helpers::all_events(&app.http, &app.base, &app.admin_key).await;
    assert_eq!(all.len(), stored.len());
    for pattern in [
        "billing.%23",
        "billing.*.paid",
        "%23.paid",
        "*.invoice.*",
        "%23",
        "nothing.%23",
        "bulk.%23",
        "%23.made",
        "bulk.t1.*",
    ] {
        let topic = annals::domain::TopicPattern::parse(&pattern.replace("%23", "#")).unwrap();
        for (client, key) in &keys {
            for order in ["asc", "desc"] {
                let mut want: Vec<i64> = all
                    .iter()
                    .filter(|e| client.is_none_or(|c| e["client_id"] == c))
                    .filter(|e| topic.matches(e["event_type"].as_str().unwrap()))
                    .map(|e| e["seq"].as_i64().unwrap())
                    .collect();
                if order == "desc" {
                    want.reverse();
                }
                let path = format!("/v1/events?event_type={pattern}&limit=7&order={order}");
                let got = seqs_of_all_pages(&app, &path, key).await;
                assert_eq!(got, want, "{path} as {client:?}");
            }
        }
    }
    app.stop().await;
}

/// An admin's filtered listings page through every client's matches (PostgreSQL reads them
/// client by client and merges).
async fn admin_filters_page_through_every_client(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    for (n, client) in ["acme", "globex", "initech"].into_iter().enumerate() {
        let key = app.key(client, "events:write").await;
        let events: Vec<Value> = (0..20)
            .map(|i| {
                let event_type = ["shop.order.paid", "shop.order.sent"][(i + n) % 2];
                json!({
                    "event_type": event_type,
                    "user_id": format!("u{}", (i + n) % 4),
                    "source": format!("s{}", i % 3),
                    "correlation_id": format!("c{}", (i * 7 + n) % 5),
                    "occurred_at": format!("2026-01-{:02}T00:00:00Z", 1 + (i * 3 + n) % 28),
                })
            })
            .collect();
        let r = app
            .post("/v1/events/batch", &key, &json!({"events": events}))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let all = crate::helpers::all_events(&app.http, &app.base, &app.admin_key).await;
    assert_eq!(all.len(), 60);
    let field = |e: &Value, name: &str| e[name].as_str().unwrap().to_string();
    type Wanted<'a> = Box<dyn Fn(&Value) -> bool + 'a>;
    let cases: Vec<(&str, Wanted)> = vec![
        ("user_id=u1", Box::new(|e| field(e, "user_id") == "u1")),
        ("source=s2", Box::new(|e| field(e, "source") == "s2")),
        (
            "correlation_id=c3",
            Box::new(|e| field(e, "correlation_id") == "c3"),
        ),
        (
            "event_type=shop.order.sent",
            Box::new(|e| field(e, "event_type") == "shop.order.sent"),
        ),
        (
            "user_id=u2&event_type=shop.%23",
            Box::new(|e| field(e, "user_id") == "u2"),
        ),
        (
            "from=2026-01-10&to=2026-01-20",
            Box::new(|e| ("2026-01-10".."2026-01-20").contains(&&field(e, "occurred_at")[..10])),
        ),
    ];
    for (filter, wanted) in &cases {
        for order in ["asc", "desc"] {
            let mut want: Vec<i64> = all
                .iter()
                .filter(|e| wanted(e))
                .map(|e| e["seq"].as_i64().unwrap())
                .collect();
            if order == "desc" {
                want.reverse();
            }
            assert!(want.len() >= 6, "{filter}: the case spans pages");
            let path = format!("/v1/events?{filter}&limit=4&order={order}");
            let got = seqs_of_all_pages(&app, &path, &app.admin_key).await;
            assert_eq!(got, want, "{path}");
        }
    }
    app.stop().await;
}

async fn get_by_id_and_not_found(backend: Backend) {
    let Some(app) = seeded(backend).await else {
        return;
    };
    let first = &app.list("/v1/events?limit=1", &app.admin_key).await[0];
    let id = first["id"].as_str().unwrap();
    let (status, body) =
        status_json(app.get(&format!("/v1/events/{id}"), &app.admin_key).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body, first);
    let (status, body) = status_json(
        app.get(&format!("/api/v1/events/{id}"), &app.admin_key)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], id);
    for missing in ["01a200bf-bc77-7522-a4a9-c5ec20956460", "not-a-uuid"] {
        let (status, body) = status_json(
            app.get(&format!("/v1/events/{missing}"), &app.admin_key)
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_error(&body, "not_found");
    }
    app.stop().await;
}

async fn bad_query_parameters_are_422_naming_each(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("order=sideways", "order"),
        ("from=last-week", "from"),
        ("from=2026-01-02&to=2026-01-01", "to"),
        ("cursor=forged", "cursor"),
        ("event_type=bad%20type", "event_type"),
        ("user_id=a&user_id=b", "user_id"),
        ("data..x=1", "data..x"),
        ("user_id=", "user_id"),
        ("source=", "source"),
    ] {
        let (status, body) = status_json(
            app.get(&format!("/v1/events?{query}"), &app.admin_key)
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_error(&body, "validation_failed");
        assert_eq!(body["field"], field, "{query}");
    }
    app.stop().await;
}

async fn a_query_past_its_time_budget_is_refused_as_too_broad(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| a.store.query_timeout_ms = 1).await else {
        return;
    };
    let events: Vec<Value> = (0..1000)
        .map(|i| json!({"event_type": "load.row.made", "data": {"i": i, "blob": "x".repeat(200)}}))
        .collect();
    for _ in 0..20 {
        let r = app
            .post(
                "/v1/events/batch",
                &app.admin_key,
                &json!({"events": events}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    // a data filter that matches nothing must scan all 20 000 rows: far past 1 ms
    let (status, body) = status_json(app.get("/v1/events?blob=nope", &app.admin_key).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_error(&body, "query_too_broad");
    app.stop().await;
}

/// `ANNALS_INDEXED_FIELDS`: the indexes exist after start (and a restart keeps them), and
/// filters on those fields return exactly what unindexed filters return.
async fn indexed_data_fields(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |a| {
        a.store.indexed_fields = annals::config::IndexedFields(
            annals::store::indexed::parse_indexed_fields("order_id,customer.tier").unwrap(),
        )
    })
    .await
    else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let other = app.key("other", "events:write,events:read").await;
    for (k, data) in [
        (
            &key,
            json!({"order_id": "o-1", "customer": {"tier": "gold"}}),
        ),
        (&key, json!({"order_id": 42, "customer": {"tier": 1}})),
        (&key, json!({"order_id": "42", "customer": {"tier": true}})),
        (&key, json!({"order_id": 42.5})),
        (&key, json!({"order_id": {"nested": "o-1"}})),
        (&other, json!({"order_id": "o-1"})),
    ] {
        app.record(k, json!({"event_type": "shop.order.placed", "data": data}))
            .await;
    }
    let app = app.restart().await;
    let count = async |q: &str| app.list(&format!("/v1/events?{q}"), &key).await.len();
    assert_eq!(
        count("order_id=o-1").await,
        1,
        "the other client's o-1 is not seen"
    );
    assert_eq!(count("order_id=42").await, 2, "the number and the string");
    assert_eq!(count("order_id=42.5").await, 1);
    assert_eq!(count("order_id=43").await, 0);
    assert_eq!(count("data.customer.tier=gold").await, 1);
    assert_eq!(count("data.customer.tier=1").await, 1, "1 is not true");
    assert_eq!(count("data.customer.tier=true").await, 1);
    assert_eq!(
        app.list("/v1/events?order_id=o-1", &app.admin_key)
            .await
            .len(),
        2
    );

    if backend == Backend::Postgres {
        let client = app.db.postgres_client().await;
        let rows = client
            .query(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'events' \
                 AND indexname LIKE 'events_data_%' ORDER BY indexname",
                &[],
            )
            .await
            .unwrap();
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(
            names,
            ["events_data_customer__tier", "events_data_order_id"]
        );
    }
    app.stop().await;
}

crate::conformance!(
    indexed_data_fields,
    filters_on_envelope_fields,
    filters_on_data_fields,
    order_limit_and_cursor_paging_visit_every_event_once,
    type_patterns_page_through_every_match,
    admin_filters_page_through_every_client,
    get_by_id_and_not_found,
    bad_query_parameters_are_422_naming_each,
    a_query_past_its_time_budget_is_refused_as_too_broad,
);
