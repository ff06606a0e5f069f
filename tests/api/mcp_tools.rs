//! The built-in account tools over real HTTP: connections, access tokens, usage, members
//! and the audit log, each bound to the caller's organization and user.

use std::time::{Duration, Instant};

use gatehouse::clock::{Clock, rfc3339, rfc3339_date};
use gatehouse::domain::{Email, OrgSlug};
use gatehouse::storage::{AuditFilter, UsageRecord};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, cli};
use crate::mcp::{pat, pat_of, rpc};
use crate::oauth_helpers::*;

both_backends!(db: usage_stats_covers_the_caller_or_all_members_for_admins);

both_backends!(
    builtin_tools_are_listed_with_schemas_annotations_and_titles,
    access_tokens_are_created_listed_used_and_revoked,
    create_access_token_refuses_scopes_the_caller_lacks,
    revoking_another_users_token_is_refused_like_an_unknown_id,
    connections_are_listed_and_revoking_one_ends_its_tokens,
    members_and_audit_events_need_the_admin_role,
    a_retried_token_creation_neither_repeats_nor_stores_the_token,
);

const READ_WRITE: &str = "account:read account:write";
const ERROR_META: &str = "dev.gatehouse/error";

/// `tools/call` at revision 2025-11-25; returns the `result`. A successful result's
/// structuredContent must fit the tool's published outputSchema, and an error result
/// of these tools (which all declare one) must carry no structuredContent.
async fn call(app: &TestApp, token: &str, name: &str, arguments: Value) -> Value {
    let res = app
        .client
        .post(app.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .bearer_auth(token)
        .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": name, "arguments": arguments } }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{name}");
    let body: Value = res.json().await.unwrap();
    let result = body["result"].clone();
    assert!(result.is_object(), "{body}");
    if result["isError"] == false {
        let schema = tool_definition(app, token, name).await["outputSchema"].clone();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&result["structuredContent"])
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}\n{result}");
    } else {
        assert_eq!(result["isError"], true, "{result}");
        assert!(result.get("structuredContent").is_none(), "{result}");
    }
    result
}

async fn tools(app: &TestApp, token: &str) -> Vec<Value> {
    let body: Value = rpc(
        app,
        Some(token),
        json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" }),
    )
    .await
    .json()
    .await
    .unwrap();
    body["result"]["tools"].as_array().unwrap().clone()
}

async fn tool_definition(app: &TestApp, token: &str, name: &str) -> Value {
    tools(app, token)
        .await
        .into_iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tool {name}"))
}

/// The code and text of an error result.
#[track_caller]
fn error_of(result: &Value) -> (&str, &str) {
    assert_eq!(result["isError"], true, "{result}");
    (
        result["_meta"][ERROR_META]["code"].as_str().unwrap(),
        result["content"][0]["text"].as_str().unwrap(),
    )
}

/// The code of an error result.
#[track_caller]
fn code_of(result: &Value) -> String {
    error_of(result).0.to_owned()
}

async fn user_id(app: &TestApp, email: &str) -> String {
    app.store
        .find_user_by_email(&Email::parse(email).unwrap())
        .await
        .unwrap()
        .unwrap()
        .id
}

async fn org_id(app: &TestApp, slug: &str) -> String {
    app.store
        .find_org_by_slug(&OrgSlug::parse(slug).unwrap())
        .await
        .unwrap()
        .unwrap()
        .id
}

/// Creates `email` and adds them to `default` with `role`, through the CLI.
async fn add_member(app: &TestApp, email: &str, role: &str) {
    cli(&app.db, &["user", "create", email], None).await.ok();
    cli(
        &app.db,
        &[
            "member", "add", "--org", "default", "--user", email, "--role", role,
        ],
        None,
    )
    .await
    .ok();
}

/// Polls `/mcp` with `token` until it is refused with 401; fails if that takes longer
/// than 1.2 s (revocations are re-checked at most a second after the last check).
async fn assert_refused_soon(app: &TestApp, token: &str) {
    let deadline = Instant::now() + Duration::from_millis(1200);
    let ping = json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" });
    loop {
        let status = rpc(app, Some(token), ping.clone()).await.status();
        if status == StatusCode::UNAUTHORIZED {
            return;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            Instant::now() < deadline,
            "still accepted 1.2 s after revocation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn builtin_tools_are_listed_with_schemas_annotations_and_titles(app: TestApp) {
    owner_key(&app).await;
    let t = pat(&app, "account:read").await;
    let listed: Vec<(String, String, Value, bool, bool, bool)> = tools(&app, &t)
        .await
        .iter()
        .map(|tool| {
            let name = tool["name"].as_str().unwrap().to_owned();
            assert!(tool["title"].is_string(), "{name}");
            assert_eq!(tool["annotations"]["title"], tool["title"], "{name}");
            assert!(
                tool["description"].as_str().unwrap().len() > 40,
                "{name} needs a description a model can use"
            );
            assert_eq!(tool["inputSchema"]["type"], "object", "{name}");
            assert_eq!(tool["inputSchema"]["additionalProperties"], false, "{name}");
            assert_eq!(tool["outputSchema"]["type"], "object", "{name}");
            assert!(tool["outputSchema"]["required"].is_array(), "{name}");
            jsonschema::validator_for(&tool["outputSchema"]).unwrap();
            let requires = &tool["_meta"]["dev.gatehouse/requires"];
            let a = &tool["annotations"];
            assert_eq!(a["openWorldHint"], false, "{name}");
            (
                name,
                requires["scopes"].as_str().unwrap().to_owned(),
                requires["role"].clone(),
                a["readOnlyHint"].as_bool().unwrap(),
                a["destructiveHint"].as_bool().unwrap(),
                a["idempotentHint"].as_bool().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("whoami", "account:read", Value::Null, true, false, true),
        (
            "list_connections",
            "account:read",
            Value::Null,
            true,
            false,
            true,
        ),
        (
            "revoke_connection",
            "account:write",
            Value::Null,
            false,
            true,
            true,
        ),
        (
            "list_access_tokens",
            "account:read",
            Value::Null,
            true,
            false,
            true,
        ),
        (
            "create_access_token",
            "account:write",
            Value::Null,
            false,
            false,
            false,
        ),
        (
            "revoke_access_token",
            "account:write",
            Value::Null,
            false,
            true,
            true,
        ),
        (
            "usage_stats",
            "account:read",
            Value::Null,
            true,
            false,
            true,
        ),
        (
            "list_members",
            "admin:read",
            json!("admin"),
            true,
            false,
            true,
        ),
        (
            "list_audit_events",
            "admin:read",
            json!("admin"),
            true,
            false,
            true,
        ),
    ]
    .map(|(n, s, r, ro, d, i)| (n.to_owned(), s.to_owned(), r, ro, d, i));
    assert_eq!(listed, expected);
    // Only the additive tool takes an idempotency key.
    let create = tool_definition(&app, &t, "create_access_token").await;
    assert_eq!(
        create["inputSchema"]["properties"]["idempotency_key"]["type"],
        "string"
    );
    assert_eq!(create["inputSchema"]["required"], json!(["name"]));
    let revoke = tool_definition(&app, &t, "revoke_access_token").await;
    assert!(revoke["inputSchema"]["properties"]["idempotency_key"].is_null());
}

async fn access_tokens_are_created_listed_used_and_revoked(app: TestApp) {
    owner_key(&app).await;
    let owner = pat(&app, READ_WRITE).await;
    // Past the CLI's clock, so that the new token is the newest.
    app.clock.advance(60);
    let now = app.clock.now();

    let created = call(
        &app,
        &owner,
        "create_access_token",
        json!({ "name": "  ci bot ", "scopes": "account:read", "expires_in_days": 30 }),
    )
    .await;
    let out = &created["structuredContent"];
    let id = out["id"].as_str().unwrap().to_owned();
    let token = out["token"].as_str().unwrap().to_owned();
    assert!(id.starts_with("pat_"), "{id}");
    assert!(token.starts_with("gth_pat_"), "{token}");
    assert_eq!(
        out,
        &json!({
            "id": id,
            "name": "ci bot",
            "scopes": "account:read",
            "created_at": rfc3339(now),
            "expires_at": rfc3339(now + 30 * 86_400),
            "token": token,
            "note": "This is the only time the token is shown: only its hash is stored. \
                     Send it as `Authorization: Bearer <token>`; revoke it with revoke_access_token and the id.",
        })
    );

    let listed = call(&app, &owner, "list_access_tokens", json!({})).await;
    let list = listed["structuredContent"]["tokens"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{listed}");
    assert_eq!(
        list[0],
        json!({
            "id": id,
            "name": "ci bot",
            "scopes": "account:read",
            "status": "active",
            "created_at": rfc3339(now),
            "expires_at": rfc3339(now + 30 * 86_400),
            "last_used_at": null,
            "revoked_at": null,
        })
    );
    assert_eq!(list[1]["name"], "agent");
    assert_eq!(list[1]["scopes"], READ_WRITE);
    assert_eq!(list[1]["expires_at"], Value::Null);
    assert!(!listed.to_string().contains("gth_pat_"), "no secrets");

    // The new token works, with its own scopes only.
    let me = call(&app, &token, "whoami", json!({})).await;
    assert_eq!(me["structuredContent"]["scopes"], "account:read");
    assert_eq!(
        me["structuredContent"]["user"]["email"],
        "owner@example.com"
    );
    let res = rpc(&app, Some(&token), json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": "create_access_token", "arguments": { "name": "x" } } })).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // Last-used times are written in batches off the request path: wait for the flush.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let listed = call(&app, &owner, "list_access_tokens", json!({})).await;
        let used = listed["structuredContent"]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id.as_str() && t["last_used_at"] == rfc3339(now));
        if used {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last use never recorded: {listed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let revoked = call(&app, &owner, "revoke_access_token", json!({ "id": id })).await;
    assert_eq!(
        revoked["structuredContent"],
        json!({
            "id": id,
            "name": "ci bot",
            "scopes": "account:read",
            "status": "revoked",
            "created_at": rfc3339(now),
            "expires_at": rfc3339(now + 30 * 86_400),
            "last_used_at": rfc3339(now),
            "revoked_at": rfc3339(now),
        })
    );
    assert_refused_soon(&app, &token).await;

    let again = call(&app, &owner, "revoke_access_token", json!({ "id": id })).await;
    assert_eq!(
        error_of(&again),
        (
            "ALREADY_REVOKED",
            format!("ALREADY_REVOKED: access token {id} is already revoked").as_str()
        )
    );
    let listed = call(&app, &owner, "list_access_tokens", json!({})).await;
    assert_eq!(
        listed["structuredContent"]["tokens"][0]["status"],
        "revoked"
    );

    // Both changes are audited as the user, in the organization.
    let events = app
        .store
        .list_audit(&AuditFilter {
            org_id: Some(org_id(&app, "default").await),
            action_prefix: Some("pat.".into()),
            limit: 10,
        })
        .await
        .unwrap();
    let actor = format!("user:{}", user_id(&app, "owner@example.com").await);
    let seen: Vec<(&str, &str, Option<&str>)> = events
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.target.as_deref()))
        .collect();
    assert_eq!(
        seen[..2],
        [
            (actor.as_str(), "pat.revoke", Some(id.as_str())),
            (
                actor.as_str(),
                "pat.create",
                Some(format!("pat:{id}").as_str())
            ),
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| !e.detail.as_deref().unwrap_or("").contains("gth_"))
    );
}

async fn create_access_token_refuses_scopes_the_caller_lacks(app: TestApp) {
    owner_key(&app).await;
    let owner = pat(&app, READ_WRITE).await;

    let refused = call(
        &app,
        &owner,
        "create_access_token",
        json!({ "name": "escalate", "scopes": "account:read admin:read admin:write" }),
    )
    .await;
    assert_eq!(
        error_of(&refused),
        (
            "SCOPES_NOT_HELD",
            "SCOPES_NOT_HELD: a new token can only carry scopes this connection holds, and it lacks: \
             admin:read admin:write. Ask for some of: account:read account:write"
        )
    );
    let code = code_of(
        &call(
            &app,
            &owner,
            "create_access_token",
            json!({ "name": "   " }),
        )
        .await,
    );
    assert_eq!(code, "INVALID_ARGUMENTS");
    // Out of the schema's bounds: refused before the tool runs.
    for bad in [
        json!({ "name": "x", "expires_in_days": 366 }),
        json!({ "name": "x", "expires_in_days": 0 }),
        json!({ "name": "x".repeat(101) }),
        json!({ "name": "x", "extra": 1 }),
        json!({}),
    ] {
        let code = code_of(&call(&app, &owner, "create_access_token", bad).await);
        assert_eq!(code, "INVALID_ARGUMENTS");
    }
    let listed = call(&app, &owner, "list_access_tokens", json!({})).await;
    assert_eq!(
        listed["structuredContent"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing was created"
    );

    // Without scopes, the new token gets exactly the caller's; the default expiry is 90 days.
    let created = call(
        &app,
        &owner,
        "create_access_token",
        json!({ "name": "same" }),
    )
    .await;
    assert_eq!(created["structuredContent"]["scopes"], READ_WRITE);
    assert_eq!(
        created["structuredContent"]["expires_at"],
        rfc3339(app.clock.now() + 90 * 86_400)
    );
}

async fn revoking_another_users_token_is_refused_like_an_unknown_id(app: TestApp) {
    owner_key(&app).await;
    add_member(&app, "bob@example.com", "member").await;
    let owner = pat(&app, READ_WRITE).await;
    let bobs = pat_of(&app, "default", "bob@example.com", "account:read").await;
    let bob_token = bobs["token"].as_str().unwrap();
    // The owner's own token in another organization.
    cli(&app.db, &["org", "create", "acme"], None).await.ok();
    cli(
        &app.db,
        &[
            "member",
            "add",
            "--org",
            "acme",
            "--user",
            "owner@example.com",
            "--role",
            "owner",
        ],
        None,
    )
    .await
    .ok();
    let elsewhere = pat_of(&app, "acme", "owner@example.com", "account:read").await;

    for id in [
        bobs["id"].as_str().unwrap(),
        elsewhere["id"].as_str().unwrap(),
        "pat_doesnotexist",
    ] {
        let refused = call(&app, &owner, "revoke_access_token", json!({ "id": id })).await;
        assert_eq!(
            error_of(&refused),
            (
                "NOT_FOUND",
                format!("NOT_FOUND: you have no access token with id {id:?} in this organization; list_access_tokens shows yours").as_str()
            )
        );
    }
    // Neither was touched.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let me = call(&app, bob_token, "whoami", json!({})).await;
    assert_eq!(me["structuredContent"]["user"]["email"], "bob@example.com");
    let other = elsewhere["token"].as_str().unwrap();
    let me = call(&app, other, "whoami", json!({})).await;
    assert_eq!(me["structuredContent"]["organization"]["slug"], "acme");
    // And the owner's list shows neither.
    let listed = call(&app, &owner, "list_access_tokens", json!({})).await;
    assert_eq!(
        listed["structuredContent"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn connections_are_listed_and_revoking_one_ends_its_tokens(app: TestApp) {
    let flow = full_flow(&app).await;
    let now = app.clock.now();
    let access = flow.tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = flow.tokens["refresh_token"].as_str().unwrap().to_owned();
    let owner = pat(&app, READ_WRITE).await;

    // Through the app's own token or a PAT: the same user's connections.
    for token in [access.as_str(), owner.as_str()] {
        let listed = call(&app, token, "list_connections", json!({})).await;
        assert_eq!(
            listed["structuredContent"],
            json!({ "connections": [{
                "client_id": flow.client_id,
                "name": "Claude",
                "verified": false,
                "origin": "dcr",
                "scopes": "account:read offline_access",
                "first_used_at": rfc3339(now),
                "last_used_at": rfc3339(now),
            }] })
        );
    }

    let revoked = call(
        &app,
        &owner,
        "revoke_connection",
        json!({ "client_id": flow.client_id }),
    )
    .await;
    assert_eq!(
        revoked["structuredContent"],
        json!({ "client_id": flow.client_id, "revoked": true, "sessions_ended": 1 })
    );
    assert_refused_soon(&app, &access).await;
    let (status, body, _) = refresh_with(&app, &flow.client_id, &refresh).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");

    let listed = call(&app, &owner, "list_connections", json!({})).await;
    assert_eq!(listed["structuredContent"], json!({ "connections": [] }));
    let again = call(
        &app,
        &owner,
        "revoke_connection",
        json!({ "client_id": flow.client_id }),
    )
    .await;
    assert_eq!(
        error_of(&again),
        (
            "NOT_FOUND",
            format!(
                "NOT_FOUND: you have no connection to an app with client_id {:?} in this organization; list_connections shows the ones you have",
                flow.client_id
            )
            .as_str()
        )
    );

    let events = app
        .store
        .list_audit(&AuditFilter {
            org_id: Some(org_id(&app, "default").await),
            action_prefix: Some("connection.".into()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].actor,
        format!("user:{}", user_id(&app, "owner@example.com").await)
    );
    assert_eq!(events[0].action, "connection.revoke");
    assert_eq!(
        events[0].target.as_deref(),
        Some(format!("client:{}", flow.client_id).as_str())
    );
}

async fn usage_stats_covers_the_caller_or_all_members_for_admins(db: crate::helpers::TestDb) {
    // The test's own calls are metered too; a long flush interval keeps them out of the
    // figures it checks, which come only from the rows it seeds.
    let backend = db.backend;
    drop(db);
    let app = crate::helpers::spawn_app_with(backend, |c| {
        c.mcp.flush_interval = Duration::from_secs(3600)
    })
    .await
    .unwrap();
    owner_key(&app).await;
    add_member(&app, "bob@example.com", "member").await;
    let owner_token = pat(&app, "account:read").await;
    let bob_token = pat_of(&app, "default", "bob@example.com", "account:read").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let org = org_id(&app, "default").await;
    let owner = user_id(&app, "owner@example.com").await;
    let bob = user_id(&app, "bob@example.com").await;
    let today = app.clock.now().div_euclid(86_400);
    let usage =
        |org: &str, user: &str, client: &str, tool: &str, day, calls, errors, us| UsageRecord {
            org_id: org.into(),
            user_id: user.into(),
            client_id: client.into(),
            tool: tool.into(),
            day,
            calls,
            errors,
            total_latency_us: us,
        };
    app.store
        .record_usage(&[
            usage(&org, &owner, "c1", "whoami", today, 3, 1, 7_500),
            usage(&org, &owner, "", "whoami", today, 1, 0, 2_500),
            usage(&org, &owner, "c1", "list_connections", today, 2, 0, 3_000),
            usage(&org, &owner, "c1", "whoami", today - 1, 1, 0, 1_000),
            usage(&org, &owner, "c1", "whoami", today - 7, 100, 0, 100_000),
            usage(&org, &bob, "", "whoami", today, 6, 3, 6_000),
            usage("org_elsewhere", &owner, "c1", "whoami", today, 50, 0, 0),
        ])
        .await
        .unwrap();

    let mine = call(&app, &owner_token, "usage_stats", json!({})).await;
    assert_eq!(
        mine["structuredContent"],
        json!({
            "all_members": false,
            "from": rfc3339_date(today - 6),
            "to": rfc3339_date(today),
            "usage": [
                { "date": rfc3339_date(today), "tool": "list_connections", "calls": 2, "errors": 0, "error_rate": 0.0, "avg_latency_ms": 1.5 },
                { "date": rfc3339_date(today), "tool": "whoami", "calls": 4, "errors": 1, "error_rate": 0.25, "avg_latency_ms": 2.5 },
                { "date": rfc3339_date(today - 1), "tool": "whoami", "calls": 1, "errors": 0, "error_rate": 0.0, "avg_latency_ms": 1.0 },
            ],
            "totals": { "calls": 7, "errors": 1, "error_rate": 0.1429, "avg_latency_ms": 2.0 },
        })
    );

    let longer = call(&app, &owner_token, "usage_stats", json!({ "days": 8 })).await;
    assert_eq!(longer["structuredContent"]["from"], rfc3339_date(today - 7));
    assert_eq!(longer["structuredContent"]["totals"]["calls"], 107);

    let everyone = call(
        &app,
        &owner_token,
        "usage_stats",
        json!({ "all_members": true }),
    )
    .await;
    assert_eq!(
        everyone["structuredContent"],
        json!({
            "all_members": true,
            "from": rfc3339_date(today - 6),
            "to": rfc3339_date(today),
            "usage": [
                { "date": rfc3339_date(today), "tool": "list_connections", "calls": 2, "errors": 0, "error_rate": 0.0, "avg_latency_ms": 1.5 },
                { "date": rfc3339_date(today), "tool": "whoami", "calls": 10, "errors": 4, "error_rate": 0.4, "avg_latency_ms": 1.6 },
                { "date": rfc3339_date(today - 1), "tool": "whoami", "calls": 1, "errors": 0, "error_rate": 0.0, "avg_latency_ms": 1.0 },
            ],
            "totals": { "calls": 13, "errors": 4, "error_rate": 0.3077, "avg_latency_ms": 1.54 },
        })
    );

    // A plain member sees their own usage, and not everyone's.
    let bobs = call(&app, &bob_token, "usage_stats", json!({ "days": 1 })).await;
    assert_eq!(
        bobs["structuredContent"]["usage"],
        json!([{ "date": rfc3339_date(today), "tool": "whoami", "calls": 6, "errors": 3, "error_rate": 0.5, "avg_latency_ms": 1.0 }])
    );
    let refused = call(
        &app,
        &bob_token,
        "usage_stats",
        json!({ "all_members": true }),
    )
    .await;
    assert_eq!(
        error_of(&refused),
        (
            "ROLE_REQUIRED",
            "ROLE_REQUIRED: all_members needs the admin role in your organization (you are: member); \
             call usage_stats without all_members to see your own usage"
        )
    );
    let code = code_of(&call(&app, &bob_token, "usage_stats", json!({ "days": 91 })).await);
    assert_eq!(code, "INVALID_ARGUMENTS");
}

async fn members_and_audit_events_need_the_admin_role(app: TestApp) {
    owner_key(&app).await;
    add_member(&app, "bob@example.com", "member").await;
    cli(&app.db, &["org", "create", "acme"], None).await.ok();
    let bob = pat_of(&app, "default", "bob@example.com", "admin:read").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let owner = pat(&app, "account:read account:write admin:read").await;

    for tool in ["list_members", "list_audit_events"] {
        let refused = call(&app, &bob, tool, json!({})).await;
        assert_eq!(
            error_of(&refused),
            (
                "ROLE_REQUIRED",
                format!("ROLE_REQUIRED: {tool} needs the admin role in your organization (you are: member); ask an owner or admin").as_str()
            )
        );
    }

    let members = call(&app, &owner, "list_members", json!({})).await;
    let bob_id = user_id(&app, "bob@example.com").await;
    let owner_id = user_id(&app, "owner@example.com").await;
    let org = app
        .store
        .find_org_by_slug(&OrgSlug::parse("default").unwrap())
        .await
        .unwrap()
        .unwrap();
    let stored = app.store.list_members(&org).await.unwrap();
    assert_eq!(
        members["structuredContent"],
        json!({ "members": [
            { "user_id": bob_id, "email": "bob@example.com", "display_name": "bob", "role": "member", "joined_at": rfc3339(stored[0].created_at) },
            { "user_id": owner_id, "email": "owner@example.com", "display_name": "Owner", "role": "owner", "joined_at": "1970-01-01T00:00:01Z" },
        ] })
    );

    let created = call(
        &app,
        &owner,
        "create_access_token",
        json!({ "name": "audited", "scopes": "account:read" }),
    )
    .await;
    let pat_id = created["structuredContent"]["id"].as_str().unwrap();
    // Filtered by prefix: the batched `mcp.tool_call` row of this call may land first.
    let events = call(
        &app,
        &owner,
        "list_audit_events",
        json!({ "limit": 1, "action_prefix": "pat." }),
    )
    .await;
    assert_eq!(
        events["structuredContent"]["events"],
        json!([{
            "id": events["structuredContent"]["events"][0]["id"],
            "at": rfc3339(app.clock.now()),
            "actor": format!("user:{owner_id}"),
            "action": "pat.create",
            "target": format!("pat:{pat_id}"),
            "source_addr": null,
            "detail": { "scopes": "account:read", "expires_at": app.clock.now() + 90 * 86_400 },
        }])
    );
    assert!(events["structuredContent"]["events"][0]["id"].is_i64());

    // Only this organization's events (not acme's creation), newest first, by prefix.
    let all = call(&app, &owner, "list_audit_events", json!({ "limit": 200 })).await;
    let all = all["structuredContent"]["events"].as_array().unwrap();
    assert!(!all.iter().any(|e| e["action"] == "org.create"), "{all:?}");
    let ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let added = call(
        &app,
        &owner,
        "list_audit_events",
        json!({ "action_prefix": "member." }),
    )
    .await;
    let added = added["structuredContent"]["events"].as_array().unwrap();
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(added[0]["action"], "member.add");
    assert_eq!(added[0]["actor"], "cli");
    assert_eq!(added[0]["target"], format!("user:{bob_id}"));
    let code = code_of(&call(&app, &owner, "list_audit_events", json!({ "limit": 201 })).await);
    assert_eq!(code, "INVALID_ARGUMENTS");
}

async fn a_retried_token_creation_neither_repeats_nor_stores_the_token(app: TestApp) {
    owner_key(&app).await;
    let owner = pat(&app, READ_WRITE).await;
    let args = json!({ "name": "retry", "idempotency_key": "create-1" });
    let first = call(&app, &owner, "create_access_token", args.clone()).await;
    let token = first["structuredContent"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = call(&app, &owner, "create_access_token", args).await;
    assert_eq!(again["isError"], true, "{again}");
    let text = again["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("ALREADY_DONE"), "{text}");
    assert!(!text.contains(&token), "the secret is never replayed");
    // One token was made, and the idempotency record holds no trace of it.
    let listed = call(&app, &owner, "list_access_tokens", json!({})).await;
    let names: Vec<&str> = listed["structuredContent"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .filter(|n| *n == "retry")
        .collect();
    assert_eq!(names.len(), 1);
    let secret = &token["gth_pat_".len()..];
    let stored: Vec<String> = match &app.store {
        gatehouse::storage::Store::Sqlite(pool) => {
            sqlx::query_scalar("SELECT COALESCE(result, '') FROM idempotency_keys")
                .fetch_all(pool)
                .await
                .unwrap()
        }
        gatehouse::storage::Store::Postgres(pool) => {
            sqlx::query_scalar("SELECT COALESCE(result, '') FROM idempotency_keys")
                .fetch_all(pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].contains(secret), "{}", stored[0]);
}
