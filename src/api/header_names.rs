//! The names of Annals' own HTTP headers, each made once.
//!
//! A header name given as `&str` is parsed and checked by `http` on every lookup or insert;
//! these run on every request, so the names are statics and are used by reference.

use axum::http::HeaderName;

/// The request id, set (or kept) on every request and echoed on every answer.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// An API key, the first place a request may present one (`Authorization: Bearer` the other).
pub static API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// The requests per minute a key may make.
pub static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// The requests left in the current window.
pub static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// Seconds until the window frees a request.
pub static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// Present on a CloudEvent in binary mode (the attributes travel as `ce-*` headers).
pub static CE_SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
/// The addresses a request passed through, each proxy appending its peer (trusted only from
/// `ANNALS_TRUSTED_PROXIES`).
pub static FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
