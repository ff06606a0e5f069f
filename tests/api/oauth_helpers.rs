//! Drives the OAuth flow the way Claude.ai does: register, sign in, consent, token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::TestApp;

pub const CB: &str = "https://claude.ai/api/mcp/auth_callback";

pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

pub fn pkce() -> Pkce {
    let verifier = gatehouse::crypto::random::base62(64);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    Pkce {
        verifier,
        challenge,
    }
}

/// Creates the first owner (org `default`) and returns their API key.
pub async fn owner_key(app: &TestApp) -> String {
    crate::helpers::seed_owner(&app.store).await
}

pub async fn register(app: &TestApp, body: Value) -> (StatusCode, Value) {
    let res = app
        .client
        .post(app.url("/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

pub async fn register_public(app: &TestApp, redirect: &str) -> String {
    let (status, body) = register(
        app,
        serde_json::json!({ "client_name": "Claude", "redirect_uris": [redirect], "token_endpoint_auth_method": "none",
                            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"] }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["client_id"].as_str().unwrap().to_owned()
}

pub fn authorize_query(
    client_id: &str,
    redirect: &str,
    challenge: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", "xyz-state");
    for (k, v) in extra {
        q.append_pair(k, v);
    }
    q.finish()
}

fn unescape(s: &str) -> String {
    s.replace("&#38;", "&")
        .replace("&amp;", "&")
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#60;", "<")
        .replace("&#62;", ">")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// The value of a hidden input in a page.
pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in: {html}"))
        + marker.len();
    let end = start + html[start..].find('"').unwrap();
    unescape(&html[start..end])
}

pub fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location; status {}", res.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

pub fn query_param(url: &str, name: &str) -> Option<String> {
    let parsed = url::Url::parse(url).unwrap();
    parsed
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// GET /authorize, sign in with the API key, approve; returns the final redirect URL.
pub async fn sign_in_and_approve(app: &TestApp, query: &str, api_key: &str) -> String {
    let res = app
        .client
        .get(app.url(&format!("/authorize?{query}")))
        .send()
        .await
        .unwrap();
    if res.status() == StatusCode::SEE_OTHER {
        return location(&res); // signed in and consent remembered
    }
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    if !html.contains("action=\"/authorize/login\"") {
        // Already signed in: this is the consent page.
        return approve_from(app, &format!("/authorize?{query}")).await;
    }
    let res = app
        .client
        .post(app.url("/authorize/login"))
        .form(&[
            ("request", hidden(&html, "request")),
            ("csrf", hidden(&html, "csrf")),
            ("api_key", api_key.to_owned()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let next = location(&res);
    approve_from(app, &next).await
}

/// With a signed-in session, open the consent page at `path` and approve it.
pub async fn approve_from(app: &TestApp, path: &str) -> String {
    let res = app.client.get(app.url(path)).send().await.unwrap();
    if res.status() == StatusCode::SEE_OTHER {
        return location(&res); // consent remembered
    }
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(html.contains("Allow"), "{html}");
    let res = decide(app, &html, "approve").await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    location(&res)
}

/// Submits the consent page `html` with `decision` (`approve` or `deny`).
pub async fn decide(app: &TestApp, html: &str, decision: &str) -> reqwest::Response {
    app.client
        .post(app.url("/authorize"))
        .form(&[
            ("request", hidden(html, "request")),
            ("csrf", hidden(html, "csrf")),
            ("decision", decision.to_owned()),
        ])
        .send()
        .await
        .unwrap()
}

pub async fn token(
    app: &TestApp,
    form: &[(&str, &str)],
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let res = app
        .client
        .post(app.url("/token"))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    (status, res.json().await.unwrap(), headers)
}

/// Everything up to a token response, for a public client on `CB`.
pub struct Flow {
    pub client_id: String,
    pub tokens: Value,
}

pub async fn full_flow(app: &TestApp) -> Flow {
    let key = owner_key(app).await;
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
    let redirect = sign_in_and_approve(app, &q, &key).await;
    let code = query_param(&redirect, "code").expect("code");
    let (status, tokens, _) = token(
        app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CB),
            ("code_verifier", &p.verifier),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    Flow { client_id, tokens }
}

/// The authorization-code exchange of a public client.
pub async fn exchange(
    app: &TestApp,
    client_id: &str,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    token(
        app,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
            ("client_id", client_id),
        ],
    )
    .await
}

/// A refresh-token grant of a public client.
pub async fn refresh_with(
    app: &TestApp,
    client_id: &str,
    refresh_token: &str,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    token(
        app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ],
    )
    .await
}

/// Serves a Client ID Metadata Document on loopback at `path`; returns its URL (the
/// client_id), from which `document` makes the body.
pub async fn serve_metadata_document(
    path: &'static str,
    document: impl Fn(&str) -> Value + Send + 'static,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}{path}",
        listener.local_addr().unwrap().port()
    );
    let body = document(&url);
    let app = axum::Router::new().route(
        path,
        axum::routing::get(move || async move { axum::Json(body) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}
