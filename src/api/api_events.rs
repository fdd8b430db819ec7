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
use super::query_params::{ListParams, parse_list_params, parse_pairs};
use crate::domain::access::Scope;
use crate::domain::api_event::{
    self, EVENT_TYPES, STATUSES, one_of, parse_api_event, render_api_event,
};
use crate::domain::{EventFormat, FieldError};
use crate::error::ApiError;

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

/// The seed's camelCase filter names and the listing parameters they stand for.
const RENAMED: [(&str, &str); 3] = [
    ("correlationId", "correlation_id"),
    ("sourceSystem", "source"),
    ("eventType", "event_type"),
];
/// Listing parameters that keep their names here.
const KEPT: [&str; 7] = [
    "status",
    "from",
    "to",
    "limit",
    "order",
    "cursor",
    "client_id",
];

/// The listing's query string: the seed's camelCase filters (checked against the seed's enums
/// and UUID rule) translated onto the event listing's own parameters, which
/// `parse_list_params` then parses; every error names the parameter as the client sent it.
fn parse_query(pairs: &[(String, String)]) -> Result<ListParams, ApiError> {
    let mut errors = Vec::new();
    let mut translated = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        let checked = match name.as_str() {
            "correlationId" => uuid::Uuid::parse_str(value)
                .map(|id| id.to_string())
                .map_err(|_| String::from("must be a UUID")),
            "eventType" => one_of(value, &EVENT_TYPES).map(|()| value.clone()),
            "status" => one_of(value, &STATUSES).map(|()| value.clone()),
            "sourceSystem" => Ok(value.clone()),
            other if KEPT.contains(&other) => Ok(value.clone()),
            _ => Err(format!("unknown parameter; the filters are {FILTERS}")),
        };
        match checked {
            Ok(value) => {
                let target = RENAMED
                    .iter()
                    .find(|(seed, _)| seed == name)
                    .map_or(name.as_str(), |(_, listing)| listing);
                translated.push((target.to_string(), value));
            }
            Err(message) => errors.push(FieldError::new(name, message)),
        }
    }
    let parsed = parse_list_params(&translated).map_err(|mut error| {
        for e in &mut error.errors {
            if let Some((seed, _)) = RENAMED.iter().find(|(_, listing)| *listing == e.field) {
                e.field = (*seed).to_string();
            }
        }
        error
    });
    match parsed {
        Ok(mut params) if errors.is_empty() => {
            params.query.format = Some(EventFormat::ApiEvent);
            Ok(params)
        }
        Ok(_) => Err(ApiError::invalid_fields(errors)),
        Err(error) => {
            errors.extend(error.errors.iter().cloned());
            Err(ApiError::invalid_fields(errors))
        }
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
    let params = parse_query(&pairs)?;
    let mut query = params.query;
    query.client_id = principal.read_scope(params.requested_client)?;
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
