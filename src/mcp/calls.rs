//! `tools/call`: every check between a request and the tool, in order: the tool exists,
//! the token has its scopes (else HTTP 403 step-up), the caller has its role, the
//! organization may write, the quota allows it, the arguments fit the schema, and an
//! `idempotency_key` seen before returns the first result. Then the call runs, and
//! the outcome is metered in memory.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::auth::{BearerError, Principal};
use super::dispatch::{Reply, Request, decorate};
use super::rpc::{self, Era, INSUFFICIENT_SCOPE, MISSING_CAPABILITY, RpcError};
use super::tools::{
    Content, IDEMPOTENCY_KEY, Notifier, RawJson, Tool, ToolContext, ToolResult, ToolSpec,
};
use crate::domain::OrgStatus;
use crate::metrics::{ToolOutcome, ToolStats};
use crate::storage::{AuditEntry, IdempotencyBegin};

pub(crate) async fn call_tool(req: Request<'_>) -> Reply {
    let Some(name) = req.params.get("name").and_then(Value::as_str) else {
        return Reply::Error(RpcError::invalid_params("invalid params: name is required"));
    };
    let registry = req.state.tools.clone();
    let extra;
    let found = match registry.find_tool(name) {
        Some(t) => Some(t),
        None => {
            extra = req.state.extra_tools.current();
            extra.find_tool(name)
        }
    };
    let Some(registered) = found else {
        return Reply::Error(RpcError::invalid_params(format!(
            "unknown tool: {}",
            rpc::clip(name)
        )));
    };
    let spec = registered.tool.spec();
    let caller = req.principal;

    let missing = spec.missing_scopes(&caller.scopes);
    if !missing.is_empty() {
        let error = RpcError::new(
            StatusCode::FORBIDDEN,
            INSUFFICIENT_SCOPE,
            format!("insufficient scope: {name} needs {missing}"),
        );
        return Reply::Refused {
            response: BearerError::InsufficientScope(missing).respond(req.state, req.id.clone()),
            error,
        };
    }
    if req.era.is_modern() {
        let declared = req.extras().client_capabilities;
        let lacking: Map<String, Value> = spec
            .required_client_capabilities()
            .iter()
            .filter(|c| declared.get(c.as_str()).is_none())
            .map(|c| (c.clone(), json!({})))
            .collect();
        if !lacking.is_empty() {
            let names: Vec<&String> = lacking.keys().collect();
            return Reply::Error(
                RpcError::new(
                    StatusCode::BAD_REQUEST,
                    MISSING_CAPABILITY,
                    format!(
                        "{name} needs client capabilities the request did not declare: {names:?}"
                    ),
                )
                .with_data(json!({ "requiredCapabilities": lacking })),
            );
        }
    }

    let mut args = match req.params.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Reply::Error(RpcError::invalid_params(
                "invalid params: arguments must be an object",
            ));
        }
    };
    // Validated in place: the arguments are moved into a Value and back, not copied.
    let whole = Value::Object(std::mem::take(&mut args));
    let errors = registered.argument_errors(&whole);
    if let Value::Object(m) = whole {
        args = m;
    }
    if !errors.is_empty() && !req.era.tool_input_errors_are_results() {
        let message = format!("invalid arguments for {name}: {}", errors.join("; "));
        return Reply::Error(
            RpcError::invalid_params(message).with_data(json!({ "errors": errors })),
        );
    }
    let refusal = refusal(spec, caller, &errors);
    let idempotency_key = if spec.accepts_idempotency_key() {
        args.remove(IDEMPOTENCY_KEY)
            .and_then(|v| v.as_str().map(str::to_owned))
    } else {
        None
    };

    let progress_token = req
        .meta()
        .and_then(|m| m.get("progressToken"))
        .filter(|t| t.is_string() || t.is_number())
        .cloned();
    let logging = match req.era {
        Era::Legacy(_) => true,
        Era::Modern(_) => req
            .meta()
            .is_some_and(|m| m.contains_key(rpc::META_LOG_LEVEL)),
    };
    let (tx, rx) = if req.may_stream && spec.may_notify() && accepts_sse(req.headers) {
        let (tx, rx) = mpsc::channel(NOTIFICATIONS_QUEUED);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let ctx = req.context(Notifier::new(tx, progress_token, logging));
    let call = Call {
        era: req.era,
        id: req.id.clone(),
        tool: registered.tool.clone(),
        stats: registered.stats.clone(),
        name: name.to_owned(),
        args,
        idempotency_key,
        refusal,
    };
    // The call owns everything it needs, so it can outlive this function inside an SSE
    // stream. Boxed here, not inside `respond`: as an argument it would sit inline in
    // every enclosing future and be copied at each level (about 2 KiB per request).
    Reply::Response(respond(Box::pin(call.run(ctx)), rx).await)
}

/// What can be decided about a call without the database: role, read-only
/// organization, argument errors (as a result, 2025-11-25 and later).
fn refusal(spec: &ToolSpec, caller: &Principal, errors: &[String]) -> Option<ToolResult> {
    let name = spec.name();
    if let Some(needed) = spec.required_role() {
        let has = caller.standing.role;
        if !has.is_some_and(|r| r.satisfies(needed)) {
            let you = has.map_or("not a member", |r| r.as_str());
            return Some(ToolResult::coded_error(
                "ROLE_REQUIRED",
                format!(
                    "{name} needs the {needed} role in your organization (you are: {you}); ask an owner or admin"
                ),
            ));
        }
    }
    if !spec.annotations_ref().read_only && caller.standing.status == OrgStatus::ReadOnly {
        return Some(ToolResult::coded_error(
            "ORG_READ_ONLY",
            format!(
                "your organization is read-only, so {name} (which makes changes) is refused; tools that only read still work"
            ),
        ));
    }
    if !errors.is_empty() {
        return Some(ToolResult::coded_error(
            "INVALID_ARGUMENTS",
            format!("invalid arguments for {name}: {}", errors.join("; ")),
        ));
    }
    None
}

/// A call that passed the synchronous checks.
struct Call {
    era: Era,
    id: Value,
    tool: Arc<dyn Tool>,
    stats: Arc<ToolStats>,
    name: String,
    args: Map<String, Value>,
    idempotency_key: Option<String>,
    refusal: Option<ToolResult>,
}

const IDEMPOTENCY_TTL_SECS: i64 = 24 * 3600;

impl Call {
    /// Runs the call and returns the JSON-RPC response message; meters it either way.
    async fn run(self, ctx: ToolContext) -> Outgoing {
        if !crate::telemetry::exporting() {
            return self.run_inner(ctx).await;
        }
        let span = tracing::info_span!(
            "tool_call",
            otel.name = %format_args!("tools/call {}", self.name),
            mcp.tool = %self.name,
            mcp.outcome = tracing::field::Empty,
        );
        tracing::Instrument::instrument(self.run_inner(ctx), span).await
    }

    async fn run_inner(self, ctx: ToolContext) -> Outgoing {
        let started = Instant::now();
        let state = ctx.state.clone();
        let caller = ctx.caller.clone();
        let mut refused = true;
        let result = match self.refusal {
            Some(r) => r,
            None => match quota_refusal(&ctx, &self.name, self.tool.spec()).await {
                Some(r) => r,
                None => {
                    refused = false;
                    match &self.idempotency_key {
                        Some(key) => {
                            let ctx = ctx.with_idempotency_key(key);
                            idempotent(&ctx, &self.tool, &self.name, key, self.args).await
                        }
                        None => self.tool.call(ctx, self.args).await,
                    }
                }
            },
        }
        // Claude refuses results over 1 MB; the cut is logged with the request's span.
        .within_limit();
        let now = state.clock.now();
        let elapsed = started.elapsed();
        state
            .meter
            .record_call(&caller, &self.name, now, result.is_error(), elapsed);
        let outcome = match &result {
            _ if refused => ToolOutcome::Refused,
            ToolResult::Forwarded(_) if result.is_error() => ToolOutcome::Error,
            ToolResult::Forwarded(_) => ToolOutcome::Ok,
            ToolResult::Complete {
                is_error: false, ..
            }
            | ToolResult::Structured(_) => ToolOutcome::Ok,
            ToolResult::Complete { .. } => ToolOutcome::Error,
            ToolResult::InputRequired { .. } => ToolOutcome::InputRequired,
            ToolResult::InvalidRequest(_) => ToolOutcome::InvalidRequest,
        };
        self.stats.record(outcome, elapsed);
        tracing::Span::current().record("mcp.outcome", outcome.as_str());
        if !self.tool.spec().annotations_ref().read_only && !caller.org_id.is_empty() {
            // Calls that may change something are audited, in the next batch.
            let outcome = match &result {
                ToolResult::Forwarded(_) if result.is_error() => "error",
                ToolResult::Forwarded(_) => "ok",
                ToolResult::Complete {
                    is_error: false, ..
                }
                | ToolResult::Structured(_) => "ok",
                ToolResult::Complete { .. } => "error",
                ToolResult::InputRequired { .. } => "input_required",
                ToolResult::InvalidRequest(_) => "invalid_request",
            };
            state.meter.audit(
                AuditEntry::new(now, format!("user:{}", caller.user_id), "mcp.tool_call")
                    .org(caller.org_id.clone())
                    .target(format!("tool:{}", self.name))
                    .detail(json!({
                        "outcome": outcome,
                        "client_id": caller.client_id,
                        "credential": caller.kind.as_str(),
                    })),
            );
        }
        let result = match (result, self.era) {
            (ToolResult::InvalidRequest(message), _) => {
                return Outgoing::Tree(RpcError::invalid_params(message).to_message(self.id));
            }
            (ToolResult::Structured(json), era) => {
                return Outgoing::Structured {
                    id: self.id,
                    json,
                    era,
                };
            }
            (ToolResult::InputRequired { .. }, Era::Legacy(_)) => ToolResult::coded_error(
                "INPUT_REQUIRED",
                "this tool needs more input from the client, which protocol revisions before 2026-07-28 cannot carry on a stateless server",
            ),
            (r, _) => r,
        };
        let mut body = result.into_json_for(self.tool.spec());
        decorate(self.era, &mut body);
        Outgoing::Tree(rpc::result_message(self.id, body))
    }
}

/// A response message on its way out.
enum Outgoing {
    Tree(Value),
    /// A structured tool result, written around the JSON its tool serialized once.
    Structured {
        id: Value,
        json: RawJson,
        era: Era,
    },
}

impl Outgoing {
    /// For the rare paths that need a tree (SSE events).
    fn into_value(self) -> Value {
        match self {
            Self::Tree(v) => v,
            Self::Structured { id, json, era } => {
                let mut body = ToolResult::Structured(json).into_json();
                decorate(era, &mut body);
                rpc::result_message(id, body)
            }
        }
    }
}

impl Serialize for Outgoing {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (id, json, era) = match self {
            Self::Tree(v) => return v.serialize(s),
            Self::Structured { id, json, era } => (id, json, *era),
        };
        struct Text<'a>(&'a str);
        impl Serialize for Text<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", "text")?;
                m.serialize_entry("text", self.0)?;
                m.end()
            }
        }
        struct Body<'a>(&'a RawJson, Era);
        impl Serialize for Body<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // What `decorate` adds for this revision, if anything (2026-07-28 only).
                let mut extra = Value::Object(Map::new());
                decorate(self.1, &mut extra);
                let extra = extra.as_object().map(|m| m.iter()).into_iter().flatten();
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("content", &[Text(self.0.get())])?;
                m.serialize_entry("isError", &false)?;
                m.serialize_entry("structuredContent", self.0)?;
                for (k, v) in extra {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("jsonrpc", "2.0")?;
        m.serialize_entry("id", id)?;
        m.serialize_entry("result", &Body(json, era))?;
        m.end()
    }
}

/// A write tool over the organization's daily quota is refused; read tools never are.
async fn quota_refusal(ctx: &ToolContext, name: &str, spec: &ToolSpec) -> Option<ToolResult> {
    let caller = &ctx.caller;
    let quota = caller.standing.daily_quota?;
    if spec.annotations_ref().read_only || caller.org_id.is_empty() {
        return None;
    }
    let now = ctx.state.clock.now();
    match ctx
        .state
        .meter
        .calls_today(&ctx.state.store, &caller.org_id, now)
        .await
    {
        Ok(used) if used >= quota => Some(ToolResult::coded_error(
            "QUOTA_EXCEEDED",
            format!(
                "your organization has used its {quota} tool calls for today (UTC), so {name} is refused; read-only tools still work, and the quota resets at midnight UTC"
            ),
        )),
        Ok(_) => None,
        Err(_) => Some(ToolResult::error(UNAVAILABLE)),
    }
}

const UNAVAILABLE: &str = "the database is unavailable; try again shortly";

/// Runs a call at most once per `idempotency_key` (per caller) within 24 hours.
async fn idempotent(
    ctx: &ToolContext,
    tool: &Arc<dyn Tool>,
    name: &str,
    key: &str,
    args: Map<String, Value>,
) -> ToolResult {
    let caller = &ctx.caller;
    let scope_key = digest(&format!("{}\n{}\n{key}", caller.org_id, caller.user_id));
    // serde_json maps are sorted, so equal arguments serialize equally.
    let args_hash = digest(&format!("{name}\n{}", Value::Object(args.clone())));
    let store = &ctx.state.store;
    let now = ctx.state.clock.now();
    match store
        .idempotency_begin(&scope_key, &args_hash, now, IDEMPOTENCY_TTL_SECS)
        .await
    {
        Ok(IdempotencyBegin::Started) => {}
        Ok(IdempotencyBegin::Done {
            args_hash: h,
            result,
        }) if h == args_hash => {
            return match serde_json::from_str::<StoredResult>(&result) {
                Ok(r) => r.into_result(),
                Err(_) => ToolResult::error(UNAVAILABLE),
            };
        }
        Ok(IdempotencyBegin::Done { .. }) => {
            return ToolResult::coded_error(
                "IDEMPOTENCY_KEY_REUSED",
                "this idempotency_key was already used with different arguments (or another tool); use a new key for a new request",
            );
        }
        Ok(IdempotencyBegin::InProgress { .. }) => {
            return ToolResult::coded_error(
                "IDEMPOTENCY_KEY_IN_PROGRESS",
                "a call with this idempotency_key is still running; retry in a moment to get its result",
            );
        }
        Err(_) => return ToolResult::error(UNAVAILABLE),
    }
    let result = tool.call(ctx.clone(), args).await;
    // Only a successful result is remembered: a failed call may be retried for real.
    let stored = match &result {
        ToolResult::Complete { is_error: true, .. } => None,
        ToolResult::Complete { .. } | ToolResult::Structured(_)
            if tool.spec().has_secret_result() =>
        {
            serde_json::to_string(&StoredResult {
                content: vec![Content::text(format!(
                    "ALREADY_DONE: this request (idempotency_key {key:?}) already ran at {}; its result held a secret that is shown only once, so it is not shown again and nothing was created twice",
                    crate::clock::rfc3339(now)
                ))],
                structured: None,
                is_error: true,
            })
            .ok()
        }
        ToolResult::Complete {
            content,
            structured,
            is_error: false,
        } => serde_json::to_string(&StoredResult {
            content: content.clone(),
            structured: structured.clone(),
            is_error: false,
        })
        .ok(),
        ToolResult::Structured(json) => serde_json::to_string(&StoredResult {
            content: vec![Content::text(json.get())],
            structured: Some(json.to_value()),
            is_error: false,
        })
        .ok(),
        // An upstream's result is kept without its `_meta`, which may be per call.
        ToolResult::Forwarded(m) if !result.is_error() => serde_json::to_string(&StoredResult {
            content: match m.get("content") {
                Some(Value::Array(c)) => c.clone(),
                _ => Vec::new(),
            },
            structured: m.get("structuredContent").cloned(),
            is_error: false,
        })
        .ok(),
        _ => None,
    };
    let outcome = match stored {
        Some(json) => store.idempotency_finish(&scope_key, &json).await,
        None => store.idempotency_abort(&scope_key).await,
    };
    if let Err(e) = outcome {
        tracing::warn!(tool = name, error = %e, "could not record the idempotency key's outcome");
    }
    result
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredResult {
    content: Vec<Value>,
    structured: Option<Value>,
    #[serde(default)]
    is_error: bool,
}

impl StoredResult {
    fn into_result(self) -> ToolResult {
        ToolResult::Complete {
            content: self.content,
            structured: self.structured,
            is_error: self.is_error,
        }
    }
}

fn digest(s: &str) -> String {
    crate::crypto::HashedToken::of(s).as_str().to_owned()
}

/// Whether the client takes `text/event-stream` (absent and `*/*` count; Claude has sent `*/*`).
fn accepts_sse(headers: &axum::http::HeaderMap) -> bool {
    match headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        None => false,
        Some(a) => a.contains("text/event-stream"),
    }
}

type Run = Pin<Box<dyn Future<Output = Outgoing> + Send>>;

/// Plain JSON unless the tool sends a notification before it finishes; then an SSE
/// stream carrying the notifications and, last, the response. Dropping the stream
/// (the client went away) drops the call: that is the cancellation.
/// Notifications waiting for a slow client; more are dropped (see `ToolContext::progress`).
const NOTIFICATIONS_QUEUED: usize = 256;

async fn respond(mut run: Run, rx: Option<mpsc::Receiver<Value>>) -> Response {
    let Some(mut rx) = rx else {
        return rpc::json_response(StatusCode::OK, &run.await);
    };
    let first = tokio::select! {
        biased;
        done = &mut run => {
            if rx.is_empty() {
                return rpc::json_response(StatusCode::OK, &done);
            }
            // Notifications raced the result: stream them, then the result.
            let mut events = Vec::new();
            while let Ok(n) = rx.try_recv() {
                events.push(n);
            }
            events.push(done.into_value());
            return sse(futures_util::stream::iter(events));
        }
        Some(n) = rx.recv() => n,
    };
    enum Phase {
        First(Value, Run, mpsc::Receiver<Value>),
        Running(Run, mpsc::Receiver<Value>),
        Draining(Value, mpsc::Receiver<Value>),
        Done,
    }
    let stream = futures_util::stream::unfold(Phase::First(first, run, rx), |phase| async move {
        match phase {
            Phase::First(v, run, rx) => Some((v, Phase::Running(run, rx))),
            Phase::Running(mut run, mut rx) => {
                tokio::select! {
                    biased;
                    Some(n) = rx.recv() => Some((n, Phase::Running(run, rx))),
                    done = &mut run => match rx.try_recv() {
                        Ok(n) => Some((n, Phase::Draining(done.into_value(), rx))),
                        Err(_) => Some((done.into_value(), Phase::Done)),
                    },
                }
            }
            Phase::Draining(done, mut rx) => match rx.try_recv() {
                Ok(n) => Some((n, Phase::Draining(done, rx))),
                Err(_) => Some((done, Phase::Done)),
            },
            Phase::Done => None,
        }
    });
    sse(stream)
}

fn sse(messages: impl futures_util::Stream<Item = Value> + Send + 'static) -> Response {
    use futures_util::StreamExt;
    let events = messages
        .map(|m| Ok::<_, Infallible>(Event::default().event("message").data(m.to_string())));
    let mut res = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_structured_result_is_written_as_its_tree_would_be() {
        for era in [Era::Legacy("2025-11-25"), Era::Modern("2026-07-28")] {
            let ToolResult::Structured(json) = ToolResult::json(json!({ "a": "x\"y", "n": 1 }))
            else {
                panic!("ToolResult::json makes a structured result");
            };
            let out = Outgoing::Structured {
                id: json!(7),
                json,
                era,
            };
            let written: Value =
                serde_json::from_slice(&serde_json::to_vec(&out).unwrap()).unwrap();
            assert_eq!(
                written["result"]["content"][0]["text"],
                r#"{"a":"x\"y","n":1}"#
            );
            assert_eq!(written["result"]["structuredContent"]["a"], "x\"y");
            assert_eq!(
                written["result"].get("resultType").is_some(),
                era.is_modern()
            );
            assert_eq!(written, out.into_value());
        }
    }
}
