//! The legacy HTTP+SSE transport (2024-11-05) on `mcp.sse_paths`: driven by the official
//! TypeScript SDK's `SSEClientTransport` (with a PAT and with an OAuth token, and with
//! its POSTs sent to another instance than the one holding its stream), and by hand for
//! the edges: the endpoint event, refused POSTs, bounds, revocation, expiry, keep-alive.

use std::io::Write;
use std::sync::Once;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Backend, TestApp, TestDb, cli, cli_pat, spawn_app_with};
use crate::oauth_helpers::full_flow;

both_backends!(
    the_sdk_sse_client_works_with_a_pat_and_with_oauth,
    the_endpoint_event_and_refused_posts,
    revocation_and_expiry_close_an_open_stream,
    keep_alive_comments_flow_on_a_quiet_stream,
);

both_backends!(db:
    sessions_are_bounded_per_token_and_per_instance,
    configured_paths_serve_the_transport,
    sigterm_ends_open_streams_instead_of_waiting_on_them,
    idle_streams_are_closed,
);

static SKIP_NOTICE: Once = Once::new();

/// Where `scripts/ensure-mcp-sdk` installed Node and the SDK; `None` (the case is
/// skipped, with one line saying so) unless `GATEHOUSE_REQUIRE_NODE` is set.
pub(crate) fn sdk_dir() -> Option<String> {
    match std::env::var("MCP_SDK_DIR") {
        Ok(d) => Some(d),
        Err(_) if std::env::var_os("GATEHOUSE_REQUIRE_NODE").is_some() => {
            panic!(
                "GATEHOUSE_REQUIRE_NODE is set but MCP_SDK_DIR is not (run scripts/ensure-mcp-sdk)"
            )
        }
        Err(_) => {
            SKIP_NOTICE.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "note: TypeScript SDK cases skipped (MCP_SDK_DIR is not set; scripts/test sets it)"
                );
            });
            None
        }
    }
}

/// Runs `tests/sse-client/client.mjs` and returns the JSON line it prints.
async fn sdk_client(dir: &str, mode: &str, url: &str, token: &str, post_to: Option<&str>) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sse-client/client.mjs");
    let mut cmd = tokio::process::Command::new(format!("{dir}/node_modules/node/bin/node"));
    cmd.arg(script).args([mode, url, token]);
    if let Some(p) = post_to {
        cmd.arg(p);
    }
    cmd.env("MCP_SDK_DIR", dir).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the SDK client finishes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{mode} client failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn assert_connected(out: &Value) {
    assert!(
        out["tools"].as_array().unwrap().contains(&json!("whoami")),
        "{out}"
    );
    assert_eq!(out["whoami"]["isError"], false, "{out}");
    assert!(
        out["whoami"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("owner@example.com"),
        "{out}"
    );
}

async fn pat(app: &TestApp, scopes: &str) -> Value {
    cli_pat(&app.db, "default", "owner@example.com", scopes).await
}

async fn the_sdk_sse_client_works_with_a_pat_and_with_oauth(app: TestApp) {
    let Some(dir) = sdk_dir() else {
        return;
    };
    let flow = full_flow(&app).await;
    let oauth = flow.tokens["access_token"].as_str().unwrap();
    let pat = pat(&app, "account:read").await;
    let pat = pat["token"].as_str().unwrap();
    for token in [pat, oauth] {
        let out = sdk_client(&dir, "sse", &app.url("/sse"), token, None).await;
        assert_connected(&out);
    }
    // A client trying Streamable HTTP first on a pasted /sse URL gets /mcp itself.
    let out = sdk_client(&dir, "streamable", &app.url("/sse"), pat, None).await;
    assert_connected(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_sse_client_posting_to_another_instance_is_answered_on_its_stream_postgres() {
    let Some(dir) = sdk_dir() else {
        return;
    };
    let Some(app) = spawn_app_with(Backend::Postgres, |_| {}).await else {
        return;
    };
    let other = app.second_instance().await;
    crate::oauth_helpers::owner_key(&app).await;
    let pat = pat(&app, "account:read").await;
    let pat = pat["token"].as_str().unwrap();
    // The stream is held here; every POST goes to the other instance.
    let out = sdk_client(&dir, "sse", &app.url("/sse"), pat, Some(&other)).await;
    assert_connected(&out);
}

/// A legacy stream read by hand.
#[derive(Debug)]
struct Stream {
    res: reqwest::Response,
    buf: String,
}

enum Item {
    Event(String, String),
    Comment(String),
}

async fn open(app: &TestApp, path: &str, token: Option<&str>) -> Result<Stream, reqwest::Response> {
    let mut req = app
        .client
        .get(app.url(path))
        .header("accept", "text/event-stream");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    if res.status() != StatusCode::OK {
        return Err(res);
    }
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    Ok(Stream {
        res,
        buf: String::new(),
    })
}

impl Stream {
    /// The next event or comment; `None` once the server ends the stream.
    async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let block = block.trim_end();
                if let Some(c) = block.strip_prefix(':') {
                    return Some(Item::Comment(c.trim().to_owned()));
                }
                let mut event = "message".to_owned();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = e.to_owned();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                return Some(Item::Event(event, data));
            }
            let chunk = self.res.chunk().await.ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event, skipping comments.
    async fn event(&mut self) -> Option<(String, String)> {
        loop {
            match self.next().await? {
                Item::Event(e, d) => return Some((e, d)),
                Item::Comment(_) => {}
            }
        }
    }

    /// The message endpoint the first event names.
    async fn endpoint(&mut self) -> String {
        let (event, data) = self.event().await.expect("an endpoint event");
        assert_eq!(event, "endpoint");
        data
    }

    /// Waits (at most `limit`) for the server to end the stream; how long it took.
    async fn closed_within(&mut self, limit: Duration) -> Duration {
        let started = Instant::now();
        tokio::time::timeout(limit, async { while self.next().await.is_some() {} })
            .await
            .expect("the server ends the stream");
        started.elapsed()
    }
}

async fn post_to(app: &TestApp, url: &str, token: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = app.client.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

impl Stream {
    /// POSTs `body` to the session's `endpoint` (202) and returns the `message` event
    /// the stream then carries.
    async fn exchange(&mut self, app: &TestApp, endpoint: &str, token: &str, body: Value) -> Value {
        let res = post_to(app, endpoint, Some(token), body).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let (event, data) = self.event().await.expect("an answer on the stream");
        assert_eq!(event, "message");
        serde_json::from_str(&data).unwrap()
    }
}

async fn the_endpoint_event_and_refused_posts(app: TestApp) {
    let flow = full_flow(&app).await;
    let oauth = flow.tokens["access_token"].as_str().unwrap().to_owned();
    let pat = pat(&app, "account:read").await;
    let pat = pat["token"].as_str().unwrap();

    // No token: the same challenge as /mcp.
    let res = open(&app, "/sse", None).await.expect_err("refused");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let challenge = res.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
            app.addr
        )),
        "{challenge}"
    );

    let mut stream = open(&app, "/sse", Some(pat)).await.expect("a stream");
    let endpoint = stream.endpoint().await;
    assert!(
        endpoint.starts_with(&format!("{}/sse/messages?sessionId=", app.addr)),
        "{endpoint}"
    );

    // A request is accepted on the POST and answered on the stream.
    let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": { "name": "old", "version": "1" } } });
    let answer = stream.exchange(&app, &endpoint, pat, init).await;
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["result"]["protocolVersion"], "2024-11-05");
    let res = post_to(
        &app,
        &endpoint,
        Some(pat),
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let call = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": { "name": "whoami", "arguments": {} } });
    let answer = stream.exchange(&app, &endpoint, pat, call).await;
    assert_eq!(answer["id"], 2);
    assert_eq!(answer["result"]["isError"], false, "{answer}");
    // A JSON-RPC error travels the same way.
    let unknown = json!({ "jsonrpc": "2.0", "id": 3, "method": "no/such" });
    let answer = stream.exchange(&app, &endpoint, pat, unknown).await;
    assert_eq!(answer["error"]["code"], -32601, "{answer}");

    // A scope the token lacks is refused on the POST itself, with the step-up challenge.
    let write = json!({ "jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": { "name": "create_access_token", "arguments": { "name": "x" } } });
    let res = post_to(&app, &endpoint, Some(pat), write).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(
        res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );

    let ping = json!({ "jsonrpc": "2.0", "id": 5, "method": "ping" });
    // No token, no session id, a forged one, or someone else's session.
    let res = post_to(&app, &endpoint, None, ping.clone()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = post_to(&app, &app.url("/sse/messages"), Some(pat), ping.clone()).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sessionId"),
        "{body}"
    );
    let forged = format!("{}x", endpoint);
    let res = post_to(&app, &forged, Some(pat), ping.clone()).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = post_to(&app, &endpoint, Some(&oauth), ping.clone()).await;
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "a session answers only its own caller"
    );
    // Nothing of that reached the stream: the next message is the ping's own answer.
    let answer = stream.exchange(&app, &endpoint, pat, ping).await;
    assert_eq!(answer["id"], 5);

    // A closed stream's session is gone (SQLite: nothing else could hold it).
    drop(stream);
    if app.store.backend() == "sqlite" {
        let gone = wait_for(Duration::from_secs(20), || async {
            post_to(
                &app,
                &endpoint,
                Some(pat),
                json!({ "jsonrpc": "2.0", "id": 6, "method": "ping" }),
            )
            .await
            .status()
                == StatusCode::NOT_FOUND
        })
        .await;
        assert!(gone, "the session closed with its stream");
    }
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
async fn wait_for<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn revocation_and_expiry_close_an_open_stream(app: TestApp) {
    let flow = full_flow(&app).await;
    let oauth = flow.tokens["access_token"].as_str().unwrap().to_owned();
    let pat = pat(&app, "account:read").await;
    let mut stream = open(&app, "/sse", pat["token"].as_str())
        .await
        .ok()
        .unwrap();
    stream.endpoint().await;
    cli(
        &app.db,
        &["pat", "revoke", pat["id"].as_str().unwrap()],
        None,
    )
    .await
    .ok();
    // The token cache follows revocations within a second and the stream checks twice a
    // second; the bound here leaves room for a busy machine.
    let took = stream.closed_within(Duration::from_secs(10)).await;
    eprintln!("stream closed {took:?} after the revocation");
    assert!(took < Duration::from_secs(5), "{took:?}");

    let mut stream = open(&app, "/sse", Some(&oauth)).await.unwrap();
    stream.endpoint().await;
    app.clock.advance(app.config.tokens.access_ttl_secs + 1);
    stream.closed_within(Duration::from_secs(10)).await;
}

async fn keep_alive_comments_flow_on_a_quiet_stream(app: TestApp) {
    crate::oauth_helpers::owner_key(&app).await;
    let pat = pat(&app, "account:read").await;
    let mut stream = open(&app, "/sse", pat["token"].as_str())
        .await
        .ok()
        .unwrap();
    stream.endpoint().await;
    let comment = tokio::time::timeout(Duration::from_secs(25), stream.next())
        .await
        .expect("a keep-alive within 15 s (and some slack)");
    assert!(matches!(comment, Some(Item::Comment(c)) if c == "keep-alive"));
}

async fn sessions_are_bounded_per_token_and_per_instance(db: TestDb) {
    let backend = db.backend;
    drop(db);
    let Some(app) = spawn_app_with(backend, |c| {
        c.mcp.sse_sessions_per_token = 2;
        c.mcp.sse_max_sessions = 3;
    })
    .await
    else {
        return;
    };
    crate::oauth_helpers::owner_key(&app).await;
    let first = pat(&app, "account:read").await;
    let first = first["token"].as_str().unwrap();
    let second = pat(&app, "account:read").await;
    let second = second["token"].as_str().unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = open(&app, "/sse", Some(first)).await.unwrap();
        s.endpoint().await;
        held.push(s);
    }
    let res = open(&app, "/sse", Some(first))
        .await
        .expect_err("over the bound");
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mcp.sse_sessions_per_token"),
        "{body}"
    );
    // Another token has its own allowance, up to the instance's.
    let mut third = open(&app, "/sse", Some(second)).await.unwrap();
    third.endpoint().await;
    let res = open(&app, "/sse", Some(second))
        .await
        .expect_err("the instance is full");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // /mcp is not affected.
    let res = app
        .client
        .post(app.url("/mcp"))
        .bearer_auth(second)
        .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // A stream that ends frees its place.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut freed = None;
    while freed.is_none() && Instant::now() < deadline {
        match open(&app, "/sse", Some(first)).await {
            Ok(s) => freed = Some(s),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let freed = freed.is_some();
    assert!(freed, "a closed stream's place is given back");
}

async fn configured_paths_serve_the_transport(db: TestDb) {
    let backend = db.backend;
    drop(db);
    let Some(app) = spawn_app_with(backend, |c| c.mcp.sse_paths = vec!["/v1/sse".into()]).await
    else {
        return;
    };
    crate::oauth_helpers::owner_key(&app).await;
    let pat = pat(&app, "account:read").await;
    let pat = pat["token"].as_str().unwrap();
    let mut stream = open(&app, "/v1/sse", Some(pat)).await.unwrap();
    let endpoint = stream.endpoint().await;
    assert!(
        endpoint.starts_with(&format!("{}/v1/sse/messages?sessionId=", app.addr)),
        "{endpoint}"
    );
    let ping = json!({ "jsonrpc": "2.0", "id": 9, "method": "ping" });
    let answer = stream.exchange(&app, &endpoint, pat, ping).await;
    assert_eq!(answer["id"], 9);
    let res = open(&app, "/sse", Some(pat))
        .await
        .expect_err("not configured");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    let Some(off) = spawn_app_with(backend, |c| c.mcp.sse_paths = Vec::new()).await else {
        return;
    };
    let res = off.client.get(off.url("/sse")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

async fn sigterm_ends_open_streams_instead_of_waiting_on_them(db: TestDb) {
    let store = db.store().await;
    store.migrate().await.unwrap();
    crate::helpers::seed_owner(&store).await;
    let pat = cli_pat(&db, "default", "owner@example.com", "account:read").await;
    let mut served = crate::process::Serve::new(&db)
        .env("GATEHOUSE__LOG__FILTER", "info")
        .start()
        .await;
    let res = reqwest::Client::new()
        .get(format!("{}/sse", served.base))
        .bearer_auth(pat["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut stream = Stream {
        res,
        buf: String::new(),
    };
    stream.endpoint().await;
    served.signal("TERM");
    stream.closed_within(Duration::from_secs(10)).await;
    // Well inside server.shutdown_timeout_secs (25 s): nothing waited for the stream.
    let status = served.exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}: {}", served.output());
    let out = served.output();
    assert!(
        out.contains("legacy SSE stream closed") && out.contains("shutting down"),
        "{out}"
    );
    assert!(!out.contains("still in flight"), "{out}");
}

async fn idle_streams_are_closed(db: TestDb) {
    let backend = db.backend;
    drop(db);
    let Some(app) = spawn_app_with(backend, |c| {
        c.mcp.sse_idle_timeout = Duration::from_secs(3);
    })
    .await
    else {
        return;
    };
    crate::oauth_helpers::owner_key(&app).await;
    let pat = pat(&app, "account:read").await;
    let pat = pat["token"].as_str().unwrap();
    let mut stream = open(&app, "/sse", Some(pat)).await.unwrap();
    let endpoint = stream.endpoint().await;
    // Used, it stays open past the timeout...
    // (pings 0.7 s apart, 4.2 s in all against a 3 s timeout, with room for a slow machine)
    for id in 0..6 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let ping = json!({ "jsonrpc": "2.0", "id": id, "method": "ping" });
        let answer = stream.exchange(&app, &endpoint, pat, ping).await;
        assert_eq!(answer["id"], id, "still open");
    }
    // ...and closes once nothing uses it.
    let took = stream.closed_within(Duration::from_secs(20)).await;
    assert!(took >= Duration::from_secs(1), "{took:?}");
}
