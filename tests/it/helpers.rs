//! `TestApp`: a real server on 127.0.0.1:0 with its own database — a SQLite file in a temp dir,
//! or a fresh PostgreSQL database on `ANNALS_TEST_DATABASE_URL`'s server, dropped afterwards —
//! plus typed request helpers so tests read like API documentation.
//!
//! `conformance!` turns each `async fn test(backend: Backend)` into one test per backend: the
//! same suite runs against both stores.

use annals::auth::{KeyService, NewKeyRequest};
use annals::config::ServeArgs;
use annals::domain::ClientId;
use annals::domain::access::Scopes;
use annals::server::{self, RunningServer};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use tempfile::TempDir;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Declares `sqlite::name` and `postgres::name` tests for each `async fn name(Backend)`.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

/// One test's database. PostgreSQL databases are dropped when this is dropped, even if the
/// test panicked.
pub struct TestDatabase {
    pub url: String,
    postgres: Option<(String, String)>,
    _dir: TempDir,
}

impl TestDatabase {
    /// A connection of the test's own to its PostgreSQL database, to look or change things
    /// behind the server's back.
    pub async fn postgres_client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// `None` (after saying so) when PostgreSQL is asked for and `ANNALS_TEST_DATABASE_URL` is
    /// unset. On CI that is a failure, not a skip.
    pub async fn create(backend: Backend) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => Some(Self {
                url: dir.path().join("annals.db").display().to_string(),
                postgres: None,
                _dir: dir,
            }),
            Backend::Postgres => {
                let Ok(admin_url) = std::env::var("ANNALS_TEST_DATABASE_URL") else {
                    assert!(
                        std::env::var("CI").as_deref() != Ok("true"),
                        "ANNALS_TEST_DATABASE_URL must be set on CI: PostgreSQL tests may not be skipped"
                    );
                    eprintln!("SKIPPED (no ANNALS_TEST_DATABASE_URL)");
                    return None;
                };
                let name = format!("annals_test_{}", uuid::Uuid::now_v7().simple());
                let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
                    .await
                    .expect("connect to ANNALS_TEST_DATABASE_URL");
                tokio::spawn(conn);
                // A linguistic collation, as many installations have, rather than the C one
                // a test server often has: text must not be assumed to sort by bytes.
                client
                    .batch_execute(&format!(
                        "CREATE DATABASE {name} TEMPLATE template0 \
                         LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
                    ))
                    .await
                    .expect("create test database");
                let url = with_database(&admin_url, &name);
                Some(Self {
                    url,
                    postgres: Some((admin_url, name)),
                    _dir: dir,
                })
            }
        }
    }
}

/// `postgres://u@h:p/db?x` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{name}{query}")
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = self.postgres.take() {
            // Drop runs outside async context guarantees: use a thread with its own runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    if let Ok((client, conn)) =
                        tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        let _ = client
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

pub struct TestApp {
    pub base: String,
    /// The admin key issued on first start.
    pub admin_key: String,
    pub http: reqwest::Client,
    pub keys: KeyService,
    pub store: std::sync::Arc<dyn annals::store::Store>,
    server: Option<RunningServer>,
    pub args: ServeArgs,
    pub db: TestDatabase,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Option<Self> {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(
        backend: Backend,
        configure: impl FnOnce(&mut ServeArgs),
    ) -> Option<Self> {
        let db = TestDatabase::create(backend).await?;
        let mut args = ServeArgs::with_database(db.url.clone());
        configure(&mut args);
        Some(Self::start(args, db).await)
    }

    /// A server with `extra` routes behind the API's access and audit layers.
    pub async fn spawn_with_routes(
        backend: Backend,
        configure: impl FnOnce(&mut ServeArgs),
        extra: axum::Router<annals::api::AppState>,
    ) -> Option<Self> {
        let db = TestDatabase::create(backend).await?;
        let mut args = ServeArgs::with_database(db.url.clone());
        configure(&mut args);
        Some(Self::start_routes(args, db, extra).await)
    }

    /// A server on a database made outside `TestApp` (say, the destination of a copy).
    pub async fn serve(db: TestDatabase) -> Self {
        Self::start(ServeArgs::with_database(db.url.clone()), db).await
    }

    async fn start(args: ServeArgs, db: TestDatabase) -> Self {
        Self::start_routes(args, db, axum::Router::new()).await
    }

    async fn start_routes(
        args: ServeArgs,
        db: TestDatabase,
        extra: axum::Router<annals::api::AppState>,
    ) -> Self {
        let server = server::start_with(args.clone(), extra)
            .await
            .expect("server starts");
        let admin_key = server
            .bootstrap_key
            .as_ref()
            .map(|k| k.key.clone())
            .unwrap_or_default();
        Self {
            base: format!("http://{}", server.addr),
            admin_key,
            http: http(),
            keys: server.keys.clone(),
            store: server.store.clone(),
            server: Some(server),
            args,
            db,
        }
    }

    /// Stops the server (draining its queue) and starts a new one on the same database. The
    /// admin key of the first start stays valid.
    pub async fn restart(mut self) -> Self {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
        let admin_key = std::mem::take(&mut self.admin_key);
        let TestApp { args, db, .. } = self;
        let mut app = Self::start(args, db).await;
        app.admin_key = admin_key;
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A plain TCP connection to the server, for tests that speak HTTP by hand.
    pub async fn raw_connection(&self) -> tokio::net::TcpStream {
        let addr = self.base.trim_start_matches("http://");
        tokio::net::TcpStream::connect(addr).await.unwrap()
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
        self.send(reqwest::Method::POST, path, key, Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, key: &str, body: &Value) -> Response {
        self.send(reqwest::Method::PATCH, path, key, Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, key: &str) -> Response {
        self.send(reqwest::Method::DELETE, path, key, None).await
    }

    /// `method` on `path` with `key` as X-API-Key, and `body` as JSON if given.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> Response {
        let mut request = self
            .http
            .request(method, self.url(path))
            .header("x-api-key", key);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.expect("request sent")
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

    /// POSTs a binary-mode CloudEvent to `/v1/events`: `ce-specversion` 1.0 and the given
    /// `ce-*` attributes as headers, the data as the body.
    pub async fn post_binary_cloudevent(
        &self,
        key: &str,
        attributes: &[(&str, &str)],
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        let mut req = self
            .http
            .post(self.url("/v1/events"))
            .header("x-api-key", key)
            .header("ce-specversion", "1.0")
            .header("content-type", content_type)
            .body(body);
        for (name, value) in attributes {
            req = req.header(*name, *value);
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

    /// `POST /v1/integrity/checkpoints` with the admin key: the tree caught up and signed.
    pub async fn sign_checkpoint(&self) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url("/v1/integrity/checkpoints"))
            .header("x-api-key", &self.admin_key)
            .send()
            .await
            .expect("request sent");
        status_json(r).await
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
    }
}

/// A plain HTTP client (its TLS needs the process's crypto provider, which the binary and the
/// server install; a test without a server in-process needs it too).
pub fn http() -> reqwest::Client {
    annals::bus::client::install_crypto_provider();
    reqwest::Client::new()
}

/// Status and JSON body of a response.
pub async fn status_json(r: Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, body)
}

/// A JSON array from a server started outside `TestApp` (`url` complete, `key` as X-API-Key).
pub async fn get_array(url: &str, key: &str) -> Vec<Value> {
    let r = http()
        .get(url)
        .header("x-api-key", key)
        .send()
        .await
        .expect("request sent");
    let (status, body) = status_json(r).await;
    assert_eq!(status, StatusCode::OK, "{url}: {body}");
    serde_json::from_value(body).expect("a JSON array")
}

/// Asserts the error shape DESIGN.md promises.
pub fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty() && !m.starts_with(':')),
        "{body}"
    );
}

impl TestApp {
    /// Stops the server but keeps its database, for inspection through the store directly.
    pub async fn stop_keep_db(mut self) -> Self {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
        self
    }
}

/// Every event visible to `key` at `base`, oldest first, following the `Link` pages.
pub async fn all_events(http: &reqwest::Client, base: &str, key: &str) -> Vec<serde_json::Value> {
    all_pages(http, base, "/v1/events?limit=1000&order=asc", key).await
}

/// Every page of the listing `path_and_query` at `base`, following its `Link` headers.
pub async fn all_pages(
    http: &reqwest::Client,
    base: &str,
    path_and_query: &str,
    key: &str,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut next = Some(format!("{base}{path_and_query}"));
    while let Some(url) = next.take() {
        let r = http
            .get(&url)
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        next = r.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            format!("{base}{}", &l[1..l.find('>').unwrap()])
        });
        out.extend(r.json::<Vec<serde_json::Value>>().await.unwrap());
    }
    out
}

/// A 32-byte hash from its hex text in an answer.
pub fn hash(value: &Value) -> annals::integrity::merkle::Hash {
    hex::decode(value.as_str().expect("hex text"))
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

/// A list of hashes from an answer.
pub fn hashes(value: &Value) -> Vec<annals::integrity::merkle::Hash> {
    value.as_array().expect("array").iter().map(hash).collect()
}

/// Whether an inclusion proof answer checks out as an auditor would check it: the leaf hashed
/// from its canonical event, the audit path from there to `root` in a tree of its `tree_size`.
pub fn inclusion_holds(proof: &Value, root: &annals::integrity::merkle::Hash) -> bool {
    use annals::integrity::merkle;
    merkle::verify_inclusion(
        &merkle::leaf_hash(proof["canonical_event"].as_str().expect("text").as_bytes()),
        proof["leaf_index"].as_u64().expect("a leaf index"),
        proof["tree_size"].as_u64().expect("a tree size"),
        &hashes(&proof["audit_path"]),
        root,
    )
}
