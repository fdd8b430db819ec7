//! The HTTP API: one module per resource, each exporting its `router()`; this module merges them
//! and adds the cross-cutting layers (request ids, tracing, panics → JSON 500, JSON 404/405).
//!
//! Routes (DESIGN.md): `/v1/*`, the unversioned AUDITOR paths `/events`, `/health`, and the
//! seed-002 aliases under `/api/v1/*`.

mod access;
mod analytics;
mod api_events;
mod audit;
mod dashboard;
mod deliveries;
mod events;
pub(crate) mod export;
pub(crate) mod extract;
mod head_limits;
pub(crate) mod header_names;
mod health;
mod inbound;
mod ingest;
mod integrity;
mod keys;
mod live;
mod metrics;
pub mod openapi;
mod query_params;
mod security;
pub mod stream;
mod subscriptions;

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, Request, Uri, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::audit::AuditLog;
use crate::audit::security::SecurityRecorder;
use crate::auth::rate_limit::{MemoryRateLimiter, RateLimiter};
use crate::auth::{Authenticator, KeyService};
use crate::config::Limits;
use crate::domain::masking::MaskPolicy;
use crate::domain::time::truncate_for_message;
use crate::domain::type_policy::EventTypePolicy;
use crate::error::ApiError;
use crate::store::Store;

pub use extract::BodyMemory;

/// Everything a handler needs, shared by all requests. Cloned for every request and every
/// middleware, so it is one `Arc`: a clone is one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The shared services behind `AppState`.
pub struct Services {
    pub store: Arc<dyn Store>,
    pub auth: Arc<Authenticator>,
    pub keys: KeyService,
    pub limits: Limits,
    /// What the request bodies being read hold between them (`limits.body_memory_bytes`).
    pub body_memory: extract::BodyMemory,
    pub access: AccessLimits,
    /// `None` when `ANNALS_AUDIT_LOG=false`.
    pub audit: Option<AuditLog>,
    pub security: SecurityRecorder,
    pub mask: MaskPolicy,
    pub type_policy: EventTypePolicy,
    /// `ANNALS_AUDIT_BODIES`: keep masked request/response bodies in the audit log.
    pub audit_bodies: bool,
    /// `ANNALS_WEBHOOK_ALLOW_PRIVATE`: webhook URLs may name internal addresses.
    pub webhook_allow_private: bool,
    /// `GET /v1/stream`'s slots and stop signal.
    pub streams: stream::Streams,
    /// `ANNALS_WEBHOOK_RETRY_BASE_MS`: the first retry's delay (pulled deliveries use it too).
    pub webhook_retry_base: std::time::Duration,
    /// How long appends take (`/v1/analytics/processing-metrics`).
    pub latency: crate::ingest::latency::LatencyRecorder,
    /// The node's Prometheus metrics (`GET /metrics`).
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Signs the Merkle tree's checkpoints (`POST /v1/integrity/checkpoints`).
    pub signer: crate::integrity::checkpoint::Signer,
}

impl Services {
    /// Appends through the store, timing it for the processing metrics (a refused append is
    /// not counted).
    pub async fn append(
        &self,
        events: Vec<crate::domain::NewEvent>,
    ) -> Result<crate::store::AppendOutcome, crate::store::StoreError> {
        let client = events.first().map(|e| e.client_id.clone());
        let started = std::time::Instant::now();
        let outcome = self.store.append(events).await?;
        let took = started.elapsed();
        if let Some(client) = client {
            self.latency.record(&client, took);
        }
        self.telemetry.append(&outcome, took);
        Ok(outcome)
    }
}

/// Rate limits applied by the access layer.
#[derive(Clone)]
pub struct AccessLimits {
    /// Per-key limits (in memory, or shared through Redis).
    pub limiter: Arc<dyn RateLimiter>,
    /// Requests per minute for keys without their own limit.
    pub default_rate_limit: u32,
    /// Failed authentications per minute from one address before it is refused; counted per
    /// node, in memory, so a flood costs no round trip anywhere.
    pub failure_limiter: Arc<MemoryRateLimiter<Option<IpAddr>>>,
    pub failed_auth_per_minute: u32,
}

/// Responses smaller than this are not worth compressing.
const COMPRESS_ABOVE_BYTES: u16 = 1024;

/// The whole API. `extra` routes (none in production; the benchmark's no-op ceiling on the full
/// stack) go behind the same access and audit layers as the API's own.
pub fn router(state: AppState, extra: Router<AppState>) -> Router {
    let audit = audit::AuditLayer::new(state.clone());
    // Every layer given to a router wraps each route in one more boxed service, which axum
    // clones for every request; so the audit and access layers go on in one `route_layer`.
    let authenticated = extra
        .merge(events::router())
        .merge(api_events::router())
        .merge(export::router())
        .merge(keys::router())
        .merge(audit::router())
        .merge(security::router())
        .merge(subscriptions::router())
        .merge(deliveries::router())
        .merge(stream::router())
        .merge(inbound::router())
        .merge(analytics::router())
        .merge(integrity::router())
        .merge(metrics::router())
        .route_layer(
            ServiceBuilder::new()
                .layer(audit.clone())
                .layer(access::AccessLayer::new(state.clone())),
        );
    let public = health::router()
        .merge(inbound::public_router())
        .merge(live::router())
        .merge(dashboard::router())
        .merge(openapi::router())
        .route_layer(audit.clone());
    // Requests no route takes are recorded too: an unknown path, an unknown method.
    let routes = authenticated
        .merge(public)
        .fallback(not_found.layer(audit.clone()))
        .method_not_allowed_fallback(method_not_allowed.layer(audit));
    with_layers(routes.with_state(state))
}

/// JSON bodies for unknown paths (404) and methods (405), not audited: the benchmark's no-op
/// uses them as they are; `router` puts the same handlers behind the audit layer.
pub fn json_fallbacks<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// The stack every request passes through: request ids, the head limits, tracing, panic
/// catching, compression, and the headers every answer carries. Public so the benchmark's
/// no-op ceiling runs on exactly the same stack.
pub fn with_layers(routes: Router) -> Router {
    let request_id = header_names::REQUEST_ID.clone();
    routes
        .layer(
            ServiceBuilder::new()
                // Answers are per key (events, audit logs, a new key's secret): no cache may
                // keep one, nor a browser read a JSON answer as something else.
                .layer(SetResponseHeaderLayer::if_not_present(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                ))
                .layer(SetResponseHeaderLayer::if_not_present(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ))
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(
                    // The span names the path only: query strings can carry tokens.
                    TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                        let id = req
                            .headers()
                            .get(&header_names::REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                    }),
                )
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::internal("a handler panicked").into_response()
                }))
                // gzip answers for clients that accept them, once a body passes 1 KiB.
                .layer(CompressionLayer::new().compress_when(
                    DefaultPredicate::new().and(SizeAbove::new(COMPRESS_ABOVE_BYTES)),
                ))
                // gzip/deflate request bodies are inflated as a stream; the body-size limit is
                // applied to the inflated bytes by `extract::read_body`, which also refuses the
                // encodings passed through here.
                .layer(RequestDecompressionLayer::new().pass_through_unaccepted(true))
                .layer(head_limits::HeadLimitsLayer),
        )
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::not_found(format!(
        "there is no route for {method} {}",
        truncate_for_message(uri.path())
    ))
    .into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not allowed on {}",
            truncate_for_message(uri.path())
        ),
    )
    .into_response()
}
