//! The authorization server end to end, as Claude.ai and other clients use it.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::helpers::TestApp;
use crate::oauth_helpers::*;

both_backends!(
    metadata_documents_are_exact,
    claude_flow_with_dcr_ends_in_tokens_that_refresh,
    identical_public_registrations_share_one_client,
    registration_rejects_bad_metadata,
    unregistered_redirect_uri_gets_a_page_never_a_redirect,
    unknown_client_gets_a_page,
    plain_pkce_and_missing_challenge_are_redirected_errors,
    wrong_resource_is_invalid_target,
    unknown_scopes_are_dropped_for_the_default_set,
    wrong_or_missing_verifier_fails_and_spends_the_code,
    replayed_code_revokes_its_tokens,
    refresh_reuse_after_grace_revokes_the_family,
    concurrent_refreshes_inside_the_window_get_one_pair,
    consent_without_csrf_token_is_refused,
    deny_returns_access_denied_with_iss,
    consent_is_remembered_until_more_is_asked,
    loopback_redirect_accepts_any_port,
    confidential_client_with_basic_and_post,
    unknown_client_at_token_endpoint_is_401_invalid_client,
    revoked_refresh_token_stops_working,
    access_tokens_are_rfc9068_jwts_verifiable_with_jwks,
    wrong_api_key_shows_the_page_again_and_is_audited,
    password_sign_in_works,
    preregistered_client_from_the_cli_works_and_deleting_it_revokes_its_tokens,
    key_rotation_keeps_old_tokens_verifiable,
    claude_code_builtin_client_needs_no_registration,
    introspection_reports_live_and_revoked_tokens,
    expired_codes_and_refresh_tokens_are_invalid_grant,
    cors_allows_claude_on_the_token_endpoint_only_for_configured_origins,
);

async fn metadata_documents_are_exact(app: TestApp) {
    let res = app
        .client
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let m: serde_json::Value = res.json().await.unwrap();
    let base = &app.addr;
    assert_eq!(
        m,
        json!({
            "issuer": base,
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
            "registration_endpoint": format!("{base}/register"),
            "revocation_endpoint": format!("{base}/revoke"),
            "introspection_endpoint": format!("{base}/introspect"),
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "jwks_uri": format!("{base}/jwks"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
            "scopes_supported": ["account:read", "account:write", "admin:read", "admin:write", "offline_access"],
            "client_id_metadata_document_supported": true,
            "authorization_response_iss_parameter_supported": true,
            "service_documentation": format!("{base}/"),
        })
    );
    // Not an OpenID provider, so no OIDC document.
    let res = app
        .client
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let jwks: serde_json::Value = app
        .client
        .get(app.url("/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "no private part published"
    );
}

async fn claude_flow_with_dcr_ends_in_tokens_that_refresh(app: TestApp) {
    let flow = full_flow(&app).await;
    let t = &flow.tokens;
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3600);
    assert_eq!(t["scope"], "account:read offline_access");
    let refresh = t["refresh_token"].as_str().unwrap();
    assert!(refresh.starts_with("gth_rt_"));

    let (status, next, headers) = refresh_with(&app, &flow.client_id, refresh).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_ne!(
        next["refresh_token"], t["refresh_token"],
        "refresh tokens rotate"
    );
    assert_ne!(next["access_token"], t["access_token"]);
    // The new refresh token works in turn.
    let (status, _, _) = token(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", next["refresh_token"].as_str().unwrap()),
            ("client_id", &flow.client_id),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let audit = app
        .store
        .list_audit(&gatehouse::storage::AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    for a in [
        "client.register",
        "auth.sign_in",
        "oauth.consent_granted",
        "oauth.tokens_issued",
    ] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
}

async fn identical_public_registrations_share_one_client(app: TestApp) {
    let a = register_public(&app, CB).await;
    let b = register_public(&app, CB).await;
    assert_eq!(a, b);
    let other = register_public(&app, "https://claude.com/api/mcp/auth_callback").await;
    assert_ne!(a, other);
    assert_eq!(app.store.list_clients().await.unwrap().len(), 2);
}

async fn registration_rejects_bad_metadata(app: TestApp) {
    let cases = [
        (
            json!({ "redirect_uris": ["http://evil.example/cb"] }),
            "invalid_redirect_uri",
        ),
        (
            json!({ "redirect_uris": ["https://a.example/cb#frag"] }),
            "invalid_redirect_uri",
        ),
        (json!({ "redirect_uris": [] }), "invalid_redirect_uri"),
        (json!({ "client_name": "x" }), "invalid_redirect_uri"),
        (
            json!({ "redirect_uris": [CB], "token_endpoint_auth_method": "private_key_jwt" }),
            "invalid_client_metadata",
        ),
        (
            json!({ "redirect_uris": [CB], "grant_types": ["implicit"] }),
            "invalid_client_metadata",
        ),
        (
            json!({ "redirect_uris": [CB], "client_name": "x".repeat(500) }),
            "invalid_client_metadata",
        ),
        (
            json!({ "redirect_uris": (0..20).map(|i| format!("https://a.example/{i}")).collect::<Vec<_>>() }),
            "invalid_redirect_uri",
        ),
        (json!("not an object"), "invalid_client_metadata"),
    ];
    for (body, code) in cases {
        let (status, err) = register(&app, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(err["error"], code, "{body}");
    }
    let res = app
        .client
        .post(app.url("/register"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(
        app.store.list_clients().await.unwrap().is_empty(),
        "nothing half-written"
    );
}

async fn unregistered_redirect_uri_gets_a_page_never_a_redirect(app: TestApp) {
    let client = register_public(&app, CB).await;
    let p = pkce();
    for evil in [
        "https://attacker.example/cb",
        "https://claude.ai/api/mcp/auth_callback/x",
        "not a url",
    ] {
        let res = app
            .client
            .get(app.url(&format!(
                "/authorize?{}",
                authorize_query(&client, evil, &p.challenge, &[])
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{evil}");
        assert!(res.headers().get("location").is_none());
        assert!(res.text().await.unwrap().contains("not"), "a readable page");
    }
}

async fn unknown_client_gets_a_page(app: TestApp) {
    let p = pkce();
    let res = app
        .client
        .get(app.url(&format!(
            "/authorize?{}",
            authorize_query("client_nope", CB, &p.challenge, &[])
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.headers().get("location").is_none());
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert!(
        res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
}

async fn plain_pkce_and_missing_challenge_are_redirected_errors(app: TestApp) {
    // A verified client: a self-registered one gets a page instead (security_authz AUTHZ-10).
    let client = gatehouse::oauth::clients::CLAUDE_AI.to_owned();
    let p = pkce();
    let plain = authorize_query(&client, CB, &p.challenge, &[]).replace("S256", "plain");
    let missing = format!(
        "response_type=code&client_id={}&redirect_uri={}&state=s1",
        urlencode(&client),
        urlencode(CB)
    );
    for q in [plain, missing] {
        let res = app
            .client
            .get(app.url(&format!("/authorize?{q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let loc = location(&res);
        assert!(loc.starts_with(CB));
        assert_eq!(
            query_param(&loc, "error").as_deref(),
            Some("invalid_request")
        );
        assert_eq!(query_param(&loc, "iss").as_deref(), Some(app.addr.as_str()));
        assert!(query_param(&loc, "state").is_some());
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn wrong_resource_is_invalid_target(app: TestApp) {
    // A verified client: a self-registered one gets a page instead (security_authz AUTHZ-10).
    let client = gatehouse::oauth::clients::CLAUDE_AI.to_owned();
    let p = pkce();
    let q = authorize_query(
        &client,
        CB,
        &p.challenge,
        &[("resource", "https://other.example/mcp")],
    );
    let res = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let loc = location(&res);
    assert_eq!(
        query_param(&loc, "error").as_deref(),
        Some("invalid_target")
    );
    assert_eq!(query_param(&loc, "state").as_deref(), Some("xyz-state"));
    // A trailing slash is tolerated.
    let q = authorize_query(
        &client,
        CB,
        &p.challenge,
        &[("resource", &format!("{}/mcp/", app.addr))],
    );
    let res = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

async fn unknown_scopes_are_dropped_for_the_default_set(app: TestApp) {
    let key = owner_key(&app).await;
    let client = register_public(&app, CB).await;
    let p = pkce();
    let q = authorize_query(&client, CB, &p.challenge, &[("scope", "claudeai")]);
    let redirect = sign_in_and_approve(&app, &q, &key).await;
    let code = query_param(&redirect, "code").unwrap();
    let (status, t, _) = exchange(&app, &client, &code, CB, &p.verifier).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(t["scope"], "account:read account:write");
    assert!(
        t["refresh_token"].is_string(),
        "refresh token even without offline_access"
    );
}

async fn code_for(app: &TestApp, key: &str, client: &str, p: &Pkce) -> String {
    let q = authorize_query(client, CB, &p.challenge, &[]);
    let redirect = sign_in_and_approve(app, &q, key).await;
    assert_eq!(
        query_param(&redirect, "state").as_deref(),
        Some("xyz-state")
    );
    assert_eq!(
        query_param(&redirect, "iss").as_deref(),
        Some(app.addr.as_str())
    );
    query_param(&redirect, "code").unwrap()
}

async fn wrong_or_missing_verifier_fails_and_spends_the_code(app: TestApp) {
    let key = owner_key(&app).await;
    let client = register_public(&app, CB).await;
    let p = pkce();
    let code = code_for(&app, &key, &client, &p).await;
    let (status, err, headers) = token(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CB),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"], "invalid_request");
    assert_eq!(headers["cache-control"], "no-store");
    let wrong = pkce();
    let (status, err, _) = token(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CB),
            ("code_verifier", &wrong.verifier),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"], "invalid_grant");
    let (status, _, _) = exchange(&app, &client, &code, CB, &p.verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a code gets one attempt");
}

async fn replayed_code_revokes_its_tokens(app: TestApp) {
    let key = owner_key(&app).await;
    let client = register_public(&app, CB).await;
    let p = pkce();
    let code = code_for(&app, &key, &client, &p).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", CB),
        ("code_verifier", p.verifier.as_str()),
        ("client_id", client.as_str()),
    ];
    let (status, first, _) = token(&app, &form).await;
    assert_eq!(status, StatusCode::OK);
    let (status, err, _) = token(&app, &form).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"], "invalid_grant");
    let (status, err, _) = token(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", first["refresh_token"].as_str().unwrap()),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the refresh token from the replayed code is revoked"
    );
    assert_eq!(err["error"], "invalid_grant");
}

async fn refresh_reuse_after_grace_revokes_the_family(app: TestApp) {
    let flow = full_flow(&app).await;
    let r1 = flow.tokens["refresh_token"].as_str().unwrap().to_owned();
    let (_, second, _) = refresh_with(&app, &flow.client_id, &r1).await;
    let r2 = second["refresh_token"].as_str().unwrap().to_owned();
    app.clock.advance(app.config.tokens.refresh_grace_secs + 1);
    let (status, err, _) = refresh_with(&app, &flow.client_id, &r1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"], "invalid_grant");
    let (status, _, _) = refresh_with(&app, &flow.client_id, &r2).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the whole family is revoked"
    );
    let audit = app
        .store
        .list_audit(&gatehouse::storage::AuditFilter {
            action_prefix: Some("oauth.refresh_reuse".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
}

async fn concurrent_refreshes_inside_the_window_get_one_pair(app: TestApp) {
    let flow = full_flow(&app).await;
    let r1 = flow.tokens["refresh_token"].as_str().unwrap().to_owned();
    let calls = (0..5).map(|_| {
        let client = app.client.clone();
        let url = app.url("/token");
        let form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", r1.clone()),
            ("client_id", flow.client_id.clone()),
        ];
        tokio::spawn(async move {
            client
                .post(url)
                .form(&form)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        })
    });
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.unwrap());
    }
    for r in &results {
        assert!(r["refresh_token"].is_string(), "every retry succeeds: {r}");
        assert_eq!(
            r["refresh_token"], results[0]["refresh_token"],
            "one new pair"
        );
        assert_eq!(r["access_token"], results[0]["access_token"]);
    }
    // The one new pair keeps working.
    let (status, _, _) = token(
        &app,
        &[
            ("grant_type", "refresh_token"),
            (
                "refresh_token",
                results[0]["refresh_token"].as_str().unwrap(),
            ),
            ("client_id", &flow.client_id),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

async fn consent_without_csrf_token_is_refused(app: TestApp) {
    let key = owner_key(&app).await;
    let client = register_public(&app, CB).await;
    let p = pkce();
    let q = authorize_query(&client, CB, &p.challenge, &[]);
    let html = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Login without the token.
    let res = app
        .client
        .post(app.url("/authorize/login"))
        .form(&[
            ("request", hidden(&html, "request")),
            ("api_key", key.clone()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // Login with it, then consent with a forged token and with a tampered request.
    let res = app
        .client
        .post(app.url("/authorize/login"))
        .form(&[
            ("request", hidden(&html, "request")),
            ("csrf", hidden(&html, "csrf")),
            ("api_key", key),
        ])
        .send()
        .await
        .unwrap();
    let consent = app
        .client
        .get(app.url(&location(&res)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (request, csrf) in [
        (hidden(&consent, "request"), "forged".to_owned()),
        (
            hidden(&consent, "request").replace("scope", "x") + "&scope=admin%3Awrite",
            hidden(&consent, "csrf"),
        ),
    ] {
        let res = app
            .client
            .post(app.url("/authorize"))
            .form(&[
                ("request", request),
                ("csrf", csrf),
                ("decision", "approve".into()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert!(res.headers().get("location").is_none());
    }
}

async fn deny_returns_access_denied_with_iss(app: TestApp) {
    let key = owner_key(&app).await;
    let client = register_public(&app, CB).await;
    let p = pkce();
    let q = authorize_query(&client, CB, &p.challenge, &[]);
    let res = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap();
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("form-action 'self' https://claude.ai"),
        "{csp}"
    );
    assert!(
        !csp.contains("unsafe-inline") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(res.headers()["referrer-policy"], "no-referrer");
    let html = res.text().await.unwrap();
    let res = app
        .client
        .post(app.url("/authorize/login"))
        .form(&[
            ("request", hidden(&html, "request")),
            ("csrf", hidden(&html, "csrf")),
            ("api_key", key),
        ])
        .send()
        .await
        .unwrap();
    let consent = app
        .client
        .get(app.url(&location(&res)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        consent.contains("self-declared"),
        "DCR names are marked as unverified"
    );
    assert!(consent.contains("claude.ai/api/mcp/auth_callback"));
    let res = decide(&app, &consent, "deny").await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let loc = location(&res);
    assert_eq!(query_param(&loc, "error").as_deref(), Some("access_denied"));
    assert_eq!(query_param(&loc, "iss").as_deref(), Some(app.addr.as_str()));
    assert_eq!(query_param(&loc, "state").as_deref(), Some("xyz-state"));
}

async fn consent_is_remembered_until_more_is_asked(app: TestApp) {
    let key = owner_key(&app).await;
    let client = register_public(&app, CB).await;
    let p = pkce();
    let q = authorize_query(&client, CB, &p.challenge, &[("scope", "account:read")]);
    sign_in_and_approve(&app, &q, &key).await;
    // Same request again: straight back with a code.
    let res = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(query_param(&location(&res), "code").is_some());
    // More scopes: asked again.
    let q = authorize_query(
        &client,
        CB,
        &p.challenge,
        &[("scope", "account:read admin:read")],
    );
    let res = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("admin:read"));
}

async fn loopback_redirect_accepts_any_port(app: TestApp) {
    let key = owner_key(&app).await;
    let client = register_public(&app, "http://127.0.0.1/callback").await;
    let p = pkce();
    let cb = "http://127.0.0.1:49152/callback";
    let q = authorize_query(&client, cb, &p.challenge, &[]);
    let redirect = sign_in_and_approve(&app, &q, &key).await;
    assert!(redirect.starts_with(cb));
    let code = query_param(&redirect, "code").unwrap();
    let (status, _, _) = exchange(&app, &client, &code, cb, &p.verifier).await;
    assert_eq!(status, StatusCode::OK);
}

async fn confidential_client_with_basic_and_post(app: TestApp) {
    let key = owner_key(&app).await;
    for method in ["client_secret_basic", "client_secret_post"] {
        let (status, reg) = register(&app, json!({ "client_name": method, "redirect_uris": [CB], "token_endpoint_auth_method": method })).await;
        assert_eq!(status, StatusCode::CREATED);
        let id = reg["client_id"].as_str().unwrap().to_owned();
        let secret = reg["client_secret"].as_str().unwrap().to_owned();
        let p = pkce();
        let code = code_for(&app, &key, &id, &p).await;
        let base = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", CB),
            ("code_verifier", p.verifier.as_str()),
        ];
        // Wrong secret first: 401 invalid_client, and with Basic a Basic challenge.
        let mut req = app.client.post(app.url("/token"));
        req = if method == "client_secret_basic" {
            req.basic_auth(&id, Some("wrong")).form(&base)
        } else {
            let mut f = base.to_vec();
            f.push(("client_id", &id));
            f.push(("client_secret", "wrong"));
            req.form(&f)
        };
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{method}");
        if method == "client_secret_basic" {
            assert!(
                res.headers()["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Basic")
            );
        }
        let mut req = app.client.post(app.url("/token"));
        req = if method == "client_secret_basic" {
            req.basic_auth(&id, Some(&secret)).form(&base)
        } else {
            let mut f = base.to_vec();
            f.push(("client_id", &id));
            f.push(("client_secret", &secret));
            req.form(&f)
        };
        let res = req.send().await.unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "{method}: {}",
            res.text().await.unwrap()
        );
    }
}

async fn unknown_client_at_token_endpoint_is_401_invalid_client(app: TestApp) {
    let (status, err, headers) = token(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "gth_rt_x"),
            ("client_id", "client_gone"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(err["error"], "invalid_client");
    assert_eq!(headers["cache-control"], "no-store");
    let (status, err, _) = token(&app, &[("grant_type", "password"), ("client_id", "x")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"], "unsupported_grant_type");
}

async fn revoked_refresh_token_stops_working(app: TestApp) {
    let flow = full_flow(&app).await;
    let r = flow.tokens["refresh_token"].as_str().unwrap();
    let res = app
        .client
        .post(app.url("/revoke"))
        .form(&[("token", r), ("client_id", &flow.client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (status, _, _) = refresh_with(&app, &flow.client_id, r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Unknown tokens get 200 too.
    let res = app
        .client
        .post(app.url("/revoke"))
        .form(&[("token", "whatever"), ("client_id", &flow.client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Revoking an access token denies its jti.
    let at = flow.tokens["access_token"].as_str().unwrap();
    let res = app
        .client
        .post(app.url("/revoke"))
        .form(&[("token", at), ("client_id", &flow.client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let claims = decode_claims(at);
    let jti = gatehouse::crypto::HashedToken::of(claims["jti"].as_str().unwrap());
    assert!(
        app.store
            .is_access_token_revoked(jti.as_str())
            .await
            .unwrap()
    );
}

fn decode_claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

async fn access_tokens_are_rfc9068_jwts_verifiable_with_jwks(app: TestApp) {
    let flow = full_flow(&app).await;
    let at = flow.tokens["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(at).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let jwks: serde_json::Value = app
        .client
        .get(app.url("/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header.kid.clone().unwrap())
        .unwrap();
    let key = jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&[format!("{}/mcp", app.addr)]);
    v.set_issuer(&[&app.addr]);
    v.validate_exp = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(at, &key, &v)
        .unwrap()
        .claims;
    assert_eq!(claims["client_id"], flow.client_id.as_str());
    assert_eq!(claims["scope"], "account:read offline_access");
    for c in ["sub", "org", "exp", "iat", "jti"] {
        assert!(!claims[c].is_null(), "{c}");
    }
}

async fn wrong_api_key_shows_the_page_again_and_is_audited(app: TestApp) {
    owner_key(&app).await;
    let client = register_public(&app, CB).await;
    let p = pkce();
    let q = authorize_query(&client, CB, &p.challenge, &[]);
    let html = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let wrong = gatehouse::crypto::PlainToken::generate(gatehouse::crypto::TokenKind::ApiKey);
    let res = app
        .client
        .post(app.url("/authorize/login"))
        .form(&[
            ("request", hidden(&html, "request")),
            ("csrf", hidden(&html, "csrf")),
            ("api_key", wrong.expose().to_owned()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let page = res.text().await.unwrap();
    assert!(page.contains("did not work"));
    assert!(
        !page.contains(wrong.expose()),
        "the typed secret is not echoed"
    );
    let audit = app
        .store
        .list_audit(&gatehouse::storage::AuditFilter {
            action_prefix: Some("auth.sign_in_failed".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert!(
        !audit[0]
            .detail
            .clone()
            .unwrap_or_default()
            .contains(wrong.expose())
    );
}

async fn password_sign_in_works(app: TestApp) {
    use gatehouse::domain::{DisplayName, Email, Role};
    owner_key(&app).await;
    let hash = gatehouse::crypto::password::hash_password(
        gatehouse::domain::user::Password::parse("correct horse battery".into()).unwrap(),
    )
    .await
    .unwrap();
    let audit = gatehouse::storage::AuditEntry::new(1, "test", "user.create");
    let user = app
        .store
        .create_user(
            &Email::parse("pw@example.com").unwrap(),
            &DisplayName::parse("Pw").unwrap(),
            Some(hash),
            1,
            audit.clone(),
        )
        .await
        .unwrap();
    let org = app
        .store
        .find_org_by_slug(&gatehouse::domain::OrgSlug::parse("default").unwrap())
        .await
        .unwrap()
        .unwrap();
    app.store
        .add_member(&org, &user, Role::Member, 1, audit)
        .await
        .unwrap();
    let client = register_public(&app, CB).await;
    let p = pkce();
    let q = authorize_query(&client, CB, &p.challenge, &[]);
    let html = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let bad = app
        .client
        .post(app.url("/authorize/login"))
        .form(&[
            ("request", hidden(&html, "request")),
            ("csrf", hidden(&html, "csrf")),
            ("email", "pw@example.com".into()),
            ("password", "wrong password!!".into()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let res = app
        .client
        .post(app.url("/authorize/login"))
        .form(&[
            ("request", hidden(&html, "request")),
            ("csrf", hidden(&html, "csrf")),
            ("email", "PW@example.com".into()),
            ("password", "correct horse battery".into()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let redirect = approve_from(&app, &location(&res)).await;
    assert!(query_param(&redirect, "code").is_some());
}

async fn preregistered_client_from_the_cli_works_and_deleting_it_revokes_its_tokens(app: TestApp) {
    let key = owner_key(&app).await;
    let out = crate::helpers::cli(
        &app.db,
        &[
            "--json",
            "client",
            "create",
            "--name",
            "Internal tool",
            "--redirect-uri",
            CB,
            "--auth-method",
            "client_secret_post",
        ],
        None,
    )
    .await
    .ok()
    .json();
    let id = out["client_id"].as_str().unwrap().to_owned();
    let secret = out["client_secret"].as_str().unwrap().to_owned();
    let p = pkce();
    let q = authorize_query(&id, CB, &p.challenge, &[]);
    let html = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("verified"),
        "operator-registered clients are marked verified"
    );
    let redirect = sign_in_and_approve(&app, &q, &key).await;
    let code = query_param(&redirect, "code").unwrap();
    let (status, tokens, _) = token(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CB),
            ("code_verifier", &p.verifier),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let listed = crate::helpers::cli(&app.db, &["client", "list"], None)
        .await
        .ok();
    assert!(listed.stdout.contains(&id) && !listed.stdout.contains(&secret));

    // The code exchange above left the client in the token endpoint's client cache;
    // the deletion must be seen anyway.
    crate::helpers::cli(&app.db, &["client", "delete", &id], None)
        .await
        .ok();
    let (status, err, _) = token(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a deleted client must re-register"
    );
    assert_eq!(err["error"], "invalid_client");
    let jti = gatehouse::crypto::HashedToken::of(
        decode_claims(tokens["access_token"].as_str().unwrap())["jti"]
            .as_str()
            .unwrap(),
    );
    assert!(
        app.store
            .is_access_token_revoked(jti.as_str())
            .await
            .unwrap()
    );
    crate::helpers::cli(&app.db, &["client", "delete", &id], None)
        .await
        .failed();
}

async fn key_rotation_keeps_old_tokens_verifiable(app: TestApp) {
    let before = crate::helpers::cli(&app.db, &["--json", "keys", "list"], None)
        .await
        .ok()
        .json();
    assert_eq!(before.as_array().unwrap().len(), 1);
    let after = crate::helpers::cli(&app.db, &["--json", "keys", "rotate"], None)
        .await
        .ok()
        .json();
    let keys = after.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys.iter().filter(|k| k["retired_at"].is_null()).count(),
        1,
        "one key signs"
    );
    // Both stay published (the retired one until its tokens expire).
    let stored = app.store.list_signing_keys().await.unwrap();
    let set = gatehouse::crypto::keys::KeySet::from_stored(&stored, &app.config.keys.kek).unwrap();
    assert_eq!(set.jwks()["keys"].as_array().unwrap().len(), 2);
    let retired = crate::helpers::cli(&app.db, &["--json", "keys", "retire"], None)
        .await
        .ok()
        .json();
    assert_eq!(retired.as_array().unwrap().len(), 2, "too recent to delete");
}

async fn claude_code_builtin_client_needs_no_registration(app: TestApp) {
    let key = owner_key(&app).await;
    let client = gatehouse::oauth::clients::CLAUDE_CODE;
    let p = pkce();
    let cb = "http://localhost:61234/callback";
    let q = authorize_query(client, cb, &p.challenge, &[]);
    let html = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("claude.ai"), "verified by its domain");
    let redirect = sign_in_and_approve(&app, &q, &key).await;
    let code = query_param(&redirect, "code").unwrap();
    let (status, _, _) = exchange(&app, client, &code, cb, &p.verifier).await;
    assert_eq!(status, StatusCode::OK);
}

async fn introspection_reports_live_and_revoked_tokens(app: TestApp) {
    let flow = full_flow(&app).await;
    let out = crate::helpers::cli(
        &app.db,
        &[
            "--json",
            "client",
            "create",
            "--name",
            "RS",
            "--redirect-uri",
            CB,
        ],
        None,
    )
    .await
    .ok()
    .json();
    let (id, secret) = (
        out["client_id"].as_str().unwrap().to_owned(),
        out["client_secret"].as_str().unwrap().to_owned(),
    );
    let introspect = |token: String| {
        let req = app
            .client
            .post(app.url("/introspect"))
            .basic_auth(&id, Some(&secret))
            .form(&[("token", token)]);
        async move {
            req.send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let at = flow.tokens["access_token"].as_str().unwrap().to_owned();
    let rt = flow.tokens["refresh_token"].as_str().unwrap().to_owned();
    let r = introspect(at.clone()).await;
    assert_eq!(r["active"], true);
    assert_eq!(r["client_id"], flow.client_id.as_str());
    assert_eq!(introspect(rt.clone()).await["active"], true);
    assert_eq!(introspect("gth_rt_nonsense".into()).await["active"], false);
    app.client
        .post(app.url("/revoke"))
        .form(&[
            ("token", at.as_str()),
            ("client_id", flow.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(introspect(at.clone()).await["active"], false);
    // A tampered token is never active.
    let mut parts: Vec<String> = at.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].chars().rev().collect();
    assert_eq!(introspect(parts.join(".")).await["active"], false);
    // Personal access tokens can be introspected and revoked through /revoke.
    let pat = crate::helpers::cli(
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
            "agent",
            "--scopes",
            "account:read",
        ],
        None,
    )
    .await
    .ok()
    .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(introspect(pat.clone()).await["active"], true);
    let res = app
        .client
        .post(app.url("/revoke"))
        .form(&[
            ("token", pat.as_str()),
            ("client_id", flow.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(introspect(pat).await["active"], false);
    // A public (DCR) client has not authenticated, so it may not introspect.
    let res = app
        .client
        .post(app.url("/introspect"))
        .form(&[
            ("token", rt.as_str()),
            ("client_id", flow.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let err: serde_json::Value = res.json().await.unwrap();
    assert_eq!(err["error"], "invalid_client");
    // A confidential DCR client authenticates, but is not allowed to.
    let (status, reg) = register(
        &app,
        json!({ "client_name": "dcr", "redirect_uris": [CB], "token_endpoint_auth_method": "client_secret_basic" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let res = app
        .client
        .post(app.url("/introspect"))
        .basic_auth(
            reg["client_id"].as_str().unwrap(),
            reg["client_secret"].as_str(),
        )
        .form(&[("token", rt.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let err: serde_json::Value = res.json().await.unwrap();
    assert_eq!(err["error"], "unauthorized_client");
}

async fn expired_codes_and_refresh_tokens_are_invalid_grant(app: TestApp) {
    let key = owner_key(&app).await;
    let client = register_public(&app, CB).await;
    let p = pkce();
    let code = code_for(&app, &key, &client, &p).await;
    app.clock.advance(app.config.tokens.code_ttl_secs + 1);
    let (status, err, _) = exchange(&app, &client, &code, CB, &p.verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"], "invalid_grant");

    let p = pkce();
    let code = code_for(&app, &key, &client, &p).await;
    let (status, t, _) = exchange(&app, &client, &code, CB, &p.verifier).await;
    assert_eq!(status, StatusCode::OK);
    app.clock.advance(app.config.tokens.refresh_ttl_secs + 1);
    let (status, err, _) = token(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", t["refresh_token"].as_str().unwrap()),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"], "invalid_grant");
}

async fn cors_allows_claude_on_the_token_endpoint_only_for_configured_origins(app: TestApp) {
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/token"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let res = preflight("https://claude.ai").await.unwrap();
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://claude.ai"
    );
    let res = preflight("https://evil.example").await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

async fn cimd_client_from_a_local_document_completes_the_flow(backend: crate::helpers::Backend) {
    let Some(app) =
        crate::helpers::spawn_app_with(backend, |c| c.oauth.cimd_allow_private_addresses = true)
            .await
    else {
        return;
    };
    let key = owner_key(&app).await;
    let client_id = serve_metadata_document("/oauth/client.json", |url| {
        json!({ "client_id": url, "client_name": "Doc Client", "redirect_uris": [CB], "token_endpoint_auth_method": "none" })
    })
    .await;
    let p = pkce();
    let q = authorize_query(&client_id, CB, &p.challenge, &[]);
    let html = app
        .client
        .get(app.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("Doc Client") && html.contains("verified: 127.0.0.1"),
        "{html}"
    );
    let redirect = sign_in_and_approve(&app, &q, &key).await;
    let code = query_param(&redirect, "code").unwrap();
    let (status, t, _) = exchange(&app, &client_id, &code, CB, &p.verifier).await;
    assert_eq!(status, StatusCode::OK, "{t}");

    // A document whose client_id is not its own URL is refused with a page.
    let liar = serve_metadata_document("/oauth/client.json", |_| json!({ "client_id": "https://claude.ai/oauth/mcp-oauth-client-metadata", "redirect_uris": [CB] })).await;
    let res = app
        .client
        .get(app.url(&format!(
            "/authorize?{}",
            authorize_query(&liar, CB, &p.challenge, &[])
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.headers().get("location").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cimd_client_from_a_local_document_completes_the_flow_sqlite() {
    cimd_client_from_a_local_document_completes_the_flow(crate::helpers::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cimd_client_from_a_local_document_completes_the_flow_postgres() {
    cimd_client_from_a_local_document_completes_the_flow(crate::helpers::Backend::Postgres).await;
}

both_backends!(cimd_documents_on_private_addresses_are_refused_by_default);

async fn cimd_documents_on_private_addresses_are_refused_by_default(app: TestApp) {
    let client_id = serve_metadata_document(
        "/oauth/client.json",
        |url| json!({ "client_id": url, "redirect_uris": [CB] }),
    )
    .await;
    let p = pkce();
    let res = app
        .client
        .get(app.url(&format!(
            "/authorize?{}",
            authorize_query(&client_id, CB, &p.challenge, &[])
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::BAD_REQUEST,
        "SSRF guard: loopback and plain http are refused"
    );
    assert!(res.headers().get("location").is_none());
}
