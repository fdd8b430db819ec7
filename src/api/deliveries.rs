//! Deliveries and the integration log over HTTP (seed 004 `EVENT_QUEUE`, `INTEGRATION_LOG`):
//! `GET /v1/deliveries` (`?status=FAILED` is the dead-letter queue), `GET /v1/deliveries/{id}`,
//! `POST /v1/deliveries/{id}/retry`, `GET` and `POST /v1/integration-logs`.
//!
//! A client sees the deliveries of its own subscriptions and its own integration log rows; an
//! admin sees all, including those of its all-clients subscriptions.

use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::extract::{Auth, read_json};
use super::query_params::{paged_json, parse_bool, parse_id_listing, parse_pairs};
use crate::auth::Principal;
use crate::domain::access::Scope;
use crate::domain::bus::{
    DeliveryQuery, DeliveryStatus, IntegrationLogQuery, NewIntegrationLog, Operation,
    StoredDelivery, StoredIntegrationLog,
};
use crate::domain::envelope::{MAX_ID_LEN, json_kind};
use crate::domain::security::SYSTEM_CLIENT;
use crate::domain::time::truncate_for_message;
use crate::domain::{FieldError, Timestamp};
use crate::error::ApiError;
use crate::store::bus::RetryOutcome;

/// Largest `request_data` or `response_data` a client may report, serialized.
const MAX_LOG_DATA_BYTES: usize = 64 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/deliveries", get(list))
        .route("/v1/deliveries/{id}", get(show))
        .route("/v1/deliveries/{id}/retry", post(retry))
        .route("/v1/integration-logs", get(list_logs).post(report))
        .route("/api/v1/deliveries", get(list))
        .route("/api/v1/integration-logs", get(list_logs).post(report))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "there is no delivery with id '{}'",
        truncate_for_message(id)
    ))
}

/// The owner a non-admin caller is held to; `None` for an admin.
fn held_to(principal: &Principal) -> Option<String> {
    (!principal.is_admin()).then(|| principal.client_id.to_string())
}

async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsRead)?;
    let pairs = parse_pairs(raw.as_deref())?;
    let mut query = DeliveryQuery::default();
    let (page, requested) =
        parse_id_listing(
            &pairs,
            "status, subscription_id",
            |name, value| match name {
                "status" => Some(DeliveryStatus::parse(value).map(|s| query.status = Some(s))),
                "subscription_id" => Some(
                    Uuid::parse_str(value)
                        .map(|id| query.subscription_id = Some(id))
                        .map_err(|_| String::from("must be a subscription id (a UUID)")),
                ),
                _ => None,
            },
        )?;
    query.page = page;
    query.client_id = principal.read_scope(requested)?.map(|c| c.to_string());
    let limit = query.page.limit;
    let mut rows = state.store.query_deliveries(query).await?;
    Ok(paged_json(
        &mut rows,
        limit,
        uri.path(),
        &pairs,
        |d: &StoredDelivery| d.id,
        StoredDelivery::view,
    ))
}

async fn show(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsRead)?;
    let delivery_id: i64 = id.parse().map_err(|_| not_found(&id))?;
    match state.store.get_delivery(delivery_id).await? {
        Some(d) if held_to(&principal).is_none_or(|o| o == d.client_id) => {
            Ok(Json(d.view()).into_response())
        }
        _ => Err(not_found(&id)),
    }
}

/// Puts a dead-lettered delivery back in the queue, due now, with its retries reset.
async fn retry(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsRead)?;
    let delivery_id: i64 = id.parse().map_err(|_| not_found(&id))?;
    match state
        .store
        .retry_delivery(delivery_id, held_to(&principal))
        .await?
    {
        RetryOutcome::Queued(d) => Ok((StatusCode::ACCEPTED, Json(d.view())).into_response()),
        RetryOutcome::NotFound => Err(not_found(&id)),
        RetryOutcome::NotFailed(d) => Err(ApiError::conflict(format!(
            "delivery {delivery_id} is {}; only FAILED deliveries are retried",
            d.status.as_str()
        ))),
        RetryOutcome::SubscriptionInactive => Err(ApiError::conflict(
            "the delivery's subscription is turned off; set is_active to true first",
        )),
    }
}

async fn list_logs(
    State(state): State<AppState>,
    Auth(principal): Auth,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsRead)?;
    let pairs = parse_pairs(raw.as_deref())?;
    let mut query = IntegrationLogQuery::default();
    let (page, requested) = parse_id_listing(
        &pairs,
        "integration_name, operation, success, delivery_id",
        |name, value| match name {
            "integration_name" => {
                query.integration_name = Some(value.to_string());
                Some(Ok(()))
            }
            "operation" => Some(Operation::parse(value).map(|o| query.operation = Some(o))),
            "success" => Some(parse_bool(value).map(|b| query.success = Some(b))),
            "delivery_id" => Some(
                value
                    .parse::<i64>()
                    .map(|d| query.delivery_id = Some(d))
                    .map_err(|_| String::from("must be a delivery id (a whole number)")),
            ),
            _ => None,
        },
    )?;
    query.page = page;
    query.client_id = principal.read_scope(requested)?.map(|c| c.to_string());
    let limit = query.page.limit;
    let mut rows = state.store.query_integration_logs(query).await?;
    Ok(paged_json(
        &mut rows,
        limit,
        uri.path(),
        &pairs,
        |l: &StoredIntegrationLog| l.id,
        StoredIntegrationLog::view,
    ))
}

/// A client reports a call of one of its own integrations (seed 004's `INTEGRATION_LOG`).
async fn report(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsWrite)?;
    let Value::Object(map) = read_json(&headers, body, state.body_limit()).await? else {
        return Err(ApiError::invalid(
            "",
            "an integration log entry must be a JSON object",
        ));
    };
    let mut log = NewIntegrationLog {
        client_id: principal.client_id.to_string(),
        integration_name: String::new(),
        operation: Operation::DataSync,
        external_id: None,
        request_data: None,
        response_data: None,
        http_status_code: None,
        success: false,
        error_message: None,
        occurred_at: Timestamp::now(),
        delivery_id: None,
        duration_ms: None,
    };
    let (mut name, mut operation, mut success) = (false, false, false);
    let mut errors = Vec::new();
    for (field, value) in &map {
        let text = |max: usize| match value {
            Value::String(s) if !s.is_empty() && s.chars().count() <= max => Ok(s.clone()),
            Value::String(_) => Err(format!("must be 1 to {max} characters long")),
            other => Err(format!("must be a string, not {}", json_kind(other))),
        };
        let data = || match value {
            Value::Null => Ok(None),
            Value::Object(_) | Value::Array(_) => {
                let text = value.to_string();
                if text.len() > MAX_LOG_DATA_BYTES {
                    Err(format!("must be at most {} KiB", MAX_LOG_DATA_BYTES / 1024))
                } else {
                    Ok(Some(text))
                }
            }
            other => Err(format!(
                "must be a JSON object, array or null, not {}",
                json_kind(other)
            )),
        };
        let result: Result<(), String> = match field.as_str() {
            "integration_name" => text(100).map(|n| {
                log.integration_name = n;
                name = true;
            }),
            "operation" => value
                .as_str()
                .ok_or_else(|| format!("must be a string, not {}", json_kind(value)))
                .and_then(Operation::parse)
                .map(|o| {
                    log.operation = o;
                    operation = true;
                }),
            "external_id" => match value {
                Value::Null => Ok(()),
                _ => text(MAX_ID_LEN).map(|e| log.external_id = Some(e)),
            },
            "request_data" => data().map(|d| log.request_data = d),
            "response_data" => data().map(|d| log.response_data = d),
            "http_status_code" => match value.as_i64() {
                Some(code) if (100..=599).contains(&code) => {
                    log.http_status_code = Some(code as i32);
                    Ok(())
                }
                _ if value.is_null() => Ok(()),
                _ => Err(String::from(
                    "must be an HTTP status code (100 to 599) or null",
                )),
            },
            "success" => value
                .as_bool()
                .map(|b| {
                    log.success = b;
                    success = true;
                })
                .ok_or_else(|| format!("must be true or false, not {}", json_kind(value))),
            "error_message" => match value {
                Value::Null => Ok(()),
                _ => text(4000).map(|e| log.error_message = Some(e)),
            },
            "occurred_at" => value
                .as_str()
                .ok_or_else(|| format!("must be an RFC 3339 time, not {}", json_kind(value)))
                .and_then(Timestamp::parse_rfc3339)
                .map(|t| log.occurred_at = t),
            "duration_ms" => match value.as_i64() {
                Some(ms) if ms >= 0 => {
                    log.duration_ms = Some(ms);
                    Ok(())
                }
                _ if value.is_null() => Ok(()),
                _ => Err(String::from(
                    "must be a whole number of milliseconds, 0 or more",
                )),
            },
            _ => Err(String::from(
                "unknown field; allowed: integration_name, operation, external_id, request_data, response_data, http_status_code, success, error_message, occurred_at, duration_ms",
            )),
        };
        if let Err(message) = result {
            errors.push(FieldError::new(field.clone(), message));
        }
    }
    for (missing, present) in [
        ("integration_name", name),
        ("operation", operation),
        ("success", success),
    ] {
        if !present && !errors.iter().any(|e| e.field == missing) {
            errors.push(FieldError::new(missing, "is required"));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    if log.client_id == SYSTEM_CLIENT {
        return Err(ApiError::forbidden(
            "Annals' own client cannot report integrations",
        ));
    }
    let ids = state.store.record_integration_logs(vec![log]).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"message": "Integration log recorded", "id": ids.first()})),
    )
        .into_response())
}
