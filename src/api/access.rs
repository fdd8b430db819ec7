//! The access middleware in front of every authenticated route: per-IP refusal after repeated
//! failed logins, key authentication, and the per-key rate limit with its `RateLimit-*` headers
//! (on every answer, refused or not). The `Principal` it finds is handed to handlers through the
//! request extensions (`extract::Auth`). Failures become security events (aggregated, see
//! `audit::security`): invalid keys, scope denials, floods from one address, keys hammering
//! their limit.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::audit::AuditIdentity;
use super::extract::{client_ip, presented_key};
use crate::audit::security::Incident;
use crate::auth::Principal;
use crate::auth::rate_limit::Decision;
use crate::domain::security::{SecurityEventType, Severity};
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

/// Where a request came from, for security events. Only the address is rendered for every
/// request (it keys the failure limiter); the rest is kept as the request had it (cheap
/// clones) and turned into text only when an incident is recorded.
struct Origin {
    ip: String,
    user_agent: Option<HeaderValue>,
    method: Method,
    uri: Uri,
}

impl Origin {
    fn of(request: &Request) -> Self {
        Self {
            ip: client_ip(request).unwrap_or_default(),
            user_agent: request.headers().get(header::USER_AGENT).cloned(),
            method: request.method().clone(),
            uri: request.uri().clone(),
        }
    }

    fn incident<'a>(
        &'a self,
        event_type: SecurityEventType,
        severity: Severity,
        subject: &'a str,
        key_id: Option<&'a str>,
        requires_review: bool,
        reason: &str,
    ) -> Incident<'a> {
        Incident {
            event_type,
            severity,
            subject,
            key_id,
            ip: Some(&self.ip),
            user_agent: self.user_agent.as_ref().and_then(|v| v.to_str().ok()),
            requires_review,
            details: json!({
                "reason": reason,
                "method": self.method.as_str(),
                "path": self.uri.path(),
            }),
        }
    }
}

pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let origin = Origin::of(&request);
    // The failure limiter is this node's own, so its buckets are the addresses themselves.
    let failures = &origin.ip;
    let per_ip = state.access.failed_auth_per_minute;
    // Floods of bad keys are refused before any lookup.
    let peek = state
        .access
        .failure_limiter
        .check(failures, per_ip, false)
        .await;
    if !peek.allowed {
        state.security.record(origin.incident(
            SecurityEventType::SuspiciousActivity,
            Severity::High,
            "repeated-failed-authentication",
            None,
            true,
            "repeated failed authentication from one address",
        ));
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
                    .check(failures, per_ip, true)
                    .await;
                state.security.record(origin.incident(
                    SecurityEventType::FailedLogin,
                    Severity::Medium,
                    "invalid-key",
                    None,
                    false,
                    &error.message,
                ));
            }
            return error.into_response();
        }
    };
    let identity = AuditIdentity(principal.clone());
    let key_id = principal.key_label();
    let decision = match limit_for(&principal, state.access.default_rate_limit) {
        Some(limit) => {
            let d = state
                .access
                .limiter
                .check(&principal.rate_bucket, limit, true)
                .await;
            if !d.allowed {
                state.security.record(origin.incident(
                    SecurityEventType::SuspiciousActivity,
                    Severity::Medium,
                    key_id,
                    Some(key_id),
                    false,
                    "key over its rate limit",
                ));
                let mut response = too_many(
                    format!(
                        "rate limit of {limit} requests per minute exceeded; retry after {} s",
                        d.retry_after_secs
                    ),
                    &d,
                );
                response.extensions_mut().insert(identity);
                return response;
            }
            Some(d)
        }
        None => None,
    };
    request.extensions_mut().insert(principal.clone());
    let mut response = next.run(request).await;
    if response.status() == StatusCode::FORBIDDEN {
        let key_id = principal.key_label();
        state.security.record(origin.incident(
            SecurityEventType::PermissionDenied,
            Severity::Medium,
            key_id,
            Some(key_id),
            false,
            "the key lacks the scope or tenancy for this request",
        ));
    }
    if let Some(d) = decision {
        set_rate_headers(response.headers_mut(), &d);
    }
    response.extensions_mut().insert(identity);
    response
}
