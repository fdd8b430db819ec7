//! CloudEvents 1.0 over HTTP on `POST /v1/events`: structured, batch and binary mode, the
//! spec's own examples round-tripping through `Accept: application/cloudevents+json`, the
//! required attributes, idempotency on source + id, and non-JSON data kept as it came.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::conformance;
use crate::helpers::{Backend, TestApp, assert_error, status_json};

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

/// The JSON format specification's examples (v1.0.2 §3.1), with their null attributes.
fn spec_examples() -> Vec<Value> {
    vec![
        json!({
            "specversion": "1.0", "type": "com.example.someevent", "source": "/mycontext",
            "id": "A234-1234-1234", "time": "2018-04-05T17:31:00Z",
            "comexampleextension1": "value", "comexampleothervalue": 5,
            "datacontenttype": "application/vnd.apache.thrift.binary",
            "data_base64": "... base64 encoded string ..."
        }),
        json!({
            "specversion": "1.0", "type": "com.example.someevent", "source": "/mycontext",
            "id": "B234-1234-1234", "time": "2018-04-05T17:31:00Z",
            "comexampleextension1": "value", "comexampleothervalue": 5,
            "unsetextension": null,
            "datacontenttype": "text/xml", "data": "<much wow=\"xml\"/>"
        }),
        json!({
            "specversion": "1.0", "type": "com.example.someevent", "source": "/mycontext",
            "subject": null, "id": "C234-1234-1234", "time": "2018-04-05T17:31:00Z",
            "comexampleextension1": "value", "comexampleothervalue": 5,
            "datacontenttype": "application/json",
            "data": {"appinfoA": "abc", "appinfoB": 123, "appinfoC": true}
        }),
    ]
}

fn without_nulls(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().retain(|_, x| !x.is_null());
    v
}

async fn post_ce(
    app: &TestApp,
    key: &str,
    content_type: &str,
    body: &Value,
) -> (StatusCode, Value) {
    status_json(
        app.post_raw("/v1/events", key, Some(content_type), body.to_string())
            .await,
    )
    .await
}

async fn get_ce(app: &TestApp, path: &str, key: &str, accept: &str) -> (String, Value) {
    let r = app
        .http
        .get(app.url(path))
        .header("x-api-key", key)
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
    (content_type, r.json().await.unwrap())
}

async fn spec_examples_round_trip(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    for example in spec_examples() {
        let (status, body) = post_ce(&app, &key, STRUCTURED, &example).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["id"].as_str().unwrap();
        let (content_type, back) =
            get_ce(&app, &format!("/v1/events/{id}"), &key, STRUCTURED).await;
        assert_eq!(content_type, STRUCTURED);
        assert_eq!(back, without_nulls(&example), "returned as it came");

        // The plain view shows the DESIGN.md mapping.
        let (_, plain) = status_json(app.get(&format!("/v1/events/{id}"), &key).await).await;
        assert_eq!(plain["format"], "cloudevents");
        assert_eq!(plain["event_type"], "com.example.someevent");
        assert_eq!(plain["source"], "/mycontext");
        assert_eq!(plain["event_id"], example["id"]);
        assert_eq!(plain["occurred_at"], "2018-04-05T17:31:00Z");
        assert_eq!(plain["headers"]["comexampleothervalue"], 5);
    }
    // Lists as a CloudEvents batch, newest first.
    let (content_type, list) = get_ce(&app, "/v1/events", &key, BATCH).await;
    assert_eq!(content_type, BATCH);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["C234-1234-1234", "B234-1234-1234", "A234-1234-1234"]);
    // Data filters reach JSON CloudEvent data.
    assert_eq!(app.list("/v1/events?appinfoB=123", &key).await.len(), 1);

    // source + id is the idempotency key: a retry is a duplicate, changed content a conflict.
    let example = spec_examples().remove(2);
    let (status, body) = post_ce(&app, &key, STRUCTURED, &example).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["duplicate"], true);
    let mut changed = example.clone();
    changed["data"]["appinfoB"] = json!(124);
    let (status, _) = post_ce(&app, &key, STRUCTURED, &changed).await;
    assert_eq!(status, StatusCode::CONFLICT);
    changed["source"] = json!("/othercontext");
    let (status, _) = post_ce(&app, &key, STRUCTURED, &changed).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "same id, other source: another event"
    );

    // An event recorded as an envelope renders as a CloudEvent too.
    let id = app
        .record(
            &key,
            json!({"event_type": "iam.user.created", "event_id": "e1", "source": "iam",
                             "data": {"user": "u1"}}),
        )
        .await;
    let (_, ce) = get_ce(&app, &format!("/v1/events/{id}"), &key, STRUCTURED).await;
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["id"], "e1");
    assert_eq!(ce["source"], "iam");
    assert_eq!(ce["type"], "iam.user.created");
    assert_eq!(ce["data"]["user"], "u1");
    app.stop().await;
}

async fn bad_cloudevents_are_refused(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let valid =
        json!({"specversion": "1.0", "type": "com.example.someevent", "source": "/s", "id": "1"});
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"specversion": "1.0", "type": "t", "source": "/s"}),
            "id",
        ),
        (
            json!({"specversion": "1.0", "type": "t", "id": "1"}),
            "source",
        ),
        (
            json!({"type": "t", "source": "/s", "id": "1"}),
            "specversion",
        ),
        (
            json!({"specversion": "1.0", "source": "/s", "id": "1"}),
            "type",
        ),
        (
            json!({"specversion": "0.3", "type": "t", "source": "/s", "id": "1"}),
            "specversion",
        ),
        (
            json!({"specversion": 1.0, "type": "t", "source": "/s", "id": "1"}),
            "specversion",
        ),
        (
            json!({"specversion": "1.0", "type": "t", "source": "/s", "id": ""}),
            "id",
        ),
        (
            json!({"specversion": "1.0", "type": "t", "source": "/s", "id": "1", "time": "noon"}),
            "time",
        ),
        (
            json!({"specversion": "1.0", "type": "t", "source": "/s", "id": "1", "Bad_Ext": "x"}),
            "Bad_Ext",
        ),
        (
            json!({"specversion": "1.0", "type": "t", "source": "/s", "id": "1", "ext": {"a": 1}}),
            "ext",
        ),
        (
            json!({"specversion": "1.0", "type": "t", "source": "/s", "id": "1",
                "data": {}, "data_base64": "AA=="}),
            "data_base64",
        ),
        (
            json!({"specversion": "1.0", "type": "t", "source": "/s", "id": "1",
                "dataschema": "not a uri"}),
            "dataschema",
        ),
    ];
    for (event, field) in cases {
        let (status, body) = post_ce(&app, &key, STRUCTURED, &event).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{event}: {body}");
        assert_error(&body, "validation_failed");
        assert_eq!(body["field"], field, "{body}");
    }
    let (status, body) = post_ce(&app, &key, STRUCTURED, &json!([valid])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let r = app
        .post_raw("/v1/events", &key, Some(STRUCTURED), "{not json")
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Batch mode is atomic: one bad event refuses them all, with its index.
    let mut second = valid.clone();
    second["id"] = json!("2");
    let batch = json!([valid, {"specversion": "1.0"}, second]);
    let (status, body) = post_ce(&app, &key, BATCH, &batch).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["index"] == 1)
    );
    let (status, _) = post_ce(&app, &key, BATCH, &json!({"events": []})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        app.list("/v1/events", &key).await.is_empty(),
        "nothing stored"
    );

    let (status, body) = post_ce(&app, &key, BATCH, &json!([valid, second])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["ids"].as_array().unwrap().len(), 2);
    let (status, _) = post_ce(&app, &key, BATCH, &json!([])).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an empty batch is allowed by the spec"
    );
    assert_eq!(app.list("/v1/events", &key).await.len(), 2);
    app.stop().await;
}

async fn binary_mode(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app.key("acme", "events:write,events:read").await;
    let send = async |headers: &[(&str, &str)], content_type: Option<&str>, body: Vec<u8>| {
        let mut req = app
            .http
            .post(app.url("/v1/events"))
            .header("x-api-key", &key)
            .body(body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        status_json(req.send().await.unwrap()).await
    };
    let base = [
        ("ce-specversion", "1.0"),
        ("ce-type", "com.example.someevent"),
        ("ce-time", "2018-04-05T03:56:24Z"),
        ("ce-id", "1234-1234-1234"),
        ("ce-source", "/mycontext/subcontext"),
    ];
    // JSON data, and a percent-encoded extension value (the binding's encoding).
    let mut headers = base.to_vec();
    headers.push(("ce-comexampleextension", "caf%C3%A9%20au%20lait"));
    let (status, body) = send(
        &headers,
        Some("application/json; charset=utf-8"),
        br#"{"n": 1}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap();
    let (_, back) = get_ce(&app, &format!("/v1/events/{id}"), &key, STRUCTURED).await;
    assert_eq!(
        back,
        json!({"specversion": "1.0", "type": "com.example.someevent", "time": "2018-04-05T03:56:24Z",
               "id": "1234-1234-1234", "source": "/mycontext/subcontext",
               "comexampleextension": "café au lait",
               "datacontenttype": "application/json; charset=utf-8", "data": {"n": 1}})
    );

    // Binary data comes back as data_base64, byte for byte.
    let mut headers = base.to_vec();
    headers[3] = ("ce-id", "bin-1");
    let bytes = vec![0u8, 159, 146, 150, 255];
    let (status, body) = send(&headers, Some("application/octet-stream"), bytes).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap();
    let (_, back) = get_ce(&app, &format!("/v1/events/{id}"), &key, STRUCTURED).await;
    assert_eq!(back["data_base64"], "AJ+Slv8=");
    assert_eq!(back["datacontenttype"], "application/octet-stream");

    // Text data stays text.
    headers[3] = ("ce-id", "txt-1");
    let (status, body) = send(&headers, Some("text/plain"), b"hello".to_vec()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap();
    let (_, back) = get_ce(&app, &format!("/v1/events/{id}"), &key, STRUCTURED).await;
    assert_eq!(back["data"], "hello");

    // Problems name the header they came from.
    let (status, body) = send(&base[..3], Some("application/json"), b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "ce-id");
    let mut headers = base.to_vec();
    headers[3] = ("ce-id", "bad-json");
    let (status, body) = send(&headers, Some("application/json"), b"{nope".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = send(
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "%FF"),
            ("ce-type", "t"),
            ("ce-source", "/s"),
        ],
        None,
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "ce-id");
    assert_eq!(app.list("/v1/events", &key).await.len(), 3);
    app.stop().await;
}

conformance!(
    spec_examples_round_trip,
    bad_cloudevents_are_refused,
    binary_mode
);
