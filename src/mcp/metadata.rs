//! RFC 9728 protected-resource metadata for `/mcp`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

pub const PATH_SUFFIXED: &str = "/.well-known/oauth-protected-resource/mcp";
pub const ROOT: &str = "/.well-known/oauth-protected-resource";

pub fn document(state: &AppState) -> serde_json::Value {
    let scopes: Vec<&str> = state.config.oauth.scopes.names().collect();
    serde_json::json!({
        "resource": state.resource.as_str(),
        "authorization_servers": [state.config.server.public_url],
        "scopes_supported": scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": "Gatehouse",
    })
}

pub async fn get_protected_resource_metadata(State(state): State<AppState>) -> Response {
    Json(document(&state)).into_response()
}
