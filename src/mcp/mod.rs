//! The MCP resource server at `/mcp`. Imports domain, crypto (verification), storage,
//! http and state; never oauth.

pub mod auth;
mod calls;
pub(crate) mod dispatch;
pub mod guard;
mod metadata;
pub mod meter;
pub mod rpc;
pub(crate) mod server;
pub mod sse;
pub mod tools;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

pub const PATH: &str = "/mcp";

/// `/mcp`, its metadata, and the legacy SSE transport at each of `sse_paths`.
pub fn router(sse_paths: &[String]) -> Router<AppState> {
    let mut router = Router::new();
    for path in sse_paths {
        router = router
            .route(path, get(sse::open_stream).post(server::post_mcp))
            .route(&format!("{path}/messages"), post(sse::post_message));
    }
    router
        .route(
            PATH,
            post(server::post_mcp)
                .get(server::get_or_delete_mcp)
                .delete(server::get_or_delete_mcp),
        )
        .route(
            metadata::PATH_SUFFIXED,
            get(metadata::get_protected_resource_metadata),
        )
        .route(
            metadata::ROOT,
            get(metadata::get_protected_resource_metadata),
        )
}
