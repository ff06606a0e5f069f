//! A small MCP server for Gatehouse's own tests and benchmarks: an upstream behind the
//! gateway, over stdio (newline-delimited JSON-RPC). Not part of a deployment.
//!
//! When `TEST_UPSTREAM_JWKS_URL` is set, every `tools/call` must carry a valid identity
//! token in `_meta["dev.gatehouse/identity"]`, checked as a real upstream would:
//! signature against the JWKS, `typ`, `iss` (`TEST_UPSTREAM_ISSUER`), `aud`
//! (`TEST_UPSTREAM_AUDIENCE`), expiry, a lifetime of at most 60 s, the tool, and the
//! digest of the arguments. A call that fails the check gets an error result saying why.
//!
//! With `--http`, it serves Streamable HTTP at `http://127.0.0.1:<port>/mcp` instead (the
//! first line on stdout says where; `PORT` picks the port): stateful, with an
//! `Mcp-Session-Id` from `initialize` required on every later request (404 once
//! forgotten, see the `forget_sessions` tool); the identity token comes in
//! `Authorization: Bearer` (or the header `TEST_UPSTREAM_IDENTITY_HEADER` names); a call
//! with a progress token is answered as an SSE stream.
//!
//! With `--rest`, it is a REST API instead, for OpenAPI upstreams (the first line on
//! stdout says where): `/status/{code}` answers with that status, `/big?bytes=N` with
//! a JSON answer of about N bytes, `/text` with plain text, and every other request
//! is echoed as JSON (method, path, query, header names, `Idempotency-Key`, body, and
//! who the identity token names). With the JWKS set, a request without a valid
//! identity token for exactly this method, URL and body is refused with 401.
//!
//! Other settings: `TEST_UPSTREAM_EXIT_AT_START` (a message: written to stderr, then
//! exit 2, for crash loops), `TEST_UPSTREAM_PAGE` (tools per `tools/list` page, 4),
//! `TEST_UPSTREAM_VARIANT` (changes the `echo` description, for pinning tests), or
//! `TEST_UPSTREAM_VARIANT_FILE` (the same, read from that file at every listing),
//! `TEST_UPSTREAM_MANY` (that many more read-only tools, for list benchmarks).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gatehouse::gateway::identity::{self, IdentityClaims};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, mpsc};

static INITIALIZED: AtomicU64 = AtomicU64::new(0);
/// Where the HTTP layer tells the tools which request headers came (names only).
const HEADERS_META: &str = "test/http_headers";
static CANCELLED: AtomicU64 = AtomicU64::new(0);

fn tools() -> Vec<Value> {
    // Read at every listing, so a test can change a definition under a running process.
    let variant = match std::env::var("TEST_UPSTREAM_VARIANT_FILE") {
        Ok(path) => std::fs::read_to_string(path)
            .unwrap_or_default()
            .trim()
            .to_owned(),
        Err(_) => std::env::var("TEST_UPSTREAM_VARIANT").unwrap_or_default(),
    };
    let echo_description = if variant.is_empty() {
        "Echoes its text back.".to_owned()
    } else {
        format!("Echoes its text back ({variant}).")
    };
    let read_only = json!({ "readOnlyHint": true, "openWorldHint": false });
    let many: usize = std::env::var("TEST_UPSTREAM_MANY")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let generated = (0..many).map(|i| {
        json!({
            "name": format!("generated_{i}"), "description": format!("Generated tool number {i}, for list benchmarks."),
            "inputSchema": { "type": "object", "properties": { "id": { "type": "string", "description": "An id." } } },
            "annotations": read_only,
        })
    });
    let mut all = vec![
        json!({
            "name": "echo", "title": "Echo", "description": echo_description,
            "inputSchema": { "type": "object", "properties": { "text": { "type": "string" } }, "required": ["text"] },
            "outputSchema": { "type": "object", "properties": { "text": { "type": "string" } }, "required": ["text"] },
            "annotations": read_only,
            "_meta": { "ui": { "resourceUri": "ui://test/echo.html" } },
        }),
        json!({
            "name": "add", "description": "Adds two numbers.",
            "inputSchema": { "type": "object", "properties": { "a": { "type": "number" }, "b": { "type": "number" } }, "required": ["a", "b"] },
            "annotations": read_only,
        }),
        json!({
            "name": "whoami", "description": "What the upstream was told about the caller.",
            "inputSchema": { "type": "object", "properties": {} },
            "annotations": read_only,
        }),
        json!({
            "name": "write_note", "description": "Saves a note (a write without annotations).",
            "inputSchema": { "type": "object", "properties": { "note": { "type": "string" } }, "required": ["note"] },
        }),
        json!({
            "name": "slow", "description": "Reports progress for each step, then answers.",
            "inputSchema": { "type": "object", "properties": { "steps": { "type": "integer" }, "delay_ms": { "type": "integer" } } },
            "annotations": read_only,
        }),
        json!({
            "name": "hang", "description": "Never answers.",
            "inputSchema": { "type": "object", "properties": {} },
            "annotations": read_only,
        }),
        json!({
            "name": "cancelled", "description": "How many cancellations this process received.",
            "inputSchema": { "type": "object", "properties": {} },
            "annotations": read_only,
        }),
        json!({
            "name": "crash", "description": "Exits the process.",
            "inputSchema": { "type": "object", "properties": {} },
            "annotations": read_only,
        }),
        json!({
            "name": "env", "description": "The names of this process's environment variables.",
            "inputSchema": { "type": "object", "properties": {} },
            "annotations": read_only,
        }),
        json!({
            "name": "big", "description": "Answers with this many bytes of text.",
            "inputSchema": { "type": "object", "properties": { "bytes": { "type": "integer" } }, "required": ["bytes"] },
            "annotations": read_only,
        }),
        json!({
            "name": "pid", "description": "This process's id and how often it was initialized.",
            "inputSchema": { "type": "object", "properties": {} },
            "annotations": read_only,
        }),
        json!({
            "name": "announce_change", "description": "Sends notifications/tools/list_changed.",
            "inputSchema": { "type": "object", "properties": {} },
            "annotations": read_only,
        }),
        json!({
            "name": "forget_sessions", "description": "Forgets every HTTP session, as a restarted server would.",
            "inputSchema": { "type": "object", "properties": {} },
            "annotations": read_only,
        }),
        json!({
            "name": "dotted.name/v1", "description": "A name only some clients accept.",
            "inputSchema": { "type": "object", "properties": {} },
            "annotations": read_only,
        }),
        json!({
            "name": "unportable", "description": "A top-level oneOf, which Claude refuses.",
            "inputSchema": { "type": "object", "oneOf": [ { "required": ["a"] }, { "required": ["b"] } ], "properties": { "a": {}, "b": {} } },
        }),
    ];
    all.extend(generated);
    all
}

struct Verifier {
    url: String,
    /// Fetched at the first call: Gatehouse starts its upstreams before it serves.
    jwks: tokio::sync::OnceCell<Value>,
    issuer: String,
    audience: String,
}

impl Verifier {
    fn from_env() -> Option<Self> {
        Some(Self {
            url: std::env::var("TEST_UPSTREAM_JWKS_URL").ok()?,
            jwks: tokio::sync::OnceCell::new(),
            issuer: std::env::var("TEST_UPSTREAM_ISSUER").unwrap_or_default(),
            audience: std::env::var("TEST_UPSTREAM_AUDIENCE").unwrap_or_default(),
        })
    }

    /// The token's claims, if it is a valid identity token for this call.
    async fn check(
        &self,
        token: &str,
        method: &str,
        tool: &str,
        args: &Value,
    ) -> Result<IdentityClaims, String> {
        let c = self.decode(token).await?;
        if c.method != method {
            return Err(format!("issued for method {:?}", c.method));
        }
        if c.tool != tool {
            return Err(format!("issued for tool {:?}", c.tool));
        }
        if c.args_sha256 != identity::args_digest(args) {
            return Err("issued for other arguments".into());
        }
        Ok(c)
    }

    /// The claims of a validly signed, current identity token for this upstream.
    async fn decode(&self, token: &str) -> Result<IdentityClaims, String> {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation};
        let jwks = self
            .jwks
            .get_or_init(|| async {
                match reqwest::get(&self.url).await {
                    Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                }
            })
            .await;
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
        if header.typ.as_deref() != Some(identity::TYP) || header.alg != Algorithm::EdDSA {
            return Err("not an identity token".into());
        }
        let kid = header.kid.ok_or("no kid")?;
        let key = jwks["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["kid"] == json!(kid)))
            .ok_or("unknown kid")?;
        let x = key["x"].as_str().ok_or("key without x")?;
        let decoding = DecodingKey::from_ed_components(x).map_err(|e| e.to_string())?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&[&self.audience]);
        v.set_issuer(&[&self.issuer]);
        v.leeway = 0;
        let data = jsonwebtoken::decode::<IdentityClaims>(token, &decoding, &v)
            .map_err(|e| format!("rejected: {e}"))?;
        let c = data.claims;
        if c.exp - c.iat > 60 {
            return Err("lives longer than 60 s".into());
        }
        Ok(c)
    }
}

type Out = mpsc::UnboundedSender<Value>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(message) = std::env::var("TEST_UPSTREAM_EXIT_AT_START") {
        eprintln!("{message}");
        std::process::exit(2);
    }
    let verifier = Arc::new(Verifier::from_env());
    if std::env::args().any(|a| a == "--http") {
        return http::serve(verifier).await;
    }
    if std::env::args().any(|a| a == "--rest") {
        return rest::serve(verifier).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(msg) = rx.recv().await {
            let mut line = serde_json::to_vec(&msg).unwrap_or_default();
            line.push(b'\n');
            while let Ok(more) = rx.try_recv() {
                line.extend(serde_json::to_vec(&more).unwrap_or_default());
                line.push(b'\n');
            }
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                return;
            }
        }
    });
    let hanging: Arc<Mutex<HashMap<String, ()>>> = Arc::default();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let tx = tx.clone();
        let verifier = verifier.clone();
        let hanging = hanging.clone();
        tokio::spawn(async move { handle(msg, tx, verifier, hanging).await });
    }
    drop(tx);
    let _ = writer.await;
}

async fn handle(
    msg: Map<String, Value>,
    out: Out,
    verifier: Arc<Option<Verifier>>,
    hanging: Arc<Mutex<HashMap<String, ()>>>,
) {
    let method = msg
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let params = msg.get("params").cloned().unwrap_or(json!({}));
    let Some(id) = msg.get("id").cloned() else {
        if method == "notifications/cancelled" {
            CANCELLED.fetch_add(1, Ordering::Relaxed);
            let id = params["requestId"].to_string();
            hanging.lock().await.remove(&id);
        }
        return;
    };
    let reply = |result: Value| json!({ "jsonrpc": "2.0", "id": id, "result": result });
    let answer = match method {
        "initialize" => {
            INITIALIZED.fetch_add(1, Ordering::Relaxed);
            reply(json!({
                "protocolVersion": params["protocolVersion"].as_str().unwrap_or("2025-06-18"),
                "capabilities": { "tools": { "listChanged": true }, "prompts": {}, "resources": {} },
                "serverInfo": { "name": "gatehouse-test-upstream", "version": "1" },
            }))
        }
        "ping" => reply(json!({})),
        "prompts/list" => reply(json!({ "prompts": [{
            "name": "greet", "title": "Greet", "description": "Says hello.",
            "arguments": [{ "name": "name", "description": "Who to greet", "required": true }],
        }] })),
        "resources/list" => reply(json!({ "resources": [
            { "uri": "test://doc", "name": "doc", "mimeType": "text/plain" },
            { "uri": "ui://test/echo.html", "name": "echo-app", "mimeType": "text/html;profile=mcp-app", "_meta": { "ui": { "prefersBorder": true } } },
        ] })),
        "resources/templates/list" => reply(json!({ "resourceTemplates": [
            { "uriTemplate": "test://items/{id}", "name": "item", "mimeType": "text/plain" },
        ] })),
        "prompts/get" | "resources/read" => {
            let mut plain = params.clone();
            let meta = plain
                .as_object_mut()
                .and_then(|p| p.remove("_meta"))
                .unwrap_or(json!({}));
            let subject = if method == "prompts/get" {
                params["name"].clone()
            } else {
                params["uri"].clone()
            };
            let subject = subject.as_str().unwrap_or_default().to_owned();
            let who = match verifier.as_ref() {
                Some(v) => match meta[identity::META_KEY].as_str() {
                    Some(token) => match v.check(token, method, &subject, &plain).await {
                        Ok(c) => c.sub,
                        Err(why) => {
                            let _ = out.send(json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32602, "message": format!("IDENTITY_REJECTED: {why}") } }));
                            return;
                        }
                    },
                    None => {
                        let _ = out.send(json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32602, "message": "IDENTITY_REJECTED: no identity token" } }));
                        return;
                    }
                },
                None => "unchecked".to_owned(),
            };
            if method == "prompts/get" {
                let name = params["arguments"]["name"].as_str().unwrap_or("you");
                reply(
                    json!({ "description": "A greeting", "messages": [{ "role": "user", "content": { "type": "text", "text": format!("Hello, {name}! (for {who})") } }] }),
                )
            } else {
                reply(
                    json!({ "contents": [{ "uri": subject, "mimeType": "text/plain", "text": format!("contents of {subject} (for {who})") }] }),
                )
            }
        }
        "tools/list" => {
            let page: usize = std::env::var("TEST_UPSTREAM_PAGE")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(4);
            let all = tools();
            let start: usize = params["cursor"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let end = (start + page).min(all.len());
            let mut result = json!({ "tools": all[start.min(end)..end] });
            if end < all.len() {
                result["nextCursor"] = json!(end.to_string());
            }
            reply(result)
        }
        "tools/call" => {
            let name = params["name"].as_str().unwrap_or_default().to_owned();
            let args = params.get("arguments").cloned().unwrap_or(json!({}));
            let meta = params.get("_meta").cloned().unwrap_or(json!({}));
            let claims = match verifier.as_ref() {
                Some(v) => match meta[identity::META_KEY].as_str() {
                    Some(token) => match v.check(token, "tools/call", &name, &args).await {
                        Ok(c) => Some(c),
                        Err(why) => {
                            let _ =
                                out.send(reply(error_result(&format!("IDENTITY_REJECTED: {why}"))));
                            return;
                        }
                    },
                    None => {
                        let _ =
                            out.send(reply(error_result("IDENTITY_REJECTED: no identity token")));
                        return;
                    }
                },
                None => None,
            };
            match call(&name, &args, &meta, claims, &out, &id).await {
                Some(result) => reply(result),
                None => {
                    hanging.lock().await.insert(id.to_string(), ());
                    return;
                }
            }
        }
        _ => {
            json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32601, "message": format!("no method {method}") } })
        }
    };
    let _ = out.send(answer);
}

fn error_result(text: &str) -> Value {
    json!({ "content": [{ "type": "text", "text": text }], "isError": true })
}

fn text_result(text: &str) -> Value {
    json!({ "content": [{ "type": "text", "text": text }], "isError": false })
}

/// The result of a call, or `None` for one that never answers.
async fn call(
    name: &str,
    args: &Value,
    meta: &Value,
    claims: Option<IdentityClaims>,
    out: &Out,
    id: &Value,
) -> Option<Value> {
    let _ = id;
    Some(match name {
        "echo" => {
            let text = args["text"].as_str().unwrap_or_default();
            json!({
                "content": [{ "type": "text", "text": text }],
                "structuredContent": { "text": text },
                "isError": false,
                "_meta": { "test/echoed": true },
            })
        }
        "add" => {
            let sum = args["a"].as_f64().unwrap_or(0.0) + args["b"].as_f64().unwrap_or(0.0);
            json!({ "content": [{ "type": "text", "text": sum.to_string() }], "structuredContent": { "sum": sum }, "isError": false })
        }
        "whoami" | "write_note" => {
            let meta_keys: Vec<&String> = meta
                .as_object()
                .map(|m| m.keys().filter(|k| *k != HEADERS_META).collect())
                .unwrap_or_default();
            // The token itself too, so a test can check that nothing else accepts it.
            let seen = json!({
                "claims": claims,
                "meta_keys": meta_keys,
                "http_headers": meta[HEADERS_META],
                "arguments": args,
                "identity_token": meta[identity::META_KEY],
            });
            json!({ "content": [{ "type": "text", "text": seen.to_string() }], "structuredContent": seen, "isError": false })
        }
        "slow" => {
            let steps = args["steps"].as_u64().unwrap_or(3);
            let delay = args["delay_ms"].as_u64().unwrap_or(50);
            for i in 1..=steps {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                if let Some(token) = meta.get("progressToken") {
                    let _ = out.send(json!({
                        "jsonrpc": "2.0", "method": "notifications/progress",
                        "params": { "progressToken": token, "progress": i, "total": steps, "message": format!("step {i}") },
                    }));
                }
            }
            text_result("done")
        }
        "hang" => return None,
        "cancelled" => text_result(&CANCELLED.load(Ordering::Relaxed).to_string()),
        "crash" => {
            eprintln!("crashing on purpose");
            tokio::time::sleep(Duration::from_millis(20)).await;
            std::process::exit(3);
        }
        "env" => {
            let mut names: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
            names.sort();
            json!({ "content": [{ "type": "text", "text": names.join(" ") }], "structuredContent": { "names": names }, "isError": false })
        }
        "big" => text_result(&"x".repeat(args["bytes"].as_u64().unwrap_or(0) as usize)),
        "pid" => {
            let info = json!({ "pid": std::process::id(), "initialized": INITIALIZED.load(Ordering::Relaxed) });
            json!({ "content": [{ "type": "text", "text": info.to_string() }], "structuredContent": info, "isError": false })
        }
        "announce_change" => {
            let _ =
                out.send(json!({ "jsonrpc": "2.0", "method": "notifications/tools/list_changed" }));
            text_result("announced")
        }
        "forget_sessions" => {
            http::SESSIONS.lock().await.clear();
            text_result("forgotten")
        }
        "dotted.name/v1" => text_result("dotted"),
        "unportable" => text_result("unportable"),
        other => {
            return Some(
                json!({ "content": [{ "type": "text", "text": format!("unknown tool {other}") }], "isError": true }),
            );
        }
    })
}

mod http {
    use std::collections::HashSet;
    use std::sync::Arc;

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::sse::{Event, Sse};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use serde_json::{Value, json};
    use tokio::sync::{Mutex, mpsc};

    use super::{HEADERS_META, Verifier, handle, identity};

    pub static SESSIONS: std::sync::LazyLock<Mutex<HashSet<String>>> =
        std::sync::LazyLock::new(Mutex::default);

    type Hanging = Arc<Mutex<std::collections::HashMap<String, ()>>>;

    #[derive(Clone)]
    struct Ctx {
        verifier: Arc<Option<Verifier>>,
        hanging: Hanging,
    }

    pub async fn serve(verifier: Arc<Option<Verifier>>) {
        let port = std::env::var("PORT").unwrap_or_else(|_| "0".into());
        let Ok(listener) = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await else {
            eprintln!("cannot listen");
            std::process::exit(1);
        };
        let Ok(addr) = listener.local_addr() else {
            std::process::exit(1);
        };
        println!("listening on http://{addr}/mcp");
        let ctx = Ctx {
            verifier,
            hanging: Arc::default(),
        };
        let app = Router::new().route("/mcp", post(mcp)).with_state(ctx);
        let _ = axum::serve(listener, app).await;
    }

    async fn mcp(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
        let Ok(Value::Object(mut msg)) = serde_json::from_slice::<Value>(&body) else {
            return (StatusCode::BAD_REQUEST, "not JSON").into_response();
        };
        let method = msg
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let session = headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut minted = None;
        if method == "initialize" {
            let id = format!("s-{}", rand::random::<u64>());
            SESSIONS.lock().await.insert(id.clone());
            minted = Some(id);
        } else {
            let known = match &session {
                Some(s) => SESSIONS.lock().await.contains(s),
                None => false,
            };
            if !known {
                return (StatusCode::NOT_FOUND, "unknown session").into_response();
            }
        }
        let Some(id) = msg.get("id").cloned() else {
            tokio::spawn(handle(
                msg,
                mpsc::unbounded_channel().0,
                ctx.verifier,
                ctx.hanging,
            ));
            return StatusCode::ACCEPTED.into_response();
        };
        let identity_header = std::env::var("TEST_UPSTREAM_IDENTITY_HEADER")
            .unwrap_or_else(|_| "authorization".into());
        let token = headers
            .get(identity_header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).to_owned());
        let mut names: Vec<String> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        let params = msg.entry("params").or_insert_with(|| json!({}));
        let streaming = params["_meta"].get("progressToken").is_some();
        if let Some(meta) = params
            .as_object_mut()
            .map(|p| p.entry("_meta").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
        {
            if let Some(t) = token {
                meta.insert(identity::META_KEY.into(), json!(t));
            }
            meta.insert(HEADERS_META.into(), json!(names));
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(handle(msg, tx, ctx.verifier, ctx.hanging));
        let mut response = if streaming {
            Sse::new(events(rx, id)).into_response()
        } else {
            loop {
                match rx.recv().await {
                    Some(m) if m.get("id") == Some(&id) => break axum::Json(m).into_response(),
                    Some(_) => continue,
                    // A call that never answers (`hang`): the request stays open until
                    // the client gives up.
                    None => std::future::pending::<()>().await,
                }
            }
        };
        if let Some(sid) = minted
            && let Ok(v) = sid.parse()
        {
            response.headers_mut().insert("mcp-session-id", v);
        }
        response
    }

    /// The messages for one request as SSE events, ending after its answer.
    fn events(
        rx: mpsc::UnboundedReceiver<Value>,
        id: Value,
    ) -> impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>> {
        futures_util::stream::unfold((rx, id, false), |(mut rx, id, done)| async move {
            if done {
                return None;
            }
            let m = rx.recv().await?;
            let last = m.get("id") == Some(&id) && m.get("method").is_none();
            Some((Ok(Event::default().data(m.to_string())), (rx, id, last)))
        })
    }
}

mod rest {
    use std::sync::Arc;

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use base64::Engine;
    use serde_json::{Value, json};
    use sha2::Digest;

    use super::Verifier;

    pub async fn serve(verifier: Arc<Option<Verifier>>) {
        let port = std::env::var("PORT").unwrap_or_else(|_| "0".into());
        let Ok(listener) = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await else {
            eprintln!("cannot listen");
            std::process::exit(1);
        };
        let Ok(addr) = listener.local_addr() else {
            std::process::exit(1);
        };
        println!("listening on http://{addr}");
        let app = Router::new().fallback(any).with_state(verifier);
        let _ = axum::serve(listener, app).await;
    }

    async fn any(
        State(verifier): State<Arc<Option<Verifier>>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let mut who = Value::Null;
        if let Some(v) = verifier.as_ref() {
            let name = std::env::var("TEST_UPSTREAM_IDENTITY_HEADER")
                .unwrap_or_else(|_| "authorization".into());
            let Some(token) = header(&name) else {
                return refuse("no identity token");
            };
            let token = token.strip_prefix("Bearer ").unwrap_or(&token);
            let claims = match v.decode(token).await {
                Ok(c) => c,
                Err(e) => return refuse(&e),
            };
            let url = format!(
                "http://{}{}",
                header("host").unwrap_or_default(),
                uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
            );
            let digest = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(&body));
            if claims.htm.as_deref() != Some(method.as_str()) {
                return refuse(&format!("issued for method {:?}", claims.htm));
            }
            if claims.htu.as_deref() != Some(url.as_str()) {
                return refuse(&format!("issued for {:?}, not {url:?}", claims.htu));
            }
            if claims.body_sha256.as_deref() != Some(digest.as_str()) {
                return refuse("issued for another body");
            }
            who = json!({ "sub": claims.sub, "tool": claims.tool, "scope": claims.scope });
        }
        let path = uri.path();
        if let Some(code) = path.strip_prefix("/status/") {
            let code = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            return (
                code,
                axum::Json(json!({ "error": format!("status {}", code.as_u16()) })),
            )
                .into_response();
        }
        if path == "/text" {
            return ([("content-type", "text/plain")], "plain words").into_response();
        }
        if path == "/empty" {
            return StatusCode::NO_CONTENT.into_response();
        }
        if path == "/big" {
            let bytes: usize = uri
                .query()
                .and_then(|q| q.strip_prefix("bytes="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1 << 20)
                .min(64 << 20);
            let items: Vec<Value> = (0..bytes / 16).map(|i| json!(format!("{i:012}"))).collect();
            return axum::Json(json!({ "items": items })).into_response();
        }
        // Every header but the two that hold secrets, whose presence is enough.
        let mut seen = serde_json::Map::new();
        for (k, v) in &headers {
            let shown = if k == "authorization" || k == "x-api-key" {
                json!(true)
            } else {
                json!(v.to_str().unwrap_or("(not text)"))
            };
            seen.insert(k.as_str().to_owned(), shown);
        }
        let content_type = header("content-type");
        let parsed = match content_type.as_deref() {
            Some(t) if t.contains("json") => {
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)
            }
            _ => json!(String::from_utf8_lossy(&body)),
        };
        axum::Json(json!({
            "method": method.as_str(),
            "path": path,
            "query": uri.query(),
            "headers": seen,
            "idempotency_key": header("idempotency-key"),
            "content_type": content_type,
            "body": parsed,
            "identity": who,
        }))
        .into_response()
    }

    fn refuse(why: &str) -> Response {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "error": format!("identity token: {why}") })),
        )
            .into_response()
    }
}
