//! The MCP methods, for both eras. The transport (server.rs) has already authenticated
//! the caller and decided the revision; this file answers one request.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::auth::Principal;
use super::calls;
use super::rpc::{
    self, Era, INVALID_PARAMS, LEGACY_VERSIONS, METHOD_NOT_FOUND, RESOURCE_NOT_FOUND, RpcError,
};
use super::tools::{Notifier, Registry, RequestExtras, ToolContext};
use crate::state::AppState;

/// How long clients may cache list results (2026-07-28 `ttlMs`).
const LIST_TTL_MS: u64 = 60_000;

/// One request's answer, before the transport writes it.
pub(crate) enum Reply {
    /// A result body; the transport adds the revision's fields.
    Result(Value),
    Error(RpcError),
    /// An HTTP-level refusal (403 step-up). Inside a batch, `error` stands in for it.
    Refused {
        response: Response,
        error: RpcError,
    },
    /// A finished HTTP response (a tool call answered as JSON or as an SSE stream).
    Response(Response),
}

pub(crate) struct Request<'a> {
    pub state: &'a AppState,
    pub principal: &'a Arc<Principal>,
    pub era: Era,
    pub headers: &'a HeaderMap,
    /// Whether the response may become an SSE stream (never inside a batch).
    pub may_stream: bool,
    pub id: Value,
    pub params: Map<String, Value>,
}

impl Request<'_> {
    pub fn meta(&self) -> Option<&Map<String, Value>> {
        self.params.get("_meta").and_then(Value::as_object)
    }

    pub fn extras(&self) -> RequestExtras {
        let meta = self.meta();
        RequestExtras {
            protocol_version: self.era.version(),
            client_capabilities: meta
                .and_then(|m| m.get(rpc::META_CAPABILITIES))
                .cloned()
                .unwrap_or_else(|| json!({})),
            input_responses: self.params.get("inputResponses").cloned(),
            request_state: self
                .params
                .get("requestState")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }

    pub fn context(&self, notifier: Notifier) -> ToolContext {
        ToolContext::new(
            self.state.clone(),
            self.principal.clone(),
            notifier,
            Arc::new(self.extras()),
        )
    }

    fn str_param(&self, name: &str) -> Result<&str, RpcError> {
        self.params
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params(format!("invalid params: {name} is required")))
    }
}

/// The registry's own prompts and resources, then the gateway's upstream ones.
struct Served {
    own: Arc<Registry>,
    extra: Arc<Registry>,
}

impl Served {
    fn both(&self) -> [&Registry; 2] {
        [&self.own, &self.extra]
    }

    fn has_prompts(&self) -> bool {
        self.both().iter().any(|r| r.has_prompts())
    }

    fn has_resources(&self) -> bool {
        self.both().iter().any(|r| r.has_resources())
    }

    fn find_prompt(&self, name: &str) -> Option<&super::tools::Prompt> {
        self.own
            .find_prompt(name)
            .or_else(|| self.extra.find_prompt(name))
    }
}

pub(crate) async fn handle(req: Request<'_>, method: &str) -> Reply {
    if method == "tools/call" {
        return calls::call_tool(req).await;
    }
    let registry = Served {
        own: req.state.tools.clone(),
        extra: req.state.extra_tools.current(),
    };
    let result = match (method, req.era) {
        ("initialize", Era::Legacy(_)) => Ok(initialize(&req, &registry)),
        ("ping", Era::Legacy(_)) => Ok(json!({})),
        ("logging/setLevel", Era::Legacy(_)) => set_level(&req),
        ("server/discover", Era::Modern(_)) => Ok(discover(&registry)),
        ("tools/list", _) => return list_tools(&req, &registry.own),
        ("prompts/list", _) if registry.has_prompts() => list_prompts(&req, &registry),
        ("prompts/get", _) if registry.has_prompts() => get_prompt(&req, &registry).await,
        ("completion/complete", _) if has_completions(&registry) => complete(&req, &registry),
        ("resources/list", _) if registry.has_resources() => list_resources(&req, &registry),
        ("resources/templates/list", _) if registry.has_resources() => {
            list_templates(&req, &registry)
        }
        ("resources/read", _) if registry.has_resources() => read_resource(&req, &registry).await,
        _ => Err(method_not_found(req.era, method)),
    };
    match result {
        Ok(v) => Reply::Result(v),
        Err(e) => Reply::Error(e),
    }
}

pub(crate) fn method_not_found(era: Era, method: &str) -> RpcError {
    // 2026-07-28 answers 404 so that a client can tell "no such method" from "no such server".
    let status = if era.is_modern() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    RpcError::new(
        status,
        METHOD_NOT_FOUND,
        format!("method not found: {}", rpc::clip(method)),
    )
}

/// Adds what a revision requires on every result.
pub(crate) fn decorate(era: Era, result: &mut Value) {
    if !era.is_modern() {
        return;
    }
    if let Some(obj) = result.as_object_mut() {
        obj.entry("resultType").or_insert_with(|| json!("complete"));
        let meta = obj.entry("_meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(rpc::META_SERVER_INFO.into(), server_info());
        }
    }
}

fn server_info() -> Value {
    json!({ "name": "gatehouse", "title": "Gatehouse", "version": env!("CARGO_PKG_VERSION") })
}

fn has_completions(registry: &Served) -> bool {
    registry
        .both()
        .iter()
        .any(|r| r.prompts().iter().any(|p| p.complete.is_some()))
}

fn capabilities(era: Era, registry: &Served) -> Value {
    let mut caps = json!({ "tools": {} });
    if registry.has_prompts() {
        caps["prompts"] = json!({});
    }
    if registry.has_resources() {
        caps["resources"] = json!({});
    }
    if has_completions(registry) {
        caps["completions"] = json!({});
    }
    if !era.is_modern() {
        // Tools may send log messages on a call's SSE stream; setLevel is accepted.
        caps["logging"] = json!({});
    }
    caps
}

const INSTRUCTIONS: &str = "Gatehouse account tools: whoami, connections, access tokens, usage and (for admins) members and audit events. Write tools accept an idempotency_key for safe retries.";

fn initialize(req: &Request<'_>, registry: &Served) -> Value {
    let requested = req
        .params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let version = LEGACY_VERSIONS
        .iter()
        .find(|v| **v == requested)
        .copied()
        .unwrap_or(LEGACY_VERSIONS[0]);
    json!({
        "protocolVersion": version,
        "capabilities": capabilities(Era::Legacy(version), registry),
        "serverInfo": server_info(),
        "instructions": INSTRUCTIONS,
    })
}

fn discover(registry: &Served) -> Value {
    let era = Era::Modern(rpc::MODERN_VERSIONS[0]);
    json!({
        "supportedVersions": rpc::all_versions(),
        "capabilities": capabilities(era, registry),
        "serverInfo": server_info(),
        "instructions": INSTRUCTIONS,
        "ttlMs": LIST_TTL_MS,
        "cacheScope": "public",
    })
}

fn set_level(req: &Request<'_>) -> Result<Value, RpcError> {
    const LEVELS: &[&str] = &[
        "debug",
        "info",
        "notice",
        "warning",
        "error",
        "critical",
        "alert",
        "emergency",
    ];
    match req.params.get("level").and_then(Value::as_str) {
        Some(l) if LEVELS.contains(&l) => Ok(json!({})),
        _ => Err(RpcError::invalid_params(
            "invalid params: level must be one of debug, info, notice, warning, error, critical, alert, emergency",
        )),
    }
}

/// Where a page starts: the offset a `cursor` names, at most `len` (absent is 0).
pub(crate) fn cursor_start(cursor: Option<&Value>, len: usize) -> Result<usize, RpcError> {
    match cursor {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(c)) => URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("o:").and_then(|n| n.parse::<usize>().ok()))
            .filter(|n| *n <= len)
            .ok_or_else(|| RpcError::invalid_params("invalid params: unknown cursor")),
        Some(_) => Err(RpcError::invalid_params(
            "invalid params: cursor must be a string",
        )),
    }
}

/// The cursor of the page that starts at `offset`.
pub(crate) fn next_cursor(offset: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("o:{offset}"))
}

/// One page of `items` from the request's cursor, with `nextCursor` when more remain.
/// Only the page's items are turned into JSON.
fn page<T>(
    req: &Request<'_>,
    items: &[T],
    key: &str,
    to_value: impl Fn(&T) -> Value,
) -> Result<Value, RpcError> {
    let size = req.state.config.mcp.page_size;
    let start = cursor_start(req.params.get("cursor"), items.len())?;
    let end = (start + size).min(items.len());
    let mut out = Map::new();
    out.insert(
        key.to_owned(),
        Value::Array(items[start..end].iter().map(to_value).collect()),
    );
    let mut out = Value::Object(out);
    if end < items.len() {
        out["nextCursor"] = json!(next_cursor(end));
    }
    if req.era.is_modern() {
        out["ttlMs"] = json!(LIST_TTL_MS);
        out["cacheScope"] = json!("public");
    }
    Ok(out)
}

/// The registry's own tools, then the gateway's upstream tools, written from each
/// tool's serialized definition (a merged list can hold thousands of schemas).
fn list_tools(req: &Request<'_>, registry: &Registry) -> Reply {
    use serde::ser::{SerializeMap, Serializer};
    let extra = req.state.extra_tools.current();
    let all: Vec<&super::tools::RegisteredTool> = registry
        .tools()
        .iter()
        .chain(extra.tools().iter().filter(|t| t.listed))
        .collect();
    let start = match cursor_start(req.params.get("cursor"), all.len()) {
        Ok(s) => s,
        Err(e) => return Reply::Error(e),
    };
    let end = (start + req.state.config.mcp.page_size).min(all.len());
    // Everything but `tools`, as `page` and `decorate` would make it.
    let mut rest = Value::Object(Map::new());
    if end < all.len() {
        rest["nextCursor"] = json!(next_cursor(end));
    }
    if req.era.is_modern() {
        rest["ttlMs"] = json!(LIST_TTL_MS);
        rest["cacheScope"] = json!("public");
    }
    decorate(req.era, &mut rest);
    struct Tools<'a>(&'a [&'a super::tools::RegisteredTool]);
    impl serde::Serialize for Tools<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(|t| &*t.listing))
        }
    }
    struct Body<'a>(Tools<'a>, &'a Map<String, Value>);
    impl serde::Serialize for Body<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("tools", &self.0)?;
            for (k, v) in self.1 {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
    }
    let empty = Map::new();
    let rest = rest.as_object().unwrap_or(&empty);
    Reply::Response(rpc::json_response(
        axum::http::StatusCode::OK,
        &Message {
            id: &req.id,
            result: Body(Tools(&all[start..end]), rest),
        },
    ))
}

/// A JSON-RPC result message around `result`.
struct Message<'a, R> {
    id: &'a Value,
    result: R,
}

impl<R: serde::Serialize> serde::Serialize for Message<'_, R> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("jsonrpc", "2.0")?;
        m.serialize_entry("id", self.id)?;
        m.serialize_entry("result", &self.result)?;
        m.end()
    }
}

fn list_prompts(req: &Request<'_>, registry: &Served) -> Result<Value, RpcError> {
    let items: Vec<Value> = registry
        .both()
        .into_iter()
        .flat_map(|r| r.prompts().iter())
        .map(|p| {
            let args: Vec<Value> = p
                .spec
                .arguments
                .iter()
                .map(|(name, description, required)| json!({ "name": name, "description": description, "required": required }))
                .collect();
            let mut v = json!({ "name": p.spec.name, "description": p.spec.description, "arguments": args });
            if let Some(t) = &p.spec.title {
                v["title"] = json!(t);
            }
            v
        })
        .collect();
    page(req, &items, "prompts", Value::clone)
}

async fn get_prompt(req: &Request<'_>, registry: &Served) -> Result<Value, RpcError> {
    let name = req.str_param("name")?;
    let prompt = registry
        .find_prompt(name)
        .ok_or_else(|| RpcError::invalid_params(format!("unknown prompt: {}", rpc::clip(name))))?;
    let args = match req.params.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(RpcError::invalid_params(
                "invalid params: arguments must be an object",
            ));
        }
    };
    for (arg, _, required) in &prompt.spec.arguments {
        if *required && !args.get(arg).is_some_and(Value::is_string) {
            return Err(RpcError::invalid_params(format!(
                "invalid params: argument {arg:?} is required (a string)"
            )));
        }
    }
    (prompt.get)(req.context(Notifier::silent()), args)
        .await
        .map_err(|m| RpcError::invalid_params(format!("invalid params: {m}")))
}

fn complete(req: &Request<'_>, registry: &Served) -> Result<Value, RpcError> {
    let reference = req
        .params
        .get("ref")
        .and_then(Value::as_object)
        .ok_or_else(|| RpcError::invalid_params("invalid params: ref is required"))?;
    let argument = req
        .params
        .get("argument")
        .and_then(Value::as_object)
        .ok_or_else(|| RpcError::invalid_params("invalid params: argument is required"))?;
    let arg_name = argument
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let arg_value = argument
        .get("value")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let values: Vec<String> = match reference.get("type").and_then(Value::as_str) {
        Some("ref/prompt") => {
            let name = reference
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let prompt = registry.find_prompt(name).ok_or_else(|| {
                RpcError::invalid_params(format!("unknown prompt: {}", rpc::clip(name)))
            })?;
            prompt
                .complete
                .as_ref()
                .map(|c| c(arg_name, arg_value))
                .unwrap_or_default()
        }
        Some("ref/resource") => Vec::new(),
        _ => {
            return Err(RpcError::invalid_params(
                "invalid params: ref.type must be ref/prompt or ref/resource",
            ));
        }
    };
    let total = values.len();
    let values: Vec<String> = values.into_iter().take(100).collect();
    Ok(json!({ "completion": { "values": values, "total": total, "hasMore": total > 100 } }))
}

fn list_resources(req: &Request<'_>, registry: &Served) -> Result<Value, RpcError> {
    let items: Vec<Value> = registry
        .both()
        .into_iter()
        .flat_map(|r| r.resources().iter())
        .map(|r| {
            let s = &r.spec;
            let mut v = json!({ "uri": s.uri, "name": s.name });
            if let Some(t) = &s.title {
                v["title"] = json!(t);
            }
            if let Some(d) = &s.description {
                v["description"] = json!(d);
            }
            if let Some(m) = &s.mime_type {
                v["mimeType"] = json!(m);
            }
            if let Some(m) = &s.meta {
                v["_meta"] = m.clone();
            }
            v
        })
        .collect();
    page(req, &items, "resources", Value::clone)
}

fn list_templates(req: &Request<'_>, registry: &Served) -> Result<Value, RpcError> {
    let items: Vec<Value> = registry
        .both()
        .into_iter()
        .flat_map(|r| r.templates().iter())
        .map(|t| {
            let mut v = json!({ "uriTemplate": t.uri_template, "name": t.name });
            if let Some(x) = &t.title {
                v["title"] = json!(x);
            }
            if let Some(d) = &t.description {
                v["description"] = json!(d);
            }
            if let Some(m) = &t.mime_type {
                v["mimeType"] = json!(m);
            }
            if let Some(m) = &t.meta {
                v["_meta"] = m.clone();
            }
            v
        })
        .collect();
    page(req, &items, "resourceTemplates", Value::clone)
}

async fn read_resource(req: &Request<'_>, registry: &Served) -> Result<Value, RpcError> {
    let uri = req.str_param("uri")?;
    let not_found = || {
        // 2026-07-28 moved "resource not found" to -32602.
        let code = if req.era.is_modern() {
            INVALID_PARAMS
        } else {
            RESOURCE_NOT_FOUND
        };
        RpcError::new(
            StatusCode::OK,
            code,
            format!("resource not found: {}", rpc::clip(uri)),
        )
        .with_data(json!({ "uri": uri }))
    };
    let read = registry
        .own
        .reader_for(uri)
        .or_else(|| registry.extra.reader_for(uri))
        .ok_or_else(not_found)?;
    let contents = read(req.context(Notifier::silent()), uri.to_owned())
        .await
        .map_err(|_| not_found())?;
    let mut out = json!({ "contents": contents });
    if req.era.is_modern() {
        out["ttlMs"] = json!(LIST_TTL_MS);
        out["cacheScope"] = json!("public");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_as_their_offset_and_nothing_else_does() {
        assert_eq!(cursor_start(None, 5).unwrap(), 0);
        assert_eq!(cursor_start(Some(&Value::Null), 5).unwrap(), 0);
        for offset in [0, 3, 5] {
            let c = json!(next_cursor(offset));
            assert_eq!(cursor_start(Some(&c), 5).unwrap(), offset);
        }
        for bad in [
            json!(next_cursor(6)),
            json!("not base64!"),
            json!(URL_SAFE_NO_PAD.encode("o:-1")),
            json!(URL_SAFE_NO_PAD.encode("x:1")),
            json!(URL_SAFE_NO_PAD.encode("o:99999999999999999999999")),
            json!(7),
        ] {
            let e = cursor_start(Some(&bad), 5).unwrap_err();
            assert_eq!(e.code, INVALID_PARAMS, "{bad}");
        }
    }
}
