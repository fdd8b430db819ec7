//! `GET /dashboard`: the live dashboard page (seed 002's "real-time dashboard"), served from
//! files compiled into the binary. It is public, but shows nothing without a key: its script
//! asks for one and reads everything through `/v1/ws/metrics` and `/v1/analytics/*`, with that
//! key's scope.
//!
//! Invariant: the page runs only its own script and styles and connects only to this server
//! (`Content-Security-Policy`), and no other site may frame it.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self' ws: wss:; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(|| file("text/html; charset=utf-8", PAGE)))
        .route(
            "/dashboard/app.js",
            get(|| file("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/dashboard/style.css",
            get(|| file("text/css; charset=utf-8", STYLE)),
        )
}

async fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
        ],
        body,
    )
}
