//! Upstreams that offer only the 2024-11-05 HTTP+SSE transport: a GET opens one
//! long-lived event stream whose first event names the endpoint to POST messages to;
//! every answer comes back on that stream. One stream per upstream, shared by every
//! caller: requests carry Gatehouse's own ids and answers are matched back, as with a
//! stdio process. The stream is opened in the gateway's name; each POST carries the
//! caller's identity token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use super::{CallError, Event, Events};

/// The revision this transport belongs to.
pub const VERSION: &str = "2024-11-05";

pub type ServiceHeaders = Arc<dyn Fn() -> HeaderMap + Send + Sync>;

struct Pending {
    answer: oneshot::Sender<Value>,
    progress: Option<mpsc::UnboundedSender<Value>>,
}

/// An open stream and the endpoint that goes with it.
pub struct Link {
    endpoint: url::Url,
    client: reqwest::Client,
    pending: Arc<Mutex<HashMap<u64, Pending>>>,
    /// Set, with the reason, once the stream is gone.
    closed: watch::Receiver<Option<String>>,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What the stream reader needs besides the stream.
pub struct Opening<'a> {
    pub upstream: &'a str,
    pub client: &'a reqwest::Client,
    pub url: &'a url::Url,
    /// The configured headers and a fresh identity token of the gateway's own, for the
    /// GET and for answering the upstream's requests.
    pub service_headers: ServiceHeaders,
    pub max_bytes: usize,
    pub events: Events,
}

impl Link {
    /// Opens the stream and waits for its `endpoint` event (the caller bounds the wait).
    pub async fn open(o: Opening<'_>) -> Result<Arc<Self>, CallError> {
        let mut headers = (o.service_headers)();
        headers.insert(
            "accept",
            reqwest::header::HeaderValue::from_static("text/event-stream"),
        );
        let res = o
            .client
            .get(o.url.clone())
            .headers(headers)
            .send()
            .await
            .map_err(|e| CallError::Down(format!("GET for HTTP+SSE failed: {}", kind(&e))))?;
        let status = res.status();
        let is_sse = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(CallError::Down(format!(
                "it refused Gatehouse's credentials (HTTP {})",
                status.as_u16()
            )));
        }
        if !status.is_success() || !is_sse {
            return Err(CallError::Down(format!(
                "a GET for the HTTP+SSE transport got HTTP {}{}",
                status.as_u16(),
                if is_sse { "" } else { ", not an event stream" }
            )));
        }
        let mut stream = EventStream::new(res, o.max_bytes);
        let endpoint = loop {
            match stream.next().await? {
                Some((name, data)) if name == "endpoint" => break data,
                Some(_) => continue,
                None => {
                    return Err(CallError::Protocol(
                        "the event stream ended before naming its endpoint".into(),
                    ));
                }
            }
        };
        let endpoint = same_origin(o.url, endpoint.trim()).map_err(CallError::Protocol)?;
        let pending: Arc<Mutex<HashMap<u64, Pending>>> = Arc::default();
        let (closed_tx, closed) = watch::channel(None);
        let reader = tokio::spawn(read(
            stream,
            Reader {
                upstream: o.upstream.to_owned(),
                pending: pending.clone(),
                client: o.client.clone(),
                endpoint: endpoint.clone(),
                service_headers: o.service_headers.clone(),
                events: o.events,
                closed: closed_tx,
            },
        ));
        Ok(Arc::new(Self {
            endpoint,
            client: o.client.clone(),
            pending,
            closed,
            reader,
        }))
    }

    /// Resolves with the reason once the stream is gone.
    pub async fn closed(&self) -> String {
        let mut rx = self.closed.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the event stream closed".into(),
        }
    }

    pub fn endpoint(&self) -> &url::Url {
        &self.endpoint
    }

    /// POSTs request `id` and waits for its answer on the stream.
    pub async fn request(
        &self,
        headers: HeaderMap,
        id: u64,
        body: &Value,
        progress: Option<mpsc::UnboundedSender<Value>>,
    ) -> Result<Value, CallError> {
        if let Some(why) = self.closed.borrow().clone() {
            return Err(CallError::Down(why));
        }
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(
                id,
                Pending {
                    answer: tx,
                    progress,
                },
            );
        }
        // Forgets the request however this ends (answered, failed, dropped).
        let _forget = Forget(&self.pending, id);
        self.post(headers, body).await?;
        rx.await.map_err(|_| {
            CallError::Down(
                self.closed
                    .borrow()
                    .clone()
                    .unwrap_or_else(|| "the event stream closed".into()),
            )
        })
    }

    /// POSTs one message (a notification, or an answer to the upstream's request).
    pub async fn post(&self, headers: HeaderMap, body: &Value) -> Result<(), CallError> {
        let res = self
            .client
            .post(self.endpoint.clone())
            .headers(headers)
            .json(body)
            .send()
            .await
            .map_err(|e| {
                CallError::Down(format!("posting to its endpoint failed: {}", kind(&e)))
            })?;
        let status = res.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(CallError::Down(format!(
                "it refused Gatehouse's credentials (HTTP {})",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            return Err(CallError::Protocol(format!(
                "its endpoint answered HTTP {}",
                status.as_u16()
            )));
        }
        Ok(())
    }
}

struct Forget<'a>(&'a Mutex<HashMap<u64, Pending>>, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.0.lock() {
            p.remove(&self.1);
        }
    }
}

fn kind(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "it cannot be reached"
    } else if e.is_timeout() {
        "the connection timed out"
    } else {
        "the connection failed"
    }
}

/// The endpoint the stream named, which must be on the stream's own origin: anything
/// else could collect the identity tokens and the configured credentials.
fn same_origin(base: &url::Url, given: &str) -> Result<url::Url, String> {
    let endpoint = base
        .join(given)
        .map_err(|_| format!("its endpoint {given:?} is not a URL"))?;
    if endpoint.origin() != base.origin() {
        return Err(format!(
            "its endpoint {given:?} is on another origin than {}",
            base.origin().ascii_serialization()
        ));
    }
    Ok(endpoint)
}

/// Server-sent events off a response, each at most `max` bytes.
struct EventStream {
    res: reqwest::Response,
    buf: Vec<u8>,
    max: usize,
}

impl EventStream {
    fn new(res: reqwest::Response, max: usize) -> Self {
        Self {
            res,
            buf: Vec::new(),
            max,
        }
    }

    /// The next event's name (`message` when unnamed) and data; `None` at the end.
    async fn next(&mut self) -> Result<Option<(String, String)>, CallError> {
        loop {
            if let Some((len, whole)) = super::http::find_event_end(&self.buf) {
                let event: Vec<u8> = self.buf.drain(..whole).take(len).collect();
                let text = String::from_utf8_lossy(&event);
                let mut name = "message".to_owned();
                let mut data = Vec::new();
                for line in text.lines() {
                    if let Some(n) = line.strip_prefix("event:") {
                        name = n.trim().to_owned();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push(d.strip_prefix(' ').unwrap_or(d));
                    }
                }
                if data.is_empty() {
                    continue; // a comment or keep-alive
                }
                return Ok(Some((name, data.join("\n"))));
            }
            if self.buf.len() > self.max {
                return Err(CallError::TooLarge(self.max));
            }
            match self.res.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(_) => return Err(CallError::Down("the event stream broke".into())),
            }
        }
    }
}

struct Reader {
    upstream: String,
    pending: Arc<Mutex<HashMap<u64, Pending>>>,
    client: reqwest::Client,
    endpoint: url::Url,
    service_headers: ServiceHeaders,
    events: Events,
    closed: watch::Sender<Option<String>>,
}

/// Delivers what the stream carries until it ends, then fails every waiting request.
async fn read(mut stream: EventStream, r: Reader) {
    let why = loop {
        let msg = match stream.next().await {
            Ok(Some((name, data))) if name == "message" => {
                match serde_json::from_str::<Value>(&data) {
                    Ok(m) => m,
                    Err(_) => continue,
                }
            }
            Ok(Some(_)) => continue,
            Ok(None) => break "the event stream closed".to_owned(),
            Err(CallError::TooLarge(n)) => {
                break format!("an event was over {n} bytes (gateway.max_response_bytes)");
            }
            Err(e) => break e.to_string(),
        };
        let method = msg.get("method").and_then(Value::as_str);
        match (method, msg.get("id").and_then(Value::as_u64)) {
            (None, Some(id)) => {
                let waiting = r.pending.lock().ok().and_then(|mut p| p.remove(&id));
                if let Some(w) = waiting {
                    let _ = w.answer.send(msg);
                }
            }
            (Some("notifications/progress"), _) => {
                let token = msg["params"]["progressToken"].as_u64();
                let tx = token.and_then(|t| {
                    r.pending
                        .lock()
                        .ok()
                        .and_then(|p| p.get(&t).and_then(|w| w.progress.clone()))
                });
                if let Some(tx) = tx {
                    let _ = tx.send(msg["params"].clone());
                }
            }
            (Some(m), None) if m.ends_with("/list_changed") => {
                let _ = r.events.send(Event::ListChanged(r.upstream.clone()));
            }
            (Some(m), _) if msg.get("id").is_some() => {
                // The upstream asks something of us: a ping is answered; relaying
                // sampling, elicitation and roots to the caller is issue #19.
                let answer = if m == "ping" {
                    json!({ "jsonrpc": "2.0", "id": msg["id"], "result": {} })
                } else {
                    json!({ "jsonrpc": "2.0", "id": msg["id"], "error": { "code": -32601, "message": "Gatehouse does not relay this request" } })
                };
                let post = r
                    .client
                    .post(r.endpoint.clone())
                    .headers((r.service_headers)())
                    .json(&answer)
                    .send();
                let _ = tokio::time::timeout(Duration::from_secs(5), post).await;
            }
            _ => {}
        }
    };
    tracing::warn!(upstream = %r.upstream, reason = %why, "HTTP+SSE upstream stream ended");
    r.closed.send_replace(Some(why));
    // Dropping the senders fails every waiting request at once.
    if let Ok(mut p) = r.pending.lock() {
        p.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_must_be_on_the_streams_origin() {
        let base = url::Url::parse("http://127.0.0.1:3001/sse").unwrap();
        assert_eq!(
            same_origin(&base, "/message?sessionId=abc")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:3001/message?sessionId=abc"
        );
        assert_eq!(
            same_origin(&base, "http://127.0.0.1:3001/m")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:3001/m"
        );
        for hostile in [
            "https://attacker.example/collect",
            "//attacker.example/m",
            "http://127.0.0.1:3002/m",
            "https://127.0.0.1:3001/m",
        ] {
            assert!(same_origin(&base, hostile).is_err(), "{hostile}");
        }
    }
}
