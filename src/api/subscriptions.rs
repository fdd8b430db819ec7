//! Subscriptions over HTTP (seed 004 `EVENT_SUBSCRIPTION`): create, list, read, change, delete,
//! rotate the signing secret, replay stored events, and — for `callback_method`
//! subscriptions — pull due deliveries and acknowledge them.
//!
//! A client's key (`events:read`) manages its own subscriptions, which match only its events;
//! an admin key manages all, and its subscriptions without a `client_id` match every client's.
//! Someone else's subscription is answered `404`, as if it did not exist.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::extract::{Auth, read_json};
use super::query_params::parse_pairs;
use crate::auth::Principal;
use crate::domain::access::Scope;
use crate::domain::bus::{
    AttemptOutcome, DeliveryStatus, FinishedAttempt, Subscription, new_secret,
};
use crate::domain::subscription_input::SubscriptionInput;
use crate::domain::time::truncate_for_message;
use crate::domain::{ClientId, FieldError, Timestamp};
use crate::error::ApiError;
use crate::store::bus::{ClaimFor, MAX_REPLAY};

/// How long the previous secret still signs after a rotation.
const ROTATION_OVERLAP_DAYS: i64 = 1;
/// Most deliveries one pull takes, and how long they are leased by default.
const MAX_PULL: usize = 100;
const DEFAULT_PULL_LEASE_SECS: i64 = 60;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/subscriptions", get(list).post(create))
        .route(
            "/v1/subscriptions/{id}",
            get(show).patch(change).delete(remove),
        )
        .route("/v1/subscriptions/{id}/rotate-secret", post(rotate))
        .route("/v1/subscriptions/{id}/replay", post(replay))
        .route("/v1/subscriptions/{id}/pull", post(pull))
        .route("/v1/deliveries/{id}/ack", post(ack))
        .route("/api/v1/subscriptions", get(list).post(create))
        .route(
            "/api/v1/subscriptions/{id}",
            get(show).patch(change).delete(remove),
        )
}

/// A query parameter's whole number within `range`, else `message`.
fn whole_number(
    value: &str,
    range: std::ops::RangeInclusive<i64>,
    message: &str,
) -> Result<i64, String> {
    value
        .parse::<i64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| message.to_string())
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "there is no subscription with id '{}'",
        truncate_for_message(id)
    ))
}

/// Whether `principal` may see and manage `subscription`.
fn owns(principal: &Principal, subscription: &Subscription) -> bool {
    principal.is_admin() || subscription.client_id.as_deref() == Some(principal.client_id.as_str())
}

/// The caller's subscription `id`, or `404`.
async fn owned(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Subscription, ApiError> {
    principal.require(Scope::EventsRead)?;
    let uuid = Uuid::parse_str(id).map_err(|_| not_found(id))?;
    match state.store.get_subscription(uuid).await? {
        Some(s) if owns(principal, &s) => Ok(s),
        _ => Err(not_found(id)),
    }
}

/// The owner a request asks for: a client's key may only name its own client; an admin may
/// name any, or none (`null` or absent: every client's events).
fn owner_of(
    principal: &Principal,
    asked: Option<Option<String>>,
) -> Result<Option<String>, ApiError> {
    let own = principal.client_id.as_str();
    match asked {
        Some(Some(client)) if principal.is_admin() || client == own => Ok(Some(client)),
        Some(_) if !principal.is_admin() => Err(ApiError::forbidden(
            "only an admin key may subscribe to another client's events, or to every client's",
        )
        .with_field("client_id")),
        Some(None) | None if principal.is_admin() => Ok(None),
        _ => Ok(Some(own.to_string())),
    }
}

async fn input(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<SubscriptionInput, ApiError> {
    let Value::Object(map) = read_json(headers, body, state.body_limit()).await? else {
        return Err(ApiError::invalid(
            "",
            "a subscription must be a JSON object",
        ));
    };
    SubscriptionInput::parse(&map, state.webhook_allow_private).map_err(ApiError::invalid_fields)
}

async fn create(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsRead)?;
    let mut input = input(&state, &headers, body).await?;
    let owner = owner_of(&principal, input.client_id.take())?;
    let subscription = input.into_new(owner).map_err(ApiError::invalid_fields)?;
    state
        .store
        .create_subscription(subscription.clone())
        .await?;
    Ok((StatusCode::CREATED, Json(subscription.view(true))).into_response())
}

async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsRead)?;
    let mut requested = None;
    let mut errors = Vec::new();
    for (name, value) in parse_pairs(raw.as_deref())? {
        match name.as_str() {
            "client_id" => match ClientId::parse(&value) {
                Ok(c) => requested = Some(c),
                Err(e) => errors.push(FieldError::new(name, e)),
            },
            _ => errors.push(FieldError::new(
                name,
                "unknown parameter; allowed: client_id",
            )),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    let scope = principal.read_scope(requested)?;
    let subscriptions = state
        .store
        .list_subscriptions(scope.map(|c| c.as_str().to_string()))
        .await?;
    let views: Vec<Value> = subscriptions.iter().map(|s| s.view(false)).collect();
    Ok(Json(views).into_response())
}

async fn show(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let subscription = owned(&state, &principal, &id).await?;
    Ok(Json(subscription.view(false)).into_response())
}

async fn change(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut subscription = owned(&state, &principal, &id).await?;
    let mut input = input(&state, &headers, body).await?;
    if let Some(asked) = input.client_id.take() {
        subscription.client_id = owner_of(&principal, Some(asked))?;
    }
    input
        .apply(&mut subscription)
        .map_err(ApiError::invalid_fields)?;
    if !state
        .store
        .update_subscription(subscription.clone())
        .await?
    {
        return Err(not_found(&id));
    }
    Ok(Json(subscription.view(false)).into_response())
}

async fn remove(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let subscription = owned(&state, &principal, &id).await?;
    if !state.store.delete_subscription(subscription.id).await? {
        return Err(not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A new signing secret; the previous one keeps signing (as a second signature) for a day, so
/// receivers can switch without dropping deliveries.
async fn rotate(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut subscription = owned(&state, &principal, &id).await?;
    let now = Timestamp::now();
    subscription.previous_secret = Some(std::mem::replace(&mut subscription.secret, new_secret()));
    subscription.previous_secret_until = Some(now.plus_days(ROTATION_OVERLAP_DAYS));
    subscription.updated_at = now;
    if !state
        .store
        .update_subscription(subscription.clone())
        .await?
    {
        return Err(not_found(&id));
    }
    let mut view = subscription.view(true);
    view["previous_secret_valid_until"] = json!(
        subscription
            .previous_secret_until
            .map(Timestamp::to_rfc3339)
    );
    Ok(Json(view).into_response())
}

/// `?from=&to=` (times the events were received, RFC 3339; `to` exclusive) and `from_seq=`
/// (to continue a replay that stopped at its cap).
async fn replay(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let subscription = owned(&state, &principal, &id).await?;
    let (mut from, mut to, mut from_seq) = (None, None, 0i64);
    let mut errors = Vec::new();
    for (name, value) in parse_pairs(raw.as_deref())? {
        let result = match name.as_str() {
            "from" => Timestamp::parse_bound(&value).map(|t| from = Some(t)),
            "to" => Timestamp::parse_bound(&value).map(|t| to = Some(t)),
            "from_seq" => whole_number(&value, 0..=i64::MAX, "must be a whole number, 0 or more")
                .map(|n| from_seq = n),
            _ => Err(String::from(
                "unknown parameter; allowed: from, to, from_seq",
            )),
        };
        if let Err(message) = result {
            errors.push(FieldError::new(name, message));
        }
    }
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        errors.push(FieldError::new("to", "must be after from"));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    if !subscription.is_active {
        return Err(ApiError::conflict(
            "the subscription is turned off; set is_active to true before replaying",
        ));
    }
    let replayed = state.store.replay(subscription, from, to, from_seq).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "queued": replayed.queued,
            "complete": replayed.next_seq.is_none(),
            "next_from_seq": replayed.next_seq,
            "max_per_replay": MAX_REPLAY,
        })),
    )
        .into_response())
}

/// Takes due deliveries of a `callback_method` subscription: `?limit=` (1–100, default 10)
/// and `?lease_secs=` (how long they are the caller's before they are due again; 1–3600,
/// default 60). Each comes with its event; acknowledge it with `POST /v1/deliveries/{id}/ack`.
async fn pull(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let subscription = owned(&state, &principal, &id).await?;
    let (mut limit, mut lease_secs) = (10usize, DEFAULT_PULL_LEASE_SECS);
    let mut errors = Vec::new();
    for (name, value) in parse_pairs(raw.as_deref())? {
        let result = match name.as_str() {
            "limit" => whole_number(
                &value,
                1..=MAX_PULL as i64,
                &format!("must be a whole number from 1 to {MAX_PULL}"),
            )
            .map(|n| limit = n as usize),
            "lease_secs" => whole_number(&value, 1..=3600, "must be a whole number from 1 to 3600")
                .map(|n| lease_secs = n),
            _ => Err(String::from(
                "unknown parameter; allowed: limit, lease_secs",
            )),
        };
        if let Err(message) = result {
            errors.push(FieldError::new(name, message));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    if !subscription.is_pull() {
        return Err(ApiError::conflict(
            "this subscription delivers to its webhook_url; only callback_method subscriptions are pulled",
        ));
    }
    let now = Timestamp::now();
    let lease_until = now.plus(std::time::Duration::from_secs(lease_secs as u64));
    let claimed = state
        .store
        .claim_deliveries(ClaimFor::Pull(subscription.id), now, lease_until, limit)
        .await?;
    let items: Vec<Value> = claimed
        .iter()
        .map(|c| {
            let mut view = c.delivery.view();
            view["status"] = json!(DeliveryStatus::Processing.as_str());
            view["lease_until"] = json!(lease_until.to_rfc3339());
            view["event"] = match &c.event {
                Some(event) => serde_json::to_value(event).unwrap_or(Value::Null),
                None => Value::Null,
            };
            view
        })
        .collect();
    Ok(Json(items).into_response())
}

/// Acknowledges a pulled delivery: `{"success": true}` completes it; `{"success": false,
/// "error": "…"}` puts it back for a retry after a backoff (or into the dead-letter queue once
/// its retries are spent).
async fn ack(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsRead)?;
    let missing = || {
        ApiError::not_found(format!(
            "there is no delivery with id '{}'",
            truncate_for_message(&id)
        ))
    };
    let delivery_id: i64 = id.parse().map_err(|_| missing())?;
    let Value::Object(map) = read_json(&headers, body, state.body_limit()).await? else {
        return Err(ApiError::invalid(
            "",
            "an acknowledgement must be a JSON object",
        ));
    };
    let mut success = None;
    let mut error = None;
    let mut errors = Vec::new();
    for (field, value) in &map {
        match (field.as_str(), value) {
            ("success", Value::Bool(b)) => success = Some(*b),
            ("error", Value::String(s)) if s.chars().count() <= 1000 => error = Some(s.clone()),
            ("error", Value::Null) => {}
            ("success", _) => errors.push(FieldError::new("success", "must be true or false")),
            ("error", _) => errors.push(FieldError::new(
                "error",
                "must be a string of at most 1000 characters",
            )),
            _ => errors.push(FieldError::new(
                field.clone(),
                "unknown field; allowed: success, error",
            )),
        }
    }
    if success.is_none() && errors.is_empty() {
        errors.push(FieldError::new("success", "is required"));
    }
    let (Some(success), true) = (success, errors.is_empty()) else {
        return Err(ApiError::invalid_fields(errors));
    };
    let owner = (!principal.is_admin()).then(|| principal.client_id.to_string());
    let delivery = match state.store.get_delivery(delivery_id).await? {
        Some(d) if owner.as_deref().is_none_or(|o| o == d.client_id) => d,
        _ => return Err(missing()),
    };
    if delivery.status != DeliveryStatus::Processing {
        return Err(ApiError::conflict(format!(
            "delivery {delivery_id} is {}, not leased to a puller; pull it first",
            delivery.status.as_str()
        )));
    }
    let at = Timestamp::now();
    let outcome = if success {
        AttemptOutcome::Delivered
    } else {
        crate::bus::after_failure(&delivery, state.webhook_retry_base, None)
    };
    state
        .store
        .finish_attempts(vec![FinishedAttempt {
            delivery_id,
            subscription_id: delivery.subscription_id,
            outcome,
            status_code: None,
            failure_reason: (!success)
                .then(|| error.unwrap_or_else(|| String::from("the puller reported a failure"))),
            at,
            log: None,
        }])
        .await?;
    match state.store.get_delivery(delivery_id).await? {
        Some(d) => Ok(Json(d.view()).into_response()),
        None => Err(missing()),
    }
}
