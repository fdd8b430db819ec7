//! The seed-000 view (DESIGN.md "Seed 000 view"): `POST /v1/api-events` (+ `/batch`),
//! `GET /v1/api-events` and `GET /v1/api-events/{id}` in the seed's camelCase shape. The events
//! live in the one event table (so they also appear in `/v1/events`); this view lists only the
//! events that came in as ApiEvents.

use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};

use super::AppState;
use super::events::{fetch_event, page_response};
use super::extract::Auth;
use super::ingest::{ingest_json, ingest_json_batch};
use super::query_params::{DEFAULT_LIMIT, decode_cursor, parse_limit, parse_order, parse_pairs};
use crate::domain::access::Scope;
use crate::domain::api_event::{self, EVENT_TYPES, STATUSES, parse_api_event, render_api_event};
use crate::domain::{ClientId, EventFormat, FieldError, Timestamp, TopicPattern};
use crate::error::ApiError;
use crate::store::EventQuery;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/api-events", post(create).get(list))
        .route("/v1/api-events/batch", post(create_batch))
        .route("/v1/api-events/{id}", get(get_one))
        .route("/api/v1/api-events", post(create).get(list))
        .route("/api/v1/api-events/batch", post(create_batch))
        .route("/api/v1/api-events/{id}", get(get_one))
}

async fn create(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsWrite)?;
    ingest_json(&state, &principal, &headers, body, parse_api_event).await
}

/// `{"events": [ApiEvent, …]}` or a bare array, all-or-nothing like every batch.
async fn create_batch(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsWrite)?;
    ingest_json_batch(&state, &principal, &headers, body, true, parse_api_event).await
}

const FILTERS: &str = "correlationId, sourceSystem, eventType, status, from, to, limit, order, \
cursor, client_id (admin)";

/// The listing's query string: the seed's camelCase filters plus paging.
fn parse_query(pairs: &[(String, String)]) -> Result<(EventQuery, Option<ClientId>), ApiError> {
    let mut q = EventQuery {
        limit: DEFAULT_LIMIT,
        format: Some(EventFormat::ApiEvent),
        ..Default::default()
    };
    let mut client = None;
    let mut errors = Vec::new();
    let enumerated = |value: &str, allowed: &[&str]| {
        if allowed.contains(&value) {
            Ok(value.to_string())
        } else {
            Err(format!("must be one of {}", allowed.join(", ")))
        }
    };
    let mut seen = std::collections::HashSet::new();
    for (name, value) in pairs {
        if !seen.insert(name.as_str()) {
            errors.push(FieldError::new(name, "is given more than once"));
            continue;
        }
        let result: Result<(), String> = match name.as_str() {
            "correlationId" => uuid::Uuid::parse_str(value)
                .map(|id| q.correlation_id = Some(id.to_string()))
                .map_err(|_| String::from("must be a UUID")),
            "sourceSystem" => {
                q.source = Some(value.clone());
                Ok(())
            }
            "eventType" => enumerated(value, &EVENT_TYPES)
                .and_then(|t| TopicPattern::parse(&t))
                .map(|t| q.event_type = Some(t)),
            "status" => enumerated(value, &STATUSES).map(|s| q.status = Some(s)),
            "from" => Timestamp::parse_bound(value).map(|t| q.from = Some(t)),
            "to" => Timestamp::parse_bound(value).map(|t| q.to = Some(t)),
            "limit" => parse_limit(value).map(|n| q.limit = n),
            "order" => parse_order(value).map(|o| q.order = o),
            "cursor" => decode_cursor(value).map(|s| q.after_seq = Some(s)),
            "client_id" => ClientId::parse(value).map(|c| client = Some(c)),
            _ => Err(format!("unknown parameter; the filters are {FILTERS}")),
        };
        if let Err(message) = result {
            errors.push(FieldError::new(name, message));
        }
    }
    if let (Some(from), Some(to)) = (q.from, q.to)
        && from >= to
    {
        errors.push(FieldError::new("to", "must be later than from"));
    }
    if errors.is_empty() {
        Ok((q, client))
    } else {
        Err(ApiError::invalid_fields(errors))
    }
}

async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsRead)?;
    let pairs = parse_pairs(raw.as_deref())?;
    let (mut query, requested_client) = parse_query(&pairs)?;
    query.client_id = principal.read_scope(requested_client)?;
    let page = state.store.query_events(query).await?;
    let events: Vec<_> = page.events.iter().map(render_api_event).collect();
    page_response(&events, "application/json", page.next_after, &uri, &pairs)
}

async fn get_one(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let event = fetch_event(&state, &principal, &id, |e| {
        e.format == EventFormat::ApiEvent
    })
    .await?;
    Ok(Json(api_event::render_api_event(&event)).into_response())
}
