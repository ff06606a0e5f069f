//! stdio upstreams: long-lived child processes shared by every caller.
//!
//! Each process of an upstream's pool is a [`Slot`] with its own supervisor task. The
//! supervisor starts the process in its own process group with only the configured
//! environment, initializes it once, and keeps it: when it exits, every call waiting
//! on it fails at once (naming the exit and the last lines of its stderr), and it is
//! started again after a jittered exponential backoff that resets once a process has
//! stayed up for [`STABLE_AFTER`]. [`PARK_AFTER`] failures in a row park the slot with
//! its reason until the configuration is reloaded. On shutdown the whole group is
//! stopped: SIGTERM, then SIGKILL after a grace period.
//!
//! Calls from many callers share one process: each request gets an id of ours, and
//! answers are matched back by it. A caller that goes away (or times out) removes its
//! request and sends `notifications/cancelled`, so the process can stop working on it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

use super::{CallError, Event, Events};

/// A process that stayed up this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Failures in a row (starts that failed or processes that exited before
/// [`STABLE_AFTER`]) that park a slot.
pub const PARK_AFTER: u32 = 5;
/// The longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a process gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// The protocol revision spoken to stdio servers (the newest with `initialize`).
pub const PROTOCOL_VERSION: &str = "2025-11-25";
/// stderr kept per process, for logs and error messages.
const STDERR_LINES: usize = 40;
const STDERR_LINE_BYTES: usize = 2048;

/// How to start the process. Not `Debug`: `env` holds the upstream's secrets.
#[derive(Clone)]
pub struct Spawn {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

/// Where a slot stands.
#[derive(Clone)]
pub enum Health {
    Starting,
    Up(Arc<Conn>),
    /// Waiting to restart, with why it went down.
    Down(String),
    /// Given up on until the configuration is reloaded.
    Parked(String),
    Stopped,
}

impl Health {
    pub fn describe(&self) -> String {
        match self {
            Self::Starting => "starting".into(),
            Self::Up(_) => "up".into(),
            Self::Down(why) => format!("down ({why})"),
            Self::Parked(why) => format!("parked ({why})"),
            Self::Stopped => "stopped".into(),
        }
    }
}

/// The last lines a process wrote to stderr.
#[derive(Default)]
struct Tail(VecDeque<String>);

impl Tail {
    fn push(&mut self, line: String) {
        if self.0.len() == STDERR_LINES {
            self.0.pop_front();
        }
        self.0.push_back(line);
    }

    fn last(&self, n: usize) -> String {
        let skip = self.0.len().saturating_sub(n);
        self.0
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

pub struct Slot {
    /// `name` or `name#i` in a pool.
    label: String,
    /// The configured environment values, blanked out of stderr before it is logged or
    /// quoted (a process that prints its own token must not show it to callers).
    secrets: Vec<String>,
    health: watch::Sender<Health>,
    stderr: Mutex<Tail>,
    pub restarts: AtomicU64,
}

impl Slot {
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    pub fn stderr_tail(&self, lines: usize) -> String {
        self.stderr
            .lock()
            .map(|t| t.last(lines))
            .unwrap_or_default()
    }

    pub fn subscribe(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    fn set(&self, h: Health) {
        self.health.send_replace(h);
    }
}

/// One upstream's pool of processes.
pub struct StdioUpstream {
    pub slots: Vec<Arc<Slot>>,
    next: AtomicUsize,
}

pub struct Settings {
    pub upstream: String,
    pub spawn: Spawn,
    pub pool: usize,
    pub timeout: Duration,
    pub max_line_bytes: usize,
    pub backoff: Duration,
    pub stats: Arc<crate::metrics::UpstreamStats>,
}

impl StdioUpstream {
    /// Starts the pool's supervisors; they run until `stop` turns true.
    pub fn start(settings: Settings, events: Events, stop: watch::Receiver<bool>) -> Self {
        let settings = Arc::new(settings);
        let slots: Vec<Arc<Slot>> = (0..settings.pool)
            .map(|i| {
                let label = if settings.pool == 1 {
                    settings.upstream.clone()
                } else {
                    format!("{}#{i}", settings.upstream)
                };
                Arc::new(Slot {
                    label,
                    secrets: settings
                        .spawn
                        .env
                        .iter()
                        .filter(|(k, v)| k != "PATH" && v.len() >= 4)
                        .map(|(_, v)| v.clone())
                        .collect(),
                    health: watch::channel(Health::Starting).0,
                    stderr: Mutex::default(),
                    restarts: AtomicU64::new(0),
                })
            })
            .collect();
        for slot in &slots {
            tokio::spawn(supervise(
                slot.clone(),
                settings.clone(),
                events.clone(),
                stop.clone(),
            ));
        }
        Self {
            slots,
            next: AtomicUsize::new(0),
        }
    }

    /// A running process, taking turns; else why none is.
    pub fn pick(&self) -> Result<Arc<Conn>, CallError> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Health::Up(conn) = self.slots[(start + i) % n].health() {
                return Ok(conn);
            }
        }
        Err(CallError::Down(self.why_down()))
    }

    pub fn is_parked(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s.health(), Health::Parked(_)))
    }

    /// Resolves once every slot has stopped (at most `limit` each).
    pub async fn stopped(&self, limit: Duration) {
        for slot in &self.slots {
            let mut rx = slot.health.subscribe();
            let _ =
                tokio::time::timeout(limit, rx.wait_for(|h| matches!(h, Health::Stopped))).await;
        }
    }

    pub fn is_up(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s.health(), Health::Up(_)))
    }

    /// The first slot's state (a process that exited says so with its stderr's end).
    pub fn why_down(&self) -> String {
        self.slots[0].health().describe()
    }

    /// Resolves once every slot has come up or failed at least once.
    pub async fn settled(&self) {
        for slot in &self.slots {
            let mut rx = slot.health.subscribe();
            let _ = rx.wait_for(|h| !matches!(h, Health::Starting)).await;
        }
    }

    pub fn restarts(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.restarts.load(Ordering::Relaxed))
            .sum()
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

/// The backoff before restart number `failures` (1-based): doubling from `base`, at
/// most [`MAX_BACKOFF`], with ±20% jitter so that a pool does not restart in step.
pub fn backoff(base: Duration, failures: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = exp.min(MAX_BACKOFF);
    let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0.8..1.2);
    capped.mul_f64(jitter)
}

/// Resolves when `stop` turns true (the watch guard is not held past it).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn supervise(
    slot: Arc<Slot>,
    settings: Arc<Settings>,
    events: Events,
    mut stop: watch::Receiver<bool>,
) {
    let upstream = settings.upstream.clone();
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() {
            break;
        }
        slot.set(Health::Starting);
        let started = Instant::now();
        let why = match run_once(&slot, &settings, &events, &mut stop).await {
            Exit::Stopped => break,
            Exit::Failed(why) => why,
        };
        if started.elapsed() >= STABLE_AFTER {
            failures = 0;
        }
        failures += 1;
        slot.restarts.fetch_add(1, Ordering::Relaxed);
        settings.stats.restarts.fetch_add(1, Ordering::Relaxed);
        let _ = events.send(Event::Changed(upstream.clone()));
        if failures >= PARK_AFTER {
            tracing::error!(upstream = %slot.label, failures, reason = %why, "stdio upstream parked after failing repeatedly; reload the configuration (SIGHUP) to try again");
            settings.stats.parked.store(1, Ordering::Relaxed);
            slot.set(Health::Parked(format!(
                "failed {failures} times in a row; last: {why}"
            )));
            stopped(&mut stop).await;
            break;
        }
        let delay = backoff(settings.backoff, failures);
        tracing::warn!(upstream = %slot.label, reason = %why, retry_in_ms = delay.as_millis() as u64, "stdio upstream is down; restarting");
        slot.set(Health::Down(why));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    slot.set(Health::Stopped);
}

enum Exit {
    Stopped,
    Failed(String),
}

async fn run_once(
    slot: &Arc<Slot>,
    settings: &Settings,
    events: &Events,
    stop: &mut watch::Receiver<bool>,
) -> Exit {
    let spawn = &settings.spawn;
    let mut cmd = tokio::process::Command::new(&spawn.command);
    cmd.args(&spawn.args)
        .env_clear()
        .envs(spawn.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(cwd) = &spawn.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Exit::Failed(format!("cannot start {:?}: {e}", spawn.command)),
    };
    let pid = child.id();
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Exit::Failed("the process's pipes could not be opened".into());
    };
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(1024);
    let conn = Arc::new(Conn {
        upstream: settings.upstream.clone(),
        out: out_tx,
        pending: Mutex::default(),
        next_id: AtomicU64::new(1),
        closed: Mutex::new(None),
    });
    let writer = tokio::spawn(write_stdin(stdin, out_rx));
    let reader = tokio::spawn(read_stdout(
        BufReader::with_capacity(64 * 1024, stdout),
        conn.clone(),
        events.clone(),
        settings.max_line_bytes,
    ));
    let logger = tokio::spawn(read_stderr(BufReader::new(stderr), slot.clone()));

    let init = async {
        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": { "name": "gatehouse", "version": env!("CARGO_PKG_VERSION") },
        });
        let answer = conn.request("initialize", params, None).await?;
        conn.notify("notifications/initialized", json!({})).await;
        Ok::<Value, CallError>(answer)
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(settings.timeout, init) => match r {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("initialize failed: {e}")),
            Err(_) => Some(format!("did not answer initialize within {} s", settings.timeout.as_secs())),
        },
        status = child.wait() => Some(exit_reason(status.ok(), slot)),
        _ = stopped(stop) => {
            stop_group(&mut child, pid).await;
            return Exit::Stopped;
        }
    };
    let why = match outcome {
        Some(why) => {
            stop_group(&mut child, pid).await;
            why
        }
        None => {
            tracing::info!(upstream = %slot.label, pid, "stdio upstream started");
            slot.set(Health::Up(conn.clone()));
            let _ = events.send(Event::Changed(settings.upstream.clone()));
            tokio::select! {
                status = child.wait() => exit_reason(status.ok(), slot),
                _ = stopped(stop) => {
                    conn.close("Gatehouse is shutting down".into());
                    stop_group(&mut child, pid).await;
                    return Exit::Stopped;
                }
            }
        }
    };
    // Whatever the process left running in its group goes with it.
    kill_group(pid);
    // Let the last stderr lines arrive before they are quoted.
    let _ = tokio::time::timeout(Duration::from_millis(200), logger).await;
    let why = {
        let tail = slot.stderr_tail(3);
        if tail.is_empty() {
            why
        } else {
            format!("{why}; its stderr ended with: {}", clip(&tail, 600))
        }
    };
    conn.close(why.clone());
    writer.abort();
    reader.abort();
    Exit::Failed(why)
}

fn exit_reason(status: Option<std::process::ExitStatus>, slot: &Slot) -> String {
    let _ = slot;
    match status {
        Some(s) => match s.code() {
            Some(code) => format!("the process exited with status {code}"),
            None => format!("the process was killed ({s})"),
        },
        None => "the process could not be waited for".into(),
    }
}

/// SIGKILL to what is left of a process group whose leader has exited.
fn kill_group(pid: Option<u32>) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// SIGTERM to the whole process group, SIGKILL after [`STOP_GRACE`].
async fn stop_group(child: &mut tokio::process::Child, pid: Option<u32>) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        let _ = child.start_kill();
        return;
    };
    let group = Pid::from_raw(pid);
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    } else {
        // The leader is gone; anything it left in the group goes too.
        let _ = killpg(group, Signal::SIGKILL);
    }
}

async fn write_stdin(mut stdin: tokio::process::ChildStdin, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(first) = rx.recv().await {
        if stdin.write_all(&first).await.is_err() {
            return;
        }
        // Whatever else is queued goes in the same flush.
        while let Ok(more) = rx.try_recv() {
            if stdin.write_all(&more).await.is_err() {
                return;
            }
        }
        if stdin.flush().await.is_err() {
            return;
        }
    }
}

async fn read_stderr(mut reader: impl AsyncBufRead + Unpin, slot: Arc<Slot>) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line(&mut reader, &mut line, STDERR_LINE_BYTES).await {
            Line::Eof => return,
            Line::Complete | Line::TooLong => {
                let mut text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if text.is_empty() {
                    continue;
                }
                for secret in &slot.secrets {
                    if text.contains(secret.as_str()) {
                        text = text.replace(secret.as_str(), "[redacted]");
                    }
                }
                tracing::info!(upstream = %slot.label, "stderr: {text}");
                if let Ok(mut tail) = slot.stderr.lock() {
                    tail.push(text);
                }
            }
        }
    }
}

enum Line {
    Complete,
    /// Longer than allowed: `buf` holds its first bytes, the rest was skipped.
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line into `buf`, keeping at most `max` bytes of it.
async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
) -> Line {
    let mut too_long = false;
    loop {
        let available = match reader.fill_buf().await {
            Ok([]) => {
                return if buf.is_empty() && !too_long {
                    Line::Eof
                } else if too_long {
                    Line::TooLong
                } else {
                    Line::Complete
                };
            }
            Ok(b) => b,
            Err(_) => return Line::Eof,
        };
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], i + 1),
            None => (available, available.len()),
        };
        let room = max.saturating_sub(buf.len());
        if chunk.len() > room {
            too_long = true;
        }
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let found = done > chunk.len();
        reader.consume(done);
        if found {
            return if too_long {
                Line::TooLong
            } else {
                Line::Complete
            };
        }
    }
}

struct Pending {
    reply: oneshot::Sender<Result<Value, CallError>>,
    progress: Option<mpsc::UnboundedSender<Value>>,
}

/// A running process, as a JSON-RPC peer.
pub struct Conn {
    upstream: String,
    out: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    /// Why the process is gone, once it is.
    closed: Mutex<Option<String>>,
}

/// Removes a request that ends without its answer and tells the process.
struct InFlight<'a> {
    conn: &'a Conn,
    id: u64,
    answered: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let removed = self
            .conn
            .pending
            .lock()
            .map(|mut p| p.remove(&self.id).is_some())
            .unwrap_or(false);
        if removed {
            let note = json!({
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": { "requestId": self.id, "reason": "the caller went away or timed out" },
            });
            let _ = self.conn.out.try_send(line_of(&note));
        }
    }
}

fn line_of(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    b
}

impl Conn {
    /// Sends a request and waits for its answer (the caller bounds the wait). With
    /// `progress`, the request asks for progress and the notifications go there.
    pub async fn request(
        &self,
        method: &str,
        mut params: Value,
        progress: Option<mpsc::UnboundedSender<Value>>,
    ) -> Result<Value, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if progress.is_some()
            && let Some(obj) = params.as_object_mut()
        {
            let meta = obj.entry("_meta").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("progressToken".into(), json!(id));
            }
        }
        let (tx, rx) = oneshot::channel();
        {
            let Ok(mut pending) = self.pending.lock() else {
                return Err(CallError::Down("internal lock poisoned".into()));
            };
            if let Ok(closed) = self.closed.lock()
                && let Some(why) = closed.as_ref()
            {
                return Err(CallError::Down(why.clone()));
            }
            pending.insert(
                id,
                Pending {
                    reply: tx,
                    progress,
                },
            );
        }
        let mut guard = InFlight {
            conn: self,
            id,
            answered: false,
        };
        let msg = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        if self.out.send(line_of(&msg)).await.is_err() {
            return Err(CallError::Down("the process's stdin is closed".into()));
        }
        let answer = rx.await;
        guard.answered = true;
        match answer {
            Ok(r) => r,
            Err(_) => Err(CallError::Down("the process went away".into())),
        }
    }

    pub async fn notify(&self, method: &str, params: Value) {
        let msg = json!({ "jsonrpc": "2.0", "method": method, "params": params });
        let _ = self.out.send(line_of(&msg)).await;
    }

    /// Fails every waiting request with `why`, and any later one.
    fn close(&self, why: String) {
        if let Ok(mut c) = self.closed.lock() {
            *c = Some(why.clone());
        }
        let drained: Vec<Pending> = self
            .pending
            .lock()
            .map(|mut p| p.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        for p in drained {
            let _ = p.reply.send(Err(CallError::Down(why.clone())));
        }
    }

    fn answer(&self, id: u64, result: Result<Value, CallError>) {
        let pending = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
        if let Some(p) = pending {
            let _ = p.reply.send(result);
        }
    }

    fn progress(&self, token: u64, params: Value) {
        if let Ok(p) = self.pending.lock()
            && let Some(tx) = p.get(&token).and_then(|p| p.progress.as_ref())
        {
            let _ = tx.send(params);
        }
    }

    /// One message from the process.
    fn dispatch(&self, msg: Value, events: &Events) {
        let Value::Object(mut m) = msg else { return };
        let id = m.get("id").cloned();
        match (m.remove("method"), id) {
            (None, Some(id)) => {
                let Some(id) = id.as_u64() else { return };
                let result = match (m.remove("result"), m.remove("error")) {
                    (Some(r), _) => Ok(r),
                    (None, Some(e)) => Err(CallError::Rpc {
                        code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                        message: e
                            .get("message")
                            .and_then(Value::as_str)
                            .map(|s| clip(s, 2000))
                            .unwrap_or_default(),
                    }),
                    (None, None) => Err(CallError::Protocol(
                        "an answer with neither result nor error".into(),
                    )),
                };
                self.answer(id, result);
            }
            (Some(Value::String(method)), Some(id)) => {
                // A request from the server. Only ping is answered for now; asking the
                // client (sampling, elicitation, roots) is issue #19.
                let reply = if method == "ping" {
                    json!({ "jsonrpc": "2.0", "id": id, "result": {} })
                } else {
                    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32601, "message": format!("Gatehouse does not relay {method} yet") } })
                };
                let _ = self.out.try_send(line_of(&reply));
            }
            (Some(Value::String(method)), None) => {
                let params = m.remove("params").unwrap_or(Value::Null);
                match method.as_str() {
                    "notifications/progress" => {
                        if let Some(token) = params.get("progressToken").and_then(Value::as_u64) {
                            self.progress(token, params);
                        }
                    }
                    "notifications/tools/list_changed"
                    | "notifications/prompts/list_changed"
                    | "notifications/resources/list_changed" => {
                        let _ = events.send(Event::ListChanged(self.upstream.clone()));
                    }
                    "notifications/message" => {
                        tracing::debug!(upstream = %self.upstream, data = %params, "upstream log message");
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// An answer too large to read: the request it answers, if its id can be found
    /// in the first bytes, fails with a clear error.
    fn oversized(&self, head: &[u8], limit: usize) {
        let text = String::from_utf8_lossy(head);
        let id = text.find("\"id\":").and_then(|i| {
            let rest = text[i + 5..].trim_start();
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        });
        tracing::warn!(upstream = %self.upstream, limit, "an upstream message over gateway.max_response_bytes was dropped");
        if let Some(id) = id {
            self.answer(id, Err(CallError::TooLarge(limit)));
        }
    }
}

async fn read_stdout(
    mut reader: impl AsyncBufRead + Unpin,
    conn: Arc<Conn>,
    events: Events,
    max: usize,
) {
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        match read_line(&mut reader, &mut line, max).await {
            Line::Eof => return,
            Line::TooLong => conn.oversized(&line[..line.len().min(4096)], max),
            Line::Complete => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<Value>(&line) {
                    Ok(msg) => conn.dispatch(msg, &events),
                    Err(_) => {
                        tracing::debug!(upstream = %conn.upstream, "ignored a line on stdout that is not JSON");
                    }
                }
            }
        }
    }
}

/// `tools/list` etc. through every page (see [`super::list_pages`]).
pub async fn list_all(
    conn: &Conn,
    method: &str,
    key: &str,
) -> Result<Vec<Map<String, Value>>, CallError> {
    super::list_pages(&conn.upstream, key, |params| {
        conn.request(method, params, None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_whole_or_cut_at_the_limit() {
        let input: &[u8] = b"short\nabcdefghij\n\nlast";
        let mut r = BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut r, &mut buf, 8).await,
            Line::Complete
        ));
        assert_eq!(buf, b"short");
        buf.clear();
        assert!(matches!(
            read_line(&mut r, &mut buf, 8).await,
            Line::TooLong
        ));
        assert_eq!(buf, b"abcdefgh");
        buf.clear();
        assert!(matches!(
            read_line(&mut r, &mut buf, 8).await,
            Line::Complete
        ));
        assert!(buf.is_empty());
        buf.clear();
        assert!(matches!(
            read_line(&mut r, &mut buf, 8).await,
            Line::Complete
        ));
        assert_eq!(buf, b"last");
        buf.clear();
        assert!(matches!(read_line(&mut r, &mut buf, 8).await, Line::Eof));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let base = Duration::from_millis(500);
        for (n, nominal) in [(1, 500u64), (2, 1000), (3, 2000), (8, 30_000), (40, 30_000)] {
            let d = backoff(base, n).as_millis() as u64;
            assert!(d >= nominal * 8 / 10 && d <= nominal * 12 / 10, "{n}: {d}");
        }
    }
}
