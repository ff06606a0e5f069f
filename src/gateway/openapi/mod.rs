//! REST APIs described by OpenAPI 3.0 or 3.1, served as tools.
//!
//! The description is read at start (a file, or an https URL fetched once, at most
//! [`MAX_SPEC_BYTES`], no redirects) and turned into tools by [`spec`], with schemas
//! made self-contained by [`refs`]. A call becomes one HTTP request ([`call`]) with the
//! upstream's own configured headers and Gatehouse's identity token, which here also
//! binds the request itself (`htm`, `htu`, `body_sha256`), since a REST API sees the
//! request, not the tool's arguments. Nothing of the caller's is sent.
//!
//! A description that cannot be read or parsed leaves the upstream down with the
//! reason (retried with backoff); it never stops the server.

pub mod call;
pub mod refs;
pub mod spec;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::identity::IdentityClaims;
use super::stdio::{backoff, stopped};
use super::{CallError, Event, Events, Skipped};
use crate::config::Secret;
use crate::config::upstream::SpecSource;

/// The largest description read (GitHub's REST description is about 13 MB).
pub const MAX_SPEC_BYTES: usize = 64 * 1024 * 1024;

pub struct Settings {
    pub upstream: String,
    pub spec: SpecSource,
    pub base_url: url::Url,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub headers: BTreeMap<String, Secret>,
    pub identity_header: String,
    /// An operation `upstream check` and start-up call to see that the credentials work.
    pub check_operation: Option<String>,
    pub timeout: Duration,
    /// Answers are cut here, with a note.
    pub max_response_bytes: usize,
    pub backoff: Duration,
}

/// Signs an identity token; `None` when signing failed.
pub type Signer = Arc<dyn Fn(&IdentityClaims) -> Option<String> + Send + Sync>;

#[derive(Clone)]
enum Health {
    Starting,
    Up,
    Down(String),
    Stopped,
}

struct Loaded {
    version: String,
    total: usize,
    operations: Vec<spec::Operation>,
    by_tool: HashMap<String, usize>,
    skipped: Vec<Skipped>,
}

pub struct OpenApiUpstream {
    settings: Settings,
    client: reqwest::Client,
    loaded: RwLock<Option<Arc<Loaded>>>,
    health: watch::Sender<Health>,
    /// What the `check_operation` call found.
    credentials: RwLock<Option<String>>,
}

impl OpenApiUpstream {
    pub fn start(
        settings: Settings,
        client: reqwest::Client,
        service: Arc<dyn Fn() -> IdentityClaims + Send + Sync>,
        signer: Signer,
        events: Events,
        stop: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let up = Arc::new(Self {
            settings,
            client,
            loaded: RwLock::new(None),
            health: watch::channel(Health::Starting).0,
            credentials: RwLock::new(None),
        });
        tokio::spawn(load_loop(up.clone(), service, signer, events, stop));
        up
    }

    pub fn is_up(&self) -> bool {
        matches!(*self.health.borrow(), Health::Up)
    }

    pub fn status(&self) -> String {
        match &*self.health.borrow() {
            Health::Starting => "starting".into(),
            Health::Up => match self.loaded() {
                Some(l) => format!(
                    "up (OpenAPI {}, {} of {} operations)",
                    l.version,
                    l.operations.len(),
                    l.total
                ),
                None => "up".into(),
            },
            Health::Down(why) => format!("down ({why})"),
            Health::Stopped => "stopped".into(),
        }
    }

    /// What the credential check found, if one is configured.
    pub fn credentials(&self) -> Option<String> {
        self.credentials.read().ok().and_then(|c| c.clone())
    }

    /// `(operations turned into tools, operations in the description)`, once loaded.
    pub fn operations(&self) -> Option<(usize, usize)> {
        self.loaded().map(|l| (l.operations.len(), l.total))
    }

    /// Findings about operations that were served: schemas simplified to fit.
    pub fn lint(&self) -> Vec<String> {
        self.loaded()
            .map(|l| {
                l.operations
                    .iter()
                    .filter_map(|o| o.simplified.as_ref().map(|s| format!("{}: {s}", o.tool)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Operations of the description not served, and why.
    pub fn skipped(&self) -> Vec<Skipped> {
        self.loaded().map(|l| l.skipped.clone()).unwrap_or_default()
    }

    pub async fn settled(&self) {
        let mut rx = self.health.subscribe();
        let _ = rx.wait_for(|h| !matches!(h, Health::Starting)).await;
    }

    pub async fn stopped(&self, limit: Duration) {
        let mut rx = self.health.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|h| matches!(h, Health::Stopped))).await;
    }

    fn loaded(&self) -> Option<Arc<Loaded>> {
        self.loaded.read().ok().and_then(|l| l.clone())
    }

    /// The tools, as `tools/list` entries.
    pub fn tools(&self) -> Result<Vec<Map<String, Value>>, CallError> {
        let Some(l) = self.loaded().filter(|_| self.is_up()) else {
            return Err(CallError::Down(self.status()));
        };
        Ok(l.operations.iter().map(|o| o.definition.clone()).collect())
    }

    /// Calls the operation behind `tool`: builds the request, signs `claims` for it,
    /// sends it and maps the answer.
    pub async fn call(
        &self,
        tool: &str,
        arguments: &Map<String, Value>,
        claims: IdentityClaims,
        signer: &Signer,
        idempotency_key: Option<&str>,
    ) -> Result<Value, CallError> {
        let Some(l) = self.loaded().filter(|_| self.is_up()) else {
            return Err(CallError::Down(self.status()));
        };
        let Some(op) = l.by_tool.get(tool).map(|&i| &l.operations[i]) else {
            return Err(CallError::Rpc {
                code: -32602,
                message: format!("unknown tool {tool:?}"),
            });
        };
        let request = match call::build(op, arguments, &self.settings.base_url) {
            Ok(r) => r,
            // The model gave arguments the API cannot take: it can correct them.
            Err(e) => {
                return Ok(json!({
                    "content": [{ "type": "text", "text": format!("invalid arguments: {e}") }],
                    "isError": true,
                }));
            }
        };
        let key = if op.writes() { idempotency_key } else { None };
        self.send(request, claims, signer, key).await
    }

    async fn send(
        &self,
        request: call::Request,
        mut claims: IdentityClaims,
        signer: &Signer,
        idempotency_key: Option<&str>,
    ) -> Result<Value, CallError> {
        use sha2::Digest;
        let body = request
            .body
            .as_ref()
            .map(|(_, b)| b.as_slice())
            .unwrap_or_default();
        claims.htm = Some(request.method.as_str().to_owned());
        claims.htu = Some(request.url.to_string());
        claims.body_sha256 = Some(base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            sha2::Sha256::digest(body),
        ));
        let token = signer(&claims)
            .ok_or_else(|| CallError::Down("Gatehouse could not sign the identity token".into()))?;
        let mut b = self
            .client
            .request(request.method.clone(), request.url.clone())
            .timeout(self.settings.timeout)
            .header("accept", "application/json, */*;q=0.5");
        for (k, v) in &request.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                b = b.header(k, v);
            }
        }
        for (k, v) in &self.settings.headers {
            if let (Ok(k), Ok(mut v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v.expose()),
            ) {
                v.set_sensitive(true);
                b = b.header(k, v);
            }
        }
        let identity = if self.settings.identity_header == "authorization" {
            format!("Bearer {token}")
        } else {
            token
        };
        if let Ok(mut v) = HeaderValue::from_str(&identity) {
            v.set_sensitive(true);
            b = b.header(self.settings.identity_header.as_str(), v);
        }
        if let Some(key) = idempotency_key
            && let Ok(v) = HeaderValue::from_str(key)
        {
            b = b.header("idempotency-key", v);
        }
        if let Some((content_type, bytes)) = request.body {
            b = b.header("content-type", content_type).body(bytes);
        }
        let mut response = b.send().await.map_err(|e| {
            // reqwest's text names the URL, which holds no secret (credentials go in
            // headers), and the kind of failure.
            CallError::Down(if e.is_timeout() {
                format!("{} did not answer in time", self.settings.base_url)
            } else {
                format!(
                    "could not reach {}: {}",
                    self.settings.base_url,
                    root_cause(&e)
                )
            })
        })?;
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let limit = self.settings.max_response_bytes;
        let mut body = Vec::new();
        let mut cut = false;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CallError::Protocol(format!("the answer broke off: {}", root_cause(&e))))?
        {
            let room = limit - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                cut = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Value::Object(call::result(
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            content_type.as_deref(),
            &body,
            cut,
            limit,
        )))
    }

    /// Calls `check_operation` (no arguments) in the gateway's name.
    async fn check_credentials(&self, claims: IdentityClaims, signer: &Signer) -> Option<String> {
        let id = self.settings.check_operation.as_deref()?;
        let l = self.loaded()?;
        let Some(op) = l
            .operations
            .iter()
            .find(|o| o.tool == id || o.definition.get("name").and_then(Value::as_str) == Some(id))
        else {
            return Some(format!(
                "not checked: check_operation {id:?} is not one of the served operations"
            ));
        };
        let request = match call::build(op, &Map::new(), &self.settings.base_url) {
            Ok(r) => r,
            Err(e) => return Some(format!("not checked: {id} needs arguments ({e})")),
        };
        let mut claims = claims;
        claims.tool = op.tool.clone();
        Some(match self.send(request, claims, signer, None).await {
            Ok(v) if v.get("isError") == Some(&Value::Bool(true)) => {
                let text = v["content"][0]["text"].as_str().unwrap_or_default();
                let status: String = text.chars().take(60).collect();
                if text.starts_with("HTTP 401") || text.starts_with("HTTP 403") {
                    format!("refused: {id} answered {status}")
                } else {
                    format!("unclear: {id} answered {status}")
                }
            }
            Ok(_) => format!("ok ({id} answered 2xx)"),
            Err(e) => format!("not checked: {e}"),
        })
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Reads the description, until it works or the upstream is stopped.
async fn load_loop(
    up: Arc<OpenApiUpstream>,
    service: Arc<dyn Fn() -> IdentityClaims + Send + Sync>,
    signer: Signer,
    events: Events,
    mut stop: watch::Receiver<bool>,
) {
    let name = up.settings.upstream.clone();
    let mut failures = 0u32;
    loop {
        let loaded = tokio::select! {
            l = load(&up.settings, &up.client) => l,
            _ = stopped(&mut stop) => break,
        };
        match loaded {
            Ok(l) => {
                tracing::info!(upstream = %name, openapi = %l.version, tools = l.operations.len(), operations = l.total, skipped = l.skipped.len(), "OpenAPI description loaded");
                if let Ok(mut slot) = up.loaded.write() {
                    *slot = Some(Arc::new(l));
                }
                // Checked before it counts as up, so that `upstream check` (which
                // waits for up) always has the answer.
                if let Some(c) = up.check_credentials(service(), &signer).await {
                    if c.starts_with("ok") {
                        tracing::info!(upstream = %name, credentials = %c, "credentials checked");
                    } else {
                        tracing::warn!(upstream = %name, credentials = %c, "credentials checked");
                    }
                    if let Ok(mut slot) = up.credentials.write() {
                        *slot = Some(c);
                    }
                }
                up.health.send_replace(Health::Up);
                let _ = events.send(Event::Changed(name.clone()));
                stopped(&mut stop).await;
                break;
            }
            Err(why) => {
                failures += 1;
                tracing::error!(upstream = %name, error = %why, "could not load the OpenAPI description; retrying");
                up.health.send_replace(Health::Down(why));
                let _ = events.send(Event::Changed(name.clone()));
                let wait = backoff(up.settings.backoff, failures).min(Duration::from_secs(300));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped(&mut stop) => break,
                }
            }
        }
    }
    up.health.send_replace(Health::Stopped);
}

async fn load(settings: &Settings, client: &reqwest::Client) -> Result<Loaded, String> {
    let bytes = match &settings.spec {
        SpecSource::File(path) => {
            let meta = tokio::fs::metadata(path)
                .await
                .map_err(|e| format!("spec {}: {e}", path.display()))?;
            if meta.len() > MAX_SPEC_BYTES as u64 {
                return Err(format!(
                    "spec {} is over {MAX_SPEC_BYTES} bytes",
                    path.display()
                ));
            }
            tokio::fs::read(path)
                .await
                .map_err(|e| format!("spec {}: {e}", path.display()))?
        }
        SpecSource::Url(url) => fetch(client, url).await?,
    };
    // Parsing 13 MB of JSON takes a moment; it must not hold a runtime thread.
    let include = settings.include.clone();
    let exclude = settings.exclude.clone();
    let mut reserved: HashSet<String> = crate::config::upstream::RESERVED_HEADERS
        .iter()
        .map(|h| (*h).to_owned())
        .collect();
    reserved.insert(settings.identity_header.clone());
    reserved.insert("idempotency-key".into());
    reserved.extend(settings.headers.keys().map(|k| k.to_ascii_lowercase()));
    let api = tokio::task::spawn_blocking(move || {
        let doc = spec::parse_document(&bytes)?;
        spec::build(&doc, &include, &exclude, &reserved)
    })
    .await
    .map_err(|_| "the description could not be read".to_owned())?
    .map_err(|e| format!("spec: {e}"))?;
    let by_tool = api
        .operations
        .iter()
        .enumerate()
        .map(|(i, o)| (o.tool.clone(), i))
        .collect();
    Ok(Loaded {
        version: api.version,
        total: api.total,
        operations: api.operations,
        by_tool,
        skipped: api.skipped,
    })
}

async fn fetch(client: &reqwest::Client, url: &url::Url) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url.clone())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| format!("spec {url}: {}", root_cause(&e)))?;
    if !response.status().is_success() {
        return Err(format!("spec {url}: HTTP {}", response.status()));
    }
    let mut out = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("spec {url}: {}", root_cause(&e)))?
    {
        if out.len() + chunk.len() > MAX_SPEC_BYTES {
            return Err(format!("spec {url} is over {MAX_SPEC_BYTES} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
