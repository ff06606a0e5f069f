//! The fault test's load and judge (run by `scripts/fault-test`): starts `gatehouse
//! serve` on a fresh PostgreSQL database, drives it on loopback with tool calls, refresh
//! grants and PAT creation, runs a command that restarts PostgreSQL part-way, and then
//! checks that every request was answered 2xx or 503 (never hung, never 500), that
//! `/readyz` said so, that service came back by itself, and that every token the server
//! acknowledged still works. Prints the figures; exits non-zero on any failure.
//!
//! ```text
//! fault_load --bin PATH --admin-url postgres://…/postgres --stop CMD --start CMD
//!            [--outage 3] [--seconds 20] [--restart-at 6]
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse::clock::{Clock, SystemClock};
use gatehouse::crypto::{PlainToken, TokenKind};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Connection;

const VERIFIER: &str = "fault-verifier-fault-verifier-fault-verifier-0123456789";
const REDIRECT: &str = "https://claude.ai/api/mcp/auth_callback";
const CHAINS: usize = 3;

struct Args {
    bin: String,
    admin_url: String,
    stop: String,
    start: String,
    outage: u64,
    seconds: u64,
    restart_at: u64,
}

fn args() -> Result<Args> {
    let mut map = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| anyhow!("{k} needs a value"))?;
        map.insert(k, v);
    }
    let take = |k: &str| {
        map.get(k)
            .cloned()
            .ok_or_else(|| anyhow!("{k} is required"))
    };
    Ok(Args {
        bin: take("--bin")?,
        admin_url: take("--admin-url")?,
        stop: take("--stop")?,
        start: take("--start")?,
        outage: map.get("--outage").map_or(Ok(3), |s| s.parse())?,
        seconds: map.get("--seconds").map_or(Ok(20), |s| s.parse())?,
        restart_at: map.get("--restart-at").map_or(Ok(6), |s| s.parse())?,
    })
}

/// One answered (or failed) request: when it started, how long it took, the status.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    took: Duration,
    status: u16,
}

#[derive(Default)]
struct Log {
    samples: Vec<(&'static str, Sample)>,
    /// Tokens the server acknowledged: PATs made, and each chain's latest refresh token.
    pats: Vec<String>,
    chains: Vec<String>,
    readyz: Vec<(Duration, u16)>,
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("fault_load: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run() -> Result<bool> {
    let a = args()?;
    // A fresh database for this run.
    let name = format!(
        "gh_fault_{}",
        gatehouse::crypto::random::base62(10).to_lowercase()
    );
    let mut admin = sqlx::PgConnection::connect(&a.admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let mut url = url::Url::parse(&a.admin_url)?;
    url.set_path(&format!("/{name}"));
    let db_url = url.to_string();

    let mut cfg = gatehouse::config::Config::defaults()?.database;
    cfg.url = db_url.clone();
    let store = gatehouse::storage::Store::connect(&cfg).await?;
    store.migrate().await?;
    let key = PlainToken::generate(TokenKind::ApiKey);
    let owner = store
        .create_initial_owner(
            &gatehouse::domain::Email::parse("owner@example.com")?,
            &key.hash(),
            1,
        )
        .await?
        .ok_or_else(|| anyhow!("database not empty"))?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(&a.bin)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GATEHOUSE__DATABASE__URL", &db_url)
        .env("GATEHOUSE__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("GATEHOUSE__SERVER__PUBLIC_URL", &base)
        .env("GATEHOUSE__LOG__FORMAT", "json")
        .env("GATEHOUSE__LOG__FILTER", "warn")
        .env("GATEHOUSE__LIMITS__MCP_PER_CREDENTIAL", "off")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawn gatehouse")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    wait_ready(&http, &base).await?;

    // Credentials: a PAT that may create PATs, and CHAINS refresh chains from real
    // code exchanges (codes inserted directly, redeemed over HTTP).
    let pat = PlainToken::generate(TokenKind::Pat);
    store
        .insert_pat(
            gatehouse::storage::credentials::NewPat {
                user_id: &owner.user.id,
                org_id: &owner.org.id,
                name: "fault",
                scopes: &gatehouse::domain::ScopeSet::parse("account:read account:write")?,
                expires_at: None,
                hash: &pat.hash(),
            },
            SystemClock.now(),
            gatehouse::storage::AuditEntry::new(SystemClock.now(), "cli", "pat.create"),
        )
        .await?;
    let client_id = register(&http, &base).await?;
    let mut chains = Vec::new();
    for _ in 0..CHAINS {
        chains.push(
            first_refresh_token(
                &http,
                &store,
                &base,
                &client_id,
                (&owner.user.id, &owner.org.id),
            )
            .await?,
        );
    }
    store.close().await;

    let log = Arc::new(Mutex::new(Log {
        chains: chains.clone(),
        ..Log::default()
    }));
    let start = Instant::now();
    let end = start + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.push(tokio::spawn(call_tools(
            http.clone(),
            base.clone(),
            pat.expose().to_owned(),
            log.clone(),
            start,
            end,
        )));
    }
    tasks.push(tokio::spawn(make_pats(
        http.clone(),
        base.clone(),
        pat.expose().to_owned(),
        log.clone(),
        start,
        end,
    )));
    for i in 0..CHAINS {
        tasks.push(tokio::spawn(refresh_chain(
            http.clone(),
            base.clone(),
            client_id.clone(),
            i,
            log.clone(),
            start,
            end,
        )));
    }
    tasks.push(tokio::spawn(watch_readyz(
        http.clone(),
        base.clone(),
        log.clone(),
        start,
        end,
    )));

    // The restart: stop, stay down for `outage`, start; `pg_up` is when PostgreSQL
    // accepts connections again (the start command itself returns later).
    tokio::time::sleep(Duration::from_secs(a.restart_at)).await;
    let restart_began = start.elapsed();
    shell(&a.stop).await?;
    tokio::time::sleep(Duration::from_secs(a.outage)).await;
    let starting = tokio::spawn(shell(a.start.clone()));
    let pg_up = loop {
        if let Ok(c) = sqlx::PgConnection::connect(&a.admin_url).await {
            let _ = c.close().await;
            break start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    starting.await??;
    for t in tasks {
        t.await?;
    }

    // Every acknowledged token must still work.
    let (pats, chains) = {
        let l = log.lock().map_err(|_| anyhow!("poisoned"))?;
        (l.pats.clone(), l.chains.clone())
    };
    let mut lost = Vec::new();
    for p in &pats {
        if call(&http, &base, p, "whoami", json!({})).await.0 != 200 {
            lost.push(format!("PAT {}…", &p[..12]));
        }
    }
    for (i, rt) in chains.iter().enumerate() {
        let (status, _) = refresh(&http, &base, &client_id, rt).await;
        if status != 200 {
            lost.push(format!("refresh chain {i} ({status})"));
        }
    }
    let _ = child.kill().await;

    let (samples, readyz) = {
        let l = log.lock().map_err(|_| anyhow!("poisoned"))?;
        (l.samples.clone(), l.readyz.clone())
    };
    let mut by_status: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for (kind, s) in &samples {
        *by_status.entry((kind, s.status)).or_default() += 1;
    }
    let errors: Vec<&Sample> = samples
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.status != 200 && s.status != 201)
        .collect();
    let bad: Vec<&(&str, Sample)> = samples
        .iter()
        .filter(|(_, s)| !matches!(s.status, 200 | 201 | 503))
        .collect();
    let max_latency = samples
        .iter()
        .map(|(_, s)| s.took)
        .max()
        .unwrap_or_default();
    let window = match (errors.first(), errors.iter().map(|s| s.at + s.took).max()) {
        (Some(first), Some(last)) => Some((first.at, last)),
        _ => None,
    };
    // Back in service: the first database-backed success that began after PostgreSQL
    // accepted connections again.
    let recovered_at = samples
        .iter()
        .filter(|(kind, s)| *kind != "whoami" && s.status == 200 && s.at >= pg_up)
        .map(|(_, s)| s.at + s.took)
        .min();
    let ready_down = readyz.iter().any(|(_, s)| *s == 503);
    let ready_back = readyz.last().is_some_and(|(_, s)| *s == 200);

    println!(
        "fault test: {} s of load; PostgreSQL stopped at {:.2} s, down {} s, accepting connections again at {:.2} s",
        a.seconds,
        restart_began.as_secs_f64(),
        a.outage,
        pg_up.as_secs_f64()
    );
    for ((kind, status), n) in &by_status {
        println!("  {kind:<8} {status}: {n}");
    }
    println!("  max latency: {} ms", max_latency.as_millis());
    match window {
        Some((first, last)) => println!(
            "  error window: {:.2} s .. {:.2} s ({} ms); first database-backed success {} ms after PostgreSQL was back",
            first.as_secs_f64(),
            last.as_secs_f64(),
            (last - first).as_millis(),
            recovered_at.map_or(-1, |r| r.saturating_sub(pg_up).as_millis() as i64)
        ),
        None => println!("  error window: none (no request failed)"),
    }
    println!(
        "  /readyz: {} samples, 503 seen: {ready_down}, 200 at the end: {ready_back}",
        readyz.len()
    );
    println!(
        "  acknowledged tokens checked afterwards: {} PATs, {} refresh chains; lost: {}",
        pats.len(),
        chains.len(),
        lost.len()
    );

    let mut ok = true;
    let mut fail = |why: String| {
        println!("FAIL: {why}");
        ok = false;
    };
    if !bad.is_empty() {
        fail(format!(
            "{} answers other than 2xx/503, first: {} {}",
            bad.len(),
            bad[0].0,
            bad[0].1.status
        ));
    }
    if max_latency > Duration::from_secs(5) {
        fail(format!(
            "a request took {} ms (the acquire timeout is 2 s)",
            max_latency.as_millis()
        ));
    }
    if !lost.is_empty() {
        fail(format!("acknowledged tokens lost: {lost:?}"));
    }
    if recovered_at.is_none_or(|r| r.saturating_sub(pg_up) > Duration::from_secs(10)) {
        fail("service did not recover within 10 s of PostgreSQL being back".into());
    }
    if !ready_back {
        fail("/readyz did not report ready at the end".into());
    }
    if !ready_down {
        fail("/readyz never reported the outage".into());
    }
    if samples
        .iter()
        .filter(|(_, s)| s.at > pg_up + Duration::from_secs(2))
        .all(|(_, s)| s.status != 200)
    {
        fail("no successful request after the restart".into());
    }
    // The database goes; a failure to drop it only leaves a scratch database behind.
    if let Ok(mut c) = sqlx::PgConnection::connect(&a.admin_url).await {
        let drop_db = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        if let Err(e) = sqlx::query(&drop_db).execute(&mut c).await {
            eprintln!("fault_load: could not drop {name}: {e}");
        }
    }
    if ok {
        println!("fault test: passed");
    }
    Ok(ok)
}

async fn shell(cmd: impl AsRef<str>) -> Result<()> {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd.as_ref())
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            cmd.as_ref(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> Result<()> {
    for _ in 0..300 {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("gatehouse did not become ready")
}

async fn register(http: &reqwest::Client, base: &str) -> Result<String> {
    let res: Value = http
        .post(format!("{base}/register"))
        .json(&json!({ "client_name": "fault", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
                       "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"] }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    res["client_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no client_id: {res}"))
}

async fn first_refresh_token(
    http: &reqwest::Client,
    store: &gatehouse::storage::Store,
    base: &str,
    client: &str,
    (user, org): (&str, &str),
) -> Result<String> {
    let now = SystemClock.now();
    let code = PlainToken::generate(TokenKind::Code);
    store
        .insert_code(&gatehouse::storage::CodeRow {
            code_hash: code.hash().as_str().to_owned(),
            client_id: client.into(),
            redirect_uri: REDIRECT.into(),
            code_challenge: URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes())),
            scopes: "account:read offline_access".into(),
            resource: format!("{base}/mcp"),
            user_id: user.into(),
            org_id: org.into(),
            family_id: gatehouse::crypto::random::id("fam"),
            created_at: now,
            expires_at: now + 600,
            used_at: None,
            api_key_id: None,
        })
        .await?;
    let res: Value = http
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", client),
        ])
        .send()
        .await?
        .json()
        .await?;
    res["refresh_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no refresh token: {res}"))
}

/// A tools/call: (HTTP status, body).
async fn call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    tool: &str,
    args: Value,
) -> (u16, Value) {
    let res = http
        .post(format!("{base}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .bearer_auth(token)
        .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": tool, "arguments": args } }))
        .send()
        .await;
    match res {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

async fn refresh(http: &reqwest::Client, base: &str, client: &str, rt: &str) -> (u16, Value) {
    let res = http
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", client),
        ])
        .send()
        .await;
    match res {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

fn record(log: &Mutex<Log>, kind: &'static str, at: Duration, took: Duration, status: u16) {
    if let Ok(mut l) = log.lock() {
        l.samples.push((kind, Sample { at, took, status }));
    }
}

async fn call_tools(
    http: reqwest::Client,
    base: String,
    pat: String,
    log: Arc<Mutex<Log>>,
    start: Instant,
    end: Instant,
) {
    while Instant::now() < end {
        let at = start.elapsed();
        let t = Instant::now();
        let (status, body) = call(&http, &base, &pat, "whoami", json!({})).await;
        // A tool error inside a 200 would hide a failure: count it as a 500.
        let status = if status == 200 && body["result"]["isError"] == true {
            500
        } else {
            status
        };
        record(&log, "whoami", at, t.elapsed(), status);
        if status != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn make_pats(
    http: reqwest::Client,
    base: String,
    pat: String,
    log: Arc<Mutex<Log>>,
    start: Instant,
    end: Instant,
) {
    let mut n = 0;
    while Instant::now() < end {
        n += 1;
        let at = start.elapsed();
        let t = Instant::now();
        let (status, body) = call(
            &http,
            &base,
            &pat,
            "create_access_token",
            json!({ "name": format!("fault-{n}"), "scopes": "account:read" }),
        )
        .await;
        let made = body["result"]["structuredContent"]["token"]
            .as_str()
            .map(str::to_owned);
        let status = if status == 200 && made.is_none() && body["result"]["isError"] != true {
            500
        } else {
            status
        };
        // A tool error saying the database is unavailable is the 503 of a tool call.
        let status = if status == 200 && body["result"]["isError"] == true {
            503
        } else {
            status
        };
        record(&log, "new_pat", at, t.elapsed(), status);
        if let (Some(token), Ok(mut l)) = (made, log.lock()) {
            l.pats.push(token);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn refresh_chain(
    http: reqwest::Client,
    base: String,
    client: String,
    i: usize,
    log: Arc<Mutex<Log>>,
    start: Instant,
    end: Instant,
) {
    while Instant::now() < end {
        let rt = match log.lock() {
            Ok(l) => l.chains[i].clone(),
            Err(_) => return,
        };
        let at = start.elapsed();
        let t = Instant::now();
        let (status, body) = refresh(&http, &base, &client, &rt).await;
        record(&log, "refresh", at, t.elapsed(), status);
        match body["refresh_token"].as_str() {
            Some(next) if status == 200 => {
                if let Ok(mut l) = log.lock() {
                    l.chains[i] = next.to_owned();
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn watch_readyz(
    http: reqwest::Client,
    base: String,
    log: Arc<Mutex<Log>>,
    start: Instant,
    end: Instant,
) {
    while Instant::now() < end + Duration::from_secs(1) {
        let status = match http.get(format!("{base}/readyz")).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        if let Ok(mut l) = log.lock() {
            l.readyz.push((start.elapsed(), status));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
