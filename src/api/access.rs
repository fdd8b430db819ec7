//! The access layer in front of every authenticated route: per-IP refusal after repeated
//! failed logins, key authentication, and the per-key rate limit with its `RateLimit-*` headers
//! (on every answer, refused or not). The `Principal` it finds is handed to handlers through the
//! request extensions (`extract::Auth`). Failures become security events (aggregated, see
//! `audit::security`): invalid keys, scope denials, floods from one address, keys hammering
//! their limit.

use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower::{Layer, Service};

use super::AppState;
use super::audit::AuditIdentity;
use super::extract::{client_ip, presented_key};
use super::header_names::{RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_RESET};
use crate::audit::security::Incident;
use crate::auth::Principal;
use crate::auth::rate_limit::Decision;
use crate::domain::security::{SecurityEventType, Severity};
use crate::error::ApiError;

fn set_rate_headers(headers: &mut HeaderMap, d: &Decision) {
    headers.insert(&RATELIMIT_LIMIT, HeaderValue::from(d.limit));
    headers.insert(&RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
    headers.insert(&RATELIMIT_RESET, HeaderValue::from(d.reset_secs));
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

/// Where a request came from, for security events: kept as the request had it (the address,
/// cheap clones of the rest) and turned into text only when an incident is recorded.
struct Origin {
    ip: Option<IpAddr>,
    user_agent: Option<HeaderValue>,
    method: Method,
    uri: Uri,
}

impl Origin {
    fn of(request: &Request) -> Self {
        Self {
            ip: client_ip(request),
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
            ip: self.ip,
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

/// The access layer in front of every authenticated route. Hand-written rather than `from_fn`,
/// which boxed every request's future and cloned the route behind it: when the key is the
/// static one or cached and the per-key limiter is in this process, the whole check is made in
/// `call` and the route's own future is returned, wrapped but not boxed. Only a check that has
/// to wait (a key read from the store, counters in Redis) runs in a boxed future.
#[derive(Clone)]
pub struct AccessLayer {
    state: AppState,
}

impl AccessLayer {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            state: self.state.clone(),
        }
    }
}

/// A route behind the access layer.
#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for Access<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AccessFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let state = &self.state;
        let origin = Origin::of(&request);
        if let Some(refused) = refuse_flood(state, &origin) {
            return AccessFuture::answered(refused);
        }
        let principal = match state
            .auth
            .authenticate_now(presented_key(request.headers()))
        {
            Some(Ok(principal)) => principal,
            Some(Err(error)) => return AccessFuture::answered(refuse_key(state, &origin, error)),
            None => return self.wait(origin, request, None),
        };
        let checked = match limit_for(&principal, state.access.default_rate_limit) {
            None => None,
            Some(limit) => match state
                .access
                .limiter
                .check_now(&principal.rate_bucket, limit, true)
            {
                Some(d) => Some((limit, d)),
                None => return self.wait(origin, request, Some(principal)),
            },
        };
        match admit(state, origin, principal, checked, &mut request) {
            Admission::Refused(refused) => AccessFuture::answered(refused),
            Admission::Admitted(admitted) => AccessFuture::Admitted {
                inner: self.inner.call(request),
                admitted: Some(admitted),
            },
        }
    }
}

impl<S> Access<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    /// The same check as `call`, for when it has to wait: `known` is the caller when the key
    /// has been verified already. The route that was made ready goes with the future; this
    /// service keeps a clone.
    fn wait(
        &mut self,
        origin: Origin,
        mut request: Request,
        known: Option<Principal>,
    ) -> AccessFuture<S::Future> {
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let state = self.state.clone();
        AccessFuture::Waiting {
            future: Box::pin(async move {
                let principal = match known {
                    Some(principal) => principal,
                    None => match state
                        .auth
                        .authenticate(presented_key(request.headers()))
                        .await
                    {
                        Ok(principal) => principal,
                        Err(error) => return Ok(refuse_key(&state, &origin, error)),
                    },
                };
                let checked = match limit_for(&principal, state.access.default_rate_limit) {
                    None => None,
                    Some(limit) => {
                        let bucket = &principal.rate_bucket;
                        Some((limit, state.access.limiter.check(bucket, limit, true).await))
                    }
                };
                let admitted = match admit(&state, origin, principal, checked, &mut request) {
                    Admission::Refused(refused) => return Ok(refused),
                    Admission::Admitted(admitted) => admitted,
                };
                let Ok(mut response) = inner.call(request).await;
                admitted.finish(&mut response);
                Ok(response)
            }),
        }
    }
}

/// Whose failures count together: an IPv4 address, or an IPv6 address's /64 (one host or
/// site usually holds a whole /64, and rotating through it must not reset the count).
pub(super) fn failure_bucket(ip: Option<IpAddr>) -> Option<IpAddr> {
    match ip? {
        IpAddr::V6(v6) => Some(IpAddr::V6(ipnet::Ipv6Net::new_assert(v6, 64).network())),
        v4 => Some(v4),
    }
}

/// Floods of bad keys from one address are refused before any lookup.
fn refuse_flood(state: &AppState, origin: &Origin) -> Option<Response> {
    // The failure limiter is this node's own, so its buckets are the addresses themselves.
    let peek = state.access.failure_limiter.check_local(
        &failure_bucket(origin.ip),
        state.access.failed_auth_per_minute,
        false,
    );
    if peek.allowed {
        return None;
    }
    state.security.record(origin.incident(
        SecurityEventType::SuspiciousActivity,
        Severity::High,
        "repeated-failed-authentication",
        None,
        true,
        "repeated failed authentication from one address",
    ));
    Some(too_many(
        format!(
            "too many failed authentications from this address; retry after {} s",
            peek.retry_after_secs
        ),
        &peek,
    ))
}

/// The answer to a key that did not authenticate; a wrong or missing key counts against its
/// address.
fn refuse_key(state: &AppState, origin: &Origin, error: ApiError) -> Response {
    if error.status == StatusCode::UNAUTHORIZED {
        state.access.failure_limiter.check_local(
            &failure_bucket(origin.ip),
            state.access.failed_auth_per_minute,
            true,
        );
        state.security.record(origin.incident(
            SecurityEventType::FailedLogin,
            Severity::Medium,
            "invalid-key",
            None,
            false,
            &error.message,
        ));
    }
    error.into_response()
}

/// What the access check made of a request whose key authenticated.
enum Admission {
    /// Let through: the caller is in the request, and the answer gets `Admitted::finish`.
    Admitted(Admitted),
    /// Over its key's limit: the 429.
    Refused(Response),
}

/// Lets a request with a verified key through, or refuses it over its key's limit. `checked`
/// is the key's limit with the limiter's decision; `None` for a key without a limit.
fn admit(
    state: &AppState,
    origin: Origin,
    principal: Principal,
    checked: Option<(u32, Decision)>,
    request: &mut Request,
) -> Admission {
    let Some((limit, d)) = checked.filter(|(_, d)| !d.allowed) else {
        request.extensions_mut().insert(principal.clone());
        return Admission::Admitted(Admitted {
            state: state.clone(),
            origin,
            principal,
            decision: checked.map(|(_, d)| d),
        });
    };
    Admission::Refused(over_limit(state, &origin, principal, limit, &d))
}

/// The 429 for a key over its limit, recorded as a security event.
fn over_limit(
    state: &AppState,
    origin: &Origin,
    principal: Principal,
    limit: u32,
    d: &Decision,
) -> Response {
    let key_id = principal.key_label();
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
        d,
    );
    response.extensions_mut().insert(AuditIdentity(principal));
    response
}

/// The access check for a caller whose key may come after the request: a WebSocket's first
/// message (browsers can't set headers on one). The same flood refusal, key check, failure
/// counting and rate limit as the layer; a refusal is the answer the layer would give.
pub(super) struct Gate {
    state: AppState,
    origin: Origin,
}

impl Gate {
    pub(super) fn of(state: &AppState, request: &Request) -> Self {
        Self {
            state: state.clone(),
            origin: Origin::of(request),
        }
    }

    pub(super) async fn admit(&self, presented: Option<&str>) -> Result<Principal, Response> {
        let state = &self.state;
        if let Some(refused) = refuse_flood(state, &self.origin) {
            return Err(refused);
        }
        let principal = match state.auth.authenticate(presented).await {
            Ok(principal) => principal,
            Err(error) => return Err(refuse_key(state, &self.origin, error)),
        };
        if let Some(limit) = limit_for(&principal, state.access.default_rate_limit) {
            let d = state
                .access
                .limiter
                .check(&principal.rate_bucket, limit, true)
                .await;
            if !d.allowed {
                return Err(over_limit(state, &self.origin, principal, limit, &d));
            }
        }
        Ok(principal)
    }
}

/// A request let through to its route, and what its answer gets afterwards.
struct Admitted {
    state: AppState,
    origin: Origin,
    principal: Principal,
    decision: Option<Decision>,
}

impl Admitted {
    /// A 403 from the route is a security event; the answer carries the rate-limit headers and
    /// the caller for the audit record.
    fn finish(self, response: &mut Response) {
        if response.status() == StatusCode::FORBIDDEN {
            let key_id = self.principal.key_label();
            self.state.security.record(self.origin.incident(
                SecurityEventType::PermissionDenied,
                Severity::Medium,
                key_id,
                Some(key_id),
                false,
                "the key lacks the scope or tenancy for this request",
            ));
        }
        if let Some(d) = &self.decision {
            set_rate_headers(response.headers_mut(), d);
        }
        response
            .extensions_mut()
            .insert(AuditIdentity(self.principal));
    }
}

pin_project_lite::pin_project! {
    /// A request's answer through the access layer.
    #[project = AccessFutureProj]
    pub enum AccessFuture<F> {
        /// Checked in `call`: the route's future.
        Admitted { #[pin] inner: F, admitted: Option<Admitted> },
        /// Refused in `call`.
        Answered { response: Option<Response> },
        /// The check had to wait (`Access::wait`).
        Waiting { future: Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>> },
    }
}

impl<F> AccessFuture<F> {
    fn answered(response: Response) -> Self {
        Self::Answered {
            response: Some(response),
        }
    }
}

impl<F> Future for AccessFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AccessFutureProj::Admitted { inner, admitted } => {
                let Ok(mut response) = std::task::ready!(inner.poll(cx));
                if let Some(admitted) = admitted.take() {
                    admitted.finish(&mut response);
                }
                Poll::Ready(Ok(response))
            }
            AccessFutureProj::Answered { response } => Poll::Ready(Ok(response
                .take()
                .expect("an answered access future is polled once"))),
            AccessFutureProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_per_ipv4_address_and_per_ipv6_64() {
        let bucket = |text: &str| failure_bucket(Some(text.parse().unwrap()));
        assert_eq!(bucket("203.0.113.7"), bucket("203.0.113.7"));
        assert_ne!(bucket("203.0.113.7"), bucket("203.0.113.8"));
        assert_eq!(
            bucket("2001:db8:1:2::1"),
            bucket("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_eq!(
            bucket("2001:db8:1:2::1"),
            Some("2001:db8:1:2::".parse().unwrap())
        );
        assert_ne!(bucket("2001:db8:1:2::1"), bucket("2001:db8:1:3::1"));
        assert_eq!(failure_bucket(None), None);
    }
}
