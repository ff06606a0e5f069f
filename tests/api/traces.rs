//! OpenTelemetry trace export (issue #6 item 2): the real binary sends its spans to a
//! collector over OTLP/HTTP, continuing the caller's `traceparent`.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestDb, cli_pat, seed_owner};
use crate::process::Serve;

both_backends!(db: spans_reach_an_otlp_collector_and_continue_the_callers_trace);

/// An OTLP/HTTP collector on a free port that keeps every JSON body posted to it.
async fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let keep = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                keep.lock().unwrap().push(v);
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

/// Every span in the bodies received, with its resource's attributes alongside.
fn spans(bodies: &[Value]) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for body in bodies {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    out.push((span.clone(), rs["resource"]["attributes"].clone()));
                }
            }
        }
    }
    out
}

/// An attribute's value as text, whatever its OTLP JSON type.
fn attribute(attributes: &Value, key: &str) -> Option<String> {
    attributes
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| {
            let v = &a["value"];
            let inner = v
                .as_object()
                .and_then(|o| o.values().next())
                .cloned()
                .unwrap_or(Value::Null);
            inner
                .as_str()
                .map_or_else(|| inner.to_string(), str::to_owned)
        })
}

async fn spans_reach_an_otlp_collector_and_continue_the_callers_trace(db: TestDb) {
    let (endpoint, received) = collector().await;
    // Creating the owner first means the first start prints no key.
    let store = db.store().await;
    store.migrate().await.unwrap();
    seed_owner(&store).await;
    let pat = cli_pat(&db, "default", "owner@example.com", "account:read").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut served = Serve::new(&db)
        .env("GATEHOUSE__LOG__FILTER", "info")
        .env("GATEHOUSE__TRACES__OTLP_ENDPOINT", &endpoint)
        .env("GATEHOUSE__TRACES__OTLP_PROTOCOL", "http/json")
        .env("GATEHOUSE__TRACES__SERVICE_NAME", "gatehouse-under-test")
        .start()
        .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let res = reqwest::Client::new()
        .post(format!("{}/mcp", served.base))
        .header("accept", "application/json, text/event-stream")
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .bearer_auth(&pat)
        .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": "whoami" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Shutting down sends what the batch still holds.
    served.stop().await;
    let out = served.output();
    assert!(out.contains("exporting traces over OTLP"), "{out}");
    let bodies = received.lock().unwrap().clone();
    let spans = spans(&bodies);

    let (request, resource) = spans
        .iter()
        .find(|(s, _)| s["name"] == "POST /mcp")
        .unwrap_or_else(|| panic!("no request span: {bodies:?}"));
    assert_eq!(
        attribute(resource, "service.name").as_deref(),
        Some("gatehouse-under-test")
    );
    assert_eq!(request["traceId"], trace_id, "{request}");
    assert_eq!(request["parentSpanId"], parent_id, "{request}");
    assert_eq!(
        attribute(&request["attributes"], "http.response.status_code").as_deref(),
        Some("200"),
        "{request}"
    );
    assert_eq!(
        attribute(&request["attributes"], "http.route").as_deref(),
        Some("/mcp")
    );
    let (tool, _) = spans
        .iter()
        .find(|(s, _)| s["name"] == "tools/call whoami")
        .unwrap_or_else(|| panic!("no tool span: {bodies:?}"));
    assert_eq!(tool["traceId"], trace_id);
    assert_eq!(tool["parentSpanId"], request["spanId"]);
    assert_eq!(
        attribute(&tool["attributes"], "mcp.outcome").as_deref(),
        Some("ok")
    );
    // The token went through the request, and into no span.
    let exported = serde_json::to_string(&bodies).unwrap();
    assert!(!exported.contains(&pat));
    assert!(!exported.contains(&pat["gth_pat_".len()..][..16]));
}
