//! Inbound webhooks (seed 004's `WEBHOOK_RECEIVED`): an admin configures an integration
//! (`/v1/integrations`: its name, client, how it is verified), and the third party posts to
//! `POST /v1/inbound/{name}`. A verified webhook becomes an event of the integration's client
//! (its id, when the sender gives one, is the idempotency key, so a redelivery is a duplicate)
//! and an integration log row; an unverified one is refused with `401` and counted as a failed
//! login (aggregated, so a flood writes nothing per request) against its address, which past
//! `ANNALS_FAILED_AUTH_PER_MINUTE` is refused with `429` before anything is read.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Auth, parse_json, presented_key, read_body};
use super::ingest::envelope_rules;
use crate::audit::security::Incident;
use crate::bus::inbound;
use crate::domain::access::Scope;
use crate::domain::bus::{NewIntegrationLog, Operation};
use crate::domain::inbound::{Integration, Verification, parse_name};
use crate::domain::security::{SecurityEventType, Severity};
use crate::domain::time::truncate_for_message;
use crate::domain::{ClientId, Timestamp, parse_event};
use crate::error::ApiError;
use crate::listener::ClientAddr;
use crate::store::AppendOutcome;

/// Request headers kept in the integration log row (never credentials or signatures).
const LOGGED_HEADERS: [&str; 4] = [
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
];

/// The admin's routes, behind the access layer.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/integrations", get(list).post(create))
        .route("/v1/integrations/{name}", get(show).delete(remove))
}

/// The third party's route: no Annals key, verified per integration.
pub fn public_router() -> Router<AppState> {
    Router::new().route("/v1/inbound/{name}", post(receive))
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "there is no inbound integration named '{}'",
        truncate_for_message(name)
    ))
}

async fn create(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    principal.require(Scope::Admin)?;
    let Value::Object(map) = super::extract::read_json(&headers, body, state.body_limit()).await?
    else {
        return Err(ApiError::invalid(
            "",
            "an integration must be a JSON object",
        ));
    };
    let integration = Integration::parse(&map).map_err(ApiError::invalid_fields)?;
    if !state.store.create_integration(integration.clone()).await? {
        return Err(ApiError::conflict(format!(
            "an integration named '{}' exists; delete it first to replace it",
            integration.name
        ))
        .with_field("name"));
    }
    Ok((StatusCode::CREATED, Json(integration.view(true))).into_response())
}

async fn list(State(state): State<AppState>, Auth(principal): Auth) -> Result<Response, ApiError> {
    principal.require(Scope::Admin)?;
    let all = state.store.list_integrations().await?;
    let views: Vec<Value> = all.iter().map(|i| i.view(false)).collect();
    Ok(Json(views).into_response())
}

async fn show(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Admin)?;
    match state.store.get_integration(name.clone()).await? {
        Some(i) => Ok(Json(i.view(false)).into_response()),
        None => Err(not_found(&name)),
    }
}

async fn remove(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Admin)?;
    if state.store.delete_integration(name.clone()).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found(&name))
    }
}

/// Checks the request as the integration says; the sender's message id, if the scheme has one.
async fn verify(
    state: &AppState,
    integration: &Integration,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<String>, String> {
    let now = Timestamp::now().as_micros().div_euclid(1_000_000);
    let secret = integration.secret.as_deref().unwrap_or_default();
    match integration.verification {
        Verification::StandardWebhooks => {
            inbound::standard_webhooks(secret, headers, body, now).map(Some)
        }
        Verification::Stripe => inbound::stripe(secret, headers, body, now).map(|()| None),
        Verification::ApiKey => {
            let principal = state
                .auth
                .authenticate(presented_key(headers))
                .await
                .map_err(|_| String::from("no valid Annals API key (X-API-Key or Bearer)"))?;
            let client = ClientId::parse(&integration.client_id).map_err(|e| e.to_string())?;
            if principal.require(Scope::EventsWrite).is_err() || !principal.may_write_for(&client) {
                return Err(format!(
                    "the key may not write events for client '{}'",
                    integration.client_id
                ));
            }
            Ok(None)
        }
    }
}

async fn receive(
    State(state): State<AppState>,
    Path(name): Path<String>,
    caller: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = parse_name(&name).map_err(|_| not_found(&name))?;
    // An address that keeps failing verification is refused before any read, like bad keys.
    let ip = caller.map(|c| c.0.0);
    let bucket = super::access::failure_bucket(ip);
    let limit = state.access.failed_auth_per_minute;
    let peek = state
        .access
        .failure_limiter
        .check_local(&bucket, limit, false);
    if !peek.allowed {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many unverified webhooks from this address; retry after {} s",
                peek.retry_after_secs
            ),
        );
        e.retry_after_secs = Some(peek.retry_after_secs);
        return Err(e);
    }
    let Some(integration) = state.store.get_integration(name.clone()).await? else {
        return Err(not_found(&name));
    };
    let read = read_body(&headers, body, state.body_limit()).await?;
    let bytes = read.bytes.clone();
    let message_id = match verify(&state, &integration, &headers, &bytes).await {
        Ok(id) => id,
        Err(reason) => {
            state
                .access
                .failure_limiter
                .check_local(&bucket, limit, true);
            let subject = format!("inbound:{name}");
            state.security.record(Incident {
                event_type: SecurityEventType::FailedLogin,
                severity: Severity::Medium,
                subject: &subject,
                key_id: None,
                ip,
                user_agent: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()),
                requires_review: false,
                details: json!({"reason": reason, "integration": name, "path": format!("/v1/inbound/{name}")}),
            });
            return Err(ApiError::unauthorized(format!(
                "the webhook could not be verified: {reason}"
            )));
        }
    };
    let payload = parse_json(&bytes)?;
    drop(read);
    // The sender's id for the message is the idempotency key: its redeliveries are duplicates.
    let external_id = message_id.or_else(|| {
        payload
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty() && id.len() <= 255)
            .map(str::to_string)
    });
    let data = match payload {
        Value::Object(_) => payload,
        other => json!({ "payload": other }),
    };
    let mut envelope = json!({
        "event_type": integration.event_type,
        "source": format!("inbound:{name}"),
        "data": data,
    });
    if let Some(id) = &external_id {
        envelope["event_id"] = json!(id);
    }
    let client = ClientId::parse(&integration.client_id)
        .map_err(|e| ApiError::internal(format!("stored integration client: {e}")))?;
    let event =
        parse_event(envelope, &client, &envelope_rules(&state)).map_err(ApiError::from_rejected)?;
    let (id, duplicate) = match state.append(vec![event]).await? {
        AppendOutcome::Stored(items) => (items[0].id, items[0].duplicate),
        AppendOutcome::Conflict(_) => {
            return Err(ApiError::conflict(
                "a webhook with this id was already received with different content",
            ));
        }
    };
    let logged: serde_json::Map<String, Value> = LOGGED_HEADERS
        .iter()
        .filter_map(|h| {
            let v = headers.get(*h)?.to_str().ok()?;
            Some((h.to_string(), json!(truncate_for_message(v))))
        })
        .collect();
    let log = NewIntegrationLog {
        client_id: integration.client_id.clone(),
        integration_name: name,
        operation: Operation::WebhookReceived,
        external_id,
        request_data: Some(
            json!({"headers": logged, "body_bytes": bytes.len(), "event_id": id}).to_string(),
        ),
        response_data: None,
        http_status_code: Some(202),
        success: true,
        error_message: None,
        occurred_at: Timestamp::now(),
        delivery_id: None,
        duration_ms: None,
    };
    if let Err(e) = state.store.record_integration_logs(vec![log]).await {
        // The event is stored; the log row is the lesser record.
        tracing::warn!(error = %e, "inbound webhook's integration log row was not stored");
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"message": "Webhook received", "id": id, "duplicate": duplicate})),
    )
        .into_response())
}
