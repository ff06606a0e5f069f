use std::io::Write;
use std::sync::{Arc, Once};

use gatehouse::app::App;
use gatehouse::clock::ManualClock;
use gatehouse::config::Config;
use gatehouse::storage::Store;
use sqlx::Connection;
use tempfile::TempDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Expands `async fn name(app: TestApp)` into `name::sqlite` and `name::postgres` tests.
/// With `db:` the function takes a [`TestDb`] instead (for CLI tests that need no server).
#[macro_export]
macro_rules! both_backends {
    (db: $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some(db) = $crate::helpers::TestDb::new($crate::helpers::Backend::Sqlite).await {
                    super::$name(db).await
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = $crate::helpers::TestDb::new($crate::helpers::Backend::Postgres).await {
                    super::$name(db).await
                }
            }
        }
    )+};
    (backend: $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )+};
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some(app) = $crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await {
                    super::$name(app).await
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = $crate::helpers::spawn_app($crate::helpers::Backend::Postgres).await {
                    super::$name(app).await
                }
            }
        }
    )+};
}

static SKIP_NOTICE: Once = Once::new();

/// A fresh, empty database, removed when dropped.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    _dir: Option<TempDir>,
    pg: Option<(String, String)>,
}

impl TestDb {
    /// `None` when the backend is PostgreSQL and `TEST_DATABASE_URL` is unset (the test
    /// is then skipped, with one line saying so), unless `GATEHOUSE_REQUIRE_POSTGRES` is set.
    pub async fn new(backend: Backend) -> Option<Self> {
        gatehouse::telemetry::init_for_tests();
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Some(Self {
                    backend,
                    url,
                    _dir: Some(dir),
                    pg: None,
                })
            }
            Backend::Postgres => {
                let Ok(admin) = std::env::var("TEST_DATABASE_URL") else {
                    if std::env::var_os("GATEHOUSE_REQUIRE_POSTGRES").is_some() {
                        panic!("GATEHOUSE_REQUIRE_POSTGRES is set but TEST_DATABASE_URL is not");
                    }
                    SKIP_NOTICE.call_once(|| {
                        // Straight to the stderr handle: the harness captures eprintln!.
                        let _ = writeln!(
                            std::io::stderr(),
                            "note: PostgreSQL cases skipped (TEST_DATABASE_URL is not set)"
                        );
                    });
                    return None;
                };
                let name = format!(
                    "gh_test_{}",
                    gatehouse::crypto::random::base62(16).to_lowercase()
                );
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to TEST_DATABASE_URL");
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let _ = conn.close().await;
                let mut url = url::Url::parse(&admin).expect("TEST_DATABASE_URL is a URL");
                url.set_path(&format!("/{name}"));
                Some(Self {
                    backend,
                    url: url.to_string(),
                    _dir: None,
                    pg: Some((admin, name)),
                })
            }
        }
    }

    /// An existing SQLite file (not removed when dropped).
    pub fn sqlite_at(path: &std::path::Path) -> Self {
        Self {
            backend: Backend::Sqlite,
            url: format!("sqlite://{}", path.display()),
            _dir: None,
            pg: None,
        }
    }

    pub async fn store(&self) -> Store {
        let mut cfg = Config::defaults().expect("defaults").database;
        cfg.url = self.url.clone();
        cfg.max_connections = 5;
        let store = Store::connect(&cfg).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            // Drop runs outside async; use a private runtime on its own thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let _ = sqlx::query(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .execute(&mut conn)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

pub struct TestApp {
    /// `http://127.0.0.1:<port>`, which is also the public URL (issuer).
    pub addr: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub clock: Arc<ManualClock>,
    pub config: Config,
    /// Shared by [`TestApp::fresh_browser`] copies; the database goes with the last.
    pub db: Arc<TestDb>,
    /// `http://<addr>` of the separate metrics listener, when `metrics.bind` is set.
    pub metrics_addr: Option<String>,
}

/// Starts the real application on a random port with a fresh database.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Option<TestApp> {
    spawn_app_serving(backend, adjust, None).await
}

/// As [`spawn_app_with`], serving `registry` at `/mcp` instead of the built-in tools.
pub async fn spawn_app_serving(
    backend: Backend,
    adjust: impl FnOnce(&mut Config),
    registry: Option<gatehouse::mcp::tools::Registry>,
) -> Option<TestApp> {
    let db = TestDb::new(backend).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut config = Config::defaults().expect("defaults");
    config.server.bind = ([127, 0, 0, 1], port).into();
    config.server.public_url = format!("http://127.0.0.1:{port}");
    config.database.url = db.url.clone();
    config.database.max_connections = 5;
    // Metering is written quickly so that tests can see it without long waits.
    config.mcp.flush_interval = std::time::Duration::from_millis(50);
    adjust(&mut config);
    let store = db.store().await;
    let clock = ManualClock::new();
    let app = App::from_parts(config.clone(), store.clone(), clock.clone(), listener)
        .await
        .expect("build app");
    let app = match registry {
        Some(r) => app.with_registry(r),
        None => app,
    };
    let metrics_addr = app.metrics_addr().map(|a| format!("http://{a}"));
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .expect("client");
    Some(TestApp {
        addr: format!("http://127.0.0.1:{port}"),
        client,
        store,
        clock,
        config,
        db: Arc::new(db),
        metrics_addr,
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// The same server seen from another browser: no cookies, no session.
    pub fn fresh_browser(&self) -> TestApp {
        TestApp {
            addr: self.addr.clone(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .cookie_store(true)
                .build()
                .expect("client"),
            store: self.store.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
            db: self.db.clone(),
            metrics_addr: self.metrics_addr.clone(),
        }
    }

    /// Runs SQL as another instance (or a database administrator) would: behind the
    /// app's back.
    pub async fn sql(&self, statement: &str) {
        match &self.store {
            Store::Sqlite(pool) => {
                sqlx::query(statement).execute(pool).await.expect("sql");
            }
            Store::Postgres(pool) => {
                sqlx::query(statement).execute(pool).await.expect("sql");
            }
        }
    }

    /// The single number a `SELECT COUNT(*) …` (or similar) returns.
    pub async fn count(&self, statement: &str) -> i64 {
        match &self.store {
            Store::Sqlite(pool) => sqlx::query_scalar(statement).fetch_one(pool).await,
            Store::Postgres(pool) => sqlx::query_scalar(statement).fetch_one(pool).await,
        }
        .expect("count")
    }

    /// The same browser (cookies and all) talking to another instance at `base`.
    pub fn at(&self, base: &str) -> TestApp {
        TestApp {
            addr: base.to_owned(),
            client: self.client.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
            db: self.db.clone(),
            metrics_addr: None,
        }
    }

    /// Starts another instance on this app's database with the same settings and
    /// clock, but its own state (key set, caches, in-memory counters), as a second
    /// process behind a load balancer would have. Returns its base URL.
    pub async fn second_instance(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut config = self.config.clone();
        config.server.bind = ([127, 0, 0, 1], port).into();
        let app = App::from_parts(config, self.store.clone(), self.clock.clone(), listener)
            .await
            .expect("build second instance");
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        format!("http://127.0.0.1:{port}")
    }
}

/// Output of one run of the real `gatehouse` binary.
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn failed(self) -> Self {
        assert_ne!(self.code, 0, "expected failure\nstdout: {}", self.stdout);
        assert!(!self.stderr.trim().is_empty(), "a failure must say why");
        self
    }
}

/// Creates the first owner (`owner@example.com`, organization `default`) on a migrated
/// database; returns their API key.
pub async fn seed_owner(store: &Store) -> String {
    let key = gatehouse::crypto::PlainToken::generate(gatehouse::crypto::TokenKind::ApiKey);
    store
        .create_initial_owner(
            &gatehouse::domain::Email::parse("owner@example.com").expect("email"),
            &key.hash(),
            1,
        )
        .await
        .expect("create owner")
        .expect("empty database");
    key.expose().to_owned()
}

/// A PAT named `agent` for `user` in `org`, created through the CLI; its `--json` output
/// (`id`, `token`, `scopes`, …).
pub async fn cli_pat(db: &TestDb, org: &str, user: &str, scopes: &str) -> serde_json::Value {
    cli(
        db,
        &[
            "--json", "pat", "create", "--org", org, "--user", user, "--name", "agent", "--scopes",
            scopes,
        ],
        None,
    )
    .await
    .ok()
    .json()
}

pub fn gatehouse_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

/// Runs `gatehouse <args>` against `db`, with `stdin` fed to it.
pub async fn cli(db: &TestDb, args: &[&str], stdin: Option<&str>) -> CliOutput {
    cli_env(db, args, stdin, &[]).await
}

pub async fn cli_env(
    db: &TestDb,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> CliOutput {
    let mut cmd = tokio::process::Command::new(gatehouse_bin());
    cmd.args(args)
        .env_clear()
        .env("GATEHOUSE__DATABASE__URL", &db.url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn gatehouse");
    if let Some(mut handle) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        if let Some(input) = stdin {
            handle.write_all(input.as_bytes()).await.expect("stdin");
        }
    }
    let out = child.wait_with_output().await.expect("wait");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
