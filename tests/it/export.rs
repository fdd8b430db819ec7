//! `GET /v1/events/export`: every matching event streamed as NDJSON or CSV, oldest first,
//! across many internal pages, in the caller's scope, with JSON errors for bad requests.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::conformance;
use crate::helpers::{Backend, TestApp, assert_error, status_json};

/// Records `count` events made by `event(n)`, in batches of 500.
async fn record_many(app: &TestApp, key: &str, count: usize, event: impl Fn(usize) -> Value) {
    for first in (0..count).step_by(500) {
        let events: Vec<Value> = (first..count.min(first + 500)).map(&event).collect();
        let r = app
            .post("/v1/events/batch", key, &json!({"events": events}))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
}

async fn export_streams_everything_in_scope(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let other = app.key("other", "events:write,events:read").await;
    // 2 500 events: the export crosses internal pages of 1 000.
    record_many(&app, &key, 2500, |n| {
        json!({"event_type": if n % 2 == 0 { "shop.order.placed" } else { "shop.order.paid" },
               "user_id": format!("u{}", n % 7), "data": {"n": n}})
    })
    .await;
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

/// `annals export`, run beside the server on its store, writes what the HTTP export sends,
/// byte for byte; without `client_id` it takes every client's events (it reads the store as
/// its operator); its filters are refused as the API refuses them.
async fn the_cli_export_writes_what_the_http_export_sends(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let other = app.key("other", "events:write,events:read").await;
    record_many(&app, &key, 1500, |n| {
        json!({"event_type": if n % 3 == 0 { "shop.order.placed" } else { "shop.order.paid" },
               "user_id": format!("u{}", n % 7), "source": "=cmd", "data": {"n": n, "note": "a,\"b\""}})
    })
    .await;
    app.record(&other, json!({"event_type": "shop.order.placed"}))
        .await;
    let annals = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_annals"))
            .arg("export")
            .args(args)
            .env("ANNALS_DATABASE_URL", &app.db.url)
            .env_remove("ANNALS_API_KEY")
            .env_remove("ANNALS_LOG")
            .env_remove("RUST_LOG")
            .output()
    };

    let http = app
        .get("/v1/events/export?event_type=shop.%23", &key)
        .await
        .bytes()
        .await
        .unwrap();
    let out = annals(&["client_id=acme", "event_type=shop.#"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, http.to_vec(), "the same NDJSON");
    assert_eq!(
        http.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        1500,
        "across pages"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Exported 1500 events."));

    let http = app
        .get("/v1/events/export?format=csv&order=desc&user_id=u3", &key)
        .await
        .bytes()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.csv");
    let out = annals(&[
        "format=csv",
        "order=desc",
        "user_id=u3",
        "client_id=acme",
        "--output",
        file.to_str().unwrap(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&file).unwrap(), http.to_vec(), "the same CSV");

    // The operator's view: every client.
    let out = annals(&["event_type=shop.order.placed"]).await.unwrap();
    let clients: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["client_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(clients.len(), 501);
    assert_eq!(clients.last().unwrap(), "other");

    for (args, said) in [
        (
            &["limit=5"][..],
            "limit: an export streams every matching event",
        ),
        (&["format=xml"][..], "format: must be ndjson or csv"),
        (&["nonsense"][..], "the filter 'nonsense' is not name=value"),
    ] {
        let out = annals(args).await.unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(said), "{args:?}: {err}");
    }
    app.stop().await;
}

conformance!(
    export_streams_everything_in_scope,
    the_cli_export_writes_what_the_http_export_sends,
);
