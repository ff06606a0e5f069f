//! The whole HTTP surface in one place. Each area owns its handlers; this file only
//! assembles them and applies the layers every request goes through.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::http::json_error;
use crate::http::metrics::{MatchedRouteLayer, RecordLayer, peer, scrape};
use crate::http::middleware::{self, REQUEST_ID};
use crate::state::AppState;
use crate::{mcp, oauth};

/// Paths shared by the router and the metadata documents that publish them.
pub mod paths {
    pub const HEALTHZ: &str = "/healthz";
    pub const READYZ: &str = "/readyz";
    pub const STYLESHEET: &str = "/static/gatehouse.css";
    pub const METRICS: &str = "/metrics";
}

/// The whole application as one service. The layers every request goes through wrap the
/// router once, as one concrete stack: applied with `Router::layer`, each layer would
/// wrap every route in a boxed service that is cloned on each request (measured: a
/// tenth of a `tools/call`'s instructions). Only [`MatchedRouteLayer`], which needs the
/// matched route, sits inside the router.
pub fn router(
    state: AppState,
) -> impl tower::Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    let body_limit = state.config.server.max_body_bytes;
    let timeout = state.config.server.request_timeout;
    let https = state.config.server.public_url.starts_with("https://");
    let record = RecordLayer::new(state.metrics.http.clone());
    let matched = MatchedRouteLayer::new(state.metrics.http.clone());
    let mut router = Router::new();
    if state.config.metrics.enabled && state.config.metrics.bind.is_none() {
        router = router.route(paths::METRICS, get(get_metrics));
    }
    let router = router
        .route(paths::HEALTHZ, get(get_healthz))
        .route(paths::READYZ, get(get_readyz))
        .route(paths::STYLESHEET, get(get_stylesheet))
        .merge(oauth::router(&state))
        .merge(mcp::router(&state.config.mcp.sse_paths))
        .fallback(not_found)
        .with_state(state)
        .layer(matched);
    // Outermost first: the first layer sees the request first.
    ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .layer(record)
        .layer(SetRequestIdLayer::new(
            REQUEST_ID.clone(),
            middleware::MakeRequestIds::new(),
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(middleware::request_span)
                .on_request(())
                .on_response(middleware::OnResponse),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .map_response(move |res: Response| middleware::finish_response(https, res))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout.max(Duration::from_millis(1)),
        ))
        .map_response(IntoResponse::into_response)
        .layer(RequestBodyLimitLayer::new(body_limit))
        .service(router)
}

/// The router of the separate `metrics.bind` listener: `/metrics` and nothing else.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route(
            paths::METRICS,
            get(|State(state): State<AppState>, req: Request| async move {
                scrape(
                    &state.metrics,
                    &state.config.metrics,
                    true,
                    peer(&req),
                    req.headers(),
                )
            }),
        )
        .fallback(not_found)
        .with_state(state)
}

/// `GET /metrics` on the main listener (see [`scrape`] for who may read it).
async fn get_metrics(State(state): State<AppState>, req: Request) -> Response {
    scrape(
        &state.metrics,
        &state.config.metrics,
        false,
        peer(&req),
        req.headers(),
    )
}

/// The process is up and serving HTTP.
async fn get_healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// The process can do useful work: its database answers.
async fn get_readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => axum::Json(serde_json::json!({
            "status": "ready",
            "database": state.store.backend(),
        }))
        .into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "database is unreachable",
            )
        }
        Err(_) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "database did not answer in time",
        ),
    }
}

async fn get_stylesheet() -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../static/gatehouse.css"),
    )
        .into_response()
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}
