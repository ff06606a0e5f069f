//! RFC 8414 authorization server metadata and the JWKS.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::paths;
use crate::state::AppState;

pub fn metadata_document(state: &AppState) -> serde_json::Value {
    let base = &state.config.server.public_url;
    let mut scopes: Vec<&str> = state.config.oauth.scopes.names().collect();
    scopes.push("offline_access");
    serde_json::json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}{}", paths::AUTHORIZE),
        "token_endpoint": format!("{base}{}", paths::TOKEN),
        "registration_endpoint": format!("{base}{}", paths::REGISTER),
        "revocation_endpoint": format!("{base}{}", paths::REVOKE),
        "introspection_endpoint": format!("{base}{}", paths::INTROSPECT),
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "jwks_uri": format!("{base}{}", paths::JWKS),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "scopes_supported": scopes,
        "client_id_metadata_document_supported": true,
        "authorization_response_iss_parameter_supported": true,
        "service_documentation": format!("{base}/"),
    })
}

fn cacheable_json(value: serde_json::Value) -> Response {
    let mut res = Json(value).into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    res
}

pub async fn get_authorization_server_metadata(State(state): State<AppState>) -> Response {
    cacheable_json(metadata_document(&state))
}

pub async fn get_jwks(State(state): State<AppState>) -> Response {
    cacheable_json(state.keys.current().jwks())
}
