//! `POST /mcp` up to dispatch (src/mcp/server.rs, rpc.rs, dispatch.rs): the body as
//! JSON, single message or batch, the JSON-RPC envelope, the era (routing rule), the
//! 2026-07-28 header checks, list cursors and tool-argument validation against the
//! built-in tools' schemas. The handler itself needs a database and a token, so this
//! target calls the same functions in the same order (see src/fuzzing.rs).
//!
//! Input: optional header lines `name: value`, a blank line, then the body. Without a
//! blank line the whole input is the body.
//!
//! Invariants: a refused envelope is -32600 with HTTP 400 and echoes only a string or
//! number id; an accepted request has `jsonrpc: "2.0"`, a string method and a string or
//! integer id taken verbatim; the era is one we serve; a modern request that passes the
//! header checks agrees with its headers; a cursor we issue reads back as its offset;
//! schema validation reports at most 20 errors.

#![no_main]

use std::sync::OnceLock;

use gatehouse::fuzzing::mcp::{self, Envelope, Era, Registry};
use gatehouse::fuzzing::{HeaderMap, headers};
use gatehouse::mcp::rpc::{self, INVALID_REQUEST};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::builtin)
}

fn split(data: &[u8]) -> (Vec<(String, Vec<u8>)>, &[u8]) {
    let Some(at) = data.windows(2).position(|w| w == b"\n\n") else {
        return (Vec::new(), data);
    };
    let pairs = data[..at]
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            let name = String::from_utf8_lossy(&line[..colon]).into_owned();
            let value = line[colon + 1..].trim_ascii().to_vec();
            Some((name, value))
        })
        .collect();
    (pairs, &data[at + 2..])
}

fn check_era(era: Era) {
    assert!(rpc::all_versions().contains(&era.version()));
    assert_eq!(rpc::known_version(era.version()), Some(era));
}

fn check_params(method: &str, params: &Map<String, Value>) {
    let cursor = params.get("cursor");
    for len in [0usize, 3, 1000] {
        if let Ok(start) = mcp::cursor_start(cursor, len) {
            assert!(start <= len);
            let next = Value::String(mcp::next_cursor(start));
            assert_eq!(mcp::cursor_start(Some(&next), len), Ok(start));
        }
    }
    if method == "tools/call"
        && let (Some(name), args) = (
            params.get("name").and_then(Value::as_str),
            params.get("arguments"),
        )
    {
        let args = match args {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(a @ Value::Object(_)) => a.clone(),
            Some(_) => return,
        };
        if let Some(errors) = mcp::argument_errors(registry(), name, &args) {
            assert!(errors.len() <= 20);
        }
        // Every built-in tool also sees these arguments, whatever name was asked for.
        for tool in registry().tool_names() {
            let _ = mcp::argument_errors(registry(), tool, &args);
        }
    }
}

/// One message as the handler sees it; `batched` messages skip the era checks.
fn check_message(
    obj: &Map<String, Value>,
    h: &HeaderMap,
    header_version: Option<&str>,
    batched: bool,
) {
    match mcp::parse_envelope(obj) {
        Err(refusal) => {
            assert_eq!(refusal.code, INVALID_REQUEST);
            assert_eq!(refusal.status, 400);
            let echoed = match obj.get("id") {
                Some(id) if id.is_string() || id.is_number() => id.clone(),
                _ => Value::Null,
            };
            assert_eq!(refusal.id, echoed);
        }
        Ok(Envelope::Notification) => {
            assert!(!obj.contains_key("id"));
            assert!(obj.get("method").is_some_and(Value::is_string));
        }
        Ok(Envelope::ClientResponse) => {
            assert!(!obj.contains_key("method"));
            assert!(obj.contains_key("result") || obj.contains_key("error"));
        }
        Ok(Envelope::Request { id, method, params }) => {
            assert_eq!(obj.get("jsonrpc").and_then(Value::as_str), Some("2.0"));
            assert_eq!(
                obj.get("method").and_then(Value::as_str),
                Some(method.as_str())
            );
            assert_eq!(obj.get("id"), Some(&id));
            assert!(id.is_string() || id.is_i64() || id.is_u64());
            match obj.get("params") {
                None => assert!(params.is_empty()),
                Some(p) => assert_eq!(p.as_object(), Some(&params)),
            }
            if !batched {
                let era = mcp::classify(&method, &params, header_version);
                check_era(era);
                if method == "initialize"
                    && params.get("protocolVersion").is_some_and(Value::is_string)
                {
                    assert_eq!(era, Era::Legacy(rpc::LEGACY_VERSIONS[0]));
                }
                if era.is_modern()
                    && let Ok(checked) = mcp::check_modern(h, header_version, &method, &params)
                {
                    check_era(checked);
                    assert!(checked.is_modern());
                    let meta_version = params
                        .get("_meta")
                        .and_then(|m| m.get(rpc::META_VERSION))
                        .and_then(Value::as_str);
                    assert_eq!(header_version, meta_version);
                    assert_eq!(
                        mcp::header_text(h, "mcp-method").as_deref(),
                        Some(method.as_str())
                    );
                }
            }
            check_params(&method, &params);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (pairs, body) = split(data);
    let h = headers(pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    for name in ["mcp-name", "mcp-method"] {
        if let (Some(text), Some(raw)) = (mcp::header_text(&h, name), h.get(name)) {
            let raw = raw
                .to_str()
                .expect("header_text reads only visible ASCII")
                .trim();
            if !raw.starts_with("=?base64?") {
                assert_eq!(text, raw);
            }
        }
    }
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let header_version = match h.get("mcp-protocol-version").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v.trim()),
        Some(Err(_)) => return,
    };
    if let Some(v) = header_version {
        let e = rpc::RpcError::unsupported_version(v);
        assert_eq!(e.code, rpc::UNSUPPORTED_VERSION);
        let _ = e.to_message(Value::Null);
        assert!(rpc::clip(v).chars().count() <= 80);
    }
    match &message {
        Value::Object(obj) => check_message(obj, &h, header_version, false),
        Value::Array(batch) => {
            let version = header_version.unwrap_or(rpc::DEFAULT_VERSION);
            if (version == "2025-03-26" || version == "2024-11-05")
                && !batch.is_empty()
                && batch.len() <= 100
            {
                for item in batch {
                    if let Value::Object(obj) = item {
                        check_message(obj, &h, header_version, true);
                    }
                }
            }
        }
        _ => {}
    }
});
