//! Crash safety: SIGKILL under concurrent load, restart, and every acknowledged event is there.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{Backend, TestDatabase, all_events};
use serde_json::{Value, json};

const KEY: &str = "crash-test-static-key";

/// Starts `annals serve` on a free port and returns it with its address once it listens.
fn start(db: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("ANNALS_DATABASE_URL", db)
        .env("ANNALS_API_KEY", KEY)
        // In memory: on PostgreSQL the key file would be made in the working directory.
        .env("ANNALS_SIGNING_KEY", "11".repeat(32))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("annals starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("server printed its address").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // keep draining stderr so the child never blocks on a full pipe
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://{addr}"))
}

async fn kill_under_load_and_check(db: &str) {
    let (mut child, base) = start(db);
    let http = crate::helpers::http();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (http, base, acked) = (http.clone(), base.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let single = i % 4 != 0;
                let r = if single {
                    http.post(format!("{base}/v1/events"))
                        .header("x-api-key", KEY)
                        .json(&json!({"event_type": "crash.test.sent", "data": {"w": worker, "i": i}}))
                        .send()
                        .await
                } else {
                    let events: Vec<Value> = (0..20)
                        .map(|j| json!({"event_type": "crash.batch.sent", "data": {"w": worker, "i": i, "j": j}}))
                        .collect();
                    http.post(format!("{base}/v1/events/batch"))
                        .header("x-api-key", KEY)
                        .json(&json!({"events": events}))
                        .send()
                        .await
                };
                let Ok(r) = r else { break };
                if r.status() != StatusCode::CREATED {
                    break;
                }
                let Ok(body) = r.json::<Value>().await else { break };
                let mut acked = acked.lock().unwrap();
                if single {
                    acked.push(body["id"].as_str().unwrap().to_string());
                } else {
                    acked.extend(body["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "the load was real: {} acknowledged",
        acked.len()
    );

    let (mut child, base) = start(db);
    let stored = all_events(&http, &base, KEY).await;
    let ids: HashSet<&str> = stored.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !ids.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    let seqs: Vec<i64> = stored.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as i64).collect::<Vec<_>>(),
        "seq is gapless after the crash"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn sigkill_under_load_loses_no_acknowledged_event(backend: Backend) {
    let Some(db) = TestDatabase::create(backend).await else {
        return;
    };
    kill_under_load_and_check(&db.url).await;
    // and again on the same database, after recovery
    kill_under_load_and_check(&db.url).await;
}

async fn sigterm_drains_and_exits_cleanly(backend: Backend) {
    let Some(database) = TestDatabase::create(backend).await else {
        return;
    };
    let db = database.url.clone();
    let (child, base) = start(&db);
    let http = crate::helpers::http();
    for i in 0..50 {
        let r = http
            .post(format!("{base}/v1/events"))
            .header("x-api-key", KEY)
            .json(&json!({"event_type": "term.test.sent", "event_id": format!("t{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success(), "{status}");
    let (mut child, base) = start(&db);
    assert_eq!(all_events(&http, &base, KEY).await.len(), 50);
    child.kill().unwrap();
    child.wait().unwrap();
}

crate::conformance!(
    sigkill_under_load_loses_no_acknowledged_event,
    sigterm_drains_and_exits_cleanly
);
