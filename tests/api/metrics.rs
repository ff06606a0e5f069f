//! `GET /metrics`: what a real flow records, and who may read it.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::helpers::{Backend, TestApp, spawn_app_with};
use crate::mcp::{pat, rpc};
use crate::oauth_helpers::*;

both_backends!(
    a_real_flow_is_counted_by_route_grant_reason_and_tool,
    unknown_paths_never_become_route_labels,
    loopback_scrapes_work_but_proxied_ones_get_404,
);

/// The value of the sample `series` (name and labels exactly as exported), if present.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

async fn scrape(app: &TestApp) -> String {
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    res.text().await.unwrap()
}

async fn a_real_flow_is_counted_by_route_grant_reason_and_tool(app: TestApp) {
    // OAuth: a code exchange and a refresh by a dynamically registered public client,
    // then the first refresh token reused after the grace window.
    let flow = full_flow(&app).await;
    let r1 = flow.tokens["refresh_token"].as_str().unwrap().to_owned();
    let (status, _, _) = refresh_with(&app, &flow.client_id, &r1).await;
    assert_eq!(status, StatusCode::OK);
    app.clock.advance(app.config.tokens.refresh_grace_secs + 1);
    let (status, _, _) = refresh_with(&app, &flow.client_id, &r1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = refresh_with(&app, "no-such-client", &r1).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // MCP: two PAT tool calls, then three refused credentials.
    let token = pat(&app, "account:read").await;
    let call = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": "whoami" } });
    for _ in 0..2 {
        assert_eq!(
            rpc(&app, Some(&token), call.clone()).await.status(),
            StatusCode::OK
        );
    }
    let access = flow.tokens["access_token"].as_str().unwrap();
    let forged = format!("{}AAAA", &access[..access.len() - 4]);
    for bad in [None, Some("not-a-token"), Some(forged.as_str())] {
        assert_eq!(
            rpc(&app, bad, call.clone()).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }

    let body = scrape(&app).await;
    let at =
        |series: &str| sample(&body, series).unwrap_or_else(|| panic!("{series} missing:\n{body}"));
    assert_eq!(
        at(
            r#"gatehouse_oauth_tokens_issued_total{grant="authorization_code",client_origin="registered",client_type="public"}"#
        ),
        1.0
    );
    assert_eq!(
        at(
            r#"gatehouse_oauth_tokens_issued_total{grant="refresh_token",client_origin="registered",client_type="public"}"#
        ),
        1.0
    );
    assert_eq!(
        at(
            r#"gatehouse_oauth_tokens_issued_total{grant="authorization_code",client_origin="cimd",client_type="public"}"#
        ),
        0.0,
        "known label sets start at zero"
    );
    assert_eq!(at("gatehouse_oauth_refresh_reuse_detected_total"), 1.0);
    assert_eq!(
        at(r#"gatehouse_oauth_token_errors_total{error="invalid_grant"}"#),
        1.0
    );
    assert_eq!(
        at(r#"gatehouse_oauth_token_errors_total{error="invalid_client"}"#),
        1.0
    );

    assert_eq!(
        at(r#"gatehouse_mcp_tool_calls_total{tool="whoami",outcome="ok"}"#),
        2.0
    );
    assert_eq!(
        at(r#"gatehouse_mcp_tool_calls_total{tool="whoami",outcome="error"}"#),
        0.0
    );
    assert_eq!(
        at(r#"gatehouse_mcp_tool_call_duration_seconds_count{tool="whoami"}"#),
        2.0
    );
    assert_eq!(
        at(r#"gatehouse_mcp_tool_call_duration_seconds_bucket{le="+Inf",tool="whoami"}"#),
        2.0
    );
    assert_eq!(
        at(r#"gatehouse_mcp_auth_rejections_total{reason="missing"}"#),
        1.0
    );
    assert_eq!(
        at(r#"gatehouse_mcp_auth_rejections_total{reason="malformed"}"#),
        1.0
    );
    assert_eq!(
        at(r#"gatehouse_mcp_auth_rejections_total{reason="bad_signature"}"#),
        1.0
    );
    assert_eq!(
        at(r#"gatehouse_mcp_auth_rejections_total{reason="expired"}"#),
        0.0
    );

    assert_eq!(
        at(r#"gatehouse_http_requests_total{route="/mcp",method="POST",status="200"}"#),
        2.0
    );
    assert_eq!(
        at(r#"gatehouse_http_requests_total{route="/mcp",method="POST",status="401"}"#),
        3.0
    );
    assert_eq!(
        at(r#"gatehouse_http_requests_total{route="/token",method="POST",status="200"}"#),
        2.0
    );
    assert_eq!(
        at(r#"gatehouse_http_request_duration_seconds_count{route="/mcp",method="POST"}"#),
        5.0
    );

    assert_eq!(at("gatehouse_db_pool_max_connections"), 5.0);
    let open = at("gatehouse_db_pool_connections");
    let idle = at("gatehouse_db_pool_idle_connections");
    assert!(open >= 1.0 && idle <= open, "open {open}, idle {idle}");
    let backend = match app.db.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let info = format!("gatehouse_database_info{{backend=\"{backend}\"}} 1");
    assert!(body.contains(&info), "{info} missing:\n{body}");
    assert!(body.ends_with("# EOF\n"));
}

async fn unknown_paths_never_become_route_labels(app: TestApp) {
    for _ in 0..3 {
        let res = app
            .client
            .get(app.url("/nonexistent-xyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    let body = scrape(&app).await;
    assert!(!body.contains("nonexistent"), "{body}");
    assert_eq!(
        sample(
            &body,
            r#"gatehouse_http_requests_total{route="unmatched",method="GET",status="404"}"#
        ),
        Some(3.0)
    );
    // A matched route with an unsupported method keeps its template.
    let res = app.client.delete(app.url("/token")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body = scrape(&app).await;
    assert_eq!(
        sample(
            &body,
            r#"gatehouse_http_requests_total{route="/token",method="DELETE",status="405"}"#
        ),
        Some(1.0)
    );
}

async fn loopback_scrapes_work_but_proxied_ones_get_404(app: TestApp) {
    scrape(&app).await;
    for header in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        let res = app
            .client
            .get(app.url("/metrics"))
            .header(header, "for=203.0.113.9")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{header}");
        assert!(!res.text().await.unwrap().contains("gatehouse_"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_listener_serves_metrics_and_the_main_one_does_not() {
    let Some(app) = spawn_app_with(Backend::Sqlite, |c| {
        c.metrics.bind = Some(([127, 0, 0, 1], 0).into());
    })
    .await
    else {
        return;
    };
    let metrics = app.metrics_addr.clone().expect("metrics listener");
    assert_ne!(metrics, app.addr);
    let main = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(main.status(), StatusCode::NOT_FOUND);
    rpc(
        &app,
        None,
        json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" }),
    )
    .await;
    let res = app
        .client
        .get(format!("{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.text().await.unwrap();
    assert_eq!(
        sample(
            &body,
            r#"gatehouse_mcp_auth_rejections_total{reason="missing"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &body,
            r#"gatehouse_http_requests_total{route="unmatched",method="GET",status="404"}"#
        ),
        Some(1.0),
        "the refused scrape on the main listener is an unknown route there"
    );
    let other = app
        .client
        .get(format!("{metrics}/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_token_is_required_from_everyone_when_set() {
    let secret = "scrape-token-0123456789";
    let Some(app) = spawn_app_with(Backend::Sqlite, |c| {
        c.metrics.token = Some(gatehouse::config::Secret::new(secret));
    })
    .await
    else {
        return;
    };
    let none = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        none.headers()["www-authenticate"],
        "Bearer realm=\"metrics\""
    );
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-token-wrong-guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(secret)
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(
        right.status(),
        StatusCode::OK,
        "a token works through a proxy"
    );
    assert!(
        right
            .text()
            .await
            .unwrap()
            .contains("gatehouse_http_requests_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_metrics_are_not_served() {
    let Some(app) = spawn_app_with(Backend::Sqlite, |c| c.metrics.enabled = false).await else {
        return;
    };
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}
