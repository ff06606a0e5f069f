//! The gateway (issue #15): upstream MCP servers served behind `/mcp`.
//!
//! Each `[[upstream]]` becomes an [`Upstream`]: a link to the server (so far stdio
//! processes, [`stdio`]) and its last tool listing. Whenever an upstream comes up, goes
//! down or says its list changed, and every `gateway.list_refresh_secs`, the merged
//! list is rebuilt: each selected upstream tool gets a portable public name
//! ([`naming`]) and becomes an [`UpstreamTool`] in the MCP side's
//! [`ExtraTools`](crate::mcp::tools::ExtraTools). `mcp` sees these only as its own
//! `Tool` trait and never imports this module, so scope checks, roles, read-only
//! organizations, quotas, idempotency keys, metering and audit apply to upstream tools
//! exactly as to built-in ones.
//!
//! An upstream call never carries the caller's token or headers: it carries an
//! [`identity`] token signed by Gatehouse for that upstream, tool and arguments.

pub mod http;
pub mod identity;
pub mod naming;
pub mod openapi;
pub mod sse;
pub mod stdio;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};

use crate::config::upstream::{OnChange, Transport};
use crate::config::{self, UpstreamConfig};
use crate::mcp::tools::{
    Annotations, MAX_DESCRIPTION_CHARS, Registry, Tool, ToolContext, ToolFuture, ToolResult,
    ToolSpec,
};
use crate::metrics::{ToolOutcome, ToolStats, UpstreamStats};
use crate::state::AppState;
use crate::storage::AuditEntry;
use crate::storage::pins::ToolPin;

/// Why an upstream call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("it is unavailable: {0}")]
    Down(String),
    #[error("it did not answer within {0} s")]
    Timeout(u64),
    #[error("it answered with error {code}: {message}")]
    Rpc { code: i64, message: String },
    #[error("its answer was over {0} bytes (gateway.max_response_bytes)")]
    TooLarge(usize),
    #[error("it broke the protocol: {0}")]
    Protocol(String),
}

/// What the links tell the gateway.
#[derive(Debug, Clone)]
pub enum Event {
    /// The upstream came up or went down.
    Changed(String),
    /// It sent a `list_changed` notification.
    ListChanged(String),
    /// The set of upstreams was replaced (SIGHUP).
    Reloaded,
}

/// Where the links send their [`Event`]s. An upstream's `list_changed` is queued once
/// until the merger takes it, however often the upstream sends it meanwhile, so a
/// flood of notifications costs one refresh and no memory.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<Event>,
    pending: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Events {
    fn new() -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::default();
        (Self { tx, pending }, rx)
    }

    pub fn send(&self, e: Event) -> Result<(), mpsc::error::SendError<Event>> {
        if let Event::ListChanged(name) = &e
            && let Ok(mut p) = self.pending.lock()
            && !p.insert(name.clone())
        {
            return Ok(());
        }
        self.tx.send(e)
    }

    /// The merger took `name`'s `list_changed`: the next one is queued again.
    fn taken(&self, name: &str) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(name);
        }
    }
}

/// An upstream's tool definitions as it listed them.
type Listing = Vec<Map<String, Value>>;

enum Link {
    Stdio(stdio::StdioUpstream),
    Http(Arc<http::HttpUpstream>),
    OpenApi(Arc<openapi::OpenApiUpstream>),
}

/// A tool the upstream offers that is not served, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub tool: String,
    pub reason: String,
}

/// What the last listing and merge found, for `upstream check` and the logs.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `(public name, upstream name)` of each tool served.
    pub served: Vec<(String, String)>,
    pub skipped: Vec<Skipped>,
    /// Problems of served tools that clients tolerate (a description that was cut).
    pub lint: Vec<String>,
    /// The `tools/list` entries of this upstream, in bytes.
    pub list_bytes: usize,
    /// What the credential check of a REST upstream found (`check_operation`).
    pub credentials: Option<String>,
    /// A REST upstream's `(operations turned into tools, operations in its description)`.
    pub operations: Option<(usize, usize)>,
}

pub struct Upstream {
    pub config: UpstreamConfig,
    link: Link,
    /// The tools as last listed (kept while down).
    tools: RwLock<Listing>,
    /// Its prompts, resources and resource templates as last listed (empty while down).
    prompts: RwLock<Listing>,
    resources: RwLock<Listing>,
    templates: RwLock<Listing>,
    report: Mutex<Report>,
    pub stats: Arc<UpstreamStats>,
    /// Stops its processes.
    stop: watch::Sender<bool>,
    /// Calls it is answering now, so that a reload stops it only once they are done.
    in_flight: AtomicUsize,
    service: http::ServiceToken,
    signer: openapi::Signer,
    idle: tokio::sync::Notify,
}

impl Upstream {
    pub fn name(&self) -> &str {
        self.config.name.as_str()
    }

    pub fn is_up(&self) -> bool {
        match &self.link {
            Link::Stdio(s) => s.is_up(),
            Link::Http(h) => h.is_up(),
            Link::OpenApi(o) => o.is_up(),
        }
    }

    /// `up`, or why not.
    pub fn status(&self) -> String {
        match &self.link {
            Link::Stdio(s) if s.is_up() => "up".into(),
            Link::Stdio(s) => s.why_down(),
            Link::Http(h) => h.status(),
            Link::OpenApi(o) => o.status(),
        }
    }

    pub fn restarts(&self) -> u64 {
        self.stats
            .restarts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn report(&self) -> Report {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    async fn settled(&self) {
        match &self.link {
            Link::Stdio(s) => s.settled().await,
            Link::Http(h) => h.settled().await,
            Link::OpenApi(o) => o.settled().await,
        }
    }

    pub fn is_parked(&self) -> bool {
        match &self.link {
            Link::Stdio(s) => s.is_parked(),
            Link::Http(_) | Link::OpenApi(_) => false,
        }
    }

    /// Resolves once every process has stopped (at most 5 s each).
    async fn stopped(&self) {
        match &self.link {
            Link::Stdio(s) => s.stopped(Duration::from_secs(5)).await,
            Link::Http(h) => h.stopped(Duration::from_secs(5)).await,
            Link::OpenApi(o) => o.stopped(Duration::from_secs(5)).await,
        }
    }

    /// Stops the upstream once its calls in flight are done (at most its timeout).
    async fn retire(&self) {
        let drained = async {
            loop {
                let idle = self.idle.notified();
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(self.config.timeout, drained).await;
        let _ = self.stop.send(true);
        self.stopped().await;
        tracing::info!(upstream = %self.name(), "retired upstream stopped");
    }

    fn begin_call(&self) -> CallGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        CallGuard(self)
    }

    /// Reads the tool list again; an upstream that is down lists nothing.
    /// Every page of `method`'s `key` list, within the upstream's timeout.
    async fn list(&self, method: &str, key: &str) -> Result<Listing, CallError> {
        let listed = match &self.link {
            Link::Stdio(s) => match s.pick() {
                Ok(conn) => {
                    tokio::time::timeout(self.config.timeout, stdio::list_all(&conn, method, key))
                        .await
                }
                Err(e) => return Err(e),
            },
            Link::Http(h) => {
                tokio::time::timeout(
                    self.config.timeout,
                    list_http(h, method, key, self.service_token()),
                )
                .await
            }
            // A REST API has tools only.
            Link::OpenApi(o) => Ok(match method {
                "tools/list" => o.tools(),
                _ => Ok(Vec::new()),
            }),
        };
        listed.unwrap_or(Err(CallError::Timeout(self.config.timeout.as_secs())))
    }

    /// Reads the tool list again; an upstream that is down lists nothing.
    async fn refresh(&self) {
        let listed = self.list("tools/list", "tools").await;
        // Prompts and resources are optional: an upstream without them answers
        // "method not found", which lists none.
        for (method, key, slot) in [
            ("prompts/list", "prompts", &self.prompts),
            ("resources/list", "resources", &self.resources),
            (
                "resources/templates/list",
                "resourceTemplates",
                &self.templates,
            ),
        ] {
            let items = if self.is_up() {
                self.list(method, key).await.unwrap_or_default()
            } else {
                Vec::new()
            };
            if let Ok(mut s) = slot.write() {
                *s = items;
            }
        }
        match listed {
            Ok(tools) => {
                if let Ok(mut t) = self.tools.write() {
                    *t = tools;
                }
            }
            // The last listing is kept: its tools leave tools/list while the upstream
            // is down, but a call to one still gets an answer saying why it failed.
            Err(e) => {
                if self.is_up() {
                    tracing::warn!(upstream = %self.name(), error = %e, "could not list the upstream's tools");
                }
            }
        }
    }

    /// Calls the upstream's tool `tool` for the caller `claims` describe.
    async fn call(
        &self,
        tool: &str,
        arguments: Value,
        claims: identity::IdentityClaims,
        progress: Option<mpsc::UnboundedSender<Value>>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, CallError> {
        if let Link::OpenApi(o) = &self.link {
            // The token is signed once the request is built, since it binds it.
            let args = arguments.as_object().cloned().unwrap_or_default();
            return o
                .call(tool, &args, claims, &self.signer, idempotency_key)
                .await;
        }
        let params = json!({ "name": tool, "arguments": arguments });
        self.send("tools/call", params, claims, progress).await
    }

    /// One request for a caller, with their identity token where the transport puts it.
    async fn send(
        &self,
        method: &str,
        mut params: Value,
        claims: identity::IdentityClaims,
        progress: Option<mpsc::UnboundedSender<Value>>,
    ) -> Result<Value, CallError> {
        let identity = (self.signer)(&claims)
            .ok_or_else(|| CallError::Down("Gatehouse could not sign the identity token".into()))?;
        match &self.link {
            Link::Stdio(s) => {
                let conn = s.pick()?;
                params["_meta"] = json!({ identity::META_KEY: identity });
                conn.request(method, params, progress).await
            }
            Link::Http(h) => h.request(method, params, Some(identity), progress).await,
            Link::OpenApi(_) => Err(CallError::Rpc {
                code: -32601,
                message: format!("a REST upstream has no {method}"),
            }),
        }
    }

    /// `prompts/get` or `resources/read` for a caller: their scopes are checked first
    /// (the upstream's, as for its tools), then the request carries their identity
    /// token (`tool` is the prompt's name or the resource's URI).
    async fn fetch(
        &self,
        ctx: &ToolContext,
        method: &str,
        subject: &str,
        params: Value,
    ) -> Result<Value, String> {
        let missing = self.config.scopes.difference(&ctx.caller.scopes);
        if !missing.is_empty() {
            return Err(format!("insufficient scope: this needs {missing}"));
        }
        let claims = identity_claims(ctx, self, method, subject, &params);
        let timeout = self.config.timeout;
        tokio::time::timeout(timeout, self.send(method, params, claims, None))
            .await
            .unwrap_or(Err(CallError::Timeout(timeout.as_secs())))
            .map_err(|e| format!("the upstream {:?} failed: {e}", self.name()))
    }

    /// A token for requests that are not a user's call (listing).
    fn service_token(&self) -> Option<String> {
        (self.service)()
    }
}

/// The upstreams now served, shared by the gateway and its merger.
type Current = Arc<RwLock<Vec<Arc<Upstream>>>>;

/// The gateway: every upstream, and the task that keeps the merged list current.
pub struct Gateway {
    state: AppState,
    current: Current,
    events: Events,
    stop_merger: watch::Sender<bool>,
    merger: tokio::task::JoinHandle<()>,
}

/// The most tools taken from one upstream: a runaway listing must not exhaust memory
/// (each page is bounded by `gateway.max_response_bytes` already).
pub const MAX_LISTED: usize = 2000;

/// How long start-up waits for upstreams to come up before serving without them.
const READY_WAIT: Duration = Duration::from_secs(10);

/// Starts the link to one upstream; `None` for transports not served yet (the
/// configuration check refuses those first).
/// The HTTP client of an http or openapi upstream. Redirects are never followed: one
/// could carry the identity token and the upstream's credentials to another host. No
/// fallback to a default client, which would follow them.
fn upstream_client(config: &UpstreamConfig) -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
        .build()
        .inspect_err(|e| {
            tracing::error!(upstream = %config.name, error = %e, "no HTTP client for this upstream; it is not started");
        })
        .ok()
}

fn start_upstream(
    state: &AppState,
    config: &UpstreamConfig,
    events: &Events,
) -> Option<Arc<Upstream>> {
    let gw = &state.config.gateway;
    let stats = Arc::new(UpstreamStats::default());
    let (stop, stop_rx) = watch::channel(false);
    let claims = service_claims(state.clone(), config.audience.clone());
    let signer = signer(state.clone());
    let service: http::ServiceToken = {
        let (claims, signer) = (claims.clone(), signer.clone());
        Arc::new(move || signer(&claims()))
    };
    let link = match &config.transport {
        Transport::Stdio {
            command,
            args,
            env,
            cwd,
            pool,
        } => {
            let mut vars: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                .collect();
            // Programs are found and scripts run through PATH; nothing else of ours is
            // passed on.
            if !env.contains_key("PATH")
                && let Ok(path) = std::env::var("PATH")
            {
                vars.push(("PATH".into(), path));
            }
            Link::Stdio(stdio::StdioUpstream::start(
                stdio::Settings {
                    upstream: config.name.to_string(),
                    spawn: stdio::Spawn {
                        command: command.clone(),
                        args: args.clone(),
                        env: vars,
                        cwd: cwd.clone(),
                    },
                    pool: *pool,
                    timeout: config.timeout,
                    max_line_bytes: gw.max_response_bytes,
                    backoff: gw.restart_backoff,
                    stats: stats.clone(),
                },
                events.clone(),
                stop_rx,
            ))
        }
        Transport::Http { url, headers } => Link::Http(http::HttpUpstream::start(
            upstream_client(config)?,
            http::Settings {
                upstream: config.name.to_string(),
                url: url.clone(),
                headers: headers.clone(),
                identity_header: config.identity_header.clone(),
                timeout: config.timeout,
                max_bytes: gw.max_response_bytes,
                backoff: gw.restart_backoff,
                stats: stats.clone(),
            },
            service.clone(),
            events.clone(),
            stop_rx,
        )),
        Transport::OpenApi {
            spec,
            base_url,
            include,
            exclude,
            headers,
            check_operation,
            max_response_bytes,
        } => {
            let client = upstream_client(config)?;
            Link::OpenApi(openapi::OpenApiUpstream::start(
                openapi::Settings {
                    upstream: config.name.to_string(),
                    spec: spec.clone(),
                    base_url: base_url.clone(),
                    include: include.clone(),
                    exclude: exclude.clone(),
                    headers: headers.clone(),
                    identity_header: config.identity_header.clone(),
                    check_operation: check_operation.clone(),
                    timeout: config.timeout,
                    max_response_bytes: *max_response_bytes,
                    backoff: gw.restart_backoff,
                },
                client,
                claims,
                signer.clone(),
                events.clone(),
                stop_rx,
            ))
        }
    };
    Some(Arc::new(Upstream {
        config: config.clone(),
        link,
        tools: RwLock::default(),
        prompts: RwLock::default(),
        resources: RwLock::default(),
        templates: RwLock::default(),
        report: Mutex::default(),
        stats,
        stop,
        in_flight: AtomicUsize::new(0),
        idle: tokio::sync::Notify::new(),
        service,
        signer,
    }))
}

/// Signs identity tokens with Gatehouse's current key.
fn signer(state: AppState) -> openapi::Signer {
    Arc::new(move |claims| identity::sign(&state.keys.current(), claims).ok())
}

/// The claims of the gateway's own requests to an upstream (negotiation, listing,
/// credential checks): `sub` `gatehouse`, credential `gateway`, no tool, empty
/// arguments.
fn service_claims(
    state: AppState,
    audience: String,
) -> Arc<dyn Fn() -> identity::IdentityClaims + Send + Sync> {
    Arc::new(move || {
        let now = state.clock.now();
        identity::IdentityClaims {
            iss: state.config.server.public_url.clone(),
            aud: audience.clone(),
            sub: "gatehouse".into(),
            org: String::new(),
            roles: Vec::new(),
            scope: String::new(),
            client_id: None,
            credential: "gateway".into(),
            method: String::new(),
            tool: String::new(),
            args_sha256: identity::args_digest(&json!({})),
            jti: crate::crypto::random::id("idt"),
            iat: now,
            exp: now + state.config.gateway.identity_ttl_secs,
            ..Default::default()
        }
    })
}

/// Every page of an HTTP upstream's `tools/list`.
async fn list_http(
    h: &Arc<http::HttpUpstream>,
    method: &str,
    key: &str,
    token: Option<String>,
) -> Result<Listing, CallError> {
    list_pages(h.name(), key, |params| {
        h.request(method, params, token.clone(), None)
    })
    .await
}

/// Every page of a list, each fetched by `fetch` with the params for its cursor, up to
/// [`MAX_LISTED`] entries and as many pages (however small the upstream's pages are),
/// stopping at a cursor seen before. A cut list is logged.
pub(crate) async fn list_pages<F, Fut>(
    upstream: &str,
    key: &str,
    mut fetch: F,
) -> Result<Listing, CallError>
where
    F: FnMut(Value) -> Fut,
    Fut: std::future::Future<Output = Result<Value, CallError>>,
{
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_LISTED {
        let params = match &cursor {
            Some(c) => json!({ "cursor": c }),
            None => json!({}),
        };
        let page = fetch(params).await?;
        if let Some(items) = page.get(key).and_then(Value::as_array) {
            out.extend(items.iter().filter_map(|v| v.as_object().cloned()));
        }
        if out.len() >= MAX_LISTED {
            out.truncate(MAX_LISTED);
            tracing::warn!(
                upstream,
                "an upstream lists more than {MAX_LISTED} {key}; the rest are not served"
            );
            return Ok(out);
        }
        match page.get("nextCursor").and_then(Value::as_str) {
            Some(c) if !c.is_empty() => {
                if !seen.insert(c.to_owned()) {
                    tracing::warn!(
                        upstream,
                        "its {key} list gave a cursor twice; the list ends there"
                    );
                    return Ok(out);
                }
                cursor = Some(c.to_owned());
            }
            _ => return Ok(out),
        }
    }
    tracing::warn!(
        upstream,
        "its {key} list has more than {MAX_LISTED} pages; the rest are not served"
    );
    Ok(out)
}

impl Gateway {
    /// Starts every configured upstream and waits (at most [`READY_WAIT`]) until each
    /// has come up or failed once, so that the first `tools/list` already has them.
    pub async fn start(state: AppState) -> Self {
        let (events, events_rx) = Events::new();
        let (stop_merger, stop_rx) = watch::channel(false);
        let gw = &state.config.gateway;
        let upstreams: Vec<Arc<Upstream>> = gw
            .upstreams
            .iter()
            .filter_map(|c| start_upstream(&state, c, &events))
            .collect();
        settle(&upstreams).await;
        let current: Current = Arc::new(RwLock::new(upstreams));
        let mut merger = Merger {
            state: state.clone(),
            current: current.clone(),
            stats: HashMap::new(),
            pins: HashMap::new(),
            blocked: HashMap::new(),
            events: events.clone(),
        };
        merger.refresh_all().await;
        let handle = tokio::spawn(merger.run(events_rx, stop_rx));
        let gateway = Self {
            state,
            current,
            events,
            stop_merger,
            merger: handle,
        };
        gateway.export_metrics();
        for u in gateway.upstreams() {
            let r = u.report();
            tracing::info!(upstream = %u.name(), status = %u.status(), tools = r.served.len(), skipped = r.skipped.len(), "upstream");
        }
        gateway
    }

    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.current.read().map(|c| c.clone()).unwrap_or_default()
    }

    fn export_metrics(&self) {
        self.state.metrics.upstreams.export(
            self.upstreams()
                .iter()
                .map(|u| (u.name().to_owned(), u.stats.clone()))
                .collect(),
        );
    }

    /// Serves `configs` from now on. An upstream whose settings did not change keeps
    /// running (unless a crash loop parked it); a new or changed one is started, and
    /// the merged list switches once it has come up or failed. A removed or replaced
    /// one is stopped after the calls it is still answering have finished (at most its
    /// timeout), so no call in flight is dropped.
    pub async fn reload(&self, configs: &[UpstreamConfig]) {
        let old = self.upstreams();
        let mut next = Vec::new();
        let mut started = Vec::new();
        for c in configs {
            // A description file is read again (it may have changed); one from a URL is
            // read once, at start, and when its settings change.
            let rereads = matches!(
                &c.transport,
                Transport::OpenApi {
                    spec: config::upstream::SpecSource::File(_),
                    ..
                }
            );
            match old
                .iter()
                .find(|u| u.config == *c && !u.is_parked() && !rereads)
            {
                Some(u) => next.push(u.clone()),
                None => {
                    if let Some(u) = start_upstream(&self.state, c, &self.events) {
                        started.push(u.clone());
                        next.push(u);
                    }
                }
            }
        }
        settle(&started).await;
        let retired: Vec<Arc<Upstream>> = old
            .into_iter()
            .filter(|u| !next.iter().any(|n| Arc::ptr_eq(n, u)))
            .collect();
        if let Ok(mut c) = self.current.write() {
            *c = next;
        }
        self.export_metrics();
        let _ = self.events.send(Event::Reloaded);
        tracing::info!(
            started = started.len(),
            stopped = retired.len(),
            "upstreams reloaded"
        );
        for u in retired {
            tokio::spawn(async move { u.retire().await });
        }
    }

    /// Stops every upstream process (their whole process groups) and the merger.
    pub async fn shutdown(&self) {
        let _ = self.stop_merger.send(true);
        self.merger.abort();
        let all = self.upstreams();
        for u in &all {
            let _ = u.stop.send(true);
        }
        futures_util::future::join_all(all.iter().map(|u| u.stopped())).await;
    }
}

/// Waits (at most [`READY_WAIT`]) until each upstream has come up or failed once.
async fn settle(upstreams: &[Arc<Upstream>]) {
    let all = futures_util::future::join_all(upstreams.iter().map(|u| u.settled()));
    let _ = tokio::time::timeout(READY_WAIT, all).await;
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.stop_merger.send(true);
        for u in self.upstreams() {
            let _ = u.stop.send(true);
        }
    }
}

/// Counts a call to an upstream while it runs.
struct CallGuard<'a>(&'a Upstream);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Keeps [`ExtraTools`](crate::mcp::tools::ExtraTools) in step with the upstreams.
struct Merger {
    state: AppState,
    current: Current,
    /// Each public tool's metrics, kept across rebuilds.
    stats: HashMap<String, Arc<ToolStats>>,
    /// The tool pins as last read, by (upstream, tool).
    pins: HashMap<(String, String), ToolPin>,
    /// Tools held back by `on_change = "block"`, with the digest waiting for approval.
    blocked: HashMap<(String, String), String>,
    events: Events,
}

/// How often pins are read again while a changed tool waits for approval.
const APPROVAL_POLL: Duration = Duration::from_secs(2);

/// The digest a tool is pinned by: SHA-256 of its whole definition (RFC 8785).
fn definition_digest(def: &Map<String, Value>) -> String {
    identity::args_digest(&Value::Object(def.clone()))
}

impl Merger {
    /// Whether the upstream's tool `tool` may be served as `def` defines it now: pinned
    /// when first seen; a changed definition goes by the upstream's `on_change`.
    async fn check_pin(
        &mut self,
        u: &Upstream,
        tool: &str,
        def: &Map<String, Value>,
    ) -> Result<(), String> {
        let key = (u.name().to_owned(), tool.to_owned());
        let digest = definition_digest(def);
        let store = &self.state.store;
        let now = self.state.clock.now();
        let pin = match self.pins.get(&key) {
            Some(p) => p.clone(),
            None => match store.pin_tool(u.name(), tool, &digest, now).await {
                Ok(p) => {
                    self.pins.insert(key.clone(), p.clone());
                    p
                }
                Err(e) => {
                    tracing::warn!(upstream = %u.name(), tool, error = %e, "could not pin a new tool; it is not served until it can be");
                    return Err(
                        "it is new and could not be pinned (the database is unavailable)".into(),
                    );
                }
            },
        };
        if pin.digest == digest {
            return Ok(());
        }
        let on_change = u.config.on_change;
        let accept = on_change != OnChange::Block;
        let audit = AuditEntry::new(now, "system", "gateway.tool_changed")
            .target(format!("upstream:{}/tool:{tool}", u.name()))
            .detail(json!({
                "on_change": on_change.as_str(),
                "approved_digest": pin.digest,
                "new_digest": digest,
            }));
        let definition = Value::Object(def.clone()).to_string();
        match store
            .record_tool_change(&pin, &digest, &definition, accept, now, &audit)
            .await
        {
            Ok(true) if accept => {
                if on_change == OnChange::Warn {
                    tracing::warn!(upstream = %u.name(), tool, "an upstream changed a tool's definition; served as changed (on_change = warn)");
                } else {
                    tracing::info!(upstream = %u.name(), tool, "an upstream changed a tool's definition (on_change = accept)");
                }
                if let Some(p) = self.pins.get_mut(&key) {
                    p.digest = digest;
                }
                Ok(())
            }
            Ok(true) => {
                tracing::warn!(upstream = %u.name(), tool, "an upstream changed a tool's definition; it is not served until approved: gatehouse upstream approve {}", u.name());
                let reason = Self::blocked_reason(u.name(), tool, &digest);
                self.blocked.insert(key, digest);
                Err(reason)
            }
            Ok(false) if accept => Ok(()),
            Ok(false) => {
                let reason = Self::blocked_reason(u.name(), tool, &digest);
                self.blocked.insert(key, digest);
                Err(reason)
            }
            Err(e) => {
                tracing::warn!(upstream = %u.name(), tool, error = %e, "could not record a changed tool definition");
                if accept {
                    Ok(())
                } else {
                    let reason = Self::blocked_reason(u.name(), tool, &digest);
                    self.blocked.insert(key, digest);
                    Err(reason)
                }
            }
        }
    }

    fn blocked_reason(upstream: &str, tool: &str, digest: &str) -> String {
        format!(
            "its definition changed since it was approved (on_change = block; new digest {digest}): review it and run `gatehouse upstream approve {upstream} --tool {tool} --digest {digest}`"
        )
    }

    /// Whether a tool held back has been approved since (by any instance or the CLI).
    async fn approvals_arrived(&self) -> bool {
        let Ok(pins) = self.state.store.tool_pins().await else {
            return false;
        };
        pins.iter().any(|p| {
            self.blocked
                .get(&(p.upstream.clone(), p.tool.clone()))
                .is_some_and(|waiting| *waiting == p.digest)
        })
    }

    fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.current.read().map(|c| c.clone()).unwrap_or_default()
    }

    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.state.config.gateway.list_refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let mut names: Vec<String> = Vec::new();
            let all = |names: &mut Vec<String>, upstreams: &[Arc<Upstream>]| {
                names.extend(upstreams.iter().map(|u| u.name().to_owned()));
            };
            let waiting = !self.blocked.is_empty();
            tokio::select! {
                _ = tick.tick() => all(&mut names, &self.upstreams()),
                _ = async {
                    if waiting {
                        tokio::time::sleep(APPROVAL_POLL).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                } => {
                    if !self.approvals_arrived().await {
                        continue;
                    }
                }
                e = events.recv() => match e {
                    Some(Event::ListChanged(n)) => {
                        self.events.taken(&n);
                        names.push(n);
                    }
                    Some(Event::Changed(n)) => names.push(n),
                    Some(Event::Reloaded) => all(&mut names, &self.upstreams()),
                    None => return,
                },
                _ = stdio::stopped(&mut stop) => return,
            }
            // Events that arrived meanwhile are handled in the same round.
            while let Ok(e) = events.try_recv() {
                match e {
                    Event::ListChanged(n) => {
                        self.events.taken(&n);
                        names.push(n);
                    }
                    Event::Changed(n) => names.push(n),
                    Event::Reloaded => all(&mut names, &self.upstreams()),
                }
            }
            names.sort();
            names.dedup();
            // Side by side: a slow upstream must not hold up the others' changes.
            let due: Vec<Arc<Upstream>> = self
                .upstreams()
                .into_iter()
                .filter(|u| names.iter().any(|n| n == u.name()))
                .collect();
            futures_util::future::join_all(due.iter().map(|u| u.refresh())).await;
            self.merge().await;
        }
    }

    async fn refresh_all(&mut self) {
        let upstreams = self.upstreams();
        futures_util::future::join_all(upstreams.iter().map(|u| u.refresh())).await;
        self.merge().await;
    }

    /// Builds the merged list from the last listings and puts it in place.
    async fn merge(&mut self) {
        let builtin: Vec<String> = self.state.tools.tool_names().map(str::to_owned).collect();
        let builtin: Vec<&str> = builtin.iter().map(String::as_str).collect();
        match self.state.store.tool_pins().await {
            Ok(pins) => {
                self.pins = pins
                    .into_iter()
                    .map(|p| ((p.upstream.clone(), p.tool.clone()), p))
                    .collect();
            }
            Err(e) => {
                tracing::warn!(error = %e, "tool pins unreadable; the last ones read are used");
            }
        }
        self.blocked.clear();
        let mut candidates = Vec::new();
        let mut reports: BTreeMap<String, Report> = BTreeMap::new();
        let upstreams = self.upstreams();
        let listings: Vec<(Arc<Upstream>, Listing)> = upstreams
            .iter()
            .map(|u| {
                (
                    u.clone(),
                    u.tools.read().map(|t| t.clone()).unwrap_or_default(),
                )
            })
            .collect();
        for (order, (u, tools)) in listings.iter().enumerate() {
            let report = reports.entry(u.name().to_owned()).or_default();
            for def in tools {
                let Some(tool) = def.get("name").and_then(Value::as_str) else {
                    report.skipped.push(Skipped {
                        tool: String::new(),
                        reason: "a tool without a name".into(),
                    });
                    continue;
                };
                if !u.config.selects(tool) {
                    report.skipped.push(Skipped {
                        tool: tool.to_owned(),
                        reason: "not selected by allow/deny".into(),
                    });
                    continue;
                }
                let held = self.check_pin(u, tool, def).await.err();
                candidates.push((
                    naming::Candidate {
                        upstream: u.name().to_owned(),
                        order,
                        prefix: u.config.prefix.clone(),
                        tool: tool.to_owned(),
                    },
                    u.clone(),
                    def,
                    held,
                ));
            }
        }
        let plain: Vec<naming::Candidate> =
            candidates.iter().map(|(c, _, _, _)| c.clone()).collect();
        let (names, collisions) = naming::assign(&builtin, &plain);
        for c in collisions {
            tracing::warn!(upstream = %c.upstream, tool = %c.tool, wanted = %c.wanted, given = %c.given, "tool name collision resolved");
            reports
                .entry(c.upstream.clone())
                .or_default()
                .lint
                .push(format!(
                    "{}: the name {} was taken, so it is served as {}",
                    c.tool, c.wanted, c.given
                ));
        }
        let mut registry = Registry::empty();
        let mut stats = HashMap::new();
        let upstream_up: HashMap<&str, bool> =
            upstreams.iter().map(|u| (u.name(), u.is_up())).collect();
        for ((candidate, upstream, def, held), public) in candidates.into_iter().zip(names) {
            let report = reports.entry(candidate.upstream.clone()).or_default();
            if let Some(reason) = held {
                // Unlisted, but a call to it says why it is not served, to a caller
                // with the scopes the tool needs (others learn nothing about it).
                let scopes: Vec<String> = upstream
                    .config
                    .scopes_for(&candidate.tool)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                let scope_refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
                if let Ok(spec) = ToolSpec::new(&public, "").and_then(|s| s.scopes(&scope_refs)) {
                    let message = format!(
                        "the upstream {:?} changed the tool {} since it was approved; an administrator must review and approve it first",
                        candidate.upstream, candidate.tool
                    );
                    let _ = registry.add_tool_as(
                        HeldTool {
                            spec: spec.input_schema(json!({ "type": "object" })),
                            message,
                        },
                        Arc::default(),
                        false,
                    );
                }
                report.skipped.push(Skipped {
                    tool: candidate.tool,
                    reason,
                });
                continue;
            }
            let (tool, lint) = match UpstreamTool::new(&public, &candidate.tool, def, upstream) {
                Ok(t) => t,
                Err(reason) => {
                    report.skipped.push(Skipped {
                        tool: candidate.tool,
                        reason,
                    });
                    continue;
                }
            };
            let s = self.stats.get(&public).cloned().unwrap_or_default();
            let up = upstream_up
                .get(candidate.upstream.as_str())
                .copied()
                .unwrap_or(false);
            match registry.add_tool_as(tool, s.clone(), up) {
                Ok(definition) => {
                    if up {
                        report.list_bytes += serde_json::to_vec(definition).map_or(0, |v| v.len());
                        report.served.push((public.clone(), candidate.tool.clone()));
                    }
                    report.lint.extend(lint);
                    stats.insert(public, s);
                }
                Err(e) => report.skipped.push(Skipped {
                    tool: candidate.tool,
                    reason: e.to_string(),
                }),
            }
        }
        for u in &upstreams {
            let mut r = reports.remove(u.name()).unwrap_or_default();
            if let Link::OpenApi(o) = &u.link {
                // Operations that never became tools come first, per operation.
                r.skipped.splice(0..0, o.skipped());
                r.lint.splice(0..0, o.lint());
                r.credentials = o.credentials();
                r.operations = o.operations();
            }
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            u.stats.up.store(u64::from(u.is_up()), relaxed);
            u.stats.tools.store(r.served.len() as u64, relaxed);
            if let Ok(mut slot) = u.report.lock() {
                *slot = r;
            }
        }
        self.stats = stats;
        add_prompts_and_resources(&mut registry, &upstreams, &self.state.tools);
        let mut exported = self.state.tools.tool_stats();
        exported.extend(registry.tool_stats());
        self.state.extra_tools.replace(registry);
        self.state.metrics.mcp.export_tools(exported);
    }
}

/// A resource URI as served: an upstream's URI behind `<upstream>+`, so that it cannot
/// collide with another's and a read finds its upstream; `ui://` URIs (MCP Apps, named
/// in tool definitions' `_meta`) are served unchanged.
fn public_uri(upstream: &str, uri: &str) -> String {
    if uri.starts_with("ui://") {
        uri.to_owned()
    } else {
        format!("{upstream}+{uri}")
    }
}

/// The upstream's own URI for `public` (the inverse of [`public_uri`]).
fn upstream_uri<'a>(upstream: &str, public: &'a str) -> &'a str {
    public
        .strip_prefix(upstream)
        .and_then(|r| r.strip_prefix('+'))
        .unwrap_or(public)
}

fn text_field(def: &Map<String, Value>, key: &str) -> Option<String> {
    def.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// The upstreams' prompts (named like their tools) and resources (see [`public_uri`]),
/// from every upstream that is up, in configuration order; a name or URI taken already
/// is left out.
fn add_prompts_and_resources(registry: &mut Registry, upstreams: &[Arc<Upstream>], own: &Registry) {
    use crate::mcp::tools::{Prompt, PromptSpec, Resource, ResourceSpec, ResourceTemplate};
    for u in upstreams.iter().filter(|u| u.is_up()) {
        let name = u.name().to_owned();
        let prompts = u.prompts.read().map(|p| p.clone()).unwrap_or_default();
        for def in prompts {
            let Some(original) = text_field(&def, "name") else {
                continue;
            };
            let public = naming::public_name(&name, &u.config.prefix, &original);
            if own.find_prompt(&public).is_some() {
                continue;
            }
            let arguments = def
                .get("arguments")
                .and_then(Value::as_array)
                .map(|args| {
                    args.iter()
                        .filter_map(|a| {
                            Some((
                                a.get("name")?.as_str()?.to_owned(),
                                a.get("description")
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_owned(),
                                a.get("required").and_then(Value::as_bool).unwrap_or(false),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let up = u.clone();
            let _ = registry.add_prompt(Prompt {
                spec: PromptSpec {
                    name: public,
                    title: text_field(&def, "title"),
                    description: text_field(&def, "description").unwrap_or_default(),
                    arguments,
                },
                get: Arc::new(move |ctx, args| {
                    let up = up.clone();
                    let original = original.clone();
                    Box::pin(async move {
                        let params = json!({ "name": original, "arguments": args });
                        up.fetch(&ctx, "prompts/get", &original, params).await
                    })
                }),
                complete: None,
            });
        }
        let resources = u.resources.read().map(|r| r.clone()).unwrap_or_default();
        for def in resources {
            let Some(original) = text_field(&def, "uri") else {
                continue;
            };
            let public = public_uri(&name, &original);
            if own.reader_for(&public).is_some() {
                continue;
            }
            let up = u.clone();
            let _ = registry.add_resource(Resource {
                spec: ResourceSpec {
                    uri: public,
                    name: text_field(&def, "name").unwrap_or_else(|| original.clone()),
                    title: text_field(&def, "title"),
                    description: text_field(&def, "description"),
                    mime_type: text_field(&def, "mimeType"),
                    meta: def.get("_meta").cloned(),
                },
                read: Arc::new(move |ctx, public| {
                    let up = up.clone();
                    Box::pin(async move { up.read(&ctx, &public).await })
                }),
            });
        }
        let templates = u.templates.read().map(|t| t.clone()).unwrap_or_default();
        for def in templates {
            let Some(original) = text_field(&def, "uriTemplate") else {
                continue;
            };
            let up = u.clone();
            let _ = registry.add_resource_template(ResourceTemplate {
                uri_template: public_uri(&name, &original),
                name: text_field(&def, "name").unwrap_or_else(|| original.clone()),
                title: text_field(&def, "title"),
                description: text_field(&def, "description"),
                mime_type: text_field(&def, "mimeType"),
                meta: def.get("_meta").cloned(),
                read: Arc::new(move |ctx, public| {
                    let up = up.clone();
                    Box::pin(async move { up.read(&ctx, &public).await })
                }),
            });
        }
    }
}

impl Upstream {
    /// `resources/read` of the public URI `public`; the contents' URIs are given back
    /// as served.
    async fn read(&self, ctx: &ToolContext, public: &str) -> Result<Vec<Value>, String> {
        let uri = upstream_uri(self.name(), public).to_owned();
        let result = self
            .fetch(ctx, "resources/read", &uri, json!({ "uri": uri }))
            .await?;
        let mut contents = match result.get("contents") {
            Some(Value::Array(c)) => c.clone(),
            _ => return Err("the upstream's answer has no contents".into()),
        };
        for c in &mut contents {
            if let Some(u) = c.get("uri").and_then(Value::as_str) {
                let mapped = public_uri(self.name(), u);
                c["uri"] = json!(mapped);
            }
        }
        Ok(contents)
    }
}

/// A tool held back by pinning: every call is refused with why.
struct HeldTool {
    spec: ToolSpec,
    message: String,
}

impl Tool for HeldTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call(&self, _ctx: ToolContext, _args: Map<String, Value>) -> ToolFuture<'_> {
        let result = ToolResult::coded_error("TOOL_CHANGED", self.message.clone());
        Box::pin(async move { result })
    }
}

/// An upstream's tool, as the MCP side sees it.
struct UpstreamTool {
    spec: ToolSpec,
    /// The tool's name at the upstream.
    tool: String,
    upstream: Arc<Upstream>,
}

impl UpstreamTool {
    /// The tool for upstream definition `def`, served as `public`; with lint findings.
    fn new(
        public: &str,
        tool: &str,
        def: &Map<String, Value>,
        upstream: Arc<Upstream>,
    ) -> Result<(Self, Vec<String>), String> {
        let mut lint = Vec::new();
        let mut description = def
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let chars = description.chars().count();
        if chars >= MAX_DESCRIPTION_CHARS {
            description = description
                .chars()
                .take(MAX_DESCRIPTION_CHARS - 2)
                .collect();
            description.push('…');
            lint.push(format!(
                "{tool}: its description of {chars} characters was cut to {MAX_DESCRIPTION_CHARS}"
            ));
        }
        let input = def
            .get("inputSchema")
            .cloned()
            .ok_or_else(|| "it has no inputSchema".to_owned())?;
        // A tool the operator lists in `writes` is served, checked and shown to clients
        // as a write, whatever the upstream claims.
        let forced;
        let def = match def.get("annotations").and_then(|a| a.get("readOnlyHint")) {
            Some(Value::Bool(true)) if upstream.config.forces_write(tool) => {
                let mut d = def.clone();
                if let Some(a) = d.get_mut("annotations").and_then(Value::as_object_mut) {
                    a.insert("readOnlyHint".into(), Value::Bool(false));
                }
                lint.push(format!(
                    "{tool}: says readOnlyHint but is served as a write (`writes`)"
                ));
                forced = d;
                &forced
            }
            _ => def,
        };
        let scopes: Vec<String> = upstream
            .config
            .scopes_for(tool)
            .iter()
            .map(ToString::to_string)
            .collect();
        let scope_refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let mut spec = ToolSpec::new(public, description)
            .map_err(|e| e.to_string())?
            .input_schema(input)
            .annotations(Annotations::from_hints(def.get("annotations")))
            .scopes(&scope_refs)
            .map_err(|e| e.to_string())?
            .published_as(def);
        if let Some(out) = def.get("outputSchema") {
            spec = spec.output_schema(out.clone());
        }
        Ok((
            Self {
                spec,
                tool: tool.to_owned(),
                upstream,
            },
            lint,
        ))
    }
}

impl Tool for UpstreamTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call(&self, ctx: ToolContext, args: Map<String, Value>) -> ToolFuture<'_> {
        Box::pin(async move {
            let u = &self.upstream;
            let _running = u.begin_call();
            let arguments = Value::Object(args);
            let claims = identity_claims(&ctx, u, "tools/call", &self.tool, &arguments);
            let (tx, mut rx) = if ctx.wants_progress() {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let timeout = u.config.timeout;
            let started = std::time::Instant::now();
            let call = tokio::time::timeout(
                timeout,
                u.call(&self.tool, arguments, claims, tx, ctx.idempotency_key()),
            );
            tokio::pin!(call);
            let forward = |p: Value| {
                let progress = p.get("progress").and_then(Value::as_f64).unwrap_or(0.0);
                let total = p.get("total").and_then(Value::as_f64);
                ctx.progress(progress, total, p.get("message").and_then(Value::as_str));
            };
            let outcome = loop {
                tokio::select! {
                    r = &mut call => break r.unwrap_or(Err(CallError::Timeout(timeout.as_secs()))),
                    Some(p) = async { match rx.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => forward(p),
                }
            };
            // Progress sent just before the answer is still on its way here.
            if let Some(rx) = rx.as_mut() {
                while let Ok(p) = rx.try_recv() {
                    forward(p);
                }
            }
            let failed = !matches!(&outcome, Ok(Value::Object(_)));
            u.stats.calls.record(
                if failed {
                    ToolOutcome::Error
                } else {
                    ToolOutcome::Ok
                },
                started.elapsed(),
            );
            match outcome {
                Ok(Value::Object(mut m)) => {
                    if !m.get("content").is_some_and(Value::is_array) {
                        m.insert("content".into(), json!([]));
                    }
                    ToolResult::Forwarded(m)
                }
                Ok(_) => upstream_error(
                    u,
                    &CallError::Protocol("the result is not an object".into()),
                ),
                Err(e) => {
                    tracing::warn!(upstream = %u.name(), tool = %self.tool, error = %e, "upstream call failed");
                    upstream_error(u, &e)
                }
            }
        })
    }
}

fn upstream_error(u: &Upstream, e: &CallError) -> ToolResult {
    let code = match e {
        CallError::Timeout(_) => "UPSTREAM_TIMEOUT",
        CallError::Rpc { .. } => "UPSTREAM_ERROR",
        CallError::Down(_) => "UPSTREAM_UNAVAILABLE",
        CallError::TooLarge(_) | CallError::Protocol(_) => "UPSTREAM_ERROR",
    };
    ToolResult::coded_error(code, format!("the upstream {:?} failed: {e}", u.name()))
}

/// The identity token's claims for `ctx`'s caller calling `method` on `tool`.
fn identity_claims(
    ctx: &ToolContext,
    u: &Upstream,
    method: &str,
    tool: &str,
    arguments: &Value,
) -> identity::IdentityClaims {
    let caller = &ctx.caller;
    let now = ctx.state.clock.now();
    identity::IdentityClaims {
        iss: ctx.state.config.server.public_url.clone(),
        aud: u.config.audience.clone(),
        sub: caller.user_id.clone(),
        org: caller.org_id.clone(),
        roles: caller
            .standing
            .role
            .map(|r| vec![r.as_str().to_owned()])
            .unwrap_or_default(),
        scope: caller.scopes.to_string(),
        client_id: caller.client_id.clone(),
        credential: caller.kind.as_str().to_owned(),
        method: method.to_owned(),
        tool: tool.to_owned(),
        args_sha256: identity::args_digest(arguments),
        jti: crate::crypto::random::id("idt"),
        iat: now,
        exp: now + ctx.state.config.gateway.identity_ttl_secs,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_list_changed_is_queued_once_until_taken() {
        let (events, mut rx) = Events::new();
        for _ in 0..10_000 {
            events.send(Event::ListChanged("a".into())).unwrap();
        }
        events.send(Event::ListChanged("b".into())).unwrap();
        events.send(Event::Changed("a".into())).unwrap();
        events.send(Event::Changed("a".into())).unwrap();
        let mut got = Vec::new();
        while let Ok(e) = rx.try_recv() {
            got.push(format!("{e:?}"));
        }
        assert_eq!(
            got,
            [
                r#"ListChanged("a")"#,
                r#"ListChanged("b")"#,
                r#"Changed("a")"#,
                r#"Changed("a")"#
            ]
        );
        events.taken("a");
        events.send(Event::ListChanged("a".into())).unwrap();
        assert!(rx.try_recv().is_ok(), "queued again once taken");
    }
}
