//! `/mcp` over real HTTP: Claude-style OAuth tokens and header agents' PATs.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, cli};
use crate::oauth_helpers::*;

both_backends!(
    protected_resource_metadata_is_served_at_both_paths,
    missing_and_bad_tokens_get_401_with_the_challenge,
    claude_flow_ends_in_initialize_list_and_call,
    pat_agent_can_call_tools_and_scope_gaps_are_403,
    revoked_tokens_are_refused_within_a_second,
    malformed_json_rpc_gets_the_right_errors,
    a_suspended_organization_gets_403_everywhere,
);

/// POSTs one JSON-RPC message to `/mcp`, with `token` as the Bearer credential.
pub(crate) async fn rpc(app: &TestApp, token: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// A PAT named `agent` for the owner in `default`, created through the CLI.
pub(crate) async fn pat(app: &TestApp, scopes: &str) -> String {
    pat_of(app, "default", "owner@example.com", scopes).await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A PAT named `agent` for `user` in `org`, created through the CLI; its `--json` output
/// (`id`, `token`, `scopes`, …).
pub(crate) async fn pat_of(app: &TestApp, org: &str, user: &str, scopes: &str) -> Value {
    crate::helpers::cli_pat(&app.db, org, user, scopes).await
}

async fn protected_resource_metadata_is_served_at_both_paths(app: TestApp) {
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
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
        assert_eq!(
            doc,
            json!({
                "resource": format!("{}/mcp", app.addr),
                "authorization_servers": [app.addr],
                "scopes_supported": ["account:read", "account:write", "admin:read", "admin:write"],
                "bearer_methods_supported": ["header"],
                "resource_name": "Gatehouse",
            })
        );
    }
}

async fn missing_and_bad_tokens_get_401_with_the_challenge(app: TestApp) {
    let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": { "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } } });
    let res = rpc(&app, None, init.clone()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["www-authenticate"],
        format!("Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\", scope=\"account:read account:write\"", app.addr).as_str()
    );
    for (bad, why) in [
        ("nonsense", "invalid token"),
        (
            "gth_pat_000000000000000000000000000000000000",
            "malformed token",
        ),
        ("a.b.c", "invalid token"),
    ] {
        let res = rpc(&app, Some(bad), init.clone()).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(
            res.headers()["www-authenticate"],
            format!(
                "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\", scope=\"account:read account:write\", error=\"invalid_token\", error_description=\"{why}\"",
                app.addr
            )
            .as_str(),
            "{bad}"
        );
    }
}

async fn claude_flow_ends_in_initialize_list_and_call(app: TestApp) {
    let flow = full_flow(&app).await;
    let at = flow.tokens["access_token"].as_str().unwrap();
    let res = rpc(&app, Some(at), json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": { "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "claude-ai", "version": "1" } } })).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers().get("mcp-session-id").is_none(),
        "stateless: no session"
    );
    let init: Value = res.json().await.unwrap();
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
    assert_eq!(init["result"]["capabilities"]["tools"], json!({}));
    let res = app
        .client
        .post(app.url("/mcp"))
        .bearer_auth(at)
        .json(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let list: Value = rpc(
        &app,
        Some(at),
        json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(list["result"]["tools"][0]["name"], "whoami");
    let call: Value = rpc(&app, Some(at), json!({ "jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": { "name": "whoami", "arguments": {} } })).await.json().await.unwrap();
    assert_eq!(call["result"]["isError"], false);
    assert_eq!(
        call["result"]["structuredContent"]["user"]["email"],
        "owner@example.com"
    );
    assert_eq!(
        call["result"]["structuredContent"]["client_id"],
        flow.client_id.as_str()
    );
    // An unknown version is answered with the newest supported one.
    let init: Value = rpc(&app, Some(at), json!({ "jsonrpc": "2.0", "id": 4, "method": "initialize", "params": { "protocolVersion": "1999-01-01" } })).await.json().await.unwrap();
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
}

async fn pat_agent_can_call_tools_and_scope_gaps_are_403(app: TestApp) {
    owner_key(&app).await;
    let good = pat(&app, "account:read").await;
    let call = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": "whoami" } });
    let body: Value = rpc(&app, Some(&good), call.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["result"]["structuredContent"]["role"], "owner");
    assert!(body["result"]["structuredContent"]["client_id"].is_null());
    let narrow = pat(&app, "admin:read").await;
    let res = rpc(&app, Some(&narrow), call).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let h = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        h,
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"account:read\", resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\", error_description=\"this tool needs more permissions\"",
            app.addr
        )
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["id"], 1, "the refusal answers the request: {body}");
}

async fn revoked_tokens_are_refused_within_a_second(app: TestApp) {
    let flow = full_flow(&app).await;
    let at = flow.tokens["access_token"].as_str().unwrap().to_owned();
    let p = pat(&app, "account:read").await;
    let ping = json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" });
    for t in [&at, &p] {
        assert_eq!(
            rpc(&app, Some(t), ping.clone()).await.status(),
            StatusCode::OK,
            "cached now"
        );
        let res = app
            .client
            .post(app.url("/revoke"))
            .form(&[
                ("token", t.as_str()),
                ("client_id", flow.client_id.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for t in [&at, &p] {
        let res = rpc(&app, Some(t), ping.clone()).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
}

async fn malformed_json_rpc_gets_the_right_errors(app: TestApp) {
    owner_key(&app).await;
    let t = pat(&app, "account:read").await;
    let raw = |body: &'static str| {
        app.client
            .post(app.url("/mcp"))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let res = raw("{not json").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], -32700);
    // Batches: allowed in 2025-03-26 (the revision assumed without a header), not later.
    let res = raw(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":2,"method":"no/such"}]"#)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!([
            { "jsonrpc": "2.0", "id": 1, "result": {} },
            { "jsonrpc": "2.0", "id": 2, "error": { "code": -32601, "message": "method not found: no/such" } },
        ])
    );
    let res = app
        .client
        .post(app.url("/mcp"))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-06-18")
        .body(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], -32600);
    let res = raw(r#"[{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26"}}]"#)
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap()[0]["error"]["code"],
        -32600
    );
    let res = raw("[]").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = raw(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#)
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], -32600);
    let body: Value = rpc(
        &app,
        Some(&t),
        json!({ "jsonrpc": "2.0", "id": "x", "method": "no/such" }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["error"]["code"], -32601);
    assert_eq!(body["id"], "x");
    let body: Value = rpc(
        &app,
        Some(&t),
        json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": { "name": "nope" } }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["error"]["code"], -32602);
    let res = app
        .client
        .get(app.url("/mcp"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "POST");
    let res = app
        .client
        .post(app.url("/mcp"))
        .bearer_auth(&t)
        .header("origin", "https://evil.example")
        .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = app
        .client
        .post(app.url("/mcp"))
        .bearer_auth(&t)
        .header("mcp-protocol-version", "1999-01-01")
        .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

async fn a_suspended_organization_gets_403_everywhere(app: TestApp) {
    owner_key(&app).await;
    let t = pat(&app, "account:read").await;
    let ping = json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" });
    assert_eq!(
        rpc(&app, Some(&t), ping.clone()).await.status(),
        StatusCode::OK
    );
    cli(
        &app.db,
        &["org", "set-status", "default", "suspended"],
        None,
    )
    .await
    .ok();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        rpc(&app, Some(&t), ping.clone()).await.status(),
        StatusCode::FORBIDDEN
    );
    cli(&app.db, &["org", "set-status", "default", "active"], None)
        .await
        .ok();
    assert_eq!(
        rpc(&app, Some(&t), ping).await.status(),
        StatusCode::OK,
        "a fresh check after reactivation"
    );
}
