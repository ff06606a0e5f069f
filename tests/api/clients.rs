//! The client compatibility suite: each real MCP client's documented flow (from
//! `../shared/guides/CLIENTS.md`), replayed as the client sends it, from the first
//! unauthenticated probe through discovery, registration, consent, token, refresh and a
//! `tools/call`. `docs/CLIENTS.md` is the matrix these tests stand behind.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, spawn_app_with};
use crate::oauth_helpers::{
    approve_from, location, owner_key, pkce, query_param, serve_metadata_document,
    sign_in_and_approve, token,
};

macro_rules! clients {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(crate::helpers::Backend::Postgres).await
            }
        }
    )+};
}

clients!(
    claude_ai_by_dynamic_registration,
    claude_ai_by_metadata_document_on_both_hosts,
    claude_code_by_metadata_document_and_by_registration_at_every_login,
    claude_mixes_revisions_and_skips_initialize,
    chatgpt_prefers_private_key_jwt_and_gets_none,
    codex_registers_127_0_0_1_and_authorizes_localhost,
    vs_code_and_copilot_cli_use_another_port_than_registered,
    cursor_registers_three_redirects_one_an_app_scheme,
    gemini_cli_uses_its_fixed_loopback_port,
    unauthenticated_probes_get_a_challenge_never_200,
    consent_is_remembered_only_for_https_redirects,
    every_built_in_tool_is_one_every_client_accepts,
    results_over_a_megabyte_are_cut_with_a_note,
);

/// How a client gets its `client_id`.
enum Registration {
    /// Dynamic client registration with this exact body.
    Dcr(Value),
    /// A metadata document Gatehouse has built in (Claude's).
    BuiltIn(&'static str),
    /// A metadata document the client publishes, served here on loopback at this path;
    /// its body is made from its own URL.
    Document(&'static str, fn(&str) -> Value),
}

/// The MCP conversation after the token.
#[derive(Clone, Copy)]
enum Wire {
    /// `initialize`, `notifications/initialized`, `tools/list`, `tools/call` at a
    /// legacy revision, the version in a header after the handshake.
    Legacy(&'static str),
    /// 2026-07-28: `server/discover`, then `tools/call`.
    Modern,
    /// `server/discover`, then the legacy handshake anyway (Claude Code 2.1.280,
    /// Copilot CLI), then legacy calls.
    DiscoverThenInitialize,
}

struct Profile {
    registration: Registration,
    /// The redirect sent on `/authorize` and `/token` (for loopback clients, with the
    /// port the client happened to get).
    redirect: String,
    scope: Option<&'static str>,
    /// Appended to the protected resource's URL in `resource` (Claude has sent a
    /// trailing slash).
    resource_suffix: &'static str,
    /// Whether `resource` is sent again on the token requests (ChatGPT echoes it).
    resource_on_token: bool,
    wire: Wire,
}

/// What one run through a profile produced.
struct Connected {
    client_id: String,
    access_token: String,
}

/// A port no one listens on, standing in for the one the client's callback listener got.
fn ephemeral_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

async fn app(backend: Backend) -> Option<(TestApp, String)> {
    let app = spawn_app_with(backend, |c| c.oauth.cimd_allow_private_addresses = true).await?;
    let key = owner_key(&app).await;
    Some((app, key))
}

async fn get_json(app: &TestApp, url: &str) -> Value {
    let res = app.client.get(url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "GET {url}");
    res.json().await.unwrap()
}

/// What a client learns before it signs anyone in: the challenge of an unauthenticated
/// `initialize`, the protected resource's metadata it names, and the authorization
/// server's metadata.
struct Discovered {
    resource: String,
    metadata: Value,
}

async fn discover(app: &TestApp) -> Discovered {
    let (status, headers, _) = mcp(
        app,
        None,
        &[],
        json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "probe", "version": "1" } } }),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenge = headers["www-authenticate"].to_str().unwrap().to_owned();
    let prm_url = challenge
        .split("resource_metadata=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no resource_metadata in {challenge}"));
    assert!(
        prm_url.starts_with(&format!("{}/", app.addr)),
        "absolute: {prm_url}"
    );
    let prm = get_json(app, prm_url).await;
    let issuer = prm["authorization_servers"][0].as_str().unwrap();
    let metadata = get_json(
        app,
        &format!("{issuer}/.well-known/oauth-authorization-server"),
    )
    .await;
    // What Claude keys its choice of a metadata document on, and what Codex needs.
    assert_eq!(metadata["client_id_metadata_document_supported"], true);
    assert!(
        metadata["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("none"))
    );
    assert_eq!(
        metadata["authorization_response_iss_parameter_supported"],
        true
    );
    assert_eq!(
        metadata["code_challenge_methods_supported"],
        json!(["S256"])
    );
    Discovered {
        resource: prm["resource"].as_str().unwrap().to_owned(),
        metadata,
    }
}

/// Replays a client's flow; returns its client id and its refreshed access token, after
/// checking that the token serves a `tools/call`.
async fn connect(app: &TestApp, key: &str, p: &Profile) -> Connected {
    let found = discover(app).await;
    let client_id = match &p.registration {
        Registration::Dcr(body) => {
            let endpoint = found.metadata["registration_endpoint"].as_str().unwrap();
            let res = app.client.post(endpoint).json(body).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::CREATED);
            let reg: Value = res.json().await.unwrap();
            assert_eq!(
                reg["redirect_uris"], body["redirect_uris"],
                "every URI kept"
            );
            reg["client_id"].as_str().unwrap().to_owned()
        }
        Registration::BuiltIn(id) => (*id).to_owned(),
        Registration::Document(path, doc) => serve_metadata_document(path, *doc).await,
    };
    let pk = pkce();
    let resource = format!("{}{}", found.resource, p.resource_suffix);
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", &p.redirect)
        .append_pair("code_challenge", &pk.challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", "client-state")
        .append_pair("resource", &resource);
    if let Some(s) = p.scope {
        q.append_pair("scope", s);
    }
    let redirect = sign_in_and_approve(app, &q.finish(), key).await;
    assert!(
        redirect.starts_with(&format!("{}?", p.redirect)),
        "{redirect}"
    );
    assert_eq!(
        query_param(&redirect, "iss").as_deref(),
        Some(app.addr.as_str())
    );
    assert_eq!(
        query_param(&redirect, "state").as_deref(),
        Some("client-state")
    );
    let code = query_param(&redirect, "code").expect("a code");

    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", p.redirect.as_str()),
        ("code_verifier", pk.verifier.as_str()),
        ("client_id", client_id.as_str()),
    ];
    if p.resource_on_token {
        form.push(("resource", resource.as_str()));
    }
    let (status, tokens, headers) = token(app, &form).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(tokens["token_type"], "Bearer");
    let refresh = tokens["refresh_token"]
        .as_str()
        .expect("a refresh token without asking for offline_access");

    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh),
        ("client_id", client_id.as_str()),
    ];
    if p.resource_on_token {
        form.push(("resource", resource.as_str()));
    }
    let (status, refreshed, _) = token(app, &form).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_ne!(
        refreshed["refresh_token"], tokens["refresh_token"],
        "rotated"
    );
    let access_token = refreshed["access_token"].as_str().unwrap().to_owned();
    call_whoami(app, &access_token, p.wire).await;
    Connected {
        client_id,
        access_token,
    }
}

/// POST /mcp as a client does; the body parsed from JSON or from a single SSE event.
async fn mcp(
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
    let json_text = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(&text);
    let value = serde_json::from_str(json_text).unwrap_or(Value::Null);
    (status, headers, value)
}

fn modern_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": { "name": "client", "version": "1" },
    })
}

/// A 2026-07-28 request under the header version `header`.
async fn modern(
    app: &TestApp,
    token: &str,
    header: &str,
    method: &str,
    mut params: Value,
) -> (StatusCode, Value) {
    params["_meta"] = modern_meta();
    let name = params["name"].as_str().map(str::to_owned);
    let mut headers = vec![("mcp-protocol-version", header), ("mcp-method", method)];
    if let Some(n) = &name {
        headers.push(("mcp-name", n));
    }
    let body = json!({ "jsonrpc": "2.0", "id": 7, "method": method, "params": params });
    let (status, _, body) = mcp(app, Some(token), &headers, body).await;
    (status, body)
}

async fn legacy_handshake(app: &TestApp, token: &str, version: &str) {
    let (status, _, body) = mcp(
        app,
        Some(token),
        &[],
        json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {}, "clientInfo": { "name": "client", "version": "1" } } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"]["protocolVersion"], version);
    let (status, _, _) = mcp(
        app,
        Some(token),
        &[("mcp-protocol-version", version)],
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

async fn legacy_calls(app: &TestApp, token: &str, version: &str) {
    let h = [("mcp-protocol-version", version)];
    let (status, _, list) = mcp(
        app,
        Some(token),
        &h,
        json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(
        list["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "whoami")
    );
    let (status, _, call) = mcp(
        app,
        Some(token),
        &h,
        json!({ "jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": { "name": "whoami", "arguments": {} } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{call}");
    assert_eq!(call["result"]["isError"], false, "{call}");
}

async fn call_whoami(app: &TestApp, token: &str, wire: Wire) {
    match wire {
        Wire::Legacy(v) => {
            legacy_handshake(app, token, v).await;
            legacy_calls(app, token, v).await;
        }
        Wire::Modern => {
            let (status, body) =
                modern(app, token, "2026-07-28", "server/discover", json!({})).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let (status, body) = modern(
                app,
                token,
                "2026-07-28",
                "tools/call",
                json!({ "name": "whoami", "arguments": {} }),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["result"]["isError"], false, "{body}");
            assert_eq!(body["result"]["resultType"], "complete", "{body}");
        }
        Wire::DiscoverThenInitialize => {
            let (status, body) =
                modern(app, token, "2026-07-28", "server/discover", json!({})).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            legacy_handshake(app, token, "2025-11-25").await;
            legacy_calls(app, token, "2025-11-25").await;
        }
    }
}

fn public_dcr(name: &str, redirects: &[&str]) -> Value {
    json!({
        "client_name": name,
        "redirect_uris": redirects,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
}

async fn claude_ai_by_dynamic_registration(backend: Backend) {
    let Some((app, key)) = app(backend).await else {
        return;
    };
    let mut body = public_dcr("Claude", &["https://claude.ai/api/mcp/auth_callback"]);
    body["scope"] = json!("claudeai");
    let profile = Profile {
        registration: Registration::Dcr(body),
        redirect: "https://claude.ai/api/mcp/auth_callback".into(),
        scope: Some("claudeai"),
        resource_suffix: "/",
        resource_on_token: false,
        wire: Wire::Legacy("2025-11-25"),
    };
    connect(&app, &key, &profile).await;
}

async fn claude_ai_by_metadata_document_on_both_hosts(backend: Backend) {
    let Some((app, key)) = app(backend).await else {
        return;
    };
    for (id, redirect) in [
        (
            "https://claude.ai/oauth/mcp-oauth-client-metadata",
            "https://claude.ai/api/mcp/auth_callback",
        ),
        (
            "https://claude.com/oauth/mcp-oauth-client-metadata",
            "https://claude.com/api/mcp/auth_callback",
        ),
    ] {
        let profile = Profile {
            registration: Registration::BuiltIn(id),
            redirect: redirect.into(),
            scope: None,
            resource_suffix: "",
            resource_on_token: false,
            wire: Wire::Modern,
        };
        let c = connect(&app, &key, &profile).await;
        assert_eq!(c.client_id, id);
    }
}

async fn claude_code_by_metadata_document_and_by_registration_at_every_login(backend: Backend) {
    let Some((app, key)) = app(backend).await else {
        return;
    };
    // The document lists port-less redirects; the real one has the listener's port and
    // always says localhost.
    let profile = Profile {
        registration: Registration::BuiltIn("https://claude.ai/oauth/claude-code-client-metadata"),
        redirect: format!("http://localhost:{}/callback", ephemeral_port()),
        scope: None,
        resource_suffix: "",
        resource_on_token: false,
        wire: Wire::DiscoverThenInitialize,
    };
    connect(&app, &key, &profile).await;

    // Without the document: a new registration at every login, each with its own port.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let redirect = format!("http://localhost:{}/callback", ephemeral_port());
        let profile = Profile {
            registration: Registration::Dcr(public_dcr("Claude Code (gatehouse)", &[&redirect])),
            redirect,
            scope: None,
            resource_suffix: "",
            resource_on_token: false,
            wire: Wire::DiscoverThenInitialize,
        };
        clients.push(connect(&app, &key, &profile).await);
    }
    assert_ne!(clients[0].client_id, clients[1].client_id);
    // The first login's token still works: a second registration orphans nothing live.
    call_whoami(&app, &clients[0].access_token, Wire::Legacy("2025-11-25")).await;
}

async fn claude_mixes_revisions_and_skips_initialize(backend: Backend) {
    let Some((app, key)) = app(backend).await else {
        return;
    };
    let profile = Profile {
        registration: Registration::BuiltIn("https://claude.ai/oauth/mcp-oauth-client-metadata"),
        redirect: "https://claude.ai/api/mcp/auth_callback".into(),
        scope: None,
        resource_suffix: "",
        resource_on_token: false,
        wire: Wire::DiscoverThenInitialize,
    };
    let c = connect(&app, &key, &profile).await;
    let t = &c.access_token;
    // Later: server/discover and tools/call with no initialize, under claude.ai's
    // legacy header over a 2026-07-28 body. Served as 2026-07-28.
    let (status, body) = modern(&app, t, "2025-11-25", "server/discover", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["result"]["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("2026-07-28")),
        "{body}"
    );
    let (status, body) = modern(
        &app,
        t,
        "2025-11-25",
        "tools/call",
        json!({ "name": "whoami", "arguments": {} }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"]["resultType"], "complete", "{body}");
    assert_eq!(body["result"]["isError"], false, "{body}");
    // Any other disagreement stays an error.
    for header in ["2026-07-28-RC", "1999-01-01"] {
        let (status, body) = modern(&app, t, header, "tools/list", json!({})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{header}: {body}");
        assert_eq!(body["error"]["code"], -32020, "{body}");
    }
}

/// ChatGPT's live document: prefers `private_key_jwt`, lists `none` too.
fn chatgpt_document(url: &str) -> Value {
    json!({
        "client_id": url,
        "client_name": "ChatGPT",
        "redirect_uris": ["https://chatgpt.com/connector/oauth/cb_4f2a9e", "https://chatgpt.com/connector_platform_oauth_redirect"],
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
        "jwks_uri": "https://chatgpt.com/oauth/jwks.json",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "application_type": "web",
    })
}

async fn chatgpt_prefers_private_key_jwt_and_gets_none(backend: Backend) {
    let Some((app, key)) = app(backend).await else {
        return;
    };
    let profile = Profile {
        registration: Registration::Document("/oauth/1c9d/client.json", chatgpt_document),
        redirect: "https://chatgpt.com/connector/oauth/cb_4f2a9e".into(),
        scope: None,
        resource_suffix: "",
        resource_on_token: true,
        wire: Wire::Legacy("2025-06-18"),
    };
    connect(&app, &key, &profile).await;
    // A document that can only authenticate with a key is refused, with a page.
    let id = serve_metadata_document("/oauth/jwt-only/client.json", |url| {
        json!({ "client_id": url, "redirect_uris": ["https://chatgpt.com/connector/oauth/x"],
                "token_endpoint_auth_method": "private_key_jwt" })
    })
    .await;
    let pk = pkce();
    let q = crate::oauth_helpers::authorize_query(
        &id,
        "https://chatgpt.com/connector/oauth/x",
        &pk.challenge,
        &[],
    );
    let res = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

async fn codex_registers_127_0_0_1_and_authorizes_localhost(backend: Backend) {
    let Some((app, key)) = app(backend).await else {
        return;
    };
    let port = ephemeral_port();
    // callback_id: base64url(SHA-256(server URL)[:9]), a fixed-looking path segment.
    let registered = format!("http://127.0.0.1:{port}/callback/Qm9vZ2xlMTIz");
    let mut body = public_dcr("Codex", &[&registered]);
    body["application_type"] = json!("native");
    let profile = Profile {
        registration: Registration::Dcr(body),
        redirect: format!("http://localhost:{port}/callback/Qm9vZ2xlMTIz"),
        scope: Some("account:read"),
        resource_suffix: "",
        resource_on_token: true,
        wire: Wire::Modern,
    };
    connect(&app, &key, &profile).await;
}

fn copilot_cli_document(url: &str) -> Value {
    json!({
        "client_id": url,
        "client_name": "GitHub Copilot CLI",
        "application_type": "native",
        "redirect_uris": ["http://127.0.0.1:33418/"],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    })
}

async fn vs_code_and_copilot_cli_use_another_port_than_registered(backend: Backend) {
    let Some((app, key)) = app(backend).await else {
        return;
    };
    let vs_code = public_dcr(
        "Visual Studio Code",
        &[
            "https://insiders.vscode.dev/redirect",
            "https://vscode.dev/redirect",
            "http://127.0.0.1/",
            "http://127.0.0.1:33418/",
        ],
    );
    let profile = Profile {
        registration: Registration::Dcr(vs_code),
        redirect: format!("http://127.0.0.1:{}/", ephemeral_port()),
        scope: None,
        resource_suffix: "",
        resource_on_token: false,
        wire: Wire::Legacy("2025-11-25"),
    };
    connect(&app, &key, &profile).await;
    let profile = Profile {
        registration: Registration::Document(
            "/copilot/cli/client-metadata.json",
            copilot_cli_document,
        ),
        redirect: format!("http://127.0.0.1:{}/", ephemeral_port()),
        scope: None,
        resource_suffix: "",
        resource_on_token: false,
        wire: Wire::DiscoverThenInitialize,
    };
    connect(&app, &key, &profile).await;
}

const CURSOR_APP: &str = "cursor://anysphere.cursor-mcp/oauth/callback";

fn cursor_dcr() -> Value {
    public_dcr(
        "Cursor",
        &[
            CURSOR_APP,
            "https://www.cursor.com/agents/mcp/oauth/callback",
            "http://localhost:8787/callback",
        ],
    )
}

async fn cursor_registers_three_redirects_one_an_app_scheme(backend: Backend) {
    let Some((app, key)) = app(backend).await else {
        return;
    };
    let profile = Profile {
        registration: Registration::Dcr(cursor_dcr()),
        redirect: CURSOR_APP.into(),
        scope: None,
        resource_suffix: "",
        resource_on_token: false,
        wire: Wire::Legacy("2025-06-18"),
    };
    connect(&app, &key, &profile).await;
    // Its background agents come back on the https callback of such a registration.
    let profile = Profile {
        registration: Registration::Dcr(cursor_dcr()),
        redirect: "https://www.cursor.com/agents/mcp/oauth/callback".into(),
        scope: None,
        resource_suffix: "",
        resource_on_token: false,
        wire: Wire::Legacy("2025-06-18"),
    };
    connect(&app, &key, &profile).await;
    // An app scheme is for public clients only: a confidential client with one is refused.
    let mut confidential = cursor_dcr();
    confidential["token_endpoint_auth_method"] = json!("client_secret_basic");
    let (status, body) = crate::oauth_helpers::register(&app, confidential).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_redirect_uri", "{body}");
    // Schemes a browser handles itself are never an app's.
    for uri in ["javascript://x/%0aalert(1)", "data://x/y", "file:///tmp/cb"] {
        let (status, body) = crate::oauth_helpers::register(&app, public_dcr("x", &[uri])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body["error"], "invalid_redirect_uri", "{body}");
    }
}

async fn gemini_cli_uses_its_fixed_loopback_port(backend: Backend) {
    let Some((app, key)) = app(backend).await else {
        return;
    };
    let redirect = "http://localhost:7777/oauth/callback";
    let profile = Profile {
        registration: Registration::Dcr(public_dcr("Gemini CLI MCP Client", &[redirect])),
        redirect: redirect.into(),
        scope: None,
        resource_suffix: "",
        resource_on_token: false,
        wire: Wire::Legacy("2025-11-25"),
    };
    connect(&app, &key, &profile).await;
}

async fn unauthenticated_probes_get_a_challenge_never_200(backend: Backend) {
    let Some((app, _)) = app(backend).await else {
        return;
    };
    let probes = [
        (
            vec![],
            json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "claude-ai", "version": "0.1.0" } } }),
        ),
        (
            vec![
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "server/discover"),
            ],
            json!({ "jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": { "_meta": modern_meta() } }),
        ),
        (
            vec![],
            json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" }),
        ),
    ];
    for (headers, body) in probes {
        let (status, h, _) = mcp(&app, None, &headers, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let challenge = h["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer ")
                && challenge.contains(&format!(
                    "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
                    app.addr
                ))
                && challenge.contains("scope=\"account:read account:write\""),
            "{challenge}"
        );
    }
}

/// The first response of `/authorize` for an already signed-in person.
async fn authorize_once(app: &TestApp, client_id: &str, redirect: &str) -> reqwest::Response {
    let pk = pkce();
    let q = crate::oauth_helpers::authorize_query(client_id, redirect, &pk.challenge, &[]);
    app.client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap()
}

async fn consent_is_remembered_only_for_https_redirects(backend: Backend) {
    let Some((app, key)) = app(backend).await else {
        return;
    };
    let claude = "https://claude.ai/oauth/mcp-oauth-client-metadata";
    let claude_cb = "https://claude.ai/api/mcp/auth_callback";
    let code = "https://claude.ai/oauth/claude-code-client-metadata";
    let pk = pkce();
    let q = crate::oauth_helpers::authorize_query(claude, claude_cb, &pk.challenge, &[]);
    sign_in_and_approve(&app, &q, &key).await;
    // An https redirect: the remembered consent answers without a page.
    let res = authorize_once(&app, claude, claude_cb).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(location(&res).starts_with(claude_cb));

    // Loopback on any of its three hosts and any port, and an app scheme: approved once,
    // they still see the page every time, with Deny beside Allow.
    let cursor = crate::oauth_helpers::register(&app, cursor_dcr()).await.1["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let on_device = [
        (
            code,
            format!("http://localhost:{}/callback", ephemeral_port()),
        ),
        (
            code,
            format!("http://127.0.0.1:{}/callback", ephemeral_port()),
        ),
        (code, format!("http://[::1]:{}/callback", ephemeral_port())),
        (cursor.as_str(), CURSOR_APP.to_owned()),
    ];
    for (client, redirect) in &on_device {
        let pk = pkce();
        let q = crate::oauth_helpers::authorize_query(client, redirect, &pk.challenge, &[]);
        let approved = approve_from(&app, &format!("/authorize?{q}")).await;
        assert!(
            approved.starts_with(&format!("{redirect}?code=")),
            "{approved}"
        );
        let res = authorize_once(&app, client, redirect).await;
        assert_eq!(res.status(), StatusCode::OK, "{redirect}: the page again");
        let html = res.text().await.unwrap();
        assert!(
            html.contains("value=\"approve\"") && html.contains("value=\"deny\""),
            "{html}"
        );
        if redirect.starts_with("cursor:") {
            assert!(html.contains("cursor:"), "the app scheme is named: {html}");
        }
        // Deny sends the person back with access_denied, and the issuer.
        let res = crate::oauth_helpers::decide(&app, &html, "deny").await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let back = location(&res);
        assert!(back.starts_with(redirect.as_str()), "{back}");
        assert_eq!(
            query_param(&back, "error").as_deref(),
            Some("access_denied")
        );
        assert_eq!(
            query_param(&back, "iss").as_deref(),
            Some(app.addr.as_str())
        );
    }
}

/// Claude's rule for tool names (stricter than the specification's).
fn claude_accepts_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

async fn every_built_in_tool_is_one_every_client_accepts(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        return;
    };
    let flow = crate::oauth_helpers::full_flow(&app).await;
    let t = flow.tokens["access_token"].as_str().unwrap();
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    let mut list_bytes = 0;
    loop {
        let params = match &cursor {
            Some(c) => json!({ "cursor": c }),
            None => json!({}),
        };
        let (status, body) = modern(&app, t, "2026-07-28", "tools/list", params).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        list_bytes += serde_json::to_vec(&body).unwrap().len();
        tools.extend(body["result"]["tools"].as_array().unwrap().iter().cloned());
        match body["result"]["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(tools.len() >= 5, "{tools:?}");
    for tool in &tools {
        let name = tool["name"].as_str().unwrap();
        assert!(claude_accepts_name(name), "{name}");
        let schema = &tool["inputSchema"];
        let size = serde_json::to_vec(schema).unwrap().len();
        assert!(size < 16 * 1024, "{name}: input schema is {size} bytes");
        assert_eq!(schema["type"], "object", "{name}");
        for k in ["oneOf", "anyOf", "allOf"] {
            assert!(schema.get(k).is_none(), "{name}: top-level {k}");
        }
        let description = tool["description"].as_str().unwrap();
        assert!(
            !description.is_empty() && description.chars().count() < 2048,
            "{name}"
        );
    }
    assert!(list_bytes < 64 * 1024, "tools/list is {list_bytes} bytes");
}

async fn results_over_a_megabyte_are_cut_with_a_note(backend: Backend) {
    use gatehouse::mcp::tools::{Registry, ToolResult, ToolSpec, tool_fn};
    let dump = ToolSpec::new("dump", "Returns everything at once.").unwrap();
    let registry = Registry::builtin()
        .with_tool(tool_fn(dump, |_, _| async {
            ToolResult::text("row\n".repeat(400_000))
        }))
        .unwrap();
    let Some(app) = crate::helpers::spawn_app_serving(backend, |_| {}, Some(registry)).await else {
        return;
    };
    let flow = crate::oauth_helpers::full_flow(&app).await;
    let t = flow.tokens["access_token"].as_str().unwrap();
    let res = app
        .client
        .post(app.url("/mcp"))
        .bearer_auth(t)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": "dump", "arguments": {} } }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    assert!(text.len() < 1_000_000, "{} bytes sent", text.len());
    let body: Value = serde_json::from_str(&text).unwrap();
    let content = body["result"]["content"].as_array().unwrap();
    assert!(
        content[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("row\nrow\n")
    );
    let note = content.last().unwrap()["text"].as_str().unwrap();
    assert!(
        note.contains("cut this result") && note.contains("1000000"),
        "{note}"
    );
}
