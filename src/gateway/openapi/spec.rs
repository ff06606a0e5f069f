//! An OpenAPI 3.0 or 3.1 document (JSON or YAML) turned into tools: one per selected
//! operation, each with a self-contained input schema built from its path, query and
//! header parameters and its request body, and the plan to turn a call back into the
//! HTTP request.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value, json};

use super::refs::{RefError, Resolver};
use crate::gateway::Skipped;

/// Parses JSON or YAML into JSON values (YAML keys such as `200:` become strings).
pub fn parse_document(bytes: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_owned())?;
    let text = text.trim_start_matches('\u{feff}');
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).map_err(|e| format!("it is not valid JSON: {e}"));
    }
    let yaml: yaml_serde::Value =
        yaml_serde::from_str(text).map_err(|e| format!("it is not valid JSON or YAML: {e}"))?;
    yaml_to_json(yaml, 0)
}

fn yaml_to_json(v: yaml_serde::Value, depth: usize) -> Result<Value, String> {
    use yaml_serde::Value as Y;
    if depth > 256 {
        return Err("it nests deeper than 256 levels".into());
    }
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(|i| yaml_to_json(i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    Y::Null => "null".into(),
                    _ => return Err("a mapping key is not a scalar".into()),
                };
                out.insert(key, yaml_to_json(val, depth + 1)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value, depth + 1)?,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Path,
    Query,
    Header,
}

impl Location {
    fn as_str(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::Query => "query",
            Self::Header => "header",
        }
    }
}

/// How a parameter's value is written (OpenAPI's `style` and `explode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `simple` (path, header), `form` (query), `spaceDelimited`, `pipeDelimited`.
    Delimited { explode: bool, delimiter: char },
    /// `deepObject`: `name[key]=value`.
    DeepObject,
    /// A parameter with `content`: its value as JSON text.
    Json,
}

#[derive(Debug, Clone)]
pub struct Param {
    /// Its name in the tool's arguments.
    pub property: String,
    /// Its name in the request.
    pub name: String,
    pub location: Location,
    pub style: Style,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
}

#[derive(Debug, Clone)]
pub enum BodyShape {
    /// The whole body is one argument.
    Whole(String),
    /// The body object's fields are arguments: `(argument, field)`.
    Fields(Vec<(String, String)>),
}

#[derive(Debug, Clone)]
pub struct Body {
    pub kind: BodyKind,
    pub media_type: String,
    pub shape: BodyShape,
}

/// One operation as a tool.
#[derive(Debug, Clone)]
pub struct Operation {
    /// The tool's name at this upstream.
    pub tool: String,
    pub method: reqwest::Method,
    /// The path template, such as `/repos/{owner}/{repo}`.
    pub path: String,
    pub params: Vec<Param>,
    pub body: Option<Body>,
    /// The `tools/list` entry.
    pub definition: Map<String, Value>,
    /// Set when the input schema had to be simplified to fit clients' limits.
    pub simplified: Option<String>,
}

impl Operation {
    pub fn writes(&self) -> bool {
        !matches!(
            self.method,
            reqwest::Method::GET | reqwest::Method::HEAD | reqwest::Method::OPTIONS
        )
    }
}

/// What a document yields.
#[derive(Debug, Default)]
pub struct Api {
    /// `3.0.3`, `3.1.0`, ...
    pub version: String,
    pub operations: Vec<Operation>,
    /// Operations not made tools, with the reason (by operationId, or `METHOD /path`).
    pub skipped: Vec<Skipped>,
    /// How many operations the document has.
    pub total: usize,
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The operations of `doc` selected by `include` and `exclude`; headers in `reserved`
/// (ones Gatehouse sets itself) are never arguments.
pub fn build(
    doc: &Value,
    include: &[String],
    exclude: &[String],
    reserved: &HashSet<String>,
) -> Result<Api, String> {
    if doc.get("swagger").is_some() {
        return Err(
            "it is Swagger 2.0; convert it to OpenAPI 3 (for example with swagger2openapi)".into(),
        );
    }
    let version = doc
        .get("openapi")
        .and_then(Value::as_str)
        .ok_or("it has no `openapi` version field")?
        .to_owned();
    let v30 = if version.starts_with("3.0") {
        true
    } else if version.starts_with("3.1") || version.starts_with("3.2") {
        false
    } else {
        return Err(format!(
            "OpenAPI {version} is not supported (3.0 and 3.1 are)"
        ));
    };
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .ok_or("it has no `paths` object")?;
    let mut api = Api {
        version,
        ..Api::default()
    };
    let mut names = HashSet::new();
    for (path, item) in paths {
        let resolver = Resolver::new(doc, v30);
        let item = match resolver.object(item) {
            Ok(i) => i,
            Err(e) => {
                api.skipped.push(Skipped {
                    tool: path.clone(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let shared = item.get("parameters").and_then(Value::as_array);
        for method in METHODS {
            let Some(op) = item.get(method).filter(|o| o.is_object()) else {
                continue;
            };
            api.total += 1;
            let label = match op.get("operationId").and_then(Value::as_str) {
                Some(id) => id.to_owned(),
                None => format!("{} {path}", method.to_uppercase()),
            };
            let tags: Vec<&str> = op
                .get("tags")
                .and_then(Value::as_array)
                .map(|t| t.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let id = op.get("operationId").and_then(Value::as_str);
            let matches = |p: &String| selects(p, id, &tags, method, path);
            if !include.is_empty() && !include.iter().any(matches) {
                api.skipped.push(Skipped {
                    tool: label,
                    reason: "not in include".into(),
                });
                continue;
            }
            if let Some(p) = exclude.iter().find(|p| matches(p)) {
                api.skipped.push(Skipped {
                    tool: label,
                    reason: format!("excluded by {p:?}"),
                });
                continue;
            }
            let base = tool_name(id, method, path);
            let mut tool = base.clone();
            let mut n = 2;
            while names.contains(&tool) {
                tool = format!("{base}_{n}");
                n += 1;
            }
            match operation(doc, v30, &tool, method, path, op, shared, reserved) {
                Ok(o) => {
                    names.insert(tool);
                    api.operations.push(o);
                }
                Err(reason) => api.skipped.push(Skipped {
                    tool: label,
                    reason,
                }),
            }
        }
    }
    Ok(api)
}

/// `pattern` (`tag:NAME`, `METHOD /path`, or an operationId; `*` may end any of
/// them) matches this operation.
fn selects(pattern: &str, id: Option<&str>, tags: &[&str], method: &str, path: &str) -> bool {
    let glob = |p: &str, s: &str| match p.strip_suffix('*') {
        Some(head) => s.starts_with(head),
        None => p == s,
    };
    if let Some(tag) = pattern.strip_prefix("tag:") {
        return tags.iter().any(|t| glob(tag, t));
    }
    if let Some((m, p)) = pattern.split_once(' ') {
        return (m == "*" || m.eq_ignore_ascii_case(method)) && glob(p.trim(), path);
    }
    id.is_some_and(|id| glob(pattern, id))
}

/// The tool's name: the operationId, else the method and path, with anything outside
/// `[A-Za-z0-9_-]` made `_` (so `issues/create` is `issues_create`).
fn tool_name(id: Option<&str>, method: &str, path: &str) -> String {
    let raw = match id {
        Some(id) => id.to_owned(),
        None => format!("{method}_{}", path.replace(['{', '}'], "")),
    };
    let mut out = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '-' {
            c
        } else {
            '_'
        };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    let out = out.trim_matches('_');
    if out.is_empty() {
        format!("{method}_root")
    } else {
        out.to_owned()
    }
}

/// An argument name every client accepts (`^[a-zA-Z0-9_.-]{1,64}$`, Claude's rule for
/// property names).
fn property_name(raw: &str) -> String {
    let s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    if s.is_empty() { "value".into() } else { s }
}

/// Picks the argument name for `raw`: plain when free, else with its location, else
/// numbered. Earlier locations (path, query, header, body) keep the plain names.
fn claim(taken: &mut HashSet<String>, raw: &str, location: &str) -> String {
    let plain = property_name(raw);
    if taken.insert(plain.clone()) {
        return plain;
    }
    let located = format!("{plain}_{location}");
    if taken.insert(located.clone()) {
        return located;
    }
    let mut n = 2;
    loop {
        let numbered = format!("{located}_{n}");
        if taken.insert(numbered.clone()) {
            return numbered;
        }
        n += 1;
    }
}

#[allow(clippy::too_many_arguments)]
fn operation(
    doc: &Value,
    v30: bool,
    tool: &str,
    method: &str,
    path: &str,
    op: &Value,
    shared: Option<&Vec<Value>>,
    reserved: &HashSet<String>,
) -> Result<Operation, String> {
    let mut resolver = Resolver::new(doc, v30);
    let err = |e: RefError| e.to_string();
    // Operation-level parameters override path-level ones of the same name and place.
    let mut declared: BTreeMap<(String, String), &Value> = BTreeMap::new();
    let mut order = Vec::new();
    for p in shared.into_iter().flatten().chain(
        op.get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten(),
    ) {
        let p = resolver.object(p).map_err(err)?;
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a parameter has no name")?;
        let place = p
            .get("in")
            .and_then(Value::as_str)
            .ok_or("a parameter has no `in`")?;
        let key = (place.to_owned(), name.to_owned());
        if declared.insert(key.clone(), p).is_none() {
            order.push(key);
        }
    }
    let mut taken = HashSet::from(["idempotency_key".to_owned()]);
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut params = Vec::new();
    for location in [Location::Path, Location::Query, Location::Header] {
        for key in order.iter().filter(|(place, _)| place == location.as_str()) {
            let p = declared[key];
            let name = key.1.as_str();
            let is_required =
                location == Location::Path || p.get("required") == Some(&Value::Bool(true));
            if location == Location::Header {
                let lower = name.to_ascii_lowercase();
                // OpenAPI ignores these three as parameters; the rest Gatehouse sets.
                if matches!(lower.as_str(), "accept" | "content-type" | "authorization")
                    || reserved.contains(&lower)
                {
                    if is_required {
                        tracing::debug!(
                            tool,
                            header = name,
                            "required header parameter left to Gatehouse"
                        );
                    }
                    continue;
                }
            }
            let (schema, style) = match (p.get("schema"), p.get("content")) {
                (Some(s), _) => (resolver.schema(s).map_err(err)?, param_style(p, location)?),
                (None, Some(Value::Object(c))) => {
                    let s = c
                        .values()
                        .next()
                        .and_then(|m| m.get("schema"))
                        .cloned()
                        .unwrap_or_else(|| json!({}));
                    (resolver.schema(&s).map_err(err)?, Style::Json)
                }
                _ => (json!({}), param_style(p, location)?),
            };
            let property = claim(&mut taken, name, location.as_str());
            properties.insert(property.clone(), described(schema, p));
            if is_required {
                required.push(json!(property));
            }
            params.push(Param {
                property,
                name: name.to_owned(),
                location,
                style,
            });
        }
    }
    if let Some((place, name)) = order.iter().find(|(place, _)| place == "cookie") {
        let p = declared[&(place.clone(), name.clone())];
        if p.get("required") == Some(&Value::Bool(true)) {
            return Err(format!(
                "it needs the cookie parameter {name:?}; cookies are not sent"
            ));
        }
    }
    for (place, _) in &order {
        if !matches!(place.as_str(), "path" | "query" | "header" | "cookie") {
            return Err(format!("a parameter is `in: {place}`"));
        }
    }
    // Every `{name}` of the path must be a parameter, or the URL cannot be built.
    for segment in path.split('{').skip(1) {
        let name = segment.split('}').next().unwrap_or_default();
        if !params
            .iter()
            .any(|p| p.location == Location::Path && p.name == name)
        {
            return Err(format!("its path parameter {{{name}}} is not declared"));
        }
    }
    let mut body = None;
    if let Some(rb) = op.get("requestBody") {
        let rb = resolver.object(rb).map_err(err)?;
        let body_required = rb.get("required") == Some(&Value::Bool(true));
        let content = rb.get("content").and_then(Value::as_object);
        let pick = content.and_then(|c| {
            let json = c.iter().find(|(t, _)| is_json(t));
            let form = c
                .iter()
                .find(|(t, _)| t.starts_with("application/x-www-form-urlencoded"));
            json.map(|(t, m)| (BodyKind::Json, t, m))
                .or(form.map(|(t, m)| (BodyKind::Form, t, m)))
        });
        match pick {
            Some((kind, media_type, media)) => {
                let schema = match media.get("schema") {
                    Some(s) => resolver.schema(s).map_err(err)?,
                    None => json!({}),
                };
                let shape = match flat_fields(&schema) {
                    Some((fields, field_required)) => {
                        let mut pairs = Vec::new();
                        for (field, fschema) in fields {
                            let property = claim(&mut taken, &field, "body");
                            if body_required && field_required.contains(&field) {
                                required.push(json!(property));
                            }
                            properties.insert(property.clone(), fschema);
                            pairs.push((property, field));
                        }
                        BodyShape::Fields(pairs)
                    }
                    _ => {
                        let property = claim(&mut taken, "body", "body");
                        let mut schema = schema;
                        if let Some(d) = rb.get("description").and_then(Value::as_str)
                            && let Some(o) = schema.as_object_mut()
                        {
                            o.entry("description").or_insert_with(|| json!(d));
                        }
                        properties.insert(property.clone(), schema);
                        if body_required {
                            required.push(json!(property));
                        }
                        BodyShape::Whole(property)
                    }
                };
                body = Some(Body {
                    kind,
                    media_type: media_type.clone(),
                    shape,
                });
            }
            None if body_required => {
                let types: Vec<&str> = content
                    .map(|c| c.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                return Err(format!(
                    "its request body is {} (only JSON and form bodies are sent)",
                    if types.is_empty() {
                        "undescribed".into()
                    } else {
                        types.join(", ")
                    }
                ));
            }
            None => {}
        }
    }
    let mut input = json!({ "type": "object", "properties": properties });
    if !required.is_empty() {
        input["required"] = Value::Array(required);
    }
    let defs = resolver.into_defs();
    if !defs.is_empty() {
        input["$defs"] = Value::Object(defs);
    }
    let simplified = slim(&mut input, SCHEMA_BUDGET);
    let summary = text(op, "summary");
    let mut description = match (&summary, text(op, "description")) {
        (Some(s), Some(d)) if d.starts_with(s.as_str()) => d,
        (Some(s), Some(d)) => format!("{s}\n\n{d}"),
        (Some(s), None) => s.clone(),
        (None, Some(d)) => d,
        (None, None) => String::new(),
    };
    if op.get("deprecated") == Some(&Value::Bool(true)) {
        description = format!("Deprecated. {description}");
    }
    description.push_str(&format!(
        "{}({} {path})",
        if description.is_empty() { "" } else { "\n\n" },
        method.to_uppercase()
    ));
    let (read_only, destructive, idempotent) = match method {
        "get" | "head" | "options" | "trace" => (true, false, true),
        "delete" => (false, true, true),
        "put" => (false, true, true),
        "patch" => (false, true, false),
        _ => (false, false, false),
    };
    let mut definition = Map::new();
    definition.insert("name".into(), json!(tool));
    if let Some(s) = summary {
        definition.insert("title".into(), json!(s));
    }
    definition.insert("description".into(), json!(description));
    definition.insert("inputSchema".into(), input);
    definition.insert(
        "annotations".into(),
        json!({
            "readOnlyHint": read_only,
            "destructiveHint": destructive,
            "idempotentHint": idempotent,
            "openWorldHint": true,
        }),
    );
    let method = method
        .to_uppercase()
        .parse::<reqwest::Method>()
        .map_err(|_| format!("{method} is not an HTTP method"))?;
    Ok(Operation {
        tool: tool.to_owned(),
        method,
        path: path.to_owned(),
        params,
        body,
        definition,
        simplified,
    })
}

/// What an input schema may take, in bytes: under what Claude Code accepts
/// ([`crate::mcp::tools::MAX_SCHEMA_BYTES`]), with room for `idempotency_key`.
const SCHEMA_BUDGET: usize = 15 * 1024;

/// Shrinks `schema` until it fits `budget`, losing the least first: examples and
/// titles, then nested descriptions, then the detail of ever shallower subschemas
/// (each keeps its `type`). Large REST bodies (GitHub's rulesets) would otherwise be
/// dropped by clients whole. Says what it took out, if anything.
fn slim(schema: &mut Value, budget: usize) -> Option<String> {
    let size = |s: &Value| serde_json::to_vec(s).map_or(0, |v| v.len());
    let before = size(schema);
    if before <= budget {
        return None;
    }
    let mut steps = vec![Cut::Keywords(&[
        "examples",
        "title",
        "deprecated",
        "readOnly",
        "writeOnly",
    ])];
    steps.push(Cut::NestedDescriptions);
    steps.extend((1..=6).rev().map(Cut::Below));
    for step in &steps {
        cut(schema, step, 0);
        if size(schema) <= budget {
            return Some(format!(
                "its input schema of {before} bytes was simplified to {} bytes ({})",
                size(schema),
                match step {
                    Cut::Keywords(_) => "examples and titles left out".to_owned(),
                    Cut::NestedDescriptions => "nested descriptions left out".to_owned(),
                    Cut::Below(d) => format!("only types below depth {d}"),
                }
            ));
        }
    }
    Some(format!(
        "its input schema of {before} bytes was simplified to {} bytes",
        size(schema)
    ))
}

enum Cut {
    Keywords(&'static [&'static str]),
    /// Descriptions of anything below the top-level properties.
    NestedDescriptions,
    /// Subschemas deeper than this keep only their `type`.
    Below(usize),
}

/// Applies `how` to the schema `s` at nesting `depth` (0: the input schema itself,
/// 1: its properties), walking only schema positions (never, say, a property that
/// happens to be called `title`).
fn cut(s: &mut Value, how: &Cut, depth: usize) {
    let Some(o) = s.as_object_mut() else {
        return;
    };
    if let Cut::Below(limit) = how
        && depth > *limit
    {
        o.retain(|k, _| k == "type");
        return;
    }
    match how {
        Cut::Keywords(keys) => o.retain(|k, _| !keys.contains(&k.as_str())),
        Cut::NestedDescriptions if depth > 1 => {
            o.remove("description");
        }
        _ => {}
    }
    for (k, v) in o.iter_mut() {
        match k.as_str() {
            "properties" | "patternProperties" | "$defs" | "dependentSchemas" => {
                if let Some(m) = v.as_object_mut() {
                    for sub in m.values_mut() {
                        cut(sub, how, depth + 1);
                    }
                }
            }
            "items"
            | "additionalProperties"
            | "not"
            | "contains"
            | "if"
            | "then"
            | "else"
            | "propertyNames"
            | "unevaluatedProperties"
            | "unevaluatedItems" => cut(v, how, depth + 1),
            "allOf" | "anyOf" | "oneOf" | "prefixItems" => {
                if let Some(a) = v.as_array_mut() {
                    for sub in a {
                        cut(sub, how, depth + 1);
                    }
                }
            }
            _ => {}
        }
    }
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn is_json(media_type: &str) -> bool {
    let t = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    t == "application/json" || t.ends_with("+json") || t == "*/*"
}

/// A parameter's schema with the parameter's own description and deprecation.
fn described(mut schema: Value, p: &Value) -> Value {
    if let Some(o) = schema.as_object_mut() {
        if let Some(d) = p.get("description").and_then(Value::as_str) {
            o.entry("description").or_insert_with(|| json!(d));
        }
        if p.get("deprecated") == Some(&Value::Bool(true)) {
            o.insert("deprecated".into(), json!(true));
        }
        return schema;
    }
    // A boolean schema: wrapped so the description has a place.
    match p.get("description").and_then(Value::as_str) {
        Some(d) => json!({ "allOf": [schema], "description": d }),
        None => schema,
    }
}

fn param_style(p: &Value, location: Location) -> Result<Style, String> {
    let style = p.get("style").and_then(Value::as_str);
    let default_explode = matches!(style, None | Some("form")) && location == Location::Query;
    let explode = p
        .get("explode")
        .and_then(Value::as_bool)
        .unwrap_or(default_explode);
    Ok(match style {
        None | Some("form") | Some("simple") => Style::Delimited {
            explode,
            delimiter: ',',
        },
        Some("spaceDelimited") => Style::Delimited {
            explode,
            delimiter: ' ',
        },
        Some("pipeDelimited") => Style::Delimited {
            explode,
            delimiter: '|',
        },
        Some("deepObject") => Style::DeepObject,
        Some(other) => {
            return Err(format!(
                "its parameter {:?} has style {other:?}, which is not supported",
                p.get("name").and_then(Value::as_str).unwrap_or_default()
            ));
        }
    })
}

/// A plain object body's fields with their schemas, and which are required.
type Fields = (Vec<(String, Value)>, HashSet<String>);

/// The fields of a plain object body; `None` when the body is not a plain object
/// with properties.
fn flat_fields(schema: &Value) -> Option<Fields> {
    let o = schema.as_object()?;
    let plain = [
        "type",
        "properties",
        "required",
        "description",
        "title",
        "additionalProperties",
        "examples",
    ];
    if o.keys().any(|k| !plain.contains(&k.as_str())) {
        return None;
    }
    if o.get("type").is_some_and(|t| t != "object") {
        return None;
    }
    if o.get("additionalProperties")
        .is_some_and(|a| a != &Value::Bool(false))
    {
        return None;
    }
    let props = o.get("properties")?.as_object()?;
    if props.is_empty() {
        return None;
    }
    let required = o
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Some((
        props.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        required,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(doc: Value) -> Api {
        build(
            &doc,
            &[],
            &[],
            &HashSet::from(["x-gatehouse-identity".to_owned()]),
        )
        .unwrap()
    }

    fn doc(paths: Value) -> Value {
        json!({ "openapi": "3.1.0", "info": { "title": "t", "version": "1" }, "paths": paths })
    }

    #[test]
    fn an_oversized_schema_is_simplified_until_it_fits() {
        let long = "words ".repeat(40);
        let rule = |i: usize| json!({ "type": "object", "description": long, "properties": { "title": { "type": "string", "description": long, "examples": ["x"] }, "n": { "type": "integer", "description": format!("rule {i}") } } });
        let mut schema = json!({
            "type": "object",
            "properties": {
                "name": { "type": "string", "description": "The ruleset's name" },
                "rules": { "type": "array", "description": "Its rules", "items": { "oneOf": (0..60).map(rule).collect::<Vec<_>>() } },
            },
            "required": ["name"],
        });
        let before = schema.to_string().len();
        let note = slim(&mut schema, 8 * 1024).unwrap();
        let after = schema.to_string().len();
        assert!(after <= 8 * 1024 && after < before, "{after}");
        assert!(note.contains(&before.to_string()), "{note}");
        // What the model needs most stays: top-level descriptions, required, and a
        // property that merely is called `title`.
        assert_eq!(
            schema["properties"]["name"]["description"],
            "The ruleset's name"
        );
        assert_eq!(schema["properties"]["rules"]["description"], "Its rules");
        assert_eq!(schema["required"], json!(["name"]));
        assert!(
            schema["properties"]["rules"]["items"]["oneOf"][0]["properties"]["title"].is_object()
        );
        assert!(jsonschema::validator_for(&schema).is_ok());
        let mut small = json!({ "type": "object" });
        assert_eq!(slim(&mut small, 8 * 1024), None);
    }

    #[test]
    fn yaml_keys_become_strings() {
        let v = parse_document(b"openapi: 3.0.3\npaths:\n  /a:\n    get:\n      responses:\n        200:\n          description: ok\n").unwrap();
        assert_eq!(
            v["paths"]["/a"]["get"]["responses"]["200"]["description"],
            "ok"
        );
        assert!(parse_document(b"{ nope").is_err());
        assert!(parse_document(b"a: [").is_err());
    }

    #[test]
    fn parameters_and_body_become_one_schema() {
        let a = api(doc(json!({
            "/items/{id}": {
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } }],
                "post": {
                    "operationId": "items.update",
                    "parameters": [
                        { "name": "id", "in": "query", "schema": { "type": "string" } },
                        { "name": "X-Trace", "in": "header", "schema": { "type": "string" } },
                        { "name": "Authorization", "in": "header", "required": true, "schema": { "type": "string" } },
                        { "name": "X-Gatehouse-Identity", "in": "header", "schema": { "type": "string" } },
                        { "name": "filter[status]", "in": "query", "style": "deepObject", "schema": { "type": "object" } }
                    ],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": {
                        "type": "object", "required": ["name"],
                        "properties": { "name": { "type": "string" }, "id": { "type": "string" } }
                    }}}}
                }
            }
        })));
        assert_eq!(a.operations.len(), 1, "{:?}", a.skipped);
        let op = &a.operations[0];
        assert_eq!(op.tool, "items_update");
        let schema = &op.definition["inputSchema"];
        let props: HashSet<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            props,
            HashSet::from([
                "id",
                "id_query",
                "X-Trace",
                "filter_status_",
                "name",
                "id_body"
            ])
        );
        assert_eq!(schema["required"], json!(["id", "name"]));
        assert_eq!(op.definition["annotations"]["readOnlyHint"], false);
        assert!(matches!(&op.body, Some(Body { shape: BodyShape::Fields(f), .. }) if f.len() == 2));
        assert!(jsonschema::validator_for(schema).is_ok());
    }

    #[test]
    fn selection_and_skips_are_reported() {
        let paths = json!({
            "/a": {
                "get": { "operationId": "listA", "tags": ["alpha"] },
                "delete": { "operationId": "deleteA", "tags": ["alpha"] }
            },
            "/b/{x}": { "get": { "operationId": "getB" } },
            "/c": { "post": { "requestBody": { "required": true, "content": { "application/octet-stream": {} } } } },
            "/d": { "get": { "parameters": [{ "$ref": "other.yaml#/p" }] } }
        });
        let d = doc(paths);
        let all = build(&d, &[], &[], &HashSet::new()).unwrap();
        assert_eq!(all.total, 5);
        assert_eq!(
            all.operations
                .iter()
                .map(|o| o.tool.as_str())
                .collect::<Vec<_>>(),
            ["listA", "deleteA"]
        );
        let reasons: Vec<String> = all
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.tool, s.reason))
            .collect();
        assert!(
            reasons[0].starts_with("getB: its path parameter {x}"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].starts_with("POST /c: its request body is application/octet-stream"),
            "{reasons:?}"
        );
        assert!(reasons[2].contains("never fetches"), "{reasons:?}");
        let tagged = build(
            &d,
            &["tag:alpha".into()],
            &["DELETE /a".into()],
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(tagged.operations.len(), 1);
        assert!(
            tagged
                .skipped
                .iter()
                .any(|s| s.tool == "deleteA" && s.reason.contains("excluded"))
        );
        let ids = build(&d, &["list*".into()], &[], &HashSet::new()).unwrap();
        assert_eq!(ids.operations.len(), 1);
    }

    #[test]
    fn methods_give_annotations() {
        let a = api(doc(json!({ "/r/{id}": {
            "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
            "get": {}, "put": {}, "delete": {}, "patch": {}
        }})));
        let hints: Vec<(String, bool, bool, bool)> = a
            .operations
            .iter()
            .map(|o| {
                let h = &o.definition["annotations"];
                (
                    o.tool.clone(),
                    h["readOnlyHint"] == true,
                    h["destructiveHint"] == true,
                    h["idempotentHint"] == true,
                )
            })
            .collect();
        assert_eq!(
            hints,
            [
                ("get_r_id".into(), true, false, true),
                ("put_r_id".into(), false, true, true),
                ("delete_r_id".into(), false, true, true),
                ("patch_r_id".into(), false, true, false),
            ]
        );
    }

    #[test]
    fn versions_are_checked() {
        assert!(
            build(&json!({ "swagger": "2.0" }), &[], &[], &HashSet::new())
                .unwrap_err()
                .contains("Swagger")
        );
        assert!(
            build(
                &json!({ "openapi": "4.0.0", "paths": {} }),
                &[],
                &[],
                &HashSet::new()
            )
            .is_err()
        );
        assert!(build(&json!({ "openapi": "3.0.0" }), &[], &[], &HashSet::new()).is_err());
    }
}
