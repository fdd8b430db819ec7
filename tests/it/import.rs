//! `annals import`: an NDJSON file's events into a running server through its batch API, run as
//! a user runs it; a refused line is named, nothing after it is stored, and `--skip` resumes.

use std::process::Output;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::conformance;
use crate::helpers::{Backend, TestApp, all_events};

/// Runs `annals import` against `app` with `key`, the input file holding `lines`.
async fn import(app: &TestApp, key: &str, lines: &[String], extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_annals"))
        .arg("import")
        .arg(&file)
        .args(["--url", &app.base, "--key", key])
        .args(extra)
        .env_remove("ANNALS_API_KEY")
        .env_remove("ANNALS_LOG")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("annals runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The import succeeded and its report holds `said`.
fn succeeded_saying(out: &Output, said: &str) {
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(said), "{}", text(&out.stdout));
}

fn line(n: u32) -> String {
    json!({"event_type": "billing.invoice.paid", "event_id": format!("inv-{n}"), "user_id": "u1",
           "occurred_at": "2024-05-01T10:00:00Z", "data": {"n": n, "card_number": "4242"}})
    .to_string()
}

async fn imports_in_batches_and_again_as_duplicates(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let mut lines: Vec<String> = (1..=5).map(line).collect();
    lines.insert(2, String::new()); // a blank line is skipped
    let out = import(&app, &key, &lines, &["--batch", "2"]).await;
    succeeded_saying(
        &out,
        "5 events stored (5 new, 0 already recorded), through line 6",
    );
    let stored = all_events(&app.http, &app.base, &key).await;
    let ids: Vec<&str> = stored
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["inv-1", "inv-2", "inv-3", "inv-4", "inv-5"]);
    assert_eq!(stored[0]["client_id"], "acme");
    assert_eq!(stored[0]["occurred_at"], "2024-05-01T10:00:00Z");
    assert_eq!(
        stored[0]["data"]["card_number"], "***",
        "the server's masking applies"
    );

    // Run again, from standard input: every line is already recorded, nothing is stored twice.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["import", "-", "--url", &app.base])
        .env("ANNALS_API_KEY", &key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("annals runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all((lines.join("\n") + "\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    succeeded_saying(&out, "(0 new, 5 already recorded)");
    assert_eq!(all_events(&app.http, &app.base, &key).await.len(), 5);
    app.stop().await;
}

async fn a_refused_line_stops_the_import_where_skip_resumes_it(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let mut lines: Vec<String> = (1..=6).map(line).collect();
    lines[3] = json!({"event_id": "inv-4", "data": {"n": 4}}).to_string();
    let out = import(&app, &key, &lines, &["--batch", "2"]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("line 4: event_type: is required"),
        "the refused line by its number: {err}"
    );
    assert!(err.contains("2 events stored"), "{err}");
    assert!(err.contains("--skip 2"), "{err}");
    let stored = all_events(&app.http, &app.base, &key).await;
    assert_eq!(
        stored.len(),
        2,
        "the batch holding the bad line stored nothing"
    );

    // The line fixed, the import resumes after the stored lines.
    lines[3] = line(4);
    let out = import(&app, &key, &lines, &["--batch", "2", "--skip", "2"]).await;
    succeeded_saying(&out, "4 events stored (4 new");
    assert_eq!(all_events(&app.http, &app.base, &key).await.len(), 6);

    // A line that is no JSON is refused before anything is sent.
    let out = import(
        &app,
        &key,
        &[line(7), String::from("{\"event_type\": ")],
        &[],
    )
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("line 2: "), "{err}");
    assert!(err.contains("0 events stored"), "{err}");
    let out = import(&app, &key, &[String::from("[1, 2]")], &[]).await;
    assert!(text(&out.stderr).contains("line 1: an event must be a JSON object"));

    // A key that may not write is told so, and nothing is stored.
    let reader = app.key("acme", "events:read").await;
    let out = import(&app, &reader, &[line(8)], &[]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("403"), "{}", text(&out.stderr));
    let stored: Vec<Value> = all_events(&app.http, &app.base, &key).await;
    assert_eq!(stored.len(), 6);
    app.stop().await;
}

conformance!(
    imports_in_batches_and_again_as_duplicates,
    a_refused_line_stops_the_import_where_skip_resumes_it,
);
