//! The fixture server for the official MCP conformance suite
//! (`@modelcontextprotocol/conformance`; `scripts/conformance` runs it).
//!
//! It runs the real Gatehouse application with anonymous access switched on (the suite
//! cannot send an `Authorization` header) and, instead of the built-in account tools,
//! the tools, prompts and resources the suite's server scenarios call, all registered
//! through the public [`Registry`] API:
//!
//! ```text
//! cargo run --example conformance -- --port 3001
//! npx @modelcontextprotocol/conformance server --url http://localhost:3001/mcp
//! ```
//!
//! Tools that need something from the client in the middle of a call (the
//! `test_input_required_result_*` tools and prompt, `test_sampling`, `test_elicitation*`)
//! use the 2026-07-28 multi-round result (MRTR): the first call answers
//! `input_required`, and the client calls again with `inputResponses` and the
//! `requestState` it was given, if any. A state is
//! `base64url(payload).base64url(HMAC-SHA256(payload))` under a key drawn at start-up,
//! so a state that was changed, or minted for another tool, is refused. The payload is
//! signed, not encrypted: it only ever holds what the client told us.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;
use gatehouse::app::{App, shutdown_signal};
use gatehouse::clock::SystemClock;
use gatehouse::config::Config;
use gatehouse::domain::ScopeSet;
use gatehouse::mcp::tools::{
    BoxFuture, CompleteFn, Content, Prompt, PromptFn, PromptSpec, ReadFn, Registry, RegistryError,
    Resource, ResourceSpec, ResourceTemplate, ToolContext, ToolResult, ToolSpec, tool_fn,
};
use gatehouse::storage::Store;
use ring::hmac;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

/// A 1x1 red PNG.
const IMAGE_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A WAV header with two bytes of silence.
const AUDIO_WAV: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";

/// How long a `requestState` stays usable.
const STATE_TTL_SECS: u64 = 600;

#[derive(Parser)]
#[command(about = "Gatehouse serving the MCP conformance suite's fixtures at /mcp")]
struct Args {
    /// Port to listen on (loopback only); 0 picks a free one.
    #[arg(long, env = "CONFORMANCE_PORT", default_value_t = 0)]
    port: u16,
    /// Database URL; by default a fresh SQLite file in a temporary directory.
    #[arg(long, env = "CONFORMANCE_DATABASE_URL")]
    database_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    let port = listener.local_addr()?.port();

    // Kept alive until the server stops: dropping it deletes the database.
    let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut config = Config::defaults()?;
    config.server.bind = listener.local_addr()?;
    config.server.public_url = format!("http://localhost:{port}");
    // The suite sends every scenario from one address without a token.
    config.limits.mcp_per_credential = None;
    config.database.url = match args.database_url {
        Some(url) => url,
        None => format!(
            "sqlite://{}",
            scratch.path().join("conformance.db").display()
        ),
    };
    // Requests without a token act with this scope; the fixture tools need none.
    config.mcp.anonymous_scopes = Some(ScopeSet::parse("conformance")?);
    // One page is enough for every list the suite reads without following cursors.
    config.mcp.page_size = 1000;
    let _telemetry = gatehouse::telemetry::init(&config.log, &config.traces)?;

    let store = Store::connect(&config.database).await?;
    store.migrate().await?;
    let app = App::from_parts(config, store, Arc::new(SystemClock), listener)
        .await?
        .with_registry(fixtures(Arc::new(StateSigner::new()?))?);
    println!("listening on http://localhost:{port}/mcp");
    app.run_until_stopped(shutdown_signal()).await?;
    drop(scratch);
    Ok(())
}

/// Every tool, prompt, resource and template the suite's server scenarios use.
fn fixtures(signer: Arc<StateSigner>) -> Result<Registry, RegistryError> {
    let mut reg = Registry::empty();
    add_content_tools(&mut reg)?;
    add_notifying_tools(&mut reg)?;
    add_stateless_tools(&mut reg)?;
    add_input_required_tools(&mut reg, &signer)?;
    add_client_request_tools(&mut reg)?;
    add_schema_tool(&mut reg)?;
    add_prompts(&mut reg, &signer)?;
    add_resources(&mut reg)?;
    Ok(reg)
}

fn no_arguments() -> Value {
    json!({ "type": "object", "properties": {} })
}

fn spec(name: &str, description: &str) -> Result<ToolSpec, RegistryError> {
    Ok(ToolSpec::new(name, description)?.input_schema(no_arguments()))
}

/// A tool whose answer is worked out without awaiting anything.
fn sync_tool(
    reg: &mut Registry,
    spec: ToolSpec,
    f: impl Fn(&ToolContext, &Map<String, Value>) -> ToolResult + Send + Sync + 'static,
) -> Result<(), RegistryError> {
    reg.add_tool(tool_fn(spec, move |ctx, args| {
        let result = f(&ctx, &args);
        async move { result }
    }))
}

/// A tool that always answers the same.
fn fixed(
    reg: &mut Registry,
    name: &str,
    description: &str,
    result: ToolResult,
) -> Result<(), RegistryError> {
    sync_tool(reg, spec(name, description)?, move |_, _| result.clone())
}

fn add_content_tools(reg: &mut Registry) -> Result<(), RegistryError> {
    // First in the list: the suite calls the first listed tool where it needs any tool.
    fixed(
        reg,
        "test_simple_text",
        "Returns one text block",
        ToolResult::text("This is a simple text response for testing."),
    )?;
    fixed(
        reg,
        "test_image_content",
        "Returns one image block (a 1x1 PNG)",
        ToolResult::content(vec![Content::image(IMAGE_PNG, "image/png")]),
    )?;
    fixed(
        reg,
        "test_audio_content",
        "Returns one audio block (a tiny WAV)",
        ToolResult::content(vec![Content::audio(AUDIO_WAV, "audio/wav")]),
    )?;
    fixed(
        reg,
        "test_embedded_resource",
        "Returns an embedded text resource",
        ToolResult::content(vec![Content::embedded_text(
            "test://embedded-resource",
            "text/plain",
            "This is an embedded resource content.",
        )]),
    )?;
    fixed(
        reg,
        "test_multiple_content_types",
        "Returns text, image and embedded resource blocks",
        ToolResult::content(vec![
            Content::text("Multiple content types test:"),
            Content::image(IMAGE_PNG, "image/png"),
            Content::embedded_text(
                "test://mixed-content-resource",
                "application/json",
                json!({ "test": "data", "value": 123 }).to_string(),
            ),
        ]),
    )?;
    fixed(
        reg,
        "test_error_handling",
        "Always fails with a tool error (isError: true)",
        ToolResult::error("This tool intentionally returns an error for testing"),
    )
}

/// Tools that send notifications while they run (the answer becomes an SSE stream).
fn add_notifying_tools(reg: &mut Registry) -> Result<(), RegistryError> {
    reg.add_tool(tool_fn(
        spec(
            "test_tool_with_progress",
            "Reports progress three times (when the request has a progressToken), then answers",
        )?,
        |ctx: ToolContext, _| async move {
            for step in [0.0, 50.0, 100.0] {
                ctx.progress(
                    step,
                    Some(100.0),
                    Some(&format!("Completed step {step} of 100")),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ToolResult::text("Progress complete")
        },
    ))?;
    reg.add_tool(tool_fn(
        spec(
            "test_tool_with_logging",
            "Sends three log messages while it runs, then answers",
        )?,
        |ctx: ToolContext, _| async move {
            for (i, message) in [
                "Tool execution started",
                "Tool processing data",
                "Tool execution completed",
            ]
            .into_iter()
            .enumerate()
            {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ctx.log("info", json!(message));
            }
            ToolResult::text("Tool with logging executed successfully")
        },
    ))
}

/// The fixtures of the 2026-07-28 `server-stateless` scenario.
fn add_stateless_tools(reg: &mut Registry) -> Result<(), RegistryError> {
    reg.add_tool(tool_fn(
        spec(
            "test_missing_capability",
            "Needs the client's sampling capability; without it the call is refused with -32021",
        )?
        .requires_client_capability("sampling"),
        |_, _| async { ToolResult::text("Success") },
    ))?;
    // On a stateless server an elicitation is never a request on the response stream:
    // it is an input_required result, answered by calling again.
    reg.add_tool(tool_fn(
        spec(
            "test_streaming_elicitation",
            "Asks for confirmation through an input_required result, never on the stream",
        )?,
        |ctx: ToolContext, _| async move {
            match answer(ctx.request().input_responses.as_ref(), "confirm") {
                Answer::Accepted(_) => ToolResult::text("Streaming complete"),
                Answer::Refused(action) => ToolResult::text(format!("Stopped: the user chose {action}")),
                Answer::Missing => ToolResult::InputRequired {
                    input_requests: json!({ "confirm": elicit("Continue?", json!({ "ok": { "type": "boolean" } }), &["ok"]) }),
                    request_state: None,
                },
            }
        },
    ))?;
    reg.add_tool(tool_fn(
        spec(
            "test_logging_tool",
            "Logs one message, which is only sent when the client asked for log messages",
        )?,
        |ctx: ToolContext, _| async move {
            ctx.log("info", json!("Logging tool ran"));
            ToolResult::text("Logging evaluated")
        },
    ))
}

// ---------- multi-round tool results (2026-07-28) ----------

/// `elicitation/create` asking for an object with these properties.
fn elicit(message: &str, properties: Value, required: &[&str]) -> Value {
    json!({
        "method": "elicitation/create",
        "params": {
            "message": message,
            "requestedSchema": { "type": "object", "properties": properties, "required": required },
        },
    })
}

fn sample(text: &str, max_tokens: u32) -> Value {
    json!({
        "method": "sampling/createMessage",
        "params": {
            "messages": [{ "role": "user", "content": { "type": "text", "text": text } }],
            "maxTokens": max_tokens,
        },
    })
}

fn list_roots() -> Value {
    json!({ "method": "roots/list", "params": {} })
}

/// The client's answer to one of our input requests.
enum Answer<'a> {
    /// An elicitation the user accepted, with its content.
    Accepted(&'a Map<String, Value>),
    /// An elicitation the user declined or cancelled.
    Refused(&'a str),
    /// No usable answer under that key: ask again.
    Missing,
}

fn answer<'a>(responses: Option<&'a Value>, key: &str) -> Answer<'a> {
    let Some(r) = responses.and_then(|r| r.get(key)) else {
        return Answer::Missing;
    };
    match r.get("action").and_then(Value::as_str) {
        Some("accept") => match r.get("content").and_then(Value::as_object) {
            Some(content) => Answer::Accepted(content),
            None => Answer::Missing,
        },
        Some(action @ ("decline" | "cancel")) => Answer::Refused(action),
        _ => Answer::Missing,
    }
}

/// The accepted elicitation's string field `field`.
fn accepted_text<'a>(responses: Option<&'a Value>, key: &str, field: &str) -> Option<&'a str> {
    match answer(responses, key) {
        Answer::Accepted(content) => content.get(field).and_then(Value::as_str),
        _ => None,
    }
}

/// The text of a `sampling/createMessage` result (one content block or several).
fn sampled_text<'a>(responses: Option<&'a Value>, key: &str) -> Option<&'a str> {
    let content = responses?.get(key)?.get("content")?;
    let block = match content {
        Value::Array(blocks) => blocks.iter().find(|b| b["type"] == "text")?,
        block => block,
    };
    block.get("text").and_then(Value::as_str)
}

/// The number of roots in a `roots/list` result.
fn root_count(responses: Option<&Value>, key: &str) -> Option<usize> {
    Some(responses?.get(key)?.get("roots")?.as_array()?.len())
}

/// Signs and checks `requestState`.
struct StateSigner {
    key: hmac::Key,
}

impl StateSigner {
    fn new() -> anyhow::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| anyhow!("no randomness for the requestState key"))?;
        Ok(Self { key })
    }

    /// A state for `owner` (a tool or prompt name) carrying `data`.
    fn sign(&self, owner: &str, data: Value) -> String {
        let payload = json!({ "for": owner, "at": unix_now(), "data": data }).to_string();
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The data of a state this process signed for `owner` within the last ten minutes.
    fn verify(&self, owner: &str, state: &str) -> Result<Value, String> {
        let refused = || "requestState integrity check failed".to_owned();
        let (payload, tag) = state.split_once('.').ok_or_else(refused)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| refused())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| refused())?;
        hmac::verify(&self.key, &payload, &tag).map_err(|_| refused())?;
        let mut value: Value = serde_json::from_slice(&payload).map_err(|_| refused())?;
        if value["for"] != owner {
            return Err(format!(
                "requestState was issued for another request, not {owner}"
            ));
        }
        let at = value["at"].as_u64().unwrap_or(0);
        if unix_now().saturating_sub(at) > STATE_TTL_SECS {
            return Err("requestState has expired; start again without it".into());
        }
        Ok(value["data"].take())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The verified state of this request, `None` when it carries none.
fn state_of(signer: &StateSigner, owner: &str, ctx: &ToolContext) -> Result<Option<Value>, String> {
    ctx.request()
        .request_state
        .as_deref()
        .map(|s| signer.verify(owner, s))
        .transpose()
}

/// Adds an MRTR tool whose body is a plain function of the request.
fn mrtr_tool(
    reg: &mut Registry,
    signer: &Arc<StateSigner>,
    name: &'static str,
    description: &str,
    body: fn(&StateSigner, &ToolContext) -> ToolResult,
) -> Result<(), RegistryError> {
    let signer = signer.clone();
    sync_tool(reg, spec(name, description)?, move |ctx, _| {
        body(&signer, ctx)
    })
}

fn add_input_required_tools(
    reg: &mut Registry,
    signer: &Arc<StateSigner>,
) -> Result<(), RegistryError> {
    mrtr_tool(
        reg,
        signer,
        "test_input_required_result_elicitation",
        "MRTR: asks for the user's name (user_name), then greets them; keeps no state",
        |_, ctx| {
            let responses = ctx.request().input_responses.as_ref();
            match answer(responses, "user_name") {
                Answer::Accepted(c) => match c.get("name").and_then(Value::as_str) {
                    Some(name) => ToolResult::text(format!("Hello, {name}!")),
                    None => ask_user_name(),
                },
                Answer::Refused(action) => {
                    ToolResult::text(format!("No name: the user chose {action}"))
                }
                Answer::Missing => ask_user_name(),
            }
        },
    )?;
    mrtr_tool(
        reg,
        signer,
        "test_input_required_result_sampling",
        "MRTR: asks the client's model a question, then reports its answer",
        |_, ctx| match sampled_text(ctx.request().input_responses.as_ref(), "capital_question") {
            Some(text) => ToolResult::text(format!("Sampling result: {text}")),
            None => ToolResult::InputRequired {
                input_requests: json!({ "capital_question": sample("What is the capital of France?", 100) }),
                request_state: None,
            },
        },
    )?;
    mrtr_tool(
        reg,
        signer,
        "test_input_required_result_list_roots",
        "MRTR: asks for the client's roots, then counts them",
        |_, ctx| match root_count(ctx.request().input_responses.as_ref(), "client_roots") {
            Some(n) => ToolResult::text(format!("Found {n} root(s)")),
            None => ToolResult::InputRequired {
                input_requests: json!({ "client_roots": list_roots() }),
                request_state: None,
            },
        },
    )?;
    mrtr_tool(
        reg,
        signer,
        "test_input_required_result_request_state",
        "MRTR: asks for confirmation with a signed requestState, and checks the state on the retry",
        |signer, ctx| {
            confirm_with_state(
                signer,
                ctx,
                "test_input_required_result_request_state",
                "state-ok: requestState validated",
            )
        },
    )?;
    mrtr_tool(
        reg,
        signer,
        "test_input_required_result_tampered_state",
        "MRTR: like request_state; a changed requestState is refused with -32602",
        |signer, ctx| {
            confirm_with_state(
                signer,
                ctx,
                "test_input_required_result_tampered_state",
                "integrity-ok: state verified",
            )
        },
    )?;
    mrtr_tool(
        reg,
        signer,
        "test_input_required_result_multiple_inputs",
        "MRTR: asks for a name, a sampled greeting and the roots at once",
        multiple_inputs,
    )?;
    mrtr_tool(
        reg,
        signer,
        "test_input_required_result_multi_round",
        "MRTR: asks for a name, then a favourite colour, then answers (three rounds)",
        multi_round,
    )?;
    mrtr_tool(
        reg,
        signer,
        "test_input_required_result_capabilities",
        "MRTR: asks only through the capabilities (sampling, elicitation, roots) the client declared",
        capabilities,
    )
}

fn ask_user_name() -> ToolResult {
    ToolResult::InputRequired {
        input_requests: json!({ "user_name": elicit("What is your name?", json!({ "name": { "type": "string" } }), &["name"]) }),
        request_state: None,
    }
}

/// One confirmation round carried by a signed state.
fn confirm_with_state(
    signer: &StateSigner,
    ctx: &ToolContext,
    owner: &str,
    done: &str,
) -> ToolResult {
    let state = match state_of(signer, owner, ctx) {
        Ok(s) => s,
        Err(e) => return ToolResult::InvalidRequest(e),
    };
    let confirmed = match answer(ctx.request().input_responses.as_ref(), "confirm") {
        Answer::Accepted(c) => c.get("ok").and_then(Value::as_bool),
        Answer::Refused(_) => Some(false),
        Answer::Missing => None,
    };
    match (state, confirmed) {
        (Some(s), Some(true)) if s["step"] == "confirm" => ToolResult::text(done),
        (Some(s), Some(false)) if s["step"] == "confirm" => ToolResult::text("Not confirmed"),
        _ => ToolResult::InputRequired {
            input_requests: json!({ "confirm": elicit("Please confirm", json!({ "ok": { "type": "boolean" } }), &["ok"]) }),
            request_state: Some(signer.sign(owner, json!({ "step": "confirm" }))),
        },
    }
}

fn multiple_inputs(signer: &StateSigner, ctx: &ToolContext) -> ToolResult {
    const OWNER: &str = "test_input_required_result_multiple_inputs";
    let state = match state_of(signer, OWNER, ctx) {
        Ok(s) => s,
        Err(e) => return ToolResult::InvalidRequest(e),
    };
    let responses = ctx.request().input_responses.as_ref();
    let name = accepted_text(responses, "user_name", "name");
    let greeting = sampled_text(responses, "greeting");
    let roots = root_count(responses, "client_roots");
    if let (Some(_), Some(name), Some(greeting), Some(roots)) = (state, name, greeting, roots) {
        return ToolResult::text(format!(
            "Name: {name}; Greeting: {greeting}; Roots: {roots}"
        ));
    }
    // Ask for everything again: a stateless server keeps no partial answers.
    ToolResult::InputRequired {
        input_requests: json!({
            "user_name": elicit("What is your name?", json!({ "name": { "type": "string" } }), &["name"]),
            "greeting": sample("Generate a greeting", 50),
            "client_roots": list_roots(),
        }),
        request_state: Some(signer.sign(OWNER, json!({ "step": "all" }))),
    }
}

fn multi_round(signer: &StateSigner, ctx: &ToolContext) -> ToolResult {
    const OWNER: &str = "test_input_required_result_multi_round";
    let state = match state_of(signer, OWNER, ctx) {
        Ok(s) => s,
        Err(e) => return ToolResult::InvalidRequest(e),
    };
    let responses = ctx.request().input_responses.as_ref();
    let ask_name = || ToolResult::InputRequired {
        input_requests: json!({ "step1": elicit("Step 1: What is your name?", json!({ "name": { "type": "string" } }), &["name"]) }),
        request_state: Some(signer.sign(OWNER, json!({ "round": 1 }))),
    };
    let ask_color = |name: &str| ToolResult::InputRequired {
        input_requests: json!({ "step2": elicit("Step 2: What is your favorite color?", json!({ "color": { "type": "string" } }), &["color"]) }),
        request_state: Some(signer.sign(OWNER, json!({ "round": 2, "name": name }))),
    };
    let Some(state) = state else {
        return ask_name();
    };
    match state["round"].as_u64() {
        Some(1) => match accepted_text(responses, "step1", "name") {
            Some(name) => ask_color(name),
            None => ask_name(),
        },
        Some(2) => {
            let name = state["name"].as_str().unwrap_or_default();
            match accepted_text(responses, "step2", "color") {
                Some(color) => {
                    ToolResult::text(format!("Multi-round complete for {name} who likes {color}"))
                }
                None => ask_color(name),
            }
        }
        _ => ToolResult::InvalidRequest("requestState is not from this tool's rounds".into()),
    }
}

/// Asks only through what the client declared; needs no state, since every answer
/// arrives together in the retry.
fn capabilities(_: &StateSigner, ctx: &ToolContext) -> ToolResult {
    let declared = &ctx.request().client_capabilities;
    let has = |c: &str| declared.get(c).is_some_and(Value::is_object);
    let responses = ctx.request().input_responses.as_ref();
    let mut requests = Map::new();
    let mut got = Vec::new();
    if has("sampling") {
        match sampled_text(responses, "sample_input") {
            Some(text) => got.push(format!("sampling: {text}")),
            None => {
                requests.insert("sample_input".into(), sample("Sample request", 50));
            }
        }
    }
    if has("elicitation") {
        match accepted_text(responses, "user_input", "value") {
            Some(value) => got.push(format!("elicitation: {value}")),
            None => {
                let schema = json!({ "value": { "type": "string" } });
                requests.insert("user_input".into(), elicit("Any value", schema, &["value"]));
            }
        }
    }
    if has("roots") {
        match root_count(responses, "client_roots") {
            Some(n) => got.push(format!("roots: {n}")),
            None => {
                requests.insert("client_roots".into(), list_roots());
            }
        }
    }
    if !requests.is_empty() {
        return ToolResult::InputRequired {
            input_requests: Value::Object(requests),
            request_state: None,
        };
    }
    if got.is_empty() {
        return ToolResult::error(
            "this tool needs the client to declare sampling, elicitation or roots",
        );
    }
    ToolResult::text(format!("Received {}", got.join("; ")))
}

/// `(action, content)` of the client's answer to an elicitation, whatever the action.
fn elicited<'a>(responses: Option<&'a Value>, key: &str) -> Option<(&'a str, &'a Value)> {
    let r = responses?.get(key)?;
    let action = r.get("action")?.as_str()?;
    Some((action, r.get("content").unwrap_or(&Value::Null)))
}

/// A tool that asks the user to fill in a form, then reports what came back.
fn elicitation_tool(
    reg: &mut Registry,
    spec: ToolSpec,
    label: &'static str,
    form: impl Fn(&Map<String, Value>) -> Value + Send + Sync + 'static,
) -> Result<(), RegistryError> {
    sync_tool(reg, spec, move |ctx, args| {
        match elicited(ctx.request().input_responses.as_ref(), "form") {
            Some((action, content)) => {
                ToolResult::text(format!("{label}: action={action}, content={content}"))
            }
            None => ToolResult::InputRequired {
                input_requests: json!({ "form": form(args) }),
                request_state: None,
            },
        }
    })
}

/// The fixtures that ask the client for something in the middle of a call. Revision
/// 2025-11-25 carries such questions as server-to-client requests on the call's open
/// SSE stream, answered by a separate POST; a stateless server has no place to deliver
/// that answer to, so these work as 2026-07-28 multi-round results only, and older
/// revisions get an `INPUT_REQUIRED` tool error.
fn add_client_request_tools(reg: &mut Registry) -> Result<(), RegistryError> {
    let one_string = |name: &str, description: &str| {
        json!({
            "type": "object",
            "properties": { name: { "type": "string", "description": description } },
            "required": [name],
        })
    };
    sync_tool(
        reg,
        ToolSpec::new(
            "test_sampling",
            "Asks the client's model to answer a prompt",
        )?
        .input_schema(one_string("prompt", "The prompt to send to the LLM")),
        |ctx, args| match sampled_text(ctx.request().input_responses.as_ref(), "llm_response") {
            Some(text) => ToolResult::text(format!("LLM response: {text}")),
            None => {
                let prompt = args
                    .get("prompt")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                ToolResult::InputRequired {
                    input_requests: json!({ "llm_response": sample(prompt, 100) }),
                    request_state: None,
                }
            }
        },
    )?;
    elicitation_tool(
        reg,
        ToolSpec::new("test_elicitation", "Asks the user for a response")?
            .input_schema(one_string("message", "The message to show the user")),
        "User response",
        |args| {
            let message = args
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let properties =
                json!({ "response": { "type": "string", "description": "User's response" } });
            elicit(message, properties, &["response"])
        },
    )?;
    elicitation_tool(
        reg,
        spec(
            "test_elicitation_sep1034_defaults",
            "Asks the user to review a form whose fields have defaults (SEP-1034)",
        )?,
        "Elicitation completed",
        |_| {
            let properties = json!({
                "name": { "type": "string", "description": "User name", "default": "John Doe" },
                "age": { "type": "integer", "description": "User age", "default": 30 },
                "score": { "type": "number", "description": "User score", "default": 95.5 },
                "status": {
                    "type": "string",
                    "description": "User status",
                    "enum": ["active", "inactive", "pending"],
                    "default": "active",
                },
                "verified": { "type": "boolean", "description": "Verification status", "default": true },
            });
            elicit(
                "Please review and update the form fields with defaults",
                properties,
                &[],
            )
        },
    )?;
    elicitation_tool(
        reg,
        spec(
            "test_elicitation_sep1330_enums",
            "Asks the user to pick from every kind of enum field (SEP-1330)",
        )?,
        "Elicitation completed",
        |_| {
            let titled = |prefix: &str, word: &str| {
                json!([
                    { "const": format!("{prefix}1"), "title": format!("First {word}") },
                    { "const": format!("{prefix}2"), "title": format!("Second {word}") },
                    { "const": format!("{prefix}3"), "title": format!("Third {word}") },
                ])
            };
            let properties = json!({
                "untitledSingle": {
                    "type": "string",
                    "description": "Select one option",
                    "enum": ["option1", "option2", "option3"],
                },
                "titledSingle": {
                    "type": "string",
                    "description": "Select one option with titles",
                    "oneOf": titled("value", "Option"),
                },
                "legacyEnum": {
                    "type": "string",
                    "description": "Select one option (legacy)",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"],
                },
                "untitledMulti": {
                    "type": "array",
                    "description": "Select multiple options",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": { "type": "string", "enum": ["option1", "option2", "option3"] },
                },
                "titledMulti": {
                    "type": "array",
                    "description": "Select multiple options with titles",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": { "anyOf": titled("value", "Choice") },
                },
            });
            elicit(
                "Please select options from the enum fields",
                properties,
                &[],
            )
        },
    )
}

/// A tool whose input schema uses JSON Schema 2020-12 keywords, published unchanged.
fn add_schema_tool(reg: &mut Registry) -> Result<(), RegistryError> {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {
                "$anchor": "addressDef",
                "type": "object",
                "properties": { "street": { "type": "string" }, "city": { "type": "string" } },
            },
        },
        "properties": {
            "name": { "type": "string" },
            "address": { "$ref": "#/$defs/address" },
            "contactMethod": { "type": "string", "enum": ["phone", "email"] },
            "phone": { "type": "string" },
            "email": { "type": "string" },
        },
        "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
        "if": { "properties": { "contactMethod": { "const": "phone" } }, "required": ["contactMethod"] },
        "then": { "required": ["phone"] },
        "else": { "required": ["email"] },
        "additionalProperties": false,
    });
    sync_tool(
        reg,
        ToolSpec::new(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
        )?
        // The suite's schema has a top-level allOf, which real clients refuse.
        .allow_unportable_schema()
        .input_schema(schema),
        |_, args| ToolResult::text(format!("Received: {}", Value::Object(args.clone()))),
    )
}

// ---------- prompts ----------

fn prompt(
    name: &str,
    title: Option<&str>,
    description: &str,
    arguments: &[(&str, &str)],
    get: PromptFn,
    complete: Option<CompleteFn>,
) -> Prompt {
    Prompt {
        spec: PromptSpec {
            name: name.into(),
            title: title.map(str::to_owned),
            description: description.into(),
            arguments: arguments
                .iter()
                .map(|(n, d)| ((*n).to_owned(), (*d).to_owned(), true))
                .collect(),
        },
        get,
        complete,
    }
}

fn user(content: Value) -> Value {
    json!({ "role": "user", "content": content })
}

fn messages(messages: Vec<Value>) -> BoxFuture<'static, Result<Value, String>> {
    Box::pin(async move { Ok(json!({ "messages": messages })) })
}

fn add_prompts(reg: &mut Registry, signer: &Arc<StateSigner>) -> Result<(), RegistryError> {
    reg.add_prompt(prompt(
        "test_simple_prompt",
        Some("Simple Test Prompt"),
        "A simple prompt without arguments",
        &[],
        Arc::new(|_, _| {
            messages(vec![user(Content::text(
                "This is a simple prompt for testing.",
            ))])
        }),
        None,
    ))?;
    reg.add_prompt(prompt(
        "test_prompt_with_arguments",
        Some("Prompt With Arguments"),
        "A prompt with required arguments",
        &[
            ("arg1", "First test argument"),
            ("arg2", "Second test argument"),
        ],
        Arc::new(|_, args| {
            let arg = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or_default();
            let text = format!(
                "Prompt with arguments: arg1='{}', arg2='{}'",
                arg("arg1"),
                arg("arg2")
            );
            messages(vec![user(Content::text(text))])
        }),
        Some(Arc::new(|argument, partial| {
            let options: &[&str] = match argument {
                "arg1" => &["testValue1", "test", "value"],
                "arg2" => &["testValue2", "other"],
                _ => &[],
            };
            options
                .iter()
                .filter(|o| o.starts_with(partial))
                .map(|o| (*o).to_owned())
                .collect()
        })),
    ))?;
    reg.add_prompt(prompt(
        "test_prompt_with_embedded_resource",
        Some("Prompt With Embedded Resource"),
        "A prompt that includes an embedded resource",
        &[("resourceUri", "URI of the resource to embed")],
        Arc::new(|_, args| {
            let uri = args
                .get("resourceUri")
                .and_then(Value::as_str)
                .unwrap_or_default();
            messages(vec![
                user(Content::embedded_text(
                    uri,
                    "text/plain",
                    "Embedded resource content for testing.",
                )),
                user(Content::text("Please process the embedded resource above.")),
            ])
        }),
        None,
    ))?;
    reg.add_prompt(prompt(
        "test_prompt_with_image",
        Some("Prompt With Image"),
        "A prompt that includes image content",
        &[],
        Arc::new(|_, _| {
            messages(vec![
                user(Content::image(IMAGE_PNG, "image/png")),
                user(Content::text("Please analyze the image above.")),
            ])
        }),
        None,
    ))?;
    let signer = signer.clone();
    reg.add_prompt(prompt(
        "test_input_required_result_prompt",
        None,
        "MRTR: prompt that requires elicitation input",
        &[],
        Arc::new(move |ctx, _| {
            let result = context_prompt(&signer, &ctx);
            Box::pin(async move { result })
        }),
        None,
    ))
}

/// A prompt that first asks the user for context (2026-07-28 multi-round result).
fn context_prompt(signer: &StateSigner, ctx: &ToolContext) -> Result<Value, String> {
    const OWNER: &str = "test_input_required_result_prompt";
    state_of(signer, OWNER, ctx)?;
    let responses = ctx.request().input_responses.as_ref();
    match accepted_text(responses, "user_context", "context") {
        Some(context) => Ok(json!({
            "messages": [user(Content::text(format!("Prompt with context: {context}")))],
        })),
        None => Ok(json!({
            "resultType": "input_required",
            "inputRequests": {
                "user_context": elicit(
                    "What context should the prompt use?",
                    json!({ "context": { "type": "string" } }),
                    &["context"],
                ),
            },
            "requestState": signer.sign(OWNER, json!({ "step": "context" })),
        })),
    }
}

// ---------- resources ----------

fn text_contents(uri: &str, mime_type: &str, text: String) -> Vec<Value> {
    vec![json!({ "uri": uri, "mimeType": mime_type, "text": text })]
}

fn fixed_text(text: &'static str, mime_type: &'static str) -> ReadFn {
    Arc::new(move |_, uri| {
        Box::pin(async move { Ok(text_contents(&uri, mime_type, text.to_owned())) })
    })
}

fn resource(
    uri: &str,
    name: &str,
    title: Option<&str>,
    description: &str,
    mime_type: &str,
    read: ReadFn,
) -> Resource {
    Resource {
        spec: ResourceSpec {
            uri: uri.into(),
            name: name.into(),
            title: title.map(str::to_owned),
            description: Some(description.into()),
            mime_type: Some(mime_type.into()),
            meta: None,
        },
        read,
    }
}

fn add_resources(reg: &mut Registry) -> Result<(), RegistryError> {
    // First in the list: the caching scenario reads the first listed resource.
    reg.add_resource(resource(
        "test://static-text",
        "static-text",
        Some("Static Text Resource"),
        "A static text resource for testing",
        "text/plain",
        fixed_text(
            "This is the content of the static text resource.",
            "text/plain",
        ),
    ))?;
    reg.add_resource(resource(
        "test://static-binary",
        "static-binary",
        Some("Static Binary Resource"),
        "A static binary resource (image) for testing",
        "image/png",
        Arc::new(|_, uri| {
            Box::pin(async move {
                Ok(vec![
                    json!({ "uri": uri, "mimeType": "image/png", "blob": IMAGE_PNG }),
                ])
            })
        }),
    ))?;
    reg.add_resource(resource(
        "test://watched-resource",
        "watched-resource",
        Some("Watched Resource"),
        "The resource the subscription scenarios name (this server offers no subscriptions)",
        "text/plain",
        fixed_text("Watched resource content", "text/plain"),
    ))?;
    reg.add_resource_template(ResourceTemplate {
        uri_template: "test://template/{id}/data".into(),
        name: "template".into(),
        title: Some("Resource Template".into()),
        description: Some("A resource template with parameter substitution".into()),
        mime_type: Some("application/json".into()),
        meta: None,
        read: Arc::new(|_, uri| {
            Box::pin(async move {
                let id = uri
                    .strip_prefix("test://template/")
                    .and_then(|r| r.strip_suffix("/data"))
                    .ok_or_else(|| format!("{uri} does not match the template"))?
                    .to_owned();
                let body =
                    json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") });
                Ok(text_contents(&uri, "application/json", body.to_string()))
            })
        }),
    })
}
