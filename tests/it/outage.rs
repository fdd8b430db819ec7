//! PostgreSQL going away: requests get a clear 503 (never a hang or a panic), and the service
//! recovers by itself when the database is back. The test puts a TCP proxy it can cut between
//! the server and PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use annals::config::ServeArgs;
use annals::server;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::AbortHandle;

use crate::helpers::{Backend, TestDatabase, status_json};

const KEY: &str = "outage-static-key-0";

/// A loopback TCP proxy to `upstream` that can refuse and cut every connection.
struct Proxy {
    addr: std::net::SocketAddr,
    down: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (d, l) = (down.clone(), links.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: the database "is down"
                }
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().await.push(link.abort_handle());
            }
        })
        .abort_handle();
        Self {
            addr,
            down,
            links,
            accept,
        }
    }

    async fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for link in self.links.lock().await.drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// `postgres://user@host:port/db` → (`host:port`, the URL with `proxy` as host and port).
fn through(url: &str, proxy: std::net::SocketAddr) -> (String, String) {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap();
    let rest = &url[after_scheme..];
    let auth_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let host_port = authority.rsplit('@').next().unwrap();
    let host_port_full = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    };
    let prefix = &authority[..authority.len() - host_port.len()];
    let proxied = format!(
        "{}{}{}{}",
        &url[..after_scheme],
        prefix,
        proxy,
        &rest[auth_end..]
    );
    (host_port_full, proxied)
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    body: Value,
) -> (StatusCode, Value, Option<String>) {
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        http.post(format!("{base}/v1/events"))
            .header("x-api-key", KEY)
            .json(&body)
            .send(),
    )
    .await
    .expect("answered in bounded time, never a hang")
    .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let (status, body) = status_json(r).await;
    (status, body, retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_a_503_and_recovers_by_itself() {
    let Some(db) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let (upstream, _) = through(&db.url, "127.0.0.1:1".parse().unwrap());
    let proxy = Proxy::start(upstream).await;
    let (_, url) = through(&db.url, proxy.addr);
    let mut args = ServeArgs::with_database(url);
    args.api_key = Some(KEY.into());
    let app = server::start(args).await.unwrap();
    let base = format!("http://{}", app.addr);
    let http = crate::helpers::http();

    let (status, before, _) = post(&http, &base, json!({"event_type": "outage.before.sent"})).await;
    assert_eq!(status, StatusCode::CREATED);

    proxy.cut().await;
    let (status, body, retry) =
        post(&http, &base, json!({"event_type": "outage.during.sent"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "unavailable");
    assert!(retry.is_some());
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        http.get(format!("{base}/v1/events"))
            .header("x-api-key", KEY)
            .send(),
    )
    .await
    .expect("bounded")
    .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);

    proxy.restore();
    let mut recovered = false;
    for _ in 0..40 {
        let (status, _, _) = post(&http, &base, json!({"event_type": "outage.after.sent"})).await;
        if status == StatusCode::CREATED {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "the service came back by itself");
    let r = http
        .get(format!("{base}/v1/events?order=asc"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    let events: Vec<Value> = r.json().await.unwrap();
    assert_eq!(
        events[0]["id"], before["id"],
        "the acknowledged event is still there"
    );
    assert!(
        events
            .iter()
            .all(|e| e["event_type"] != "outage.during.sent"),
        "a refused event was not stored"
    );
    app.stop().await.unwrap();
}
