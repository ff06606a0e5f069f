//! What an orchestrator does to a process (issue #6 item 4): SIGTERM drains in-flight
//! requests within `server.shutdown_timeout_secs`, and SIGKILL in the middle of flows
//! loses nothing that was acknowledged.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::both_backends;
use crate::helpers::{TestDb, cli_pat, seed_owner};
use crate::oauth_helpers::*;
use crate::process::{Serve, app_for};

both_backends!(
    db: sigterm_lets_in_flight_requests_finish,
    sigterm_cuts_requests_still_open_after_the_shutdown_timeout,
    sigkill_in_the_middle_of_flows_loses_nothing_acknowledged,
);

/// A registration whose body is sent in two halves; returns the open connection after
/// the first half, and the second half.
async fn half_sent_registration(port: u16) -> (TcpStream, String) {
    let body = json!({
        "client_name": "Slow upload",
        "redirect_uris": [CB],
        "token_endpoint_auth_method": "none",
    })
    .to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!(
        "POST /register HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    // Give the server time to accept the connection and read the head (generously: a
    // loaded machine must not turn this into a refused connection).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    (conn, tail.to_owned())
}

async fn refuses_new_connections_soon(port: u16) {
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("still accepting connections 5 s after SIGTERM");
}

async fn sigterm_lets_in_flight_requests_finish(db: TestDb) {
    let mut served = Serve::new(&db)
        .env("GATEHOUSE__LOG__FILTER", "info")
        .start()
        .await;
    let (mut conn, rest) = half_sent_registration(served.port).await;
    served.signal("TERM");
    // The listener closes at once, so a load balancer moves new requests elsewhere...
    refuses_new_connections_soon(served.port).await;
    // ...while the request already in flight is answered in full.
    conn.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let client_id = body["client_id"].as_str().unwrap();
    let status = served.exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}: {}", served.output());
    let out = served.output();
    assert!(out.contains("shutdown requested"), "{out}");
    assert!(!out.contains("still in flight"), "{out}");
    // What it answered is in the database.
    let store = db.store().await;
    let client = store.find_client(client_id).await.unwrap();
    assert_eq!(client.map(|c| c.name), Some("Slow upload".to_owned()));
}

async fn sigterm_cuts_requests_still_open_after_the_shutdown_timeout(db: TestDb) {
    let mut served = Serve::new(&db)
        .env("GATEHOUSE__SERVER__SHUTDOWN_TIMEOUT_SECS", "1")
        .start()
        .await;
    // A client that never sends the rest of its body.
    let (mut conn, _) = half_sent_registration(served.port).await;
    served.signal("TERM");
    let status = served.exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}: {}", served.output());
    let out = served.output();
    assert!(
        out.contains("requests still in flight after server.shutdown_timeout_secs"),
        "{out}"
    );
    // The connection was closed, not left hanging.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "connection still open");
}

/// Calls `create_access_token` with `pat` until the server stops answering; returns
/// every token it acknowledged, with its id.
async fn create_tokens_until_refused(
    base: String,
    pat: String,
    worker: usize,
) -> Vec<(String, String)> {
    let http = reqwest::Client::new();
    let mut made = Vec::new();
    for n in 0.. {
        let res = http
            .post(format!("{base}/mcp"))
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(&pat)
            .json(&json!({
                "jsonrpc": "2.0", "id": n, "method": "tools/call",
                "params": { "name": "create_access_token",
                            "arguments": { "name": format!("load {worker}-{n}"), "scopes": "account:read" } }
            }))
            .send()
            .await;
        let Ok(res) = res else { break };
        let Ok(body) = res.json::<Value>().await else {
            break;
        };
        let result = &body["result"]["structuredContent"];
        assert!(result["token"].is_string(), "{body}");
        made.push((
            result["id"].as_str().unwrap().to_owned(),
            result["token"].as_str().unwrap().to_owned(),
        ));
    }
    made
}

async fn sigkill_in_the_middle_of_flows_loses_nothing_acknowledged(db: TestDb) {
    let first = Serve::new(&db);
    let public = first.base();
    // The owner exists before the start, and a PAT that may create PATs.
    let store = db.store().await;
    store.migrate().await.unwrap();
    let key = seed_owner(&store).await;
    let pat = cli_pat(
        &db,
        "default",
        "owner@example.com",
        "account:read account:write",
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // No per-token limit: four clients on one PAT must not be told to slow down.
    let mut a = first
        .env("GATEHOUSE__LIMITS__MCP_PER_CREDENTIAL", "off")
        .start()
        .await;
    let app = app_for(&a, db).await;

    // One flow stopped after the code was handed out, one after the token response.
    let client_id = register_public(&app, CB).await;
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
    let redirect = sign_in_and_approve(&app, &q, &key).await;
    let pending_code = query_param(&redirect, "code").expect("code");
    let p2 = pkce();
    let q2 = authorize_query(
        &client_id,
        CB,
        &p2.challenge,
        &[
            ("scope", "account:read offline_access"),
            ("resource", &format!("{public}/mcp")),
        ],
    );
    let redirect = sign_in_and_approve(&app, &q2, &key).await;
    let code = query_param(&redirect, "code").unwrap();
    let (status, tokens, _) = exchange(&app, &client_id, &code, CB, &p2.verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");

    // Tokens being created as fast as four clients can, when the process is killed.
    let workers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(create_tokens_until_refused(a.base.clone(), pat.clone(), w)))
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    a.signal("KILL");
    let status = a.exit(Duration::from_secs(10)).await;
    assert!(!status.success(), "killed: {status}");
    let mut acknowledged = Vec::new();
    for w in workers {
        acknowledged.extend(w.await.unwrap());
    }
    assert!(acknowledged.len() >= 4, "load ran: {}", acknowledged.len());

    // Another process on the same database has all of it.
    let b = Serve::new(&app.db).public_url(&public).start().await;
    let app = app.at(&b.base);
    let (status, body, _) = exchange(&app, &client_id, &pending_code, CB, &p.verifier).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the code handed out before the kill: {body}"
    );
    let (status, body, _) =
        refresh_with(&app, &client_id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the refresh token issued before: {body}"
    );
    let audit = app
        .store
        .list_audit(&gatehouse::storage::AuditFilter {
            org_id: None,
            action_prefix: Some("pat.create".into()),
            limit: 10_000,
        })
        .await
        .unwrap();
    for (id, token) in &acknowledged {
        let res = crate::mcp::rpc(
            &app,
            Some(token),
            json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": "whoami" } }),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK, "acknowledged PAT {id}");
        let target = format!("pat:{id}");
        assert!(
            audit
                .iter()
                .any(|e| e.target.as_deref() == Some(target.as_str())),
            "audit row of {id}"
        );
    }
    println!(
        "{:?}: {} PATs acknowledged before SIGKILL, all usable and audited afterwards",
        app.db.backend,
        acknowledged.len()
    );
}
