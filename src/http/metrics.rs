//! The HTTP side of metrics: a layer that counts every request by route template,
//! and who may read `GET /metrics`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::json_error;
use crate::config::MetricsConfig;
use crate::metrics::{CONTENT_TYPE, HttpMetrics, Metrics, method_index};

/// Counts each request under its matched route template (never the raw path), method
/// and status, and times it to the response head. The outermost layer, so it also counts
/// what the layers inside answer themselves (413, 408, a caught panic). It learns the
/// route from [`MatchedRouteLayer`] inside the router, through a slot in the request.
#[derive(Clone)]
pub struct RecordLayer {
    metrics: Arc<HttpMetrics>,
}

impl RecordLayer {
    pub fn new(metrics: Arc<HttpMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Record {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
}

/// Where [`MatchedRouteLayer`] leaves the matched route's metrics slot (0: none matched).
#[derive(Clone, Default)]
struct RouteSlot(Arc<AtomicUsize>);

impl<S, B, ResBody> tower::Service<Request<B>> for Record<S>
where
    S: tower::Service<Request<B>, Response = axum::http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RecordFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let route = RouteSlot::default();
        req.extensions_mut().insert(route.clone());
        let method = method_index(req.method());
        RecordFuture {
            inner: self.inner.call(req),
            metrics: self.metrics.clone(),
            route,
            method,
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct RecordFuture<F> {
        #[pin]
        inner: F,
        metrics: Arc<HttpMetrics>,
        route: RouteSlot,
        method: usize,
        started: Instant,
    }
}

impl<F, ResBody, E> Future for RecordFuture<F>
where
    F: Future<Output = Result<axum::http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(res) = &result {
            this.metrics.record(
                this.route.0.load(Ordering::Relaxed),
                *this.method,
                res.status().as_u16(),
                this.started.elapsed(),
            );
        }
        Poll::Ready(result)
    }
}

/// Applied with `Router::layer`, so it runs after the router has matched a route: hands
/// the route template to [`Record`] and names the request span after it when spans are
/// exported. Does its work in `call` and returns the inner future as it is.
#[derive(Clone)]
pub struct MatchedRouteLayer {
    metrics: Arc<HttpMetrics>,
}

impl MatchedRouteLayer {
    pub fn new(metrics: Arc<HttpMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for MatchedRouteLayer {
    type Service = MatchedRoute<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MatchedRoute {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MatchedRoute<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
}

impl<S, B> tower::Service<Request<B>> for MatchedRoute<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(matched) = req.extensions().get::<MatchedPath>() {
            if let Some(slot) = req.extensions().get::<RouteSlot>() {
                let index = self.metrics.route_index(Some(matched.as_str()));
                slot.0.store(index, Ordering::Relaxed);
            }
            crate::telemetry::name_request_span(req.method(), matched.as_str());
        }
        self.inner.call(req)
    }
}

/// Headers a reverse proxy adds: a request carrying one came from elsewhere, whatever
/// its TCP peer says.
const FORWARDING: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// Answers a scrape, or refuses it:
/// - with `metrics.token` set, only `Authorization: Bearer <token>` (401 otherwise);
/// - on the separate `metrics.bind` listener without a token, anyone who can connect;
/// - on the main listener without a token, only loopback peers whose request shows no
///   sign of a proxy; anyone else gets the same 404 as an unknown path.
pub fn scrape(
    metrics: &Metrics,
    config: &MetricsConfig,
    separate_listener: bool,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Response {
    if let Some(token) = &config.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        // Digests first, so the comparison takes the same time whatever the lengths.
        let ok = given.is_some_and(|g| {
            use sha2::Digest;
            let g = sha2::Sha256::digest(g.as_bytes());
            let want = sha2::Sha256::digest(token.expose().as_bytes());
            g.ct_eq(&want).into()
        });
        if !ok {
            let mut res = json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "metrics need the scrape token",
            );
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"metrics\""),
            );
            return res;
        }
    } else if !separate_listener {
        let local = peer.is_some_and(|p| p.ip().is_loopback());
        let proxied = FORWARDING.iter().any(|h| headers.contains_key(*h));
        if !local || proxied {
            return json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
        }
    }
    (
        [
            (header::CONTENT_TYPE, CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        metrics.render(),
    )
        .into_response()
}

/// The peer address, when the server was started with connect info.
pub fn peer<B>(req: &Request<B>) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}
