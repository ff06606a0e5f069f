//! Layers applied to every route.

use std::any::Any;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use tower_http::request_id::{MakeRequestId, RequestId};

use super::json_error;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids shaped like UUIDs: 64 random bits chosen at start (so instances differ)
/// and a counter. A v4 UUID per request cost a `getrandom` system call per request.
#[derive(Clone, Copy)]
pub struct MakeRequestIds {
    prefix: u64,
}

static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl MakeRequestIds {
    pub fn new() -> Self {
        Self {
            prefix: rand::random(),
        }
    }
}

impl Default for MakeRequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl MakeRequestId for MakeRequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // 8-4-4-4-12 hex digits: the prefix's 64 bits, then the counter's low 64 bits.
        // Written by hand; `format!` showed up in profiles of the hot path.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bits = (u128::from(self.prefix) << 64) | u128::from(n);
        let mut id = [b'-'; 36];
        let mut shift = 128;
        for (i, slot) in id.iter_mut().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                continue;
            }
            shift -= 4;
            *slot = HEX[((bits >> shift) & 15) as usize];
        }
        HeaderValue::from_bytes(&id).ok().map(RequestId::new)
    }
}

/// The span every request runs in; the request id ties log lines together. When spans
/// are exported it is also an OpenTelemetry server span, continuing the caller's
/// `traceparent`, and named by its route once the router has matched one
/// ([`crate::telemetry::name_request_span`]).
pub fn request_span(req: &Request<Body>) -> tracing::Span {
    let id = req
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-");
    if !crate::telemetry::exporting() {
        return tracing::info_span!(
            "request",
            request_id = %id,
            method = %req.method(),
            path = %req.uri().path(),
        );
    }
    // Named "unmatched", without `http.route`, until a route matches: the route, not
    // the path, so names stay few and never carry a value from the URL.
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        otel.name = %format_args!("{} unmatched", req.method()),
        otel.kind = "server",
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    crate::telemetry::follow_caller(&span, req.headers());
    span
}

/// Logs the response like tower-http's default and records its status on the span (a
/// no-op unless spans are exported).
#[derive(Clone, Copy)]
pub struct OnResponse;

impl<B> tower_http::trace::OnResponse<B> for OnResponse {
    fn on_response(self, res: &Response<B>, latency: std::time::Duration, span: &tracing::Span) {
        let status = res.status().as_u16();
        span.record("http.response.status_code", i64::from(status));
        if status >= 500 {
            span.record("otel.status_code", "ERROR");
        }
        tower_http::trace::DefaultOnResponse::new()
            .level(tracing::Level::INFO)
            .on_response(res, latency, span);
    }
}

/// What every response gets on its way out: a JSON body for error statuses that layers
/// or the router produced without one, then the security headers. One plain function
/// under `MapResponseLayer`, so it costs no boxed future per request.
pub fn finish_response(https: bool, res: Response<Body>) -> Response<Body> {
    let mut res = error_body(res);
    let h = res.headers_mut();
    // Served over https (behind the TLS proxy): browsers should never try plain http.
    if https {
        h.entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert(HeaderValue::from_static(
                "max-age=63072000; includeSubDomains",
            ));
    }
    h.entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    h.entry(header::X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("DENY"));
    h.entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("no-referrer"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    res
}

/// Turns a panic into a generic 500; the panic itself is logged, never sent.
pub fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "request handler panicked");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "internal error",
    )
}

/// Gives error statuses produced by layers or the router (413 from the body limit, 408
/// from the timeout, 405 for a method a route lacks) a JSON body instead of an empty
/// one, and logs 5xx once.
fn error_body(res: Response<Body>) -> Response<Body> {
    let status = res.status();
    if status.is_server_error() {
        tracing::error!(status = status.as_u16(), "request failed");
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return res;
    }
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            let mut json = json_error(status, "invalid_request", "request body is too large");
            // The rest of the body is never read, so hyper drops the connection after
            // this answer; saying so keeps a client from sending its next request on it
            // (a pooled reqwest client did, and got a broken pipe).
            json.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            json
        }
        StatusCode::REQUEST_TIMEOUT => json_error(status, "invalid_request", "request timed out"),
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = res.headers().get(header::ALLOW).cloned();
            let mut json = json_error(status, "invalid_request", "method not allowed here");
            if let Some(allow) = allow {
                json.headers_mut().insert(header::ALLOW, allow);
            }
            json
        }
        _ => res.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_shaped_and_differ() {
        let mut make = MakeRequestIds {
            prefix: 0x0123_4567_89ab_cdef,
        };
        let req = Request::new(Body::empty());
        let a = make.make_request_id(&req).unwrap();
        let b = make.make_request_id(&req).unwrap();
        let a = a.header_value().to_str().unwrap().to_owned();
        let b = b.header_value().to_str().unwrap();
        assert_eq!(a.len(), 36);
        assert!(a.starts_with("01234567-89ab-cdef-"), "{a}");
        assert_eq!(a.matches('-').count(), 4);
        assert_ne!(a, b);
    }
}
