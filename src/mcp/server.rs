//! `POST /mcp`: stateless Streamable HTTP for every revision from 2024-11-05 to
//! 2026-07-28. Each request stands alone: it is authenticated, its revision is decided
//! from the request itself (MCP.md section 4's routing rule), and it is answered with
//! JSON, or with an SSE stream when a tool sends notifications while it runs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};

use super::auth::{BearerError, Principal, authenticate};
use super::dispatch::{self, Reply, Request};
use super::rpc::{self, DEFAULT_VERSION, Era, INVALID_REQUEST, PARSE_ERROR, RpcError};
use crate::http::TakeHeaders;
use crate::limits::{Bucket, ClientAddr};
use crate::metrics::AuthRejection;
use crate::state::AppState;

pub async fn get_or_delete_mcp() -> Response {
    let mut res = RpcError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        -32000,
        "this endpoint is stateless: POST only",
    )
    .into_response(Value::Null);
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    res
}

pub async fn post_mcp(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    TakeHeaders(headers): TakeHeaders,
    body: Bytes,
) -> Response {
    let principal = match caller(&state, &headers).await {
        Ok(p) => p,
        Err(res) => return res,
    };
    if let Some(rate) = state.config.limits.mcp_per_credential {
        let by_address;
        let bucket = match &principal.limit_bucket {
            Some(b) => b,
            None => {
                by_address = Bucket::address("mcp", addr);
                &by_address
            }
        };
        if let Err(e) = state.mcp_limits.hit(bucket, rate, state.clock.now()) {
            state.metrics.mcp.auth_rejected(AuthRejection::RateLimited);
            let message = format!(
                "rate limit reached ({rate}); try again in {} seconds",
                e.retry_after_secs
            );
            let mut res = RpcError::new(StatusCode::TOO_MANY_REQUESTS, -32000, &message)
                .into_response(Value::Null);
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(e.retry_after_secs));
            return res;
        }
    }
    let message: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return RpcError::new(
                StatusCode::BAD_REQUEST,
                PARSE_ERROR,
                "parse error: the body is not JSON",
            )
            .into_response(Value::Null);
        }
    };
    let header_version = match headers.get("mcp-protocol-version").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v.trim()),
        Some(Err(_)) => return RpcError::unsupported_version("").into_response(Value::Null),
    };
    match message {
        Value::Array(batch) => {
            handle_batch(&state, &principal, &headers, header_version, batch).await
        }
        Value::Object(obj) => {
            handle_single(&state, &principal, &headers, header_version, obj).await
        }
        _ => invalid_request(Value::Null, "invalid request: expected a JSON-RPC object"),
    }
}

/// The Host/Origin guard and authentication every MCP request passes first (anonymous
/// when the operator allows it), or the response that refuses it.
pub(crate) async fn caller(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Arc<Principal>, Response> {
    if let Err(why) = state.mcp_guard.check(headers) {
        return Err(RpcError::new(StatusCode::FORBIDDEN, -32000, why).into_response(Value::Null));
    }
    match authenticate(state, headers).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => match &state.config.mcp.anonymous_scopes {
            Some(scopes) => Ok(Arc::new(Principal::anonymous(scopes.clone()))),
            None => Err(BearerError::Missing.into_response(state)),
        },
        Err(e) => Err(e.into_response(state)),
    }
}

fn invalid_request(id: Value, message: &str) -> Response {
    RpcError::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, message).into_response(id)
}

/// A message's parts once its envelope checks out.
pub(crate) enum Message {
    Request {
        id: Value,
        method: String,
        params: Map<String, Value>,
    },
    Notification,
    /// A response from the client; stateless, we have nothing waiting for it.
    ClientResponse,
}

pub(crate) fn parse_envelope(mut obj: Map<String, Value>) -> Result<Message, (Value, RpcError)> {
    // Taken apart by value: the params move out rather than being copied.
    let raw_id = obj.remove("id");
    let echo_id = match &raw_id {
        Some(i) if i.is_string() || i.is_number() => i.clone(),
        _ => Value::Null,
    };
    let bad = |m: &str| {
        (
            echo_id.clone(),
            RpcError::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, m),
        )
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(bad("invalid request: jsonrpc must be \"2.0\""));
    }
    let Some(method) = obj.remove("method") else {
        if obj.contains_key("result") || obj.contains_key("error") {
            return Ok(Message::ClientResponse);
        }
        return Err(bad("invalid request: method is missing"));
    };
    let Value::String(method) = method else {
        return Err(bad("invalid request: method must be a string"));
    };
    let params = match obj.remove("params") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad("invalid request: params must be an object")),
    };
    let Some(id) = raw_id else {
        return Ok(Message::Notification);
    };
    if !(id.is_string() || id.is_i64() || id.is_u64()) {
        return Err(bad("invalid request: id must be a string or an integer"));
    }
    Ok(Message::Request { id, method, params })
}

/// The routing rule: `initialize` with a `protocolVersion` is the legacy handshake; a
/// request with any `io.modelcontextprotocol/` key in `_meta`, or a header naming no
/// legacy revision, is modern; anything else is legacy at the header's revision
/// (2025-03-26 when there is no header). Legacy requests may carry `_meta` too
/// (`progressToken`), so its mere presence decides nothing.
pub(crate) fn classify(
    method: &str,
    params: &Map<String, Value>,
    header_version: Option<&str>,
) -> Era {
    if method == "initialize" && params.get("protocolVersion").is_some_and(Value::is_string) {
        return Era::Legacy(rpc::LEGACY_VERSIONS[0]);
    }
    let modern_meta = params
        .get("_meta")
        .and_then(Value::as_object)
        .is_some_and(|m| m.keys().any(|k| k.starts_with("io.modelcontextprotocol/")));
    if modern_meta {
        return Era::Modern(rpc::MODERN_VERSIONS[0]);
    }
    match header_version.map(rpc::known_version) {
        None => Era::Legacy(DEFAULT_VERSION),
        Some(Some(era @ Era::Legacy(_))) => era,
        Some(_) => Era::Modern(rpc::MODERN_VERSIONS[0]),
    }
}

/// 2026-07-28 per-request checks: `_meta` fields, then headers against the body.
pub(crate) fn check_modern(
    headers: &HeaderMap,
    header_version: Option<&str>,
    method: &str,
    params: &Map<String, Value>,
) -> Result<Era, RpcError> {
    let meta = params.get("_meta").and_then(Value::as_object);
    let missing = |what: &str| {
        RpcError::new(
            StatusCode::BAD_REQUEST,
            rpc::INVALID_PARAMS,
            format!("invalid params: _meta[\"{what}\"] is required"),
        )
    };
    let version = meta
        .and_then(|m| m.get(rpc::META_VERSION))
        .and_then(Value::as_str)
        .ok_or_else(|| missing(rpc::META_VERSION))?;
    if !meta
        .and_then(|m| m.get(rpc::META_CAPABILITIES))
        .is_some_and(Value::is_object)
    {
        return Err(missing(rpc::META_CAPABILITIES));
    }
    // The header must agree with the body before the version itself is judged.
    match header_version {
        None => {
            return Err(RpcError::header_mismatch(
                "the MCP-Protocol-Version header is required",
            ));
        }
        // Claude through claude.ai connectors sends a 2026-07-28 body under a legacy
        // header (claude-code#93290): the body is the truth there, so it is served as
        // such. Every other disagreement stays an error.
        Some(h)
            if h != version
                && matches!(rpc::known_version(h), Some(Era::Legacy(_)))
                && matches!(rpc::known_version(version), Some(Era::Modern(_))) =>
        {
            // Said once at info (a connector sends it on every request), then at debug.
            static SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            let message = "MCP-Protocol-Version header names a legacy revision under a 2026-07-28 body; served as the body says";
            if SEEN.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::debug!(header = %h, body = %version, method = %rpc::clip(method), "{message}");
            } else {
                tracing::info!(header = %h, body = %version, method = %rpc::clip(method), "{message} (logged at debug from now on)");
            }
        }
        Some(h) if h != version => {
            return Err(RpcError::header_mismatch(format!(
                "MCP-Protocol-Version header {:?} does not match _meta protocol version {:?}",
                rpc::clip(h),
                rpc::clip(version)
            )));
        }
        Some(_) => {}
    }
    let era = match rpc::known_version(version) {
        Some(era @ Era::Modern(_)) => era,
        _ => return Err(RpcError::unsupported_version(version)),
    };
    match header_text(headers, "mcp-method") {
        None => {
            return Err(RpcError::header_mismatch(
                "the Mcp-Method header is required",
            ));
        }
        Some(m) if m != method => {
            return Err(RpcError::header_mismatch(format!(
                "Mcp-Method header {:?} does not match the body's method {:?}",
                rpc::clip(&m),
                rpc::clip(method)
            )));
        }
        Some(_) => {}
    }
    let name_field = match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    };
    if let Some(field) = name_field {
        let body_name = params.get(field).and_then(Value::as_str);
        match (header_text(headers, "mcp-name"), body_name) {
            (None, _) => return Err(RpcError::header_mismatch("the Mcp-Name header is required")),
            (Some(h), Some(b)) if h == b => {}
            (Some(h), _) => {
                return Err(RpcError::header_mismatch(format!(
                    "Mcp-Name header {:?} does not match the body's {field}",
                    rpc::clip(&h)
                )));
            }
        }
    }
    Ok(era)
}

/// A header value, trimmed, with the `=?base64?…?=` form decoded.
pub(crate) fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let raw = headers.get(name)?.to_str().ok()?.trim();
    if let Some(inner) = raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(inner)
            .ok()?;
        return String::from_utf8(bytes).ok();
    }
    Some(raw.to_owned())
}

async fn handle_single(
    state: &AppState,
    principal: &Arc<Principal>,
    headers: &HeaderMap,
    header_version: Option<&str>,
    obj: Map<String, Value>,
) -> Response {
    let (id, method, params) = match parse_envelope(obj) {
        Ok(Message::Request { id, method, params }) => (id, method, params),
        Ok(Message::Notification | Message::ClientResponse) => {
            return StatusCode::ACCEPTED.into_response();
        }
        Err((id, e)) => return e.into_response(id),
    };
    let era = classify(&method, &params, header_version);
    let era = if era.is_modern() {
        match check_modern(headers, header_version, &method, &params) {
            Ok(era) => era,
            Err(e) => return e.into_response(id),
        }
    } else {
        era
    };
    let req = Request {
        state,
        principal,
        era,
        headers,
        may_stream: true,
        id: id.clone(),
        params,
    };
    match dispatch::handle(req, &method).await {
        Reply::Result(mut result) => {
            dispatch::decorate(era, &mut result);
            rpc::json_response(StatusCode::OK, &rpc::result_message(id, result))
        }
        Reply::Error(e) => e.into_response(id),
        Reply::Refused { response, .. } | Reply::Response(response) => response,
    }
}

/// 2025-03-26 allows batches; later revisions do not.
async fn handle_batch(
    state: &AppState,
    principal: &Arc<Principal>,
    headers: &HeaderMap,
    header_version: Option<&str>,
    batch: Vec<Value>,
) -> Response {
    let version = header_version.unwrap_or(DEFAULT_VERSION);
    if version != "2025-03-26" && version != "2024-11-05" {
        return invalid_request(
            Value::Null,
            "invalid request: batches are only allowed in protocol revision 2025-03-26",
        );
    }
    if batch.is_empty() {
        return invalid_request(Value::Null, "invalid request: empty batch");
    }
    if batch.len() > 100 {
        return invalid_request(
            Value::Null,
            "invalid request: at most 100 messages per batch",
        );
    }
    let era = Era::Legacy(if version == "2024-11-05" {
        "2024-11-05"
    } else {
        "2025-03-26"
    });
    let mut replies = Vec::new();
    for item in batch {
        let Value::Object(obj) = item else {
            replies.push(
                RpcError::new(
                    StatusCode::OK,
                    INVALID_REQUEST,
                    "invalid request: expected an object",
                )
                .to_message(Value::Null),
            );
            continue;
        };
        let (id, method, params) = match parse_envelope(obj) {
            Ok(Message::Request { id, method, params }) => (id, method, params),
            Ok(_) => continue,
            Err((id, e)) => {
                replies.push(e.to_message(id));
                continue;
            }
        };
        if method == "initialize" {
            replies.push(
                RpcError::new(
                    StatusCode::OK,
                    INVALID_REQUEST,
                    "invalid request: initialize must not be batched",
                )
                .to_message(id),
            );
            continue;
        }
        let req = Request {
            state,
            principal,
            era,
            headers,
            may_stream: false,
            id: id.clone(),
            params,
        };
        let reply = match dispatch::handle(req, &method).await {
            Reply::Result(result) => rpc::result_message(id, result),
            Reply::Error(e) | Reply::Refused { error: e, .. } => e.to_message(id),
            Reply::Response(response) => {
                // Tool calls answer with a finished response; unwrap its JSON body.
                match axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024).await {
                    Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        RpcError::new(StatusCode::OK, rpc::INTERNAL_ERROR, "internal error")
                            .to_message(id)
                    }),
                    Err(_) => RpcError::new(StatusCode::OK, rpc::INTERNAL_ERROR, "internal error")
                        .to_message(id),
                }
            }
        };
        replies.push(reply);
    }
    if replies.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    rpc::json_response(StatusCode::OK, &json!(replies))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn routing_rule_picks_the_era() {
        let init = params(json!({ "protocolVersion": "2025-06-18" }));
        assert_eq!(
            classify("initialize", &init, Some("2026-07-28")),
            Era::Legacy("2025-11-25")
        );
        let modern =
            params(json!({ "_meta": { "io.modelcontextprotocol/clientCapabilities": {} } }));
        assert!(classify("tools/list", &modern, Some("2025-11-25")).is_modern());
        assert!(classify("tools/list", &Map::new(), Some("2026-07-28")).is_modern());
        assert!(classify("tools/list", &Map::new(), Some("v999.0.0")).is_modern());
        assert_eq!(
            classify("initialize", &Map::new(), None),
            Era::Legacy("2025-03-26")
        );
        let progress = params(json!({ "_meta": { "progressToken": "p" } }));
        assert_eq!(
            classify("tools/call", &progress, Some("2025-11-25")),
            Era::Legacy("2025-11-25")
        );
        assert_eq!(
            classify("tools/list", &Map::new(), None),
            Era::Legacy("2025-03-26")
        );
    }

    #[test]
    fn modern_checks_run_in_the_specified_order() {
        let h = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("mcp-method", HeaderValue::from_static("server/discover"));
            h.insert("mcp-protocol-version", HeaderValue::from_static(v));
            h
        };
        let meta = |v: &str| {
            params(
                json!({ "_meta": { "io.modelcontextprotocol/protocolVersion": v, "io.modelcontextprotocol/clientCapabilities": {} } }),
            )
        };
        let code = |headers: &HeaderMap, hv, p: &Map<String, Value>| {
            check_modern(headers, hv, "server/discover", p)
                .map(|_| 0)
                .unwrap_or_else(|e| e.code)
        };
        assert_eq!(
            code(&h("2026-07-28"), Some("2026-07-28"), &Map::new()),
            rpc::INVALID_PARAMS
        );
        assert_eq!(
            code(&h("2026-07-28"), Some("2026-07-28"), &meta("v999.0.0")),
            rpc::HEADER_MISMATCH
        );
        assert_eq!(
            code(&h("v999.0.0"), Some("v999.0.0"), &meta("v999.0.0")),
            rpc::UNSUPPORTED_VERSION
        );
        assert_eq!(
            code(&h("2026-07-28"), Some("2026-07-28"), &meta("2026-07-28")),
            0
        );
        assert_eq!(
            code(&h("2026-07-28"), None, &meta("2026-07-28")),
            rpc::HEADER_MISMATCH
        );
        // Claude's legacy header over a modern body is served; nothing else is.
        assert_eq!(
            code(&h("2025-11-25"), Some("2025-11-25"), &meta("2026-07-28")),
            0
        );
        assert_eq!(
            code(&h("2025-11-25"), Some("2025-11-25"), &meta("v999.0.0")),
            rpc::HEADER_MISMATCH
        );
        assert_eq!(
            code(&h("2099-01-01"), Some("2099-01-01"), &meta("2026-07-28")),
            rpc::HEADER_MISMATCH
        );
    }

    #[test]
    fn base64_header_values_are_decoded() {
        let mut h = HeaderMap::new();
        h.insert("mcp-name", HeaderValue::from_static("=?base64?w6lsw6g=?="));
        assert_eq!(header_text(&h, "mcp-name").unwrap(), "élè");
        h.insert("mcp-name", HeaderValue::from_static("  plain "));
        assert_eq!(header_text(&h, "mcp-name").unwrap(), "plain");
    }
}
