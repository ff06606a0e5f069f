//! HTTP upstreams: Streamable HTTP servers, of any revision.
//!
//! One connection pool per upstream (reqwest keeps connections alive). At start, and
//! whenever the upstream stops answering, a supervisor negotiates the newest revision
//! the upstream speaks: `server/discover` (2026-07-28, stateless), else `initialize`
//! (2025-11-25 down to 2025-03-26), keeping the `Mcp-Session-Id` a stateful upstream
//! hands out and initializing again when it expires. Our own `/mcp` stays stateless:
//! the session is Gatehouse's, shared by every caller. An upstream that refuses both
//! with a 4xx is tried as a 2024-11-05 HTTP+SSE server ([`super::sse`]).
//!
//! Answers may be JSON or an SSE stream (progress first, then the answer); both are
//! read up to `gateway.max_response_bytes`. Every request carries an identity token in
//! the configured header, never anything of the caller's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::{Notify, RwLock, mpsc, watch};

use super::stdio::{backoff, stopped};
use super::{CallError, Event, Events};
use crate::config::Secret;

/// What was agreed with the upstream.
#[derive(Debug, Clone)]
enum Session {
    /// 2026-07-28: every request says its revision; no session.
    Modern(String),
    /// An `initialize` revision, with the session id if the upstream gave one.
    Legacy { version: String, id: Option<String> },
    /// The 2024-11-05 HTTP+SSE transport, at the revision `initialize` agreed.
    Sse {
        link: Arc<super::sse::Link>,
        version: String,
    },
}

#[derive(Clone)]
pub enum Health {
    Starting,
    Up,
    Down(String),
    Stopped,
}

pub struct Settings {
    pub upstream: String,
    pub url: url::Url,
    pub headers: BTreeMap<String, Secret>,
    pub identity_header: String,
    pub timeout: Duration,
    pub max_bytes: usize,
    pub backoff: Duration,
    pub stats: Arc<crate::metrics::UpstreamStats>,
}

pub struct HttpUpstream {
    settings: Settings,
    /// The gateway's own token, for negotiating (a session is shared by every caller,
    /// so it is never opened in one caller's name).
    service: ServiceToken,
    client: reqwest::Client,
    session: RwLock<Option<Session>>,
    health: watch::Sender<Health>,
    /// Wakes the supervisor to negotiate again (the upstream stopped answering).
    lost: Notify,
    next_id: AtomicU64,
    events: Events,
}

/// Signs an identity token for a request that is not a user's call (negotiation,
/// listing): `None` when signing failed.
pub type ServiceToken = Arc<dyn Fn() -> Option<String> + Send + Sync>;

const MODERN: &str = "2026-07-28";
const LEGACY: &str = "2025-11-25";

impl HttpUpstream {
    /// `client` must not follow redirects: one could send the identity token elsewhere.
    pub fn start(
        client: reqwest::Client,
        settings: Settings,
        service: ServiceToken,
        events: Events,
        stop: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let up = Arc::new(Self {
            settings,
            service: service.clone(),
            client,
            session: RwLock::new(None),
            health: watch::channel(Health::Starting).0,
            lost: Notify::new(),
            next_id: AtomicU64::new(1),
            events: events.clone(),
        });
        tokio::spawn(supervise(up.clone(), service, events, stop));
        up
    }

    pub fn is_up(&self) -> bool {
        matches!(*self.health.borrow(), Health::Up)
    }

    pub fn name(&self) -> &str {
        &self.settings.upstream
    }

    /// `up (<revision>[ with a session])`, or why not.
    pub fn status(&self) -> String {
        match &*self.health.borrow() {
            Health::Starting => "starting".into(),
            Health::Up => match self.session.try_read().ok().and_then(|s| s.clone()) {
                Some(s) => format!("up ({})", session_kind(&s)),
                None => "up".into(),
            },
            Health::Down(why) => format!("down ({why})"),
            Health::Stopped => "stopped".into(),
        }
    }

    pub async fn settled(&self) {
        let mut rx = self.health.subscribe();
        let _ = rx.wait_for(|h| !matches!(h, Health::Starting)).await;
    }

    pub async fn stopped(&self, limit: Duration) {
        let mut rx = self.health.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|h| matches!(h, Health::Stopped))).await;
    }

    /// Sends one request and returns its result, negotiating again once if the
    /// upstream's session expired.
    pub async fn request(
        self: &Arc<Self>,
        method: &str,
        params: Value,
        identity: Option<String>,
        progress: Option<mpsc::UnboundedSender<Value>>,
    ) -> Result<Value, CallError> {
        let session = self.session.read().await.clone();
        let Some(session) = session else {
            return Err(CallError::Down(self.status()));
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Before 2026-07-28 a dropped connection is not a cancellation: say it.
        let mut guard = Cancel {
            up: self.clone(),
            session: session.clone(),
            identity: identity.clone(),
            id,
            done: matches!(session, Session::Modern(_)),
        };
        let outcome = self
            .send(
                &session,
                id,
                method,
                params.clone(),
                identity.as_deref(),
                progress.clone(),
            )
            .await;
        guard.done = true;
        match outcome {
            Err(Expired) if matches!(session, Session::Legacy { id: Some(_), .. }) => {
                // The upstream forgot our session: a new one, then the request again.
                let fresh = self.negotiate((self.service)().as_deref()).await?;
                *self.session.write().await = Some(fresh.clone());
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                self.send(&fresh, id, method, params, identity.as_deref(), progress)
                    .await
                    .map_err(Into::into)
            }
            other => other.map_err(Into::into),
        }
    }

    async fn send(
        &self,
        session: &Session,
        id: u64,
        method: &str,
        mut params: Value,
        identity: Option<&str>,
        progress: Option<mpsc::UnboundedSender<Value>>,
    ) -> Result<Value, SendError> {
        let version = match session {
            Session::Modern(v) => v.as_str(),
            Session::Legacy { version, .. } | Session::Sse { version, .. } => version.as_str(),
        };
        if let Some(obj) = params.as_object_mut() {
            let meta = obj.entry("_meta").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                if progress.is_some() {
                    meta.insert("progressToken".into(), json!(id));
                }
                if let Session::Modern(v) = session {
                    meta.insert("io.modelcontextprotocol/protocolVersion".into(), json!(v));
                    meta.insert(
                        "io.modelcontextprotocol/clientCapabilities".into(),
                        json!({}),
                    );
                    meta.insert(
                        "io.modelcontextprotocol/clientInfo".into(),
                        json!({ "name": "gatehouse", "version": env!("CARGO_PKG_VERSION") }),
                    );
                }
            }
        }
        let name = params
            .get("name")
            .or_else(|| params.get("uri"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        if let Session::Sse { link, .. } = session {
            let answer = link
                .request(self.headers(identity)?, id, &body, progress)
                .await
                .map_err(SendError::Call)?;
            return unwrap_answer(&answer);
        }
        let mut headers = self.headers(identity)?;
        insert(&mut headers, "mcp-protocol-version", version);
        if let Session::Modern(_) = session {
            insert(&mut headers, "mcp-method", method);
            if let Some(n) = name.filter(|n| n.is_ascii()) {
                insert(&mut headers, "mcp-name", &n);
            }
        }
        if let Session::Legacy { id: Some(sid), .. } = session {
            insert(&mut headers, "mcp-session-id", sid);
        }
        let res = self
            .client
            .post(self.settings.url.clone())
            .headers(headers)
            .json(&body)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = res.status();
        if status == StatusCode::NOT_FOUND && matches!(session, Session::Legacy { id: Some(_), .. })
        {
            return Err(Expired);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(SendError::Call(CallError::Down(format!(
                "it refused Gatehouse's credentials (HTTP {})",
                status.as_u16()
            ))));
        }
        let is_sse = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !status.is_success() && !is_sse {
            let text = read_limited(res, 2000).await.unwrap_or_default();
            // A JSON-RPC error in a 4xx body is still the upstream's answer.
            if let Ok(msg) = serde_json::from_slice::<Value>(&text)
                && let Some(e) = msg.get("error")
            {
                return Err(SendError::Call(rpc_error(e)));
            }
            return Err(SendError::Call(CallError::Protocol(format!(
                "HTTP {}: {}",
                status.as_u16(),
                clip(&String::from_utf8_lossy(&text), 500)
            ))));
        }
        let answer = if is_sse {
            self.read_stream(res, id, progress).await?
        } else {
            let bytes = read_limited(res, self.settings.max_bytes)
                .await
                .map_err(SendError::Call)?;
            serde_json::from_slice::<Value>(&bytes).map_err(|_| {
                SendError::Call(CallError::Protocol("the answer is not JSON".into()))
            })?
        };
        unwrap_answer(&answer)
    }

    /// The response to request `id` from an SSE stream, passing progress on.
    async fn read_stream(
        &self,
        mut res: reqwest::Response,
        id: u64,
        progress: Option<mpsc::UnboundedSender<Value>>,
    ) -> Result<Value, SendError> {
        let mut buf: Vec<u8> = Vec::new();
        let mut total = 0usize;
        loop {
            let chunk = res
                .chunk()
                .await
                .map_err(|e| SendError::Call(CallError::Down(format!("the stream broke: {e}"))))?;
            let Some(chunk) = chunk else {
                return Err(SendError::Call(CallError::Protocol(
                    "the stream ended without the answer".into(),
                )));
            };
            total += chunk.len();
            if total > self.settings.max_bytes {
                return Err(SendError::Call(CallError::TooLarge(
                    self.settings.max_bytes,
                )));
            }
            buf.extend_from_slice(&chunk);
            // Events end with a blank line; the last, incomplete one stays in `buf`.
            while let Some(end) = find_event_end(&buf) {
                let event: Vec<u8> = buf.drain(..end.1).take(end.0).collect();
                let data: String = String::from_utf8_lossy(&event)
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect::<Vec<_>>()
                    .join("\n");
                let Ok(msg) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                if msg.get("id").and_then(Value::as_u64) == Some(id) && msg.get("method").is_none()
                {
                    return Ok(msg);
                }
                if msg.get("method").and_then(Value::as_str) == Some("notifications/progress")
                    && let (Some(tx), Some(params)) = (&progress, msg.get("params"))
                {
                    let _ = tx.send(params.clone());
                }
            }
        }
    }

    fn headers(&self, identity: Option<&str>) -> Result<HeaderMap, SendError> {
        Ok(build_headers(
            &self.settings.headers,
            &self.settings.identity_header,
            identity,
        ))
    }

    /// A connection-level failure: the supervisor negotiates again.
    fn unreachable(&self, e: &reqwest::Error) -> SendError {
        let why = if e.is_connect() {
            "it cannot be reached".to_owned()
        } else if e.is_timeout() {
            "the connection timed out".to_owned()
        } else {
            "the connection failed".to_owned()
        };
        self.health.send_replace(Health::Down(why.clone()));
        self.lost.notify_one();
        SendError::Call(CallError::Down(why))
    }

    /// The newest revision the upstream speaks, and its session if it keeps one.
    async fn negotiate(&self, identity: Option<&str>) -> Result<Session, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let discover = self
            .send(
                &Session::Modern(MODERN.into()),
                id,
                "server/discover",
                json!({}),
                identity,
                None,
            )
            .await;
        if let Ok(result) = &discover
            && result
                .get("supportedVersions")
                .and_then(Value::as_array)
                .is_some_and(|v| v.iter().any(|x| x == MODERN))
        {
            return Ok(Session::Modern(MODERN.into()));
        }
        if let Err(SendError::Call(CallError::Down(why))) = &discover {
            return Err(CallError::Down(why.clone()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = initialize_request(id);
        let mut headers = self.headers(identity).map_err(Into::<CallError>::into)?;
        insert(&mut headers, "content-type", "application/json");
        let res = self
            .client
            .post(self.settings.url.clone())
            .headers(headers)
            .json(&body)
            .send()
            .await
            .map_err(|e| CallError::from(self.unreachable(&e)))?;
        let status = res.status();
        let session_id = res
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let is_sse = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status.is_client_error() {
            // Before Streamable HTTP, a server took a GET for its event stream.
            return self.open_sse(identity).await.map_err(|e| {
                CallError::Down(format!(
                    "it answered neither server/discover nor initialize (HTTP {}), nor a GET for the 2024-11-05 HTTP+SSE transport ({e})",
                    status.as_u16()
                ))
            });
        }
        if !status.is_success() {
            return Err(CallError::Down(format!(
                "it answered initialize with HTTP {}",
                status.as_u16()
            )));
        }
        let answer = if is_sse {
            self.read_stream(res, id, None)
                .await
                .map_err(CallError::from)?
        } else {
            let bytes = read_limited(res, self.settings.max_bytes).await?;
            serde_json::from_slice::<Value>(&bytes)
                .map_err(|_| CallError::Protocol("initialize: the answer is not JSON".into()))?
        };
        let version = answer["result"]["protocolVersion"]
            .as_str()
            .ok_or_else(|| {
                CallError::Protocol("initialize: no protocolVersion in the answer".into())
            })?
            .to_owned();
        let session = Session::Legacy {
            version,
            id: session_id,
        };
        // `notifications/initialized`: 202, nothing to read.
        let mut headers = self.headers(identity).map_err(Into::<CallError>::into)?;
        if let Session::Legacy { version, id } = &session {
            insert(&mut headers, "mcp-protocol-version", version);
            if let Some(sid) = id {
                insert(&mut headers, "mcp-session-id", sid);
            }
        }
        let _ = self
            .client
            .post(self.settings.url.clone())
            .headers(headers)
            .json(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))
            .send()
            .await;
        Ok(session)
    }

    /// The 2024-11-05 HTTP+SSE transport: the stream, then `initialize` over it.
    async fn open_sse(&self, identity: Option<&str>) -> Result<Session, CallError> {
        let (configured, header, service) = (
            self.settings.headers.clone(),
            self.settings.identity_header.clone(),
            self.service.clone(),
        );
        let link = super::sse::Link::open(super::sse::Opening {
            upstream: &self.settings.upstream,
            client: &self.client,
            url: &self.settings.url,
            service_headers: Arc::new(move || {
                build_headers(&configured, &header, service().as_deref())
            }),
            max_bytes: self.settings.max_bytes,
            events: self.events.clone(),
        })
        .await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let init = initialize_request(id);
        let answer = link
            .request(self.headers(identity)?, id, &init, None)
            .await?;
        let version = answer["result"]["protocolVersion"]
            .as_str()
            .ok_or_else(|| {
                CallError::Protocol("initialize: no protocolVersion in the answer".into())
            })?
            .to_owned();
        link.post(
            self.headers(identity)?,
            &json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
        )
        .await?;
        Ok(Session::Sse { link, version })
    }
}

/// Our `initialize` request, over either transport.
fn initialize_request(id: u64) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": {
            "protocolVersion": LEGACY,
            "capabilities": {},
            "clientInfo": { "name": "gatehouse", "version": env!("CARGO_PKG_VERSION") },
        },
    })
}

fn unwrap_answer(answer: &Value) -> Result<Value, SendError> {
    match (answer.get("result"), answer.get("error")) {
        (Some(r), _) => Ok(r.clone()),
        (None, Some(e)) => Err(SendError::Call(rpc_error(e))),
        _ => Err(SendError::Call(CallError::Protocol(
            "an answer with neither result nor error".into(),
        ))),
    }
}

/// Sends `notifications/cancelled` for a legacy-session request dropped before its
/// answer (the caller went away or timed out).
struct Cancel {
    up: Arc<HttpUpstream>,
    session: Session,
    identity: Option<String>,
    id: u64,
    done: bool,
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Ok(mut headers) = self.up.headers(self.identity.as_deref()) else {
            return;
        };
        let note = json!({
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": { "requestId": self.id, "reason": "the caller went away or timed out" },
        });
        let (version, sid) = match self.session.clone() {
            Session::Modern(_) => return,
            Session::Sse { link, .. } => {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), link.post(headers, &note))
                        .await;
                });
                return;
            }
            Session::Legacy { version, id } => (version, id),
        };
        insert(&mut headers, "mcp-protocol-version", &version);
        if let Some(sid) = &sid {
            insert(&mut headers, "mcp-session-id", sid);
        }
        let client = self.up.client.clone();
        let url = self.up.settings.url.clone();
        tokio::spawn(async move {
            let send = client.post(url).headers(headers).json(&note).send();
            let _ = tokio::time::timeout(Duration::from_secs(5), send).await;
        });
    }
}

/// The configured headers and the identity token, for every request.
fn build_headers(
    configured: &BTreeMap<String, Secret>,
    identity_header: &str,
    identity: Option<&str>,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "accept",
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    for (k, v) in configured {
        if let (Ok(name), Ok(mut value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v.expose()),
        ) {
            value.set_sensitive(true);
            h.insert(name, value);
        }
    }
    if let Some(token) = identity {
        let value = if identity_header == "authorization" {
            format!("Bearer {token}")
        } else {
            token.to_owned()
        };
        if let (Ok(name), Ok(mut value)) = (
            HeaderName::from_bytes(identity_header.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            value.set_sensitive(true);
            h.insert(name, value);
        }
    }
    h
}

fn insert(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// `(length of the event, length including its terminating blank line)`.
pub(super) fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

async fn read_limited(mut res: reqwest::Response, max: usize) -> Result<Vec<u8>, CallError> {
    let mut out = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| CallError::Down(format!("the answer broke off: {e}")))?
    {
        if out.len() + chunk.len() > max {
            return Err(CallError::TooLarge(max));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn rpc_error(e: &Value) -> CallError {
    CallError::Rpc {
        code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
        message: clip(
            e.get("message").and_then(Value::as_str).unwrap_or_default(),
            2000,
        ),
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

enum SendError {
    /// The upstream's session is gone (404 to a request that carried it).
    Expired,
    Call(CallError),
}
use SendError::Expired;

impl From<SendError> for CallError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Expired => CallError::Down("the upstream's session expired".into()),
            SendError::Call(c) => c,
        }
    }
}

async fn supervise(
    up: Arc<HttpUpstream>,
    service: ServiceToken,
    events: Events,
    mut stop: watch::Receiver<bool>,
) {
    let name = up.settings.upstream.clone();
    let mut failures: u32 = 0;
    loop {
        let token = service();
        let outcome = tokio::select! {
            r = tokio::time::timeout(up.settings.timeout, up.negotiate(token.as_deref())) => {
                r.unwrap_or_else(|_| Err(CallError::Timeout(up.settings.timeout.as_secs())))
            }
            _ = stopped(&mut stop) => break,
        };
        match outcome {
            Ok(session) => {
                failures = 0;
                tracing::info!(upstream = %name, session = ?session_kind(&session), "http upstream connected");
                let stream = match &session {
                    Session::Sse { link, .. } => Some(link.clone()),
                    _ => None,
                };
                *up.session.write().await = Some(session);
                up.health.send_replace(Health::Up);
                up.settings.stats.up.store(1, Ordering::Relaxed);
                let _ = events.send(Event::Changed(name.clone()));
                // A wake-up left over from a failure during negotiation is not a loss:
                // only one that finds the upstream marked down is.
                loop {
                    tokio::select! {
                        _ = up.lost.notified() => {}
                        why = stream_closed(&stream) => {
                            up.health.send_replace(Health::Down(why));
                        }
                        _ = stopped(&mut stop) => break,
                    }
                    if !up.is_up() || *stop.borrow() {
                        break;
                    }
                }
                if *stop.borrow() {
                    break;
                }
                *up.session.write().await = None;
                up.settings.stats.restarts.fetch_add(1, Ordering::Relaxed);
                let _ = events.send(Event::Changed(name.clone()));
            }
            Err(e) => {
                failures += 1;
                let why = e.to_string();
                let delay = backoff(up.settings.backoff, failures);
                tracing::warn!(upstream = %name, reason = %why, retry_in_ms = delay.as_millis() as u64, "http upstream is down; trying again");
                up.health.send_replace(Health::Down(why));
                let _ = events.send(Event::Changed(name.clone()));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut stop) => break,
                }
            }
        }
    }
    // Drops an HTTP+SSE stream, which ends its reader.
    *up.session.write().await = None;
    up.health.send_replace(Health::Stopped);
}

/// Resolves when an HTTP+SSE session's stream is gone; never for other sessions.
async fn stream_closed(stream: &Option<Arc<super::sse::Link>>) -> String {
    match stream {
        Some(link) => link.closed().await,
        None => std::future::pending().await,
    }
}

fn session_kind(s: &Session) -> String {
    match s {
        Session::Modern(v) => v.clone(),
        Session::Sse { version, .. } => format!("{version} over HTTP+SSE"),
        Session::Legacy { version, id } => {
            format!(
                "{version}{}",
                if id.is_some() { " with a session" } else { "" }
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_at_a_blank_line_of_either_kind() {
        assert_eq!(find_event_end(b"data: 1\n\ndata: 2"), Some((7, 9)));
        assert_eq!(find_event_end(b"data: 1\r\n\r\n"), Some((7, 11)));
        assert_eq!(find_event_end(b"data: 1\n"), None);
    }
}
