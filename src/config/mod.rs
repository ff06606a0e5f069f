//! Layered configuration: built-in defaults, then a TOML file, then environment variables
//! named `GATEHOUSE__SECTION__KEY`. The raw layer is checked into a typed [`Config`];
//! any problem names the key (and the variable, when it came from the environment).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::crypto::keys::Kek;
use crate::domain::Email;
use crate::domain::limit::{Rate, TrustedProxies};

pub mod upstream;

pub use upstream::UpstreamConfig;

pub const ENV_PREFIX: &str = "GATEHOUSE__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("{origin}: {message}")]
    Key { origin: String, message: String },
}

/// Where a key's value came from, for error messages.
struct Origins(BTreeMap<String, String>);

impl Origins {
    fn describe(&self, key: &str) -> String {
        match self.0.get(key) {
            Some(var) => format!("config key `{key}` (from {var})"),
            None => format!("config key `{key}`"),
        }
    }

    fn error(&self, key: &str, message: impl fmt::Display) -> ConfigError {
        ConfigError::Key {
            origin: self.describe(key),
            message: message.to_string(),
        }
    }
}

// ---------- raw layer: what the file and the environment may say ----------

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    database: RawDatabase,
    tokens: RawTokens,
    bootstrap: RawBootstrap,
    oauth: RawOAuth,
    mcp: RawMcp,
    metrics: RawMetrics,
    limits: RawLimits,
    keys: RawKeys,
    log: RawLog,
    traces: RawTraces,
    gateway: RawGateway,
    /// `[[upstream]]` tables, checked by [`upstream::check`].
    upstream: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawGateway {
    #[serde(deserialize_with = "lenient")]
    list_refresh_secs: u64,
    #[serde(deserialize_with = "lenient")]
    identity_ttl_secs: u64,
    #[serde(deserialize_with = "lenient")]
    max_response_bytes: u64,
    #[serde(deserialize_with = "lenient")]
    restart_backoff_ms: u64,
}

impl Default for RawGateway {
    fn default() -> Self {
        Self {
            list_refresh_secs: 300,
            identity_ttl_secs: 60,
            max_response_bytes: 4 * 1024 * 1024,
            restart_backoff_ms: 500,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawKeys {
    encryption_key: String,
    encryption_key_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    register: String,
    sign_in_per_address: String,
    sign_in_per_account: String,
    client_auth_per_client: String,
    client_auth_per_address: String,
    mcp_per_credential: String,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            register: "100/hour".into(),
            sign_in_per_address: "20/15m".into(),
            sign_in_per_account: "10/15m".into(),
            client_auth_per_client: "10/10m".into(),
            client_auth_per_address: "50/10m".into(),
            mcp_per_credential: "1200/minute".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    enabled: String,
    bind: String,
    token: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            enabled: "true".into(),
            bind: String::new(),
            token: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMcp {
    allowed_origins: String,
    allowed_hosts: String,
    anonymous_scopes: String,
    #[serde(deserialize_with = "lenient")]
    page_size: u64,
    #[serde(deserialize_with = "lenient")]
    flush_interval_ms: u64,
    #[serde(deserialize_with = "lenient")]
    token_cache_entries: u64,
    sse_paths: String,
    #[serde(deserialize_with = "lenient")]
    sse_sessions_per_token: u64,
    #[serde(deserialize_with = "lenient")]
    sse_max_sessions: u64,
    #[serde(deserialize_with = "lenient")]
    sse_idle_timeout_secs: u64,
}

impl Default for RawMcp {
    fn default() -> Self {
        Self {
            allowed_origins: "https://claude.ai https://claude.com".into(),
            allowed_hosts: String::new(),
            anonymous_scopes: String::new(),
            page_size: 100,
            flush_interval_ms: 1000,
            token_cache_entries: 50_000,
            sse_paths: "/sse".into(),
            sse_sessions_per_token: 4,
            sse_max_sessions: 1000,
            sse_idle_timeout_secs: 600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOAuth {
    default_scopes: String,
    extra_scopes: String,
    cors_origins: String,
    always_issue_refresh_token: String,
    cimd_allow_private_addresses: String,
    #[serde(deserialize_with = "lenient")]
    unused_client_ttl_secs: u64,
    #[serde(deserialize_with = "lenient")]
    idle_client_ttl_secs: u64,
}

impl Default for RawOAuth {
    fn default() -> Self {
        Self {
            default_scopes: "account:read account:write".into(),
            extra_scopes: String::new(),
            cors_origins: "https://claude.ai https://claude.com".into(),
            always_issue_refresh_token: "true".into(),
            cimd_allow_private_addresses: "false".into(),
            unused_client_ttl_secs: 24 * 3600,
            idle_client_ttl_secs: 90 * 24 * 3600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    bind: String,
    public_url: Option<String>,
    mode: String,
    #[serde(deserialize_with = "lenient")]
    request_timeout_secs: u64,
    #[serde(deserialize_with = "lenient")]
    shutdown_timeout_secs: u64,
    #[serde(deserialize_with = "lenient")]
    max_body_bytes: u64,
    trusted_proxies: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            public_url: None,
            mode: "development".into(),
            request_timeout_secs: 30,
            shutdown_timeout_secs: 25,
            max_body_bytes: 1024 * 1024,
            trusted_proxies: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    url: String,
    #[serde(deserialize_with = "lenient")]
    max_connections: u32,
    #[serde(deserialize_with = "lenient")]
    connect_timeout_secs: u64,
    #[serde(deserialize_with = "lenient")]
    acquire_timeout_ms: u64,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: "sqlite://gatehouse.db".into(),
            max_connections: 10,
            connect_timeout_secs: 5,
            acquire_timeout_ms: 2000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTokens {
    #[serde(deserialize_with = "lenient")]
    code_ttl_secs: u64,
    #[serde(deserialize_with = "lenient")]
    access_ttl_secs: u64,
    #[serde(deserialize_with = "lenient")]
    refresh_ttl_secs: u64,
    #[serde(deserialize_with = "lenient")]
    refresh_grace_secs: u64,
}

impl Default for RawTokens {
    fn default() -> Self {
        Self {
            code_ttl_secs: 60,
            access_ttl_secs: 3600,
            refresh_ttl_secs: 30 * 24 * 3600,
            refresh_grace_secs: 30,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBootstrap {
    owner_email: String,
}

impl Default for RawBootstrap {
    fn default() -> Self {
        Self {
            owner_email: "owner@localhost".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: String,
    filter: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "pretty".into(),
            filter: "info".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTraces {
    otlp_endpoint: String,
    otlp_protocol: String,
    service_name: String,
    #[serde(deserialize_with = "lenient_ratio")]
    sample_ratio: f64,
}

impl Default for RawTraces {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            otlp_protocol: "http/protobuf".into(),
            service_name: "gatehouse".into(),
            sample_ratio: 1.0,
        }
    }
}

/// A fraction from TOML (`0.1`, `1`) or from the environment (`"0.1"`).
fn lenient_ratio<'de, D: Deserializer<'de>>(de: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrString {
        Float(f64),
        Int(i64),
        Str(String),
    }
    let v = match NumOrString::deserialize(de)? {
        NumOrString::Float(f) => f,
        #[allow(clippy::cast_precision_loss)] // only 0 and 1 are meaningful here
        NumOrString::Int(i) => i as f64,
        NumOrString::Str(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| serde::de::Error::custom(format!("expected a number, got {s:?}")))?,
    };
    Ok(v)
}

/// Paths other routes own: a legacy SSE path may be none of them, nor under them.
const RESERVED_PATHS: &[&str] = &[
    "/mcp",
    "/authorize",
    "/token",
    "/register",
    "/revoke",
    "/introspect",
    "/jwks",
    "/healthz",
    "/readyz",
    "/metrics",
    "/static",
    "/.well-known",
];

/// `mcp.sse_paths`: space- or comma-separated absolute paths such as `/sse` or
/// `/v1/sse`, each also serving `<path>/messages`.
fn sse_path_list(raw: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for path in raw.split([' ', ',']).filter(|s| !s.is_empty()) {
        let shape_ok = path.len() <= 200
            && path.starts_with('/')
            && !path.ends_with('/')
            && path.split('/').skip(1).all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            });
        if !shape_ok {
            return Err(format!(
                "{path:?} is not a path like /sse or /v1/sse (letters, digits, - _ . between slashes)"
            ));
        }
        if let Some(r) = RESERVED_PATHS
            .iter()
            .find(|r| path == **r || path.starts_with(&format!("{r}/")))
        {
            return Err(format!(
                "{path:?} would take over {r}, which Gatehouse serves itself"
            ));
        }
        if out.iter().any(|p| p == path) {
            return Err(format!("{path:?} is listed twice"));
        }
        out.push(path.to_owned());
    }
    Ok(out)
}

/// Numbers may come from TOML natively or from the environment as strings.
fn lenient<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + std::str::FromStr,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrString {
        Num(i64),
        Str(String),
    }
    let out_of_range = || serde::de::Error::custom("expected a non-negative whole number");
    match NumOrString::deserialize(de)? {
        NumOrString::Num(n) => T::try_from(n).map_err(|_| out_of_range()),
        NumOrString::Str(s) => s.trim().parse::<T>().map_err(|_| {
            serde::de::Error::custom(format!("expected a non-negative whole number, got {s:?}"))
        }),
    }
}

// ---------- checked layer: what the program uses ----------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Local use: relaxed checks, loud warnings.
    Development,
    /// Refuses to start with settings that are unsafe on the internet.
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub tokens: TokenConfig,
    pub bootstrap: BootstrapConfig,
    pub oauth: OAuthConfig,
    pub mcp: McpConfig,
    pub metrics: MetricsConfig,
    pub limits: LimitsConfig,
    pub keys: KeysConfig,
    pub log: LogConfig,
    pub traces: TracesConfig,
    pub gateway: GatewayConfig,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The `[[upstream]]` tables, in configuration order (which decides name collisions).
    pub upstreams: Vec<UpstreamConfig>,
    /// How often each upstream's lists are read again when it sends no `list_changed`.
    pub list_refresh: Duration,
    /// Lifetime of the identity token sent with each upstream call (at most 60 s).
    pub identity_ttl_secs: i64,
    /// The most read from an upstream for one answer.
    pub max_response_bytes: usize,
    /// The first wait before a stdio upstream is restarted (doubling, at most 30 s).
    pub restart_backoff: Duration,
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    /// Seals the signing private keys and the cookie secret in the database. The
    /// development default is public and protects nothing; production mode refuses it.
    pub kek: Kek,
}

/// Abuse limits (`None` is off). Failed attempts count against the sign-in and client
/// limits; successful ones do not.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// New clients registered from one address.
    pub register: Option<Rate>,
    /// Failed sign-ins from one address, whatever the account.
    pub sign_in_per_address: Option<Rate>,
    /// Failed sign-ins to one account: progressive delay past a third, lock-out at the limit.
    pub sign_in_per_account: Option<Rate>,
    /// Failed client authentications for one client id.
    pub client_auth_per_client: Option<Rate>,
    /// Failed client authentications from one address, whatever the client.
    pub client_auth_per_address: Option<Rate>,
    /// `/mcp` requests per token.
    pub mcp_per_credential: Option<Rate>,
}

/// Who may read `GET /metrics`, and where.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// A separate listener for `/metrics`; when set, the main listener has no `/metrics`.
    pub bind: Option<SocketAddr>,
    /// When set, `/metrics` needs `Authorization: Bearer <token>` (from any address).
    /// When not, it answers only loopback peers that show no sign of a proxy in between.
    pub token: Option<Secret>,
}

/// A string that `Debug` does not print.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct McpConfig {
    /// Browser origins allowed to call `/mcp` (besides our own); any other `Origin` is
    /// refused with 403 (DNS-rebinding guard). Requests without `Origin` are allowed.
    pub allowed_origins: Vec<String>,
    /// Extra `Host` names `/mcp` answers to, besides the public URL's host (and the
    /// loopback names when the public URL is on loopback).
    pub allowed_hosts: Vec<String>,
    /// When set, requests without a token act with these scopes. Off by default.
    pub anonymous_scopes: Option<crate::domain::ScopeSet>,
    /// Items per page of `tools/list` and the other lists.
    pub page_size: usize,
    /// How often metering, last-used times and audit rows are written.
    pub flush_interval: Duration,
    /// How many verified bearer tokens `/mcp` keeps (each a few hundred bytes); past it,
    /// a tenth is dropped and those tokens pay one verification again.
    pub token_cache_entries: usize,
    /// Where the legacy HTTP+SSE transport (2024-11-05) is served; empty turns it off.
    pub sse_paths: Vec<String>,
    /// Open legacy streams one token may hold on an instance.
    pub sse_sessions_per_token: usize,
    /// Open legacy streams an instance holds in all.
    pub sse_max_sessions: usize,
    /// A legacy stream no message has used for this long is closed.
    pub sse_idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// Granted when a client asks for no known scope.
    pub default_scopes: crate::domain::ScopeSet,
    /// Every scope this deployment defines (built-in and `extra_scopes`), with its words.
    pub scopes: crate::domain::scope::ScopeCatalog,
    /// Browser origins allowed to call the metadata, registration, token and revocation endpoints.
    pub cors_origins: Vec<String>,
    /// Issue a refresh token even when `offline_access` was not requested.
    pub always_issue_refresh_token: bool,
    /// Lets Client ID Metadata Documents come from private or loopback addresses over
    /// plain http. For tests and closed networks only: it disables the SSRF guard.
    pub cimd_allow_private_addresses: bool,
    /// Dynamically registered clients that never obtained a token are deleted this long
    /// after registering (`None`: kept).
    pub unused_client_ttl_secs: Option<i64>,
    /// Dynamically registered clients are deleted (with anything still issued to them)
    /// this long after their last token (`None`: kept).
    pub idle_client_ttl_secs: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    /// The issuer and the base of every published URL: scheme, host and optional port,
    /// optional path, never a trailing slash.
    pub public_url: String,
    pub mode: Mode,
    pub request_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests before closing what is left.
    pub shutdown_timeout: Duration,
    pub max_body_bytes: usize,
    /// Peers whose forwarding headers are believed (see `limits::client_address`).
    pub trusted_proxies: TrustedProxies,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    /// How long start-up waits for the database to answer.
    pub connect_timeout: Duration,
    /// How long a request waits for a connection before it is answered 503: short, so
    /// that requests fail fast while the database is down instead of piling up.
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub code_ttl_secs: i64,
    pub access_ttl_secs: i64,
    pub refresh_ttl_secs: i64,
    pub refresh_grace_secs: i64,
}

#[derive(Debug, Clone)]
pub struct BootstrapConfig {
    pub owner_email: Email,
}

#[derive(Debug, Clone, Default)]
pub struct TracesConfig {
    /// Where spans are exported; `None` (the default) exports nothing.
    pub otlp: Option<OtlpConfig>,
}

#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The full traces URL, e.g. `http://collector:4318/v1/traces`.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub service_name: String,
    /// Fraction of new traces kept (a caller's sampled `traceparent` is always followed).
    pub sample_ratio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    HttpProtobuf,
    HttpJson,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
}

impl Config {
    /// Loads defaults, then `file` (if any), then `GATEHOUSE__*` variables from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: path.display().to_string(),
                        message: e.message().to_owned(),
                    })?
            }
            None => toml::Table::new(),
        };
        let mut origins = Origins(BTreeMap::new());
        let mut upstream_env = BTreeMap::new();
        let env: Vec<(String, String)> = env.into_iter().collect();
        let lookup = |var: &str| env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone());
        for (name, value) in env.iter().cloned() {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let parts: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            if let [section, upstream_name, key] = parts.as_slice()
                && section == "upstream"
            {
                let at = upstream::apply_env(&mut table, &name, upstream_name, key, value)?;
                upstream_env.insert(at, name.clone());
                continue;
            }
            let [section, key] = parts.as_slice() else {
                return Err(ConfigError::Key {
                    origin: format!("environment variable {name}"),
                    message: "expected the form GATEHOUSE__SECTION__KEY".into(),
                });
            };
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(section_table) = entry else {
                return Err(ConfigError::Key {
                    origin: format!("config key `{section}`"),
                    message: "must be a table".into(),
                });
            };
            section_table.insert(key.clone(), toml::Value::String(value));
            origins.0.insert(format!("{section}.{key}"), name.clone());
        }
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                let message = e.inner().to_string();
                // An unknown field is reported at its parent; name the field itself.
                if path == "." {
                    ConfigError::Key {
                        origin: "config".into(),
                        message,
                    }
                } else {
                    origins.error(&path, message)
                }
            })?;
        Self::check(raw, &origins, &upstream_env, &lookup)
    }

    /// The built-in defaults, with nothing read from a file or the environment.
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::load_from(None, std::iter::empty())
    }

    fn check(
        mut raw: RawConfig,
        o: &Origins,
        upstream_env: &BTreeMap<String, String>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let bind: SocketAddr = raw.server.bind.parse().map_err(|_| {
            o.error(
                "server.bind",
                format!(
                    "{:?} is not a socket address like 127.0.0.1:8080",
                    raw.server.bind
                ),
            )
        })?;
        let mode = match raw.server.mode.as_str() {
            "development" => Mode::Development,
            "production" => Mode::Production,
            other => {
                return Err(o.error(
                    "server.mode",
                    format!("{other:?} is not one of development, production"),
                ));
            }
        };
        let public_url = match raw.server.public_url.as_deref() {
            Some(raw_url) => {
                canonical_public_url(raw_url).map_err(|m| o.error("server.public_url", m))?
            }
            None => {
                let host = if bind.ip().is_unspecified() {
                    "localhost".to_owned()
                } else {
                    bind.to_string()
                };
                let host = if bind.ip().is_unspecified() {
                    format!("{host}:{}", bind.port())
                } else {
                    host
                };
                format!("http://{host}")
            }
        };
        if mode == Mode::Production && !public_url.starts_with("https://") {
            return Err(o.error(
                "server.public_url",
                "production mode needs an https public URL (put TLS in front and set this to the https address)",
            ));
        }
        let positive = |key: &str, v: u64| {
            if v == 0 {
                Err(o.error(key, "must be greater than zero"))
            } else {
                Ok(v)
            }
        };
        let secs = |key: &str, v: u64| -> Result<i64, ConfigError> {
            let v = positive(key, v)?;
            i64::try_from(v)
                .ok()
                .filter(|v| *v <= 10 * 365 * 24 * 3600)
                .ok_or_else(|| o.error(key, "must be at most ten years"))
        };

        let url = raw.database.url.trim().to_owned();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(o.error(
                "database.url",
                "must start with sqlite: (for example sqlite://gatehouse.db) or postgres://",
            ));
        }
        let max_connections = raw.database.max_connections;
        if max_connections == 0 || max_connections > 1000 {
            return Err(o.error("database.max_connections", "must be between 1 and 1000"));
        }

        let tokens = TokenConfig {
            code_ttl_secs: secs("tokens.code_ttl_secs", raw.tokens.code_ttl_secs)?,
            access_ttl_secs: secs("tokens.access_ttl_secs", raw.tokens.access_ttl_secs)?,
            refresh_ttl_secs: secs("tokens.refresh_ttl_secs", raw.tokens.refresh_ttl_secs)?,
            refresh_grace_secs: i64::try_from(raw.tokens.refresh_grace_secs)
                .ok()
                .filter(|v| *v <= 3600)
                .ok_or_else(|| o.error("tokens.refresh_grace_secs", "must be at most 3600"))?,
        };
        if tokens.code_ttl_secs > 600 {
            return Err(o.error(
                "tokens.code_ttl_secs",
                "must be at most 600 (codes are meant to be short-lived)",
            ));
        }

        let owner_email = Email::parse(&raw.bootstrap.owner_email)
            .map_err(|e| o.error("bootstrap.owner_email", e))?;

        let mut scopes = crate::domain::scope::ScopeCatalog::with_extra(&raw.oauth.extra_scopes)
            .map_err(|e| o.error("oauth.extra_scopes", e))?;
        let upstreams = upstream::check(raw.upstream.take(), upstream_env, lookup, &mut scopes)?;
        let gateway = GatewayConfig {
            upstreams,
            list_refresh: Duration::from_secs(
                Some(raw.gateway.list_refresh_secs)
                    .filter(|s| (5..=86_400).contains(s))
                    .ok_or_else(|| {
                        o.error("gateway.list_refresh_secs", "must be between 5 and 86400")
                    })?,
            ),
            identity_ttl_secs: Some(raw.gateway.identity_ttl_secs)
                .filter(|s| (5..=60).contains(s))
                .and_then(|s| i64::try_from(s).ok())
                .ok_or_else(|| o.error("gateway.identity_ttl_secs", "must be between 5 and 60"))?,
            max_response_bytes: usize::try_from(raw.gateway.max_response_bytes)
                .ok()
                .filter(|n| (1024..=256 * 1024 * 1024).contains(n))
                .ok_or_else(|| {
                    o.error(
                        "gateway.max_response_bytes",
                        "must be between 1024 and 268435456",
                    )
                })?,
            restart_backoff: Duration::from_millis(
                Some(raw.gateway.restart_backoff_ms)
                    .filter(|ms| (10..=60_000).contains(ms))
                    .ok_or_else(|| {
                        o.error("gateway.restart_backoff_ms", "must be between 10 and 60000")
                    })?,
            ),
        };
        let default_scopes = scopes
            .parse_known(&raw.oauth.default_scopes)
            .map_err(|e| o.error("oauth.default_scopes", e))?;
        let mut cors_origins = Vec::new();
        for origin in raw
            .oauth
            .cors_origins
            .split([' ', ','])
            .filter(|s| !s.is_empty())
        {
            let url = url::Url::parse(origin)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.path() == "/")
                .ok_or_else(|| {
                    o.error(
                        "oauth.cors_origins",
                        format!("{origin:?} is not an origin like https://claude.ai"),
                    )
                })?;
            cors_origins.push(url.origin().ascii_serialization());
        }
        let boolean = |key: &str, v: &str| match v.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(o.error(key, format!("{other:?} is not true or false"))),
        };
        let always_issue_refresh_token = boolean(
            "oauth.always_issue_refresh_token",
            &raw.oauth.always_issue_refresh_token,
        )?;
        let cimd_allow_private_addresses = boolean(
            "oauth.cimd_allow_private_addresses",
            &raw.oauth.cimd_allow_private_addresses,
        )?;
        if cimd_allow_private_addresses && mode == Mode::Production {
            return Err(o.error(
                "oauth.cimd_allow_private_addresses",
                "must be false in production mode (it disables the SSRF guard)",
            ));
        }

        let optional_secs = |key: &str, v: u64| -> Result<Option<i64>, ConfigError> {
            if v == 0 {
                Ok(None)
            } else {
                secs(key, v).map(Some)
            }
        };
        let unused_client_ttl_secs = optional_secs(
            "oauth.unused_client_ttl_secs",
            raw.oauth.unused_client_ttl_secs,
        )?;
        let idle_client_ttl_secs =
            optional_secs("oauth.idle_client_ttl_secs", raw.oauth.idle_client_ttl_secs)?;
        if idle_client_ttl_secs.is_some_and(|idle| idle < tokens.refresh_ttl_secs) {
            return Err(o.error(
                "oauth.idle_client_ttl_secs",
                "must be at least tokens.refresh_ttl_secs (or 0 for never), or clients would be deleted under live refresh tokens",
            ));
        }

        let origin_list = |key: &str, raw: &str| -> Result<Vec<String>, ConfigError> {
            let mut out = Vec::new();
            for origin in raw.split([' ', ',']).filter(|s| !s.is_empty()) {
                let url = url::Url::parse(origin)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.path() == "/")
                    .ok_or_else(|| {
                        o.error(
                            key,
                            format!("{origin:?} is not an origin like https://claude.ai"),
                        )
                    })?;
                out.push(url.origin().ascii_serialization());
            }
            Ok(out)
        };
        let allowed_origins = origin_list("mcp.allowed_origins", &raw.mcp.allowed_origins)?;
        let mut allowed_hosts = Vec::new();
        for host in raw
            .mcp
            .allowed_hosts
            .split([' ', ','])
            .filter(|s| !s.is_empty())
        {
            let ok = host.len() <= 253
                && host.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':')
                });
            if !ok {
                return Err(o.error(
                    "mcp.allowed_hosts",
                    format!("{host:?} is not a host name like mcp.example.com"),
                ));
            }
            allowed_hosts.push(host.to_ascii_lowercase());
        }
        let anonymous_scopes = if raw.mcp.anonymous_scopes.trim().is_empty() {
            None
        } else {
            let set = crate::domain::ScopeSet::parse(&raw.mcp.anonymous_scopes.replace(',', " "))
                .map_err(|e| o.error("mcp.anonymous_scopes", e))?;
            Some(set)
        };
        let page_size = usize::try_from(raw.mcp.page_size)
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| o.error("mcp.page_size", "must be between 1 and 1000"))?;
        let flush_interval_ms = raw.mcp.flush_interval_ms;
        if !(10..=60_000).contains(&flush_interval_ms) {
            return Err(o.error("mcp.flush_interval_ms", "must be between 10 and 60000"));
        }

        let sse_paths =
            sse_path_list(&raw.mcp.sse_paths).map_err(|e| o.error("mcp.sse_paths", e))?;
        let sse_sessions_per_token = usize::try_from(raw.mcp.sse_sessions_per_token)
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| o.error("mcp.sse_sessions_per_token", "must be between 1 and 1000"))?;
        let sse_max_sessions = usize::try_from(raw.mcp.sse_max_sessions)
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| o.error("mcp.sse_max_sessions", "must be between 1 and 1000000"))?;
        if !(10..=86_400).contains(&raw.mcp.sse_idle_timeout_secs) {
            return Err(o.error("mcp.sse_idle_timeout_secs", "must be between 10 and 86400"));
        }

        let metrics_enabled = boolean("metrics.enabled", &raw.metrics.enabled)?;
        let metrics_bind = match raw.metrics.bind.trim() {
            "" => None,
            b => Some(b.parse::<SocketAddr>().map_err(|_| {
                o.error(
                    "metrics.bind",
                    format!("{b:?} is not a socket address like 127.0.0.1:9090"),
                )
            })?),
        };
        if metrics_bind.is_some_and(|b| b == bind && b.port() != 0) {
            return Err(o.error(
                "metrics.bind",
                "must differ from server.bind (leave it empty to serve /metrics on the main listener)",
            ));
        }
        let metrics_token = match raw.metrics.token.trim() {
            "" => None,
            t if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(o.error(
                    "metrics.token",
                    "must be at least 16 printable characters without spaces",
                ));
            }
            t => Some(Secret::new(t)),
        };

        let format = match raw.log.format.as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(o.error(
                    "log.format",
                    format!("{other:?} is not one of pretty, json"),
                ));
            }
        };
        tracing_subscriber::EnvFilter::try_new(&raw.log.filter)
            .map_err(|e| o.error("log.filter", format!("not a valid filter: {e}")))?;

        let otlp = match raw.traces.otlp_endpoint.trim() {
            "" => None,
            endpoint => Some(OtlpConfig {
                endpoint: otlp_traces_url(endpoint)
                    .map_err(|e| o.error("traces.otlp_endpoint", e))?,
                protocol: match raw.traces.otlp_protocol.trim() {
                    "http/protobuf" => OtlpProtocol::HttpProtobuf,
                    "http/json" => OtlpProtocol::HttpJson,
                    other => {
                        return Err(o.error(
                            "traces.otlp_protocol",
                            format!("{other:?} is not one of http/protobuf, http/json"),
                        ));
                    }
                },
                service_name: match raw.traces.service_name.trim() {
                    "" => return Err(o.error("traces.service_name", "must not be empty")),
                    name => name.to_owned(),
                },
                sample_ratio: Some(raw.traces.sample_ratio)
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| o.error("traces.sample_ratio", "must be between 0 and 1"))?,
            }),
        };

        let request_timeout_secs = positive(
            "server.request_timeout_secs",
            raw.server.request_timeout_secs,
        )?;
        let max_body_bytes = usize::try_from(positive(
            "server.max_body_bytes",
            raw.server.max_body_bytes,
        )?)
        .map_err(|_| o.error("server.max_body_bytes", "too large"))?;

        let trusted_proxies = TrustedProxies::parse(&raw.server.trusted_proxies)
            .map_err(|e| o.error("server.trusted_proxies", e))?;
        let rate = |key: &str, v: &str| Rate::parse(v).map_err(|e| o.error(key, e));
        let limits = LimitsConfig {
            register: rate("limits.register", &raw.limits.register)?,
            sign_in_per_address: rate(
                "limits.sign_in_per_address",
                &raw.limits.sign_in_per_address,
            )?,
            sign_in_per_account: rate(
                "limits.sign_in_per_account",
                &raw.limits.sign_in_per_account,
            )?,
            client_auth_per_client: rate(
                "limits.client_auth_per_client",
                &raw.limits.client_auth_per_client,
            )?,
            client_auth_per_address: rate(
                "limits.client_auth_per_address",
                &raw.limits.client_auth_per_address,
            )?,
            mcp_per_credential: rate("limits.mcp_per_credential", &raw.limits.mcp_per_credential)?,
        };

        let kek = match (
            raw.keys.encryption_key.trim(),
            raw.keys.encryption_key_file.trim(),
        ) {
            ("", "") if mode == Mode::Production => {
                return Err(o.error(
                    "keys.encryption_key",
                    "production mode needs a key-encryption key for the signing keys: set \
                     keys.encryption_key (GATEHOUSE__KEYS__ENCRYPTION_KEY) or \
                     keys.encryption_key_file; generate one with: openssl rand -base64 32",
                ));
            }
            ("", "") => Kek::development(),
            (key, "") => Kek::new(key).map_err(|e| o.error("keys.encryption_key", e))?,
            ("", path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    o.error(
                        "keys.encryption_key_file",
                        format!("cannot read {path}: {e}"),
                    )
                })?;
                Kek::new(&text).map_err(|e| o.error("keys.encryption_key_file", e))?
            }
            _ => {
                return Err(o.error(
                    "keys.encryption_key_file",
                    "set keys.encryption_key or keys.encryption_key_file, not both",
                ));
            }
        };

        Ok(Self {
            server: ServerConfig {
                bind,
                public_url,
                mode,
                request_timeout: Duration::from_secs(request_timeout_secs),
                shutdown_timeout: Duration::from_secs(positive(
                    "server.shutdown_timeout_secs",
                    raw.server.shutdown_timeout_secs,
                )?),
                max_body_bytes,
                trusted_proxies,
            },
            database: DatabaseConfig {
                url,
                max_connections,
                connect_timeout: Duration::from_secs(positive(
                    "database.connect_timeout_secs",
                    raw.database.connect_timeout_secs,
                )?),
                acquire_timeout: Duration::from_millis(
                    Some(raw.database.acquire_timeout_ms)
                        .filter(|ms| (100..=60_000).contains(ms))
                        .ok_or_else(|| {
                            o.error(
                                "database.acquire_timeout_ms",
                                "must be between 100 and 60000",
                            )
                        })?,
                ),
            },
            tokens,
            bootstrap: BootstrapConfig { owner_email },
            oauth: OAuthConfig {
                default_scopes,
                scopes,
                cors_origins,
                always_issue_refresh_token,
                cimd_allow_private_addresses,
                unused_client_ttl_secs,
                idle_client_ttl_secs,
            },
            mcp: McpConfig {
                allowed_origins,
                allowed_hosts,
                anonymous_scopes,
                page_size,
                flush_interval: Duration::from_millis(flush_interval_ms),
                token_cache_entries: usize::try_from(raw.mcp.token_cache_entries)
                    .ok()
                    .filter(|n| (100..=10_000_000).contains(n))
                    .ok_or_else(|| {
                        o.error(
                            "mcp.token_cache_entries",
                            "must be between 100 and 10000000",
                        )
                    })?,
                sse_paths,
                sse_sessions_per_token,
                sse_max_sessions,
                sse_idle_timeout: Duration::from_secs(raw.mcp.sse_idle_timeout_secs),
            },
            metrics: MetricsConfig {
                enabled: metrics_enabled,
                bind: metrics_bind,
                token: metrics_token,
            },
            limits,
            keys: KeysConfig { kek },
            log: LogConfig {
                format,
                filter: raw.log.filter,
            },
            traces: TracesConfig { otlp },
            gateway,
        })
    }
}

/// The collector's base URL (`http://collector:4318`) or its traces URL, as the OTLP
/// convention allows either: always the traces URL.
fn otlp_traces_url(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http or https URL with a host".into());
    }
    let base = url.as_str().trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    })
}

/// `https://Example.com:443/base/` → `https://example.com/base`: one canonical string,
/// because clients compare the issuer byte for byte.
fn canonical_public_url(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw.trim()).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".into());
    }
    let host = url.host_str().ok_or("must have a host")?;
    let mut out = format!("{}://{}", url.scheme(), host);
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(url.path().trim_end_matches('/'));
    Ok(out)
}

/// Every key, for `--help` style listings and the example file's test.
pub fn known_keys() -> BTreeSet<&'static str> {
    [
        "server.bind",
        "server.public_url",
        "server.mode",
        "server.request_timeout_secs",
        "server.shutdown_timeout_secs",
        "server.max_body_bytes",
        "server.trusted_proxies",
        "database.url",
        "database.max_connections",
        "database.connect_timeout_secs",
        "database.acquire_timeout_ms",
        "tokens.code_ttl_secs",
        "tokens.access_ttl_secs",
        "tokens.refresh_ttl_secs",
        "tokens.refresh_grace_secs",
        "bootstrap.owner_email",
        "oauth.default_scopes",
        "oauth.extra_scopes",
        "oauth.cors_origins",
        "oauth.always_issue_refresh_token",
        "oauth.cimd_allow_private_addresses",
        "oauth.unused_client_ttl_secs",
        "oauth.idle_client_ttl_secs",
        "mcp.allowed_origins",
        "mcp.allowed_hosts",
        "mcp.anonymous_scopes",
        "mcp.page_size",
        "mcp.flush_interval_ms",
        "mcp.token_cache_entries",
        "mcp.sse_paths",
        "mcp.sse_sessions_per_token",
        "mcp.sse_max_sessions",
        "mcp.sse_idle_timeout_secs",
        "metrics.enabled",
        "metrics.bind",
        "metrics.token",
        "limits.register",
        "limits.sign_in_per_address",
        "limits.sign_in_per_account",
        "limits.client_auth_per_client",
        "limits.client_auth_per_address",
        "limits.mcp_per_credential",
        "keys.encryption_key",
        "keys.encryption_key_file",
        "log.format",
        "log.filter",
        "traces.otlp_endpoint",
        "traces.otlp_protocol",
        "traces.service_name",
        "traces.sample_ratio",
        "gateway.list_refresh_secs",
        "gateway.identity_ttl_secs",
        "gateway.max_response_bytes",
        "gateway.restart_backoff_ms",
    ]
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_public_url_follows_bind() {
        let c = Config::defaults().unwrap();
        assert_eq!(c.server.public_url, "http://127.0.0.1:8080");
        assert_eq!(c.database.url, "sqlite://gatehouse.db");
        assert_eq!(c.tokens.access_ttl_secs, 3600);
    }

    #[test]
    fn env_overrides_with_numbers_as_strings() {
        let c = Config::load_from(
            None,
            env(&[
                ("GATEHOUSE__TOKENS__ACCESS_TTL_SECS", "86400"),
                ("GATEHOUSE__SERVER__PUBLIC_URL", "https://Gate.Example.com/"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.tokens.access_ttl_secs, 86400);
        assert_eq!(c.server.public_url, "https://gate.example.com");
    }

    #[test]
    fn unknown_env_key_is_named() {
        let err = Config::load_from(None, env(&[("GATEHOUSE__SERVER__BNID", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bnid"), "{err}");
    }

    #[test]
    fn bad_value_names_key_and_variable() {
        let err = Config::load_from(None, env(&[("GATEHOUSE__SERVER__BIND", "nope")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.bind"), "{err}");
        assert!(err.contains("GATEHOUSE__SERVER__BIND"), "{err}");
        let err = Config::load_from(
            None,
            env(&[("GATEHOUSE__DATABASE__MAX_CONNECTIONS", "lots")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("database.max_connections"), "{err}");
    }

    #[test]
    fn traces_are_off_by_default_and_bad_values_name_their_key() {
        assert!(Config::defaults().unwrap().traces.otlp.is_none());
        let c = Config::load_from(
            None,
            env(&[
                ("GATEHOUSE__TRACES__OTLP_ENDPOINT", "http://collector:4318/"),
                ("GATEHOUSE__TRACES__SAMPLE_RATIO", "0.25"),
            ]),
        )
        .unwrap();
        let otlp = c.traces.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(otlp.service_name, "gatehouse");
        assert!((otlp.sample_ratio - 0.25).abs() < f64::EPSILON);
        let full = Config::load_from(
            None,
            env(&[(
                "GATEHOUSE__TRACES__OTLP_ENDPOINT",
                "https://c.example/v1/traces",
            )]),
        )
        .unwrap();
        assert_eq!(
            full.traces.otlp.unwrap().endpoint,
            "https://c.example/v1/traces"
        );
        for (key, value, named) in [
            (
                "GATEHOUSE__TRACES__OTLP_ENDPOINT",
                "collector:4318",
                "traces.otlp_endpoint",
            ),
            (
                "GATEHOUSE__TRACES__OTLP_PROTOCOL",
                "grpc",
                "traces.otlp_protocol",
            ),
            (
                "GATEHOUSE__TRACES__SAMPLE_RATIO",
                "1.5",
                "traces.sample_ratio",
            ),
            (
                "GATEHOUSE__TRACES__SAMPLE_RATIO",
                "NaN",
                "traces.sample_ratio",
            ),
            (
                "GATEHOUSE__TRACES__SERVICE_NAME",
                " ",
                "traces.service_name",
            ),
        ] {
            let err = Config::load_from(
                None,
                env(&[
                    ("GATEHOUSE__TRACES__OTLP_ENDPOINT", "http://c:4318"),
                    (key, value),
                ]),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(named), "{key}={value}: {err}");
        }
        let err = Config::load_from(
            None,
            env(&[("GATEHOUSE__SERVER__SHUTDOWN_TIMEOUT_SECS", "0")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("server.shutdown_timeout_secs"), "{err}");
    }

    #[test]
    fn limits_and_trusted_proxies_parse_and_name_the_key() {
        let c = Config::defaults().unwrap();
        assert!(c.server.trusted_proxies.is_empty());
        assert_eq!(
            c.limits.sign_in_per_account,
            Some(Rate {
                max: 10,
                window_secs: 900
            })
        );
        let c = Config::load_from(
            None,
            env(&[
                ("GATEHOUSE__LIMITS__MCP_PER_CREDENTIAL", "off"),
                ("GATEHOUSE__LIMITS__REGISTER", "5/minute"),
                ("GATEHOUSE__SERVER__TRUSTED_PROXIES", "10.0.0.0/8 127.0.0.1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.limits.mcp_per_credential, None);
        assert_eq!(
            c.limits.register,
            Some(Rate {
                max: 5,
                window_secs: 60
            })
        );
        assert!(
            c.server
                .trusted_proxies
                .contains("10.3.4.5".parse().unwrap())
        );
        for (var, key) in [
            (
                "GATEHOUSE__LIMITS__SIGN_IN_PER_ACCOUNT",
                "limits.sign_in_per_account",
            ),
            (
                "GATEHOUSE__SERVER__TRUSTED_PROXIES",
                "server.trusted_proxies",
            ),
        ] {
            let err = Config::load_from(None, env(&[(var, "lots")]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(var), "{err}");
        }
    }

    #[test]
    fn metrics_settings_are_checked_and_the_token_is_not_printed() {
        let c = Config::defaults().unwrap();
        assert!(c.metrics.enabled);
        assert!(c.metrics.bind.is_none() && c.metrics.token.is_none());
        let c = Config::load_from(
            None,
            env(&[
                ("GATEHOUSE__METRICS__BIND", "127.0.0.1:9090"),
                ("GATEHOUSE__METRICS__TOKEN", "a-long-enough-scrape-token"),
                ("GATEHOUSE__METRICS__ENABLED", "false"),
            ]),
        )
        .unwrap();
        assert!(!c.metrics.enabled);
        assert_eq!(c.metrics.bind, Some("127.0.0.1:9090".parse().unwrap()));
        assert!(!format!("{c:?}").contains("a-long-enough-scrape-token"));
        for (var, key) in [
            ("GATEHOUSE__METRICS__BIND", "metrics.bind"),
            ("GATEHOUSE__METRICS__TOKEN", "metrics.token"),
            ("GATEHOUSE__METRICS__ENABLED", "metrics.enabled"),
        ] {
            let err = Config::load_from(None, env(&[(var, "short")]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(var), "{err}");
        }
        let err = Config::load_from(None, env(&[("GATEHOUSE__METRICS__BIND", "127.0.0.1:8080")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics.bind"), "{err}");
    }

    #[test]
    fn production_requires_https() {
        let err = Config::load_from(None, env(&[("GATEHOUSE__SERVER__MODE", "production")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.public_url"), "{err}");
    }

    #[test]
    fn production_requires_a_key_encryption_key_and_keys_are_checked() {
        let https = ("GATEHOUSE__SERVER__PUBLIC_URL", "https://gate.example.com");
        let prod = ("GATEHOUSE__SERVER__MODE", "production");
        let err = Config::load_from(None, env(&[https, prod]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("keys.encryption_key") && err.contains("openssl rand"),
            "{err}"
        );
        let key = "0123456789abcdef0123456789abcdef0123456789";
        let c = Config::load_from(
            None,
            env(&[https, prod, ("GATEHOUSE__KEYS__ENCRYPTION_KEY", key)]),
        )
        .unwrap();
        assert!(!c.keys.kek.is_development());
        assert!(!format!("{c:?}").contains(key), "the key is never printed");
        assert!(Config::defaults().unwrap().keys.kek.is_development());

        let err = Config::load_from(None, env(&[("GATEHOUSE__KEYS__ENCRYPTION_KEY", "short")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("GATEHOUSE__KEYS__ENCRYPTION_KEY") && err.contains("32"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kek");
        std::fs::write(&file, format!("{key}\n")).unwrap();
        let path = file.display().to_string();
        let c = Config::load_from(
            None,
            env(&[https, prod, ("GATEHOUSE__KEYS__ENCRYPTION_KEY_FILE", &path)]),
        )
        .unwrap();
        assert!(!c.keys.kek.is_development());
        let missing = dir.path().join("nope").display().to_string();
        let err = Config::load_from(
            None,
            env(&[("GATEHOUSE__KEYS__ENCRYPTION_KEY_FILE", &missing)]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("keys.encryption_key_file"), "{err}");
        let err = Config::load_from(
            None,
            env(&[
                ("GATEHOUSE__KEYS__ENCRYPTION_KEY_FILE", &path),
                ("GATEHOUSE__KEYS__ENCRYPTION_KEY", key),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn public_url_canonical_form() {
        assert_eq!(
            canonical_public_url("https://a.example:8443/x/").unwrap(),
            "https://a.example:8443/x"
        );
        assert_eq!(
            canonical_public_url("https://a.example:443").unwrap(),
            "https://a.example"
        );
        assert!(canonical_public_url("https://a.example/?q=1").is_err());
        assert!(canonical_public_url("ftp://a.example").is_err());
    }

    #[test]
    fn file_layer_is_read_and_unknown_file_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(
            Config::load_from(Some(&path), []).unwrap().log.format,
            LogFormat::Json
        );
        std::fs::write(&path, "[log]\nfromat = \"json\"\n").unwrap();
        let err = Config::load_from(Some(&path), []).unwrap_err().to_string();
        assert!(err.contains("fromat"), "{err}");
        std::fs::write(&path, "[log\n").unwrap();
        let err = Config::load_from(Some(&path), []).unwrap_err().to_string();
        assert!(err.contains("not valid TOML"), "{err}");
    }

    #[test]
    fn sse_paths_are_checked_and_never_take_over_other_routes() {
        assert_eq!(sse_path_list("/sse, /v1/sse").unwrap(), ["/sse", "/v1/sse"]);
        assert!(sse_path_list("").unwrap().is_empty());
        for (bad, why) in [
            ("sse", "not a path"),
            ("/sse/", "not a path"),
            ("/a//b", "not a path"),
            ("/a/../b", "not a path"),
            ("/s e", "not a path"),
            ("/mcp", "take over"),
            ("/token", "take over"),
            ("/.well-known/x", "take over"),
            ("/sse /sse", "twice"),
        ] {
            let err = sse_path_list(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let err = Config::load_from(None, env(&[("GATEHOUSE__MCP__SSE_PATHS", "/authorize")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mcp.sse_paths") && err.contains("GATEHOUSE__MCP__SSE_PATHS"),
            "{err}"
        );
    }

    #[test]
    fn example_file_documents_every_key_and_parses() {
        let text = include_str!("../../config.example.toml");
        for key in known_keys() {
            let (section, name) = key.split_once('.').unwrap();
            let env_name = format!(
                "GATEHOUSE__{}__{}",
                section.to_uppercase(),
                name.to_uppercase()
            );
            assert!(text.contains(&env_name), "{env_name} missing from example");
            assert!(
                text.contains(&format!("{name} =")),
                "{key} missing from example"
            );
        }
        for key in upstream::KEYS {
            assert!(
                text.contains(&format!("# {key} =")),
                "upstream key {key} missing from example"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load_from(Some(&path), []).unwrap();
    }
}
