//! The audit layer (every request becomes an audit record, rejected ones included) and
//! `GET /v1/audit/logs` (a client sees its own records, admin all; reading is itself audited).

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{MatchedPath, OriginalUri, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::FutureExt;
use tower::{Layer, Service};

use super::AppState;
use super::extract::{Auth, client_ip};
use super::query_params::{filter_text, paged_json, parse_bool, parse_id_listing, parse_pairs};
use crate::audit::bodies::{self, TeeBody};
use crate::auth::Principal;
use crate::domain::Timestamp;
use crate::domain::audit::{AuditQuery, AuditRecord, MAX_USER_AGENT, StoredAudit};
use crate::error::ApiError;
use crate::telemetry::Telemetry;

/// Who a request acted as, left in the response by the access layer for the audit record.
#[derive(Clone, Debug)]
pub struct AuditIdentity(pub Principal);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/audit/logs", get(list_logs))
        .route("/api/v1/audit/logs", get(list_logs))
}

/// The audit layer: every request through it becomes an audit record. Hand-written rather than
/// `from_fn`, which boxed every request's future and the service behind it (measured: that glue
/// alone cost about a tenth of a single-event ingest).
#[derive(Clone)]
pub struct AuditLayer {
    state: AppState,
}

impl AuditLayer {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audited<S>;

    fn layer(&self, inner: S) -> Audited<S> {
        Audited {
            inner,
            state: self.state.clone(),
        }
    }
}

/// A route behind the audit layer.
#[derive(Clone)]
pub struct Audited<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for Audited<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AuditFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if self.state.audit.is_none() {
            return AuditFuture::Plain {
                inner: self.inner.call(request),
                telemetry: self.state.telemetry.clone(),
            };
        }
        let mut unanswered = Unanswered {
            state: self.state.clone(),
            pending: Some(Pending::of(&request)),
        };
        if !self.state.audit_bodies {
            return AuditFuture::Recording {
                inner: self.inner.call(request),
                unanswered,
            };
        }
        // Keeping bodies reads the response asynchronously after the route has answered.
        let (parts, body) = request.into_parts();
        let (tee, seen) = TeeBody::new(body);
        let inner = self.inner.call(Request::from_parts(parts, Body::new(tee)));
        AuditFuture::WithBodies {
            future: Box::pin(async move {
                let Ok(response) = match AssertUnwindSafe(inner).catch_unwind().await {
                    Ok(answer) => answer,
                    Err(panic) => {
                        unanswered.panicked();
                        std::panic::resume_unwind(panic)
                    }
                };
                let state = &unanswered.state;
                let request_body = seen
                    .lock()
                    .ok()
                    .and_then(|c| bodies::render(&c, &state.mask));
                let path = unanswered.pending.as_ref().map_or("", |p| p.path.as_str());
                let (response, response_body) = keep_response_body(response, path, state).await;
                unanswered.answered(&response, request_body, response_body);
                Ok(response)
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// An audited request's answer: the route's, recorded once it is ready.
    #[project = AuditFutureProj]
    pub enum AuditFuture<F> {
        /// The audit log is off (`ANNALS_AUDIT_LOG=false`).
        Plain { #[pin] inner: F, telemetry: Arc<Telemetry> },
        Recording { #[pin] inner: F, unanswered: Unanswered },
        /// `ANNALS_AUDIT_BODIES`: the response body is read before the record is made.
        WithBodies { future: Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>> },
    }
}

impl<F> Future for AuditFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuditFutureProj::Plain { inner, telemetry } => {
                let answer = std::task::ready!(inner.poll(cx));
                if let Ok(response) = &answer {
                    telemetry.response(response.status());
                }
                Poll::Ready(answer)
            }
            AuditFutureProj::Recording { inner, unanswered } => {
                // A panic is recorded, then goes on its way to the panic layer outside.
                let polled = std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx)));
                let Ok(response) = match polled {
                    Ok(poll) => std::task::ready!(poll),
                    Err(panic) => {
                        unanswered.panicked();
                        std::panic::resume_unwind(panic)
                    }
                };
                unanswered.answered(&response, None, None);
                Poll::Ready(Ok(response))
            }
            AuditFutureProj::WithBodies { future } => future.as_mut().poll(cx),
        }
    }
}

/// A request's audit record until the route answers. If the request is dropped unanswered (the
/// client closed the connection first), it is recorded on drop with status 499, the status
/// proxies log for "client closed request", and no caller: whatever the route did (an event it
/// stored, say), the call itself stays on record. A route that panics is recorded as the 500
/// the panic layer answers (caught and re-raised here, as the drop comes only after the panic
/// layer has caught it).
pub struct Unanswered {
    state: AppState,
    pending: Option<Pending>,
}

impl Unanswered {
    fn answered(
        &mut self,
        response: &Response,
        request_body: Option<String>,
        response_body: Option<String>,
    ) {
        self.state.telemetry.response(response.status());
        self.record(|pending| pending.finish(response, request_body, response_body));
    }

    /// The route panicked: recorded as the 500 the panic layer outside answers.
    fn panicked(&mut self) {
        self.state
            .telemetry
            .response(StatusCode::INTERNAL_SERVER_ERROR);
        self.record(|pending| pending.abandoned(500));
    }

    /// Records the call once, however it ended.
    fn record(&mut self, make: impl FnOnce(Pending) -> AuditRecord) {
        if let (Some(pending), Some(audit)) = (self.pending.take(), &self.state.audit) {
            audit.record(make(pending));
        }
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        self.record(|pending| pending.abandoned(CLIENT_CLOSED_REQUEST));
    }
}

/// The status recorded for a request its client abandoned before the answer.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// What the audit record takes from the request, before the route answers.
pub struct Pending {
    started: Instant,
    at: Timestamp,
    method: String,
    path: String,
    route: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
}

impl Pending {
    fn of(request: &Request) -> Self {
        Self {
            started: Instant::now(),
            at: Timestamp::now(),
            method: request.method().as_str().to_owned(),
            path: request.uri().path().to_string(),
            route: request
                .extensions()
                .get::<MatchedPath>()
                .map(|m| m.as_str().to_string()),
            ip: client_ip(request).map(|ip| ip.to_string()),
            user_agent: header_text(request, &header::USER_AGENT),
            request_id: header_text(request, &super::header_names::REQUEST_ID),
        }
    }

    /// The record of a request dropped before its answer: who called is not known then (the
    /// access layer reports it with the answer).
    fn abandoned(self, status: u16) -> AuditRecord {
        self.record(None, status, None, None)
    }

    /// The record, with who the access layer found the caller to be.
    fn finish(
        self,
        response: &Response,
        request_body: Option<String>,
        response_body: Option<String>,
    ) -> AuditRecord {
        let identity = response.extensions().get::<AuditIdentity>();
        self.record(
            identity,
            response.status().as_u16(),
            request_body,
            response_body,
        )
    }

    fn record(
        self,
        identity: Option<&AuditIdentity>,
        status: u16,
        request_body: Option<String>,
        response_body: Option<String>,
    ) -> AuditRecord {
        AuditRecord {
            at: self.at,
            client_id: identity.map(|i| i.0.client_id.to_string()),
            key_id: identity.and_then(|i| i.0.key_id.clone()),
            method: self.method,
            route: self.route,
            path: self.path,
            status,
            latency_us: self.started.elapsed().as_micros() as i64,
            ip: self.ip,
            user_agent: self.user_agent,
            request_id: self.request_id,
            request_body,
            response_body,
        }
    }
}

/// The response body as the audit log keeps it (masked JSON, or a description), and the
/// response to send on. Key management answers are never kept: they carry new keys.
async fn keep_response_body(
    response: Response,
    path: &str,
    state: &AppState,
) -> (Response, Option<String>) {
    if path.starts_with("/v1/keys") || path.starts_with("/api/v1/keys") {
        return (
            response,
            Some(String::from("[key management answer: not kept]")),
        );
    }
    let size = response.body().size_hint().exact();
    match size {
        Some(0) => (response, None),
        Some(n) if n as usize <= bodies::CAPTURE_LIMIT => {
            let (parts, body) = response.into_parts();
            match axum::body::to_bytes(body, bodies::CAPTURE_LIMIT).await {
                Ok(bytes) => {
                    let kept = bodies::render(
                        &bodies::Captured {
                            prefix: bytes.to_vec(),
                            total: bytes.len(),
                        },
                        &state.mask,
                    );
                    (Response::from_parts(parts, Body::from(bytes)), kept)
                }
                Err(e) => {
                    let error =
                        ApiError::internal(format!("reading a response for the audit log: {e}"));
                    (error.into_response(), None)
                }
            }
        }
        Some(n) => (
            response,
            Some(format!("[{n} bytes: too large to mask, not kept]")),
        ),
        None => (response, Some(String::from("[streamed: not kept]"))),
    }
}

fn header_text(request: &Request, name: &header::HeaderName) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        // `to_str` accepts visible ASCII only, so any byte is a char boundary.
        .map(|v| v[..v.len().min(MAX_USER_AGENT)].to_string())
}

async fn list_logs(
    State(state): State<AppState>,
    Auth(principal): Auth,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = parse_pairs(raw.as_deref())?;
    let mut query = AuditQuery::default();
    let (page, requested) = parse_id_listing(
        &pairs,
        "endpoint (a path, or failed), method, status, failed",
        |name, value| match name {
            // Seed 002's way to list failed calls; no path is called "failed".
            "endpoint" if value == "failed" => {
                query.failed = true;
                Some(Ok(()))
            }
            "endpoint" => Some(filter_text(value).map(|e| query.endpoint = Some(e))),
            "failed" => Some(parse_bool(value).map(|b| query.failed = b)),
            "method" => {
                Some(filter_text(value).map(|m| query.method = Some(m.to_ascii_uppercase())))
            }
            "status" => Some(match value.parse::<u16>() {
                Ok(s) if (100..=599).contains(&s) => {
                    query.status = Some(s);
                    Ok(())
                }
                _ => Err(String::from("must be an HTTP status from 100 to 599")),
            }),
            _ => None,
        },
    )?;
    query.page = page;
    query.client_id = principal.read_scope(requested)?;
    let limit = query.page.limit;
    let mut rows = state.store.query_audit(query).await?;
    Ok(paged_json(
        &mut rows,
        limit,
        uri.path(),
        &pairs,
        |r: &StoredAudit| r.id,
        StoredAudit::view,
    ))
}
