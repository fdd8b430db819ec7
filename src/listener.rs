//! The HTTP listener: accepts TCP connections and serves the router on each over HTTP/1.1, with
//! the time limits `axum::serve` leaves out.
//!
//! Invariants:
//! - A client has `read_timeout` to send a request's head, counted from when the connection opens
//!   or the previous answer was sent: a connection that sends nothing, or dribbles its headers
//!   (slowloris), or sits idle between keep-alive requests, is closed. Without a timer hyper
//!   applies no such limit at all, and every such connection would hold a socket and a task
//!   forever. (The body's own limit is in `api::extract::read_body`.)
//! - hyper's read buffer holds at most `config::HEAD_BUFFER_BYTES` (twice that after one large
//!   read): a request head that doesn't fit is answered by hyper itself with a bare `431` (a URI
//!   over 64 KiB with `414`) and the connection closed. Heads that fit are held to the exact,
//!   smaller limits of `api::head_limits`, with JSON errors. Bodies stream through the same buffer.
//! - Every connection has `TCP_NODELAY`: answers are small and latency-bound, and Nagle's
//!   algorithm would hold a second small segment until the client's delayed ACK.
//! - On shutdown the listener stops accepting, idle connections are closed, and the call returns
//!   once every request in flight has been answered, or after `drain_timeout` whatever is still
//!   running: a stop is never held up for good by a route or a client that doesn't finish.
//! - At most `max_connections` (`ANNALS_MAX_CONNECTIONS`) connections are served at once; the
//!   listener accepts the next only when one has closed, so the rest wait in the kernel's listen
//!   backlog. With the head buffer and the body-memory budget this bounds a node's memory however
//!   many clients connect.
//! - An accept error (e.g. out of file descriptors) is logged and retried after a pause, never
//!   the end of the server.
//! - Every request carries its caller's address (`ClientAddr`), found once here: the socket's
//!   peer, unless that peer is one of `ANNALS_TRUSTED_PROXIES`, in which case the address its
//!   `X-Forwarded-For` names (see `TrustedProxies::client_ip`). A header from anyone else is
//!   ignored, so a client can't choose the address its audit rows and failure limit go by.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::api::header_names::FORWARDED_FOR;
use crate::config;

/// How long an accept error (out of file descriptors, say) pauses accepting.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How the listener treats its clients.
#[derive(Clone, Debug)]
pub struct Options {
    /// Time to send a request's head (`ANNALS_READ_TIMEOUT_SECS`).
    pub read_timeout: Duration,
    /// Time the requests in flight get to finish once shutdown starts
    /// (`ANNALS_SHUTDOWN_TIMEOUT_SECS`).
    pub drain_timeout: Duration,
    /// Connections served at once (`ANNALS_MAX_CONNECTIONS`).
    pub max_connections: usize,
    pub trusted_proxies: TrustedProxies,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_secs(config::DEFAULT_READ_TIMEOUT_SECS),
            drain_timeout: Duration::from_secs(config::DEFAULT_SHUTDOWN_TIMEOUT_SECS),
            max_connections: config::DEFAULT_MAX_CONNECTIONS,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// The address a request came from, as the listener determined it (a request extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// `ANNALS_TRUSTED_PROXIES`: the load balancers and reverse proxies whose `X-Forwarded-For` is
/// believed. Empty (the default) believes no one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Comma-separated addresses and CIDR ranges: `10.0.0.0/8, 192.168.1.5, fd00::/8`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => item.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    format!("'{item}' is neither an IP address nor a CIDR range (10.0.0.0/8)")
                })?,
            };
            nets.push(net);
        }
        Ok(Self(nets))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The caller behind `peer`: `peer` itself unless it is trusted; then `X-Forwarded-For` is
    /// read from the right (each proxy appends the address it got the request from), skipping
    /// trusted proxies, and the first address that is not one is the client. An entry that is
    /// not an address ends the walk at the last hop known for sure. A client can prepend what it
    /// likes to the header, but not past a trusted proxy, which appends its own peer.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        for line in headers.get_all(&FORWARDED_FOR).iter().rev() {
            let Ok(line) = line.to_str() else {
                return client;
            };
            for entry in line.rsplit(',') {
                let Some(hop) = forwarded_address(entry.trim()) else {
                    return client;
                };
                client = hop;
                if !self.trusts(hop) {
                    return hop;
                }
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, or one with a port (`203.0.113.7:41234`,
/// `[2001:db8::1]:41234`).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()?;
    Some(ip.to_canonical())
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains: the requests in flight are
/// answered before this returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: Options,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.read_timeout)
        .max_buf_size(config::HEAD_BUFFER_BYTES);
    let proxies = Arc::new(options.trusted_proxies);
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
    // Raised at shutdown: each connection then finishes its request in flight and closes.
    let (drain, draining) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A free slot first: at the limit, new connections wait in the kernel's backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let proxies = proxies.clone();
        let service = app
            .clone()
            .map_request(move |request| with_client(request, remote.ip(), &proxies));
        // With upgrades: a WebSocket's connection is handed over to its route (which ends it
        // when the server stops) once the upgrade is answered.
        let connection = http
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .with_upgrades();
        let mut draining = draining.clone();
        while tasks.try_join_next().is_some() {} // reaps the connections that have ended
        tasks.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = draining.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::trace!(error = %e, %remote, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = drain.send(true);
    let drained = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(options.drain_timeout, drained)
        .await
        .is_err()
    {
        while tasks.try_join_next().is_some() {} // only the ones still running are counted
        tracing::warn!(
            connections = tasks.len(),
            seconds = options.drain_timeout.as_secs(),
            "requests still unanswered after ANNALS_SHUTDOWN_TIMEOUT_SECS; stopping without them"
        );
    }
    // Dropped, not left running: each holds the router, and with it the audit queue and the
    // store, which the rest of the stop waits to see released.
    tasks.shutdown().await;
}

/// The request as axum takes it, with its caller's address.
fn with_client(
    request: Request<Incoming>,
    peer: IpAddr,
    proxies: &TrustedProxies,
) -> Request<Body> {
    let client = proxies.client_ip(peer, request.headers());
    let mut request = request.map(Body::new);
    request.extensions_mut().insert(ClientAddr(client));
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn forwarded(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(&FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn trusted_proxies_parse_addresses_and_ranges() {
        let proxies =
            TrustedProxies::parse(" 10.0.0.0/8, 192.168.1.5 ,fd00::/8,10.1.2.3/8").unwrap();
        assert!(proxies.trusts(ip("10.200.0.1")));
        assert!(proxies.trusts(ip("192.168.1.5")));
        assert!(!proxies.trusts(ip("192.168.1.6")));
        assert!(proxies.trusts(ip("fd12::1")));
        assert_eq!(
            TrustedProxies::parse("").unwrap(),
            TrustedProxies::default()
        );
        for bad in ["10.0.0.0/33", "proxy.internal", "10.0.0.1/x", "1.2.3"] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let lb = ip("10.0.0.2");
        // not a proxy: its header is ignored
        let stranger = ip("198.51.100.9");
        assert_eq!(
            proxies.client_ip(stranger, &forwarded(&["203.0.113.7"])),
            stranger
        );
        assert_eq!(
            TrustedProxies::default().client_ip(lb, &forwarded(&["203.0.113.7"])),
            lb
        );
        // through one proxy, or a chain of them; what the client prepended is not believed
        let cases: [(&[&str], &str); 8] = [
            (&["203.0.113.7"], "203.0.113.7"),
            (&["203.0.113.7, 10.0.0.9"], "203.0.113.7"),
            (&["6.6.6.6, 203.0.113.7, 10.0.0.9"], "203.0.113.7"),
            (&["6.6.6.6", "203.0.113.7, 10.0.0.9"], "203.0.113.7"),
            (&["203.0.113.7:41234"], "203.0.113.7"),
            (&["[2001:db8::1]:41234"], "2001:db8::1"),
            (&["::ffff:203.0.113.7"], "203.0.113.7"),
            // garbage: the last hop known for sure
            (&["203.0.113.7, unknown, 10.0.0.9"], "10.0.0.9"),
        ];
        for (lines, want) in cases {
            assert_eq!(
                proxies.client_ip(lb, &forwarded(lines)),
                ip(want),
                "{lines:?}"
            );
        }
        // no header, or only proxies in it: the nearest of them
        assert_eq!(proxies.client_ip(lb, &HeaderMap::new()), lb);
        assert_eq!(
            proxies.client_ip(lb, &forwarded(&["10.0.0.7"])),
            ip("10.0.0.7")
        );
        // an IPv4-mapped peer (a dual-stack listener) is the IPv4 address
        assert_eq!(
            proxies.client_ip(ip("::ffff:10.0.0.2"), &forwarded(&["203.0.113.7"])),
            ip("203.0.113.7")
        );
    }
}
