//! Security events over HTTP: `GET /v1/security-events` (admin: all, Annals' own included;
//! a client: its own reports), `POST /v1/security-events` (a client reports its application's),
//! `POST /v1/security-events/{id}/review` (admin for any; a client for its own).

use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Auth, read_json};
use super::query_params::{paged_json, parse_bool, parse_id_listing, parse_pairs};
use crate::domain::access::Scope;
use crate::domain::envelope::{MAX_ID_LEN, json_kind};
use crate::domain::security::{
    NewSecurityEvent, SecurityEventType, SecurityQuery, Severity, StoredSecurityEvent,
};
use crate::domain::{FieldError, Timestamp};
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/security-events", get(list).post(report))
        .route("/v1/security-events/{id}/review", post(review))
        .route("/api/v1/security-events", get(list).post(report))
        .route("/api/v1/security-events/{id}/review", post(review))
}

async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsRead)?;
    let pairs = parse_pairs(raw.as_deref())?;
    let mut query = SecurityQuery::default();
    let (page, requested) = parse_id_listing(
        &pairs,
        "event_type, severity, requires_review",
        |name, value| match name {
            "event_type" => {
                Some(SecurityEventType::parse(value).map(|t| query.event_type = Some(t)))
            }
            "severity" => Some(Severity::parse(value).map(|s| query.severity = Some(s))),
            "requires_review" => Some(parse_bool(value).map(|b| query.requires_review = Some(b))),
            _ => None,
        },
    )?;
    query.page = page;
    // Annals' own events are only ever visible to admins: a client's scope is its own id.
    query.client_id = principal.read_scope(requested)?.map(|c| c.to_string());
    let limit = query.page.limit;
    let mut rows = state.store.query_security(query).await?;
    Ok(paged_json(
        &mut rows,
        limit,
        uri.path(),
        &pairs,
        |r: &StoredSecurityEvent| r.id,
        StoredSecurityEvent::view,
    ))
}

fn optional_string(value: &Value, max: usize) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s.chars().count() <= max => Ok(Some(s.clone())),
        Value::String(_) => Err(format!("must be at most {max} characters")),
        other => Err(format!("must be a string, not {}", json_kind(other))),
    }
}

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
            "a security event must be a JSON object",
        ));
    };
    let mut errors = Vec::new();
    let (mut event_type, mut severity) = (None, None);
    let mut event = NewSecurityEvent {
        client_id: principal.client_id.to_string(),
        event_type: SecurityEventType::SuspiciousActivity,
        severity: Severity::Low,
        user_id: None,
        ip_address: None,
        user_agent: None,
        details: String::from("{}"),
        requires_review: false,
        occurred_at: Timestamp::now(),
        dedup_key: None,
        count: 1,
    };
    let mut review = None;
    for (field, value) in &map {
        let text = || {
            value
                .as_str()
                .ok_or_else(|| format!("must be a string, not {}", json_kind(value)))
        };
        let result: Result<(), String> = match field.as_str() {
            "event_type" => text()
                .and_then(SecurityEventType::parse)
                .map(|t| event_type = Some(t)),
            "severity" => text().and_then(Severity::parse).map(|s| severity = Some(s)),
            "user_id" => optional_string(value, MAX_ID_LEN).map(|u| event.user_id = u),
            "ip_address" => optional_string(value, 64).and_then(|ip| match ip {
                Some(ip) => ip
                    .parse::<std::net::IpAddr>()
                    .map(|ip| event.ip_address = Some(ip.to_string()))
                    .map_err(|_| format!("'{ip}' is not a valid IPv4 or IPv6 address")),
                None => Ok(()),
            }),
            "user_agent" => optional_string(value, 512).map(|u| event.user_agent = u),
            "event_details" => match value {
                Value::Object(_) => {
                    event.details = value.to_string();
                    Ok(())
                }
                other => Err(format!("must be a JSON object, not {}", json_kind(other))),
            },
            "requires_review" => value
                .as_bool()
                .map(|b| review = Some(b))
                .ok_or_else(|| format!("must be true or false, not {}", json_kind(value))),
            "occurred_at" => text()
                .and_then(Timestamp::parse_rfc3339)
                .map(|t| event.occurred_at = t),
            _ => Err(String::from(
                "unknown field; allowed: event_type, severity, user_id, ip_address, user_agent, event_details, requires_review, occurred_at",
            )),
        };
        if let Err(message) = result {
            errors.push(FieldError::new(field.clone(), message));
        }
    }
    for (missing, present) in [
        ("event_type", event_type.is_some()),
        ("severity", severity.is_some()),
    ] {
        if !present && !errors.iter().any(|e| e.field == missing) {
            errors.push(FieldError::new(missing, "is required"));
        }
    }
    let (Some(event_type), Some(severity), true) = (event_type, severity, errors.is_empty()) else {
        return Err(ApiError::invalid_fields(errors));
    };
    if event.details.len() > 64 * 1024 {
        return Err(
            ApiError::too_large("event_details is larger than 64 KiB").with_field("event_details")
        );
    }
    event.event_type = event_type;
    event.severity = severity;
    // High and critical events wait for a review unless the reporter says otherwise.
    event.requires_review = review.unwrap_or(severity >= Severity::High);
    let ids = state.store.record_security(vec![event]).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"message": "Security event recorded", "id": ids.first()})),
    )
        .into_response())
}

async fn review(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::not_found(format!(
            "there is no security event with id '{}'",
            crate::domain::time::truncate_for_message(&id)
        ))
    };
    let id: i64 = id.parse().map_err(|_| not_found())?;
    let client = if principal.is_admin() {
        None
    } else {
        principal.require(Scope::EventsWrite)?;
        Some(principal.client_id.to_string())
    };
    match state
        .store
        .review_security(id, client, principal.key_name.clone())
        .await?
    {
        Some(event) => Ok(Json(event.view()).into_response()),
        None => Err(not_found()),
    }
}
