//! A tool call made an HTTP request, and the answer made a tool result.

use serde_json::{Map, Value, json};

use super::spec::{Body, BodyKind, BodyShape, Location, Operation, Param, Style};

/// The request for one call, before the credentials are added.
#[derive(Debug)]
pub struct Request {
    pub method: reqwest::Method,
    pub url: url::Url,
    pub headers: Vec<(String, String)>,
    /// `(content type, bytes)`.
    pub body: Option<(String, Vec<u8>)>,
}

/// Builds the request for `op` from validated `args`; an error says what to change.
pub fn build(
    op: &Operation,
    args: &Map<String, Value>,
    base: &url::Url,
) -> Result<Request, String> {
    let mut path = String::new();
    let mut rest = op.path.as_str();
    while let Some(open) = rest.find('{') {
        path.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .ok_or("the path template is malformed")?;
        let name = &rest[open + 1..close];
        let param = op
            .params
            .iter()
            .find(|p| p.location == Location::Path && p.name == name)
            .ok_or_else(|| format!("the path parameter {name} is not declared"))?;
        let value = args
            .get(&param.property)
            .ok_or_else(|| format!("{} is required", param.property))?;
        let text = joined(param, value);
        // `.` and `..` would be resolved as path steps ("%2e" too), leaving the
        // operation's path; an empty segment would change it as well.
        if text.is_empty() || text == "." || text == ".." {
            return Err(format!(
                "{} may not be empty, \".\" or \"..\"",
                param.property
            ));
        }
        path.push_str(&encode(&text));
        rest = &rest[close + 1..];
    }
    path.push_str(rest);
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    let mut query = Vec::new();
    let mut headers = Vec::new();
    for p in &op.params {
        let Some(value) = args.get(&p.property) else {
            continue;
        };
        match p.location {
            Location::Path => {}
            Location::Query => query_pairs(p, value, &mut query),
            Location::Header => headers.push((p.name.clone(), header_value(p, value))),
        }
    }
    if !query.is_empty() {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &query {
            s.append_pair(k, v);
        }
        url.set_query(Some(&s.finish()));
    }
    let body = match &op.body {
        Some(b) => body(b, args)?,
        None => None,
    };
    Ok(Request {
        method: op.method.clone(),
        url,
        headers,
        body,
    })
}

fn body(b: &Body, args: &Map<String, Value>) -> Result<Option<(String, Vec<u8>)>, String> {
    let value = match &b.shape {
        BodyShape::Whole(property) => match args.get(property) {
            Some(v) => v.clone(),
            None => return Ok(None),
        },
        BodyShape::Fields(fields) => {
            let mut object = Map::new();
            for (property, field) in fields {
                if let Some(v) = args.get(property) {
                    object.insert(field.clone(), v.clone());
                }
            }
            // With no field given, still an empty object: most APIs expect one.
            Value::Object(object)
        }
    };
    let bytes = match b.kind {
        BodyKind::Json => serde_json::to_vec(&value).map_err(|e| e.to_string())?,
        BodyKind::Form => {
            let Value::Object(fields) = &value else {
                return Err("a form body must be an object".into());
            };
            let mut s = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in fields {
                match v {
                    Value::Array(items) => {
                        for i in items {
                            s.append_pair(k, &scalar(i));
                        }
                    }
                    other => {
                        s.append_pair(k, &scalar(other));
                    }
                }
            }
            s.finish().into_bytes()
        }
    };
    let content_type = match b.kind {
        BodyKind::Json if b.media_type == "*/*" => "application/json".to_owned(),
        _ => b.media_type.clone(),
    };
    Ok(Some((content_type, bytes)))
}

/// A primitive as text; anything else as compact JSON.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        other => other.to_string(),
    }
}

fn joined(p: &Param, value: &Value) -> String {
    let (explode, delimiter) = match p.style {
        Style::Delimited { explode, delimiter } => (explode, delimiter),
        Style::DeepObject => (true, ','),
        Style::Json => return value.to_string(),
    };
    match value {
        Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Vec<_>>()
            .join(&delimiter.to_string()),
        Value::Object(fields) => {
            let parts: Vec<String> = fields
                .iter()
                .map(|(k, v)| {
                    if explode {
                        format!("{k}={}", scalar(v))
                    } else {
                        format!("{k}{delimiter}{}", scalar(v))
                    }
                })
                .collect();
            parts.join(&delimiter.to_string())
        }
        other => scalar(other),
    }
}

fn header_value(p: &Param, value: &Value) -> String {
    // Header values may not hold line breaks; anything else is the API's to judge.
    joined(p, value).replace(['\r', '\n'], " ")
}

fn query_pairs(p: &Param, value: &Value, out: &mut Vec<(String, String)>) {
    match (p.style, value) {
        (Style::Json, v) => out.push((p.name.clone(), v.to_string())),
        (Style::DeepObject, Value::Object(fields)) => {
            for (k, v) in fields {
                out.push((format!("{}[{k}]", p.name), scalar(v)));
            }
        }
        (Style::Delimited { explode: true, .. }, Value::Array(items)) => {
            for i in items {
                out.push((p.name.clone(), scalar(i)));
            }
        }
        (Style::Delimited { explode: true, .. }, Value::Object(fields)) => {
            for (k, v) in fields {
                out.push((k.clone(), scalar(v)));
            }
        }
        (_, v) => out.push((p.name.clone(), joined(p, v))),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The answer as a tool result: JSON as structured content and text, an error result
/// for a non-2xx status, with a note when the answer was cut at `limit` bytes.
pub fn result(
    status: u16,
    reason: &str,
    content_type: Option<&str>,
    body: &[u8],
    cut: bool,
    limit: usize,
) -> Map<String, Value> {
    let is_json = content_type.is_some_and(|t| {
        let t = t
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        t == "application/json" || t.ends_with("+json")
    });
    let ok = (200..300).contains(&status);
    let note = format!(
        "\n\n[The answer was cut at {limit} bytes (its upstream's max_response_bytes); ask for less, for example with filters or a smaller page.]"
    );
    let mut out = Map::new();
    // Said outright, as our own tools do, though the spec lets it be left out.
    out.insert("isError".into(), json!(!ok));
    if !ok {
        // The model reads the API's own explanation and can correct the call.
        const SHOWN: usize = 4096;
        let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN)]);
        let more = if body.len() > SHOWN || cut {
            " […]"
        } else {
            ""
        };
        let text = if text.trim().is_empty() {
            format!("HTTP {status} {reason}")
        } else {
            format!("HTTP {status} {reason}: {}{more}", text.trim())
        };
        out.insert("content".into(), json!([{ "type": "text", "text": text }]));
        out.insert("isError".into(), json!(true));
        return out;
    }
    if body.is_empty() {
        out.insert(
            "content".into(),
            json!([{ "type": "text", "text": format!("HTTP {status} {reason} (no content)") }]),
        );
        return out;
    }
    if is_json
        && !cut
        && let Ok(v) = serde_json::from_slice::<Value>(body)
    {
        let text = String::from_utf8_lossy(body).into_owned();
        let structured = match v {
            Value::Object(o) => Value::Object(o),
            other => json!({ "result": other }),
        };
        out.insert("content".into(), json!([{ "type": "text", "text": text }]));
        out.insert("structuredContent".into(), structured);
        return out;
    }
    let textual = !content_type.is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t.starts_with("image/")
            || t.starts_with("audio/")
            || t.starts_with("video/")
            || t.contains("octet-stream")
            || t.contains("zip")
            || t.contains("pdf")
    });
    let mut text = if textual {
        String::from_utf8_lossy(body).into_owned()
    } else {
        format!(
            "HTTP {status} {reason}: {} bytes of {}, not shown",
            body.len(),
            content_type.unwrap_or("unknown type")
        )
    };
    if cut {
        text.push_str(&note);
    }
    out.insert("content".into(), json!([{ "type": "text", "text": text }]));
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::gateway::openapi::spec;

    fn op(doc: Value) -> Operation {
        let a = spec::build(&doc, &[], &[], &HashSet::new()).unwrap();
        assert!(a.skipped.is_empty(), "{:?}", a.skipped);
        a.operations.into_iter().next().unwrap()
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_request_is_built_from_the_arguments() {
        let o = op(
            json!({ "openapi": "3.0.3", "paths": { "/repos/{owner}/{repo}/issues": { "post": {
                "operationId": "issues/create",
                "parameters": [
                    { "name": "owner", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "repo", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "labels", "in": "query", "schema": { "type": "array", "items": { "type": "string" } } },
                    { "name": "ids", "in": "query", "explode": false, "schema": { "type": "array" } },
                    { "name": "filter", "in": "query", "style": "deepObject", "schema": { "type": "object" } },
                    { "name": "X-Request", "in": "header", "schema": { "type": "string" } }
                ],
                "requestBody": { "content": { "application/json": { "schema": { "type": "object", "properties": { "title": { "type": "string" } } } } } }
            }}}}),
        );
        let base = url::Url::parse("https://api.example.com/v3/").unwrap();
        let r = build(
            &o,
            &args(json!({
                "owner": "a b/c", "repo": "r", "labels": ["x", "y"], "ids": [1, 2],
                "filter": { "state": "open" }, "X-Request": "one\r\ntwo", "title": "Hi"
            })),
            &base,
        )
        .unwrap();
        assert_eq!(r.method, reqwest::Method::POST);
        assert_eq!(r.url.path(), "/v3/repos/a%20b%2Fc/r/issues");
        assert_eq!(
            r.url.query(),
            Some("labels=x&labels=y&ids=1%2C2&filter%5Bstate%5D=open")
        );
        assert_eq!(r.headers, [("X-Request".to_owned(), "one  two".to_owned())]);
        let (ct, bytes) = r.body.unwrap();
        assert_eq!(ct, "application/json");
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            json!({ "title": "Hi" })
        );
        for bad in ["..", ".", ""] {
            let e = build(&o, &args(json!({ "owner": bad, "repo": "r" })), &base).unwrap_err();
            assert!(e.contains("owner"), "{e}");
        }
    }

    #[test]
    fn answers_become_results() {
        let r = result(
            200,
            "OK",
            Some("application/json; charset=utf-8"),
            br#"[1,2]"#,
            false,
            10,
        );
        assert_eq!(r["structuredContent"], json!({ "result": [1, 2] }));
        let r = result(
            404,
            "Not Found",
            Some("application/json"),
            br#"{"message":"no such repo"}"#,
            false,
            10,
        );
        assert_eq!(r["isError"], true);
        assert!(
            r["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("HTTP 404 Not Found: {\"message\":\"no such repo\"}")
        );
        let r = result(200, "OK", Some("application/json"), br#"{"a":"#, true, 5);
        assert!(r.get("structuredContent").is_none());
        assert!(
            r["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("cut at 5 bytes")
        );
        let r = result(204, "No Content", None, b"", false, 5);
        assert!(r["content"][0]["text"].as_str().unwrap().contains("204"));
        let r = result(200, "OK", Some("image/png"), &[0x89, 0x50], false, 5);
        assert!(
            r["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("2 bytes of image/png")
        );
    }
}
