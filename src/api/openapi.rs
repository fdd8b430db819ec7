//! `GET /openapi.json` (the API described as OpenAPI 3.1, built with utoipa's builders from
//! `OPERATIONS`) and `GET /docs` (a page that reads it, compiled in like the dashboard). Both
//! are public: they describe the API, not anyone's data.
//!
//! Invariant: every operation listed here is served (a test calls each one and checks that no
//! fallback answers it); bodies are described in words, as the handlers parse them field by
//! field rather than through schema types.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, Content, InfoBuilder, OpenApiBuilder, Paths, Required, ResponseBuilder,
};

use super::AppState;

/// One operation: method, path, tag, summary, the scope it needs (`None`: public), its query
/// parameters (name, meaning), what its JSON body holds, and its answers.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    tag: &'static str,
    summary: &'static str,
    scope: Option<&'static str>,
    query: &'static [(&'static str, &'static str)],
    body: Option<&'static str>,
    responses: &'static [(u16, &'static str)],
}

const LISTING: &[(&str, &str)] = &[
    (
        "event_type",
        "exact type or pattern (`*` one segment, `#` any number; write # as %23)",
    ),
    ("user_id", "only this user's events"),
    ("source", "only events from this source"),
    ("subject", "only events about this subject"),
    ("correlation_id", "only events of this correlation"),
    ("status", "only events with this status"),
    (
        "from",
        "RFC 3339 or date; inclusive lower bound on the event's time",
    ),
    ("to", "exclusive upper bound on the event's time"),
    ("client_id", "admins: one client's events (default: all)"),
    ("limit", "page size, 1–1000 (default 100)"),
    ("order", "desc (default) or asc"),
    ("cursor", "the next page's cursor, from the Link header"),
    (
        "data.<path>",
        "any other name filters on a data field: data.a.b=value",
    ),
];
const PAGE: &[(&str, &str)] = &[
    ("client_id", "admins: one client's rows"),
    ("from", "inclusive lower time bound"),
    ("to", "exclusive upper time bound"),
    ("limit", "page size, 1–1000"),
    ("cursor", "the next page's cursor"),
];
const READ: &[(u16, &str)] = &[
    (200, "the answer"),
    (401, "missing or invalid key"),
    (403, "the key lacks the scope, or names another client"),
    (422, "a bad parameter (named in `field`)"),
];
const ONE: &[(u16, &str)] = &[
    (200, "the answer"),
    (401, "missing or invalid key"),
    (403, "the key lacks the scope"),
    (404, "no such resource for this key"),
];
const WRITE: &[(u16, &str)] = &[
    (201, "created"),
    (400, "malformed JSON"),
    (401, "missing or invalid key"),
    (403, "the key lacks the scope"),
    (409, "conflicts with what is stored"),
    (413, "body too large"),
    (415, "not JSON"),
    (422, "invalid fields (each named)"),
];
const CHANGE: &[(u16, &str)] = &[
    (200, "changed"),
    (401, "missing or invalid key"),
    (403, "the key lacks the scope"),
    (404, "no such resource for this key"),
    (409, "not possible in its current state"),
    (422, "invalid fields"),
];
const INGEST: &[(u16, &str)] = &[
    (201, "stored (after a durable commit)"),
    (
        200,
        "a duplicate of a stored event: its id, `duplicate: true`",
    ),
    (400, "malformed JSON"),
    (401, "missing or invalid key"),
    (403, "the key lacks events:write or names another client"),
    (409, "the idempotency key was used for different content"),
    (413, "body too large"),
    (415, "unsupported content type"),
    (422, "invalid fields, each named"),
    (503, "the write queue is full; retry after Retry-After"),
];

macro_rules! op {
    ($method:literal $path:literal, $tag:literal, $summary:literal, $scope:expr, $query:expr, $body:expr, $responses:expr) => {
        Operation {
            method: $method,
            path: $path,
            tag: $tag,
            summary: $summary,
            scope: $scope,
            query: $query,
            body: $body,
            responses: $responses,
        }
    };
}

const W: Option<&str> = Some("events:write");
const R: Option<&str> = Some("events:read");
const A: Option<&str> = Some("admin");
const NONE: &[(&str, &str)] = &[];

pub const OPERATIONS: &[Operation] = &[
    op!("post" "/v1/events", "events", "Record an event (also POST /events, /api/v1/events/ingest; CloudEvents by content type)", W, NONE,
        Some("the envelope: event_type, data (or payload), user_id, source, subject, correlation_id, status, occurred_at, event_id (idempotency key), client_id (admins)"), INGEST),
    op!("get" "/v1/events", "events", "List events, newest first, with cursor paging (Link: rel=next)", R, LISTING, None, READ),
    op!("post" "/v1/events/batch", "events", "Record a batch, all or nothing", W, NONE,
        Some("{\"events\": [envelope, …]} up to ANNALS_MAX_BATCH; errors name each index"), INGEST),
    op!("get" "/v1/events/{id}", "events", "One event", R, NONE, None, ONE),
    op!("get" "/v1/events/export", "events", "Every matching event, streamed as NDJSON or CSV", R,
        &[("format", "ndjson (default) or csv"), ("event_type", "as in the listing; every listing filter applies")], None, READ),
    op!("post" "/v1/api-events", "api-events", "Record a seed-000 ApiEvent", W, NONE,
        Some("eventType, endpoint, method, statusCode, … (camelCase)"), INGEST),
    op!("get" "/v1/api-events", "api-events", "List ApiEvents", R, LISTING, None, READ),
    op!("post" "/v1/api-events/batch", "api-events", "Record ApiEvents, all or nothing", W, NONE, Some("an array of ApiEvents"), INGEST),
    op!("get" "/v1/api-events/{id}", "api-events", "One ApiEvent", R, NONE, None, ONE),
    op!("get" "/v1/stream", "events", "New events as Server-Sent Events, resumable with Last-Event-ID", R,
        &[("pattern", "type pattern (or event_type)"), ("after", "resume after this seq"), ("user_id", "and the listing's other filters")], None, READ),
    op!("get" "/v1/keys", "keys", "List API keys (never their secrets)", A, &[("client_id", "one client's keys")], None, READ),
    op!("post" "/v1/keys", "keys", "Create an API key; its secret is shown once", A, NONE,
        Some("client_id, name, scopes (events:write, events:read, admin), rate_limit, expires_at"), WRITE),
    op!("patch" "/v1/keys/{id}", "keys", "Change a key's name, scopes, limit, expiry or is_active", A, NONE,
        Some("any of name, scopes, rate_limit, is_active, expires_at"), CHANGE),
    op!("delete" "/v1/keys/{id}", "keys", "Delete a key", A, NONE, None, CHANGE),
    op!("get" "/v1/audit/logs", "audit", "The API-call audit log, newest first", A,
        &[("endpoint", "path, or failed: the calls answered with an error"), ("failed", "true: only calls answered with an error"), ("method", "HTTP method"), ("status", "HTTP status"), ("client_id", "one client's calls"), ("limit", "page size"), ("cursor", "next page")], None, READ),
    op!("get" "/v1/security-events", "security", "Security events (system ones for admins)", R,
        &[("event_type", "FAILED_LOGIN, PERMISSION_DENIED, …"), ("severity", "LOW…CRITICAL"), ("requires_review", "true or false"), ("from", "time bound"), ("to", "time bound"), ("limit", "page size"), ("cursor", "next page")], None, READ),
    op!("post" "/v1/security-events", "security", "Report your application's security event", W, NONE,
        Some("event_type, severity, user_id, ip_address, user_agent, event_details, requires_review, occurred_at"), WRITE),
    op!("post" "/v1/security-events/{id}/review", "security", "Mark a security event reviewed", R, NONE, None, CHANGE),
    op!("get" "/v1/subscriptions", "bus", "List subscriptions", R, &[("client_id", "admins: one client's")], None, READ),
    op!("post" "/v1/subscriptions", "bus", "Subscribe a webhook or a pull consumer to a topic pattern", R, NONE,
        Some("subscriber_name, topic_pattern, webhook_url or callback_method, is_active, subscription_config, max_retries (0–20), client_id (admins)"), WRITE),
    op!("get" "/v1/subscriptions/{id}", "bus", "One subscription", R, NONE, None, ONE),
    op!("patch" "/v1/subscriptions/{id}", "bus", "Change a subscription", R, NONE, Some("any field of the subscription"), CHANGE),
    op!("delete" "/v1/subscriptions/{id}", "bus", "Delete a subscription and its waiting deliveries", R, NONE, None, CHANGE),
    op!("post" "/v1/subscriptions/{id}/rotate-secret", "bus", "New signing secret; the old one signs too for 24 h", R, NONE, None, CHANGE),
    op!("post" "/v1/subscriptions/{id}/replay", "bus", "Queue deliveries of stored events again", R,
        &[("from", "time bound"), ("to", "time bound"), ("from_seq", "continue from this seq")], None, CHANGE),
    op!("post" "/v1/subscriptions/{id}/pull", "bus", "Lease due deliveries of a pull subscription", R,
        &[("limit", "1–1000"), ("lease_secs", "1–3600")], None, CHANGE),
    op!("get" "/v1/deliveries", "bus", "Deliveries; status=FAILED is the dead-letter queue", R,
        &[("status", "PENDING, PROCESSING, COMPLETED, FAILED"), ("subscription_id", "one subscription's"), ("client_id", "admins"), ("from", "time"), ("to", "time"), ("limit", "page size"), ("cursor", "next page")], None, READ),
    op!("get" "/v1/deliveries/{id}", "bus", "One delivery with its attempts", R, NONE, None, ONE),
    op!("post" "/v1/deliveries/{id}/retry", "bus", "Send a failed delivery again", R, NONE, None, CHANGE),
    op!("post" "/v1/deliveries/{id}/ack", "bus", "Finish a pulled delivery", R, NONE, Some("{\"success\": bool, \"error\": text}"), CHANGE),
    op!("get" "/v1/integration-logs", "bus", "The integration log", R, PAGE, None, READ),
    op!("post" "/v1/integration-logs", "bus", "Report a call of your own integration", W, NONE,
        Some("integration_name, operation, external_id, request_data, response_data, http_status_code, success, error_message, duration_ms"), WRITE),
    op!("get" "/v1/integrations", "bus", "Inbound webhook integrations", A, NONE, None, READ),
    op!("post" "/v1/integrations", "bus", "Create an inbound webhook integration", A, NONE,
        Some("name, client_id, verification (standard_webhooks | stripe | api_key), secret, event_type"), WRITE),
    op!("get" "/v1/integrations/{name}", "bus", "One integration", A, NONE, None, ONE),
    op!("delete" "/v1/integrations/{name}", "bus", "Delete an integration", A, NONE, None, CHANGE),
    op!("post" "/v1/inbound/{name}", "bus", "A third party's webhook, verified by the integration's scheme", None, NONE,
        Some("the sender's payload, signed"), &[(202, "verified and recorded"), (401, "signature or key refused"), (404, "no such integration"), (429, "too many failures from this address")]),
    op!("get" "/v1/analytics/events-by-type", "analytics", "Events per type, from the rollups", R,
        &[("from", "to the minute"), ("to", "to the minute"), ("source", "one source"), ("event_type", "type pattern"), ("limit", "types shown"), ("client_id", "admins")], None, READ),
    op!("get" "/v1/analytics/timeseries", "analytics", "A dense series of event counts", R,
        &[("interval", "minute, hour (default) or day"), ("from", "start"), ("to", "end"), ("group_by", "event_type, source or client_id (admins)"), ("event_type", "type pattern"), ("source", "one source"), ("client_id", "admins")], None, READ),
    op!("get" "/v1/analytics/processing-metrics", "analytics", "Append latency P50/P95/P99", R,
        &[("days", "1–366, default 7"), ("client_id", "admins")], None, READ),
    op!("get" "/v1/analytics/queue-status", "analytics", "Deliveries waiting and failed; admins also see the node's queues", R,
        &[("client_id", "admins")], None, READ),
    op!("get" "/v1/ws/metrics", "analytics", "Live metrics over a WebSocket (subscribe with client_id and, from browsers, api_key)", None, NONE, None,
        &[(101, "switching to WebSocket"), (400, "not a WebSocket request"), (401, "a key in the headers was refused")]),
    op!("get" "/v1/integrity/tree", "integrity", "The Merkle tree's size and head now (unsigned)", R, NONE, None, READ),
    op!("get" "/v1/integrity/checkpoints", "integrity", "Signed checkpoints, newest first", R,
        &[("before", "only tree sizes below this"), ("limit", "1–100, default 20")], None, READ),
    op!("get" "/v1/integrity/checkpoints/latest", "integrity", "The newest signed checkpoint", R, NONE, None, ONE),
    op!("post" "/v1/integrity/checkpoints", "integrity", "Add every committed event to the tree and sign its head now", A, NONE, None,
        &[(201, "signed"), (200, "the tree has not grown: the existing checkpoint"), (401, "missing or invalid key"), (403, "admin only"), (409, "no events yet")]),
    op!("get" "/v1/events/{id}/proof", "integrity", "The event's inclusion proof, with its canonical form", R,
        &[("tree_size", "the tree to prove against; default the newest checkpoint holding the event")], None,
        &[(200, "the proof"), (401, "missing or invalid key"), (403, "the key lacks the scope"), (404, "no such event for this key"), (422, "a bad tree_size")]),
    op!("get" "/v1/integrity/consistency", "integrity", "Proof that a larger tree extends a smaller one", R,
        &[("first", "the smaller tree size (required)"), ("second", "the larger; default the newest checkpoint")], None, READ),
    op!("get" "/v1/health", "operations", "Is the store answering (also /health)", None, NONE, None, &[(200, "ok"), (503, "the store can't take requests")]),
    op!("get" "/metrics", "operations", "Prometheus metrics of this node", A, NONE, None, READ),
    op!("get" "/openapi.json", "operations", "This document", None, NONE, None, &[(200, "OpenAPI 3.1")]),
];

fn method(name: &str) -> HttpMethod {
    match name {
        "post" => HttpMethod::Post,
        "patch" => HttpMethod::Patch,
        "delete" => HttpMethod::Delete,
        _ => HttpMethod::Get,
    }
}

/// The whole document, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut paths = Paths::new();
    for op in OPERATIONS {
        let mut b = OperationBuilder::new()
            .tag(op.tag)
            .summary(Some(op.summary))
            .operation_id(Some(format!("{} {}", op.method, op.path)));
        if let Some(scope) = op.scope {
            b = b
                .description(Some(format!("Needs a key with the `{scope}` scope.")))
                .security(SecurityRequirement::new("api_key", Vec::<String>::new()));
        }
        for segment in op.path.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                b = b.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True),
                );
            }
        }
        for (name, meaning) in op.query {
            b = b.parameter(
                ParameterBuilder::new()
                    .name(*name)
                    .parameter_in(ParameterIn::Query)
                    .description(Some(*meaning)),
            );
        }
        if let Some(body) = op.body {
            b = b.request_body(Some(
                RequestBodyBuilder::new()
                    .description(Some(body))
                    .content(
                        "application/json",
                        Content::new(None::<utoipa::openapi::Schema>),
                    )
                    .build(),
            ));
        }
        for (status, meaning) in op.responses {
            let mut response = ResponseBuilder::new().description(*meaning);
            if *status >= 400 {
                response = response.description(format!(
                    "{meaning}: {{\"error\", \"message\", \"field\"?, \"errors\"?}}"
                ));
            }
            b = b.response(status.to_string(), response.build());
        }
        paths.add_path_operation(op.path, vec![method(op.method)], b.build());
    }
    let mut key = ApiKeyValue::new("X-API-Key");
    key.description = Some(String::from("or Authorization: Bearer <key>"));
    let document = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Annals")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Records events for auditability, answers questions about them, and \
                     delivers them to subscribers. Every error is JSON: error, message, field.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(key)))
                .build(),
        ))
        .build();
    document.to_json().expect("the document serializes")
});

const PAGE_HTML: &str = include_str!("docs/index.html");
const SCRIPT: &str = include_str!("docs/docs.js");
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    DOCUMENT.as_str(),
                )
            }),
        )
        .route("/docs", get(|| file("text/html; charset=utf-8", PAGE_HTML)))
        .route(
            "/docs/docs.js",
            get(|| file("text/javascript; charset=utf-8", SCRIPT)),
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
