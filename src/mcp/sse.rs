//! The legacy HTTP+SSE transport (MCP 2024-11-05), a side door for clients and pasted
//! URLs that still use it. `GET <path>` with a token opens an event stream whose first
//! event (`endpoint`) names `<path>/messages?sessionId=…`; each message POSTed there
//! is answered `202 Accepted` and handled exactly as `POST /mcp` would handle it (the
//! same guard, authentication, scopes, limits, metering and audit), and its response
//! travels down the stream. A `POST <path>` is `POST /mcp` itself, for clients that try
//! Streamable HTTP first on an `/sse` URL.
//!
//! Sessions hold no protocol state: the session id is a random value plus a MAC over it
//! and the caller's identity, so any instance can check a POST's session without a
//! lookup. The response is delivered in process when this instance holds the stream,
//! and otherwise through PostgreSQL (a row plus `NOTIFY`, see `storage::relay`) to the
//! instance that does; SQLite runs one process, which holds every stream.
//!
//! A stream closes when its token is revoked or expires (checked twice a second against
//! the token cache, which follows revocations within a second), when no message used
//! it for `mcp.sse_idle_timeout_secs`, and on shutdown. Streams are bounded per token
//! and per instance.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::auth::{Principal, authenticate};
use super::rpc::RpcError;
use super::server;
use crate::crypto::random;
use crate::http::TakeHeaders;
use crate::limits::ClientAddr;
use crate::state::AppState;

/// A comment line this often keeps proxies from closing a quiet stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a stream re-checks its token (revocation shows within a second).
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// Responses waiting for a stream that does not read; past this, POSTs get 503.
const QUEUE: usize = 64;
/// The largest response relayed (tool results are cut at 1 MB before this).
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// Relayed messages no instance claimed within this are dropped.
const RELAY_TTL_SECS: i64 = 60;
/// The revision a message without `MCP-Protocol-Version` speaks: the header did not
/// exist in 2024-11-05, the revision this transport belongs to.
const DEFAULT_VERSION: &str = "2024-11-05";
const PURPOSE: &str = "sse-session";

/// The streams this instance holds.
pub struct Sessions {
    open: Mutex<HashMap<String, Open>>,
    closing: watch::Sender<bool>,
    /// Set by the first stream: only then does the relay take a database connection
    /// to listen on.
    used: watch::Sender<bool>,
}

struct Open {
    tx: mpsc::Sender<String>,
    /// The credential's digest: the per-token bound counts these.
    credential: String,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            open: Mutex::default(),
            closing: watch::channel(false).0,
            used: watch::channel(false).0,
        }
    }
}

/// Why a stream could not be opened.
enum Refused {
    PerToken(usize),
    Full,
}

/// Why a message could not be handed to a local stream.
enum NotSent {
    /// No stream here by that id; the message comes back for the relay.
    NotHere(String),
    /// The stream does not read.
    Full,
}

impl Sessions {
    fn open(
        &self,
        state: &AppState,
        id: &str,
        credential: &str,
        tx: mpsc::Sender<String>,
    ) -> Result<(), Refused> {
        let cfg = &state.config.mcp;
        let Ok(mut open) = self.open.lock() else {
            return Err(Refused::Full);
        };
        if open.len() >= cfg.sse_max_sessions {
            return Err(Refused::Full);
        }
        if open.values().filter(|o| o.credential == credential).count()
            >= cfg.sse_sessions_per_token
        {
            return Err(Refused::PerToken(cfg.sse_sessions_per_token));
        }
        open.insert(
            id.to_owned(),
            Open {
                tx,
                credential: credential.to_owned(),
            },
        );
        self.used.send_if_modified(|u| !std::mem::replace(u, true));
        Ok(())
    }

    fn close(&self, id: &str) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(id);
        }
    }

    fn send(&self, id: &str, body: String) -> Result<(), NotSent> {
        let tx = match self.open.lock() {
            Ok(open) => open.get(id).map(|o| o.tx.clone()),
            Err(_) => None,
        };
        let Some(tx) = tx else {
            return Err(NotSent::NotHere(body));
        };
        tx.try_send(body).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NotSent::Full,
            mpsc::error::TrySendError::Closed(b) => NotSent::NotHere(b),
        })
    }

    fn ids(&self) -> Vec<String> {
        self.open
            .lock()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn holds(&self, id: &str) -> bool {
        self.open.lock().is_ok_and(|o| o.contains_key(id))
    }

    /// How many streams are open here.
    pub fn count(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }

    /// Ends every stream (on shutdown, so that draining does not wait on them).
    pub fn close_all(&self) {
        let _ = self.closing.send(true);
    }
}

/// What a session is bound to: a POST must come from the same caller (the same user of
/// the same organization, through the same client), though perhaps with a refreshed
/// token.
fn binding(p: &Principal) -> String {
    format!(
        "{}|{}|{}|{}",
        p.kind.as_str(),
        p.org_id,
        p.user_id,
        p.client_id.as_deref().unwrap_or("")
    )
}

/// The start of a session id, enough to follow one in the logs.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn error(status: StatusCode, message: &str) -> Response {
    RpcError::new(status, -32000, message).into_response(Value::Null)
}

/// `GET <path>`: opens a stream.
pub async fn open_stream(
    State(state): State<AppState>,
    uri: Uri,
    TakeHeaders(headers): TakeHeaders,
) -> Response {
    let principal = match server::caller(&state, &headers).await {
        Ok(p) => p,
        Err(res) => return res,
    };
    let random_part = random::base62(24);
    let bound = binding(&principal);
    let id = format!(
        "{random_part}.{}",
        state.mac.sign(PURPOSE, &[&random_part, &bound])
    );
    let credential = if principal.credential.is_empty() {
        bound.clone()
    } else {
        principal.credential.clone()
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    match state.sse.open(&state, &id, &credential, tx) {
        Ok(()) => {}
        Err(Refused::PerToken(n)) => {
            let mut res = error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "this token already holds {n} open SSE streams (mcp.sse_sessions_per_token); close one first"
                ),
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return res;
        }
        Err(Refused::Full) => {
            let mut res = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this server holds as many SSE streams as it may (mcp.sse_max_sessions); use /mcp, or try again later",
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return res;
        }
    }
    tracing::info!(
        session = %short(&id),
        user = %principal.user_id,
        client = %principal.client_id.as_deref().unwrap_or("-"),
        "legacy SSE stream opened"
    );
    let endpoint = format!(
        "{}{}/messages?sessionId={id}",
        state.config.server.public_url,
        uri.path()
    );
    // Only the credential is kept, to re-check it.
    let mut auth = HeaderMap::new();
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        auth.insert(header::AUTHORIZATION, v.clone());
    }
    let mut keep_alive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = Stream {
        closing: state.sse.closing.subscribe(),
        guard: Guard {
            state: state.clone(),
            id,
            reason: "the client went away",
        },
        rx,
        auth,
        bound,
        first: Some(format!("event: endpoint\ndata: {endpoint}\n\n")),
        keep_alive,
        check,
        last_active: Instant::now(),
    };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let chunk = s.next().await?;
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), s))
    });
    let mut res = Body::from_stream(body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tells nginx-style proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// Removes the session when its stream ends, however it ends.
struct Guard {
    state: AppState,
    id: String,
    reason: &'static str,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.state.sse.close(&self.id);
        tracing::info!(session = %short(&self.id), reason = self.reason, "legacy SSE stream closed");
    }
}

struct Stream {
    closing: watch::Receiver<bool>,
    guard: Guard,
    rx: mpsc::Receiver<String>,
    auth: HeaderMap,
    bound: String,
    first: Option<String>,
    keep_alive: tokio::time::Interval,
    check: tokio::time::Interval,
    last_active: Instant,
}

impl Stream {
    /// The next bytes of the stream, or `None` when it must close.
    async fn next(&mut self) -> Option<String> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            tokio::select! {
                biased;
                _ = self.closing.wait_for(|c| *c) => {
                    self.guard.reason = "the server is shutting down";
                    return None;
                }
                m = self.rx.recv() => {
                    self.last_active = Instant::now();
                    return m.map(|body| format!("event: message\ndata: {body}\n\n"));
                }
                _ = self.keep_alive.tick() => return Some(": keep-alive\n\n".to_owned()),
                _ = self.check.tick() => {}
            }
            if let Some(reason) = self.ended().await {
                self.guard.reason = reason;
                return None;
            }
        }
    }

    /// Why the stream must end now, if it must.
    async fn ended(&self) -> Option<&'static str> {
        let state = &self.guard.state;
        if self.last_active.elapsed() >= state.config.mcp.sse_idle_timeout {
            return Some("idle for mcp.sse_idle_timeout_secs");
        }
        if self.auth.is_empty() {
            // Anonymous (the operator allowed it): nothing to revoke.
            return None;
        }
        match authenticate(state, &self.auth).await {
            Ok(Some(p)) if binding(&p) == self.bound => None,
            // The database is unreachable: the token is not known to be revoked.
            Err(super::auth::BearerError::Unavailable) => None,
            _ => Some("its token was revoked or expired"),
        }
    }
}

/// `POST <path>/messages?sessionId=…`: one message of a session.
pub async fn post_message(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    uri: Uri,
    TakeHeaders(mut headers): TakeHeaders,
    body: Bytes,
) -> Response {
    let id = uri
        .query()
        .into_iter()
        .flat_map(|q| url::form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "sessionId")
        .map(|(_, v)| v.into_owned());
    let Some(id) = id else {
        return error(
            StatusCode::BAD_REQUEST,
            "the sessionId query parameter is required: POST to the endpoint the stream's first event names",
        );
    };
    let principal = match server::caller(&state, &headers).await {
        Ok(p) => p,
        Err(res) => return res,
    };
    let genuine = id.split_once('.').is_some_and(|(random_part, tag)| {
        state
            .mac
            .verify(PURPOSE, &[random_part, &binding(&principal)], tag)
    });
    if !genuine {
        // Someone else's session looks the same as no session.
        return unknown_session();
    }
    if !headers.contains_key("mcp-protocol-version") {
        headers.insert(
            "mcp-protocol-version",
            HeaderValue::from_static(DEFAULT_VERSION),
        );
    }
    // The answer goes down the stream in one piece, so it must not be a stream itself.
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    let res = server::post_mcp(
        State(state.clone()),
        ClientAddr(addr),
        TakeHeaders(headers),
        body,
    )
    .await;
    match res.status() {
        // The POST itself is refused (a token lacking a scope, a rate limit, a body too
        // large): the client sees it on the POST, challenge and all.
        StatusCode::UNAUTHORIZED
        | StatusCode::FORBIDDEN
        | StatusCode::TOO_MANY_REQUESTS
        | StatusCode::PAYLOAD_TOO_LARGE => return res,
        StatusCode::ACCEPTED => return accepted(),
        _ => {}
    }
    let Ok(bytes) = axum::body::to_bytes(res.into_body(), MAX_MESSAGE_BYTES).await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the response could not be read",
        );
    };
    if bytes.is_empty() {
        return accepted();
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    match state.sse.send(&id, text) {
        Ok(()) => accepted(),
        Err(NotSent::Full) => {
            let mut res = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the stream is not reading its messages; try again",
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            res
        }
        Err(NotSent::NotHere(text)) => {
            match state.store.relay_post(&id, &text, state.clock.now()).await {
                Ok(true) => accepted(),
                Ok(false) => unknown_session(),
                Err(e) => {
                    tracing::warn!(error = %e, session = %short(&id), "could not relay an SSE message");
                    error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the message could not be relayed to its stream; try again",
                    )
                }
            }
        }
    }
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, "Accepted").into_response()
}

fn unknown_session() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "unknown or closed session: open a new stream with GET on the SSE path",
    )
}

/// Delivers the messages other instances relay to the streams this one holds
/// (PostgreSQL, from the first stream opened here on; returns at once on SQLite), and
/// drops relayed messages nobody claimed.
pub async fn follow_relay(state: AppState) {
    if !matches!(state.store, crate::storage::Store::Postgres(_)) {
        return;
    }
    // A listener holds a pooled connection for good: none until a stream needs it.
    let _ = state.sse.used.subscribe().wait_for(|u| *u).await;
    let mut failing = false;
    loop {
        let mut listener = match state.store.relay_listener().await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "SSE relay cannot listen; retrying every second");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if std::mem::take(&mut failing) {
            tracing::info!("SSE relay listening again");
        }
        sweep(&state).await;
        let mut expire = tokio::time::interval(Duration::from_secs(30));
        expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = listener.next() => match n {
                    Ok(Some((row, session))) => {
                        if state.sse.holds(&session) {
                            match state.store.relay_take(row).await {
                                Ok(Some(body)) => hand_over(&state, &session, body),
                                Ok(None) => {}
                                Err(e) => tracing::warn!(error = %e, "could not take a relayed SSE message"),
                            }
                        }
                    }
                    // Reconnected: what was sent meanwhile waits in the table.
                    Ok(None) => sweep(&state).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "SSE relay lost its connection; reconnecting");
                        failing = true;
                        break;
                    }
                },
                _ = expire.tick() => {
                    let before = state.clock.now() - RELAY_TTL_SECS;
                    if let Err(e) = state.store.relay_expire(before).await {
                        tracing::debug!(error = %e, "could not expire relayed SSE messages");
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn sweep(state: &AppState) {
    match state.store.relay_take_for(&state.sse.ids()).await {
        Ok(waiting) => {
            for (session, body) in waiting {
                hand_over(state, &session, body);
            }
        }
        Err(e) => tracing::debug!(error = %e, "could not sweep relayed SSE messages"),
    }
}

fn hand_over(state: &AppState, session: &str, body: String) {
    if state.sse.send(session, body).is_err() {
        tracing::warn!(session = %short(session), "a relayed SSE message was dropped: its stream closed or does not read");
    }
}
