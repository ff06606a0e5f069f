//! Shared HTTP plumbing: middleware and the error bodies used by every area.

pub mod metrics;
pub mod middleware;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A small JSON error for requests that never reached an endpoint's own error type
/// (unknown route, body too large, timeout, panic).
pub fn json_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut res = (
        status,
        Json(serde_json::json!({ "error": error, "error_description": description })),
    )
        .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The request's headers, moved out rather than cloned as axum's `HeaderMap` extractor
/// does (two allocations and about 900 instructions per request on `/mcp`). Only for
/// handlers whose remaining extractor reads the body alone, such as `Bytes` (not a form,
/// whose extractor checks Content-Type): it must come after every other extractor that
/// reads headers, which would see none.
pub struct TakeHeaders(pub axum::http::HeaderMap);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TakeHeaders {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(std::mem::take(&mut parts.headers)))
    }
}
