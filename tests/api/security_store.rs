//! SECURITY.md STORE-01 and STORE-02: after a full run, none of the secrets handed out
//! or typed in is readable in the database files (SQLite file and WAL, or a `pg_dump`)
//! or in the server's log output, even at debug level.

use std::time::Duration;

use base64::Engine;
use gatehouse::app::App;
use gatehouse::crypto::keys::Kek;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Backend, TestApp, TestDb, cli};
use crate::mcp::{pat, rpc};
use crate::oauth_helpers::*;
use crate::process::{Serve, app_for};

both_backends!(store_01_no_secret_handed_out_is_in_the_database_files);
both_backends!(db: store_02_no_secret_handed_out_or_typed_in_is_in_the_logs);

/// Runs everything that hands out or takes in a secret, the way clients do, and
/// returns every secret seen.
/// `key` is the owner's API key (owner@example.com in `default`).
async fn hand_out_secrets(app: &TestApp, key: String) -> Vec<String> {
    let mut secrets = vec![key.clone()];
    let password = "correct horse battery staple 42";
    cli(
        &app.db,
        &["user", "set-password", "owner@example.com"],
        Some(&format!("{password}\n")),
    )
    .await
    .ok();
    secrets.push(password.into());

    // Wrong credentials typed into the sign-in form.
    let client_id = register_public(app, CB).await;
    let p = pkce();
    let q = authorize_query(
        &client_id,
        CB,
        &p.challenge,
        &[
            ("scope", "account:read account:write offline_access"),
            ("resource", &format!("{}/mcp", app.addr)),
        ],
    );
    let html = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let typed_password = "Tr0ub4dor&3-typed-wrong";
    let typed_key = "gh_key_TypedWrongButSecretLooking0123456789";
    for fields in [
        [("email", "owner@example.com"), ("password", typed_password)],
        [("email", typed_password), ("password", password)],
        [("api_key", typed_key), ("email", "")],
    ] {
        let mut form = vec![
            ("request".to_owned(), hidden(&html, "request")),
            ("csrf".to_owned(), hidden(&html, "csrf")),
        ];
        form.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let res = app
            .client
            .post(app.url("/authorize/login"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    secrets.extend([typed_password.to_owned(), typed_key.to_owned()]);

    // The Claude-style flow: code, verifier, access and refresh tokens, then a refresh.
    let redirect = sign_in_and_approve(app, &q, &key).await;
    let code = query_param(&redirect, "code").unwrap();
    let (status, tokens, _) = exchange(app, &client_id, &code, CB, &p.verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (status, renewed, _) = token(
        app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    for t in [&tokens, &renewed] {
        secrets.push(t["access_token"].as_str().unwrap().to_owned());
        secrets.push(t["refresh_token"].as_str().unwrap().to_owned());
    }
    secrets.extend([code, p.verifier]);

    // A confidential client's secret, and a wrong one typed at the token endpoint.
    let (status, body) = register(
        app,
        json!({ "client_name": "script", "redirect_uris": [CB],
                "token_endpoint_auth_method": "client_secret_post" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let secret = body["client_secret"].as_str().unwrap().to_owned();
    let wrong_secret = "typed-wrong-client-secret-9f8e7d";
    let (status, _, _) = token(
        app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "gh_rt_x"),
            ("client_id", body["client_id"].as_str().unwrap()),
            ("client_secret", wrong_secret),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    secrets.extend([secret, wrong_secret.to_owned()]);

    // PATs: one from the CLI, one made by a tool call over /mcp.
    let cli_pat = pat(app, "account:read account:write").await;
    let made: Value = rpc(
        app,
        Some(&cli_pat),
        json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": { "name": "create_access_token",
                            "arguments": { "name": "made-by-tool", "scopes": "account:read" } } }),
    )
    .await
    .json()
    .await
    .unwrap();
    let tool_pat = made["result"]["structuredContent"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{made}"))
        .to_owned();
    secrets.extend([cli_pat, tool_pat]);
    secrets
}

/// The secrets found in `haystack`, by their first characters (never the whole value).
fn found_in(haystack: &[u8], secrets: &[String]) -> Vec<String> {
    secrets
        .iter()
        .filter(|s| haystack.windows(s.len()).any(|w| w == s.as_bytes()))
        .map(|s| format!("{}…", &s[..8.min(s.len())]))
        .collect()
}

async fn store_01_no_secret_handed_out_is_in_the_database_files(app: TestApp) {
    let key = owner_key(&app).await;
    let secrets = hand_out_secrets(&app, key).await;
    assert!(secrets.len() >= 14, "{}", secrets.len());
    // Let the background writer finish (last-used times, audit rows).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut bytes = Vec::new();
    match app.db.backend {
        Backend::Sqlite => {
            let file = gatehouse::storage::Store::sqlite_file(&app.db.url).unwrap();
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut path = file.clone().into_os_string();
                path.push(suffix);
                if let Ok(b) = std::fs::read(&path) {
                    bytes.extend(b);
                }
            }
            assert!(bytes.len() > 10_000, "the database was read");
        }
        Backend::Postgres => {
            let out = tokio::process::Command::new("pg_dump")
                .arg(&app.db.url)
                .output()
                .await
                .expect("pg_dump is installed");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            bytes = out.stdout;
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                text.contains("COPY public.oauth_refresh_tokens"),
                "a real dump"
            );
        }
    }
    // The scan can find things: the client's name is stored in clear.
    assert!(!found_in(&bytes, &["script".to_owned()]).is_empty());
    let leaked = found_in(&bytes, &secrets);
    assert!(leaked.is_empty(), "secrets readable at rest: {leaked:?}");
}

async fn store_02_no_secret_handed_out_or_typed_in_is_in_the_logs(db: TestDb) {
    let backend = db.backend;
    let store = db.store().await;
    store.migrate().await.unwrap();
    // The owner exists before the first start, so no first-start key is printed (that
    // one is shown on purpose).
    let key = crate::helpers::seed_owner(&store).await;
    let mut served = Serve::new(&db)
        .env("GATEHOUSE__LOG__FORMAT", "json")
        .env("GATEHOUSE__LOG__FILTER", "debug")
        .start()
        .await;
    let app = app_for(&served, db).await;
    let secrets = hand_out_secrets(&app, key).await;
    served.stop().await;
    let out = served.output_bytes();
    let text = String::from_utf8_lossy(&out);
    // The capture is real: debug lines of this run, including the failed sign-ins.
    assert!(text.contains("sign-in failed"), "{backend:?}: {text}");
    assert!(text.contains("wrong client secret"), "{text}");
    let leaked = found_in(&out, &secrets);
    assert!(leaked.is_empty(), "secrets in the logs: {leaked:?}");
}

both_backends!(
    signing_keys_and_the_cookie_secret_are_sealed_at_rest,
    secrets_stored_in_clear_by_an_older_version_are_sealed_on_start,
);

async fn server_secret(app: &TestApp) -> String {
    let sql = "SELECT value FROM server_secrets WHERE name = 'cookie_mac'";
    match &app.store {
        gatehouse::storage::Store::Postgres(pool) => {
            sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
        }
        gatehouse::storage::Store::Sqlite(pool) => {
            sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
        }
    }
}

/// A second instance on `app`'s database with another key-encryption key.
async fn start_with_kek(app: &TestApp, kek: Kek) -> Result<App, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = app.config.clone();
    config.keys.kek = kek;
    App::from_parts(config, app.store.clone(), app.clock.clone(), listener)
        .await
        .map_err(|e| e.to_string())
}

async fn signing_keys_and_the_cookie_secret_are_sealed_at_rest(app: TestApp) {
    let keys = app.store.list_signing_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].private_key.starts_with("kek1:"), "sealed");
    assert!(server_secret(&app).await.starts_with("kek1:"));
    // The key opens only under its own KEK; another one stops the start, naming the setting.
    let other = Kek::new("a-different-key-encryption-key-0123456789").unwrap();
    let err = start_with_kek(&app, other).await.err().expect("refused");
    assert!(err.contains("keys.encryption_key"), "{err}");
    assert!(
        start_with_kek(&app, app.config.keys.kek.clone())
            .await
            .is_ok()
    );
}

async fn secrets_stored_in_clear_by_an_older_version_are_sealed_on_start(app: TestApp) {
    // What an older Gatehouse left: the private key and the cookie secret in clear.
    let kek = app.config.keys.kek.clone();
    let key = app.store.list_signing_keys().await.unwrap().remove(0);
    let der = kek
        .open(&format!("signing-key:{}", key.kid), &key.private_key)
        .unwrap()
        .unwrap();
    let clear = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der);
    app.store
        .set_signing_private_key(&key.kid, &clear)
        .await
        .unwrap();
    let cookie = kek
        .open("server-secret:cookie_mac", &server_secret(&app).await)
        .unwrap()
        .unwrap();
    let cookie = String::from_utf8(cookie).unwrap();
    app.store
        .set_shared_secret("cookie_mac", &cookie)
        .await
        .unwrap();

    let restarted = start_with_kek(&app, kek.clone()).await.expect("starts");
    let resealed = app.store.list_signing_keys().await.unwrap().remove(0);
    assert!(resealed.private_key.starts_with("kek1:"));
    assert_eq!(
        kek.open(&format!("signing-key:{}", key.kid), &resealed.private_key)
            .unwrap()
            .unwrap(),
        der,
        "the same key, now sealed: tokens it signed stay valid"
    );
    assert_eq!(restarted.state().keys.current().signing().kid, key.kid);
    let stored = server_secret(&app).await;
    assert!(stored.starts_with("kek1:"));
    assert_eq!(
        kek.open("server-secret:cookie_mac", &stored)
            .unwrap()
            .unwrap(),
        cookie.as_bytes(),
        "the same cookie secret: sessions survive the upgrade"
    );
}
