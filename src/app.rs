//! Builds the application from a [`Config`] and serves it until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::mcp::tools::Registry;
use crate::routes;
use crate::state::AppState;
use crate::storage::{JobKey, StorageError, Store};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("database: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    State(#[from] crate::state::StateError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// Reads the `[[upstream]]` tables again (for SIGHUP); an error names the key.
pub type UpstreamLoader =
    Box<dyn Fn() -> Result<Vec<crate::config::UpstreamConfig>, String> + Send + Sync>;

pub struct App {
    /// Set by `gatehouse serve`: SIGHUP then reloads the upstreams through it.
    reload: Option<UpstreamLoader>,
    listener: TcpListener,
    state: AppState,
    addr: SocketAddr,
    /// The separate `/metrics` listener (`metrics.bind`), when configured.
    metrics_listener: Option<(TcpListener, SocketAddr)>,
}

impl App {
    /// Connects and migrates the database, then binds the listener (port 0 is fine).
    pub async fn build(config: Config) -> Result<Self, AppError> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, AppError> {
        let store = Store::connect(&config.database).await?;
        store.migrate().await?;
        Self::build_with_store(config, store, clock).await
    }

    pub async fn build_with_store(
        config: Config,
        store: Store,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AppError> {
        let listener = TcpListener::bind(config.server.bind)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.server.bind,
                source,
            })?;
        Self::from_parts(config, store, clock, listener).await
    }

    /// Assembles an app around a listener bound by the caller, so that a test can learn
    /// its port before choosing the public URL.
    pub async fn from_parts(
        config: Config,
        store: Store,
        clock: Arc<dyn Clock>,
        listener: TcpListener,
    ) -> Result<Self, AppError> {
        let addr = listener.local_addr().map_err(AppError::Serve)?;
        let metrics_listener = match config.metrics.bind.filter(|_| config.metrics.enabled) {
            Some(bind) => {
                let l = TcpListener::bind(bind)
                    .await
                    .map_err(|source| AppError::Bind { addr: bind, source })?;
                let a = l.local_addr().map_err(AppError::Serve)?;
                Some((l, a))
            }
            None => None,
        };
        let state = AppState::load(store, config, clock).await?;
        Ok(Self {
            reload: None,
            listener,
            state,
            addr,
            metrics_listener,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served when `metrics.bind` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, a)| *a)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves these tools, prompts and resources at `/mcp` instead of the built-in set
    /// (start from [`Registry::builtin`] to keep the account tools).
    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.state.set_tools(Arc::new(registry));
        self
    }

    /// Makes SIGHUP re-read the upstreams through `loader` while serving.
    pub fn reload_upstreams_with(mut self, loader: UpstreamLoader) -> Self {
        self.reload = Some(loader);
        self
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let store = self.state.store.clone();
        let meter = self.state.meter.clone();
        if self.state.config.keys.kek.is_development() {
            tracing::warn!(
                "no key-encryption key is set (keys.encryption_key): the signing keys are sealed with the public development key, which protects nothing; production mode refuses this"
            );
        }
        if let Some(scopes) = &self.state.config.mcp.anonymous_scopes {
            tracing::warn!(
                scopes = %scopes,
                "anonymous access is on: /mcp requests without a token act with these scopes (mcp.anonymous_scopes)"
            );
        }
        let feed = tokio::spawn(follow_credential_changes(self.state.clone()));
        let relay = (!self.state.config.mcp.sse_paths.is_empty())
            .then(|| tokio::spawn(crate::mcp::sse::follow_relay(self.state.clone())));
        let sse = self.state.sse.clone();
        let (stop_writer, stopped) = tokio::sync::oneshot::channel();
        let writer = tokio::spawn(background_writer(
            self.state.clone(),
            self.state.config.mcp.flush_interval,
            stopped,
        ));
        // The registry is final now (`with_registry` may have replaced it).
        self.state
            .metrics
            .mcp
            .export_tools(self.state.tools.tool_stats());
        // Upstreams start before serving, so the first tools/list already has them (a
        // slow or broken one is waited for at most a few seconds, never fatally).
        let gateway = if self.state.config.gateway.upstreams.is_empty() && self.reload.is_none() {
            None
        } else {
            Some(Arc::new(
                crate::gateway::Gateway::start(self.state.clone()).await,
            ))
        };
        let reloader = match (self.reload, &gateway) {
            (Some(loader), Some(g)) => Some(tokio::spawn(reload_on_sighup(loader, g.clone()))),
            _ => None,
        };
        let metrics_server = self.metrics_listener.map(|(listener, _)| {
            let router = routes::metrics_router(self.state.clone());
            tokio::spawn(async move {
                let serve = axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                );
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            })
        });
        let grace = self.state.config.server.shutdown_timeout;
        let app = routes::router(self.state);
        // The drain is bounded: a client that never finishes its request must not keep
        // the process alive past the orchestrator's patience (it would SIGKILL us).
        let (stopping, mut stop_seen) = tokio::sync::watch::channel(false);
        let serve = axum::serve(
            self.listener,
            axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
                SocketAddr,
            >(app),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Open SSE streams would hold the drain until its timeout.
            sse.close_all();
            let _ = stopping.send(true);
        });
        tokio::select! {
            served = serve => served.map_err(AppError::Serve)?,
            _ = async {
                let _ = stop_seen.wait_for(|s| *s).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(
                    waited_secs = grace.as_secs(),
                    "requests still in flight after server.shutdown_timeout_secs; closing them"
                );
            }
        }
        // The writer finishes its batch, then writes what the last requests metered,
        // before the pool closes.
        feed.abort();
        if let Some(r) = relay {
            r.abort();
        }
        if let Some(m) = metrics_server {
            m.abort();
        }
        if let Some(r) = reloader {
            r.abort();
        }
        if let Some(g) = gateway {
            g.shutdown().await;
        }
        let _ = stop_writer.send(());
        let _ = writer.await;
        if let Err(e) = meter.flush(&store).await {
            tracing::warn!(error = %e, "could not write the last metering batch");
        }
        store.close().await;
        Ok(())
    }
}

/// Re-reads the upstreams on each SIGHUP. A configuration that no longer checks is
/// logged with its key and changes nothing.
async fn reload_on_sighup(loader: UpstreamLoader, gateway: Arc<crate::gateway::Gateway>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; upstreams are read only at start");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reading the upstreams again");
            match loader() {
                Ok(upstreams) => gateway.reload(&upstreams).await,
                Err(e) => {
                    tracing::error!(error = %e, "configuration not reloaded; the upstreams stay as they were");
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (loader, gateway);
    }
}

/// Keeps the bearer-token cache in step with revocations and organization changes made
/// by any instance (or the CLI): a few reads a second, so that a cached token never
/// outlives its revocation by more than a second.
async fn follow_credential_changes(state: AppState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        // Every 30 s: a key rotated by the CLI or another instance starts signing here.
        if ticks % 120 == 0
            && let Err(e) = state.keys.reload(&state.store).await
        {
            tracing::warn!(error = %e, "could not reload signing keys");
        }
        match state.token_cache.sync(&state.store).await {
            Ok(_) if failing => {
                tracing::info!("credential change feed is back; cached tokens trusted again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "credential change feed unavailable; cached tokens are re-checked one by one");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Writes metering, last-used times and audit rows every `interval`, and runs
/// [`housekeeping`] about once an hour.
async fn background_writer(
    state: AppState,
    interval: std::time::Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let purge_every = (3_600_000 / interval.as_millis().max(1)).max(1);
    let mut ticks: u128 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        ticks += 1;
        if let Err(e) = state.meter.flush(&state.store).await {
            tracing::warn!(error = %e, "metering batch not written; will retry");
        }
        if let Some(rate) = state.config.limits.mcp_per_credential
            && let Err(e) = state
                .mcp_limits
                .sync(&state.store, rate, state.clock.now())
                .await
        {
            tracing::warn!(error = %e, "/mcp rate counters not shared; will retry");
        }
        // Housekeeping: on the first tick (so a restart catches up), then hourly, by one
        // instance at a time (the others skip the round).
        if ticks == 1 || ticks % purge_every == 0 {
            match state.store.try_job_lock(JobKey::Housekeeping).await {
                Ok(Some(_held)) => housekeeping(&state).await,
                Ok(None) => tracing::debug!("housekeeping is running on another instance"),
                Err(e) => tracing::warn!(error = %e, "could not claim housekeeping"),
            }
        }
    }
}

/// Deletes what has expired or gone unused: codes, access-token ids and refresh tokens
/// an hour past expiry, idempotency keys, old credential changes and rate counters, and
/// registered clients that never got a token or went idle.
async fn housekeeping(state: &AppState) {
    match crate::oauth::clients::collect_unused(state).await {
        Ok(n) if n > 0 => tracing::info!(removed = n, "unused registered clients deleted"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not collect unused clients"),
    }
    // An hour past expiry, so clock skew between instances never matters.
    let now = state.clock.now();
    let tokens_before = now - 3600;
    let codes_before = tokens_before - state.config.tokens.access_ttl_secs;
    match state
        .store
        .purge_expired_grants(tokens_before, codes_before)
        .await
    {
        Ok(n) if n > 0 => tracing::info!(removed = n, "expired codes and tokens removed"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not remove expired codes and tokens"),
    }
    let before = now - 24 * 3600;
    match state.store.purge_idempotency(before).await {
        Ok(n) if n > 0 => tracing::info!(removed = n, "expired idempotency keys removed"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not purge idempotency keys"),
    }
    if let Err(e) = state.store.purge_credential_changes(3600).await {
        tracing::warn!(error = %e, "could not purge old credential changes");
    }
    // Two days: the longest limit window is one, and its predecessor still counts.
    if let Err(e) = state.store.purge_rate_counters(before - 24 * 3600).await {
        tracing::warn!(error = %e, "could not purge old rate counters");
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called (not
/// when first polled), so a signal that arrives during start-up is not lost.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {},
                _ = wait(int) => {},
            }
            tracing::info!("shutdown requested; finishing in-flight requests");
        }
    }
    #[cfg(not(unix))]
    async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested; finishing in-flight requests");
    }
}
