//! The one ingest path every wire format ends in (Annals envelope, seed-000 ApiEvent,
//! CloudEvents): the writer check (`client_id`), the event-type policy, the store append, and
//! the answer — `201`/`200 duplicate`/`409` for one event, the all-or-nothing batch answer for
//! many, with a `Warning` header when `ANNALS_EVENT_TYPE_POLICY=open` accepted a type that
//! breaks the convention.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::extract::read_json;
use crate::auth::Principal;
use crate::domain::envelope::{EnvelopeRules, Rejected};
use crate::domain::nul::NUL_MESSAGE;
use crate::domain::type_policy::Verdict;
use crate::domain::{ClientId, EventFormat, FieldError, NewEvent};
use crate::error::ApiError;
use crate::store::AppendOutcome;

/// The answer to one recorded event.
#[derive(Debug, Serialize)]
pub struct Recorded {
    pub message: &'static str,
    pub id: Uuid,
    /// `true` when an identical event was already stored; `id` is then the original's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// Why the event type breaks the naming convention (`open` policy), as in `Warning`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// A convention warning about one item of a batch.
#[derive(Debug, Serialize)]
pub struct ItemWarning {
    pub index: usize,
    pub field: &'static str,
    pub message: String,
}

/// The answer to a recorded batch: ids in request order, indexes already stored.
#[derive(Debug, Serialize)]
pub struct RecordedBatch {
    pub message: &'static str,
    pub ids: Vec<Uuid>,
    pub duplicates: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<ItemWarning>,
}

/// A parser from one request object to an event, for one wire format.
pub type ParseFn = fn(Value, &ClientId, &EnvelopeRules<'_>) -> Result<NewEvent, Rejected>;

pub fn envelope_rules(state: &AppState) -> EnvelopeRules<'_> {
    EnvelopeRules {
        max_event_bytes: state.limits.max_event_bytes,
        mask: &state.mask,
    }
}

const FOREIGN_CLIENT: &str = "only an admin key may write events for another client";

/// The name of the type field in the format the client used.
fn type_field(format: EventFormat) -> &'static str {
    match format {
        EventFormat::CloudEvent | EventFormat::CloudEventBase64 => "type",
        EventFormat::ApiEvent => "eventType",
        EventFormat::Annals => "event_type",
    }
}

/// The last word on one parsed event before it is queued: refused if it holds U+0000 (no
/// store keeps it), else the type policy's `Ok(Some(warning))` or refusal, as a field error.
fn judge(state: &AppState, event: &NewEvent) -> Result<Option<String>, FieldError> {
    if let Some(field) = event.nul_field() {
        return Err(FieldError::new(field, NUL_MESSAGE));
    }
    if event.format == EventFormat::ApiEvent {
        return Ok(None); // the seed's fixed REQUEST/RESPONSE/ERROR types
    }
    match state.type_policy.judge(event.event_type.as_str()) {
        Verdict::Accepted => Ok(None),
        Verdict::Warned(warning) => Ok(Some(warning)),
        Verdict::Refused(reason) => Err(FieldError::new(type_field(event.format), reason)),
    }
}

/// A `Warning` header value (RFC 9111 warn-code 299, "miscellaneous persistent warning").
fn warning_header(text: &str) -> Option<HeaderValue> {
    let quoted: String = text
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    HeaderValue::from_str(&format!("299 annals \"{quoted}\"")).ok()
}

fn with_warning(mut response: Response, warning: Option<&str>) -> Response {
    if let Some(value) = warning.and_then(warning_header) {
        response.headers_mut().insert(header::WARNING, value);
    }
    response
}

/// Records one parsed event and answers for it.
pub async fn record_one(
    state: &AppState,
    principal: &Principal,
    parsed: Result<NewEvent, Rejected>,
) -> Result<Response, ApiError> {
    let event = parsed.map_err(ApiError::from_rejected)?;
    if !principal.may_write_for(&event.client_id) {
        return Err(ApiError::forbidden(FOREIGN_CLIENT).with_field("client_id"));
    }
    let warning = judge(state, &event).map_err(|e| ApiError::invalid_fields(vec![e]))?;
    match state.append(vec![event]).await? {
        AppendOutcome::Stored(items) => {
            let item = &items[0];
            let (status, message) = if item.duplicate {
                (StatusCode::OK, "Event already recorded")
            } else {
                (StatusCode::CREATED, "Event recorded")
            };
            let header = warning.clone();
            let body = Recorded {
                message,
                id: item.id,
                duplicate: item.duplicate,
                warning,
            };
            Ok(with_warning(
                (status, Json(body)).into_response(),
                header.as_deref(),
            ))
        }
        AppendOutcome::Conflict(_) => Err(ApiError::conflict(
            "an event with this event_id (and source) was already recorded with different content",
        )
        .with_field("event_id")),
    }
}

/// Records a batch all-or-nothing: every invalid item is reported (`422`, or `413` if one is
/// too large, or `403` if the only problem is writing for another client), a conflicting
/// duplicate refuses the whole batch (`409`); otherwise `201` with the ids in request order.
pub async fn record_batch(
    state: &AppState,
    principal: &Principal,
    parsed: Vec<Result<NewEvent, Rejected>>,
) -> Result<Response, ApiError> {
    let mut events = Vec::with_capacity(parsed.len());
    let mut errors: Vec<FieldError> = Vec::new();
    let mut warnings: Vec<ItemWarning> = Vec::new();
    let mut too_large = false;
    let at = |index: usize, e: FieldError| FieldError {
        index: Some(index),
        ..e
    };
    for (index, result) in parsed.into_iter().enumerate() {
        match result {
            Ok(event) if !principal.may_write_for(&event.client_id) => {
                errors.push(at(index, FieldError::new("client_id", FOREIGN_CLIENT)));
            }
            Ok(event) => match judge(state, &event) {
                Ok(warning) => {
                    if let Some(message) = warning {
                        warnings.push(ItemWarning {
                            index,
                            field: type_field(event.format),
                            message,
                        });
                    }
                    events.push(event);
                }
                Err(e) => errors.push(at(index, e)),
            },
            Err(rejected) => {
                too_large |= rejected.too_large;
                errors.extend(rejected.errors.into_iter().map(|e| at(index, e)));
            }
        }
    }
    if !errors.is_empty() {
        let mut error = ApiError::invalid_fields(errors);
        if too_large {
            error.status = StatusCode::PAYLOAD_TOO_LARGE;
            error.code = "payload_too_large";
        } else if error.errors.iter().all(|e| e.message == FOREIGN_CLIENT) {
            error.status = StatusCode::FORBIDDEN;
            error.code = "forbidden";
        }
        return Err(error);
    }
    if events.is_empty() {
        // Only CloudEvents batches may be empty (the spec allows it); nothing to store.
        return Ok((
            StatusCode::OK,
            Json(RecordedBatch {
                message: "No events in the batch",
                ids: Vec::new(),
                duplicates: Vec::new(),
                warnings: Vec::new(),
            }),
        )
            .into_response());
    }
    match state.append(events).await? {
        AppendOutcome::Stored(items) => {
            let ids: Vec<Uuid> = items.iter().map(|i| i.id).collect();
            let duplicates: Vec<usize> = items
                .iter()
                .enumerate()
                .filter(|(_, i)| i.duplicate)
                .map(|(n, _)| n)
                .collect();
            let summary = match warnings.len() {
                0 => None,
                1 => Some(warnings[0].message.clone()),
                n => Some(format!(
                    "{n} event types do not follow <service>.<resource>.<verb_past_tense>; see warnings in the body"
                )),
            };
            let body = RecordedBatch {
                message: "Events recorded",
                ids,
                duplicates,
                warnings,
            };
            Ok(with_warning(
                (StatusCode::CREATED, Json(body)).into_response(),
                summary.as_deref(),
            ))
        }
        AppendOutcome::Conflict(indexes) => {
            let mut error = ApiError::conflict(format!(
                "{} event(s) reuse an event_id (and source) with different content; nothing was stored",
                indexes.len()
            ));
            error.errors = indexes
                .iter()
                .map(|&i| {
                    at(
                        i,
                        FieldError::new("event_id", "already recorded with different content"),
                    )
                })
                .collect();
            error.field = indexes.first().map(|i| format!("events[{i}].event_id"));
            error.extra = Some(json!({"indexes": indexes}));
            Err(error)
        }
    }
}

/// The items of a batch body: `{"events": [...]}`, or (when `bare_array_ok`) a plain array.
pub fn batch_items(
    value: Value,
    bare_array_ok: bool,
    max_batch: usize,
) -> Result<Vec<Value>, ApiError> {
    let items = match value {
        Value::Array(items) if bare_array_ok => items,
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
    check_batch_size(items.len(), max_batch)?;
    Ok(items)
}

pub fn check_batch_size(len: usize, max_batch: usize) -> Result<(), ApiError> {
    if len > max_batch {
        return Err(ApiError::too_large(format!(
            "a batch may hold at most {max_batch} events (ANNALS_MAX_BATCH); this one has {len}"
        ))
        .with_field("events"));
    }
    Ok(())
}

/// Reads one JSON object in `parse`'s wire format and records it.
pub async fn ingest_json(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    body: Body,
    parse: ParseFn,
) -> Result<Response, ApiError> {
    let value = read_json(headers, body, state.body_limit()).await?;
    let parsed = parse(value, &principal.client_id, &envelope_rules(state));
    record_one(state, principal, parsed).await
}

/// Reads a batch (`{"events": [...]}`, or a bare array when `bare_array_ok`) of JSON objects
/// in `parse`'s wire format and records it all-or-nothing.
pub async fn ingest_json_batch(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    body: Body,
    bare_array_ok: bool,
    parse: ParseFn,
) -> Result<Response, ApiError> {
    let value = read_json(headers, body, state.body_limit()).await?;
    let items = batch_items(value, bare_array_ok, state.limits.max_batch)?;
    let parsed = parse_all(state, principal, items, parse);
    record_batch(state, principal, parsed).await
}

/// Parses every item with `parse`, keeping each result for `record_batch`.
pub fn parse_all(
    state: &AppState,
    principal: &Principal,
    items: Vec<Value>,
    parse: ParseFn,
) -> Vec<Result<NewEvent, Rejected>> {
    let rules = envelope_rules(state);
    items
        .into_iter()
        .map(|item| parse(item, &principal.client_id, &rules))
        .collect()
}
