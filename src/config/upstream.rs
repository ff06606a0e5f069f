//! `[[upstream]]` tables: the MCP servers and REST APIs the gateway serves behind
//! `/mcp` (issue #15). Checked here, at start, so that a wrong setting stops the server
//! with the upstream's name and the key; whether an upstream is reachable is the
//! gateway's business and never stops the server.
//!
//! Values in `env` and `headers` may name secrets instead of holding them:
//! `"${CRM_TOKEN}"` is the environment variable, `"${file:/run/secrets/crm}"` a file's
//! contents (without the trailing newline), and `$$` a literal `$`. They are resolved
//! once, here, and kept as [`Secret`]s, which never print.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Secret};
use crate::domain::scope::{Scope, ScopeCatalog, ScopeSet};

/// `[a-z0-9-]`, 1 to 40 characters: used in metrics labels, audit targets, the default
/// prefix and the default audience.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UpstreamName(String);

impl UpstreamName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = (1..=40).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "{:?} must be 1-40 characters of a-z, 0-9 and -",
                raw.chars().take(60).collect::<String>()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UpstreamName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happens when an upstream changes a tool's definition after it was first seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// The changed tool is not served until an admin approves it (the default).
    Block,
    /// Served, with a warning and an audit row.
    Warn,
    /// Served; the change is still audited.
    Accept,
}

impl OnChange {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Warn => "warn",
            Self::Accept => "accept",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    Stdio {
        command: String,
        args: Vec<String>,
        /// The child's whole environment: nothing of Gatehouse's own is passed on.
        env: BTreeMap<String, Secret>,
        cwd: Option<PathBuf>,
        pool: usize,
    },
    Http {
        url: url::Url,
        headers: BTreeMap<String, Secret>,
    },
    OpenApi {
        spec: SpecSource,
        base_url: url::Url,
        include: Vec<String>,
        exclude: Vec<String>,
        headers: BTreeMap<String, Secret>,
        /// An operation without required arguments, called to see that the
        /// credentials work.
        check_operation: Option<String>,
        /// Answers are cut here, with a note for the model.
        max_response_bytes: usize,
    },
}

impl Transport {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Stdio { .. } => "stdio",
            Self::Http { .. } => "http",
            Self::OpenApi { .. } => "openapi",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecSource {
    File(PathBuf),
    /// Read once at start.
    Url(url::Url),
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: UpstreamName,
    pub transport: Transport,
    /// Put before each tool's name (default `<name>_`; may be empty).
    pub prefix: String,
    /// Upstream tool names to serve (`*` at the end matches any rest); empty: all.
    pub allow: Vec<String>,
    /// Upstream tool names never served, even when allowed.
    pub deny: Vec<String>,
    /// Upstream tool names treated as writes whatever their `readOnlyHint` says.
    pub writes: Vec<String>,
    /// What every tool of this upstream needs (default `tools:<name>`).
    pub scopes: ScopeSet,
    /// Per tool (by its upstream name): the scopes it needs instead.
    pub tool_scopes: BTreeMap<String, ScopeSet>,
    pub timeout: Duration,
    pub on_change: OnChange,
    /// The `aud` of the identity tokens this upstream gets.
    pub audience: String,
    /// The header that carries the identity token to HTTP and REST upstreams
    /// (default `authorization`, as `Bearer <jwt>`; another header gets the bare JWT).
    pub identity_header: String,
}

impl UpstreamConfig {
    /// Whether the upstream's tool `tool` is to be served at all.
    pub fn selects(&self, tool: &str) -> bool {
        let hit = |patterns: &[String]| patterns.iter().any(|p| glob(p, tool));
        (self.allow.is_empty() || hit(&self.allow)) && !hit(&self.deny)
    }

    /// Whether `tool` is a write whatever its annotations say (the operator does not
    /// take the upstream's word that it only reads).
    pub fn forces_write(&self, tool: &str) -> bool {
        self.writes.iter().any(|p| glob(p, tool))
    }

    /// The scopes the upstream's tool `tool` needs.
    pub fn scopes_for(&self, tool: &str) -> &ScopeSet {
        self.tool_scopes.get(tool).unwrap_or(&self.scopes)
    }
}

/// `name`, or `prefix*` matching anything that starts with `prefix`.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(head) => name.starts_with(head),
        None => pattern == name,
    }
}

// ---------- raw layer ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    transport: String,
    command: Option<String>,
    #[serde(default, deserialize_with = "list")]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    #[serde(default, deserialize_with = "opt_number")]
    pool: Option<u64>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    spec: Option<String>,
    base_url: Option<String>,
    #[serde(default, deserialize_with = "list")]
    include: Vec<String>,
    #[serde(default, deserialize_with = "list")]
    exclude: Vec<String>,
    check_operation: Option<String>,
    #[serde(default, deserialize_with = "opt_number")]
    max_response_bytes: Option<u64>,
    prefix: Option<String>,
    #[serde(default, deserialize_with = "list")]
    allow: Vec<String>,
    #[serde(default, deserialize_with = "list")]
    deny: Vec<String>,
    #[serde(default, deserialize_with = "list")]
    writes: Vec<String>,
    scopes: Option<String>,
    scope_description: Option<String>,
    #[serde(default)]
    tool_scopes: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "opt_number")]
    timeout_secs: Option<u64>,
    on_change: Option<String>,
    audience: Option<String>,
    identity_header: Option<String>,
}

/// A TOML array of strings, or one string of names separated by spaces or commas (as
/// an environment variable gives it).
fn list<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        Str(String),
    }
    Ok(match ListOrString::deserialize(de)? {
        ListOrString::List(l) => l,
        ListOrString::Str(s) => s
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

fn opt_number<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<u64>, D::Error> {
    super::lenient(de).map(Some)
}

/// The keys an upstream table may have, per transport, beyond the common ones.
const STDIO_KEYS: &[&str] = &["command", "args", "env", "cwd", "pool"];
const HTTP_KEYS: &[&str] = &["url", "headers"];
const OPENAPI_KEYS: &[&str] = &[
    "spec",
    "base_url",
    "include",
    "exclude",
    "headers",
    "check_operation",
    "max_response_bytes",
];

/// Every key of an upstream table, for the documentation test.
pub const KEYS: &[&str] = &[
    "name",
    "transport",
    "command",
    "args",
    "env",
    "cwd",
    "pool",
    "url",
    "headers",
    "spec",
    "base_url",
    "include",
    "exclude",
    "check_operation",
    "max_response_bytes",
    "prefix",
    "allow",
    "deny",
    "writes",
    "scopes",
    "scope_description",
    "tool_scopes",
    "timeout_secs",
    "on_change",
    "audience",
    "identity_header",
];

// ---------- checking ----------

/// Where an upstream setting came from, for error messages.
struct At<'a> {
    upstream: &'a str,
    /// Keys set from the environment, with the variable's name.
    from_env: &'a BTreeMap<String, String>,
}

impl At<'_> {
    fn error(&self, key: &str, message: impl std::fmt::Display) -> ConfigError {
        let var = self
            .from_env
            .get(&format!("{}.{key}", self.upstream))
            .map(|v| format!(" (from {v})"))
            .unwrap_or_default();
        ConfigError::Key {
            origin: format!("upstream `{}`, key `{key}`{var}", self.upstream),
            message: message.to_string(),
        }
    }
}

/// Sets `GATEHOUSE__UPSTREAM__<NAME>__<KEY>` on the table of upstream `<name>` (`_` in
/// the variable stands for `-` in the name). Returns the key set, for messages.
pub(super) fn apply_env(
    table: &mut toml::Table,
    var: &str,
    name: &str,
    key: &str,
    value: String,
) -> Result<String, ConfigError> {
    let wanted = name.to_lowercase().replace('_', "-");
    let entry = table
        .get_mut("upstream")
        .and_then(toml::Value::as_array_mut)
        .and_then(|list| {
            list.iter_mut().find(|t| {
                t.get("name")
                    .and_then(toml::Value::as_str)
                    .is_some_and(|n| n == wanted)
            })
        })
        .and_then(toml::Value::as_table_mut)
        .ok_or_else(|| ConfigError::Key {
            origin: format!("environment variable {var}"),
            message: format!("no [[upstream]] named {wanted:?} in the config file"),
        })?;
    let key = key.to_lowercase();
    entry.insert(key.clone(), toml::Value::String(value));
    Ok(format!("{wanted}.{key}"))
}

/// Checks every `[[upstream]]` table; defines the scopes they use in `catalog`.
pub(super) fn check(
    value: Option<toml::Value>,
    from_env: &BTreeMap<String, String>,
    lookup: &dyn Fn(&str) -> Option<String>,
    catalog: &mut ScopeCatalog,
) -> Result<Vec<UpstreamConfig>, ConfigError> {
    let tables = match value {
        None => return Ok(Vec::new()),
        Some(toml::Value::Array(a)) => a,
        Some(_) => {
            return Err(ConfigError::Key {
                origin: "config key `upstream`".into(),
                message: "must be a list of tables, written [[upstream]]".into(),
            });
        }
    };
    let mut out: Vec<UpstreamConfig> = Vec::with_capacity(tables.len());
    for (i, table) in tables.into_iter().enumerate() {
        let label = table
            .get("name")
            .and_then(toml::Value::as_str)
            .map_or_else(|| format!("#{}", i + 1), str::to_owned);
        let at = At {
            upstream: &label,
            from_env,
        };
        let raw: RawUpstream = serde_path_to_error::deserialize(table).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." { "name" } else { path.as_str() };
            at.error(key, e.inner())
        })?;
        let upstream = check_one(raw, &at, lookup, catalog)?;
        if out.iter().any(|u| u.name == upstream.name) {
            return Err(at.error("name", "another [[upstream]] has this name"));
        }
        out.push(upstream);
    }
    Ok(out)
}

fn check_one(
    raw: RawUpstream,
    at: &At<'_>,
    lookup: &dyn Fn(&str) -> Option<String>,
    catalog: &mut ScopeCatalog,
) -> Result<UpstreamConfig, ConfigError> {
    let name = UpstreamName::parse(&raw.name).map_err(|m| at.error("name", m))?;
    let foreign = |allowed: &[&str], set: &[(&str, bool)]| -> Result<(), ConfigError> {
        match set
            .iter()
            .find(|(k, present)| *present && !allowed.contains(k))
        {
            Some((k, _)) => Err(at.error(
                k,
                format!("is not a setting of transport {:?}", raw.transport),
            )),
            None => Ok(()),
        }
    };
    let present: [(&str, bool); 13] = [
        ("command", raw.command.is_some()),
        ("args", !raw.args.is_empty()),
        ("env", !raw.env.is_empty()),
        ("cwd", raw.cwd.is_some()),
        ("pool", raw.pool.is_some()),
        ("url", raw.url.is_some()),
        ("headers", !raw.headers.is_empty()),
        ("spec", raw.spec.is_some()),
        ("base_url", raw.base_url.is_some()),
        ("include", !raw.include.is_empty()),
        ("exclude", !raw.exclude.is_empty()),
        ("check_operation", raw.check_operation.is_some()),
        ("max_response_bytes", raw.max_response_bytes.is_some()),
    ];
    let secrets = |key: &str, map: &BTreeMap<String, String>| resolve_map(key, map, at, lookup);
    let transport = match raw.transport.as_str() {
        "stdio" => {
            foreign(STDIO_KEYS, &present)?;
            let command = raw
                .command
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| at.error("command", "is required for transport \"stdio\""))?;
            for k in raw.env.keys() {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(at.error(&format!("env.{k}"), "is not a variable name"));
                }
            }
            let pool = match raw.pool {
                None => 1,
                Some(n @ 1..=64) => n as usize,
                Some(_) => return Err(at.error("pool", "must be between 1 and 64")),
            };
            Transport::Stdio {
                command,
                args: raw.args,
                env: secrets("env", &raw.env)?,
                cwd: raw.cwd.map(PathBuf::from),
                pool,
            }
        }
        "http" => {
            foreign(HTTP_KEYS, &present)?;
            let url = raw
                .url
                .ok_or_else(|| at.error("url", "is required for transport \"http\""))?;
            Transport::Http {
                url: http_url(&url).map_err(|m| at.error("url", m))?,
                headers: header_map(&raw.headers, at, lookup)?,
            }
        }
        "openapi" => {
            foreign(OPENAPI_KEYS, &present)?;
            let spec = raw
                .spec
                .ok_or_else(|| at.error("spec", "is required for transport \"openapi\""))?;
            let spec = if spec.starts_with("https://") || spec.starts_with("http://") {
                let url = http_url(&spec).map_err(|m| at.error("spec", m))?;
                // A description fetched in the clear could be swapped on the way.
                if url.scheme() == "http" && !is_loopback(&url) {
                    return Err(at.error("spec", "must be an https URL (or a file)"));
                }
                SpecSource::Url(url)
            } else {
                SpecSource::File(PathBuf::from(spec))
            };
            let base_url = raw
                .base_url
                .ok_or_else(|| at.error("base_url", "is required for transport \"openapi\""))?;
            Transport::OpenApi {
                spec,
                base_url: http_url(&base_url).map_err(|m| at.error("base_url", m))?,
                include: raw.include,
                exclude: raw.exclude,
                headers: header_map(&raw.headers, at, lookup)?,
                check_operation: match raw.check_operation {
                    Some(op) if op.trim().is_empty() => {
                        return Err(at.error("check_operation", "must name an operation"));
                    }
                    other => other,
                },
                max_response_bytes: match raw.max_response_bytes {
                    None => 256 * 1024,
                    Some(n @ 1024..=67_108_864) => n as usize,
                    Some(_) => {
                        return Err(
                            at.error("max_response_bytes", "must be between 1024 and 67108864")
                        );
                    }
                },
            }
        }
        other => {
            return Err(at.error(
                "transport",
                format!("{other:?} is not one of stdio, http, openapi"),
            ));
        }
    };
    let prefix = raw.prefix.unwrap_or_else(|| format!("{name}_"));
    if prefix.len() > 40
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(at.error(
            "prefix",
            "must be at most 40 characters of A-Z, a-z, 0-9, _ and -",
        ));
    }
    let scope_words = match raw.scope_description {
        Some(w) if w.trim().is_empty() || w.len() > 200 => {
            return Err(at.error("scope_description", "must be 1-200 characters"));
        }
        Some(w) => w.trim().to_owned(),
        None => format!("Use the {name} tools"),
    };
    let scopes_raw = raw.scopes.unwrap_or_else(|| format!("tools:{name}"));
    let scopes =
        ScopeSet::parse(&scopes_raw.replace(',', " ")).map_err(|e| at.error("scopes", e))?;
    define(catalog, &scopes, &scope_words);
    let mut tool_scopes = BTreeMap::new();
    for (tool, raw_scopes) in raw.tool_scopes {
        let key = format!("tool_scopes.{tool}");
        let set = ScopeSet::parse(&raw_scopes.replace(',', " ")).map_err(|e| at.error(&key, e))?;
        define(catalog, &set, &format!("Use {tool} in {name}"));
        tool_scopes.insert(tool, set);
    }
    let timeout = match raw.timeout_secs {
        None => Duration::from_secs(30),
        Some(n @ 1..=3600) => Duration::from_secs(n),
        Some(_) => return Err(at.error("timeout_secs", "must be between 1 and 3600")),
    };
    let on_change = match raw.on_change.as_deref() {
        None | Some("block") => OnChange::Block,
        Some("warn") => OnChange::Warn,
        Some("accept") => OnChange::Accept,
        Some(other) => {
            return Err(at.error(
                "on_change",
                format!("{other:?} is not one of block, warn, accept"),
            ));
        }
    };
    let audience = match raw.audience {
        Some(a) if a.trim().is_empty() || a.len() > 300 => {
            return Err(at.error("audience", "must be 1-300 characters"));
        }
        Some(a) => a,
        None => format!("urn:gatehouse:upstream:{name}"),
    };
    let identity_header = match raw.identity_header {
        None => "authorization".to_owned(),
        Some(h) => {
            let h = h.to_ascii_lowercase();
            axum::http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| at.error("identity_header", "is not an HTTP header name"))?;
            if RESERVED_HEADERS.contains(&h.as_str()) {
                return Err(at.error("identity_header", "is a header Gatehouse sets itself"));
            }
            h
        }
    };
    if matches!(transport, Transport::Stdio { .. }) && identity_header != "authorization" {
        return Err(at.error(
            "identity_header",
            "is for http and openapi upstreams (stdio upstreams get the token in _meta)",
        ));
    }
    for (what, patterns) in [
        ("allow", &raw.allow),
        ("deny", &raw.deny),
        ("writes", &raw.writes),
    ] {
        if let Some(p) = patterns
            .iter()
            .find(|p| p.is_empty() || p.strip_suffix('*').unwrap_or(p).contains('*'))
        {
            return Err(at.error(what, format!("{p:?}: `*` may only end a name")));
        }
    }
    if let Transport::Http { headers, .. } | Transport::OpenApi { headers, .. } = &transport
        && identity_header == "authorization"
        && headers.contains_key("authorization")
    {
        return Err(at.error(
            "headers.authorization",
            "Authorization carries Gatehouse's identity token; to send the upstream's own credential there, set identity_header to another header",
        ));
    }
    Ok(UpstreamConfig {
        name,
        transport,
        prefix,
        allow: raw.allow,
        deny: raw.deny,
        writes: raw.writes,
        scopes,
        tool_scopes,
        timeout,
        on_change,
        audience,
        identity_header,
    })
}

/// `map`'s values with their references resolved, as secrets.
fn resolve_map(
    key: &str,
    map: &BTreeMap<String, String>,
    at: &At<'_>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Secret>, ConfigError> {
    map.iter()
        .map(|(k, v)| {
            let resolved = resolve(v, lookup).map_err(|m| at.error(&format!("{key}.{k}"), m))?;
            Ok((k.clone(), Secret::new(resolved)))
        })
        .collect()
}

fn define(catalog: &mut ScopeCatalog, set: &ScopeSet, words: &str) {
    for scope in set.iter() {
        catalog.define_if_absent(scope, words);
    }
}

/// Headers Gatehouse sets on upstream requests itself.
pub const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "accept",
    "content-length",
    "host",
    "mcp-protocol-version",
    "mcp-session-id",
    "mcp-method",
    "mcp-name",
    "idempotency-key",
];

/// The headers an upstream is sent, checked as HTTP headers; the ones Gatehouse sets
/// itself may not be overridden.
fn header_map(
    raw: &BTreeMap<String, String>,
    at: &At<'_>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Secret>, ConfigError> {
    let lowered: BTreeMap<String, String> = raw
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    for k in lowered.keys() {
        let key = format!("headers.{k}");
        if axum::http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(at.error(&key, "is not an HTTP header name"));
        }
        if RESERVED_HEADERS.contains(&k.as_str()) {
            return Err(at.error(&key, "is set by Gatehouse itself"));
        }
    }
    let out = resolve_map("headers", &lowered, at, lookup)?;
    for (k, v) in &out {
        if axum::http::HeaderValue::from_str(v.expose()).is_err() {
            return Err(at.error(&format!("headers.{k}"), "is not a valid HTTP header value"));
        }
    }
    Ok(out)
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn http_url(raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{raw:?} must be an http or https URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; use headers with ${VAR}".into());
    }
    Ok(url)
}

/// Replaces `${VAR}` by the variable, `${file:PATH}` by the file's contents without
/// its trailing newline, and `$$` by `$`.
pub fn resolve(raw: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${") {
            let end = r
                .find('}')
                .ok_or_else(|| "has `${` without a closing `}`".to_owned())?;
            let name = &r[..end];
            if let Some(path) = name.strip_prefix("file:") {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the file {path:?} it names: {e}"))?;
                out.push_str(text.strip_suffix('\n').unwrap_or(&text));
            } else {
                let ok = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return Err(format!("${{{name}}} is not a variable name"));
                }
                let value = lookup(name).ok_or_else(|| {
                    format!("names the environment variable {name}, which is not set")
                })?;
                out.push_str(&value);
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The names of the scopes every upstream uses, for listings.
pub fn scope_names(upstreams: &[UpstreamConfig]) -> BTreeSet<String> {
    upstreams
        .iter()
        .flat_map(|u| {
            u.scopes
                .iter()
                .chain(u.tool_scopes.values().flat_map(ScopeSet::iter))
                .map(Scope::to_string)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Vec<UpstreamConfig>, String> {
        let table: toml::Table = text.parse().unwrap();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut catalog = ScopeCatalog::builtin();
        check(
            table.get("upstream").cloned(),
            &BTreeMap::new(),
            &|k| env.get(k).cloned(),
            &mut catalog,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_stdio_upstream_gets_its_defaults() {
        let u = parse(
            "[[upstream]]\nname = \"crm\"\ntransport = \"stdio\"\ncommand = \"crm-mcp\"\nenv = { TOKEN = \"${CRM_TOKEN}\", PLAIN = \"a$$b\" }",
            &[("CRM_TOKEN", "s3cret")],
        )
        .unwrap();
        let u = &u[0];
        assert_eq!(u.prefix, "crm_");
        assert_eq!(u.scopes.to_string(), "tools:crm");
        assert_eq!(u.timeout, Duration::from_secs(30));
        assert_eq!(u.on_change, OnChange::Block);
        assert_eq!(u.audience, "urn:gatehouse:upstream:crm");
        let Transport::Stdio { env, pool, .. } = &u.transport else {
            panic!("stdio")
        };
        assert_eq!(*pool, 1);
        assert_eq!(env["TOKEN"].expose(), "s3cret");
        assert_eq!(env["PLAIN"].expose(), "a$b");
        assert!(!format!("{u:?}").contains("s3cret"), "secrets never print");
    }

    #[test]
    fn wrong_settings_name_the_upstream_and_the_key() {
        let cases = [
            (
                "name = \"CRM\"\ntransport = \"stdio\"\ncommand = \"x\"",
                "upstream `CRM`, key `name`",
            ),
            ("name = \"a\"\ntransport = \"smtp\"", "key `transport`"),
            ("name = \"a\"\ntransport = \"stdio\"", "key `command`"),
            (
                "name = \"a\"\ntransport = \"stdio\"\ncommand = \"x\"\nurl = \"https://x\"",
                "key `url`",
            ),
            (
                "name = \"a\"\ntransport = \"stdio\"\ncommand = \"x\"\npool = 0",
                "key `pool`",
            ),
            (
                "name = \"a\"\ntransport = \"stdio\"\ncommand = \"x\"\nbogus = 1",
                "bogus",
            ),
            (
                "name = \"a\"\ntransport = \"stdio\"\ncommand = \"x\"\nenv = { T = \"${NOPE}\" }",
                "key `env.T`",
            ),
            (
                "name = \"a\"\ntransport = \"http\"\nurl = \"ftp://x\"",
                "key `url`",
            ),
            (
                "name = \"a\"\ntransport = \"http\"\nurl = \"https://u:p@x\"",
                "key `url`",
            ),
            (
                "name = \"a\"\ntransport = \"http\"\nurl = \"https://x\"\nheaders = { Host = \"y\" }",
                "key `headers.host`",
            ),
            (
                "name = \"a\"\ntransport = \"http\"\nurl = \"https://x\"\ntimeout_secs = 0",
                "key `timeout_secs`",
            ),
            (
                "name = \"a\"\ntransport = \"http\"\nurl = \"https://x\"\non_change = \"maybe\"",
                "key `on_change`",
            ),
            (
                "name = \"a\"\ntransport = \"http\"\nurl = \"https://x\"\nprefix = \"a.b\"",
                "key `prefix`",
            ),
            (
                "name = \"a\"\ntransport = \"http\"\nurl = \"https://x\"\nscopes = \"a\\\"b\"",
                "key `scopes`",
            ),
            (
                "name = \"a\"\ntransport = \"http\"\nurl = \"https://x\"\nallow = [\"*x\"]",
                "key `allow`",
            ),
            (
                "name = \"a\"\ntransport = \"openapi\"\nspec = \"api.yaml\"",
                "key `base_url`",
            ),
            (
                "name = \"a\"\ntransport = \"openapi\"\nspec = \"http://example.com/api.yaml\"\nbase_url = \"https://x\"",
                "key `spec`",
            ),
            (
                "name = \"a\"\ntransport = \"openapi\"\nspec = \"a.yaml\"\nbase_url = \"https://x\"\nmax_response_bytes = 10",
                "key `max_response_bytes`",
            ),
            (
                "name = \"a\"\ntransport = \"openapi\"\nspec = \"a.yaml\"\nbase_url = \"https://x\"\ncommand = \"x\"",
                "key `command`",
            ),
        ];
        for (body, want) in cases {
            let err = parse(&format!("[[upstream]]\n{body}"), &[]).unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
        }
        let twice = "[[upstream]]\nname = \"a\"\ntransport = \"stdio\"\ncommand = \"x\"\n";
        let err = parse(&format!("{twice}{twice}"), &[]).unwrap_err();
        assert!(err.contains("upstream `a`, key `name`"), "{err}");
    }

    #[test]
    fn odd_patterns_and_reserved_identity_headers_are_refused_not_panicked_on() {
        let base = "[[upstream]]\nname = \"a\"\ntransport = \"http\"\nurl = \"https://x\"\n";
        assert!(parse(&format!("{base}allow = [\"caf\u{e9}*\", \"\u{e9}\"]"), &[]).is_ok());
        let err = parse(&format!("{base}identity_header = \"host\""), &[]).unwrap_err();
        assert!(err.contains("key `identity_header`"), "{err}");
    }

    #[test]
    fn allow_and_deny_select_tools() {
        let u = parse(
            "[[upstream]]\nname = \"a\"\ntransport = \"stdio\"\ncommand = \"x\"\nallow = \"get_* list\"\ndeny = [\"get_secret\"]\ntool_scopes = { list = \"tools:a:list\" }",
            &[],
        )
        .unwrap();
        let u = &u[0];
        assert!(u.selects("get_contact") && u.selects("list"));
        assert!(!u.selects("get_secret") && !u.selects("delete") && !u.selects("lister"));
        assert_eq!(u.scopes_for("list").to_string(), "tools:a:list");
        assert_eq!(u.scopes_for("get_contact").to_string(), "tools:a");
    }

    #[test]
    fn references_resolve_from_the_environment_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "from-file\n").unwrap();
        let lookup = |k: &str| (k == "A").then(|| "va".to_owned());
        let raw = format!("x-${{A}}-${{file:{}}}-$5", f.display());
        assert_eq!(resolve(&raw, &lookup).unwrap(), "x-va-from-file-$5");
        assert!(resolve("${B}", &lookup).unwrap_err().contains("B"));
        assert!(resolve("${A", &lookup).is_err());
        assert!(resolve("${a-b}", &lookup).is_err());
    }
}
