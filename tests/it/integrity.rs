//! Tamper evidence on both stores: signed checkpoints, inclusion and consistency proofs checked
//! the way an outside auditor would (with the RFC 6962 checks and the Ed25519 signature), the
//! bad inputs, tenancy, and `annals verify` naming an event changed or deleted behind the
//! server's back.

use std::process::Command;

use annals::integrity::checkpoint::Checkpoint;
use annals::integrity::merkle;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_error, hash, hashes, status_json};

/// A checkpoint as an auditor reads it from the JSON, its signature checked.
fn signed(view: &Value) -> Checkpoint {
    let bytes = |field: &str| BASE64.decode(view[field].as_str().unwrap()).unwrap();
    let checkpoint = Checkpoint {
        origin: view["origin"].as_str().unwrap().to_string(),
        tree_size: view["tree_size"].as_u64().unwrap(),
        root: hash(&view["root_hash"]),
        signed_at: annals::domain::Timestamp::from_micros(
            view["note"]
                .as_str()
                .unwrap()
                .lines()
                .nth(3)
                .unwrap()
                .parse()
                .unwrap(),
        ),
        public_key: bytes("public_key").try_into().unwrap(),
        signature: bytes("signature").try_into().unwrap(),
    };
    assert_eq!(checkpoint.note(), view["note"].as_str().unwrap());
    assert!(checkpoint.signature_holds(), "{view}");
    checkpoint
}

async fn batch(app: &TestApp, key: &str, n: usize, tag: &str) -> Vec<String> {
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({"event_type": "ledger.entry.posted", "user_id": format!("u{i}"),
            "data": {"tag": tag, "i": i, "amount": 1.50, "big": 12345678901234567890123u128}})
        })
        .collect();
    let (status, body) = status_json(
        app.post("/v1/events/batch", key, &json!({"events": events}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["ids"]
        .as_array()
        .expect("batch ids")
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect()
}

async fn proofs_check_out_against_signed_checkpoints(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let acme = app.key("acme", "events:read,events:write").await;
    let other = app.key("other", "events:read,events:write").await;
    let writer = app.key("acme", "events:write").await;

    // An empty store has nothing to sign.
    let (status, body) = app.sign_checkpoint().await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_error(&body, "conflict");
    let (status, body) =
        status_json(app.get("/v1/integrity/checkpoints/latest", &acme).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let acme_ids = batch(&app, &acme, 40, "first").await;
    batch(&app, &other, 7, "first").await;
    let (status, first_view) = app.sign_checkpoint().await;
    assert_eq!(status, StatusCode::CREATED, "{first_view}");
    let first = signed(&first_view);
    assert_eq!(first.tree_size, 47);
    // Nothing new: the same checkpoint, not a second one.
    let (status, again) = app.sign_checkpoint().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, first_view);

    // An event just written gets a proof at once (the tree takes it in on demand).
    let late = app
        .record(
            &acme,
            json!({"event_type": "ledger.entry.posted", "data": {"late": true}}),
        )
        .await;
    let (status, proof) =
        status_json(app.get(&format!("/v1/events/{late}/proof"), &acme).await).await;
    assert_eq!(status, StatusCode::OK, "{proof}");
    assert_eq!(proof["tree_size"], 48, "{proof}");
    assert_eq!(proof["checkpoint"], Value::Null);

    let more = batch(&app, &acme, 300, "second").await;
    let (status, second_view) = app.sign_checkpoint().await;
    assert_eq!(status, StatusCode::CREATED, "{second_view}");
    let second = signed(&second_view);
    assert_eq!(second.tree_size, 348);
    assert_eq!(second.public_key, first.public_key);
    let latest = app.list("/v1/integrity/checkpoints", &acme).await;
    assert_eq!(latest, vec![second_view.clone(), first_view.clone()]);
    let (_, newest) = status_json(app.get("/v1/integrity/checkpoints/latest", &other).await).await;
    assert_eq!(newest, second_view);
    let older = app
        .list("/v1/integrity/checkpoints?before=348&limit=5", &acme)
        .await;
    assert_eq!(older, vec![first_view.clone()]);

    // Each proof, checked as an auditor would: the leaf from the canonical event, the path to
    // the signed head.
    for id in [&acme_ids[0], &acme_ids[39], &more[150], &more[299], &late] {
        for size in [None, Some(348u64)] {
            let path = match size {
                Some(n) => format!("/v1/events/{id}/proof?tree_size={n}"),
                None => format!("/v1/events/{id}/proof"),
            };
            let (status, proof) = status_json(app.get(&path, &acme).await).await;
            assert_eq!(status, StatusCode::OK, "{proof}");
            assert_eq!(proof["id"], id.as_str());
            assert_eq!(proof["tree_size"], 348);
            assert_eq!(proof["checkpoint"], second_view);
            let canonical = proof["canonical_event"].as_str().unwrap();
            let leaf = merkle::leaf_hash(canonical.as_bytes());
            assert_eq!(leaf, hash(&proof["leaf_hash"]));
            assert_eq!(proof["leaf_matches_event"], true);
            let event: Value = serde_json::from_str(canonical).unwrap();
            assert_eq!(event["id"], id.as_str());
            assert_eq!(event["seq"], proof["seq"]);
            let index = proof["leaf_index"].as_u64().unwrap();
            assert!(merkle::verify_inclusion(
                &leaf,
                index,
                second.tree_size,
                &hashes(&proof["audit_path"]),
                &second.root
            ));
        }
    }
    // The canonical form spells numbers one way, whatever the store keeps.
    let (_, proof) = status_json(
        app.get(&format!("/v1/events/{}/proof", acme_ids[3]), &acme)
            .await,
    )
    .await;
    let canonical = proof["canonical_event"].as_str().unwrap();
    assert!(
        canonical.contains(r#""amount":1.5,"big":12345678901234567890123,"i":3,"tag":"first""#),
        "{canonical}"
    );
    // A proof against the first checkpoint, for an event it holds.
    let (_, proof) = status_json(
        app.get(
            &format!("/v1/events/{}/proof?tree_size=47", acme_ids[5]),
            &acme,
        )
        .await,
    )
    .await;
    assert_eq!(proof["checkpoint"], first_view);
    assert!(merkle::verify_inclusion(
        &hash(&proof["leaf_hash"]),
        proof["leaf_index"].as_u64().unwrap(),
        47,
        &hashes(&proof["audit_path"]),
        &first.root
    ));

    // The second tree extends the first.
    let (status, c) = status_json(
        app.get("/v1/integrity/consistency?first=47&second=348", &other)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["first_checkpoint"], first_view);
    assert_eq!(c["second_checkpoint"], second_view);
    assert!(merkle::verify_consistency(
        47,
        348,
        &first.root,
        &second.root,
        &hashes(&c["proof"])
    ));
    // `second` defaults to the newest checkpoint.
    let (_, c2) = status_json(app.get("/v1/integrity/consistency?first=47", &acme).await).await;
    assert_eq!(c2, c);
    let (_, tree) = status_json(app.get("/v1/integrity/tree", &acme).await).await;
    assert_eq!(tree["tree_size"], 348, "{tree}");
    assert_eq!(hash(&tree["root_hash"]), second.root);
    assert_eq!(tree["first_seq"], 1);

    // Tenancy: another client's event has no proof (it does not exist for them).
    let (status, body) = status_json(
        app.get(&format!("/v1/events/{}/proof", acme_ids[0]), &other)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "not_found");
    // Scopes: reading needs events:read, signing needs admin; a key is needed at all.
    let (status, _) = status_json(app.get("/v1/integrity/tree", &writer).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let r = app
        .http
        .post(app.url("/v1/integrity/checkpoints"))
        .header("x-api-key", &acme)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app
        .http
        .get(app.url("/v1/integrity/tree"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Bad inputs: each a 422 naming its parameter.
    let id = &acme_ids[10];
    for (path, field) in [
        (format!("/v1/events/{id}/proof?tree_size=0"), "tree_size"),
        (format!("/v1/events/{id}/proof?tree_size=5"), "tree_size"),
        (format!("/v1/events/{id}/proof?tree_size=349"), "tree_size"),
        (format!("/v1/events/{id}/proof?tree_size=abc"), "tree_size"),
        (format!("/v1/events/{id}/proof?tree_size=-1"), "tree_size"),
        (format!("/v1/events/{id}/proof?size=10"), "size"),
        (String::from("/v1/integrity/consistency"), "first"),
        (String::from("/v1/integrity/consistency?first=0"), "first"),
        (
            String::from("/v1/integrity/consistency?first=9999"),
            "first",
        ),
        (
            String::from("/v1/integrity/consistency?first=20&second=10"),
            "first",
        ),
        (
            String::from("/v1/integrity/consistency?first=2&second=x"),
            "second",
        ),
        (
            String::from("/v1/integrity/consistency?first=2&first=3"),
            "first",
        ),
        (String::from("/v1/integrity/checkpoints?limit=0"), "limit"),
        (String::from("/v1/integrity/checkpoints?limit=101"), "limit"),
        (String::from("/v1/integrity/checkpoints?before=x"), "before"),
    ] {
        let (status, body) = status_json(app.get(&path, &acme).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
        assert_eq!(body["field"], field, "{path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, _) = status_json(app.get("/v1/events/not-an-id/proof", &acme).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // After a restart the tree goes on from where it was, and proofs still hold.
    let app = app.restart().await;
    batch(&app, &acme, 5, "third").await;
    let (status, third_view) = app.sign_checkpoint().await;
    assert_eq!(status, StatusCode::CREATED, "{third_view}");
    let third = signed(&third_view);
    // Five events, and the security events the refusals above became (`annals.security.*`).
    assert!(third.tree_size >= 353, "{third_view}");
    let (_, c) = status_json(app.get("/v1/integrity/consistency?first=348", &acme).await).await;
    assert_eq!(c["second"], third.tree_size);
    assert!(merkle::verify_consistency(
        348,
        third.tree_size,
        &second.root,
        &third.root,
        &hashes(&c["proof"])
    ));
    app.stop().await;
}

/// Runs `annals verify` on the test's database with the server's signing key.
fn verify_cli(app: &TestApp) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_annals"))
        .arg("verify")
        .env("ANNALS_DATABASE_URL", &app.db.url)
        .env(
            "ANNALS_SIGNING_KEY",
            app.args.integrity.signing_key.as_deref().unwrap(),
        )
        .env_remove("ANNALS_API_KEY")
        .env_remove("ANNALS_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("annals runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs SQL on the test's database behind the server's back.
async fn tamper(app: &TestApp, sql: &str) {
    if app.db.url.starts_with("postgres") {
        let client = app.db.postgres_client().await;
        client.batch_execute(sql).await.unwrap();
    } else {
        let conn = rusqlite::Connection::open(&app.db.url).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        conn.execute_batch(sql).unwrap();
    }
}

/// Changes a byte of the first stored leaf hash.
async fn flip_first_leaf(app: &TestApp) {
    const READ: &str = "SELECT hashes FROM merkle_tiles WHERE level = 0 AND idx = 0";
    if app.db.url.starts_with("postgres") {
        let client = app.db.postgres_client().await;
        let mut tile: Vec<u8> = client.query_one(READ, &[]).await.unwrap().get(0);
        tile[0] ^= 1;
        client
            .execute(
                "UPDATE merkle_tiles SET hashes = $1 WHERE level = 0 AND idx = 0",
                &[&tile],
            )
            .await
            .unwrap();
    } else {
        let conn = rusqlite::Connection::open(&app.db.url).unwrap();
        let mut tile: Vec<u8> = conn.query_row(READ, [], |r| r.get(0)).unwrap();
        tile[0] ^= 1;
        conn.execute(
            "UPDATE merkle_tiles SET hashes = ?1 WHERE level = 0 AND idx = 0",
            [&tile],
        )
        .unwrap();
    }
}

async fn verify_names_what_was_changed_behind_the_servers_back(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let acme = app.key("acme", "events:read,events:write").await;
    batch(&app, &acme, 600, "a").await;
    let (status, _) = app.sign_checkpoint().await;
    assert_eq!(status, StatusCode::CREATED);
    batch(&app, &acme, 30, "b").await;
    let (status, _) = app.sign_checkpoint().await;
    assert_eq!(status, StatusCode::CREATED);
    let public_key = annals::integrity::checkpoint::Signer::from_text(
        app.args.integrity.signing_key.as_deref().unwrap(),
        "",
    )
    .unwrap()
    .public_key();

    let report = annals::integrity::verify::verify(app.store.as_ref(), Some(public_key))
        .await
        .unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.events_checked, 630);
    assert_eq!(report.checkpoints, 2);
    let app = app.stop_keep_db().await;
    let (ok, text) = verify_cli(&app);
    assert!(ok, "{text}");
    assert!(text.contains("630 events checked"), "{text}");
    assert!(text.contains("OK"), "{text}");

    // Same meaning, another spelling (as jsonb would write it): not a change.
    let is_pg = app.db.url.starts_with("postgres");
    let respelled = if is_pg {
        "UPDATE events SET data = '{\"i\": 7, \"tag\": \"a\", \"amount\": 1.500, \"big\": 12345678901234567890123}'::jsonb WHERE seq = 8"
    } else {
        "UPDATE events SET data = '{\"i\": 7, \"tag\": \"a\", \"amount\": 15e-1, \"big\": 12345678901234567890123}' WHERE seq = 8"
    };
    tamper(&app, respelled).await;
    let (ok, text) = verify_cli(&app);
    assert!(ok, "{text}");

    // A changed amount, and a deleted event: both named, in seq order.
    let changed = if is_pg {
        "UPDATE events SET data = jsonb_set(data, '{amount}', '1.51') WHERE seq = 300"
    } else {
        "UPDATE events SET data = json_set(data, '$.amount', 1.51) WHERE seq = 300"
    };
    tamper(&app, changed).await;
    tamper(&app, "DELETE FROM events WHERE seq = 500").await;
    let (ok, text) = verify_cli(&app);
    assert!(!ok, "{text}");
    let first = text.find("event seq 300").expect(&text);
    let second = text.find("event seq 500 is missing").expect(&text);
    assert!(first < second, "{text}");
    assert!(text.contains("changed after it was added"), "{text}");

    // A leaf hash changed to match the changed event: the node above it no longer matches,
    // and the signed head no longer does either.
    flip_first_leaf(&app).await;
    let (ok, text) = verify_cli(&app);
    assert!(!ok, "{text}");
    assert!(text.contains("event seq 1 "), "{text}");
    assert!(text.contains("level 8 index 0 differs"), "{text}");
    assert!(
        text.contains("no longer has the head its checkpoint signed"),
        "{text}"
    );

    // A checkpoint signed with another key is not trusted.
    let (ok, text) = {
        let out = Command::new(env!("CARGO_BIN_EXE_annals"))
            .arg("verify")
            .env("ANNALS_DATABASE_URL", &app.db.url)
            .env("ANNALS_SIGNING_KEY", hex::encode([9u8; 32]))
            .env_remove("ANNALS_LOG")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(!ok);
    assert!(text.contains("not signed by the trusted key"), "{text}");

    // An auditor pins the public key instead (no signing key at hand).
    let pinned = |key: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_annals"))
            .args(["verify", "--public-key", key])
            .env("ANNALS_DATABASE_URL", &app.db.url)
            .env_remove("ANNALS_SIGNING_KEY")
            .env_remove("ANNALS_LOG")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let real = BASE64.encode(public_key);
    let text = pinned(&real);
    assert!(text.contains("event seq 300"), "{text}");
    assert!(!text.contains("not signed by the trusted key"), "{text}");
    let other = annals::integrity::checkpoint::Signer::from_seed([9; 32], "").public_key();
    let text = pinned(&hex::encode(other));
    assert!(text.contains("not signed by the trusted key"), "{text}");
    let text = pinned("not-a-key");
    assert!(text.contains("must be 32 bytes"), "{text}");
}

async fn retention_keeps_the_tree_and_its_proofs(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let acme = app.key("acme", "events:read,events:write").await;
    let old = batch(&app, &acme, 20, "old").await;
    let (status, first_view) = app.sign_checkpoint().await;
    assert_eq!(status, StatusCode::CREATED);
    let first = signed(&first_view);
    // Retention (as the job runs it) removes every event stored so far.
    let removed = annals::jobs::retention::purge_events(
        app.store.as_ref(),
        annals::domain::Timestamp::now(),
        7,
    )
    .await
    .unwrap();
    assert_eq!(removed, 20);
    let kept = batch(&app, &acme, 10, "kept").await;
    let (status, second_view) = app.sign_checkpoint().await;
    assert_eq!(status, StatusCode::CREATED, "{second_view}");
    let second = signed(&second_view);
    assert_eq!(second.tree_size, 30);
    // A kept event's proof reaches the head over the removed ones' leaves.
    let (status, proof) = status_json(
        app.get(&format!("/v1/events/{}/proof", kept[4]), &acme)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{proof}");
    assert_eq!(proof["leaf_index"], 24);
    assert!(merkle::verify_inclusion(
        &hash(&proof["leaf_hash"]),
        24,
        30,
        &hashes(&proof["audit_path"]),
        &second.root
    ));
    let (_, c) = status_json(app.get("/v1/integrity/consistency?first=20", &acme).await).await;
    assert!(merkle::verify_consistency(
        20,
        30,
        &first.root,
        &second.root,
        &hashes(&c["proof"])
    ));
    // A removed event is gone for proofs as for reads.
    let (status, _) = status_json(
        app.get(&format!("/v1/events/{}/proof", old[0]), &acme)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let report = annals::integrity::verify::verify(app.store.as_ref(), None)
        .await
        .unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.removed_by_retention, 20);
    assert_eq!(report.events_checked, 10);
    app.stop().await;
}

crate::conformance!(
    proofs_check_out_against_signed_checkpoints,
    verify_names_what_was_changed_behind_the_servers_back,
    retention_keeps_the_tree_and_its_proofs
);
