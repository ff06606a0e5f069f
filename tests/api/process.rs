//! `gatehouse serve` as a real process, for what only a process shows: signals, several
//! instances on one database, and everything it prints.

use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::helpers::{TestApp, TestDb, gatehouse_bin};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How to start one `gatehouse serve`: a clean environment, the test database, a free
/// loopback port and `warn` logs unless told otherwise.
pub struct Serve {
    env: Vec<(String, String)>,
    port: u16,
    public_url: Option<String>,
}

/// A running `gatehouse serve`; killed when dropped. Its stdout and stderr are read all
/// along (so it never blocks on a full pipe) and kept for [`Served::output`].
pub struct Served {
    pub base: String,
    pub port: u16,
    child: tokio::process::Child,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Serve {
    pub fn new(db: &TestDb) -> Self {
        Self {
            env: vec![
                ("GATEHOUSE__DATABASE__URL".into(), db.url.clone()),
                ("GATEHOUSE__DATABASE__MAX_CONNECTIONS".into(), "4".into()),
                ("GATEHOUSE__LOG__FILTER".into(), "warn".into()),
            ],
            port: free_port(),
            public_url: None,
        }
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// The URL every instance publishes (issuer, audience), as behind a load balancer;
    /// by default the instance's own address.
    pub fn public_url(mut self, url: &str) -> Self {
        self.public_url = Some(url.to_owned());
        self
    }

    /// The address it will listen on.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process and waits until it answers `/healthz`.
    pub async fn start(self) -> Served {
        let base = self.base();
        let mut cmd = tokio::process::Command::new(gatehouse_bin());
        cmd.arg("serve")
            .env_clear()
            .env(
                "GATEHOUSE__SERVER__BIND",
                format!("127.0.0.1:{}", self.port),
            )
            .env(
                "GATEHOUSE__SERVER__PUBLIC_URL",
                self.public_url.as_deref().unwrap_or(&base),
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn gatehouse serve");
        let output = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), output.clone());
        collect(child.stderr.take().unwrap(), output.clone());
        let mut served = Served {
            base,
            port: self.port,
            child,
            output,
        };
        let probe = reqwest::Client::new();
        for _ in 0..300 {
            if probe
                .get(format!("{}/healthz", served.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return served;
            }
            if let Ok(Some(status)) = served.child.try_wait() {
                panic!("gatehouse serve exited ({status}): {}", served.output());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("gatehouse serve did not answer: {}", served.output());
    }
}

fn collect(
    mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) {
    tokio::spawn(async move {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
}

impl Served {
    /// Sends `signal` ("TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("process still running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Waits for the process to end, at most `limit`; the output is then complete.
    pub async fn exit(&mut self, limit: Duration) -> ExitStatus {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("still running after {limit:?}: {}", self.output()))
            .unwrap();
        // The readers finish once the pipes close, a moment after the exit.
        tokio::time::sleep(Duration::from_millis(100)).await;
        status
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(&mut self) {
        self.signal("TERM");
        let status = self.exit(Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "SIGTERM ends the server cleanly: {status}"
        );
    }

    /// Everything printed so far, stdout and stderr interleaved.
    pub fn output_bytes(&self) -> Vec<u8> {
        self.output.lock().unwrap().clone()
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output_bytes()).into_owned()
    }
}

/// A [`TestApp`] whose requests go to `served` (its store opens the same database), so
/// the flow helpers drive a real process. Point it elsewhere with [`TestApp::at`].
pub async fn app_for(served: &Served, db: TestDb) -> TestApp {
    TestApp {
        addr: served.base.clone(),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_store(true)
            .build()
            .unwrap(),
        store: db.store().await,
        clock: gatehouse::clock::ManualClock::new(),
        config: gatehouse::config::Config::defaults().unwrap(),
        db: Arc::new(db),
        metrics_addr: None,
    }
}
