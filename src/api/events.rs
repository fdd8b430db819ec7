//! Events: ingest (`POST /v1/events`, `/events`, `/v1/events/batch`, seed-002 aliases) and reads
//! (`GET /v1/events`, `/events`, `/v1/events/{id}`).

use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::extract::{Auth, read_json};
use super::query_params::{next_link, parse_list_params, parse_pairs};
use crate::auth::Principal;
use crate::domain::access::Scope;
use crate::domain::envelope::EnvelopeRules;
use crate::domain::{FieldError, NewEvent, parse_event};
use crate::error::ApiError;
use crate::store::AppendOutcome;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/events", post(create_event).get(list_events))
        .route("/events", post(create_event).get(list_events))
        .route("/v1/events/batch", post(create_batch))
        .route("/v1/events/{id}", get(get_event))
        .route("/api/v1/events/ingest", post(create_event))
        .route("/api/v1/events/batch", post(create_batch))
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/{id}", get(get_event))
}

fn envelope_limits(state: &AppState) -> EnvelopeRules<'_> {
    EnvelopeRules {
        max_event_bytes: state.limits.max_event_bytes,
        mask: &state.mask,
    }
}

fn check_client(principal: &Principal, event: &NewEvent) -> Result<(), ApiError> {
    if principal.may_write_for(&event.client_id) {
        Ok(())
    } else {
        Err(
            ApiError::forbidden("only an admin key may write events for another client")
                .with_field("client_id"),
        )
    }
}

async fn create_event(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsWrite)?;
    let value = read_json(&headers, body, state.limits.max_body_bytes).await?;
    let event = parse_event(value, &principal.client_id, &envelope_limits(&state))
        .map_err(ApiError::from_rejected)?;
    check_client(&principal, &event)?;
    match state.store.append(vec![event]).await? {
        AppendOutcome::Stored(items) => {
            let item = &items[0];
            Ok(if item.duplicate {
                (
                    StatusCode::OK,
                    Json(json!({"message": "Event already recorded", "id": item.id, "duplicate": true})),
                )
                    .into_response()
            } else {
                (
                    StatusCode::CREATED,
                    Json(json!({"message": "Event recorded", "id": item.id})),
                )
                    .into_response()
            })
        }
        AppendOutcome::Conflict(_) => Err(ApiError::conflict(
            "an event with this event_id (and source) was already recorded with different content",
        )
        .with_field("event_id")),
    }
}

async fn create_batch(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsWrite)?;
    let value = read_json(&headers, body, state.limits.max_body_bytes).await?;
    let items = match value {
        Value::Object(mut obj) => match obj.remove("events") {
            Some(Value::Array(items)) => {
                if let Some(other) = obj.keys().next() {
                    return Err(ApiError::invalid(
                        other.clone(),
                        "unknown field; a batch is {\"events\": [...]}",
                    ));
                }
                items
            }
            Some(_) => return Err(ApiError::invalid("events", "must be an array of events")),
            None => {
                return Err(ApiError::invalid(
                    "events",
                    "is required: send {\"events\": [...]}",
                ));
            }
        },
        _ => {
            return Err(ApiError::invalid(
                "",
                "a batch must be a JSON object {\"events\": [...]}",
            ));
        }
    };
    if items.is_empty() {
        return Err(ApiError::invalid("events", "must hold at least one event"));
    }
    if items.len() > state.limits.max_batch {
        return Err(ApiError::too_large(format!(
            "a batch may hold at most {} events (ANNALS_MAX_BATCH); this one has {}",
            state.limits.max_batch,
            items.len()
        ))
        .with_field("events"));
    }
    let limits = envelope_limits(&state);
    let mut events = Vec::with_capacity(items.len());
    let mut errors: Vec<FieldError> = Vec::new();
    let mut too_large = false;
    for (index, item) in items.into_iter().enumerate() {
        match parse_event(item, &principal.client_id, &limits) {
            Ok(event) if !principal.may_write_for(&event.client_id) => errors.push(FieldError {
                index: Some(index),
                ..FieldError::new(
                    "client_id",
                    "only an admin key may write events for another client",
                )
            }),
            Ok(event) => events.push(event),
            Err(rejected) => {
                too_large |= rejected.too_large;
                errors.extend(rejected.errors.into_iter().map(|e| FieldError {
                    index: Some(index),
                    ..e
                }));
            }
        }
    }
    if !errors.is_empty() {
        let mut error = ApiError::invalid_fields(errors);
        if too_large {
            error.status = StatusCode::PAYLOAD_TOO_LARGE;
            error.code = "payload_too_large";
        } else if error.errors.iter().all(|e| e.field == "client_id") {
            error.status = StatusCode::FORBIDDEN;
            error.code = "forbidden";
        }
        return Err(error);
    }
    match state.store.append(events).await? {
        AppendOutcome::Stored(items) => {
            let ids: Vec<Uuid> = items.iter().map(|i| i.id).collect();
            let duplicates: Vec<usize> = items
                .iter()
                .enumerate()
                .filter(|(_, i)| i.duplicate)
                .map(|(n, _)| n)
                .collect();
            Ok((
                StatusCode::CREATED,
                Json(json!({"message": "Events recorded", "ids": ids, "duplicates": duplicates})),
            )
                .into_response())
        }
        AppendOutcome::Conflict(indexes) => {
            let mut error = ApiError::conflict(format!(
                "{} event(s) reuse an event_id (and source) with different content; nothing was stored",
                indexes.len()
            ));
            error.errors = indexes
                .iter()
                .map(|&i| FieldError {
                    index: Some(i),
                    ..FieldError::new("event_id", "already recorded with different content")
                })
                .collect();
            error.field = indexes.first().map(|i| format!("events[{i}].event_id"));
            error.extra = Some(json!({"indexes": indexes}));
            Err(error)
        }
    }
}

async fn list_events(
    State(state): State<AppState>,
    Auth(principal): Auth,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsRead)?;
    let pairs = parse_pairs(raw.as_deref())?;
    let params = parse_list_params(&pairs)?;
    let mut query = params.query;
    query.client_id = principal.read_scope(params.requested_client)?;
    let page = state.store.query_events(query).await?;
    let body = serde_json::to_vec(&page.events).map_err(ApiError::internal)?;
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if let Some(after) = page.next_after
        && let Ok(link) = HeaderValue::from_str(&next_link(uri.path(), &pairs, after))
    {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

async fn get_event(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsRead)?;
    let not_found = || {
        ApiError::not_found(format!(
            "there is no event with id '{}'",
            crate::domain::time::truncate_for_message(&id)
        ))
    };
    let uuid = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let client = principal.read_scope(None)?;
    match state.store.get_event(client, uuid).await? {
        Some(event) => Ok(Json(event).into_response()),
        None => Err(not_found()),
    }
}
