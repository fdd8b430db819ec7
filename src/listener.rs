//! The HTTP listener: accepts TCP connections and serves the router on each over HTTP/1.1, with
//! the time limits `axum::serve` leaves out.
//!
//! Invariants:
//! - A client has `read_timeout` to send a request's head, counted from when the connection opens
//!   or the previous answer was sent: a connection that sends nothing, or dribbles its headers
//!   (slowloris), or sits idle between keep-alive requests, is closed. Without a timer hyper
//!   applies no such limit at all, and every such connection would hold a socket and a task
//!   forever. (The body's own limit is in `api::extract::read_body`.)
//! - Every connection has `TCP_NODELAY`: answers are small and latency-bound, and Nagle's
//!   algorithm would hold a second small segment until the client's delayed ACK.
//! - On shutdown the listener stops accepting, idle connections are closed, and the call returns
//!   once every request in flight has been answered.
//! - An accept error (e.g. out of file descriptors) is logged and retried after a pause, never
//!   the end of the server.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long an accept error (out of file descriptors, say) pauses accepting.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `shutdown` resolves, then drains: the requests in flight are
/// answered before this returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let connections = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
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
        let service = app
            .clone()
            .map_request(move |request: Request<Incoming>| with_peer(request, remote));
        let connection = connections
            .watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::trace!(error = %e, %remote, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}

/// The request as axum takes it, with the caller's address for `ConnectInfo`.
fn with_peer(request: Request<Incoming>, remote: SocketAddr) -> Request<Body> {
    let mut request = request.map(Body::new);
    request.extensions_mut().insert(ConnectInfo(remote));
    request
}
