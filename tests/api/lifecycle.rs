//! Client and account lifecycle (issue #5 item 6): revoking an API key, removing a
//! member, suspending an organization or disabling a user revokes what was issued
//! through them; unused and idle registered clients are collected.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, cli};
use crate::mcp::{pat, pat_of, rpc};
use crate::oauth_helpers::*;

both_backends!(
    revoking_an_api_key_revokes_the_grants_made_with_it,
    removing_a_member_revokes_their_grants,
    suspending_an_organization_revokes_its_grants_and_pauses_its_pats,
    a_disabled_user_cannot_sign_in_and_loses_every_credential,
    a_disabled_user_stands_nowhere_even_with_a_credential_that_escaped_revocation,
    unused_and_idle_registered_clients_are_collected,
    expired_codes_and_tokens_are_removed_and_live_ones_kept,
);

/// The Claude flow signed in with `key`: (client id, token response).
async fn grant_with_key(app: &TestApp, key: &str) -> (String, Value) {
    let client_id = register_public(app, CB).await;
    let p = pkce();
    let q = authorize_query(
        &client_id,
        CB,
        &p.challenge,
        &[
            ("scope", "account:read offline_access"),
            ("resource", &format!("{}/mcp", app.addr)),
        ],
    );
    let redirect = sign_in_and_approve(app, &q, key).await;
    let code = query_param(&redirect, "code").expect("code");
    let (status, tokens, _) = exchange(app, &client_id, &code, CB, &p.verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    (client_id, tokens)
}

fn whoami() -> Value {
    json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": "whoami" } })
}

/// The status `/mcp` gives `token` once the credential-change feed has caught up.
async fn mcp_status_after_feed(app: &TestApp, token: &str) -> StatusCode {
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    rpc(app, Some(token), whoami()).await.status()
}

async fn refresh_status(app: &TestApp, client_id: &str, tokens: &Value) -> (StatusCode, Value) {
    let (status, body, _) =
        refresh_with(app, client_id, tokens["refresh_token"].as_str().unwrap()).await;
    (status, body)
}

/// A member of `default` with an API key (and, when given, a password).
async fn member_with_key(app: &TestApp, email: &str, password: Option<&str>) -> (String, String) {
    let mut args = vec!["user", "create", email];
    if password.is_some() {
        args.push("--password-stdin");
    }
    cli(
        &app.db,
        &args,
        password.map(|p| format!("{p}\n")).as_deref(),
    )
    .await
    .ok();
    cli(
        &app.db,
        &["member", "add", "--org", "default", "--user", email],
        None,
    )
    .await
    .ok();
    let key = cli(
        &app.db,
        &[
            "--json", "key", "create", "--org", "default", "--user", email,
        ],
        None,
    )
    .await
    .ok()
    .json();
    (
        key["id"].as_str().unwrap().to_owned(),
        key["api_key"].as_str().unwrap().to_owned(),
    )
}

async fn revoking_an_api_key_revokes_the_grants_made_with_it(app: TestApp) {
    owner_key(&app).await;
    let (key_id, key) = member_with_key(&app, "bob@example.com", None).await;
    let (client_id, tokens) = grant_with_key(&app, &key).await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        rpc(&app, Some(access), whoami()).await.status(),
        StatusCode::OK
    );
    // A grant made with another credential is not touched.
    let (other_id, other_key) = member_with_key(&app, "carol@example.com", None).await;
    let carol = app.fresh_browser();
    let (carol_client, carol_tokens) = grant_with_key(&carol, &other_key).await;
    assert_ne!(other_id, key_id);

    cli(&app.db, &["key", "revoke", &key_id], None).await.ok();
    let (status, body) = refresh_status(&app, &client_id, &tokens).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(
        mcp_status_after_feed(&app, access).await,
        StatusCode::UNAUTHORIZED
    );
    // The browser session signed in with that key has ended too: sign in again.
    let p = pkce();
    let q = authorize_query(&client_id, CB, &p.challenge, &[("scope", "account:read")]);
    let html = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("action=\"/authorize/login\""), "{html}");

    let (status, body) = refresh_status(&carol, &carol_client, &carol_tokens).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn removing_a_member_revokes_their_grants(app: TestApp) {
    owner_key(&app).await;
    let (_, key) = member_with_key(&app, "bob@example.com", None).await;
    let (client_id, tokens) = grant_with_key(&app, &key).await;
    cli(
        &app.db,
        &[
            "member",
            "remove",
            "--org",
            "default",
            "--user",
            "bob@example.com",
        ],
        None,
    )
    .await
    .ok();
    let (status, body) = refresh_status(&app, &client_id, &tokens).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        mcp_status_after_feed(&app, access).await,
        StatusCode::UNAUTHORIZED
    );
}

async fn suspending_an_organization_revokes_its_grants_and_pauses_its_pats(app: TestApp) {
    let key = owner_key(&app).await;
    let (client_id, tokens) = grant_with_key(&app, &key).await;
    let agent = pat(&app, "account:read").await;
    cli(
        &app.db,
        &["org", "set-status", "default", "suspended"],
        None,
    )
    .await
    .ok();
    let (status, body) = refresh_status(&app, &client_id, &tokens).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        mcp_status_after_feed(&app, &agent).await,
        StatusCode::FORBIDDEN
    );
    cli(&app.db, &["org", "set-status", "default", "active"], None)
        .await
        .ok();
    // Grants stay revoked (connect again); the PAT works again.
    let (status, _) = refresh_status(&app, &client_id, &tokens).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(mcp_status_after_feed(&app, &agent).await, StatusCode::OK);
}

async fn a_disabled_user_cannot_sign_in_and_loses_every_credential(app: TestApp) {
    owner_key(&app).await;
    let password = "bob's long password 123";
    let (_, key) = member_with_key(&app, "bob@example.com", Some(password)).await;
    let (client_id, tokens) = grant_with_key(&app, &key).await;
    let agent = pat_of(&app, "default", "bob@example.com", "account:read").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        rpc(&app, Some(&agent), whoami()).await.status(),
        StatusCode::OK
    );

    let out = cli(
        &app.db,
        &["--json", "user", "disable", "bob@example.com"],
        None,
    )
    .await
    .ok()
    .json();
    assert_eq!(out["disabled"], true);
    assert_eq!(
        mcp_status_after_feed(&app, &agent).await,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = refresh_status(&app, &client_id, &tokens).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Sign-in: the key is gone; the right password gets a page saying why.
    let browser = app.fresh_browser();
    let p = pkce();
    let q = authorize_query(&client_id, CB, &p.challenge, &[("scope", "account:read")]);
    let html = browser
        .client
        .get(browser.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let post = |fields: Vec<(&'static str, String)>| {
        let mut form = vec![
            ("request", hidden(&html, "request")),
            ("csrf", hidden(&html, "csrf")),
        ];
        form.extend(fields);
        browser
            .client
            .post(browser.url("/authorize/login"))
            .form(&form)
            .send()
    };
    let res = post(vec![("api_key", key.clone())]).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = post(vec![
        ("email", "bob@example.com".into()),
        ("password", password.into()),
    ])
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.unwrap().contains("disabled"));

    cli(&app.db, &["user", "enable", "bob@example.com"], None)
        .await
        .ok();
    let res = post(vec![
        ("email", "bob@example.com".into()),
        ("password", password.into()),
    ])
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    // Enabling gives back nothing that was revoked.
    assert_eq!(
        rpc(&app, Some(&agent), whoami()).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn unused_and_idle_registered_clients_are_collected(app: TestApp) {
    let key = owner_key(&app).await;
    let (status, unused) = register(
        &app,
        json!({ "client_name": "never used", "redirect_uris": [CB], "token_endpoint_auth_method": "none" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (used, _) = grant_with_key(&app, &key).await;
    let operator = cli(
        &app.db,
        &[
            "--json",
            "client",
            "create",
            "--name",
            "ops",
            "--redirect-uri",
            CB,
            "--public",
        ],
        None,
    )
    .await
    .ok()
    .json();
    let ids = |clients: Vec<gatehouse::storage::ClientRow>| -> Vec<String> {
        clients.into_iter().map(|c| c.id).collect()
    };

    // A day and an hour later, a starting instance's first housekeeping round runs.
    app.clock.advance(25 * 3600);
    app.second_instance().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let unused_id = unused["client_id"].as_str().unwrap().to_owned();
    loop {
        let now = ids(app.store.list_clients().await.unwrap());
        if !now.contains(&unused_id) {
            assert!(now.contains(&used), "a client that got a token stays");
            assert!(now.contains(&operator["client_id"].as_str().unwrap().to_owned()));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not collected");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Ninety days without a token: the used one goes too, the operator's stays.
    app.clock.advance(90 * 24 * 3600);
    app.second_instance().await;
    loop {
        let now = ids(app.store.list_clients().await.unwrap());
        if !now.contains(&used) {
            assert!(now.contains(&operator["client_id"].as_str().unwrap().to_owned()));
            break;
        }
        assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(10));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let audit = cli(
        &app.db,
        &["--json", "audit", "list", "--action", "client.collected"],
        None,
    )
    .await
    .ok()
    .json();
    let reasons: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(reasons.len(), 2, "{audit}");
    assert!(
        reasons.iter().any(|d| d.contains("unused")) && reasons.iter().any(|d| d.contains("idle"))
    );
}

/// Defence in depth: a credential that escaped revocation (say, a row restored from a
/// backup) still gets nowhere once its user is disabled.
async fn a_disabled_user_stands_nowhere_even_with_a_credential_that_escaped_revocation(
    app: TestApp,
) {
    owner_key(&app).await;
    member_with_key(&app, "bob@example.com", None).await;
    let agent = pat_of(&app, "default", "bob@example.com", "account:read").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Disabled behind the server's back: nothing revoked, no change announced.
    app.sql("UPDATE users SET disabled_at = 1 WHERE email = 'bob@example.com'")
        .await;
    let res = rpc(&app, Some(&agent), whoami()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let challenge = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.contains("no longer a member"), "{challenge}");
}

/// Housekeeping deletes codes, access-token ids and refresh tokens an hour past their
/// expiry (a starting instance runs it at once), and nothing that still works.
async fn expired_codes_and_tokens_are_removed_and_live_ones_kept(app: TestApp) {
    let key = owner_key(&app).await;
    let (client_id, tokens) = grant_with_key(&app, &key).await;
    let rows = || async {
        (
            app.count("SELECT COUNT(*) FROM oauth_codes").await,
            app.count("SELECT COUNT(*) FROM oauth_access_tokens").await,
            app.count("SELECT COUNT(*) FROM oauth_refresh_tokens").await,
        )
    };
    assert_eq!(rows().await, (1, 1, 1));
    let wait_for = |want: (i64, i64, i64)| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let got = rows().await;
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{got:?}, not {want:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };

    // Past the access token's expiry and the code's by more than an hour: both go, the
    // refresh token (30 days) stays and still works.
    app.clock
        .advance(app.config.tokens.access_ttl_secs * 2 + 3600 + 1);
    app.second_instance().await;
    wait_for((0, 0, 1)).await;
    let (status, renewed) = refresh_status(&app, &client_id, &tokens).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    // The rotation added a pair; the rotated-out refresh token stays for reuse detection.
    assert_eq!(rows().await, (0, 1, 2));

    // Past every refresh token's expiry by an hour: nothing is left but the connection.
    app.clock
        .advance(app.config.tokens.refresh_ttl_secs + 3600 + 1);
    app.second_instance().await;
    wait_for((0, 0, 0)).await;
    assert_eq!(app.count("SELECT COUNT(*) FROM oauth_families").await, 1);
}
