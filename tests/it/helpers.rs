//! `TestApp`: a real server on 127.0.0.1:0 with its own SQLite file, plus typed request helpers
//! so tests read like API documentation.

use annals::auth::{KeyService, NewKeyRequest};
use annals::config::ServeArgs;
use annals::domain::ClientId;
use annals::domain::access::Scopes;
use annals::server::{self, RunningServer};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use tempfile::TempDir;

pub struct TestApp {
    pub base: String,
    /// The admin key issued on first start.
    pub admin_key: String,
    pub http: reqwest::Client,
    pub keys: KeyService,
    server: Option<RunningServer>,
    pub dir: TempDir,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut ServeArgs)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args = ServeArgs::with_database(dir.path().join("annals.db").display().to_string());
        configure(&mut args);
        let server = server::start(args).await.expect("server starts");
        let admin_key = server
            .bootstrap_key
            .as_ref()
            .map(|k| k.key.clone())
            .unwrap_or_default();
        Self {
            base: format!("http://{}", server.addr),
            admin_key,
            http: reqwest::Client::new(),
            keys: server.keys.clone(),
            server: Some(server),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates a key for `client` with `scopes` (comma-separated) and returns its text.
    pub async fn key(&self, client: &str, scopes: &str) -> String {
        self.keys
            .create(NewKeyRequest {
                client_id: ClientId::parse(client).unwrap(),
                name: format!("{client} test key"),
                scopes: Scopes::parse_list(scopes).unwrap(),
                rate_limit: None,
                expires_at: None,
            })
            .await
            .expect("key created")
            .key
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Response {
        self.http
            .post(self.url(path))
            .header("x-api-key", key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_raw(
        &self,
        path: &str,
        key: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        let mut req = self
            .http
            .post(self.url(path))
            .header("x-api-key", key)
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().await.expect("request sent")
    }

    pub async fn get(&self, path_and_query: &str, key: &str) -> Response {
        self.http
            .get(self.url(path_and_query))
            .header("x-api-key", key)
            .send()
            .await
            .expect("request sent")
    }

    /// GET that must answer 200 with a JSON array of events.
    pub async fn list(&self, path_and_query: &str, key: &str) -> Vec<Value> {
        let r = self.get(path_and_query, key).await;
        let status = r.status();
        let body: Value = r.json().await.expect("json");
        assert_eq!(status, StatusCode::OK, "GET {path_and_query}: {body}");
        body.as_array().expect("an array").clone()
    }

    /// POSTs one event that must be stored; returns its id.
    pub async fn record(&self, key: &str, event: Value) -> String {
        let r = self.post("/v1/events", key, &event).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
    }
}

/// Status and JSON body of a response.
pub async fn status_json(r: Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, body)
}

/// Asserts the error shape DESIGN.md promises.
pub fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

impl TestApp {
    /// Stops the server but keeps the temp dir (and its database) for a restart.
    pub async fn stop_keep_dir(mut self) -> Self {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
        self
    }
}
