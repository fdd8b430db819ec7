//! `GET /v1/events/export`: every matching event streamed as NDJSON or CSV, oldest first,
//! across many internal pages, in the caller's scope, with JSON errors for bad requests.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::conformance;
use crate::helpers::{Backend, TestApp, assert_error, status_json};

async fn export_streams_everything_in_scope(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let other = app.key("other", "events:write,events:read").await;
    // 2 500 events: the export crosses internal pages of 1 000.
    for chunk in 0..5 {
        let events: Vec<Value> = (0..500)
            .map(|i| {
                let n = chunk * 500 + i;
                json!({"event_type": if n % 2 == 0 { "shop.order.placed" } else { "shop.order.paid" },
                       "user_id": format!("u{}", n % 7), "data": {"n": n}})
            })
            .collect();
        let r = app
            .post("/v1/events/batch", &key, &json!({"events": events}))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    app.record(
        &other,
        json!({"event_type": "secret.thing.done", "data": {"n": -1}}),
    )
    .await;
    // A value CSV must quote.
    app.record(
        &key,
        json!({"event_type": "shop.note.added", "user_id": "say \"hi\", bye",
                            "source": "=HYPERLINK(\"http://x\")",
                            "data": {"text": "two\nlines"}}),
    )
    .await;

    let r = app.get("/v1/events/export", &key).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        2501,
        "every event of the caller, none of the other client's"
    );
    let seqs: Vec<i64> = lines.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first, no repeats"
    );
    assert_eq!(lines[0]["data"]["n"], 0);
    assert!(!text.contains("secret.thing.done"));

    // Compressed, the stream still ends cleanly with every line.
    let r = app
        .http
        .get(app.url("/v1/events/export"))
        .header("x-api-key", &key)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let compressed = r.bytes().await.unwrap();
    let mut inflated = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&compressed[..]),
        &mut inflated,
    )
    .unwrap();
    assert_eq!(inflated, text, "the same export, compressed");

    let r = app
        .get(
            "/v1/events/export?event_type=shop.order.paid&user_id=u3",
            &key,
        )
        .await;
    let filtered = r.text().await.unwrap();
    let expected = (0..2500).filter(|n| n % 2 == 1 && n % 7 == 3).count();
    assert_eq!(filtered.lines().count(), expected);
    let r = app.get("/v1/events/export?order=desc&n=2499", &key).await;
    assert_eq!(r.text().await.unwrap().lines().count(), 1);

    let r = app
        .get(
            "/v1/events/export?format=csv&event_type=shop.note.added",
            &key,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = r.text().await.unwrap();
    assert!(
        csv.starts_with("id,seq,client_id,event_type,user_id,"),
        "{csv}"
    );
    assert!(csv.contains(",\"say \"\"hi\"\", bye\","), "{csv}");
    // A formula a spreadsheet would run is kept as text.
    assert!(csv.contains(",\"'=HYPERLINK(\"\"http://x\"\")\","), "{csv}");
    // The data column is the stored JSON text (PostgreSQL's jsonb puts a space after ':').
    assert!(
        csv.contains(",\"{\"\"text\"\":") && csv.contains("\"\"two\\nlines\"\"}\","),
        "{csv}"
    );
    let r = app.get("/v1/events/export?format=csv", &key).await;
    let rows = r.text().await.unwrap().matches("\r\n").count();
    assert_eq!(rows, 2502, "header + every event");

    // The admin sees every client, or one by name; a client can't name another.
    let r = app.get("/v1/events/export", &app.admin_key).await;
    assert_eq!(r.text().await.unwrap().lines().count(), 2502);
    let r = app
        .get("/v1/events/export?client_id=other", &app.admin_key)
        .await;
    assert_eq!(r.text().await.unwrap().lines().count(), 1);
    let r = app.get("/v1/events/export?client_id=other", &key).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    for (query, field) in [
        ("format=xml", "format"),
        ("limit=10", "limit"),
        ("cursor=abc", "cursor"),
        ("from=yesterday", "from"),
    ] {
        let (status, body) =
            status_json(app.get(&format!("/v1/events/export?{query}"), &key).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_error(&body, "validation_failed");
        assert_eq!(body["field"], field);
    }
    let write_only = app.key("acme", "events:write").await;
    assert_eq!(
        app.get("/v1/events/export", &write_only).await.status(),
        StatusCode::FORBIDDEN
    );
    app.stop().await;
}

conformance!(export_streams_everything_in_scope);
