//! JSON-RPC 2.0 as MCP uses it: error codes, revisions, and response builders.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Revisions served with the `initialize` handshake, newest first: the first is the
/// answer to a client asking for one we do not know.
pub const LEGACY_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// Revisions served statelessly with per-request `_meta`.
pub const MODERN_VERSIONS: &[&str] = &["2026-07-28"];
/// What a request without `MCP-Protocol-Version` is taken to speak.
pub const DEFAULT_VERSION: &str = "2025-03-26";

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Legacy-era "resource not found".
pub const RESOURCE_NOT_FOUND: i64 = -32002;
/// 2026-07-28: a standard header is missing or disagrees with the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: the request needs a client capability the client did not declare.
pub const MISSING_CAPABILITY: i64 = -32021;
/// 2026-07-28: the requested protocol version is not supported.
pub const UNSUPPORTED_VERSION: i64 = -32022;
/// Gatehouse: the token lacks a scope (only inside batches, where no HTTP 403 fits).
pub const INSUFFICIENT_SCOPE: i64 = -32001;

pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// Which wire a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// 2024-11-05 to 2025-11-25: `initialize` handshake, the version in a header.
    Legacy(&'static str),
    /// 2026-07-28: stateless, everything in each request's `_meta`.
    Modern(&'static str),
}

impl Era {
    pub fn version(self) -> &'static str {
        match self {
            Self::Legacy(v) | Self::Modern(v) => v,
        }
    }

    pub fn is_modern(self) -> bool {
        matches!(self, Self::Modern(_))
    }

    pub fn is_legacy(self) -> bool {
        !self.is_modern()
    }

    /// 2025-11-25 and later report argument errors as tool results (SEP-1303).
    pub fn tool_input_errors_are_results(self) -> bool {
        self.version() >= "2025-11-25"
    }
}

pub fn known_version(v: &str) -> Option<Era> {
    if let Some(m) = MODERN_VERSIONS.iter().find(|m| **m == v) {
        return Some(Era::Modern(m));
    }
    LEGACY_VERSIONS
        .iter()
        .find(|l| **l == v)
        .map(|l| Era::Legacy(l))
}

pub fn all_versions() -> Vec<&'static str> {
    MODERN_VERSIONS
        .iter()
        .chain(LEGACY_VERSIONS)
        .copied()
        .collect()
}

/// A JSON-RPC error with the HTTP status it travels with.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub status: StatusCode,
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(status: StatusCode, code: i64, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(StatusCode::OK, INVALID_PARAMS, message)
    }

    pub fn unsupported_version(requested: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            UNSUPPORTED_VERSION,
            format!(
                "unsupported protocol version {:?}; supported: {}",
                clip(requested),
                all_versions().join(", ")
            ),
        )
        .with_data(json!({ "supported": all_versions(), "requested": clip(requested) }))
    }

    pub fn header_mismatch(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, HEADER_MISMATCH, message)
    }

    /// The error object of a response message.
    pub fn to_message(&self, id: Value) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(d) = &self.data {
            error["data"] = d.clone();
        }
        json!({ "jsonrpc": "2.0", "id": id, "error": error })
    }

    pub fn into_response(self, id: Value) -> Response {
        json_response(self.status, &self.to_message(id))
    }
}

/// Long client-supplied strings are cut before they are echoed.
pub fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Built by moving `id` and `result` in; `json!` would copy them through the serializer.
pub fn result_message(id: Value, result: Value) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("jsonrpc".into(), Value::String("2.0".into()));
    m.insert("id".into(), id);
    m.insert("result".into(), result);
    Value::Object(m)
}

/// Serializes once into the body; no `Json` extractor round trip.
pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    // Sized for a typical answer: growing from serde_json's 128 bytes took four
    // reallocations per tools/call.
    let mut bytes = Vec::with_capacity(1024);
    if serde_json::to_writer(&mut bytes, body).is_err() {
        bytes = b"{}".to_vec();
    }
    let mut res = (status, bytes).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
