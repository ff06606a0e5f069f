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
pub mod tools;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

pub const PATH: &str = "/mcp";

pub fn router() -> Router<AppState> {
    Router::new()
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
