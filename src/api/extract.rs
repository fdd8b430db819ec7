//! Request extraction shared by the handlers: the calling key (`Auth`) and JSON bodies read
//! within the size, time, memory, depth and content-type rules, each failure a JSON `ApiError`.
//!
//! Invariant: the bodies being read and parsed at any moment hold at most
//! `ANNALS_BODY_MEMORY_BYTES` between them (`BodyMemory`); a body that would go over it is
//! refused with `503` + `Retry-After` as it arrives, so many large (or highly compressed) bodies
//! at once can't exhaust the server's memory.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::AppState;
use crate::auth::Principal;
use crate::domain::json_depth::{MAX_JSON_DEPTH, depth_exceeds};
use crate::domain::nul::{NUL_MESSAGE, json_has_nul, nul_path};
use crate::domain::unique_keys::{self, DUPLICATE_KEY_MESSAGE, JsonError};
use crate::error::ApiError;
use crate::listener::ClientAddr;

/// The authenticated caller, as found by the access layer (which runs before the handler,
/// so unauthenticated requests never have their bodies read).
pub struct Auth(pub Principal);

/// The caller's address as the listener found it (the socket's peer, or the client behind a
/// trusted proxy), if the request came through the listener.
pub fn client_ip(request: &Request) -> Option<IpAddr> {
    request.extensions().get::<ClientAddr>().map(|c| c.0)
}

/// The key text a request presents: `X-API-Key`, else `Authorization: Bearer`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(&super::header_names::API_KEY) {
        return v.to_str().ok().map(str::trim);
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Auth)
            .ok_or_else(|| {
                ApiError::internal("a handler that needs a key is not behind the access layer")
            })
    }
}

/// Is the declared content type JSON? A missing type is taken as JSON (curl's `-d` users).
/// A `charset` other than UTF-8 is refused: the body would be read as UTF-8 all the same.
fn is_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    match content_type_essence(headers) {
        None => Ok(()),
        Some(essence)
            if essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json")) =>
        {
            match declared_charset(headers) {
                Some(charset) if !charset.eq_ignore_ascii_case("utf-8") => {
                    Err(ApiError::unsupported_media_type(format!(
                        "charset '{}' is not supported; JSON is sent as UTF-8 (RFC 8259)",
                        crate::domain::time::truncate_for_message(&charset)
                    ))
                    .with_field("content-type"))
                }
                _ => Ok(()),
            }
        }
        Some(_) => {
            let text = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Err(ApiError::unsupported_media_type(format!(
                "Content-Type '{}' is not supported; send application/json",
                crate::domain::time::truncate_for_message(text)
            )))
        }
    }
}

/// The `charset` parameter of the request's Content-Type, unquoted, if it has one.
fn declared_charset(headers: &HeaderMap) -> Option<String> {
    let text = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    text.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').to_string())
    })
}

/// The essence (`type/subtype`, lower-case, without parameters) of the request's Content-Type.
pub fn content_type_essence(headers: &HeaderMap) -> Option<std::borrow::Cow<'_, str>> {
    let text = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(crate::domain::cloudevents::media_essence(text))
}

/// The memory request bodies may hold between them (`ANNALS_BODY_MEMORY_BYTES`), shared by every
/// request of one server: a semaphore of bytes, as the write queue's byte budget is.
#[derive(Clone, Debug)]
pub struct BodyMemory(Arc<Semaphore>);

impl BodyMemory {
    pub fn new(capacity: usize) -> Self {
        Self(Arc::new(Semaphore::new(
            capacity.min(Semaphore::MAX_PERMITS),
        )))
    }
}

/// How much of a request body is read, for how long, and from which memory budget.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit<'a> {
    pub max_bytes: usize,
    pub read_timeout: Duration,
    pub memory: &'a BodyMemory,
}

impl AppState {
    /// The limits every request body is read within.
    pub fn body_limit(&self) -> BodyLimit<'_> {
        BodyLimit {
            max_bytes: self.limits.max_body_bytes,
            read_timeout: self.limits.read_timeout,
            memory: &self.body_memory,
        }
    }
}

/// A request body read whole, holding its share of `BodyMemory` until dropped.
pub struct ReadBody<'a> {
    pub bytes: Bytes,
    _held: Option<SemaphorePermit<'a>>,
}

/// Reads the body within `limit.read_timeout` (else `408`), at most `limit.max_bytes` of it
/// *after* decompression (else `413`), and within the memory left in `limit.memory` (else `503`):
/// `gzip` and `deflate` bodies arrive here already inflated as a stream (the
/// `RequestDecompressionLayer` in `with_layers`), so a gzip bomb stops at the limit instead of
/// filling memory. Any other `Content-Encoding` is passed through by that layer and refused here
/// with `415`.
pub async fn read_body<'a>(
    headers: &HeaderMap,
    body: Body,
    limit: BodyLimit<'a>,
) -> Result<ReadBody<'a>, ApiError> {
    let BodyLimit {
        max_bytes,
        read_timeout,
        memory,
    } = limit;
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let encoding = encoding.to_str().unwrap_or("?");
        if !encoding.trim().eq_ignore_ascii_case("identity") {
            return Err(ApiError::unsupported_media_type(format!(
                "Content-Encoding '{}' is not supported; send gzip, deflate or an uncompressed body",
                crate::domain::time::truncate_for_message(encoding)
            ))
            .with_field("content-encoding"));
        }
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max_bytes as u64
    {
        return Err(body_too_large(max_bytes));
    }
    let mut held = None;
    // A deadline for the whole body, not for each piece: a client dribbling a byte at a time
    // would otherwise hold its connection and this handler for as long as it liked.
    let read = tokio::time::timeout(read_timeout, collect(body, max_bytes, &memory.0, &mut held));
    let read = read.await;
    let Ok(read) = read else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s (ANNALS_READ_TIMEOUT_SECS)",
                read_timeout.as_secs()
            ),
        ));
    };
    Ok(ReadBody {
        bytes: read?,
        _held: held,
    })
}

/// The whole body, at most `max_bytes` of it (else `413`), each piece's bytes taken from
/// `memory` into `held` as it arrives (else `503`). A body in one piece (the usual case) is
/// passed on as it came, without a copy.
async fn collect<'a>(
    mut body: Body,
    max_bytes: usize,
    memory: &'a Semaphore,
    held: &mut Option<SemaphorePermit<'a>>,
) -> Result<Bytes, ApiError> {
    let mut whole = Bytes::new();
    let mut pieces: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_json(format!(
                "the request body could not be read (is its Content-Encoding right?): {e}"
            ))
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing a handler reads
        };
        if whole.len() + pieces.as_ref().map_or(0, BytesMut::len) + data.len() > max_bytes {
            return Err(body_too_large(max_bytes));
        }
        let more = u32::try_from(data.len())
            .map_or(Err(()), |n| memory.try_acquire_many(n).map_err(|_| ()));
        let Ok(more) = more else {
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the server is holding as many request bodies in memory as it may \
                 (ANNALS_BODY_MEMORY_BYTES); retry after the Retry-After seconds",
            );
            error.retry_after_secs = Some(1);
            return Err(error);
        };
        match held {
            Some(held) => held.merge(more),
            None => *held = Some(more),
        }
        match &mut pieces {
            Some(pieces) => pieces.extend_from_slice(&data),
            None if whole.is_empty() => whole = data,
            None => {
                let mut joined = BytesMut::with_capacity(whole.len() + data.len());
                joined.extend_from_slice(&whole);
                joined.extend_from_slice(&data);
                whole = Bytes::new();
                pieces = Some(joined);
            }
        }
    }
    Ok(pieces.map_or(whole, BytesMut::freeze))
}

fn body_too_large(max_bytes: usize) -> ApiError {
    ApiError::too_large(format!(
        "the request body is larger than {max_bytes} bytes (ANNALS_MAX_BODY_BYTES, counted after decompression)"
    ))
}

/// The answer to a client's JSON document that `unique_keys::from_slice` refused: not JSON is a
/// `400` (`not_json` says which document, `field` names it if it is not the whole body); a
/// repeated key a `422` at its path, under `field`.
pub fn refused_json(error: JsonError, field: Option<&str>, not_json: &str) -> ApiError {
    match (error, field) {
        (JsonError::Syntax(e), None) => ApiError::bad_json(format!("{not_json}: {e}")),
        (JsonError::Syntax(e), Some(field)) => {
            ApiError::bad_json(format!("{not_json}: {e}")).with_field(field)
        }
        (JsonError::DuplicateKey { path }, None) => ApiError::invalid(path, DUPLICATE_KEY_MESSAGE),
        (JsonError::DuplicateKey { path }, Some(field)) => {
            ApiError::invalid(format!("{field}.{path}"), DUPLICATE_KEY_MESSAGE)
        }
    }
}

/// Parses a JSON document within the depth limit, each object's keys unique.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    // RFC 8259 lets a parser ignore a UTF-8 byte order mark, which some Windows tools write;
    // a UTF-16 one means the body is not UTF-8 at all, which JSON between systems must be.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
        return Err(ApiError::bad_json(
            "the request body is UTF-16; send JSON as UTF-8 (RFC 8259)",
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_json(
            "the request body is empty; send a JSON object",
        ));
    }
    if depth_exceeds(bytes, MAX_JSON_DEPTH) {
        return Err(ApiError::invalid(
            "",
            format!("JSON is nested deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    let value = unique_keys::from_slice(bytes)
        .map_err(|e| refused_json(e, None, "the request body is not valid JSON"))?;
    if json_has_nul(bytes)
        && let Some(path) = nul_path(&value)
    {
        return Err(ApiError::invalid(path, NUL_MESSAGE));
    }
    Ok(value)
}

/// Reads the body (within `limit`) and parses it as JSON.
pub async fn read_json(
    headers: &HeaderMap,
    body: Body,
    limit: BodyLimit<'_>,
) -> Result<Value, ApiError> {
    is_json_content_type(headers)?;
    let body = read_body(headers, body, limit).await?;
    parse_json(&body.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn key_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(presented_key(&h), Some("abc"));
        h.insert("x-api-key", HeaderValue::from_static("xyz"));
        assert_eq!(presented_key(&h), Some("xyz"));
        let mut basic = HeaderMap::new();
        basic.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_key(&basic), None);
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(is_json_content_type(&h).is_ok());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(is_json_content_type(&h).is_ok());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/cloudevents+json"),
        );
        assert!(is_json_content_type(&h).is_ok());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(is_json_content_type(&h).is_err());
        for ok in [
            "application/json; charset=UTF-8",
            "application/json;charset=\"utf-8\"",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ok));
            assert!(is_json_content_type(&h).is_ok(), "{ok}");
        }
        for bad in [
            "application/json; charset=utf-16",
            "application/json; charset=latin1",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(bad));
            let e = is_json_content_type(&h).unwrap_err();
            assert_eq!(
                e.status,
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{bad}"
            );
        }
    }

    #[test]
    fn a_utf8_byte_order_mark_is_ignored_and_utf16_is_named() {
        let parsed = parse_json(b"\xEF\xBB\xBF{\"a\": 1}").unwrap();
        assert_eq!(parsed["a"], 1);
        let e = parse_json(b"\xFF\xFE{\x00}\x00").unwrap_err();
        assert!(e.message.contains("UTF-16"), "{}", e.message);
        assert!(
            parse_json(b"\xEF\xBB\xBF").is_err(),
            "a mark alone is an empty body"
        );
    }
}
