//! `GET /v1/health`, `/health`, `/api/v1/health`: is the store answering? No key needed.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/health", get(health))
        .route("/health", get(health))
        .route("/api/v1/health", get(health))
}

async fn health(State(state): State<AppState>) -> Response {
    let backend = state.store.backend();
    let version = env!("CARGO_PKG_VERSION");
    let rate_limits = state.access.limiter.scope();
    match state.store.health().await {
        Ok(()) => Json(json!({
            "status": "ok", "store": backend, "version": version, "rate_limits": rate_limits,
        }))
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::RETRY_AFTER, "1")],
                Json(json!({
                    "status": "unavailable", "store": backend, "version": version,
                    "rate_limits": rate_limits,
                    "error": "unavailable",
                    "message": "the event store can't take requests now (the server's log says why)",
                })),
            )
                .into_response()
        }
    }
}
