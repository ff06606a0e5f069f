//! `POST /mcp`: stateless Streamable HTTP, JSON responses, legacy-era (`initialize`)
//! JSON-RPC. Every request is authenticated on its own.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::auth::{BearerError, authenticate};
use crate::state::AppState;

/// Newest first; the first is answered to a client asking for one we do not know.
pub const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

fn rpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    (
        status,
        axum::Json(
            json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }),
        ),
    )
        .into_response()
}

fn rpc_result(id: Value, result: Value) -> Response {
    axum::Json(json!({ "jsonrpc": "2.0", "id": id, "result": result })).into_response()
}

/// DNS-rebinding guard: a browser `Origin` must be one we know.
fn origin_allowed(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // server-to-server clients (Claude's cloud) send none
    };
    let own = url::Url::parse(&state.config.server.public_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    origin == own || state.config.oauth.cors_origins.iter().any(|o| o == origin)
}

pub async fn get_or_delete_mcp() -> Response {
    let mut res = rpc_error(
        StatusCode::METHOD_NOT_ALLOWED,
        Value::Null,
        -32000,
        "this endpoint is stateless: POST only",
    );
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    res
}

pub async fn post_mcp(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if !origin_allowed(&state, &headers) {
        return rpc_error(
            StatusCode::FORBIDDEN,
            Value::Null,
            -32000,
            "origin not allowed",
        );
    }
    if let Some(v) = headers.get("mcp-protocol-version") {
        let ok = v
            .to_str()
            .is_ok_and(|v| SUPPORTED_VERSIONS.contains(&v.trim()));
        if !ok {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32600,
                "unsupported MCP-Protocol-Version",
            );
        }
    }
    let principal = match authenticate(&state, &headers).await {
        Ok(Some(p)) => p,
        Ok(None) => return BearerError::Missing.into_response(&state),
        Err(e) => return e.into_response(&state),
    };
    let message: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32700,
                "parse error: the body is not JSON",
            );
        }
    };
    let Value::Object(obj) = &message else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            -32600,
            "invalid request: expected one JSON-RPC object (batches are not supported)",
        );
    };
    let id = obj.get("id").cloned();
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            id.unwrap_or(Value::Null),
            -32600,
            "invalid request: jsonrpc must be \"2.0\"",
        );
    }
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        // A response from the client: nothing to do.
        if obj.contains_key("result") || obj.contains_key("error") {
            return StatusCode::ACCEPTED.into_response();
        }
        return rpc_error(
            StatusCode::BAD_REQUEST,
            id.unwrap_or(Value::Null),
            -32600,
            "invalid request: method is missing",
        );
    };
    let Some(id) = id else {
        return StatusCode::ACCEPTED.into_response(); // a notification
    };
    if id.is_null() || !(id.is_string() || id.is_number()) {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            -32600,
            "invalid request: id must be a string or number",
        );
    }
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    match method {
        "initialize" => {
            let requested = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let version = if SUPPORTED_VERSIONS.contains(&requested) {
                requested
            } else {
                SUPPORTED_VERSIONS[0]
            };
            rpc_result(
                id,
                json!({
                    "protocolVersion": version,
                    "capabilities": { "tools": {} },
                    "serverInfo": { "name": "gatehouse", "title": "Gatehouse", "version": env!("CARGO_PKG_VERSION") },
                }),
            )
        }
        "ping" => rpc_result(id, json!({})),
        "tools/list" => {
            let tools: Vec<Value> = state.tools.list().map(|t| t.definition()).collect();
            rpc_result(id, json!({ "tools": tools }))
        }
        "tools/call" => {
            let Some(name) = params.get("name").and_then(Value::as_str) else {
                return rpc_error(
                    StatusCode::OK,
                    id,
                    -32602,
                    "invalid params: name is required",
                );
            };
            let Some(tool) = state.tools.find(name) else {
                return rpc_error(StatusCode::OK, id, -32602, &format!("unknown tool: {name}"));
            };
            let missing = tool.missing_scopes(&principal.scopes);
            if !missing.is_empty() {
                return BearerError::InsufficientScope(missing).into_response(&state);
            }
            let args = params
                .get("arguments")
                .cloned()
                .unwrap_or_else(|| json!({}));
            if !args.is_object() {
                return rpc_error(
                    StatusCode::OK,
                    id,
                    -32602,
                    "invalid params: arguments must be an object",
                );
            }
            let result = tool.call(&state, &principal, args).await;
            rpc_result(id, result.to_json())
        }
        other => rpc_error(
            StatusCode::OK,
            id,
            -32601,
            &format!(
                "method not found: {}",
                other.chars().take(80).collect::<String>()
            ),
        ),
    }
}
