//! Schemas of an OpenAPI document made self-contained JSON Schema 2020-12, the dialect
//! MCP tool schemas use.
//!
//! Local `$ref`s (`#/...`) are inlined; one that refers back to a schema still being
//! expanded (a tree, a linked list) becomes a `$defs` entry of the tool's own schema
//! instead, so recursion ends and nothing is lost. A `$ref` to another document is
//! never fetched: the operation is skipped with the reason. Expansion is bounded in
//! depth and in nodes, so a hostile or huge document cannot exhaust memory.
//!
//! OpenAPI 3.0's dialect is normalised on the way: `nullable` becomes a `null` type,
//! boolean `exclusiveMinimum`/`exclusiveMaximum` become numbers, `example` becomes
//! `examples`; `x-` extensions, `discriminator`, `xml` and `externalDocs` are dropped.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value, json};

/// The most schema nodes one tool's input schema may expand to.
pub const MAX_NODES: usize = 40_000;
/// The deepest nesting followed.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("it refers to another document ({0}); Gatehouse never fetches a $ref")]
    External(String),
    #[error("its $ref {0} points at nothing in the document")]
    Missing(String),
    #[error("its schema expands to more than {MAX_NODES} nodes")]
    TooLarge,
    #[error("its schema nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("{0}")]
    Invalid(String),
}

/// Resolves the schemas of one tool; its `$defs` collect the recursive ones.
pub struct Resolver<'a> {
    root: &'a Value,
    /// OpenAPI 3.0 (its own schema dialect) rather than 3.1 (JSON Schema 2020-12).
    v30: bool,
    /// References being expanded now, innermost last.
    stack: Vec<String>,
    /// References found to recur, each with its `$defs` name.
    recursive: BTreeMap<String, String>,
    defs: Map<String, Value>,
    names: HashSet<String>,
    nodes: usize,
}

impl<'a> Resolver<'a> {
    pub fn new(root: &'a Value, v30: bool) -> Self {
        Self {
            root,
            v30,
            stack: Vec::new(),
            recursive: BTreeMap::new(),
            defs: Map::new(),
            names: HashSet::new(),
            nodes: 0,
        }
    }

    /// The `$defs` the resolved schemas refer to (empty when nothing recurs).
    pub fn into_defs(self) -> Map<String, Value> {
        self.defs
    }

    /// A non-schema object (parameter, request body) behind any chain of local `$ref`s.
    pub fn object(&self, v: &'a Value) -> Result<&'a Value, RefError> {
        let mut v = v;
        for _ in 0..16 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => v = self.target(r)?,
                None => return Ok(v),
            }
        }
        Err(RefError::TooDeep)
    }

    fn target(&self, reference: &str) -> Result<&'a Value, RefError> {
        let Some(fragment) = reference.strip_prefix('#') else {
            return Err(RefError::External(reference.to_owned()));
        };
        let pointer = percent_decode(fragment);
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(RefError::Missing(reference.to_owned()));
        }
        self.root
            .pointer(&pointer)
            .ok_or_else(|| RefError::Missing(reference.to_owned()))
    }

    /// `v` as a self-contained schema.
    pub fn schema(&mut self, v: &Value) -> Result<Value, RefError> {
        self.walk(v, 0)
    }

    fn walk(&mut self, v: &Value, depth: usize) -> Result<Value, RefError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(RefError::TooLarge);
        }
        if depth > MAX_DEPTH {
            return Err(RefError::TooDeep);
        }
        let m = match v {
            Value::Bool(_) => return Ok(v.clone()),
            Value::Object(m) => m,
            _ => return Err(RefError::Invalid("a schema is not an object".into())),
        };
        if let Some(r) = m.get("$ref").and_then(Value::as_str) {
            let resolved = self.reference(r, depth)?;
            // 3.0 ignores a $ref's siblings; 3.1 applies them too. Annotations are
            // kept either way, since they help the model.
            let mut siblings = Map::new();
            for (k, val) in m {
                if k == "$ref" || k.starts_with("x-") {
                    continue;
                }
                let annotation = matches!(
                    k.as_str(),
                    "description" | "title" | "default" | "deprecated"
                );
                if annotation || !self.v30 {
                    siblings.insert(k.clone(), val.clone());
                }
            }
            if siblings.is_empty() {
                return Ok(resolved);
            }
            let rest = self.walk(&Value::Object(siblings), depth + 1)?;
            return Ok(merge(resolved, rest));
        }
        let mut out = Map::new();
        for (k, val) in m {
            match k.as_str() {
                "properties" | "patternProperties" | "$defs" | "definitions"
                | "dependentSchemas" => {
                    let Value::Object(children) = val else {
                        return Err(RefError::Invalid(format!("{k} is not an object")));
                    };
                    let mut done = Map::new();
                    for (name, child) in children {
                        done.insert(name.clone(), self.walk(child, depth + 1)?);
                    }
                    // Local definitions move to the top, where the tool's refs point.
                    let key = if k == "definitions" {
                        "$defs"
                    } else {
                        k.as_str()
                    };
                    out.insert(key.to_owned(), Value::Object(done));
                }
                "items" if val.is_array() => {
                    out.insert("prefixItems".into(), self.walk_all(k, val, depth)?);
                }
                "items"
                | "additionalProperties"
                | "not"
                | "contains"
                | "propertyNames"
                | "if"
                | "then"
                | "else"
                | "unevaluatedItems"
                | "unevaluatedProperties"
                | "additionalItems" => {
                    out.insert(k.clone(), self.walk(val, depth + 1)?);
                }
                "allOf" | "anyOf" | "oneOf" | "prefixItems" => {
                    out.insert(k.clone(), self.walk_all(k, val, depth)?);
                }
                "example" => {
                    out.insert("examples".into(), json!([val]));
                }
                "nullable" | "discriminator" | "xml" | "externalDocs" | "$comment" | "$id"
                | "$schema" | "$anchor" | "$dynamicRef" | "$dynamicAnchor" => {}
                _ if k.starts_with("x-") => {}
                _ => {
                    out.insert(k.clone(), val.clone());
                }
            }
        }
        if self.v30 {
            for (flag, bound) in [
                ("exclusiveMinimum", "minimum"),
                ("exclusiveMaximum", "maximum"),
            ] {
                if let Some(Value::Bool(b)) = out.get(flag).cloned() {
                    out.remove(flag);
                    if b && let Some(n) = out.remove(bound) {
                        out.insert(flag.into(), n);
                    }
                }
            }
            if m.get("nullable") == Some(&Value::Bool(true)) {
                return Ok(nullable(out));
            }
        }
        Ok(Value::Object(out))
    }

    fn walk_all(&mut self, key: &str, v: &Value, depth: usize) -> Result<Value, RefError> {
        let Value::Array(items) = v else {
            return Err(RefError::Invalid(format!("{key} is not an array")));
        };
        items
            .iter()
            .map(|i| self.walk(i, depth + 1))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
    }

    fn reference(&mut self, reference: &str, depth: usize) -> Result<Value, RefError> {
        if let Some(name) = self.recursive.get(reference) {
            return Ok(json!({ "$ref": format!("#/$defs/{name}") }));
        }
        if self.stack.iter().any(|r| r == reference) {
            let name = self.def_name(reference);
            self.recursive.insert(reference.to_owned(), name.clone());
            return Ok(json!({ "$ref": format!("#/$defs/{name}") }));
        }
        let target = self.target(reference)?;
        self.stack.push(reference.to_owned());
        let resolved = self.walk(target, depth + 1);
        self.stack.pop();
        let resolved = resolved?;
        match self.recursive.get(reference) {
            Some(name) => {
                let name = name.clone();
                let own = json!({ "$ref": format!("#/$defs/{name}") });
                if resolved == own {
                    // `A: {$ref: A}` (or a longer chain of bare refs) describes nothing
                    // and would send a validator round in circles.
                    return Err(RefError::Invalid(format!(
                        "its $ref {reference} only refers to itself"
                    )));
                }
                self.defs.insert(name.clone(), resolved);
                Ok(json!({ "$ref": format!("#/$defs/{name}") }))
            }
            None => Ok(resolved),
        }
    }

    /// A `$defs` key for `reference`: its last segment, made safe and unique.
    fn def_name(&mut self, reference: &str) -> String {
        let last = reference.rsplit('/').next().unwrap_or("schema");
        let base: String = percent_decode(last)
            .replace("~1", "_")
            .replace("~0", "_")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(60)
            .collect();
        let base = if base.is_empty() {
            "schema".into()
        } else {
            base
        };
        let mut name = base.clone();
        let mut n = 2;
        while !self.names.insert(name.clone()) {
            name = format!("{base}_{n}");
            n += 1;
        }
        name
    }
}

/// `schema` that also admits `null` (OpenAPI 3.0's `nullable: true`).
fn nullable(mut schema: Map<String, Value>) -> Value {
    match schema.get("type").cloned() {
        Some(Value::String(t)) => {
            schema.insert("type".into(), json!([t, "null"]));
        }
        Some(Value::Array(mut ts)) => {
            if !ts.iter().any(|t| t == "null") {
                ts.push(json!("null"));
            }
            schema.insert("type".into(), Value::Array(ts));
        }
        _ => return json!({ "anyOf": [Value::Object(schema), { "type": "null" }] }),
    }
    if let Some(Value::Array(values)) = schema.get_mut("enum")
        && !values.contains(&Value::Null)
    {
        values.push(Value::Null);
    }
    Value::Object(schema)
}

/// A `$ref`'s target with its siblings: annotations go into the target, anything
/// else is combined with `allOf`.
fn merge(resolved: Value, siblings: Value) -> Value {
    let Value::Object(s) = siblings else {
        return resolved;
    };
    let only_notes = s.keys().all(|k| {
        matches!(
            k.as_str(),
            "description" | "title" | "default" | "deprecated"
        )
    });
    match resolved {
        Value::Object(mut r) if only_notes && !r.contains_key("$ref") => {
            for (k, v) in s {
                r.insert(k, v);
            }
            Value::Object(r)
        }
        other => {
            let mut out = s;
            out.insert("allOf".into(), json!([other]));
            Value::Object(out)
        }
    }
}

/// `%XX` escapes of a URI fragment decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        json!({
            "components": { "schemas": {
                "Node": { "type": "object", "properties": {
                    "name": { "type": "string" },
                    "children": { "type": "array", "items": { "$ref": "#/components/schemas/Node" } }
                }},
                "A": { "type": "object", "properties": { "b": { "$ref": "#/components/schemas/B" } } },
                "B": { "type": "object", "properties": { "a": { "$ref": "#/components/schemas/A" } } },
                "Pet": { "type": "object", "nullable": true, "properties": {
                    "age": { "type": "integer", "minimum": 0, "exclusiveMinimum": true, "x-internal": 1 },
                    "kind": { "type": "string", "enum": ["cat", "dog"], "nullable": true, "example": "cat" }
                }},
                "Loop": { "$ref": "#/components/schemas/Loop" },
                "Far": { "$ref": "https://example.com/schema.json" }
            }}
        })
    }

    fn resolve(r: &str, v30: bool) -> (Result<Value, RefError>, Map<String, Value>) {
        let d = doc();
        let mut res = Resolver::new(&d, v30);
        let out = res.schema(&json!({ "$ref": r }));
        (out, res.into_defs())
    }

    #[test]
    fn self_recursion_becomes_a_def() {
        let (out, defs) = resolve("#/components/schemas/Node", false);
        assert_eq!(out.unwrap(), json!({ "$ref": "#/$defs/Node" }));
        assert_eq!(
            defs["Node"]["properties"]["children"]["items"],
            json!({ "$ref": "#/$defs/Node" })
        );
        let schema = json!({ "$ref": "#/$defs/Node", "$defs": defs });
        let v = jsonschema::validator_for(&schema).unwrap();
        assert!(v.is_valid(&json!({ "name": "a", "children": [{ "name": "b", "children": [] }] })));
        assert!(!v.is_valid(&json!({ "children": [{ "name": 3 }] })));
    }

    #[test]
    fn mutual_recursion_ends() {
        let (out, defs) = resolve("#/components/schemas/A", false);
        assert_eq!(out.unwrap(), json!({ "$ref": "#/$defs/A" }));
        assert_eq!(
            defs["A"]["properties"]["b"]["properties"]["a"],
            json!({ "$ref": "#/$defs/A" })
        );
    }

    #[test]
    fn openapi_30_is_normalised() {
        let (out, defs) = resolve("#/components/schemas/Pet", true);
        assert!(defs.is_empty());
        let out = out.unwrap();
        assert_eq!(out["type"], json!(["object", "null"]));
        let age = &out["properties"]["age"];
        assert_eq!(age["exclusiveMinimum"], json!(0));
        assert!(age.get("minimum").is_none() && age.get("x-internal").is_none());
        let kind = &out["properties"]["kind"];
        assert_eq!(kind["enum"], json!(["cat", "dog", null]));
        assert_eq!(kind["examples"], json!(["cat"]));
        assert!(jsonschema::validator_for(&out).is_ok());
    }

    #[test]
    fn bad_refs_are_refused_not_fetched() {
        assert!(matches!(
            resolve("https://example.com/x.json", false).0,
            Err(RefError::External(_))
        ));
        assert!(matches!(
            resolve("#/components/schemas/Far", false).0,
            Err(RefError::External(_))
        ));
        assert!(matches!(
            resolve("#/components/schemas/Nope", false).0,
            Err(RefError::Missing(_))
        ));
        // A reference to itself with no schema in between describes nothing.
        assert!(matches!(
            resolve("#/components/schemas/Loop", false).0,
            Err(RefError::Invalid(_))
        ));
    }

    #[test]
    fn expansion_is_bounded() {
        // Each level refers to the next twice: 2^30 nodes if expanded naively.
        let mut schemas = Map::new();
        for i in 0..30 {
            let next = format!("#/components/schemas/S{}", i + 1);
            schemas.insert(
                format!("S{i}"),
                json!({ "type": "object", "properties": { "l": { "$ref": next }, "r": { "$ref": next } } }),
            );
        }
        schemas.insert("S30".into(), json!({ "type": "string" }));
        let d = json!({ "components": { "schemas": schemas } });
        let mut res = Resolver::new(&d, false);
        assert_eq!(
            res.schema(&json!({ "$ref": "#/components/schemas/S0" })),
            Err(RefError::TooLarge)
        );
    }

    #[test]
    fn pointers_are_unescaped() {
        let d = json!({ "paths": { "/a/{id}": { "x": { "type": "string" } } } });
        let mut res = Resolver::new(&d, false);
        let out = res.schema(&json!({ "$ref": "#/paths/~1a~1%7Bid%7D/x" }));
        assert_eq!(out.unwrap(), json!({ "type": "string" }));
    }
}
