//! The load benchmark's baseline: bare axum answering a JSON-RPC `tools/call` of an echo
//! tool, serde_json in and out, no authentication, no database. Gatehouse's hot path is
//! measured as a ratio to this, in the same run (see `examples/bench.rs`).
//!
//! `bench_baseline [ADDR]` (default 127.0.0.1:0) prints `listening on <addr>` once bound.

use std::net::SocketAddr;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

async fn mcp(body: axum::body::Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad json").into_response();
    };
    let text = request["params"]["arguments"].to_string();
    axum::Json(json!({
        "jsonrpc": "2.0",
        "id": request["id"],
        "result": { "content": [{ "type": "text", "text": text }], "isError": false },
    }))
    .into_response()
}

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:0")
        .parse()
        .map_err(std::io::Error::other)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("listening on {}", listener.local_addr()?);
        let app = Router::new().route("/mcp", post(mcp));
        axum::serve(listener, app).await
    })
}
