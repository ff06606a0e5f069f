use reqwest::StatusCode;

use crate::both_backends;
use crate::helpers::{Backend, TestApp, cli_env};

both_backends!(
    healthz_answers_ok,
    readyz_names_the_database_backend,
    readyz_is_503_when_the_database_is_gone,
    unknown_route_gets_a_json_404_with_request_id,
    oversized_body_gets_413_and_the_server_keeps_serving,
    healthcheck_command_passes_only_when_healthz_answers_200,
);

async fn healthz_answers_ok(app: TestApp) {
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

async fn readyz_names_the_database_backend(app: TestApp) {
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value = res.json().await.unwrap();
    let expected = match app.db.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(body["database"], expected);
}

async fn readyz_is_503_when_the_database_is_gone(app: TestApp) {
    app.store.close().await;
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    // The process itself is still up.
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

async fn unknown_route_gets_a_json_404_with_request_id(app: TestApp) {
    let res = app
        .client
        .get(app.url("/no/such/thing"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let shape: Vec<usize> = id.split('-').map(str::len).collect();
    assert_eq!(shape, [8, 4, 4, 4, 12], "a UUID-shaped request id: {id}");
    assert!(
        id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
        "{id}"
    );
    let next = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_ne!(
        next.headers()["x-request-id"],
        id.as_str(),
        "each request its own id"
    );
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "not_found");

    // A request id sent by a proxy is kept.
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "from-the-proxy-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "from-the-proxy-1");
}

async fn oversized_body_gets_413_and_the_server_keeps_serving(app: TestApp) {
    let big = vec![b'x'; app.config.server.max_body_bytes + 1];
    let res = app
        .client
        .post(app.url("/healthz"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(res.headers()["connection"], "close");
    // The JSON error body replaces the layer's empty one before the security headers are
    // added, so the replacement carries them too.
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        res.headers()["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

async fn healthcheck_command_passes_only_when_healthz_answers_200(app: TestApp) {
    let healthcheck = |bind: String| {
        let db = &app.db;
        async move {
            cli_env(
                db,
                &["healthcheck"],
                None,
                &[("GATEHOUSE__SERVER__BIND", bind.as_str())],
            )
            .await
        }
    };
    let port = app.config.server.bind.port();

    let out = healthcheck(format!("127.0.0.1:{port}")).await.ok();
    assert_eq!(
        out.stdout.trim(),
        format!("ok: http://127.0.0.1:{port}/healthz")
    );

    // Bound to every address (as in a container): checked over loopback.
    let out = healthcheck(format!("0.0.0.0:{port}")).await.ok();
    assert!(out.stdout.contains("http://127.0.0.1:"), "{}", out.stdout);

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = healthcheck(format!("127.0.0.1:{closed_port}"))
        .await
        .failed();
    assert!(out.stderr.contains("did not answer"), "{}", out.stderr);

    // Something answering, but not 200.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sick_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let _ = conn
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    let out = healthcheck(format!("127.0.0.1:{sick_port}")).await.failed();
    assert!(out.stderr.contains("answered 503"), "{}", out.stderr);
}
