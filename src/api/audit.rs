//! The audit middleware (every request becomes an audit record, rejected ones included) and
//! `GET /v1/audit/logs` (a client sees its own records, admin all; reading is itself audited).

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, MatchedPath, OriginalUri, RawQuery, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::extract::Auth;
use super::query_params::{paged_json, parse_id_listing, parse_pairs};
use crate::audit::bodies::{self, TeeBody};
use crate::domain::Timestamp;
use crate::domain::audit::{AuditQuery, AuditRecord, MAX_USER_AGENT, StoredAudit};
use crate::error::ApiError;

/// Who a request acted as, left in the response by the access middleware for the audit record.
#[derive(Clone, Debug)]
pub struct AuditIdentity {
    pub client_id: String,
    pub key_id: Option<String>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/audit/logs", get(list_logs))
        .route("/api/v1/audit/logs", get(list_logs))
}

pub async fn record(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(audit) = state.audit.clone() else {
        return next.run(request).await;
    };
    let started = Instant::now();
    let at = Timestamp::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let user_agent = header_text(&request, header::USER_AGENT);
    let request_id = header_text(&request, header::HeaderName::from_static("x-request-id"));
    let mut request_seen = None;
    if state.audit_bodies {
        let (parts, body) = request.into_parts();
        let (tee, seen) = TeeBody::new(body);
        request = Request::from_parts(parts, Body::new(tee));
        request_seen = Some(seen);
    }
    let mut response = next.run(request).await;
    let (request_body, response_body) = match request_seen {
        None => (None, None),
        Some(seen) => {
            let request_body = seen
                .lock()
                .ok()
                .and_then(|c| bodies::render(&c, &state.mask));
            let response_body;
            (response, response_body) = keep_response_body(response, &path, &state).await;
            (request_body, response_body)
        }
    };
    let identity = response.extensions().get::<AuditIdentity>().cloned();
    audit.record(AuditRecord {
        at,
        client_id: identity.as_ref().map(|i| i.client_id.clone()),
        key_id: identity.and_then(|i| i.key_id),
        method,
        route,
        path,
        status: response.status().as_u16(),
        latency_us: started.elapsed().as_micros() as i64,
        ip,
        user_agent,
        request_id,
        request_body,
        response_body,
    });
    response
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

fn header_text(request: &Request, name: header::HeaderName) -> Option<String> {
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
    let (page, requested) =
        parse_id_listing(
            &pairs,
            "endpoint, method, status",
            |name, value| match name {
                "endpoint" => {
                    query.endpoint = Some(value.to_string());
                    Some(Ok(()))
                }
                "method" => {
                    query.method = Some(value.to_ascii_uppercase());
                    Some(Ok(()))
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
