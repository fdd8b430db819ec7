//! API-key management over HTTP (`admin` scope): `POST/GET /v1/keys`, `PATCH/DELETE
//! /v1/keys/{id}`, also under `/api/v1/keys`. Calls the same `KeyService` as `annals keys`.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, patch};
use serde_json::{Map, Value};

use super::AppState;
use super::extract::{Auth, read_json};
use super::query_params::parse_pairs;
use crate::auth::NewKeyRequest;
use crate::domain::access::{
    KeyPatch, KeyRecord, KeySelector, RATE_LIMIT_RANGE, Scope, Scopes, parse_key_name,
    parse_rate_limit,
};
use crate::domain::envelope::json_kind;
use crate::domain::{ClientId, FieldError, Timestamp};
use crate::error::ApiError;
use crate::store::StoreError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", patch(update_key).delete(delete_key))
        .route("/api/v1/keys", get(list_keys).post(create_key))
        .route("/api/v1/keys/", get(list_keys).post(create_key))
        .route("/api/v1/keys/{id}", patch(update_key).delete(delete_key))
}

fn object(value: Value) -> Result<Map<String, Value>, ApiError> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::invalid(
            "",
            format!(
                "the request body must be a JSON object, not {}",
                json_kind(&other)
            ),
        )),
    }
}

fn string_field(value: &Value) -> Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("must be a string, not {}", json_kind(value)))
}

/// `["events:read", …]` or `"events:read,events:write"`.
fn scopes_field(value: &Value) -> Result<Scopes, String> {
    match value {
        Value::String(s) => Scopes::parse_list(s),
        Value::Array(items) => {
            let names = items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .ok_or_else(|| String::from("must hold scope names"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Scopes::parse_list(&names.join(","))
        }
        other => Err(format!(
            "must be a list of scopes, not {}",
            json_kind(other)
        )),
    }
}

/// `null` → `None` (server default), else 1..=1 000 000.
fn rate_limit_field(value: &Value) -> Result<Option<u32>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| String::from(RATE_LIMIT_RANGE))
            .and_then(parse_rate_limit)
            .map(Some),
        other => Err(format!("must be a number, not {}", json_kind(other))),
    }
}

/// `null` → never expires; else an RFC 3339 time in the future.
fn expiry_field(value: &Value) -> Result<Option<Timestamp>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => {
            let t = Timestamp::parse_rfc3339(s)?;
            if t <= Timestamp::now() {
                return Err(String::from("must be in the future"));
            }
            Ok(Some(t))
        }
        other => Err(format!(
            "must be an RFC 3339 time or null, not {}",
            json_kind(other)
        )),
    }
}

async fn create_key(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    principal.require(Scope::Admin)?;
    let map = object(read_json(&headers, body, state.body_limit()).await?)?;
    let mut errors = Vec::new();
    let (mut client_id, mut name) = (None, None);
    let mut scopes = Scopes::new(vec![Scope::EventsWrite, Scope::EventsRead]);
    let (mut rate_limit, mut expires_at) = (None, None);
    for (field, value) in &map {
        let result = match field.as_str() {
            "client_id" => string_field(value)
                .and_then(ClientId::parse)
                .map(|c| client_id = Some(c)),
            "name" => string_field(value)
                .and_then(parse_key_name)
                .map(|n| name = Some(n)),
            "scopes" => scopes_field(value).map(|s| scopes = s),
            "rate_limit" => rate_limit_field(value).map(|r| rate_limit = r),
            "expires_at" => expiry_field(value).map(|t| expires_at = t),
            _ => Err(String::from(
                "unknown field; allowed: client_id, name, scopes, rate_limit, expires_at",
            )),
        };
        if let Err(message) = result {
            errors.push(FieldError::new(field.clone(), message));
        }
    }
    for (missing, present) in [("client_id", client_id.is_some()), ("name", name.is_some())] {
        if !present && !errors.iter().any(|e| e.field == missing) {
            errors.push(FieldError::new(missing, "is required"));
        }
    }
    let (Some(client_id), Some(name), true) = (client_id, name, errors.is_empty()) else {
        return Err(ApiError::invalid_fields(errors));
    };
    let issued = state
        .keys
        .create(NewKeyRequest {
            client_id,
            name,
            scopes,
            rate_limit,
            expires_at,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(issued.view())).into_response())
}

async fn list_keys(
    State(state): State<AppState>,
    Auth(principal): Auth,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Scope::Admin)?;
    let mut client = None;
    for (name, value) in parse_pairs(raw.as_deref())? {
        match name.as_str() {
            "client_id" => {
                client =
                    Some(ClientId::parse(&value).map_err(|e| ApiError::invalid("client_id", e))?)
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    "unknown parameter; keys are filtered by client_id",
                ));
            }
        }
    }
    let keys = state.keys.list(client).await?;
    Ok(Json(keys.iter().map(KeyRecord::view).collect::<Vec<_>>()).into_response())
}

async fn update_key(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    principal.require(Scope::Admin)?;
    let id = possible_key_id(id)?;
    let map = object(read_json(&headers, body, state.body_limit()).await?)?;
    let mut patch = KeyPatch::default();
    let mut errors = Vec::new();
    for (field, value) in &map {
        let result = match field.as_str() {
            "name" => string_field(value)
                .and_then(parse_key_name)
                .map(|n| patch.name = Some(n)),
            "scopes" => scopes_field(value).map(|s| patch.scopes = Some(s)),
            "rate_limit" => rate_limit_field(value).map(|r| patch.rate_limit = Some(r)),
            "is_active" => value
                .as_bool()
                .map(|b| patch.is_active = Some(b))
                .ok_or_else(|| format!("must be true or false, not {}", json_kind(value))),
            "expires_at" => expiry_field(value).map(|t| patch.expires_at = Some(t)),
            _ => Err(String::from(
                "unknown field; allowed: name, scopes, rate_limit, is_active, expires_at",
            )),
        };
        if let Err(message) = result {
            errors.push(FieldError::new(field.clone(), message));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    // The field that took the key's admin power away, for a refusal to name.
    let removing_field = if patch.is_active == Some(false) {
        "is_active"
    } else {
        "scopes"
    };
    let last_admin = state.keys.last_admin_over_http();
    match state.keys.update(id.clone(), patch, last_admin).await {
        Ok(Some(key)) => Ok(Json(key.view()).into_response()),
        Ok(None) => Err(no_such_key(&id)),
        Err(StoreError::LastAdminKey) => Err(last_admin_key(&id).with_field(removing_field)),
        Err(e) => Err(e.into()),
    }
}

async fn delete_key(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Admin)?;
    let id = possible_key_id(id)?;
    let last_admin = state.keys.last_admin_over_http();
    let deleted = match state
        .keys
        .delete(KeySelector::KeyId(id.clone()), last_admin)
        .await
    {
        Err(StoreError::LastAdminKey) => return Err(last_admin_key(&id)),
        other => other?,
    };
    if deleted.is_empty() {
        return Err(no_such_key(&id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A key id from the path, or the 404 of one no key can have: with U+0000 (which PostgreSQL
/// refuses as a parameter, see `domain::nul`).
fn possible_key_id(id: String) -> Result<String, ApiError> {
    if id.contains('\0') {
        return Err(no_such_key(&id));
    }
    Ok(id)
}

/// The 409 of a change that would leave no active admin key.
fn last_admin_key(id: &str) -> ApiError {
    ApiError::conflict(format!(
        "key '{}' is the last active admin key: create another admin key first (or manage keys \
         with `annals keys` on the server's host)",
        crate::domain::time::truncate_for_message(id)
    ))
}

fn no_such_key(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "there is no key with id '{}'",
        crate::domain::time::truncate_for_message(id)
    ))
}
