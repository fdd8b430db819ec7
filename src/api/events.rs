//! Events: ingest (`POST /v1/events`, `/events`, `/v1/events/batch`, seed-002 aliases) in the
//! Annals envelope or as CloudEvents (structured, batch or binary mode, chosen by content type
//! and `ce-*` headers), and reads (`GET /v1/events`, `/events`, `/v1/events/{id}`) as envelopes
//! or, with `Accept: application/cloudevents+json`, as CloudEvents.

use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::Value;
use uuid::Uuid;

use super::AppState;
use super::extract::{Auth, content_type_essence, read_body, read_json, refused_json};
use super::ingest::{
    check_batch_size, envelope_rules, ingest_json, ingest_json_batch, parse_all, record_batch,
    record_one,
};
use super::query_params::{next_link, parse_list_params, parse_pairs};
use crate::auth::Principal;
use crate::domain::access::Scope;
use crate::domain::json_depth::{MAX_JSON_DEPTH, depth_exceeds};
use crate::domain::{StoredEvent, cloudevents, parse_event};
use crate::error::ApiError;

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

/// How a `POST /v1/events` body is to be read (CloudEvents HTTP binding, section 3).
enum WireMode {
    Envelope,
    CloudEvent,
    CloudEventBatch,
    CloudEventBinary,
}

fn wire_mode(headers: &HeaderMap) -> WireMode {
    match content_type_essence(headers).as_deref() {
        Some(cloudevents::STRUCTURED_TYPE) => WireMode::CloudEvent,
        Some(cloudevents::BATCH_TYPE) => WireMode::CloudEventBatch,
        _ if headers.contains_key(&super::header_names::CE_SPECVERSION) => {
            WireMode::CloudEventBinary
        }
        _ => WireMode::Envelope,
    }
}

async fn create_event(
    State(state): State<AppState>,
    Auth(principal): Auth,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsWrite)?;
    // The headers are borrowed from the request (a `HeaderMap` extractor copies them all).
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    match wire_mode(headers) {
        WireMode::Envelope => ingest_json(&state, &principal, headers, body, parse_event).await,
        WireMode::CloudEvent => {
            ingest_json(
                &state,
                &principal,
                headers,
                body,
                cloudevents::parse_structured,
            )
            .await
        }
        WireMode::CloudEventBatch => {
            create_cloudevent_batch(&state, &principal, headers, body).await
        }
        WireMode::CloudEventBinary => {
            let body = read_body(headers, body, state.body_limit()).await?;
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            if cloudevents::is_json_media_type(content_type)
                && depth_exceeds(&body.bytes, MAX_JSON_DEPTH)
            {
                return Err(ApiError::invalid(
                    "body",
                    format!("JSON is nested deeper than {MAX_JSON_DEPTH} levels"),
                ));
            }
            let structured = cloudevents::binary_to_structured(
                binary_attributes(headers)?,
                content_type,
                &body.bytes,
            )
            .map_err(|e| {
                refused_json(
                    e,
                    Some("body"),
                    "the body is declared as JSON but is not valid JSON",
                )
            })?;
            drop(body); // parsed: its memory is free for other requests
            let rules = envelope_rules(&state);
            let parsed = cloudevents::parse_structured(structured, &principal.client_id, &rules)
                .map_err(|mut rejected| {
                    for error in &mut rejected.errors {
                        error.field = cloudevents::binary_field_name(&error.field);
                    }
                    rejected
                });
            record_one(&state, &principal, parsed).await
        }
    }
}

/// The `ce-*` headers of a binary-mode message: names without the prefix, values
/// percent-decoded (the binding encodes non-printable and non-ASCII characters that way).
fn binary_attributes(headers: &HeaderMap) -> Result<Vec<(String, String)>, ApiError> {
    let mut attributes = Vec::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let bad = || {
            ApiError::invalid(
                name.as_str(),
                "is not a valid header value (percent-encoded UTF-8 expected)",
            )
        };
        let text = value.to_str().map_err(|_| bad())?;
        let decoded = percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map_err(|_| bad())?;
        attributes.push((attribute.to_string(), decoded.into_owned()));
    }
    Ok(attributes)
}

/// A CloudEvents batch (`application/cloudevents-batch+json`): a JSON array of structured
/// events, recorded all-or-nothing like an envelope batch. An empty array is allowed.
async fn create_cloudevent_batch(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let value = read_json(headers, body, state.body_limit()).await?;
    let Value::Array(items) = value else {
        return Err(ApiError::invalid(
            "",
            "a CloudEvents batch must be a JSON array of events",
        ));
    };
    check_batch_size(items.len(), state.limits.max_batch)?;
    let parsed = parse_all(state, principal, items, cloudevents::parse_structured);
    record_batch(state, principal, parsed).await
}

async fn create_batch(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsWrite)?;
    if let WireMode::CloudEventBatch = wire_mode(&headers) {
        return create_cloudevent_batch(&state, &principal, &headers, body).await;
    }
    ingest_json_batch(&state, &principal, &headers, body, false, parse_event).await
}

/// Does the client ask for CloudEvents (`Accept: application/cloudevents+json` or the batch
/// type)? Plain JSON stays the default.
fn wants_cloudevents(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(cloudevents::media_essence)
        .any(|v| v == cloudevents::STRUCTURED_TYPE || v == cloudevents::BATCH_TYPE)
}

/// A page of a listing as a JSON array (each event in the listing's shape) with `content_type`,
/// and the `Link: rel="next"` header when there is more.
pub(super) fn page_response<T: serde::Serialize>(
    items: &[T],
    content_type: &'static str,
    next_after: Option<i64>,
    uri: &Uri,
    pairs: &[(String, String)],
) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(items).map_err(ApiError::internal)?;
    let mut response = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response();
    if let Some(after) = next_after
        && let Ok(link) = HeaderValue::from_str(&next_link(uri.path(), pairs, after))
    {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

async fn list_events(
    State(state): State<AppState>,
    Auth(principal): Auth,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsRead)?;
    let pairs = parse_pairs(raw.as_deref())?;
    let params = parse_list_params(&pairs)?;
    let mut query = params.query;
    query.client_id = principal.read_scope(params.requested_client)?;
    let page = state.store.query_events(query).await?;
    if wants_cloudevents(&headers) {
        let events: Vec<Value> = page
            .events
            .iter()
            .map(cloudevents::render_cloudevent)
            .collect();
        page_response(
            &events,
            cloudevents::BATCH_TYPE,
            page.next_after,
            &uri,
            &pairs,
        )
    } else {
        page_response(
            &page.events,
            "application/json",
            page.next_after,
            &uri,
            &pairs,
        )
    }
}

/// One event the caller may read, or `404` (also for another client's event: its existence is
/// not revealed).
pub(super) async fn fetch_event(
    state: &AppState,
    principal: &Principal,
    id: &str,
    wanted: impl Fn(&StoredEvent) -> bool,
) -> Result<StoredEvent, ApiError> {
    principal.require(Scope::EventsRead)?;
    let not_found = || {
        ApiError::not_found(format!(
            "there is no event with id '{}'",
            crate::domain::time::truncate_for_message(id)
        ))
    };
    let uuid = Uuid::parse_str(id).map_err(|_| not_found())?;
    let client = principal.read_scope(None)?;
    match state.store.get_event(client, uuid).await? {
        Some(event) if wanted(&event) => Ok(event),
        _ => Err(not_found()),
    }
}

async fn get_event(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let event = fetch_event(&state, &principal, &id, |_| true).await?;
    if wants_cloudevents(&headers) {
        Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(cloudevents::STRUCTURED_TYPE),
            )],
            Json(cloudevents::render_cloudevent(&event)),
        )
            .into_response())
    } else {
        Ok(Json(event).into_response())
    }
}
