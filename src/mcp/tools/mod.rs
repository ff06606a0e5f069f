//! What `/mcp` serves: tools, prompts and resources, behind a public API so that a Rust
//! user can register their own next to the built-in account tools.
//!
//! A tool is a [`ToolSpec`] (name, schemas, annotations, the scopes and organization
//! role it needs) plus the call itself. The [`Registry`] checks each spec once when the
//! tool is added (name format, schema compiles) and keeps the compiled argument
//! validator and the rendered definition, so `tools/list` and `tools/call` do no work
//! per request beyond the call.

pub mod builtin;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::auth::Principal;
use crate::domain::{Role, ScopeSet};
use crate::state::AppState;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type ToolFuture<'a> = BoxFuture<'a, ToolResult>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("tool name {0:?} must be 1-64 characters of A-Z a-z 0-9 _ -")]
    BadName(String),
    /// A tool real clients would drop or reject (see [`MAX_SCHEMA_BYTES`] and
    /// [`MAX_DESCRIPTION_CHARS`]).
    #[error("tool {name:?}: {problem}")]
    Unservable { name: String, problem: String },
    #[error("{kind} {name:?} is registered twice")]
    Duplicate { kind: &'static str, name: String },
    #[error("tool {name:?}: {what} is not a usable JSON Schema: {message}")]
    BadSchema {
        name: String,
        what: &'static str,
        message: String,
    },
    #[error("scope {0:?} is not a valid scope token")]
    BadScope(String),
}

/// A tool name every client accepts: `^[A-Za-z0-9_-]{1,64}$`. The specification allows
/// `.` and `/` and up to 128 characters, but claude.ai rejects a server's whole tool
/// list over one name outside this pattern (claude-code#57813).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ToolName(String);

impl ToolName {
    pub fn parse(raw: &str) -> Result<Self, RegistryError> {
        let ok = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(RegistryError::BadName(raw.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ToolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The MCP tool annotations. Clients treat them as hints; Gatehouse also uses
/// `read_only` (read-only organizations and quotas spare read tools) and `idempotent`
/// (non-idempotent tools accept an `idempotency_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Annotations {
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    pub open_world: bool,
}

impl Annotations {
    /// A definition's `annotations` as MCP reads them: an absent hint takes the
    /// specification's default (not read-only, destructive, not idempotent, open world).
    pub fn from_hints(annotations: Option<&Value>) -> Self {
        let hint = |k: &str, default: bool| {
            annotations
                .and_then(|a| a.get(k))
                .and_then(Value::as_bool)
                .unwrap_or(default)
        };
        let read_only = hint("readOnlyHint", false);
        Self {
            read_only,
            // Hints about writes mean nothing for a read-only tool.
            destructive: !read_only && hint("destructiveHint", true),
            idempotent: read_only || hint("idempotentHint", false),
            open_world: hint("openWorldHint", true),
        }
    }

    /// Reads and changes nothing.
    pub const READ_ONLY: Self = Self {
        read_only: true,
        destructive: false,
        idempotent: true,
        open_world: false,
    };
    /// Creates something; calling twice creates two.
    pub const ADDITIVE: Self = Self {
        read_only: false,
        destructive: false,
        idempotent: false,
        open_world: false,
    };
    /// Removes or revokes something; calling twice is harmless.
    pub const DESTRUCTIVE: Self = Self {
        read_only: false,
        destructive: true,
        idempotent: true,
        open_world: false,
    };
}

/// Everything about a tool except the call.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    name: ToolName,
    title: Option<String>,
    description: String,
    input_schema: Value,
    output_schema: Option<Value>,
    annotations: Annotations,
    scopes: ScopeSet,
    role: Option<Role>,
    client_capabilities: Vec<String>,
    returns_secret: bool,
    notifies: bool,
    /// Top-level `oneOf`/`anyOf`/`allOf` allowed (see [`ToolSpec::allow_unportable_schema`]).
    unportable_schema: bool,
    /// Fields of a definition published as they are (see [`ToolSpec::published_as`]).
    verbatim: Option<Map<String, Value>>,
}

impl ToolSpec {
    /// A read-only tool taking no arguments and needing no scope; refine with the builders.
    pub fn new(name: &str, description: impl Into<String>) -> Result<Self, RegistryError> {
        Ok(Self {
            name: ToolName::parse(name)?,
            title: None,
            description: description.into(),
            input_schema: json!({ "type": "object", "properties": {}, "additionalProperties": false }),
            output_schema: None,
            annotations: Annotations::READ_ONLY,
            scopes: ScopeSet::default(),
            role: None,
            client_capabilities: Vec::new(),
            returns_secret: false,
            notifies: true,
            unportable_schema: false,
            verbatim: None,
        })
    }

    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// A JSON Schema (2020-12) object describing the arguments.
    pub fn input_schema(mut self, schema: Value) -> Self {
        self.input_schema = schema;
        self
    }

    /// A JSON Schema for `structuredContent`; results are then expected to carry it.
    pub fn output_schema(mut self, schema: Value) -> Self {
        self.output_schema = Some(schema);
        self
    }

    pub fn annotations(mut self, annotations: Annotations) -> Self {
        self.annotations = annotations;
        self
    }

    /// Every one of these scopes must be granted to the caller's token.
    pub fn scopes(mut self, scopes: &[&str]) -> Result<Self, RegistryError> {
        self.scopes = ScopeSet::parse(&scopes.join(" "))
            .map_err(|_| RegistryError::BadScope(scopes.join(" ")))?;
        Ok(self)
    }

    /// The caller must hold at least this role in their organization.
    pub fn role(mut self, role: Role) -> Self {
        self.role = Some(role);
        self
    }

    /// The client must have declared this capability (e.g. `sampling`). Checked on
    /// 2026-07-28 requests, which carry the client's capabilities; a request without it
    /// gets -32021.
    pub fn requires_client_capability(mut self, capability: &str) -> Self {
        self.client_capabilities.push(capability.to_owned());
        self
    }

    /// Allows a top-level `oneOf`/`anyOf`/`allOf` in the input schema, which the MCP
    /// specification permits but Claude and OpenAI refuse (the whole tool is dropped).
    /// Only for tools that must have one, such as the conformance suite's JSON Schema
    /// 2020-12 fixture; a warning is logged when such a tool is registered.
    pub fn allow_unportable_schema(mut self) -> Self {
        self.unportable_schema = true;
        self
    }

    /// Publishes these fields of another server's definition as they are (its
    /// `annotations`, `title`, `icons`, `_meta` and whatever a later revision adds),
    /// instead of the ones this spec would render. `name`, `description` and the
    /// schemas still come from the spec; Gatehouse's own `_meta` entry is added.
    pub fn published_as(mut self, definition: &Map<String, Value>) -> Self {
        let mut kept = definition.clone();
        for k in ["name", "description", "inputSchema", "outputSchema"] {
            kept.remove(k);
        }
        self.verbatim = Some(kept);
        self
    }

    /// The result carries a secret shown once (a new token). An idempotent retry then
    /// gets a note that the call already ran, never the stored secret: results are kept
    /// for 24 hours and secrets are only ever stored as digests.
    pub fn returns_secret(mut self) -> Self {
        self.returns_secret = true;
        self
    }

    pub fn has_secret_result(&self) -> bool {
        self.returns_secret
    }

    /// The tool never sends progress or log notifications, so a call needs no channel
    /// for them (one allocation pair and about 2% of a `whoami` call).
    pub fn silent(mut self) -> Self {
        self.notifies = false;
        self
    }

    pub fn may_notify(&self) -> bool {
        self.notifies
    }

    pub fn required_client_capabilities(&self) -> &[String] {
        &self.client_capabilities
    }

    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    pub fn annotations_ref(&self) -> &Annotations {
        &self.annotations
    }

    pub fn required_scopes(&self) -> &ScopeSet {
        &self.scopes
    }

    pub fn required_role(&self) -> Option<Role> {
        self.role
    }

    /// Whether results promise `structuredContent` of a declared shape.
    pub fn has_output_schema(&self) -> bool {
        self.output_schema.is_some()
    }

    /// Non-idempotent tools take an optional `idempotency_key`.
    pub fn accepts_idempotency_key(&self) -> bool {
        // A tool with an `idempotency_key` argument of its own (a payments API behind
        // the gateway) keeps it: Gatehouse neither replaces nor strips it.
        let own = self
            .input_schema
            .get("properties")
            .and_then(|p| p.get(IDEMPOTENCY_KEY))
            .is_some();
        !self.annotations.read_only && !self.annotations.idempotent && !own
    }

    /// The scopes `granted` lacks for this tool.
    pub fn missing_scopes(&self, granted: &ScopeSet) -> ScopeSet {
        self.scopes.difference(granted)
    }

    /// The `tools/list` entry. The published input schema includes `idempotency_key`
    /// where the tool accepts one.
    fn definition(&self, input_schema: &Value) -> Value {
        let a = &self.annotations;
        let mut def = json!({
            "name": self.name.as_str(),
            "description": self.description,
            "inputSchema": input_schema,
            "annotations": {
                "readOnlyHint": a.read_only,
                "destructiveHint": a.destructive,
                "idempotentHint": a.idempotent,
                "openWorldHint": a.open_world,
            },
        });
        if let Some(title) = &self.title {
            def["title"] = json!(title);
            def["annotations"]["title"] = json!(title);
        }
        if let Some(out) = &self.output_schema {
            def["outputSchema"] = out.clone();
        }
        if !self.scopes.is_empty() || self.role.is_some() {
            let mut meta = json!({ "scopes": self.scopes.to_string() });
            if let Some(role) = self.role {
                meta["role"] = json!(role.as_str());
            }
            def["_meta"] = json!({ "dev.gatehouse/requires": meta });
        }
        if let (Some(verbatim), Some(obj)) = (&self.verbatim, def.as_object_mut()) {
            let ours = obj.remove("_meta");
            obj.remove("annotations");
            obj.remove("title");
            for (k, v) in verbatim {
                obj.insert(k.clone(), v.clone());
            }
            if let Some(Value::Object(ours)) = ours {
                let meta = obj.entry("_meta").or_insert_with(|| json!({}));
                if let Some(meta) = meta.as_object_mut() {
                    meta.extend(ours);
                }
            }
        }
        def
    }
}

/// One content block of a tool result or prompt message.
pub struct Content;

impl Content {
    pub fn text(text: impl Into<String>) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), Value::String("text".into()));
        m.insert("text".into(), Value::String(text.into()));
        Value::Object(m)
    }
    pub fn image(base64_data: impl Into<String>, mime_type: &str) -> Value {
        json!({ "type": "image", "data": base64_data.into(), "mimeType": mime_type })
    }
    pub fn audio(base64_data: impl Into<String>, mime_type: &str) -> Value {
        json!({ "type": "audio", "data": base64_data.into(), "mimeType": mime_type })
    }
    pub fn embedded_text(uri: &str, mime_type: &str, text: impl Into<String>) -> Value {
        json!({ "type": "resource", "resource": { "uri": uri, "mimeType": mime_type, "text": text.into() } })
    }
    pub fn resource_link(uri: &str, name: &str) -> Value {
        json!({ "type": "resource_link", "uri": uri, "name": name })
    }
}

/// A tool's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolResult {
    /// A finished call: content for the model, optional structured content, and
    /// whether it is an error the model may act on.
    Complete {
        content: Vec<Value>,
        structured: Option<Value>,
        is_error: bool,
    },
    /// The tool needs something from the client first (2026-07-28 MRTR): the client
    /// answers `input_requests` and calls again with `inputResponses` and `request_state`.
    InputRequired {
        input_requests: Value,
        request_state: Option<String>,
    },
    /// The request itself is unusable (for example a tampered `requestState`): answered
    /// as a JSON-RPC invalid-params error rather than a result.
    InvalidRequest(String),
    /// A successful structured result, serialized once: the same JSON is the text block
    /// for older clients and `structuredContent`, and the response is written around it
    /// instead of rebuilding it as a tree (a fifth of a `whoami` call's instructions).
    Structured(RawJson),
    /// A `CallToolResult` from another server (an upstream), passed on as it came:
    /// `content`, `structuredContent`, `isError` and `_meta` unchanged.
    Forwarded(Map<String, Value>),
}

/// Serialized JSON that is known to be valid, compared by its text.
#[derive(Debug, Clone)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The JSON as a tree again, for the rare paths that need one (batches, SSE, stored
    /// idempotent results).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.get()).unwrap_or(Value::Null)
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl serde::Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl ToolResult {
    /// Structured JSON, also serialized into a text block for older clients.
    pub fn json(value: Value) -> Self {
        Self::structured(&value)
    }

    /// A structured result straight from a serializable type, without a `Value` tree in
    /// between. Only a type that fails to serialize (none of ours) gives an error result.
    pub fn structured(value: &impl serde::Serialize) -> Self {
        match serde_json::value::to_raw_value(value) {
            Ok(raw) => Self::Structured(RawJson(raw)),
            Err(_) => Self::error("the result could not be serialized"),
        }
    }

    pub fn text(text: impl Into<String>) -> Self {
        Self::content(vec![Content::text(text)])
    }

    pub fn content(content: Vec<Value>) -> Self {
        Self::Complete {
            content,
            structured: None,
            is_error: false,
        }
    }

    /// An error result (`isError: true`) the model can read and act on.
    pub fn error(message: impl Into<String>) -> Self {
        Self::Complete {
            content: vec![Content::text(message)],
            structured: None,
            is_error: true,
        }
    }

    /// An error result with a machine-readable code, such as `QUOTA_EXCEEDED`.
    pub fn coded_error(code: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::Complete {
            content: vec![Content::text(format!("{code}: {message}"))],
            structured: Some(json!({ "error": { "code": code, "message": message } })),
            is_error: true,
        }
    }

    pub fn is_error(&self) -> bool {
        match self {
            Self::Complete { is_error, .. } => *is_error,
            Self::Forwarded(m) => m.get("isError").and_then(Value::as_bool) == Some(true),
            _ => false,
        }
    }

    /// The result, or, when it would be over [`MAX_RESULT_BYTES`] on the wire, as much
    /// of its text as fits followed by a note saying what was cut. Claude refuses larger
    /// results outright ("Tool result is too large"), so a cut one is the more useful
    /// answer. Structured content cannot be cut and stay valid: it is dropped, and the
    /// result is marked an error so no client checks the remains against an
    /// outputSchema.
    pub fn within_limit(self) -> Self {
        match self {
            // Escaping at most doubles the text block, which travels beside the
            // structured copy: three times the JSON bounds the whole.
            Self::Structured(ref json) if json.get().len() * 3 < MAX_RESULT_BYTES => self,
            Self::Structured(json) => cut(
                vec![Content::text(json.get())],
                true,
                false,
                wire_len(&Value::String(json.get().to_owned())) * 2,
            ),
            Self::Complete {
                content,
                structured,
                is_error,
            } => {
                let size = content.iter().map(wire_len).sum::<usize>()
                    + structured.as_ref().map_or(0, wire_len);
                if size < MAX_RESULT_BYTES {
                    return Self::Complete {
                        content,
                        structured,
                        is_error,
                    };
                }
                cut(content, structured.is_some(), is_error, size)
            }
            Self::Forwarded(m) => {
                let whole = Value::Object(m);
                let size = wire_len(&whole);
                let Value::Object(mut m) = whole else {
                    return Self::error("the upstream's result was not an object");
                };
                if size < MAX_RESULT_BYTES {
                    return Self::Forwarded(m);
                }
                let is_error = m.get("isError").and_then(Value::as_bool) == Some(true);
                let content = match m.remove("content") {
                    Some(Value::Array(c)) => c,
                    _ => Vec::new(),
                };
                cut(content, m.contains_key("structuredContent"), is_error, size)
            }
            other => other,
        }
    }

    /// The `CallToolResult` body of a result of the tool `spec`. A tool with an
    /// outputSchema promises structuredContent of that shape, and clients built on the
    /// TypeScript SDK check it even on error results, so the `{ "error": … }` of a
    /// [`ToolResult::coded_error`] travels in `_meta` under [`ERROR_META`] instead.
    pub fn into_json_for(self, spec: &ToolSpec) -> Value {
        let is_error = self.is_error();
        let mut out = self.into_json();
        if is_error
            && spec.has_output_schema()
            && let Some(obj) = out.as_object_mut()
            && let Some(mut structured) = obj.remove("structuredContent")
        {
            let error = structured
                .get_mut("error")
                .map(Value::take)
                .unwrap_or(structured);
            obj.insert("_meta".into(), json!({ ERROR_META: error }));
        }
        out
    }

    /// The `CallToolResult` body (without revision-specific fields). Moves the parts
    /// in: `json!` would copy each one through the serializer.
    pub fn into_json(self) -> Value {
        let mut out = Map::new();
        match self {
            Self::Complete {
                content,
                structured,
                is_error,
            } => {
                out.insert("content".into(), Value::Array(content));
                out.insert("isError".into(), Value::Bool(is_error));
                if let Some(s) = structured {
                    out.insert("structuredContent".into(), s);
                }
            }
            Self::InputRequired {
                input_requests,
                request_state,
            } => {
                out.insert("resultType".into(), json!("input_required"));
                out.insert("inputRequests".into(), input_requests);
                if let Some(s) = request_state {
                    out.insert("requestState".into(), Value::String(s));
                }
            }
            Self::InvalidRequest(message) => {
                out.insert("content".into(), Value::Array(vec![Content::text(message)]));
                out.insert("isError".into(), Value::Bool(true));
            }
            Self::Structured(json) => {
                let text = Content::text(json.get());
                out.insert("content".into(), Value::Array(vec![text]));
                out.insert("isError".into(), Value::Bool(false));
                out.insert("structuredContent".into(), json.to_value());
            }
            Self::Forwarded(m) => return Value::Object(m),
        }
        Value::Object(out)
    }

    pub fn to_json(&self) -> Value {
        self.clone().into_json()
    }
}

/// A notification sent to the client while a request runs (progress, log messages).
/// Any notification switches the response from plain JSON to an SSE stream.
#[derive(Clone)]
pub(crate) struct Notifier {
    tx: Option<mpsc::Sender<Value>>,
    progress_token: Option<Value>,
    /// Whether `notifications/message` may be sent (2026-07-28: only when asked for).
    logging: bool,
}

impl Notifier {
    pub(crate) fn new(
        tx: Option<mpsc::Sender<Value>>,
        progress_token: Option<Value>,
        logging: bool,
    ) -> Self {
        Self {
            tx,
            progress_token,
            logging,
        }
    }

    pub(crate) fn silent() -> Self {
        Self::new(None, None, false)
    }
}

/// What a call receives: the application, the caller, and the request's extras.
#[derive(Clone)]
pub struct ToolContext {
    pub state: AppState,
    pub caller: Arc<Principal>,
    notifier: Notifier,
    request: Arc<RequestExtras>,
    /// The call's `idempotency_key`, which Gatehouse already honours; a tool that
    /// calls another service may pass it on (a REST API's `Idempotency-Key`).
    idempotency_key: Option<Arc<str>>,
}

/// Per-request fields a tool may read.
#[derive(Debug, Default)]
pub struct RequestExtras {
    /// The protocol revision of this request.
    pub protocol_version: &'static str,
    /// The client's declared capabilities (2026-07-28: from `_meta`; legacy: unknown, `{}`).
    pub client_capabilities: Value,
    /// 2026-07-28 MRTR: the client's answers to an earlier `InputRequired`.
    pub input_responses: Option<Value>,
    /// 2026-07-28 MRTR: the opaque state from an earlier `InputRequired`.
    pub request_state: Option<String>,
}

impl ToolContext {
    pub(crate) fn new(
        state: AppState,
        caller: Arc<Principal>,
        notifier: Notifier,
        request: Arc<RequestExtras>,
    ) -> Self {
        Self {
            state,
            caller,
            notifier,
            request,
            idempotency_key: None,
        }
    }

    pub fn request(&self) -> &RequestExtras {
        &self.request
    }

    pub(crate) fn with_idempotency_key(mut self, key: &str) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The `idempotency_key` the caller gave this call, if the tool takes one.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    /// Whether the client asked for progress and can receive it on this call.
    pub fn wants_progress(&self) -> bool {
        self.notifier.tx.is_some() && self.notifier.progress_token.is_some()
    }

    /// Reports progress when the client asked for it (`_meta.progressToken`); otherwise a no-op.
    pub fn progress(&self, progress: f64, total: Option<f64>, message: Option<&str>) {
        let (Some(tx), Some(token)) = (&self.notifier.tx, &self.notifier.progress_token) else {
            return;
        };
        let mut params = json!({ "progressToken": token, "progress": progress });
        if let Some(t) = total {
            params["total"] = json!(t);
        }
        if let Some(m) = message {
            params["message"] = json!(m);
        }
        // Dropped when the client reads slower than the tool (an upstream) reports:
        // a later report supersedes it, and memory stays bounded.
        let _ = tx.try_send(
            json!({ "jsonrpc": "2.0", "method": "notifications/progress", "params": params }),
        );
    }

    /// Sends a `notifications/message` log entry when the revision and request allow it.
    pub fn log(&self, level: &str, data: Value) {
        let Some(tx) = &self.notifier.tx else { return };
        if !self.notifier.logging {
            return;
        }
        let _ = tx.try_send(json!({ "jsonrpc": "2.0", "method": "notifications/message", "params": { "level": level, "logger": "gatehouse", "data": data } }));
    }
}

pub trait Tool: Send + Sync {
    fn spec(&self) -> &ToolSpec;
    /// Runs the call. `args` has already been validated against the input schema
    /// (and stripped of `idempotency_key`).
    fn call(&self, ctx: ToolContext, args: Map<String, Value>) -> ToolFuture<'_>;
}

/// A tool made of a spec and an async function.
pub struct FnTool<F> {
    spec: ToolSpec,
    f: F,
}

impl<F, Fut> Tool for FnTool<F>
where
    F: Fn(ToolContext, Map<String, Value>) -> Fut + Send + Sync,
    Fut: Future<Output = ToolResult> + Send + 'static,
{
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }
    fn call(&self, ctx: ToolContext, args: Map<String, Value>) -> ToolFuture<'_> {
        Box::pin((self.f)(ctx, args))
    }
}

pub fn tool_fn<F, Fut>(spec: ToolSpec, f: F) -> FnTool<F>
where
    F: Fn(ToolContext, Map<String, Value>) -> Fut + Send + Sync,
    Fut: Future<Output = ToolResult> + Send + 'static,
{
    FnTool { spec, f }
}

/// A prompt template (`prompts/list`, `prompts/get`).
pub struct PromptSpec {
    pub name: String,
    pub title: Option<String>,
    pub description: String,
    /// `(name, description, required)`.
    pub arguments: Vec<(String, String, bool)>,
}

/// Returns the `GetPromptResult` body (`description?`, `messages`), or an error message
/// for invalid arguments.
pub type PromptFn = Arc<
    dyn Fn(ToolContext, Map<String, Value>) -> BoxFuture<'static, Result<Value, String>>
        + Send
        + Sync,
>;
/// Offers completions for one argument of a prompt: `(argument, partial value) -> values`.
pub type CompleteFn = Arc<dyn Fn(&str, &str) -> Vec<String> + Send + Sync>;

pub struct Prompt {
    pub spec: PromptSpec,
    pub get: PromptFn,
    pub complete: Option<CompleteFn>,
}

/// A fixed resource (`resources/list`, `resources/read`).
pub struct ResourceSpec {
    pub uri: String,
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub mime_type: Option<String>,
    /// Published as the entry's `_meta` (an upstream's, passed through).
    pub meta: Option<Value>,
}

/// Returns the `contents` array of a read.
pub type ReadFn = Arc<
    dyn Fn(ToolContext, String) -> BoxFuture<'static, Result<Vec<Value>, String>> + Send + Sync,
>;

pub struct Resource {
    pub spec: ResourceSpec,
    pub read: ReadFn,
}

/// A URI template such as `test://template/{id}/data` (RFC 6570 level 1 only:
/// each `{var}` matches one or more characters other than `/`).
pub struct ResourceTemplate {
    pub uri_template: String,
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub mime_type: Option<String>,
    /// Published as the entry's `_meta`.
    pub meta: Option<Value>,
    pub read: ReadFn,
}

impl ResourceTemplate {
    fn matches(&self, uri: &str) -> bool {
        let mut rest = uri;
        let mut parts = self.uri_template.split('{');
        let Some(head) = parts.next() else {
            return false;
        };
        let Some(r) = rest.strip_prefix(head) else {
            return false;
        };
        rest = r;
        for part in parts {
            let Some((_, literal)) = part.split_once('}') else {
                return false;
            };
            let end = if literal.is_empty() {
                rest.len()
            } else {
                match rest.find(literal) {
                    Some(i) => i,
                    None => return false,
                }
            };
            let value = &rest[..end];
            if value.is_empty() || value.contains('/') {
                return false;
            }
            rest = &rest[end + literal.len()..];
        }
        rest.is_empty()
    }
}

pub(crate) struct RegisteredTool {
    pub tool: Arc<dyn Tool>,
    pub definition: Value,
    /// `definition` serialized once, so that `tools/list` copies bytes instead of
    /// cloning and serializing hundreds of schemas per request.
    pub listing: Box<serde_json::value::RawValue>,
    validator: jsonschema::Validator,
    /// This tool's calls, outcomes and latency, for `/metrics`.
    pub stats: Arc<crate::metrics::ToolStats>,
    /// Whether `tools/list` shows it. An unlisted tool can still be called (an
    /// upstream's tool while the upstream is down answers with why).
    pub listed: bool,
}

impl RegisteredTool {
    /// Every way `args` breaks the input schema, each naming the offending field.
    pub fn argument_errors(&self, args: &Value) -> Vec<String> {
        self.validator
            .iter_errors(args)
            .take(20)
            .map(|e| {
                let path = e.instance_path().to_string();
                let field = if path.is_empty() {
                    "arguments".to_owned()
                } else {
                    format!("arguments{}", path.replace('/', "."))
                };
                format!("{field}: {e}")
            })
            .collect()
    }
}

/// Tools served after the registry's own and replaced as a whole when they change: the
/// gateway's upstream tools. The MCP side owns this and sees only [`Tool`]s in it.
#[derive(Default)]
pub struct ExtraTools(std::sync::RwLock<Arc<Registry>>);

impl ExtraTools {
    pub fn current(&self) -> Arc<Registry> {
        match self.0.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, registry: Registry) {
        let fresh = Arc::new(registry);
        match self.0.write() {
            Ok(mut r) => *r = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }
}

/// The tools, prompts and resources `/mcp` serves.
#[derive(Default)]
pub struct Registry {
    tools: Vec<RegisteredTool>,
    by_name: HashMap<String, usize>,
    prompts: Vec<Prompt>,
    resources: Vec<Resource>,
    templates: Vec<ResourceTemplate>,
}

impl Registry {
    pub fn empty() -> Self {
        Self::default()
    }

    /// The built-in account tools.
    pub fn builtin() -> Self {
        builtin::register(Self::empty())
    }

    pub fn add_tool(&mut self, tool: impl Tool + 'static) -> Result<(), RegistryError> {
        self.add_tool_with_stats(tool, Arc::default()).map(|_| ())
    }

    /// As [`Registry::add_tool`], counting into `stats` (kept by a caller that rebuilds
    /// registries, so counts survive); returns the published definition.
    pub fn add_tool_with_stats(
        &mut self,
        tool: impl Tool + 'static,
        stats: Arc<crate::metrics::ToolStats>,
    ) -> Result<&Value, RegistryError> {
        self.add_tool_as(tool, stats, true)
    }

    /// As [`Registry::add_tool_with_stats`], left out of `tools/list` unless `listed`.
    pub fn add_tool_as(
        &mut self,
        tool: impl Tool + 'static,
        stats: Arc<crate::metrics::ToolStats>,
        listed: bool,
    ) -> Result<&Value, RegistryError> {
        let spec = tool.spec();
        let name = spec.name().to_owned();
        if self.by_name.contains_key(&name) {
            return Err(RegistryError::Duplicate { kind: "tool", name });
        }
        let bad = |what: &'static str, message: String| RegistryError::BadSchema {
            name: name.clone(),
            what,
            message,
        };
        if !spec.input_schema.is_object() {
            return Err(bad("inputSchema", "must be a JSON object".into()));
        }
        if let Some(out) = &spec.output_schema {
            jsonschema::validator_for(out).map_err(|e| bad("outputSchema", e.to_string()))?;
        }
        let mut published = spec.input_schema.clone();
        if spec.accepts_idempotency_key()
            && let Some(props) = published
                .as_object_mut()
                .map(|o| o.entry("properties").or_insert_with(|| json!({})))
                .and_then(Value::as_object_mut)
        {
            props.insert(
                IDEMPOTENCY_KEY.into(),
                json!({ "type": "string", "minLength": 1, "maxLength": 200, "description": "Optional. A retry with the same key within 24 hours returns the first result instead of running again." }),
            );
        }
        let validator =
            jsonschema::validator_for(&published).map_err(|e| bad("inputSchema", e.to_string()))?;
        match servable_problem(&spec.description, &published) {
            Some(Problem::Combinator(problem)) if spec.unportable_schema => {
                tracing::warn!(tool = %name, "{problem}: Claude and other clients will not offer this tool");
            }
            Some(problem) => {
                return Err(RegistryError::Unservable {
                    name,
                    problem: problem.to_string(),
                });
            }
            None => {}
        }
        let definition = spec.definition(&published);
        let listing = serde_json::value::to_raw_value(&definition)
            .map_err(|e| bad("inputSchema", e.to_string()))?;
        self.by_name.insert(name, self.tools.len());
        self.tools.push(RegisteredTool {
            tool: Arc::new(tool),
            definition,
            listing,
            validator,
            stats,
            listed,
        });
        Ok(&self.tools[self.tools.len() - 1].definition)
    }

    /// Builder form of [`Registry::add_tool`].
    pub fn with_tool(mut self, tool: impl Tool + 'static) -> Result<Self, RegistryError> {
        self.add_tool(tool)?;
        Ok(self)
    }

    pub fn add_prompt(&mut self, prompt: Prompt) -> Result<(), RegistryError> {
        if self.prompts.iter().any(|p| p.spec.name == prompt.spec.name) {
            return Err(RegistryError::Duplicate {
                kind: "prompt",
                name: prompt.spec.name,
            });
        }
        self.prompts.push(prompt);
        Ok(())
    }

    pub fn add_resource(&mut self, resource: Resource) -> Result<(), RegistryError> {
        if self
            .resources
            .iter()
            .any(|r| r.spec.uri == resource.spec.uri)
        {
            return Err(RegistryError::Duplicate {
                kind: "resource",
                name: resource.spec.uri,
            });
        }
        self.resources.push(resource);
        Ok(())
    }

    pub fn add_resource_template(
        &mut self,
        template: ResourceTemplate,
    ) -> Result<(), RegistryError> {
        self.templates.push(template);
        Ok(())
    }

    pub(crate) fn tools(&self) -> &[RegisteredTool] {
        &self.tools
    }

    pub(crate) fn find_tool(&self, name: &str) -> Option<&RegisteredTool> {
        self.by_name.get(name).map(|i| &self.tools[*i])
    }

    /// Each tool's metrics, by name, for the exporter.
    pub fn tool_stats(&self) -> Vec<(String, Arc<crate::metrics::ToolStats>)> {
        self.tools
            .iter()
            .map(|t| (t.tool.spec().name().to_owned(), t.stats.clone()))
            .collect()
    }

    pub fn tool_names(&self) -> impl Iterator<Item = &str> {
        self.tools.iter().map(|t| t.tool.spec().name())
    }

    pub(crate) fn prompts(&self) -> &[Prompt] {
        &self.prompts
    }

    pub(crate) fn find_prompt(&self, name: &str) -> Option<&Prompt> {
        self.prompts.iter().find(|p| p.spec.name == name)
    }

    pub(crate) fn resources(&self) -> &[Resource] {
        &self.resources
    }

    pub(crate) fn templates(&self) -> &[ResourceTemplate] {
        &self.templates
    }

    /// The fixed resource with this URI, else the first template that matches it.
    pub(crate) fn reader_for(&self, uri: &str) -> Option<&ReadFn> {
        self.resources
            .iter()
            .find(|r| r.spec.uri == uri)
            .map(|r| &r.read)
            .or_else(|| {
                self.templates
                    .iter()
                    .find(|t| t.matches(uri))
                    .map(|t| &t.read)
            })
    }

    pub fn has_prompts(&self) -> bool {
        !self.prompts.is_empty()
    }

    pub fn has_resources(&self) -> bool {
        !self.resources.is_empty() || !self.templates.is_empty()
    }
}

/// Claude Code drops a tool whose input schema is larger than this (claude-code#77296).
pub const MAX_SCHEMA_BYTES: usize = 16 * 1024;
/// Longer tool descriptions are cut or refused by clients.
pub const MAX_DESCRIPTION_CHARS: usize = 2048;

/// Why real clients would not use a tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A top-level `oneOf`/`anyOf`/`allOf`, which Claude and OpenAI refuse.
    Combinator(String),
    /// Anything else: no object schema, too large, a description too long.
    Other(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Combinator(m) | Self::Other(m) => f.write_str(m),
        }
    }
}

/// Why real clients would not use a tool with this description and (published) input
/// schema, if they would not: the schema must be an object schema at its top, without a
/// top-level `oneOf`/`anyOf`/`allOf`, and small.
pub fn servable_problem(description: &str, input_schema: &Value) -> Option<Problem> {
    let chars = description.chars().count();
    if chars >= MAX_DESCRIPTION_CHARS {
        return Some(Problem::Other(format!(
            "description is {chars} characters; clients accept fewer than {MAX_DESCRIPTION_CHARS}"
        )));
    }
    let Some(obj) = input_schema.as_object() else {
        return Some(Problem::Other("inputSchema must be a JSON object".into()));
    };
    if obj.get("type").and_then(Value::as_str) != Some("object") {
        return Some(Problem::Other(
            "inputSchema must have \"type\": \"object\" at its top".into(),
        ));
    }
    let bytes = serde_json::to_vec(input_schema).map_or(0, |v| v.len());
    if bytes >= MAX_SCHEMA_BYTES {
        return Some(Problem::Other(format!(
            "inputSchema is {bytes} bytes; Claude Code drops schemas of {MAX_SCHEMA_BYTES} bytes or more"
        )));
    }
    if let Some(k) = ["oneOf", "anyOf", "allOf"]
        .into_iter()
        .find(|k| obj.contains_key(*k))
    {
        return Some(Problem::Combinator(format!(
            "inputSchema has {k} at its top level"
        )));
    }
    None
}

/// The largest tool result sent (Claude's limit is 1 MB); see [`ToolResult::within_limit`].
pub const MAX_RESULT_BYTES: usize = 1_000_000;
/// Room kept for the note and the JSON-RPC envelope around a cut result.
const CUT_RESERVE: usize = 4 * 1024;

/// Bytes a value takes as JSON, counted without building the text.
fn wire_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Keeps content blocks in order while they fit, cuts the first text block that does
/// not, drops the rest, and appends a note a model can act on.
fn cut(content: Vec<Value>, had_structured: bool, is_error: bool, size: usize) -> ToolResult {
    tracing::warn!(
        bytes = size,
        limit = MAX_RESULT_BYTES,
        "a tool result over the size limit was cut"
    );
    let budget = MAX_RESULT_BYTES - CUT_RESERVE;
    let mut used = 0;
    let mut kept = Vec::new();
    let mut dropped = 0usize;
    let mut truncated = false;
    for block in content {
        let len = wire_len(&block);
        if dropped == 0 && !truncated && used + len <= budget {
            used += len;
            kept.push(block);
            continue;
        }
        let text = block.get("type").and_then(Value::as_str) == Some("text");
        if !truncated && dropped == 0 && text {
            let full = block
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let mut take = (budget - used).min(full.len());
            loop {
                while !full.is_char_boundary(take) {
                    take -= 1;
                }
                let part = Content::text(&full[..take]);
                let len = wire_len(&part);
                if used + len <= budget || take == 0 {
                    used += len;
                    kept.push(part);
                    break;
                }
                // Escapes made it longer than its bytes: shrink by the excess.
                take = take.saturating_sub(used + len - budget);
            }
            truncated = true;
            continue;
        }
        dropped += 1;
    }
    let mut note = format!(
        "[Gatehouse cut this result: it was about {size} bytes, over the {MAX_RESULT_BYTES}-byte limit MCP clients accept."
    );
    if truncated {
        note.push_str(" The text above stops early.");
    }
    if dropped > 0 {
        note.push_str(&format!(
            " {dropped} further content block(s) were left out."
        ));
    }
    if had_structured {
        note.push_str(" Its structured content was left out.");
    }
    note.push_str(" Ask for less at a time, for example with a narrower query or a smaller page.]");
    kept.push(Content::text(note));
    ToolResult::Complete {
        content: kept,
        structured: None,
        is_error: is_error || had_structured,
    }
}

/// The argument name non-idempotent tools accept for safe retries.
pub const IDEMPOTENCY_KEY: &str = "idempotency_key";

/// The `_meta` key of a coded error's `{ code, message }` on tools with an outputSchema.
pub const ERROR_META: &str = "dev.gatehouse/error";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_follow_the_conformance_pattern() {
        assert!(ToolName::parse("whoami").is_ok());
        assert!(ToolName::parse("a-b_c9").is_ok());
        assert!(ToolName::parse(&"x".repeat(64)).is_ok());
        for bad in ["", "has space", "é", "a/b", "a.b", &"x".repeat(65)] {
            assert!(ToolName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn results_over_the_limit_are_cut_with_a_note() {
        let small = ToolResult::text("fine").within_limit();
        assert_eq!(small.to_json()["content"][0]["text"], "fine");

        // Quotes double when escaped: the cut must count the wire, not the bytes.
        let big = "\"é".repeat(400_000);
        let cut = ToolResult::Complete {
            content: vec![Content::text(big), Content::text("after")],
            structured: Some(json!({ "n": 1 })),
            is_error: false,
        }
        .within_limit();
        let body = cut.to_json();
        let wire = serde_json::to_vec(&body).unwrap().len();
        assert!(wire < MAX_RESULT_BYTES, "{wire}");
        let content = body["content"].as_array().unwrap();
        assert_eq!(content.len(), 2, "the cut text and the note");
        let note = content[1]["text"].as_str().unwrap();
        assert!(
            note.contains("cut this result") && note.contains("1 further content block"),
            "{note}"
        );
        assert!(note.contains("structured content was left out"), "{note}");
        assert!(body.get("structuredContent").is_none());
        assert_eq!(body["isError"], true);

        let raw = serde_json::value::to_raw_value(&json!({ "rows": "x".repeat(600_000) })).unwrap();
        let body = ToolResult::Structured(RawJson(raw))
            .within_limit()
            .to_json();
        assert!(serde_json::to_vec(&body).unwrap().len() < MAX_RESULT_BYTES);
        assert!(
            body["content"][1]["text"]
                .as_str()
                .unwrap()
                .contains("cut this result")
        );
    }

    #[test]
    fn unservable_tools_are_named() {
        let obj = json!({ "type": "object" });
        assert!(servable_problem("ok", &obj).is_none());
        assert!(
            servable_problem(&"d".repeat(2048), &obj)
                .unwrap()
                .to_string()
                .contains("description")
        );
        assert!(servable_problem("ok", &json!({ "type": "string" })).is_some());
        let any_of = json!({ "type": "object", "anyOf": [{ "required": ["a"] }] });
        assert!(matches!(
            servable_problem("ok", &any_of),
            Some(Problem::Combinator(m)) if m.contains("anyOf")
        ));
        let huge = json!({ "type": "object", "description": "x".repeat(MAX_SCHEMA_BYTES) });
        assert!(
            servable_problem("ok", &huge)
                .unwrap()
                .to_string()
                .contains("bytes")
        );
        // Refused at registration, unless the tool says it must have one.
        let spec = || {
            ToolSpec::new("t", "d")
                .unwrap()
                .input_schema(any_of.clone())
        };
        let noop = |_: ToolContext, _: Map<String, Value>| async { ToolResult::text("") };
        assert!(matches!(
            Registry::empty().with_tool(tool_fn(spec(), noop)),
            Err(RegistryError::Unservable { .. })
        ));
        assert!(
            Registry::empty()
                .with_tool(tool_fn(spec().allow_unportable_schema(), noop))
                .is_ok()
        );
    }

    #[test]
    fn templates_match_one_segment_per_variable() {
        let t = ResourceTemplate {
            uri_template: "test://template/{id}/data".into(),
            name: "t".into(),
            title: None,
            description: None,
            mime_type: None,
            meta: None,
            read: Arc::new(|_, _| Box::pin(async { Ok(vec![]) })),
        };
        assert!(t.matches("test://template/42/data"));
        assert!(!t.matches("test://template//data"));
        assert!(!t.matches("test://template/4/2/data"));
        assert!(!t.matches("test://template/42/data/x"));
    }

    #[test]
    fn schema_errors_name_each_field() {
        let spec = ToolSpec::new("t", "d").unwrap().input_schema(json!({
            "type": "object",
            "properties": { "n": { "type": "integer" }, "s": { "type": "string" } },
            "required": ["n", "s"],
            "additionalProperties": false
        }));
        let reg = Registry::empty()
            .with_tool(tool_fn(spec, |_, _| async { ToolResult::text("ok") }))
            .unwrap();
        let t = reg.find_tool("t").unwrap();
        let errors = t.argument_errors(&json!({ "n": "x", "extra": 1 }));
        let all = errors.join("\n");
        assert!(all.contains("arguments.n"), "{all}");
        assert!(all.contains("\"s\""), "{all}");
        assert!(all.contains("extra"), "{all}");
        assert!(t.argument_errors(&json!({ "n": 1, "s": "x" })).is_empty());
    }

    #[test]
    fn coded_errors_of_tools_with_an_output_schema_travel_in_meta() {
        let plain = ToolSpec::new("t", "d").unwrap();
        let shaped = plain
            .clone()
            .output_schema(json!({ "type": "object", "required": ["n"] }));
        let err = ToolResult::coded_error("NOT_FOUND", "no such thing");
        assert_eq!(
            err.clone().into_json_for(&plain)["structuredContent"]["error"]["code"],
            "NOT_FOUND"
        );
        let body = err.into_json_for(&shaped);
        assert_eq!(
            body,
            json!({
                "content": [{ "type": "text", "text": "NOT_FOUND: no such thing" }],
                "isError": true,
                "_meta": { "dev.gatehouse/error": { "code": "NOT_FOUND", "message": "no such thing" } },
            })
        );
        let ok = ToolResult::json(json!({ "n": 1 }));
        assert_eq!(ok.clone().into_json_for(&shaped), ok.to_json());
    }

    #[test]
    fn non_idempotent_tools_publish_an_idempotency_key() {
        let spec = ToolSpec::new("make", "d")
            .unwrap()
            .annotations(Annotations::ADDITIVE);
        let reg = Registry::empty()
            .with_tool(tool_fn(spec, |_, _| async { ToolResult::text("ok") }))
            .unwrap();
        let def = &reg.find_tool("make").unwrap().definition;
        assert_eq!(
            def["inputSchema"]["properties"]["idempotency_key"]["type"],
            "string"
        );
        assert_eq!(def["annotations"]["idempotentHint"], false);
    }
}
