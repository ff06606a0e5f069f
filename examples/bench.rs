//! The load benchmark: starts release builds of Gatehouse (SQLite and PostgreSQL) and of
//! the bare axum baseline (`examples/bench_baseline.rs`) on loopback, drives each with
//! wrk, and prints one table. Every ratio is taken against a baseline run measured in
//! the same invocation, next to it in time, because this machine is shared and noisy.
//!
//! Run it through `scripts/bench`, which builds everything and installs wrk.
//!
//! ```text
//! bench [--duration SECS] [--connections N] [--postgres URL] [--skip-postgres] [--skip-sqlite]
//!       [--skip-gateway] [--gateway-only] [--markdown FILE]
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse::clock::{Clock, SystemClock};
use gatehouse::crypto::jwt::{self, AccessClaims};
use gatehouse::crypto::keys::KeySet;
use gatehouse::crypto::{PlainToken, TokenKind};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const CALL: &str =
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
const ECHO: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}"#;
const PROTOCOL: &str = "2025-11-25";
const VERIFIER: &str = "bench-verifier-bench-verifier-bench-verifier-0123456789";
const REDIRECT: &str = "https://claude.ai/api/mcp/auth_callback";
const THREADS: usize = 2;

/// Shared by every wrk script: one machine-readable line at the end.
const DONE_LUA: &str = r#"
function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d sockerr=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"#;

/// The same request every time (body and token from the environment).
const FIXED_LUA: &str = r#"
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = os.getenv("BENCH_PROTOCOL")
local token = os.getenv("BENCH_TOKEN")
if token ~= nil and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
local session = os.getenv("BENCH_SESSION")
if session ~= nil and session ~= "" then
  wrk.headers["Mcp-Session-Id"] = session
end
"#;

/// Each request takes the next line of a file; thread `i` of `n` takes lines i, i+n, ...
/// `BENCH_MODE=cycle` goes round (tokens); `once` stops the thread at the end (grants).
const POOL_LUA: &str = r#"
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  local n = tonumber(os.getenv("BENCH_THREADS"))
  lines = {}
  local i = 0
  for line in io.lines(os.getenv("BENCH_POOL")) do
    if i % n == id then table.insert(lines, line) end
    i = i + 1
  end
  pos = 0
  mode = os.getenv("BENCH_MODE")
  path = os.getenv("BENCH_PATH")
  body = os.getenv("BENCH_BODY")
end
function request()
  pos = pos + 1
  if pos > #lines then
    if mode == "once" then
      exhausted = true
      wrk.thread:stop()
      pos = #lines
    else
      pos = 1
    end
  end
  if mode == "once" then
    return wrk.format("POST", path, {["Content-Type"] = "application/x-www-form-urlencoded"}, lines[pos])
  end
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json",
    ["Accept"] = "application/json, text/event-stream",
    ["MCP-Protocol-Version"] = os.getenv("BENCH_PROTOCOL"),
    ["Authorization"] = "Bearer " .. lines[pos],
  }, body)
end
"#;

struct Opts {
    duration: u64,
    connections: usize,
    postgres: Option<String>,
    sqlite: bool,
    gateway: bool,
    markdown: Option<PathBuf>,
}

fn parse_args() -> Result<Opts> {
    let mut opts = Opts {
        duration: 10,
        connections: 32,
        postgres: Some("postgres://postgres@127.0.0.1:5432/postgres".into()),
        sqlite: true,
        gateway: true,
        markdown: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--duration" => opts.duration = value()?.parse().context("--duration")?,
            "--connections" => opts.connections = value()?.parse().context("--connections")?,
            "--postgres" => opts.postgres = Some(value()?),
            "--skip-postgres" => opts.postgres = None,
            "--skip-sqlite" => opts.sqlite = false,
            "--skip-gateway" => opts.gateway = false,
            "--gateway-only" => {
                opts.sqlite = false;
                opts.postgres = None;
            }
            "--markdown" => opts.markdown = Some(value()?.into()),
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(opts)
}

/// One measured load run.
#[derive(Debug, Clone)]
struct Run {
    name: String,
    connections: usize,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
    /// Server CPU time per request, in µs.
    cpu_us: f64,
    /// PostgreSQL's CPU time per request (all its processes), in µs.
    pg_cpu_us: Option<f64>,
    /// Req/s ÷ the baseline run measured next to it.
    ratio: Option<f64>,
    /// CPU per request ÷ the baseline's.
    cpu_ratio: Option<f64>,
    note: String,
}

/// A server process under test.
struct Server {
    child: Child,
    addr: SocketAddr,
    name: String,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One HTTP/1.1 request over a fresh connection; the status code, or `None` when the
/// server does not answer (yet).
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Waits until `/healthz` answers 200; the time from `started`.
fn wait_ready(addr: SocketAddr, started: Instant, child: &mut Child) -> Result<Duration> {
    let deadline = started + Duration::from_secs(30);
    loop {
        if http_status(addr, "/healthz") == Some(200) {
            return Ok(started.elapsed());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("server exited during start-up: {status}");
        }
        if Instant::now() > deadline {
            bail!("server at {addr} not ready after 30 s");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/release/examples/bench -> target/release
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("cannot locate the release directory"))
}

fn gatehouse_env(cmd: &mut Command, db_url: &str, port: u16) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GATEHOUSE__DATABASE__URL", db_url)
        .env("GATEHOUSE__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env(
            "GATEHOUSE__SERVER__PUBLIC_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .env("GATEHOUSE__LOG__FORMAT", "json")
        // The per-token limiter stays in the path, with a limit no load run reaches.
        .env("GATEHOUSE__LIMITS__MCP_PER_CREDENTIAL", "4000000000/minute")
        .env(
            "GATEHOUSE__LOG__FILTER",
            std::env::var("BENCH_LOG_FILTER").unwrap_or_else(|_| "warn".into()),
        );
}

/// Starts `gatehouse serve`; the time to ready is measured from the spawn.
fn start_gatehouse(name: &str, db_url: &str) -> Result<(Server, Duration)> {
    start_gatehouse_with(name, db_url, &[])
}

/// As [`start_gatehouse`], with more environment (a config file, a page size).
fn start_gatehouse_with(
    name: &str,
    db_url: &str,
    env: &[(&str, String)],
) -> Result<(Server, Duration)> {
    let port = free_port()?;
    let mut cmd = Command::new(bin_dir()?.join("gatehouse"));
    cmd.arg("serve");
    gatehouse_env(&mut cmd, db_url, port);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting gatehouse")?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let ready = wait_ready(addr, started, &mut child)?;
    Ok((
        Server {
            child,
            addr,
            name: name.into(),
        },
        ready,
    ))
}

fn start_baseline() -> Result<Server> {
    let mut child = Command::new(bin_dir()?.join("examples").join("bench_baseline"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bench_baseline")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow!("unexpected baseline output {line:?}"))?
        .parse()?;
    wait_ready_post(addr)?;
    Ok(Server {
        child,
        addr,
        name: "bare axum".into(),
    })
}

fn wait_ready_post(addr: SocketAddr) -> Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("baseline not answering")
}

/// CPU seconds (user + system) of one process.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which may contain spaces, start after ") ".
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds of every PostgreSQL process on the machine.
fn postgres_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with("postgres"))
        })
        .map(cpu_secs)
        .sum()
}

/// `VmRSS` and `VmHWM` (peak) in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Load<'a> {
    server: &'a Server,
    name: String,
    connections: usize,
    duration: u64,
    script: &'a Path,
    path: &'a str,
    env: Vec<(&'static str, String)>,
    /// A pool of single-use requests: its size, to tell when it ran dry.
    pool: Option<usize>,
    postgres: bool,
}

fn run_wrk(load: Load<'_>) -> Result<Run> {
    let pid = load.server.pid();
    let cpu0 = cpu_secs(pid);
    let pg0 = load.postgres.then(postgres_cpu_secs);
    let threads = THREADS.min(load.connections);
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(load.script)
        .arg(format!("{}{}", load.server.url(), load.path))
        .env("BENCH_THREADS", threads.to_string())
        .env("BENCH_PROTOCOL", PROTOCOL)
        .env("BENCH_PATH", load.path);
    for (k, v) in &load.env {
        cmd.env(k, v);
    }
    let out = cmd.output().context("running wrk (is it installed?)")?;
    let cpu = cpu_secs(pid) - cpu0;
    let pg = pg0.map(|p0| postgres_cpu_secs() - p0);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .ok_or_else(|| {
            anyhow!(
                "wrk printed no result: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let fields: BTreeMap<&str, u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k, v.parse().ok()?))
        })
        .collect();
    let get = |k: &str| fields.get(k).copied().unwrap_or(0);
    let requests = get("requests");
    let secs = get("duration_us") as f64 / 1e6;
    let mut note = String::new();
    if let Some(size) = load.pool
        && requests as usize + threads >= size
    {
        note = format!("pool of {size} ran dry: rate understated");
    }
    let errors = get("non2xx") + get("sockerr");
    if errors > 0 {
        let _ = write!(note, "{errors} errors");
    }
    let per = |secs: f64| {
        if requests == 0 {
            0.0
        } else {
            secs * 1e6 / requests as f64
        }
    };
    let run = Run {
        name: load.name,
        connections: load.connections,
        rps: if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        },
        p50_us: get("p50_us"),
        p99_us: get("p99_us"),
        errors,
        cpu_us: per(cpu),
        pg_cpu_us: pg.map(per),
        ratio: None,
        cpu_ratio: None,
        note,
    };
    eprintln!(
        "  {:<44} c={:<3} {:>9.0} req/s  p50 {:>6} µs  p99 {:>6} µs  cpu {:>6.1} µs/req{}",
        run.name,
        run.connections,
        run.rps,
        run.p50_us,
        run.p99_us,
        run.cpu_us,
        if run.note.is_empty() {
            String::new()
        } else {
            format!("  ({})", run.note)
        }
    );
    Ok(run)
}

/// Alternating (baseline, row) pairs per hot-path row.
const HOT_PAIRS: usize = 3;

/// The pair whose req/s ratio is the median; its note lists every pair's ratios.
fn median_pair(mut pairs: Vec<(Run, Run)>) -> (Run, Run) {
    let ratio = |r: &Run| r.ratio.unwrap_or(0.0);
    let all: Vec<String> = pairs
        .iter()
        .map(|(r, _)| format!("{:.2}x/{:.2}x", ratio(r), r.cpu_ratio.unwrap_or(0.0)))
        .collect();
    pairs.sort_by(|a, b| ratio(&a.0).total_cmp(&ratio(&b.0)));
    let (mut run, base) = pairs.swap_remove(pairs.len() / 2);
    let summary = format!(
        "median of {} pairs (req/s, CPU): {}",
        all.len(),
        all.join(", ")
    );
    run.note = if run.note.is_empty() {
        summary
    } else {
        format!("{}; {summary}", run.note)
    };
    (run, base)
}

fn relative(mut run: Run, baseline: &Run) -> Run {
    if baseline.rps > 0.0 {
        run.ratio = Some(run.rps / baseline.rps);
    }
    if baseline.cpu_us > 0.0 {
        run.cpu_ratio = Some(run.cpu_us / baseline.cpu_us);
    }
    run
}

/// What Gatehouse needs for the load: the owner, a PAT, an OAuth access token obtained
/// through the real token endpoint, and pools of single-use grants.
struct Seed {
    pat: String,
    access_token: String,
}

fn cli(db_url: &str, args: &[&str]) -> Result<Value> {
    let mut cmd = Command::new(bin_dir()?.join("gatehouse"));
    cmd.arg("--json").args(args);
    gatehouse_env(&mut cmd, db_url, 1);
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "gatehouse {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn challenge() -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()))
}

async fn store_for(db_url: &str) -> Result<gatehouse::storage::Store> {
    Ok(
        gatehouse::storage::Store::connect(&gatehouse::config::DatabaseConfig {
            url: db_url.into(),
            max_connections: 4,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
        })
        .await?,
    )
}

/// Ids of the first-start owner and their organization.
async fn owner(store: &gatehouse::storage::Store) -> Result<(String, String)> {
    let (user, org) = match store {
        gatehouse::storage::Store::Postgres(p) => sqlx::query_as::<_, (String, String)>(
            "SELECT m.user_id, m.org_id FROM memberships m JOIN organizations o ON o.id = m.org_id WHERE o.slug = 'default' LIMIT 1",
        )
        .fetch_one(p)
        .await?,
        gatehouse::storage::Store::Sqlite(p) => sqlx::query_as::<_, (String, String)>(
            "SELECT m.user_id, m.org_id FROM memberships m JOIN organizations o ON o.id = m.org_id WHERE o.slug = 'default' LIMIT 1",
        )
        .fetch_one(p)
        .await?,
    };
    Ok((user, org))
}

/// Registers a Claude-style public client over HTTP.
async fn register(http: &reqwest::Client, base: &str) -> Result<String> {
    let res: Value = http
        .post(format!("{base}/register"))
        .json(&json!({
            "client_name": "bench", "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"], "token_endpoint_auth_method": "none",
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    res["client_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("registration gave no client_id: {res}"))
}

/// Inserts `n` authorization codes for `client` (all with the bench verifier) and
/// returns the token-request form bodies that redeem them.
async fn seed_codes(
    store: &gatehouse::storage::Store,
    client: &str,
    resource: &str,
    (user, org): (&str, &str),
    n: usize,
) -> Result<Vec<String>> {
    let now = SystemClock.now();
    let mut bodies = Vec::with_capacity(n);
    let challenge = challenge();
    for chunk in (0..n).collect::<Vec<_>>().chunks(2000) {
        let mut hashes = Vec::new();
        let mut families = Vec::new();
        for _ in chunk {
            let code = PlainToken::generate(TokenKind::Code);
            hashes.push(code.hash().as_str().to_owned());
            families.push(gatehouse::crypto::random::id("fam"));
            bodies.push(format!(
                "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={VERIFIER}&client_id={client}",
                code.expose(),
                url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
            ));
        }
        for (hash, family) in hashes.iter().zip(&families) {
            store
                .insert_code(&gatehouse::storage::CodeRow {
                    code_hash: hash.clone(),
                    client_id: client.into(),
                    redirect_uri: REDIRECT.into(),
                    code_challenge: challenge.clone(),
                    scopes: "account:read account:write".into(),
                    resource: resource.into(),
                    user_id: user.into(),
                    org_id: org.into(),
                    family_id: family.clone(),
                    created_at: now,
                    expires_at: now + 3600,
                    used_at: None,
                    api_key_id: None,
                })
                .await?;
        }
    }
    Ok(bodies)
}

/// Inserts `n` live refresh tokens (each in its own family) on PostgreSQL in bulk and
/// returns the form bodies that use them.
async fn seed_refresh(
    pool: &sqlx::PgPool,
    client: &str,
    resource: &str,
    (user, org): (&str, &str),
    n: usize,
) -> Result<Vec<String>> {
    let now = SystemClock.now();
    let mut bodies = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let mut hashes = Vec::new();
        let mut families = Vec::new();
        for _ in chunk {
            let token = PlainToken::generate(TokenKind::Refresh);
            hashes.push(token.hash().as_str().to_owned());
            families.push(gatehouse::crypto::random::id("fam"));
            bodies.push(format!(
                "grant_type=refresh_token&refresh_token={}&client_id={client}",
                token.expose()
            ));
        }
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO oauth_families (id, client_id, user_id, org_id, created_at, last_used_at) \
             SELECT f, $2, $3, $4, $5, $5 FROM UNNEST($1::text[]) AS f",
        )
        .bind(&families)
        .bind(client)
        .bind(user)
        .bind(org)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO oauth_refresh_tokens (token_hash, family_id, client_id, scopes, resource, created_at, expires_at) \
             SELECT h, f, $3, 'account:read account:write', $4, $5, $5 + 86400 FROM UNNEST($1::text[], $2::text[]) AS t(h, f)",
        )
        .bind(&hashes)
        .bind(&families)
        .bind(client)
        .bind(resource)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(bodies)
}

/// Access tokens signed with the server's own key, as the token endpoint would mint them.
async fn mint_tokens(
    store: &gatehouse::storage::Store,
    base: &str,
    (user, org): (&str, &str),
    client: &str,
    n: usize,
) -> Result<Vec<String>> {
    // The bench's server runs with the development key-encryption key.
    let keys = KeySet::from_stored(
        &store.list_signing_keys().await?,
        &gatehouse::crypto::keys::Kek::development(),
    )?;
    let now = SystemClock.now();
    let family = gatehouse::crypto::random::id("fam");
    let jtis: Vec<String> = (0..n)
        .map(|_| gatehouse::crypto::random::base62(22))
        .collect();
    // The server honours only access tokens it recorded as issued: record these too.
    let gatehouse::storage::Store::Sqlite(pool) = store else {
        bail!("live-token runs are measured on SQLite");
    };
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO oauth_families (id, client_id, user_id, org_id, created_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(&family)
    .bind(client)
    .bind(user)
    .bind(org)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    for jti in &jtis {
        sqlx::query(
            "INSERT INTO oauth_access_tokens (jti_hash, family_id, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(gatehouse::crypto::HashedToken::of(jti).as_str())
        .bind(&family)
        .bind(now + 3600)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    jtis.into_iter()
        .map(|jti| {
            let claims = AccessClaims {
                iss: base.into(),
                sub: user.into(),
                aud: format!("{base}/mcp"),
                client_id: client.into(),
                scope: "account:read account:write".into(),
                org: org.into(),
                exp: now + 3600,
                iat: now,
                jti,
            };
            Ok(jwt::sign(&keys, &claims)?)
        })
        .collect()
}

fn write_lines(dir: &Path, name: &str, lines: &[String]) -> Result<PathBuf> {
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for l in lines {
        writeln!(f, "{l}")?;
    }
    f.flush()?;
    Ok(path)
}

/// Initializes nothing (the endpoint is stateless) but checks a call works before the load.
async fn check_call(http: &reqwest::Client, base: &str, token: &str, body: &str) -> Result<()> {
    let res = http
        .post(format!("{base}/mcp"))
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", PROTOCOL)
        .body(body.to_owned())
        .send()
        .await?;
    let status = res.status();
    let text = res.text().await?;
    if !status.is_success() || text.contains("\"isError\":true") || text.contains("\"error\"") {
        bail!("a check call failed: {status} {text}");
    }
    Ok(())
}

struct Footprint {
    name: String,
    start_ms: f64,
    restart_ms: f64,
    idle_mib: f64,
    peak_mib: f64,
}

struct Report {
    runs: Vec<Run>,
    scaling: Vec<Run>,
    footprint: Vec<Footprint>,
    gateway: Vec<Run>,
    /// Lines under the gateway table (memory over the stdio runs).
    gateway_notes: Vec<String>,
}

const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;

/// The gateway rows (issue #15): a call through Gatehouse to the test upstream over
/// HTTP against the same call sent to the upstream directly, calls through one stdio
/// process of it, and `tools/list` with about 500 merged tools against the built-in
/// list. All on SQLite; the upstream checks no identity tokens (as cheap as it gets, so
/// the ratio shows Gatehouse's own cost).
fn gateway_phase(
    opts: &Opts,
    dir: &Path,
    fixed: &Path,
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    report: &mut Report,
) -> Result<()> {
    let d = opts.duration;
    let c = opts.connections;
    eprintln!("\n== Gateway");
    let upstream_bin = bin_dir()?.join("gatehouse-test-upstream");
    let mut child = Command::new(&upstream_bin)
        .arg("--http")
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting gatehouse-test-upstream (scripts/bench builds it)")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?)
        .read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow!("unexpected upstream output {line:?}"))?
        .to_owned();
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .parse()?;
    let upstream = Server {
        child,
        addr,
        name: "test upstream".into(),
    };
    // The direct runs need the upstream's session, as Gatehouse holds one.
    let session = rt.block_on(async {
        let res = http
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#)
            .send()
            .await?;
        res.headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the test upstream gave no session"))
    })?;
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[upstream]]\nname = \"h\"\ntransport = \"http\"\nurl = \"{url}\"\nscopes = \"account:read\"\n\n\
             [[upstream]]\nname = \"t\"\ntransport = \"stdio\"\ncommand = \"{}\"\nscopes = \"account:read\"\n\n\
             [[upstream]]\nname = \"many\"\ntransport = \"stdio\"\ncommand = \"{}\"\nscopes = \"account:read\"\nallow = [\"generated_*\"]\nenv = {{ TEST_UPSTREAM_MANY = \"500\" }}\n",
            upstream_bin.display(),
            upstream_bin.display()
        ),
    )?;
    let db_url = format!("sqlite://{}", dir.join("gateway.db").display());
    let big_pages = ("GATEHOUSE__MCP__PAGE_SIZE", "1000".to_owned());
    let (server, _) = start_gatehouse_with(
        "gateway",
        &db_url,
        &[
            ("GATEHOUSE_CONFIG", config.display().to_string()),
            big_pages.clone(),
        ],
    )?;
    let pat = cli(
        &db_url,
        &[
            "pat",
            "create",
            "--org",
            "default",
            "--user",
            "owner@localhost",
            "--name",
            "bench",
            "--scopes",
            "account:read",
        ],
    )?["token"]
        .as_str()
        .ok_or_else(|| anyhow!("no token in pat create output"))?
        .to_owned();
    let proxied = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"h_echo","arguments":{"text":"hello"}}}"#;
    let stdio = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t_echo","arguments":{"text":"hello"}}}"#;
    rt.block_on(check_call(http, &server.url(), &pat, proxied))?;
    rt.block_on(check_call(http, &server.url(), &pat, stdio))?;
    let load =
        |server: &Server, name: String, conns: usize, body: &str, token: &str, session: &str| {
            run_wrk(Load {
                server,
                name,
                connections: conns,
                duration: d,
                script: fixed,
                path: "/mcp",
                env: vec![
                    ("BENCH_BODY", body.to_owned()),
                    ("BENCH_TOKEN", token.to_owned()),
                    ("BENCH_SESSION", session.to_owned()),
                ],
                pool: None,
                postgres: false,
            })
        };
    for conns in [c, 1] {
        let direct = load(
            &upstream,
            format!("test upstream directly: tools/call echo ({conns} conns)"),
            conns,
            ECHO,
            "",
            &session,
        )?;
        let mut run = relative(
            load(
                &server,
                format!("Gatehouse → HTTP upstream: tools/call h_echo ({conns} conns)"),
                conns,
                proxied,
                &pat,
                "",
            )?,
            &direct,
        );
        run.note = format!("p50 added: {} µs", run.p50_us as i64 - direct.p50_us as i64);
        report.gateway.push(run);
        report.gateway.push(direct);
    }
    // Through one stdio process: three runs in a row, with the RSS of Gatehouse and of
    // the process after each, to see whether memory stays flat.
    let child_pid = || -> Option<u32> {
        let out = Command::new("pgrep")
            .args([
                "-P",
                &server.pid().to_string(),
                "-f",
                "gatehouse-test-upstream",
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    };
    let mut calls = 0u64;
    let mut memory = Vec::new();
    for round in 1..=3 {
        let run = load(
            &server,
            format!("Gatehouse → stdio upstream: tools/call t_echo, round {round}"),
            c,
            stdio,
            &pat,
            "",
        )?;
        calls += (run.rps * d as f64) as u64;
        let (gh, _) = memory_mib(server.pid());
        let up = child_pid().map_or(0.0, |p| memory_mib(p).0);
        memory.push(format!(
            "after about {calls} stdio calls: Gatehouse {gh:.1} MiB, the upstream process {up:.1} MiB"
        ));
        report.gateway.push(run);
    }
    report.gateway_notes.extend(memory);
    // tools/list: about 530 merged tools in one page against the 9 built-in ones.
    let (plain, _) = start_gatehouse_with(
        "built-in only",
        &format!("sqlite://{}", dir.join("plain.db").display()),
        &[big_pages],
    )?;
    let plain_pat = cli(
        &format!("sqlite://{}", dir.join("plain.db").display()),
        &[
            "pat",
            "create",
            "--org",
            "default",
            "--user",
            "owner@localhost",
            "--name",
            "bench",
            "--scopes",
            "account:read",
        ],
    )?["token"]
        .as_str()
        .ok_or_else(|| anyhow!("no token in pat create output"))?
        .to_owned();
    let merged_count = rt.block_on(async {
        let v: Value = http
            .post(format!("{}/mcp", server.url()))
            .header("Authorization", format!("Bearer {pat}"))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .header("MCP-Protocol-Version", PROTOCOL)
            .body(LIST)
            .send()
            .await?
            .json()
            .await?;
        Ok::<usize, anyhow::Error>(v["result"]["tools"].as_array().map_or(0, Vec::len))
    })?;
    let builtin = load(
        &plain,
        "tools/list, 9 built-in tools".into(),
        c,
        LIST,
        &plain_pat,
        "",
    )?;
    let merged = load(
        &server,
        format!("tools/list, {merged_count} merged tools in one page"),
        c,
        LIST,
        &pat,
        "",
    )?;
    report.gateway.push(relative(merged, &builtin));
    report.gateway.push(builtin);
    Ok(())
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path();
    let fixed = dir.join("fixed.lua");
    std::fs::write(&fixed, format!("{FIXED_LUA}{DONE_LUA}"))?;
    let pool = dir.join("pool.lua");
    std::fs::write(&pool, format!("{POOL_LUA}{DONE_LUA}"))?;
    let http = reqwest::Client::new();

    let mut report = Report {
        runs: Vec::new(),
        scaling: Vec::new(),
        footprint: Vec::new(),
        gateway: Vec::new(),
        gateway_notes: Vec::new(),
    };
    let d = opts.duration;
    let c = opts.connections;

    let baseline = start_baseline()?;
    let base_env = || vec![("BENCH_BODY", ECHO.to_owned())];
    let measure_baseline = |label: &str, connections: usize| {
        run_wrk(Load {
            server: &baseline,
            name: format!("bare axum echo ({label})"),
            connections,
            duration: d,
            script: &fixed,
            path: "/mcp",
            env: base_env(),
            pool: None,
            postgres: false,
        })
    };

    let mut backends: Vec<(&str, String)> = Vec::new();
    if opts.sqlite {
        let url = format!("sqlite://{}", dir.join("bench.db").display());
        backends.push(("SQLite", url));
    }
    let mut pg_admin = None;
    if let Some(url) = &opts.postgres {
        let admin = rt
            .block_on(sqlx::PgPool::connect(url))
            .context("connecting to PostgreSQL (pass --skip-postgres to measure SQLite only)")?;
        let name = format!(
            "gh_bench_{}",
            gatehouse::crypto::random::base62(8).to_lowercase()
        );
        rt.block_on(sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin))?;
        let db_url = match url.rsplit_once('/') {
            Some((head, _)) => format!("{head}/{name}"),
            None => bail!("--postgres must end in /<database>"),
        };
        backends.push(("PostgreSQL", db_url));
        pg_admin = Some((admin, name));
    }

    for (backend, db_url) in &backends {
        eprintln!("\n== Gatehouse on {backend}");
        let is_pg = *backend == "PostgreSQL";
        // First start: migrations and the first-run owner.
        let (server, first_start) = start_gatehouse(backend, db_url)?;
        drop(server);
        let (server, restart) = start_gatehouse(backend, db_url)?;
        std::thread::sleep(Duration::from_millis(300));
        let (idle, _) = memory_mib(server.pid());
        let base = server.url();

        let store = rt.block_on(store_for(db_url))?;
        let ids = rt.block_on(owner(&store))?;
        let pat = cli(
            db_url,
            &[
                "pat",
                "create",
                "--org",
                "default",
                "--user",
                "owner@localhost",
                "--name",
                "bench",
                "--scopes",
                "account:read account:write",
            ],
        )?["token"]
            .as_str()
            .ok_or_else(|| anyhow!("no token in pat create output"))?
            .to_owned();
        let client = rt.block_on(register(&http, &base))?;
        let resource = format!("{base}/mcp");
        // The OAuth access token comes from the real code exchange.
        let codes = rt.block_on(seed_codes(&store, &client, &resource, (&ids.0, &ids.1), 1))?;
        let access_token = rt.block_on(async {
            let res: Value = http
                .post(format!("{base}/token"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(codes[0].clone())
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            res["access_token"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no access token: {res}"))
        })?;
        let seed = Seed { pat, access_token };
        rt.block_on(check_call(&http, &base, &seed.access_token, CALL))?;
        rt.block_on(check_call(&http, &base, &seed.pat, CALL))?;

        // `tools/call whoami` with one token, the same request for every hot-path row.
        let measure_whoami = |name: String, connections: usize, token: &str| {
            run_wrk(Load {
                server: &server,
                name,
                connections,
                duration: d,
                script: &fixed,
                path: "/mcp",
                env: vec![
                    ("BENCH_BODY", CALL.into()),
                    ("BENCH_TOKEN", token.to_owned()),
                ],
                pool: None,
                postgres: is_pg,
            })
        };

        // The target rows: each alternates with the baseline in HOT_PAIRS pairs, and
        // the pair with the median req/s ratio is reported, its baseline next to it.
        // On this shared machine the same binary can differ by a sixth between two
        // 4-second runs a few seconds apart; a pair measured back to back shares most
        // of such a drift, and the median drops the one pair that did not.
        for (label, token) in [
            ("OAuth access token", &seed.access_token),
            ("PAT", &seed.pat),
        ] {
            let mut pairs = Vec::new();
            for _ in 0..HOT_PAIRS {
                let b = measure_baseline(&format!("next to {backend}, {label}"), c)?;
                let run =
                    measure_whoami(format!("{backend}: tools/call whoami, {label}"), c, token)?;
                pairs.push((relative(run, &b), b));
            }
            let (run, b) = median_pair(pairs);
            report.runs.push(run);
            report.runs.push(b);
        }

        if is_pg && let gatehouse::storage::Store::Postgres(pg) = &store {
            // Enough single-use grants that the pools cannot run dry at 10× the targets.
            let refresh_n = (d as usize * 8_000).max(20_000);
            let code_n = (d as usize * 5_000).max(10_000);
            eprintln!("  seeding {refresh_n} refresh tokens and {code_n} codes ...");
            let refresh = rt.block_on(seed_refresh(
                pg,
                &client,
                &resource,
                (&ids.0, &ids.1),
                refresh_n,
            ))?;
            let codes = rt.block_on(seed_codes(
                &store,
                &client,
                &resource,
                (&ids.0, &ids.1),
                code_n,
            ))?;
            let refresh_file = write_lines(dir, "refresh.txt", &refresh)?;
            let code_file = write_lines(dir, "codes.txt", &codes)?;
            let b = measure_baseline("next to the token endpoint", c)?;
            for (label, file, size) in [
                ("refresh_token grant", &refresh_file, refresh_n),
                ("authorization_code + PKCE", &code_file, code_n),
            ] {
                let run = run_wrk(Load {
                    server: &server,
                    name: format!("{backend}: /token {label}"),
                    connections: c,
                    duration: d,
                    script: &pool,
                    path: "/token",
                    env: vec![
                        ("BENCH_POOL", file.display().to_string()),
                        ("BENCH_MODE", "once".into()),
                    ],
                    pool: Some(size),
                    postgres: true,
                })?;
                report.runs.push(relative(run, &b));
            }
        }

        if !is_pg {
            // Scaling: connections, then how many distinct live tokens are in use.
            for conns in [1, 8, 32, 128] {
                let b = measure_baseline(&format!("{conns} connections"), conns)?;
                let run = measure_whoami(
                    format!("{backend}: whoami, access token, {conns} conns"),
                    conns,
                    &seed.access_token,
                )?;
                report.scaling.push(relative(run, &b));
            }
            let b = measure_baseline("next to the live-token runs", c)?;
            for n in [10, 10_000] {
                let tokens =
                    rt.block_on(mint_tokens(&store, &base, (&ids.0, &ids.1), &client, n))?;
                let file = write_lines(dir, &format!("tokens-{n}.txt"), &tokens)?;
                // First use (every signature verified, every last use written once),
                // then the same tokens again: the steady state of that many in use.
                for phase in ["first use", "in use"] {
                    let run = run_wrk(Load {
                        server: &server,
                        name: format!("{backend}: whoami, {n} live access tokens, {phase}"),
                        connections: c,
                        duration: d,
                        script: &pool,
                        path: "/mcp",
                        env: vec![
                            ("BENCH_POOL", file.display().to_string()),
                            ("BENCH_MODE", "cycle".into()),
                            ("BENCH_BODY", CALL.into()),
                        ],
                        pool: None,
                        postgres: false,
                    })?;
                    report.scaling.push(relative(run, &b));
                }
            }
        }

        let (_, peak) = memory_mib(server.pid());
        report.footprint.push(Footprint {
            name: server.name.clone(),
            start_ms: first_start.as_secs_f64() * 1e3,
            restart_ms: restart.as_secs_f64() * 1e3,
            idle_mib: idle,
            peak_mib: peak,
        });
        drop(server);
        rt.block_on(async {
            match &store {
                gatehouse::storage::Store::Postgres(p) => p.close().await,
                gatehouse::storage::Store::Sqlite(p) => p.close().await,
            }
        });
    }
    if opts.gateway {
        gateway_phase(&opts, dir, &fixed, &rt, &http, &mut report)?;
    }
    let (_, baseline_peak) = memory_mib(baseline.pid());
    drop(baseline);
    if let Some((admin, name)) = pg_admin {
        rt.block_on(
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin),
        )?;
    }

    let table = render(&report, &opts, baseline_peak);
    println!("{table}");
    if let Some(path) = &opts.markdown {
        std::fs::write(path, &table)?;
    }
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} × {cpu}")
}

fn render(report: &Report, opts: &Opts, baseline_peak: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Machine: {}. wrk, {} threads, {} s per run, {} connections unless stated.\n",
        machine(),
        THREADS,
        opts.duration,
        opts.connections
    );
    let row = |s: &mut String, r: &Run| {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {:.1} | {} | {} | {} | {} |",
            r.name,
            r.connections,
            r.rps,
            r.p50_us,
            r.p99_us,
            r.cpu_us,
            r.pg_cpu_us.map_or("".into(), |v| format!("{v:.1}")),
            r.ratio
                .map_or("1.00 (baseline)".into(), |v| format!("{v:.2}")),
            r.cpu_ratio.map_or("".into(), |v| format!("{v:.2}")),
            if r.errors > 0 || !r.note.is_empty() {
                r.note.clone()
            } else {
                String::new()
            }
        );
    };
    let header = "| run | conns | req/s | p50 µs | p99 µs | server CPU µs/req | PostgreSQL CPU µs/req | req/s ÷ baseline | CPU ÷ baseline | notes |\n|---|---|---|---|---|---|---|---|---|---|\n";
    s.push_str(header);
    for r in &report.runs {
        row(&mut s, r);
    }
    if !report.scaling.is_empty() {
        s.push_str(
            "\nScaling (each row's ratio is to a baseline run at the same connection count):\n\n",
        );
        s.push_str(header);
        for r in &report.scaling {
            row(&mut s, r);
        }
    }
    if !report.gateway.is_empty() {
        s.push_str("\nGateway (SQLite; a proxied row's ratio is to the direct row after it, the merged list's to the built-in list after it):\n\n");
        s.push_str(header);
        for r in &report.gateway {
            row(&mut s, r);
        }
        for n in &report.gateway_notes {
            let _ = writeln!(s, "\n- {n}");
        }
    }
    s.push_str("\n| server | first start to ready ms | restart to ready ms | idle RSS MiB | peak RSS MiB |\n|---|---|---|---|---|\n");
    for f in &report.footprint {
        let _ = writeln!(
            s,
            "| Gatehouse, {} | {:.0} | {:.0} | {:.1} | {:.1} |",
            f.name, f.start_ms, f.restart_ms, f.idle_mib, f.peak_mib
        );
    }
    let _ = writeln!(s, "| bare axum baseline | | | | {baseline_peak:.1} |");
    if let Some(line) = link_order_coverage() {
        let _ = writeln!(s, "\n{line}");
    }
    s
}

/// How much of `link/gatehouse.order` (build.rs, scripts/link-order) the measured binary
/// still has: names carry a hash of their crate's version and features, so a dependency
/// or toolchain change makes the file go stale, and idle RSS grows with it.
fn link_order_coverage() -> Option<String> {
    let order = std::fs::read_to_string("link/gatehouse.order").ok()?;
    let out = Command::new("nm")
        .arg("--defined-only")
        .arg(bin_dir().ok()?.join("gatehouse"))
        .output()
        .ok()?;
    let defined: std::collections::HashSet<&str> = std::str::from_utf8(&out.stdout)
        .ok()?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let wanted: Vec<&str> = order.lines().filter(|l| !l.is_empty()).collect();
    let found = wanted.iter().filter(|n| defined.contains(*n)).count();
    Some(format!(
        "Link order: {found} of the {} functions in link/gatehouse.order are in the binary \
         (rerun scripts/link-order when this falls).",
        wanted.len()
    ))
}
