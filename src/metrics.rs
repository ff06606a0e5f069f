//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format.
//!
//! Recording is on the request path, so it is kept to a few relaxed atomic additions:
//! every label set is fixed in advance (an array slot per route, method, status code,
//! grant, client kind, rejection reason and tool outcome), so nothing is looked up in
//! a map, allocated or locked per request. `prometheus-client` only encodes, at scrape
//! time, through the [`Collector`]s below; histograms are our own lock-free ones
//! (the crate's takes a mutex per observation).
//!
//! This module sits beside `storage`: `oauth`, `mcp` and `routes` import it, and it
//! imports none of them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::storage::Store;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric the process exports.
pub struct Metrics {
    registry: Registry,
    pub http: Arc<HttpMetrics>,
    pub oauth: Arc<OAuthMetrics>,
    pub mcp: Arc<McpMetrics>,
    pub upstreams: Arc<UpstreamMetrics>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// `store`'s pool is sampled at scrape time.
    pub fn new(store: &Store) -> Self {
        let http = Arc::new(HttpMetrics::default());
        let oauth = Arc::new(OAuthMetrics::default());
        let mcp = Arc::new(McpMetrics::default());
        let upstreams = Arc::new(UpstreamMetrics::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(upstreams.clone()));
        registry.register_collector(Box::new(http.clone()));
        registry.register_collector(Box::new(oauth.clone()));
        registry.register_collector(Box::new(mcp.clone()));
        registry.register_collector(Box::new(PoolCollector(store.clone())));
        Self {
            registry,
            http,
            oauth,
            mcp,
            upstreams,
        }
    }

    /// The exposition, in the OpenMetrics text format (which Prometheus reads).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            out.push_str("# EOF\n");
        }
        out
    }
}

// ---------- histograms ----------

/// Upper bounds of the latency buckets, in microseconds (0.5 ms to 10 s).
const BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram with fixed buckets: one observation is two relaxed atomic
/// additions. The count is the sum of the buckets, so a scrape never sees them disagree.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0); BOUNDS_US.len() + 1];
        let mut count = 0;
        for (i, slot) in buckets.iter_mut().enumerate() {
            let n = self.buckets[i].load(Relaxed);
            count += n;
            let bound = BOUNDS_US
                .get(i)
                .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            *slot = (bound, n);
        }
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

fn counter(encoder: &mut MetricEncoder<'_>, value: u64) -> Result<(), std::fmt::Error> {
    encoder.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

// ---------- HTTP ----------

/// Methods get a fixed slot each; anything else shares `OTHER`.
const METHODS: [&str; 8] = [
    "GET", "POST", "DELETE", "OPTIONS", "HEAD", "PUT", "PATCH", "OTHER",
];
/// Status codes 100..=599, one slot each.
const STATUSES: usize = 500;
/// The route label of requests no route matched (404s from the fallback).
pub const UNMATCHED: &str = "unmatched";
/// Route templates tracked; a router with more (it has about fifteen) shares the last.
const ROUTE_SLOTS: usize = 64;
/// The route label beyond [`ROUTE_SLOTS`].
const OVERFLOW: &str = "other";

/// The method's slot in the per-route arrays.
pub fn method_index(method: &axum::http::Method) -> usize {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(METHODS.len() - 1)
}

struct MethodStats {
    statuses: [AtomicU64; STATUSES],
    latency: Histogram,
}

#[derive(Default)]
struct RouteStats {
    /// Set when the template is first seen, then only read.
    route: OnceLock<Box<str>>,
    /// Allocated on a method's first request on this route, then only read.
    methods: [OnceLock<Box<MethodStats>>; METHODS.len()],
}

/// Requests by route template, method and status, and latency by route and method.
///
/// Templates get a slot on first sight, in an append-only table: finding one is a
/// scan of atomic loads and string comparisons (lengths first), and only the first
/// request on each template takes a lock. Templates come from the router, never from
/// the request path, so the table stays as small as the router.
pub struct HttpMetrics {
    routes: Box<[RouteStats]>,
    claim: Mutex<()>,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpMetrics")
    }
}

impl Default for HttpMetrics {
    fn default() -> Self {
        let routes: Box<[RouteStats]> = (0..ROUTE_SLOTS).map(|_| RouteStats::default()).collect();
        let _ = routes[0].route.set(UNMATCHED.into());
        let _ = routes[ROUTE_SLOTS - 1].route.set(OVERFLOW.into());
        Self {
            routes,
            claim: Mutex::new(()),
        }
    }
}

impl HttpMetrics {
    /// The slot of a matched path template (`None`: no route matched).
    pub fn route_index(&self, template: Option<&str>) -> usize {
        let Some(t) = template else { return 0 };
        let tracked = &self.routes[1..ROUTE_SLOTS - 1];
        for (i, r) in tracked.iter().enumerate() {
            match r.route.get() {
                Some(name) if **name == *t => return i + 1,
                Some(_) => {}
                None => break,
            }
        }
        let _guard = self.claim.lock();
        for (i, r) in tracked.iter().enumerate() {
            match r.route.get() {
                Some(name) if **name == *t => return i + 1,
                Some(_) => {}
                None => {
                    let _ = r.route.set(t.into());
                    return i + 1;
                }
            }
        }
        ROUTE_SLOTS - 1
    }

    /// Counts one finished request.
    pub fn record(&self, route: usize, method: usize, status: u16, elapsed: Duration) {
        let Some(r) = self.routes.get(route) else {
            return;
        };
        let Some(slot) = r.methods.get(method) else {
            return;
        };
        let stats = slot.get_or_init(|| {
            Box::new(MethodStats {
                statuses: std::array::from_fn(|_| AtomicU64::new(0)),
                latency: Histogram::default(),
            })
        });
        if let Some(c) = usize::from(status)
            .checked_sub(100)
            .and_then(|i| stats.statuses.get(i))
        {
            c.fetch_add(1, Relaxed);
        }
        stats.latency.observe(elapsed);
    }
}

impl Collector for HttpMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut e = encoder.encode_descriptor(
            "gatehouse_http_requests",
            "HTTP requests by route template, method and status",
            None,
            MetricType::Counter,
        )?;
        for r in self.routes.iter() {
            let Some(route) = r.route.get() else { continue };
            for (m, slot) in r.methods.iter().enumerate() {
                let Some(stats) = slot.get() else { continue };
                for (i, c) in stats.statuses.iter().enumerate() {
                    let n = c.load(Relaxed);
                    if n == 0 {
                        continue;
                    }
                    let status = (i + 100).to_string();
                    let labels = [
                        ("route", &**route),
                        ("method", METHODS[m]),
                        ("status", status.as_str()),
                    ];
                    counter(&mut e.encode_family(&labels)?, n)?;
                }
            }
        }
        let mut e = encoder.encode_descriptor(
            "gatehouse_http_request_duration_seconds",
            "Time to the response head, by route template and method",
            None,
            MetricType::Histogram,
        )?;
        for r in self.routes.iter() {
            let Some(route) = r.route.get() else { continue };
            for (m, slot) in r.methods.iter().enumerate() {
                let Some(stats) = slot.get() else { continue };
                let labels = [("route", &**route), ("method", METHODS[m])];
                stats.latency.encode(e.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

// ---------- OAuth ----------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    AuthorizationCode = 0,
    RefreshToken = 1,
}

const GRANTS: [&str; 2] = ["authorization_code", "refresh_token"];

/// Where a client came from, as the consent page and the metrics distinguish them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientOrigin {
    /// Dynamic client registration (RFC 7591).
    Registered = 0,
    /// A Client ID Metadata Document (including Claude's built-in ones).
    Cimd = 1,
    /// Created by the operator with `gatehouse client create`.
    Preregistered = 2,
}

const ORIGINS: [&str; 3] = ["registered", "cimd", "preregistered"];
const CLIENT_TYPES: [&str; 2] = ["public", "confidential"];

/// The token endpoint's errors, by RFC 6749 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    InvalidRequest = 0,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    InvalidTarget,
    ServerError,
    TemporarilyUnavailable,
    Other,
    /// Over an abuse limit (429).
    RateLimited,
}

const TOKEN_REJECTIONS: [&str; 11] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
    "server_error",
    "temporarily_unavailable",
    "other",
    "rate_limited",
];

#[derive(Default)]
pub struct OAuthMetrics {
    issued: [[[AtomicU64; 2]; 3]; 2],
    rejected: [AtomicU64; TOKEN_REJECTIONS.len()],
    reuse_detected: AtomicU64,
    refresh_retries: AtomicU64,
}

impl std::fmt::Debug for OAuthMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OAuthMetrics")
    }
}

impl OAuthMetrics {
    /// A new access token (with its refresh token, if any) left the token endpoint.
    pub fn token_issued(&self, grant: Grant, origin: ClientOrigin, public: bool) {
        self.issued[grant as usize][origin as usize][usize::from(!public)].fetch_add(1, Relaxed);
    }

    pub fn token_rejected(&self, why: TokenRejection) {
        self.rejected[why as usize].fetch_add(1, Relaxed);
    }

    /// A rotated refresh token came back after the grace window: its family is revoked.
    pub fn refresh_reuse_detected(&self) {
        self.reuse_detected.fetch_add(1, Relaxed);
    }

    /// A rotated refresh token came back within the grace window and got the same pair.
    pub fn refresh_retried(&self) {
        self.refresh_retries.fetch_add(1, Relaxed);
    }
}

impl Collector for OAuthMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut e = encoder.encode_descriptor(
            "gatehouse_oauth_tokens_issued",
            "Access tokens issued at the token endpoint, by grant and client kind",
            None,
            MetricType::Counter,
        )?;
        for (g, by_origin) in self.issued.iter().enumerate() {
            for (o, by_type) in by_origin.iter().enumerate() {
                for (t, n) in by_type.iter().enumerate() {
                    let labels = [
                        ("grant", GRANTS[g]),
                        ("client_origin", ORIGINS[o]),
                        ("client_type", CLIENT_TYPES[t]),
                    ];
                    counter(&mut e.encode_family(&labels)?, n.load(Relaxed))?;
                }
            }
        }
        let mut e = encoder.encode_descriptor(
            "gatehouse_oauth_token_errors",
            "Token endpoint requests refused, by OAuth error code",
            None,
            MetricType::Counter,
        )?;
        for (i, n) in self.rejected.iter().enumerate() {
            counter(
                &mut e.encode_family(&[("error", TOKEN_REJECTIONS[i])])?,
                n.load(Relaxed),
            )?;
        }
        let mut e = encoder.encode_descriptor(
            "gatehouse_oauth_refresh_reuse_detected",
            "Rotated refresh tokens presented again after the grace window (family revoked)",
            None,
            MetricType::Counter,
        )?;
        counter(&mut e, self.reuse_detected.load(Relaxed))?;
        let mut e = encoder.encode_descriptor(
            "gatehouse_oauth_refresh_retries",
            "Rotated refresh tokens presented again within the grace window (same pair returned)",
            None,
            MetricType::Counter,
        )?;
        counter(&mut e, self.refresh_retries.load(Relaxed))
    }
}

// ---------- MCP ----------

/// Why `/mcp` refused a request's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRejection {
    /// No `Authorization` header (and no anonymous access).
    Missing = 0,
    /// Not `Bearer <token>`, or a token of no known shape.
    Malformed,
    /// A JWT that does not verify (signature, issuer, algorithm, claims).
    BadSignature,
    Expired,
    WrongAudience,
    /// Revoked, or a personal access token that is unknown, expired or revoked.
    Revoked,
    /// The organization is gone or the user is no longer a member.
    NotMember,
    /// The organization is suspended.
    Suspended,
    /// The token lacks a scope the tool needs (403 step-up).
    InsufficientScope,
    /// The database could not be asked (503).
    Unavailable,
    /// Over `limits.mcp_per_credential` (429).
    RateLimited,
}

const AUTH_REJECTIONS: [&str; 11] = [
    "missing",
    "malformed",
    "bad_signature",
    "expired",
    "wrong_audience",
    "revoked",
    "not_member",
    "suspended",
    "insufficient_scope",
    "unavailable",
    "rate_limited",
];

/// How a tool call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolOutcome {
    Ok = 0,
    /// The tool ran and returned an error result.
    Error,
    /// Refused before running: role, read-only organization, quota, bad arguments.
    Refused,
    /// A 2026-07-28 input-required result.
    InputRequired,
    /// The tool answered with a JSON-RPC invalid-params error.
    InvalidRequest,
}

const TOOL_OUTCOMES: [&str; 5] = [
    "ok",
    "error",
    "refused",
    "input_required",
    "invalid_request",
];

impl ToolOutcome {
    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        TOOL_OUTCOMES[self as usize]
    }
}

/// One tool's counters, held by the tool's registry entry so that recording a call
/// needs no lookup by name.
#[derive(Debug, Default)]
pub struct ToolStats {
    outcomes: [AtomicU64; TOOL_OUTCOMES.len()],
    latency: Histogram,
}

impl ToolStats {
    pub fn record(&self, outcome: ToolOutcome, elapsed: Duration) {
        self.outcomes[outcome as usize].fetch_add(1, Relaxed);
        self.latency.observe(elapsed);
    }
}

#[derive(Default)]
pub struct McpMetrics {
    rejected: [AtomicU64; AUTH_REJECTIONS.len()],
    /// The served tools' counters, set once the registry is final (at serve time).
    tools: Mutex<Vec<(String, Arc<ToolStats>)>>,
}

impl std::fmt::Debug for McpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("McpMetrics")
    }
}

impl McpMetrics {
    pub fn auth_rejected(&self, why: AuthRejection) {
        self.rejected[why as usize].fetch_add(1, Relaxed);
    }

    /// The tools to export (replacing any set before). Called when serving starts.
    pub fn export_tools(&self, tools: Vec<(String, Arc<ToolStats>)>) {
        if let Ok(mut t) = self.tools.lock() {
            *t = tools;
        }
    }
}

impl Collector for McpMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut e = encoder.encode_descriptor(
            "gatehouse_mcp_auth_rejections",
            "Requests to /mcp refused for their credentials, by reason",
            None,
            MetricType::Counter,
        )?;
        for (i, n) in self.rejected.iter().enumerate() {
            counter(
                &mut e.encode_family(&[("reason", AUTH_REJECTIONS[i])])?,
                n.load(Relaxed),
            )?;
        }
        // Scrape time only: a copy of the list, so the lock is not held while encoding.
        let tools = self.tools.lock().map(|t| t.clone()).unwrap_or_default();
        let mut e = encoder.encode_descriptor(
            "gatehouse_mcp_tool_calls",
            "MCP tool calls by tool and outcome",
            None,
            MetricType::Counter,
        )?;
        for (name, stats) in &tools {
            for (i, n) in stats.outcomes.iter().enumerate() {
                let labels = [("tool", name.as_str()), ("outcome", TOOL_OUTCOMES[i])];
                counter(&mut e.encode_family(&labels)?, n.load(Relaxed))?;
            }
        }
        let mut e = encoder.encode_descriptor(
            "gatehouse_mcp_tool_call_duration_seconds",
            "MCP tool call latency by tool, checks included",
            None,
            MetricType::Histogram,
        )?;
        for (name, stats) in &tools {
            if stats.latency.count() == 0 {
                continue;
            }
            stats
                .latency
                .encode(e.encode_family(&[("tool", name.as_str())])?)?;
        }
        Ok(())
    }
}

// ---------- gateway upstreams ----------

/// One upstream's state and calls, updated by the gateway.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// 1 while at least one of its processes or connections is up.
    pub up: AtomicU64,
    /// 1 once a crash loop has parked one of its processes.
    pub parked: AtomicU64,
    pub restarts: AtomicU64,
    /// Tools it has in the merged list.
    pub tools: AtomicU64,
    /// Its calls, by outcome (`ok` or `error`), with their latency.
    pub calls: ToolStats,
}

#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    list: Mutex<Vec<(String, Arc<UpstreamStats>)>>,
}

impl UpstreamMetrics {
    /// The upstreams to export (replacing any set before).
    pub fn export(&self, list: Vec<(String, Arc<UpstreamStats>)>) {
        if let Ok(mut l) = self.list.lock() {
            *l = list;
        }
    }
}

impl Collector for UpstreamMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let list = self.list.lock().map(|l| l.clone()).unwrap_or_default();
        if list.is_empty() {
            return Ok(());
        }
        for (metric, help, kind, get) in [
            (
                "gatehouse_upstream_up",
                "1 while the upstream is reachable",
                MetricType::Gauge,
                (|s: &UpstreamStats| s.up.load(Relaxed)) as fn(&UpstreamStats) -> u64,
            ),
            (
                "gatehouse_upstream_parked",
                "1 when a crash loop parked the upstream until the configuration is reloaded",
                MetricType::Gauge,
                |s| s.parked.load(Relaxed),
            ),
            (
                "gatehouse_upstream_tools",
                "Tools the upstream has in the merged list",
                MetricType::Gauge,
                |s| s.tools.load(Relaxed),
            ),
            (
                "gatehouse_upstream_restarts",
                "Times the upstream's processes went down and were restarted",
                MetricType::Counter,
                |s| s.restarts.load(Relaxed),
            ),
        ] {
            let gauge = matches!(kind, MetricType::Gauge);
            let mut e = encoder.encode_descriptor(metric, help, None, kind)?;
            for (name, stats) in &list {
                let labels = [("upstream", name.as_str())];
                let mut family = e.encode_family(&labels)?;
                if gauge {
                    family.encode_gauge(&get(stats))?;
                } else {
                    counter(&mut family, get(stats))?;
                }
            }
        }
        let mut e = encoder.encode_descriptor(
            "gatehouse_upstream_calls",
            "Calls sent to the upstream, by outcome",
            None,
            MetricType::Counter,
        )?;
        for (name, stats) in &list {
            for outcome in [ToolOutcome::Ok, ToolOutcome::Error] {
                let labels = [("upstream", name.as_str()), ("outcome", outcome.as_str())];
                counter(
                    &mut e.encode_family(&labels)?,
                    stats.calls.outcomes[outcome as usize].load(Relaxed),
                )?;
            }
        }
        let mut e = encoder.encode_descriptor(
            "gatehouse_upstream_call_duration_seconds",
            "Latency of calls sent to the upstream",
            None,
            MetricType::Histogram,
        )?;
        for (name, stats) in &list {
            if stats.calls.latency.count() > 0 {
                stats
                    .calls
                    .latency
                    .encode(e.encode_family(&[("upstream", name.as_str())])?)?;
            }
        }
        Ok(())
    }
}

// ---------- database pool ----------

/// Samples the connection pool at scrape time.
#[derive(Debug)]
struct PoolCollector(Store);

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pool = self.0.pool_stats();
        for (name, help, value) in [
            (
                "gatehouse_db_pool_connections",
                "Open database connections (idle and in use)",
                pool.size,
            ),
            (
                "gatehouse_db_pool_idle_connections",
                "Open database connections not in use",
                pool.idle,
            ),
            (
                "gatehouse_db_pool_max_connections",
                "The pool's limit (database.max_connections)",
                pool.max,
            ),
        ] {
            let e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            GaugeValue(value).encode(e)?;
        }
        let e = encoder.encode_descriptor(
            "gatehouse_database",
            "The database backend",
            None,
            MetricType::Info,
        )?;
        Info(self.0.backend()).encode(e)
    }
}

#[derive(Debug)]
struct GaugeValue(u64);

impl EncodeMetric for GaugeValue {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[derive(Debug)]
struct Info(&'static str);

impl EncodeMetric for Info {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_info(&[("backend", self.0)])
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_matches() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(400));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.count(), 3);
        let mut out = String::new();
        let mut reg = Registry::default();
        #[derive(Debug)]
        struct One(Histogram);
        impl Collector for One {
            fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                let m = e.encode_descriptor("h", "help", None, MetricType::Histogram)?;
                self.0.encode(m)
            }
        }
        reg.register_collector(Box::new(One(h)));
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("h_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"10.0\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("h_count 3\n"), "{out}");
    }

    #[test]
    fn unknown_templates_and_unmatched_requests_get_fixed_labels() {
        let m = HttpMetrics::default();
        assert_eq!(m.route_index(None), 0);
        let mcp = m.route_index(Some("/mcp"));
        let token = m.route_index(Some("/token"));
        assert_ne!(mcp, token);
        assert_eq!(m.route_index(Some("/mcp")), mcp);
        assert_eq!(m.routes[token].route.get().map(|r| &**r), Some("/token"));
        for i in 0..100 {
            m.route_index(Some(&format!("/r{i}")));
        }
        assert_eq!(
            m.route_index(Some("/r99")),
            ROUTE_SLOTS - 1,
            "overflow is bounded"
        );
        assert_eq!(m.route_index(Some("/token")), token);
        assert_eq!(method_index(&axum::http::Method::GET), 0);
        assert_eq!(
            METHODS[method_index(&axum::http::Method::from_bytes(b"BREW").unwrap())],
            "OTHER"
        );
    }
}
