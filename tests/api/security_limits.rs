//! SECURITY.md LIMIT-02..04 and the `/mcp` per-token limit: over a limit the answer is
//! 429 with `Retry-After` (never 401), forwarding headers move nothing unless they come
//! from a trusted proxy, and the counters are shared by instances on one database.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Backend, TestApp, spawn_app_with};
use crate::mcp::{pat, rpc};
use crate::oauth_helpers::*;

both_backends!(
    limit_01_oversized_inputs_get_4xx_and_the_server_keeps_serving,
    limit_02_sign_in_brute_force_is_throttled_whatever_x_forwarded_for_says,
    limit_02_wrong_api_keys_are_throttled_per_address,
    limit_03_client_secret_brute_force_gets_429_within_n,
    limit_04_registration_flood_gets_429_but_claude_re_registering_does_not,
    client_auth_failures_on_one_instance_count_on_another,
);

/// SECURITY.md's probe size: a limit must bite within this many attempts.
const PROBE: usize = 30;

/// A sign-in page for a fresh public client: its `request` and `csrf` fields.
async fn sign_in_form(app: &TestApp) -> (String, String) {
    let client_id = register_public(app, CB).await;
    let p = pkce();
    let q = authorize_query(&client_id, CB, &p.challenge, &[("scope", "account:read")]);
    let res = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(html.contains("action=\"/authorize/login\""), "{html}");
    (hidden(&html, "request"), hidden(&html, "csrf"))
}

async fn post_login(
    app: &TestApp,
    form: &(String, String),
    fields: &[(&str, &str)],
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut body = vec![("request", form.0.as_str()), ("csrf", form.1.as_str())];
    body.extend_from_slice(fields);
    let mut req = app.client.post(app.url("/authorize/login")).form(&body);
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    req.send().await.unwrap()
}

fn retry_after(res: &reqwest::Response) -> u64 {
    res.headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", res.headers()))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn limit_02_sign_in_brute_force_is_throttled_whatever_x_forwarded_for_says(app: TestApp) {
    let key = owner_key(&app).await;
    let form = sign_in_form(&app).await;
    let password = "hunter2-wrong-password";
    let mut throttled_at = None;
    for i in 0..PROBE {
        // No proxy is trusted: a new X-Forwarded-For per try must not reset anything.
        let res = post_login(
            &app,
            &form,
            &[("email", "owner@example.com"), ("password", password)],
            Some(&format!("198.51.100.{i}")),
        )
        .await;
        match res.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(retry_after(&res) >= 1);
                let html = res.text().await.unwrap();
                assert!(html.contains("Too many failed attempts"), "{html}");
                assert!(!html.contains(password), "the page echoes the password");
                throttled_at = Some(i);
                break;
            }
            other => panic!("attempt {i}: {other}: {}", res.text().await.unwrap()),
        }
    }
    // Ten per account per 15 minutes, with doubling waits past the first four.
    let at = throttled_at.expect("no 429 within the probe");
    assert!(at <= 10, "throttled only at attempt {at}");

    // While throttled, even a right credential for that account is not tried.
    let res = post_login(
        &app,
        &form,
        &[("email", "owner@example.com"), ("password", "anything")],
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&res);

    // Once the wait has passed a password try is judged again (401, not 429), and the
    // API key (another way in, not this account's password) works.
    app.clock.advance(wait as i64);
    let res = post_login(
        &app,
        &form,
        &[("email", "owner@example.com"), ("password", password)],
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = post_login(&app, &form, &[("api_key", &key)], None).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);

    // Nothing typed is kept: the counters name the account by a digest.
    let buckets = buckets(&app).await;
    assert!(
        buckets.iter().any(|b| b.starts_with("sign_in:account:")),
        "{buckets:?}"
    );
    for b in &buckets {
        assert!(!b.contains("owner") && !b.contains(password), "{b}");
    }
}

async fn buckets(app: &TestApp) -> Vec<String> {
    let sql = "SELECT bucket FROM rate_counters";
    match &app.store {
        gatehouse::storage::Store::Postgres(pool) => {
            sqlx::query_scalar(sql).fetch_all(pool).await.unwrap()
        }
        gatehouse::storage::Store::Sqlite(pool) => {
            sqlx::query_scalar(sql).fetch_all(pool).await.unwrap()
        }
    }
}

async fn limit_02_wrong_api_keys_are_throttled_per_address(app: TestApp) {
    owner_key(&app).await;
    let form = sign_in_form(&app).await;
    let mut throttled_at = None;
    for i in 0..PROBE {
        let guess = format!("gh_key_{i:040}");
        let res = post_login(
            &app,
            &form,
            &[("api_key", &guess)],
            Some(&format!("203.0.113.{i}, 10.0.0.{i}")),
        )
        .await;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry_after(&res) >= 1);
            throttled_at = Some(i);
            break;
        }
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    assert_eq!(
        throttled_at,
        Some(20),
        "20 failures per address per 15 minutes"
    );
}

/// With the load balancer trusted, its X-Forwarded-For names the client: entries the
/// client prepended do not count, and other clients behind the proxy are not affected.
async fn trusted_proxy_names_the_client(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.server.trusted_proxies = gatehouse::limits::TrustedProxies::parse("127.0.0.1").unwrap();
    })
    .await
    else {
        return;
    };
    owner_key(&app).await;
    let form = sign_in_form(&app).await;
    for i in 0..20 {
        let res = post_login(
            &app,
            &form,
            &[("api_key", "gh_key_wrong")],
            Some(&format!("192.0.2.{i}, 203.0.113.7")),
        )
        .await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let res = post_login(
        &app,
        &form,
        &[("api_key", "gh_key_wrong")],
        Some("192.0.2.99, 203.0.113.7"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let res = post_login(
        &app,
        &form,
        &[("api_key", "gh_key_wrong")],
        Some("203.0.113.8"),
    )
    .await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "another client behind the proxy"
    );
}

mod limit_02_trusted_proxy_names_the_client {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::trusted_proxy_names_the_client(super::Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::trusted_proxy_names_the_client(super::Backend::Postgres).await
    }
}

/// A confidential client registered the way a script would.
async fn confidential(app: &TestApp) -> (String, String) {
    let (status, body) = register(
        app,
        json!({ "client_name": "script", "redirect_uris": [CB],
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["authorization_code", "refresh_token"] }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (
        body["client_id"].as_str().unwrap().to_owned(),
        body["client_secret"].as_str().unwrap().to_owned(),
    )
}

async fn token_with_basic(
    base: &str,
    app: &TestApp,
    id: &str,
    secret: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(format!("{base}/token"))
        .basic_auth(id, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", "gh_code_not_a_real_one"),
            ("redirect_uri", CB),
            ("code_verifier", &"v".repeat(43)),
        ]);
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    req.send().await.unwrap()
}

async fn limit_03_client_secret_brute_force_gets_429_within_n(app: TestApp) {
    let (id, secret) = confidential(&app).await;
    let mut throttled_at = None;
    for i in 0..PROBE {
        let guess = format!("guess-{i}");
        let res =
            token_with_basic(&app.addr, &app, &id, &guess, Some(&format!("192.0.2.{i}"))).await;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            let wait = retry_after(&res);
            assert!(wait >= 1);
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"], "temporarily_unavailable", "{body}");
            throttled_at = Some(i);
            break;
        }
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    assert_eq!(
        throttled_at,
        Some(10),
        "10 failures per client per 10 minutes"
    );

    // The right secret is refused too while the client is locked (or guessing would go on).
    let res = token_with_basic(&app.addr, &app, &id, &secret, None).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&res);
    // Another client from the same address is not locked out by this one's failures.
    let (other, other_secret) = confidential(&app).await;
    let res = token_with_basic(&app.addr, &app, &other, &other_secret, None).await;
    assert_eq!(
        res.status(),
        StatusCode::BAD_REQUEST,
        "a bad code, judged normally: {}",
        res.text().await.unwrap()
    );

    // After the wait, the right secret authenticates (and the made-up code is judged).
    app.clock.advance(wait as i64);
    let res = token_with_basic(&app.addr, &app, &id, &secret, None).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
}

async fn limit_04_registration_flood_gets_429_but_claude_re_registering_does_not(app: TestApp) {
    // Claude registers again on every connection, with the same metadata: those reuse
    // one client and never count, however many there are.
    let first = register_public(&app, CB).await;
    for _ in 0..150 {
        assert_eq!(register_public(&app, CB).await, first);
    }
    // New clients from one address: 100 an hour.
    let mut throttled_at = None;
    for i in 0..120 {
        let (status, body) = register(
            &app,
            json!({ "client_name": format!("flood {i}"), "redirect_uris": [CB],
                    "token_endpoint_auth_method": "none" }),
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["error"], "temporarily_unavailable", "{body}");
            throttled_at = Some(i);
            break;
        }
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // The first registration above counted too.
    assert_eq!(throttled_at, Some(99));
    // Nothing was half-written by the refused one.
    let n = app.store.list_clients().await.unwrap().len();
    assert_eq!(n, 100);
}

async fn client_auth_failures_on_one_instance_count_on_another(app: TestApp) {
    let second = app.second_instance().await;
    let (id, _) = confidential(&app).await;
    for i in 0..10 {
        let base = if i % 2 == 0 { &app.addr } else { &second };
        let res = token_with_basic(base, &app, &id, "wrong", None).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    for base in [&app.addr, &second] {
        let res = token_with_basic(base, &app, &id, "wrong", None).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "{base}");
    }
}

/// `/mcp` per token: a burst over the limit gets 429 with Retry-After and a JSON-RPC
/// error (never 401), other tokens are unaffected, the count is shared by instances
/// within a flush interval, and the token works again once the window has slid.
async fn mcp_per_token_limit(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.limits.mcp_per_credential = gatehouse::limits::Rate::parse("6/minute").unwrap();
    })
    .await
    else {
        return;
    };
    owner_key(&app).await;
    let token = pat(&app, "account:read").await;
    let other = pat(&app, "account:read").await;
    let list = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" });
    for i in 0..3 {
        let res = rpc(&app, Some(&token), list.clone()).await;
        assert_eq!(res.status(), StatusCode::OK, "request {i}");
    }
    // Three more on a second instance: it learns this one's three at its first flush.
    let second = app.second_instance().await;
    let on_second = |t: String| {
        let app = &app;
        let second = second.clone();
        let list = list.clone();
        async move {
            app.client
                .post(format!("{second}/mcp"))
                .header("accept", "application/json, text/event-stream")
                .bearer_auth(t)
                .json(&list)
                .send()
                .await
                .unwrap()
        }
    };
    // Let the first instance's counts reach the database (flushes every 50 ms here; a
    // loaded machine can delay one by far more).
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let res = on_second(token.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    for _ in 0..2 {
        assert_eq!(on_second(token.clone()).await.status(), StatusCode::OK);
    }
    let res = on_second(token.clone()).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&res);
    assert!((1..=120).contains(&wait), "{wait}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32000, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rate limit")
    );
    // The first instance has not added anything since, so it has not read the shared
    // total: it lets one more through, and learns the total when it adds that one.
    // (Across instances the limit holds to within one flush interval's requests.)
    let res = rpc(&app, Some(&token), list.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut extra = 0;
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if rpc(&app, Some(&token), list.clone()).await.status() == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        extra += 1;
        assert!(
            started.elapsed().as_secs() < 5,
            "the first instance never learned the total"
        );
    }
    assert!(
        extra <= 2,
        "{extra} more got through before the total was learned"
    );

    assert_eq!(
        rpc(&app, Some(&other), list.clone()).await.status(),
        StatusCode::OK
    );
    app.clock.advance(wait as i64 + 60);
    assert_eq!(
        rpc(&app, Some(&token), list.clone()).await.status(),
        StatusCode::OK
    );
}

mod mcp_requests_over_the_per_token_limit_get_429 {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::mcp_per_token_limit(super::Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::mcp_per_token_limit(super::Backend::Postgres).await
    }
}

async fn limit_01_oversized_inputs_get_4xx_and_the_server_keeps_serving(app: TestApp) {
    let key = owner_key(&app).await;
    let token = pat(&app, "account:read").await;
    let refused = |status: StatusCode, what: &str| {
        assert!(status.is_client_error(), "{what}: {status}");
    };
    // Registration: a 1 MiB client_name, and 500 redirect URIs.
    let res = app
        .client
        .post(app.url("/register"))
        .json(&json!({ "client_name": "n".repeat(1 << 20), "redirect_uris": [CB] }))
        .send()
        .await
        .unwrap();
    refused(res.status(), "1 MiB client_name");
    // And a name just under the body limit but over the 200-character cap.
    let (status, body) = register(
        &app,
        json!({ "client_name": "n".repeat(201), "redirect_uris": [CB] }),
    )
    .await;
    refused(status, "201-character client_name");
    assert_eq!(body["error"], "invalid_client_metadata", "{body}");
    let uris: Vec<String> = (0..500)
        .map(|i| format!("https://app{i}.example/cb"))
        .collect();
    let (status, body) = register(
        &app,
        json!({ "client_name": "many", "redirect_uris": uris }),
    )
    .await;
    refused(status, "500 redirect_uris");
    assert_eq!(body["error"], "invalid_redirect_uri", "{body}");
    // Token endpoint: a 1 MiB code.
    let res = app
        .client
        .post(app.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &"c".repeat(1 << 20)),
            ("redirect_uri", CB),
            ("code_verifier", &"v".repeat(43)),
            ("client_id", "x"),
        ])
        .send()
        .await
        .unwrap();
    refused(res.status(), "1 MiB code");
    // MCP: an 8 MiB body. The server answers 413 from the Content-Length alone and
    // closes, so a client still writing the body sees a broken pipe: send the head only
    // and read the answer.
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.addr.trim_start_matches("http://"),
        8 << 20
    );
    let mut conn = tokio::net::TcpStream::connect(app.addr.trim_start_matches("http://"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut conn, head.as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::io::AsyncReadExt::read(&mut conn, &mut answer)
        .await
        .unwrap();
    let line = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");
    // Authorize: a 48 KiB query.
    let res = app
        .client
        .get(app.url(&format!(
            "/authorize?client_id=x&state={}",
            "s".repeat(48 << 10)
        )))
        .send()
        .await;
    match res {
        Ok(r) => refused(r.status(), "48 KiB query"),
        // hyper may close the connection on a request head over its limit: also a refusal.
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
    }
    // Still serving, and still whole: the owner signs in and connects.
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        rpc(
            &app,
            Some(&token),
            json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" })
        )
        .await
        .status(),
        StatusCode::OK
    );
    let client_id = register_public(&app, CB).await;
    let p = pkce();
    let q = authorize_query(&client_id, CB, &p.challenge, &[("scope", "account:read")]);
    let redirect = sign_in_and_approve(&app, &q, &key).await;
    assert!(query_param(&redirect, "code").is_some());
}
