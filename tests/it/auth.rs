//! Keys, scopes and tenant isolation on every read path.

use annals::domain::access::{KeySelector, LastAdmin};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, TestApp, assert_error, status_json};

async fn missing_malformed_unknown_and_wrong_secret_keys_are_401(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let real = app.key("acme", "events:write,events:read").await;
    let wrong_secret = format!("{}x", &real[..real.len() - 1]);
    let body = json!({"event_type": "a"});
    let r = app
        .http
        .post(app.url("/v1/events"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, json) = status_json(r).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&json, "unauthorized");
    for bad in [
        "",
        "garbage",
        "ank_0123456789abcdef_nope",
        wrong_secret.as_str(),
    ] {
        let (status, json) = status_json(app.post("/v1/events", bad, &body).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_error(&json, "unauthorized");
    }
    // Bearer works as well as X-API-Key
    let r = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(&real)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    app.stop().await;
}

async fn disabled_deleted_and_expired_keys_stop_working_at_once(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:read").await;
    assert_eq!(app.get("/v1/events", &key).await.status(), StatusCode::OK);
    let key_id = key[4..20].to_string();

    let toggled = app
        .keys
        .toggle(KeySelector::KeyId(key_id.clone()))
        .await
        .unwrap();
    assert!(!toggled[0].is_active);
    let (status, body) = status_json(app.get("/v1/events", &key).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["message"].as_str().unwrap().contains("disabled"));

    app.keys
        .toggle(KeySelector::KeyId(key_id.clone()))
        .await
        .unwrap();
    assert_eq!(app.get("/v1/events", &key).await.status(), StatusCode::OK);

    app.keys
        .delete(KeySelector::KeyId(key_id), LastAdmin::MayGo)
        .await
        .unwrap();
    assert_eq!(
        app.get("/v1/events", &key).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let expired = app
        .keys
        .create(annals::auth::NewKeyRequest {
            client_id: annals::domain::ClientId::parse("acme").unwrap(),
            name: "old".into(),
            scopes: annals::domain::access::Scopes::parse_list("events:read").unwrap(),
            rate_limit: None,
            expires_at: Some(annals::domain::Timestamp::from_micros(1)),
        })
        .await
        .unwrap();
    let (status, body) = status_json(app.get("/v1/events", &expired.key).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["message"].as_str().unwrap().contains("expired"));
    app.stop().await;
}

async fn scopes_are_enforced_with_403(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let writer = app.key("acme", "events:write").await;
    let reader = app.key("acme", "events:read").await;
    let (status, body) = status_json(app.get("/v1/events", &writer).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error(&body, "forbidden");
    let (status, _) = status_json(
        app.post("/v1/events", &reader, &json!({"event_type": "a"}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = status_json(
        app.post(
            "/v1/events/batch",
            &reader,
            &json!({"events": [{"event_type": "a"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(app.list("/v1/events", &app.admin_key).await.is_empty());
    app.stop().await;
}

async fn clients_never_see_each_other(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let a = app.key("client-a", "events:write,events:read").await;
    let b = app.key("client-b", "events:write,events:read").await;
    let a_id = app.record(&a, json!({"event_type": "x.y.made", "user_id": "shared-user", "event_id": "same", "data": {"k": 1}})).await;
    let b_id = app.record(&b, json!({"event_type": "x.y.made", "user_id": "shared-user", "event_id": "same", "data": {"k": 2}})).await;
    assert_ne!(a_id, b_id, "idempotency keys are per client");

    for path in [
        "/v1/events",
        "/events",
        "/api/v1/events",
        "/v1/events?user_id=shared-user",
        "/v1/events?k=2",
        "/v1/events?event_type=x.%23",
    ] {
        let seen = app.list(path, &a).await;
        assert!(seen.iter().all(|e| e["client_id"] == "client-a"), "{path}");
        assert_eq!(
            seen.len(),
            if path.contains("k=2") { 0 } else { 1 },
            "{path}"
        );
    }
    // by id: the other client's event does not exist for you
    let (status, _) = status_json(app.get(&format!("/v1/events/{b_id}"), &a).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = status_json(app.get(&format!("/v1/events/{a_id}"), &a).await).await;
    assert_eq!(status, StatusCode::OK);
    // naming another client is refused, naming your own is fine
    let (status, body) = status_json(app.get("/v1/events?client_id=client-b", &a).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["field"], "client_id");
    assert_eq!(app.list("/v1/events?client_id=client-a", &a).await.len(), 1);
    // writing as another client is refused, single and batch
    let (status, _) = status_json(
        app.post(
            "/v1/events",
            &a,
            &json!({"event_type": "x", "client_id": "client-b"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = status_json(
        app.post(
            "/v1/events/batch",
            &a,
            &json!({"events": [{"event_type": "x", "client_id": "client-b"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.list("/v1/events?client_id=client-b", &app.admin_key)
            .await
            .len(),
        1
    );
    app.stop().await;
}

async fn admin_sees_all_and_may_write_for_a_client(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let a = app.key("client-a", "events:write,events:read").await;
    app.record(&a, json!({"event_type": "x"})).await;
    app.record(
        &app.admin_key,
        json!({"event_type": "x", "client_id": "client-a", "event_id": "import-1"}),
    )
    .await;
    app.record(&app.admin_key, json!({"event_type": "x"})).await;
    assert_eq!(app.list("/v1/events", &app.admin_key).await.len(), 3);
    assert_eq!(
        app.list("/v1/events?client_id=client-a", &app.admin_key)
            .await
            .len(),
        2
    );
    assert_eq!(
        app.list("/v1/events", &a).await.len(),
        2,
        "the import belongs to client-a"
    );
    app.stop().await;
}

async fn key_admin_api_creates_lists_updates_and_deletes(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let admin = app.admin_key.clone();
    let body = json!({"client_id": "acme", "name": "Acme writer", "scopes": ["events:write", "events:read"], "rate_limit": 100});
    let (status, created) = status_json(app.post("/v1/keys", &admin, &body).await).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let key_id = created["key_id"].as_str().unwrap().to_string();
    assert!(key.starts_with("ank_"));
    assert_eq!(created["client_id"], "acme");
    assert_eq!(created["rate_limit"], 100);
    assert!(created.get("secret_hash").is_none());
    app.record(&key, json!({"event_type": "acme.thing.done"}))
        .await;

    let r = app.get("/v1/keys", &admin).await;
    let text = r.text().await.unwrap();
    assert!(text.contains(&key_id));
    assert!(!text.contains(&key[21..]), "the secret is never listed");
    assert!(!text.contains("secret_hash"));
    let (_, listed) = status_json(app.get("/v1/keys?client_id=acme", &admin).await).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);

    let patch = |body: serde_json::Value, id: String| {
        let admin = admin.clone();
        let app = &app;
        async move { status_json(app.patch(&format!("/v1/keys/{id}"), &admin, &body).await).await }
    };
    let (status, updated) = patch(
        json!({"name": "renamed", "scopes": "events:read", "rate_limit": null}),
        key_id.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["name"], "renamed");
    assert_eq!(updated["scopes"], json!(["events:read"]));
    assert_eq!(updated["rate_limit"], serde_json::Value::Null);
    let (status, _) = status_json(
        app.post("/v1/events", &key, &json!({"event_type": "x"}))
            .await,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the new scopes apply at once"
    );
    let (status, _) = patch(json!({"is_active": false}), key_id.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.get("/v1/events", &key).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let path = format!("/v1/keys/{key_id}");
    assert_eq!(
        app.delete(&path, &admin).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete(&path, &admin).await.status(),
        StatusCode::NOT_FOUND
    );

    // bad input: every problem named
    let (status, body) = status_json(app.post("/v1/keys", &admin, &json!({})).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields = |b: &serde_json::Value| {
        b["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(fields(&body), ["client_id", "name"]);
    let bad = json!({"client_id": "bad id", "name": " ", "scopes": ["root"], "rate_limit": 0,
                     "expires_at": "2000-01-01T00:00:00Z", "colour": 1});
    let (status, body) = status_json(app.post("/v1/keys", &admin, &bad).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut got = fields(&body);
    got.sort();
    assert_eq!(
        got,
        [
            "client_id",
            "colour",
            "expires_at",
            "name",
            "rate_limit",
            "scopes"
        ]
    );
    let (status, _) = patch(json!({"is_active": "yes"}), key_id.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    for limit in [json!(-5), json!(1.5), json!(1_000_001)] {
        let (status, body) = patch(json!({ "rate_limit": limit }), key_id.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["field"], "rate_limit", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("between 1 and 1000000"), "{limit}: {body}");
    }
    let (status, body) = patch(json!({"name": "x"}), String::from("0000000000000000")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "not_found");

    // only admins manage keys; the seed-002 path works too
    let plain = app.key("acme", "events:write,events:read").await;
    assert_eq!(
        app.get("/v1/keys", &plain).await.status(),
        StatusCode::FORBIDDEN
    );
    let (status, _) = status_json(app.post("/v1/keys", &plain, &body_for("acme")).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = status_json(app.post("/api/v1/keys/", &admin, &body_for("acme")).await).await;
    assert_eq!(status, StatusCode::CREATED);
    app.stop().await;
}

/// The first admin key is made once however many starts race for it (the nodes of a new
/// PostgreSQL database starting together): one start gets the key to print, the others none,
/// and the store holds that one key.
async fn starts_that_race_make_one_first_admin_key(backend: Backend) {
    let Some(db) = crate::helpers::TestDatabase::create(backend).await else {
        return;
    };
    let args = annals::config::ServeArgs::with_database(db.url.clone());
    // Four nodes (each its own store: its own connections and writer), four starts on each.
    let mut nodes = Vec::new();
    for _ in 0..4 {
        let store = annals::server::open_store(&args.store).await.unwrap();
        nodes.push((store.clone(), annals::auth::KeyService::new(store, None)));
    }
    let client = annals::domain::ClientId::parse("default").unwrap();
    let starts = nodes
        .iter()
        .flat_map(|(_, keys)| (0..4).map(|_| keys.bootstrap_admin(&client)));
    let issued: Vec<_> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .filter_map(Result::unwrap)
        .collect();
    assert_eq!(issued.len(), 1, "one start made the first key");
    let keys = &nodes[0].1;
    let stored = keys.list(None).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].key_id, issued[0].record.key_id);
    assert!(
        keys.bootstrap_admin(&client).await.unwrap().is_none(),
        "a later start makes none"
    );
    for (store, _) in nodes {
        store.shutdown().await;
    }
}

/// Over HTTP an admin can't disable, demote or delete the last active admin key (that would
/// lock every administrator out, with no static key to fall back on); with another admin key
/// it can, and two admins removing each other's keys at once leave one. With a static
/// `ANNALS_API_KEY` there is always a way in, so the last stored admin key may go.
async fn the_last_admin_key_is_kept_over_http(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let first = app.admin_key.clone();
    let id = |key: &str| key[4..20].to_string();
    let patch = |key: String, target: String, body: serde_json::Value| {
        let app = &app;
        async move { status_json(app.patch(&format!("/v1/keys/{target}"), &key, &body).await).await }
    };
    let delete = |key: String, target: String| {
        let app = &app;
        async move {
            app.delete(&format!("/v1/keys/{target}"), &key)
                .await
                .status()
        }
    };
    for (body, field) in [
        (json!({"is_active": false}), "is_active"),
        (json!({"scopes": ["events:read"]}), "scopes"),
    ] {
        let (status, error) = patch(first.clone(), id(&first), body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{error}");
        assert_error(&error, "conflict");
        assert_eq!(error["field"], field);
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("last active admin key"),
            "{error}"
        );
    }
    assert_eq!(
        delete(first.clone(), id(&first)).await,
        StatusCode::CONFLICT
    );
    // Nothing changed: the key still administers.
    let (status, keys) = status_json(app.get("/v1/keys", &first).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys[0]["is_active"], true);
    assert_eq!(
        keys[0]["scopes"],
        json!(["events:write", "events:read", "admin"])
    );

    // With a second admin key the first may go; then the second is the last.
    let second = app.key("default", "admin").await;
    assert_eq!(
        delete(second.clone(), id(&first)).await,
        StatusCode::NO_CONTENT
    );
    let (status, _) = patch(second.clone(), id(&second), json!({"is_active": false})).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Two admins deleting each other's key at once: one wins, one admin key is left.
    let mut last = second;
    for _ in 0..5 {
        let other = app.key("default", "admin").await;
        let (a, b) = tokio::join!(
            delete(last.clone(), id(&other)),
            delete(other.clone(), id(&last))
        );
        let mut statuses = [a, b];
        statuses.sort();
        assert_eq!(statuses[0], StatusCode::NO_CONTENT, "{statuses:?}");
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::CONFLICT].contains(&statuses[1]),
            "{statuses:?}"
        );
        let admins: Vec<_> = app
            .keys
            .list(None)
            .await
            .unwrap()
            .into_iter()
            .filter(|k| k.is_active && k.scopes.is_admin())
            .collect();
        assert_eq!(admins.len(), 1);
        last = if admins[0].key_id == id(&last) {
            last
        } else {
            other
        };
    }
    app.stop().await;

    let static_key = "static-admin-key-0123456789";
    let Some(app) = TestApp::spawn_with(backend, |a| a.api_key = Some(static_key.into())).await
    else {
        return;
    };
    let stored = app.key("default", "admin").await;
    assert_eq!(
        app.delete(&format!("/v1/keys/{}", id(&stored)), &stored)
            .await
            .status(),
        StatusCode::NO_CONTENT,
        "the static key is always a way in"
    );
    assert_eq!(
        app.get("/v1/keys", static_key).await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

fn body_for(client: &str) -> serde_json::Value {
    json!({"client_id": client, "name": "via seed path", "rate_limit": 100})
}

crate::conformance!(
    starts_that_race_make_one_first_admin_key,
    key_admin_api_creates_lists_updates_and_deletes,
    the_last_admin_key_is_kept_over_http,
    missing_malformed_unknown_and_wrong_secret_keys_are_401,
    disabled_deleted_and_expired_keys_stop_working_at_once,
    scopes_are_enforced_with_403,
    clients_never_see_each_other,
    admin_sees_all_and_may_write_for_a_client,
);
