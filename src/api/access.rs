//! The access middleware in front of every authenticated route: per-IP refusal after repeated
//! failed logins, key authentication, and the per-key rate limit with its `RateLimit-*` headers
//! (on every answer, refused or not). The `Principal` it finds is handed to handlers through the
//! request extensions (`extract::Auth`).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::audit::AuditIdentity;
use super::extract::presented_key;
use crate::auth::Principal;
use crate::auth::rate_limit::Decision;
use crate::error::ApiError;

fn set_rate_headers(headers: &mut HeaderMap, d: &Decision) {
    headers.insert("ratelimit-limit", HeaderValue::from(d.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(d.reset_secs));
}

fn too_many(message: String, d: &Decision) -> Response {
    let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
    error.retry_after_secs = Some(d.retry_after_secs);
    let mut response = error.into_response();
    set_rate_headers(response.headers_mut(), d);
    response
}

/// The requests per minute `principal` may make, or `None` for no limit (the static key when
/// `ANNALS_RATE_LIMIT_PER_MINUTE` is unset).
fn limit_for(principal: &Principal, default: u32) -> Option<u32> {
    match (&principal.key_id, principal.rate_limit) {
        (None, limit) => limit,
        (Some(_), Some(limit)) => Some(limit),
        (Some(_), None) => Some(default),
    }
}

pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let failures = format!("auth-failures:{ip}");
    let per_ip = state.access.failed_auth_per_minute;
    // Floods of bad keys are refused before any lookup.
    let peek = state
        .access
        .failure_limiter
        .check(&failures, per_ip, false)
        .await;
    if !peek.allowed {
        return too_many(
            format!(
                "too many failed authentications from this address; retry after {} s",
                peek.retry_after_secs
            ),
            &peek,
        );
    }
    let principal = match state
        .auth
        .authenticate(presented_key(request.headers()))
        .await
    {
        Ok(p) => p,
        Err(error) => {
            if error.status == StatusCode::UNAUTHORIZED {
                state
                    .access
                    .failure_limiter
                    .check(&failures, per_ip, true)
                    .await;
            }
            return error.into_response();
        }
    };
    let identity = AuditIdentity {
        client_id: principal.client_id.to_string(),
        key_id: principal.key_id.clone(),
    };
    let decision = match limit_for(&principal, state.access.default_rate_limit) {
        Some(limit) => {
            let bucket = format!("key:{}", principal.key_id.as_deref().unwrap_or("static"));
            let d = state.access.limiter.check(&bucket, limit, true).await;
            if !d.allowed {
                return too_many(
                    format!(
                        "rate limit of {limit} requests per minute exceeded; retry after {} s",
                        d.retry_after_secs
                    ),
                    &d,
                );
            }
            Some(d)
        }
        None => None,
    };
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    if let Some(d) = decision {
        set_rate_headers(response.headers_mut(), &d);
    }
    response.extensions_mut().insert(identity);
    response
}
