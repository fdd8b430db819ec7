//! Limits on a request's head, checked before it is routed: a URI (path and query) longer than
//! `config::MAX_URI_BYTES` gets a JSON `414`, headers adding up to more than
//! `config::MAX_HEADER_BYTES` (names and values) a JSON `431`. So no handler, audit row or error
//! message ever carries a URI or header section of tens of kilobytes. It is the innermost of the
//! shared layers (`api::with_layers`), so a refusal still gets its request id.
//!
//! Hand-written rather than `from_fn`, which would box every request's future on the hot path.
//! Heads larger still never get this far: the listener caps hyper's read buffer at
//! `config::HEAD_BUFFER_BYTES`, and hyper refuses a head that does not fit with its own bare
//! `431` (see `listener`).

use std::task::{Context, Poll};

use axum::http::{self, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use crate::config::{MAX_HEADER_BYTES, MAX_URI_BYTES};
use crate::error::ApiError;

#[derive(Clone, Copy, Debug, Default)]
pub struct HeadLimitsLayer;

impl<S> Layer<S> for HeadLimitsLayer {
    type Service = HeadLimits<S>;

    fn layer(&self, inner: S) -> HeadLimits<S> {
        HeadLimits { inner }
    }
}

#[derive(Clone, Debug)]
pub struct HeadLimits<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for HeadLimits<S>
where
    S: Service<http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match refusal(&request) {
            Some(error) => Either::Left(ready(Ok(error.into_response()))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

/// Why the request's head is refused, if it is.
fn refusal<B>(request: &http::Request<B>) -> Option<ApiError> {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri > MAX_URI_BYTES {
        return Some(
            ApiError::new(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                format!(
                    "the request URI is {uri} bytes; the limit is {MAX_URI_BYTES}: send long values in a request body"
                ),
            )
            .with_field("uri"),
        );
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers > MAX_HEADER_BYTES {
        return Some(
            ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!(
                    "the request's headers are {headers} bytes (names and values); the limit is {MAX_HEADER_BYTES}"
                ),
            )
            .with_field("headers"),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::Request;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn answer(request: Request) -> (StatusCode, serde_json::Value) {
        let app = Router::new()
            .route("/p", get(|| async { "ok" }))
            .layer(HeadLimitsLayer);
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    fn get_uri(uri: &str) -> Request {
        Request::get(uri).body(axum::body::Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn uris_up_to_the_limit_pass_and_longer_ones_get_a_json_414() {
        let at_limit = format!("/p?q={}", "a".repeat(MAX_URI_BYTES - "/p?q=".len()));
        assert_eq!(answer(get_uri(&at_limit)).await.0, StatusCode::OK);
        let (status, body) = answer(get_uri(&format!("{at_limit}a"))).await;
        assert_eq!(status, StatusCode::URI_TOO_LONG);
        assert_eq!(body["error"], "uri_too_long");
        assert_eq!(body["field"], "uri");
        let long_path = format!("/{}", "p".repeat(MAX_URI_BYTES));
        assert_eq!(
            answer(get_uri(&long_path)).await.0,
            StatusCode::URI_TOO_LONG
        );
    }

    #[tokio::test]
    async fn headers_up_to_the_limit_pass_and_more_get_a_json_431() {
        let with_header = |value_len: usize| {
            Request::get("/p")
                .header("x-pad", "v".repeat(value_len))
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let fits = MAX_HEADER_BYTES - "x-pad".len();
        assert_eq!(answer(with_header(fits)).await.0, StatusCode::OK);
        let (status, body) = answer(with_header(fits + 1)).await;
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(body["error"], "headers_too_large");
        assert_eq!(body["field"], "headers");
    }
}
