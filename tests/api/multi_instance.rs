//! Several `gatehouse serve` processes on one PostgreSQL database, as behind a load
//! balancer (issue #6 item 3): a Claude-style flow whose steps alternate between them,
//! concurrent refreshes of one token sent to different instances, revocations on one
//! instance honoured by the others within a second, and a key rotated while they run.
//! PostgreSQL only: SQLite is single-instance.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestDb, cli};
use crate::oauth_helpers::{CB, authorize_query, hidden, pkce, query_param};
use crate::process::Serve;

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap()
}

async fn mcp(client: &reqwest::Client, base: &str, token: &str) -> StatusCode {
    client
        .post(format!("{base}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .bearer_auth(token)
        .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": "whoami" } }))
        .send()
        .await
        .unwrap()
        .status()
}

async fn refresh(
    client: &reqwest::Client,
    base: &str,
    client_id: &str,
    rt: &str,
) -> (StatusCode, Value) {
    let res = client
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", client_id),
        ])
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

/// Waits until every instance refuses `token` at `/mcp`; returns how long that took.
async fn refused_everywhere(client: &reqwest::Client, bases: &[&str], token: &str) -> Duration {
    let start = Instant::now();
    for base in bases {
        while mcp(client, base, token).await != StatusCode::UNAUTHORIZED {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{base} still accepts the token"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_postgres() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store().await;
    store.migrate().await.unwrap();
    let key = crate::helpers::seed_owner(&store).await;
    let first = Serve::new(&db);
    let public = first.base();
    let (a, b, c) = tokio::join!(
        first.start(),
        Serve::new(&db).public_url(&public).start(),
        Serve::new(&db).public_url(&public).start(),
    );
    let (a, b, c) = (a.base.as_str(), b.base.as_str(), c.base.as_str());
    let http = browser();

    // Discovery on A, registration on B.
    let meta: Value = http
        .get(format!("{a}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], public.as_str());
    let reg: Value = http
        .post(format!("{b}/register"))
        .json(&json!({ "client_name": "Claude", "redirect_uris": [CB], "token_endpoint_auth_method": "none",
                       "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = reg["client_id"].as_str().unwrap().to_owned();

    // The sign-in page from C, the sign-in POST to A, the consent page from B and the
    // consent POST to C: the session cookie and CSRF tokens hold across instances.
    let p = pkce();
    let q = authorize_query(
        &client_id,
        CB,
        &p.challenge,
        &[
            ("scope", "account:read offline_access"),
            ("resource", &format!("{public}/mcp")),
        ],
    );
    let html = http
        .get(format!("{c}/authorize?{q}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let res = http
        .post(format!("{a}/authorize/login"))
        .form(&[
            ("request", hidden(&html, "request")),
            ("csrf", hidden(&html, "csrf")),
            ("api_key", key.clone()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let next = res.headers()["location"].to_str().unwrap().to_owned();
    let consent = http
        .get(format!("{b}{next}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(consent.contains("Allow"), "{consent}");
    let res = http
        .post(format!("{c}/authorize"))
        .form(&[
            ("request", hidden(&consent, "request")),
            ("csrf", hidden(&consent, "csrf")),
            ("decision", "approve".into()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let redirect = res.headers()["location"].to_str().unwrap().to_owned();
    let code = query_param(&redirect, "code").expect("code");

    // The token exchange on A; /mcp on B and C; a refresh on C.
    let tokens: Value = http
        .post(format!("{a}/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CB),
            ("code_verifier", &p.verifier),
            ("client_id", &client_id),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    for base in [b, c] {
        assert_eq!(mcp(&http, base, &access).await, StatusCode::OK, "{base}");
    }
    let (status, renewed) = refresh(
        &http,
        c,
        &client_id,
        tokens["refresh_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");

    // Six concurrent refreshes of one token, two per instance: exactly one new pair
    // comes out (retries inside the grace window get that same pair), and it works.
    let rt = renewed["refresh_token"].as_str().unwrap().to_owned();
    let attempts = [a, b, c, a, b, c].map(|base| {
        let http = http.clone();
        let (base, client_id, rt) = (base.to_owned(), client_id.clone(), rt.clone());
        tokio::spawn(async move { refresh(&http, &base, &client_id, &rt).await })
    });
    let mut pairs = std::collections::BTreeSet::new();
    for attempt in attempts {
        let (status, body) = attempt.await.unwrap();
        match status {
            StatusCode::OK => {
                pairs.insert(body["refresh_token"].as_str().unwrap().to_owned());
            }
            StatusCode::BAD_REQUEST => assert_eq!(body["error"], "invalid_grant", "{body}"),
            other => panic!("refresh answered {other}: {body}"),
        }
    }
    assert_eq!(pairs.len(), 1, "one new pair, not {}", pairs.len());
    let newest = pairs.into_iter().next().unwrap();
    let (status, last) = refresh(&http, b, &client_id, &newest).await;
    assert_eq!(status, StatusCode::OK, "{last}");

    // An access token revoked on A is refused by B and C within a second. Both have it
    // cached first, so this measures the change feed, not a first lookup.
    let live = last["access_token"].as_str().unwrap().to_owned();
    for base in [b, c] {
        assert_eq!(mcp(&http, base, &live).await, StatusCode::OK);
    }
    let res = http
        .post(format!("{a}/revoke"))
        .form(&[("token", live.as_str()), ("client_id", &client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let took = refused_everywhere(&http, &[b, c], &live).await;
    println!("access token revoked on A, refused by B and C after {took:?}");
    assert!(took < Duration::from_millis(1000), "took {took:?}");

    // A PAT revoked by the CLI (another process again) likewise.
    let pat = crate::helpers::cli_pat(&db, "default", "owner@example.com", "account:read").await;
    let token = pat["token"].as_str().unwrap().to_owned();
    for base in [a, b, c] {
        assert_eq!(mcp(&http, base, &token).await, StatusCode::OK);
    }
    cli(&db, &["pat", "revoke", pat["id"].as_str().unwrap()], None)
        .await
        .ok();
    let took = refused_everywhere(&http, &[a, b, c], &token).await;
    println!("PAT revoked by the CLI, refused by A, B and C after {took:?}");
    assert!(took < Duration::from_millis(1000), "took {took:?}");

    // A key rotated while they run: a fourth instance starts with the new key and signs
    // with it; B has never seen that kid and verifies the token after a reload.
    let old_kid = http
        .get(format!("{b}/jwks"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["keys"][0]["kid"]
        .clone();
    cli(&db, &["keys", "rotate"], None).await.ok();
    let d = Serve::new(&db).public_url(&public).start().await;
    let (status, from_d) = refresh(
        &http,
        &d.base,
        &client_id,
        last["refresh_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{from_d}");
    let signed_by_d = from_d["access_token"].as_str().unwrap();
    let header: Value = {
        use base64::Engine;
        let head = signed_by_d.split('.').next().unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(head)
                .unwrap(),
        )
        .unwrap()
    };
    assert_ne!(header["kid"], old_kid, "D signs with the rotated-in key");
    assert_eq!(mcp(&http, b, signed_by_d).await, StatusCode::OK);
    let jwks: Value = http
        .get(format!("{b}/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&Value> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["kid"])
        .collect();
    assert!(
        kids.contains(&&old_kid) && kids.contains(&&header["kid"]),
        "{jwks}"
    );
}
