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
