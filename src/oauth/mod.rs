//! The OAuth 2.1 authorization server. Imports domain, crypto, storage and http; never mcp.

pub(crate) mod authorize;
pub(crate) mod cimd;
pub(crate) mod client_auth;
pub mod clients;
mod error;
pub(crate) mod form;
mod introspect;
mod metadata;
pub(crate) mod register;
mod revoke;
mod session;
pub(crate) mod token;

use axum::Router;
use axum::http::{HeaderValue, Method, header};
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::state::AppState;

pub use error::{ErrorCode, OAuthError};
pub use metadata::metadata_document;

pub mod paths {
    pub const METADATA: &str = "/.well-known/oauth-authorization-server";
    pub const AUTHORIZE: &str = "/authorize";
    pub const LOGIN: &str = "/authorize/login";
    pub const TOKEN: &str = "/token";
    pub const REGISTER: &str = "/register";
    pub const REVOKE: &str = "/revoke";
    pub const JWKS: &str = "/jwks";
    pub const INTROSPECT: &str = "/introspect";
}

pub fn router(state: &AppState) -> Router<AppState> {
    let origins: Vec<HeaderValue> = state
        .config
        .oauth
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    // Browser-based clients call these directly; the pages (authorize) need no CORS.
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("mcp-protocol-version"),
        ]);
    let api = Router::new()
        .route(
            paths::METADATA,
            get(metadata::get_authorization_server_metadata),
        )
        .route(paths::JWKS, get(metadata::get_jwks))
        .route(paths::REGISTER, post(register::post_register))
        .route(paths::TOKEN, post(token::post_token))
        .route(paths::REVOKE, post(revoke::post_revoke))
        .route(paths::INTROSPECT, post(introspect::post_introspect))
        .layer(cors);
    Router::new()
        .route(
            paths::AUTHORIZE,
            get(authorize::get_authorize).post(authorize::post_authorize),
        )
        .route(paths::LOGIN, post(authorize::post_login))
        .merge(api)
}
