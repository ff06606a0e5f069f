//! `/mcp` protocol behaviour over real HTTP: every revision's handshake, the 2026-07-28
//! stateless era, SSE progress, argument validation, roles, read-only organizations,
//! quotas, idempotent retries, anonymous access and metering.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gatehouse::clock::Clock;
use gatehouse::domain::Role;
use gatehouse::mcp::tools::{Annotations, Registry, ToolResult, ToolSpec, tool_fn};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, cli, spawn_app_serving};
use crate::oauth_helpers::owner_key;

both_backends!(
    every_legacy_revision_handshakes_and_unknown_versions_negotiate,
    modern_requests_are_validated_in_order,
    modern_results_carry_result_type_caching_and_server_info,
    host_and_origin_are_guarded_and_accept_is_lenient,
);

both_backends!(db:
    changes_made_elsewhere_reach_cached_tokens_within_a_second,
    operator_scopes_are_published_and_grantable,
    tools_list_paginates_with_opaque_cursors,
    progress_switches_the_answer_to_sse,
    schema_errors_name_each_field,
    role_read_only_quota_and_idempotency,
    anonymous_access_is_off_by_default_and_scoped_when_on,
    calls_are_metered_in_batches,
    last_use_is_recorded_to_the_minute,
);

const MODERN: &str = "2026-07-28";

fn modern_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": { "name": "test", "version": "1" },
    })
}

/// Sends `body` with the given extra headers; returns status, headers and the JSON body
/// (`Null` when empty).
async fn post(
    app: &TestApp,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Value,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = app
        .client
        .post(app.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, headers, value)
}

/// A 2026-07-28 request with correct headers.
async fn modern(
    app: &TestApp,
    token: &str,
    id: i64,
    method: &str,
    mut params: Value,
) -> (StatusCode, Value) {
    params["_meta"] = modern_meta();
    let name = params
        .get("name")
        .or_else(|| params.get("uri"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut headers = vec![("mcp-protocol-version", MODERN), ("mcp-method", method)];
    if let Some(n) = &name {
        headers.push(("mcp-name", n.as_str()));
    }
    let (status, _, body) = post(
        app,
        Some(token),
        &headers,
        json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }),
    )
    .await;
    (status, body)
}

async fn pat_for(app: &TestApp, user: &str, scopes: &str) -> String {
    cli(
        &app.db,
        &[
            "--json", "pat", "create", "--org", "default", "--user", user, "--name", "t",
            "--scopes", scopes,
        ],
        None,
    )
    .await
    .ok()
    .json()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn owner_pat(app: &TestApp, scopes: &str) -> String {
    owner_key(app).await;
    pat_for(app, "owner@example.com", scopes).await
}

async fn every_legacy_revision_handshakes_and_unknown_versions_negotiate(app: TestApp) {
    let t = owner_pat(&app, "account:read").await;
    for (asked, answered) in [
        ("2024-11-05", "2024-11-05"),
        ("2025-03-26", "2025-03-26"),
        ("2025-06-18", "2025-06-18"),
        ("2025-11-25", "2025-11-25"),
        ("2099-01-01", "2025-11-25"),
        ("2026-07-28", "2025-11-25"),
    ] {
        let (status, headers, body) = post(&app, Some(&t), &[], json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": { "protocolVersion": asked, "capabilities": {}, "clientInfo": { "name": "c", "version": "1" } } })).await;
        assert_eq!(status, StatusCode::OK, "{asked}");
        assert!(headers.get("mcp-session-id").is_none());
        assert_eq!(body["result"]["protocolVersion"], answered, "{asked}");
        assert_eq!(body["result"]["serverInfo"]["name"], "gatehouse");
        assert_eq!(body["result"]["capabilities"]["tools"], json!({}));
        // Each revision then works with its header.
        if answered != "2025-11-25" || asked == "2025-11-25" {
            let (status, _, body) = post(
                &app,
                Some(&t),
                &[("mcp-protocol-version", answered)],
                json!({ "jsonrpc": "2.0", "id": 2, "method": "ping" }),
            )
            .await;
            assert_eq!(
                (status, body["result"].clone()),
                (StatusCode::OK, json!({}))
            );
        }
    }
    // An unknown header version is refused with the versions we speak.
    let (status, _, body) = post(
        &app,
        Some(&t),
        &[("mcp-protocol-version", "1999-01-01")],
        json!({ "jsonrpc": "2.0", "id": 3, "method": "tools/list" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["id"], 3);
    // No header means 2025-03-26; legacy ping answers exactly {}.
    let (_, _, body) = post(&app, Some(&t), &[], json!({ "jsonrpc": "2.0", "id": 4, "method": "logging/setLevel", "params": { "level": "info" } })).await;
    assert_eq!(body["result"], json!({}));
    let (_, _, body) = post(&app, Some(&t), &[], json!({ "jsonrpc": "2.0", "id": 5, "method": "logging/setLevel", "params": { "level": "loud" } })).await;
    assert_eq!(body["error"]["code"], -32602);
    // Legacy requests may carry Mcp-* headers (claude.ai does); they are not checked.
    let (status, _, _) = post(
        &app,
        Some(&t),
        &[
            ("mcp-protocol-version", "2025-11-25"),
            ("mcp-method", "something/else"),
        ],
        json!({ "jsonrpc": "2.0", "id": 6, "method": "tools/list" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

async fn modern_requests_are_validated_in_order(app: TestApp) {
    let t = owner_pat(&app, "account:read").await;
    let discover = |meta: Value| json!({ "jsonrpc": "2.0", "id": 101, "method": "server/discover", "params": { "_meta": meta } });
    let std = [
        ("mcp-protocol-version", MODERN),
        ("mcp-method", "server/discover"),
    ];
    // Missing _meta fields: 400 -32602 (clientInfo is optional).
    for meta in [
        json!({}),
        json!({ "io.modelcontextprotocol/clientCapabilities": {} }),
        json!({ "io.modelcontextprotocol/protocolVersion": MODERN }),
    ] {
        let (status, _, body) = post(&app, Some(&t), &std, discover(meta.clone())).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (StatusCode::BAD_REQUEST, json!(-32602)),
            "{meta}"
        );
        assert_eq!(body["id"], 101);
    }
    let ok_meta = json!({ "io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {} });
    let (status, _, body) = post(&app, Some(&t), &std, discover(ok_meta)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Header disagreeing with _meta wins over the unsupported version: -32020.
    let v999 = json!({ "io.modelcontextprotocol/protocolVersion": "v999.0.0", "io.modelcontextprotocol/clientCapabilities": {} });
    let (status, _, body) = post(&app, Some(&t), &std, discover(v999.clone())).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(-32020))
    );
    // Both saying v999: -32022 with what we support and what was asked.
    let (status, _, body) = post(
        &app,
        Some(&t),
        &[
            ("mcp-protocol-version", "v999.0.0"),
            ("mcp-method", "server/discover"),
        ],
        discover(v999),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(-32022))
    );
    assert_eq!(body["error"]["data"]["requested"], "v999.0.0");
    assert_eq!(body["error"]["data"]["supported"][0], MODERN);
    // Mcp-Method and Mcp-Name must match the body.
    let (status, _, body) = post(
        &app,
        Some(&t),
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/list"),
        ],
        discover(modern_meta()),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(-32020))
    );
    let call = json!({ "jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": { "name": "whoami", "arguments": {}, "_meta": modern_meta() } });
    let (status, _, body) = post(
        &app,
        Some(&t),
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", "someone_else"),
        ],
        call.clone(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(-32020))
    );
    let (status, _, body) = post(
        &app,
        Some(&t),
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?d2hvYW1p?="),
        ],
        call,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "base64 Mcp-Name is decoded: {body}");
    // Removed and unknown methods: 404 -32601, id echoed.
    for method in [
        "initialize",
        "ping",
        "logging/setLevel",
        "resources/subscribe",
        "subscriptions/listen",
        "unknown/method",
    ] {
        let (status, body) = modern(&app, &t, 500, method, json!({})).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (StatusCode::NOT_FOUND, json!(-32601)),
            "{method}"
        );
        assert_eq!(body["id"], 500);
    }
    // Notifications are accepted with no body.
    let (status, _, body) = post(
        &app,
        Some(&t),
        &[("mcp-protocol-version", MODERN), ("mcp-method", "notifications/initialized")],
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized", "params": { "_meta": modern_meta() } }),
    )
    .await;
    assert_eq!((status, body), (StatusCode::ACCEPTED, Value::Null));
}

async fn modern_results_carry_result_type_caching_and_server_info(app: TestApp) {
    let t = owner_pat(&app, "account:read").await;
    let (status, body) = modern(&app, &t, 1, "server/discover", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let r = &body["result"];
    assert_eq!(r["resultType"], "complete");
    assert_eq!(
        r["supportedVersions"],
        json!([
            "2026-07-28",
            "2025-11-25",
            "2025-06-18",
            "2025-03-26",
            "2024-11-05"
        ])
    );
    assert_eq!(
        r["capabilities"],
        json!({ "tools": {} }),
        "no prompts/resources in the built-in set"
    );
    assert_eq!(
        r["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "gatehouse"
    );
    assert!(r["ttlMs"].is_u64() && r["cacheScope"] == "public");
    let (_, body) = modern(&app, &t, 2, "tools/list", json!({})).await;
    let r = &body["result"];
    assert_eq!(
        (r["resultType"].clone(), r["cacheScope"].clone()),
        (json!("complete"), json!("public"))
    );
    assert!(r["ttlMs"].is_u64());
    assert!(
        r["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "whoami")
    );
    // Not declared, so not served: prompts/list is -32601 (404), consistent with discover.
    let (status, body) = modern(&app, &t, 3, "prompts/list", json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!(-32601))
    );
    let (status, body) = modern(
        &app,
        &t,
        4,
        "tools/call",
        json!({ "name": "whoami", "arguments": {} }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["resultType"], "complete");
    assert_eq!(body["result"]["isError"], false);
    assert_eq!(
        body["result"]["structuredContent"]["user"]["email"],
        "owner@example.com"
    );
}

async fn host_and_origin_are_guarded_and_accept_is_lenient(app: TestApp) {
    let t = owner_pat(&app, "account:read").await;
    let ping = json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" });
    for (header, value, expected) in [
        ("origin", "https://evil.example", StatusCode::FORBIDDEN),
        ("origin", "https://claude.ai", StatusCode::OK),
        ("origin", "http://localhost:5173", StatusCode::OK),
        ("host", "evil.example.com", StatusCode::FORBIDDEN),
        ("host", "localhost:1234", StatusCode::OK),
    ] {
        let (status, _, _) = post(&app, Some(&t), &[(header, value)], ping.clone()).await;
        assert_eq!(status, expected, "{header}: {value}");
    }
    // The guard answers before authentication: an attacker's page learns nothing else.
    let (status, _, _) = post(
        &app,
        None,
        &[("origin", "https://evil.example")],
        ping.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for accept in ["*/*", "application/json", "text/event-stream"] {
        let res = app
            .client
            .post(app.url("/mcp"))
            .bearer_auth(&t)
            .header("accept", accept)
            .json(&ping)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{accept}");
        assert_eq!(res.headers()["content-type"], "application/json");
    }
}

fn counting_registry(runs: Arc<AtomicUsize>) -> Registry {
    let make = ToolSpec::new("make_thing", "Creates a thing; each call makes one.")
        .unwrap()
        .annotations(Annotations::ADDITIVE)
        .input_schema(json!({
            "type": "object",
            "properties": { "name": { "type": "string", "maxLength": 20 }, "count": { "type": "integer", "minimum": 1 } },
            "required": ["name"],
            "additionalProperties": false
        }));
    let runs2 = runs.clone();
    let slow = ToolSpec::new("slow_steps", "Reports progress three times.").unwrap();
    let admin = ToolSpec::new("admin_only", "Needs the admin role.")
        .unwrap()
        .role(Role::Admin);
    let echo = ToolSpec::new("echo", "Echoes its text.")
        .unwrap()
        .input_schema(json!({ "type": "object", "properties": { "text": { "type": "string" } }, "additionalProperties": false }));
    Registry::builtin()
        .with_tool(tool_fn(make, move |_, args| {
            let n = runs2.fetch_add(1, Ordering::SeqCst) + 1;
            async move { ToolResult::json(json!({ "made": args["name"], "run": n })) }
        }))
        .unwrap()
        .with_tool(tool_fn(slow, |ctx, _| async move {
            for step in [0.0, 50.0, 100.0] {
                ctx.progress(step, Some(100.0), Some("working"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ToolResult::text("done")
        }))
        .unwrap()
        .with_tool(tool_fn(admin, |_, _| async {
            ToolResult::text("admin things")
        }))
        .unwrap()
        .with_tool(tool_fn(echo, |_, args| async move {
            ToolResult::text(
                args.get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            )
        }))
        .unwrap()
}

async fn spawn(
    db: crate::helpers::TestDb,
    adjust: impl FnOnce(&mut gatehouse::config::Config),
) -> (TestApp, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let backend = db.backend;
    drop(db);
    let app = spawn_app_serving(backend, adjust, Some(counting_registry(runs.clone())))
        .await
        .unwrap();
    (app, runs)
}

fn call(id: i64, name: &str, args: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": name, "arguments": args } })
}

async fn changes_made_elsewhere_reach_cached_tokens_within_a_second(db: crate::helpers::TestDb) {
    let (app, _) = spawn(db, |_| {}).await;
    let owner = owner_pat(&app, "account:read").await;
    let other = pat_for(&app, "owner@example.com", "account:read").await;
    let ok = |b: &Value| b["result"]["content"][0]["text"] == "admin things";
    for t in [&owner, &other] {
        let (_, _, body) = post(&app, Some(t), &[], call(1, "admin_only", json!({}))).await;
        assert!(ok(&body), "{body}");
    }
    // A role change made directly in the database: the cached owner is re-read.
    app.sql("UPDATE memberships SET role = 'member'").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, _, body) = post(&app, Some(&owner), &[], call(2, "admin_only", json!({}))).await;
    assert_eq!(
        body["result"]["structuredContent"]["error"]["code"], "ROLE_REQUIRED",
        "{body}"
    );
    // A revocation made directly in the database: refused, while the other token is not.
    let digest = gatehouse::crypto::HashedToken::of(&owner)
        .as_str()
        .to_owned();
    app.sql(&format!(
        "UPDATE personal_access_tokens SET revoked_at = 1 WHERE token_hash = '{digest}'"
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, _, _) = post(&app, Some(&owner), &[], call(3, "echo", json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = post(&app, Some(&other), &[], call(4, "echo", json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    // Suspending the organization: 403 for every cached token.
    app.sql("UPDATE organizations SET status = 'suspended'")
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, _, _) = post(&app, Some(&other), &[], call(5, "echo", json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn operator_scopes_are_published_and_grantable(db: crate::helpers::TestDb) {
    let (app, _) = spawn(db, |c| {
        c.oauth.scopes =
            gatehouse::domain::scope::ScopeCatalog::with_extra("inventory:read=See the inventory")
                .unwrap();
    })
    .await;
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-authorization-server",
    ] {
        let doc: Value = app
            .client
            .get(app.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let scopes = doc["scopes_supported"].as_array().unwrap();
        assert!(scopes.contains(&json!("inventory:read")), "{path}: {doc}");
    }
    // A PAT can carry it (the CLI reads the same setting from the environment).
    owner_key(&app).await;
    let out = crate::helpers::cli_env(
        &app.db,
        &[
            "--json",
            "pat",
            "create",
            "--org",
            "default",
            "--user",
            "owner@example.com",
            "--name",
            "i",
            "--scopes",
            "inventory:read",
        ],
        None,
        &[(
            "GATEHOUSE__OAUTH__EXTRA_SCOPES",
            "inventory:read=See the inventory",
        )],
    )
    .await
    .ok();
    assert_eq!(out.json()["scopes"], "inventory:read");
    let refused = cli(
        &app.db,
        &[
            "pat",
            "create",
            "--org",
            "default",
            "--user",
            "owner@example.com",
            "--name",
            "i",
            "--scopes",
            "inventory:read",
        ],
        None,
    )
    .await
    .failed();
    assert!(
        refused.stderr.contains("inventory:read"),
        "{}",
        refused.stderr
    );
}

async fn tools_list_paginates_with_opaque_cursors(db: crate::helpers::TestDb) {
    let (app, _) = spawn(db, |c| c.mcp.page_size = 2).await;
    let t = owner_pat(&app, "account:read").await;
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        assert!(page < 20, "pagination does not end");
        let params = match &cursor {
            Some(c) => json!({ "cursor": c }),
            None => json!({}),
        };
        let (_, _, body) = post(
            &app,
            Some(&t),
            &[],
            json!({ "jsonrpc": "2.0", "id": page, "method": "tools/list", "params": params }),
        )
        .await;
        let tools = body["result"]["tools"].as_array().unwrap();
        assert!(tools.len() <= 2);
        names.extend(tools.iter().map(|t| t["name"].as_str().unwrap().to_owned()));
        match body["result"]["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = counting_registry(Arc::new(AtomicUsize::new(0)))
        .tool_names()
        .map(str::to_owned)
        .collect();
    assert_eq!(names, expected);
    assert!(names.len() > 4);
    for bad in [json!("garbage"), json!(12)] {
        let (_, _, body) = post(&app, Some(&t), &[], json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": { "cursor": bad } })).await;
        assert_eq!(body["error"]["code"], -32602, "{bad}");
    }
}

async fn progress_switches_the_answer_to_sse(db: crate::helpers::TestDb) {
    let (app, _) = spawn(db, |_| {}).await;
    let t = owner_pat(&app, "account:read").await;
    let mut body = call(9, "slow_steps", json!({}));
    body["params"]["_meta"] = json!({ "progressToken": "p-1" });
    let res = app
        .client
        .post(app.url("/mcp"))
        .bearer_auth(&t)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let text = res.text().await.unwrap();
    let messages: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(messages.len(), 4, "{text}");
    for (m, p) in messages.iter().zip([0.0, 50.0, 100.0]) {
        assert_eq!(m["method"], "notifications/progress");
        assert_eq!(m["params"]["progressToken"], "p-1");
        assert_eq!(m["params"]["progress"], p);
    }
    assert_eq!(messages[3]["id"], 9);
    assert_eq!(messages[3]["result"]["content"][0]["text"], "done");
    // Without a progress token (or without SSE in Accept) the same tool answers JSON.
    let (status, headers, body) =
        post(&app, Some(&t), &[], call(10, "slow_steps", json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["result"]["content"][0]["text"], "done");
}

async fn schema_errors_name_each_field(db: crate::helpers::TestDb) {
    let (app, runs) = spawn(db, |_| {}).await;
    let t = owner_pat(&app, "account:read").await;
    let bad = json!({ "name": "a-very-long-name-indeed-too-long", "count": 0, "colour": "red" });
    // 2025-11-25 and later: an error result the model can read.
    let (_, _, body) = post(
        &app,
        Some(&t),
        &[("mcp-protocol-version", "2025-11-25")],
        call(1, "make_thing", bad.clone()),
    )
    .await;
    assert_eq!(body["result"]["isError"], true);
    let text = body["result"]["content"][0]["text"].as_str().unwrap();
    for field in ["arguments.name", "arguments.count", "colour"] {
        assert!(text.contains(field), "{field} not named in {text}");
    }
    assert_eq!(
        body["result"]["structuredContent"]["error"]["code"],
        "INVALID_ARGUMENTS"
    );
    // 2025-06-18: a JSON-RPC invalid-params error listing each.
    let (_, _, body) = post(
        &app,
        Some(&t),
        &[("mcp-protocol-version", "2025-06-18")],
        call(2, "make_thing", bad),
    )
    .await;
    assert_eq!(body["error"]["code"], -32602);
    assert_eq!(
        body["error"]["data"]["errors"].as_array().unwrap().len(),
        3,
        "{body}"
    );
    let (_, _, body) = post(
        &app,
        Some(&t),
        &[],
        call(3, "make_thing", json!("not an object")),
    )
    .await;
    assert_eq!(body["error"]["code"], -32602);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing ran");
}

async fn role_read_only_quota_and_idempotency(db: crate::helpers::TestDb) {
    let (app, runs) = spawn(db, |_| {}).await;
    let owner = owner_pat(&app, "account:read account:write").await;
    cli(&app.db, &["user", "create", "member@example.com"], None)
        .await
        .ok();
    cli(
        &app.db,
        &[
            "member",
            "add",
            "--org",
            "default",
            "--user",
            "member@example.com",
        ],
        None,
    )
    .await
    .ok();
    let member = pat_for(&app, "member@example.com", "account:read").await;
    let text = |b: &Value| {
        b["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // Role: a member gets a tool error naming the role; the owner gets the tool.
    let (_, _, body) = post(&app, Some(&member), &[], call(1, "admin_only", json!({}))).await;
    assert_eq!(body["result"]["isError"], true);
    assert_eq!(
        body["result"]["structuredContent"]["error"]["code"],
        "ROLE_REQUIRED"
    );
    assert!(text(&body).contains("admin"), "{body}");
    let (_, _, body) = post(&app, Some(&owner), &[], call(2, "admin_only", json!({}))).await;
    assert_eq!(text(&body), "admin things");

    // Idempotency: the same key returns the first result without running again.
    let args = json!({ "name": "x", "idempotency_key": "k-1" });
    let (_, _, first) = post(&app, Some(&owner), &[], call(3, "make_thing", args.clone())).await;
    let (_, _, again) = post(&app, Some(&owner), &[], call(4, "make_thing", args)).await;
    assert_eq!(
        first["result"]["structuredContent"],
        json!({ "made": "x", "run": 1 })
    );
    assert_eq!(again["result"], first["result"]);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let (_, _, other) = post(
        &app,
        Some(&owner),
        &[],
        call(
            5,
            "make_thing",
            json!({ "name": "y", "idempotency_key": "k-1" }),
        ),
    )
    .await;
    assert_eq!(
        other["result"]["structuredContent"]["error"]["code"],
        "IDEMPOTENCY_KEY_REUSED"
    );
    // Keys are per caller: the member's k-1 is a different key.
    let (_, _, theirs) = post(
        &app,
        Some(&member),
        &[],
        call(
            6,
            "make_thing",
            json!({ "name": "x", "idempotency_key": "k-1" }),
        ),
    )
    .await;
    assert_eq!(theirs["result"]["structuredContent"]["run"], 2);
    // Without a key every call runs.
    post(
        &app,
        Some(&owner),
        &[],
        call(7, "make_thing", json!({ "name": "x" })),
    )
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    // Read-only organization: writes refused with a reason, reads work (within a second).
    cli(
        &app.db,
        &["org", "set-status", "default", "read_only"],
        None,
    )
    .await
    .ok();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, _, body) = post(
        &app,
        Some(&owner),
        &[],
        call(8, "make_thing", json!({ "name": "z" })),
    )
    .await;
    assert_eq!(
        body["result"]["structuredContent"]["error"]["code"], "ORG_READ_ONLY",
        "{body}"
    );
    let (_, _, body) = post(&app, Some(&owner), &[], call(9, "whoami", json!({}))).await;
    assert_eq!(body["result"]["isError"], false);
    assert_eq!(
        body["result"]["structuredContent"]["organization"]["status"],
        "read_only"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    cli(&app.db, &["org", "set-status", "default", "active"], None)
        .await
        .ok();

    // Quota: 9 calls made so far today (refusals and replays count); 11 allows two more.
    cli(&app.db, &["org", "quota", "default", "11"], None)
        .await
        .ok();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut codes = Vec::new();
    for id in 10..13 {
        let (_, _, body) = post(
            &app,
            Some(&owner),
            &[],
            call(id, "make_thing", json!({ "name": "q" })),
        )
        .await;
        codes.push(body["result"]["structuredContent"]["error"]["code"].clone());
    }
    assert_eq!(
        codes,
        vec![Value::Null, Value::Null, json!("QUOTA_EXCEEDED")]
    );
    let (_, _, body) = post(&app, Some(&owner), &[], call(13, "whoami", json!({}))).await;
    assert_eq!(
        body["result"]["isError"], false,
        "read tools keep working over quota"
    );
    cli(&app.db, &["org", "quota", "default", "none"], None)
        .await
        .ok();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, _, body) = post(
        &app,
        Some(&owner),
        &[],
        call(14, "make_thing", json!({ "name": "q" })),
    )
    .await;
    assert_eq!(body["result"]["isError"], false);
}

async fn anonymous_access_is_off_by_default_and_scoped_when_on(db: crate::helpers::TestDb) {
    let backend = db.backend;
    let (app, _) = spawn(db, |_| {}).await;
    let (status, headers, _) =
        post(&app, None, &[], call(1, "echo", json!({ "text": "hi" }))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key("www-authenticate"));
    drop(app);
    let runs = Arc::new(AtomicUsize::new(0));
    let app = spawn_app_serving(
        backend,
        |c| {
            c.mcp.anonymous_scopes =
                Some(gatehouse::domain::ScopeSet::parse("public:read").unwrap())
        },
        Some(counting_registry(runs)),
    )
    .await
    .unwrap();
    let (status, _, body) = post(&app, None, &[], call(2, "echo", json!({ "text": "hi" }))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["content"][0]["text"], "hi");
    // Scoped tools still need a token: the step-up challenge says which scope.
    let (status, headers, _) = post(&app, None, &[], call(3, "whoami", json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"account:read\"")
    );
    // A bad token is still a 401, not silently anonymous.
    let (status, _, _) = post(&app, Some("nonsense"), &[], call(4, "echo", json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn calls_are_metered_in_batches(db: crate::helpers::TestDb) {
    let (app, _) = spawn(db, |_| {}).await;
    let t = owner_pat(&app, "account:read").await;
    for id in 0..3 {
        post(
            &app,
            Some(&t),
            &[],
            call(id, "echo", json!({ "text": "x" })),
        )
        .await;
    }
    post(&app, Some(&t), &[], call(9, "admin_only", json!({}))).await;
    // A schema error is an error result (2025-11-25), metered as a failed call.
    let (_, _, body) = post(
        &app,
        Some(&t),
        &[("mcp-protocol-version", "2025-11-25")],
        call(10, "make_thing", json!({ "name": 5 })),
    )
    .await;
    assert_eq!(body["result"]["isError"], true, "{body}");
    let org = app
        .store
        .find_org_by_slug(&gatehouse::domain::OrgSlug::parse("default").unwrap())
        .await
        .unwrap()
        .unwrap();
    let day = app.clock.now() / 86_400;
    // Usage, last-used times and audit rows are separate statements of one flush, written
    // off the request path in that order: wait for the last of them (generously, since a
    // loaded CI machine can delay a flush by seconds), then check all three.
    let filter = gatehouse::storage::AuditFilter {
        org_id: Some(org.id.clone()),
        action_prefix: Some("mcp.".into()),
        limit: 10,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut audit = app.store.list_audit(&filter).await.unwrap();
    while audit.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        audit = app.store.list_audit(&filter).await.unwrap();
    }
    let rows = app.store.usage_stats(&org.id, None, day).await.unwrap();
    let summary: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| (r.tool.clone(), r.calls, r.errors))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("admin_only".into(), 1, 0),
            ("echo".into(), 3, 0),
            ("make_thing".into(), 1, 1)
        ]
    );
    let pats = app.store.list_pats(None).await.unwrap();
    assert!(
        pats[0].last_used_at.is_some(),
        "last use written in the batch"
    );
    // The write tool's call is audited (read tools are not); no arguments are recorded.
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].target.as_deref(), Some("tool:make_thing"));
    let detail = audit[0].detail.clone().unwrap_or_default();
    assert!(detail.contains("\"outcome\":\"error\""), "{detail}");
}

/// The last use of a credential in constant use is written once a minute, not at every
/// flush: a later use within the minute changes nothing, one after it moves the time.
async fn last_use_is_recorded_to_the_minute(db: crate::helpers::TestDb) {
    let (app, _) = spawn(db, |_| {}).await;
    let t = owner_pat(&app, "account:read").await;
    let last_used = || async {
        let pats = app.store.list_pats(None).await.unwrap();
        pats[0].last_used_at
    };
    let wait_for = |want: i64| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = last_used().await;
            if got == Some(want) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{got:?}, not {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let first = app.clock.now();
    post(&app, Some(&t), &[], call(1, "echo", json!({ "text": "x" }))).await;
    wait_for(first).await;
    app.clock.advance(30);
    post(&app, Some(&t), &[], call(2, "echo", json!({ "text": "x" }))).await;
    // The usage of that second call is written by the same kind of flush: once it is
    // in, the flush that would have carried the last use has run.
    let org = app
        .store
        .find_org_by_slug(&gatehouse::domain::OrgSlug::parse("default").unwrap())
        .await
        .unwrap()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let rows = app
            .store
            .usage_stats(&org.id, None, first / 86_400)
            .await
            .unwrap();
        if rows.iter().map(|r| r.calls).sum::<i64>() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Last-used times follow usage within the same flush; give it ten more intervals.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(last_used().await, Some(first));
    app.clock.advance(31);
    post(&app, Some(&t), &[], call(3, "echo", json!({ "text": "x" }))).await;
    wait_for(first + 61).await;
}
