//! `ApiError`: the one error type handlers return, and its JSON form
//! `{"error", "message", "field"?, "errors"?}` (DESIGN.md "Status codes").
//!
//! Invariant: a 5xx body never carries internals. The cause is logged with the request id and
//! the client gets a generic sentence.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::FieldError;
use crate::domain::envelope::Rejected;
use crate::store::StoreError;

/// An error response. Boxed so `Result<T, ApiError>` stays small on the happy path.
#[derive(Debug)]
pub struct ApiError(Box<ApiErrorData>);

#[derive(Debug)]
pub struct ApiErrorData {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub errors: Vec<FieldError>,
    pub retry_after_secs: Option<u64>,
    /// Extra JSON members (e.g. conflicting indexes).
    pub extra: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
}

impl std::ops::Deref for ApiError {
    type Target = ApiErrorData;
    fn deref(&self) -> &ApiErrorData {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ApiErrorData {
        &mut self.0
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self(Box::new(ApiErrorData {
            status,
            code,
            message: message.into(),
            field: None,
            errors: Vec::new(),
            retry_after_secs: None,
            extra: None,
        }))
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The error in one line for a command-line user: `field: message`, or the message alone.
    pub fn summary(&self) -> String {
        match &self.field {
            Some(field) if !field.is_empty() => format!("{field}: {}", self.message),
            _ => self.message.clone(),
        }
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// A single invalid field (`422`); `""` is the whole document (as in a JSON Pointer).
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid_fields(vec![FieldError::new(field, message)])
    }

    /// Several invalid fields (`422`); `field` is the first, `message` summarizes. A problem
    /// with the whole document (path `""`) names no field.
    pub fn invalid_fields(errors: Vec<FieldError>) -> Self {
        let first = errors
            .first()
            .map(|e| (display_path(e), e.message.as_str()));
        let message = match (&first, errors.len()) {
            (Some((path, message)), n) => {
                let more = match n {
                    1 => String::new(),
                    n => format!(" (and {} more problems)", n - 1),
                };
                if path.is_empty() {
                    format!("{message}{more}")
                } else {
                    format!("{path}: {message}{more}")
                }
            }
            (None, _) => String::from("the request is not valid"),
        };
        let field = first.map(|(path, _)| path).filter(|p| !p.is_empty());
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        );
        error.field = field;
        error.errors = errors;
        error
    }

    pub fn from_rejected(rejected: Rejected) -> Self {
        if rejected.too_large {
            let first = rejected.errors.into_iter().next();
            let message = first
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default();
            let mut error = Self::too_large(message);
            error.field = first.map(|e| display_path(&e));
            error
        } else {
            Self::invalid_fields(rejected.errors)
        }
    }

    pub fn internal(context: impl std::fmt::Display) -> Self {
        tracing::error!(error = %context, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle the request; it has been logged with the request id",
        )
    }

    pub fn from_store(error: StoreError) -> Self {
        match error {
            StoreError::Overloaded { retry_after_secs } => {
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "the server is at its write capacity; retry after the Retry-After seconds",
                );
                e.retry_after_secs = Some(retry_after_secs);
                e
            }
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "store unavailable");
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the event store is unavailable; retry shortly",
                );
                e.retry_after_secs = Some(1);
                e
            }
            StoreError::QueryTooBroad => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "query_too_broad",
                "query too broad: add user_id, event_type, correlation_id or a time range, or index the field",
            ),
            StoreError::LastAdminKey => Self::conflict(
                "that would leave no active admin key: create another admin key first",
            ),
            StoreError::LimitReached(message) => Self::conflict(message),
            StoreError::Internal(e) => Self::internal(format!("{e:#}")),
        }
    }
}

/// `events[3].event_type` for a batch item, else the field itself.
fn display_path(e: &FieldError) -> String {
    match e.index {
        Some(i) if e.field.is_empty() => format!("events[{i}]"),
        Some(i) => format!("events[{i}].{}", e.field),
        None => e.field.clone(),
    }
}

impl ApiError {
    /// The JSON body of this error's answer.
    pub fn body(&self) -> serde_json::Value {
        let body = Body {
            error: self.code,
            message: &self.message,
            field: self.field.as_deref(),
            errors: &self.errors,
        };
        let mut value = serde_json::to_value(&body).expect("error body serializes");
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (&self.extra, value.as_object_mut())
        {
            obj.extend(extra.clone());
        }
        value
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let value = self.body();
        let ApiError(this) = self;
        let mut response = (this.status, axum::Json(value)).into_response();
        if let Some(secs) = this.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::from_store(e)
    }
}
