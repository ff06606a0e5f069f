//! Criterion benchmarks of the functions on Gatehouse's hot paths: the bearer-token
//! check (signature verification against a cache hit), a whole `/mcp` request through
//! the router in process (parse, authenticate, dispatch, meter, serialise), PKCE
//! verification and token minting. `cargo bench --bench hot_paths`.
//!
//! The load benchmark over real HTTP is `scripts/bench`; these isolate the pieces.

// Set-up failures end a benchmark run loudly; there is no caller to hand them to.
#![allow(clippy::expect_used)]

use axum::body::Body;
use axum::http::Request;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::app::App;
use gatehouse::clock::{Clock, SystemClock};
use gatehouse::config::Config;
use gatehouse::crypto::jwt::{self, AccessClaims};
use gatehouse::crypto::keys::{self, KeySet};
use gatehouse::crypto::{HashedToken, PlainToken, TokenKind};
use gatehouse::domain::{CodeChallenge, CodeVerifier, Email, ScopeSet};
use gatehouse::storage::AuditEntry;
use gatehouse::storage::credentials::NewPat;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const CALL: &str =
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;

fn claims(now: i64) -> AccessClaims {
    AccessClaims {
        iss: "http://127.0.0.1:8080".into(),
        sub: "usr_bench".into(),
        aud: "http://127.0.0.1:8080/mcp".into(),
        client_id: "cli_bench".into(),
        scope: "account:read account:write".into(),
        org: "org_bench".into(),
        exp: now + 3600,
        iat: now,
        jti: gatehouse::crypto::random::base62(22),
    }
}

fn tokens(c: &mut Criterion) {
    let now = SystemClock.now();
    let keys = KeySet::from_stored(
        &[keys::generate("k1".into(), now, &keys::Kek::development()).expect("key")],
        &keys::Kek::development(),
    )
    .expect("keys");
    let token = jwt::sign(&keys, &claims(now)).expect("sign");
    let mut g = c.benchmark_group("token");
    g.bench_function("jwt_verify_eddsa", |b| {
        b.iter(|| {
            jwt::verify(
                &keys,
                &token,
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8080/mcp",
                now,
            )
            .expect("valid")
        })
    });
    g.bench_function("cache_key_sha256", |b| b.iter(|| HashedToken::of(&token)));
    g.bench_function("mint_access_token_eddsa", |b| {
        b.iter(|| jwt::sign(&keys, &claims(now)).expect("sign"))
    });
    g.bench_function("mint_opaque_token_and_digest", |b| {
        b.iter(|| PlainToken::generate(TokenKind::Refresh).hash())
    });
    let raw = "bench-verifier-bench-verifier-bench-verifier-0123456789";
    let verifier = CodeVerifier::parse(raw).expect("verifier");
    let s256 = URL_SAFE_NO_PAD.encode(Sha256::digest(raw.as_bytes()));
    let challenge = CodeChallenge::parse(Some(&s256), Some("S256")).expect("challenge");
    assert!(challenge.verify(&verifier));
    g.bench_function("pkce_verify_s256", |b| {
        b.iter(|| challenge.verify(&verifier))
    });
    g.finish();
}

/// A whole `/mcp` request through the real router, in process, with a token already in
/// the cache (the steady state of a connected client).
fn mcp_requests(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (router, pat, access) = rt.block_on(async {
        let mut config = Config::defaults().expect("defaults");
        config.database.url = format!("sqlite://{}", dir.path().join("bench.db").display());
        config.server.bind = ([127, 0, 0, 1], 0).into();
        config.server.public_url = "http://127.0.0.1:8080".into();
        // The per-token limiter stays in the path, with a limit no benchmark reaches.
        config.limits.mcp_per_credential = Some(gatehouse::limits::Rate {
            max: u32::MAX,
            window_secs: 60,
        });
        let app = App::build(config.clone()).await.expect("app");
        let state = app.state().clone();
        let store = &state.store;
        let now = SystemClock.now();
        let email = Email::parse("owner@localhost").expect("email");
        let owner = store
            .create_initial_owner(&email, &PlainToken::generate(TokenKind::ApiKey).hash(), now)
            .await
            .expect("owner")
            .expect("fresh database");
        let pat = PlainToken::generate(TokenKind::Pat);
        let scopes = ScopeSet::parse("account:read account:write").expect("scopes");
        store
            .insert_pat(
                NewPat {
                    user_id: &owner.user.id,
                    org_id: &owner.org.id,
                    name: "bench",
                    scopes: &scopes,
                    expires_at: None,
                    hash: &pat.hash(),
                },
                now,
                AuditEntry::new(now, "bench", "pat.create"),
            )
            .await
            .expect("pat");
        let mut c = claims(now);
        c.sub = owner.user.id.clone();
        c.org = owner.org.id.clone();
        // The server honours only access tokens it recorded as issued: record this one.
        let gatehouse::storage::Store::Sqlite(pool) = store else {
            unreachable!("the benchmark database is SQLite");
        };
        sqlx::query(
            "INSERT INTO oauth_families (id, client_id, user_id, org_id, created_at, last_used_at) \
             VALUES ('fam_bench', $1, $2, $3, $4, $4)",
        )
        .bind(&c.client_id)
        .bind(&c.sub)
        .bind(&c.org)
        .bind(now)
        .execute(pool)
        .await
        .expect("family");
        sqlx::query(
            "INSERT INTO oauth_access_tokens (jti_hash, family_id, expires_at) VALUES ($1, 'fam_bench', $2)",
        )
        .bind(HashedToken::of(&c.jti).as_str())
        .bind(c.exp)
        .execute(pool)
        .await
        .expect("access token");
        let access = jwt::sign(&state.keys.current(), &c).expect("sign");
        // What `serve` runs: the credential-change feed keeps cached tokens trusted
        // (without it, each one is re-checked against the database every second).
        let feed = state.clone();
        tokio::spawn(async move {
            loop {
                let _ = feed.token_cache.sync(&feed.store).await;
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        });
        let router = gatehouse::routes::router(state);
        (router, pat.expose().to_owned(), access)
    });
    let request = |token: &str, body: &'static str| {
        Request::post("/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body))
            .expect("request")
    };
    let send = |req: Request<Body>| {
        let router = router.clone();
        async move {
            let res = router.oneshot(req).await.expect("infallible");
            assert!(
                res.status().is_success(),
                "{} {:?}",
                res.status(),
                res.headers().get("www-authenticate")
            );
            axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .expect("body")
        }
    };
    // Warm the cache so that every measured request is a hit.
    for token in [&pat, &access] {
        let body = rt.block_on(send(request(token, CALL)));
        assert!(!String::from_utf8_lossy(&body).contains("isError\":true"));
    }
    let mut g = c.benchmark_group("mcp_request_in_process");
    g.bench_function("tools_call_whoami_pat", |b| {
        b.to_async(&rt).iter(|| send(request(&pat, CALL)))
    });
    g.bench_function("tools_call_whoami_access_token", |b| {
        b.to_async(&rt).iter(|| send(request(&access, CALL)))
    });
    g.bench_function("tools_list_pat", |b| {
        b.to_async(&rt).iter(|| send(request(&pat, LIST)))
    });
    g.finish();
    drop(dir);
}

criterion_group!(benches, tokens, mcp_requests);
criterion_main!(benches);
