//! What every handler can reach. No globals: tests build as many of these as they like.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::config::Config;
use crate::crypto::jwt::{self, AccessClaims, JwtError};
use crate::crypto::keys::{self, Kek, KeyError, KeySet};
use crate::crypto::mac::{MacKey, random_key_b64};
use crate::crypto::random;
use crate::domain::ResourceUri;
use crate::limits::LocalCounter;
use crate::mcp::auth::TokenCache;
use crate::mcp::guard::OriginGuard;
use crate::mcp::meter::Meter;
use crate::mcp::tools::{ExtraTools, Registry};
use crate::metrics::Metrics;
use crate::oauth::clients::ClientCache;
use crate::storage::{StorageError, Store};

/// What every handler gets. Axum clones it for each request (and each middleware that
/// extracts it), so it is one shared pointer.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Replaces the tools `/mcp` serves (before serving starts).
    pub fn set_tools(&mut self, tools: Arc<Registry>) {
        Arc::make_mut(&mut self.0).tools = tools;
    }
}

#[derive(Clone)]
pub struct Shared {
    pub store: Store,
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
    /// Access-token signing and verification keys, following the database.
    pub keys: Arc<KeyRing>,
    /// Shared by every instance: signs session cookies and CSRF tokens.
    pub mac: MacKey,
    /// `<public_url>/mcp`, the audience of every access token.
    pub resource: ResourceUri,
    /// Client ID Metadata Documents fetched recently, by URL.
    pub cimd_cache: Arc<ClientCache>,
    /// Stored clients read recently by the token endpoint's client authentication.
    pub client_cache: Arc<ClientCache>,
    /// Bearer tokens already verified by `/mcp`.
    pub token_cache: Arc<TokenCache>,
    /// The tools, prompts and resources `/mcp` serves.
    pub tools: Arc<Registry>,
    /// The gateway's upstream tools, served after `tools`.
    pub extra_tools: Arc<ExtraTools>,
    /// Host and Origin checks for `/mcp`.
    pub mcp_guard: Arc<OriginGuard>,
    /// Tool-call metering, last-used times and audit rows waiting to be written.
    pub meter: Arc<Meter>,
    /// What `GET /metrics` reports.
    pub metrics: Arc<Metrics>,
    /// `/mcp` requests per credential, merged into the shared counters by the writer.
    pub mcp_limits: Arc<LocalCounter>,
    /// The legacy SSE streams this instance holds.
    pub sse: Arc<crate::mcp::sse::Sessions>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
}

/// The signing keys as last read from the database. Every instance follows the table:
/// it reloads periodically (so a key rotated in by the CLI or another instance starts
/// signing here too) and at once when a token names a key it does not know.
pub struct KeyRing {
    set: RwLock<Arc<KeySet>>,
    kek: Kek,
    /// When a token last made us reload (`None`: never).
    loaded: Mutex<Option<Instant>>,
}

/// Reloads for unknown `kid`s at most this often, so forged kids cannot hammer the database.
const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(1);

impl KeyRing {
    pub fn current(&self) -> Arc<KeySet> {
        match self.set.read() {
            Ok(set) => set.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the keys again from the database.
    pub async fn reload(&self, store: &Store) -> Result<(), StateError> {
        let stored = store.list_signing_keys().await?;
        let fresh = Arc::new(KeySet::from_stored(&stored, &self.kek)?);
        let changed = self.current().signing().kid != fresh.signing().kid;
        match self.set.write() {
            Ok(mut set) => *set = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        if changed {
            tracing::info!(kid = %self.current().signing().kid, "signing key changed");
        }
        Ok(())
    }

    /// Verifies an access token, reloading the keys once if it names an unknown one.
    pub async fn verify(
        &self,
        store: &Store,
        token: &str,
        issuer: &str,
        audience: &str,
        now: i64,
    ) -> Result<AccessClaims, JwtError> {
        match jwt::verify(&self.current(), token, issuer, audience, now) {
            Err(JwtError::UnknownKey) if self.may_reload() => {
                if let Ok(mut at) = self.loaded.lock() {
                    *at = Some(Instant::now());
                }
                if let Err(e) = self.reload(store).await {
                    tracing::warn!(error = %e, "could not reload signing keys");
                }
                jwt::verify(&self.current(), token, issuer, audience, now)
            }
            other => other,
        }
    }

    fn may_reload(&self) -> bool {
        self.loaded
            .lock()
            .map(|at| at.is_none_or(|at| at.elapsed() >= RELOAD_AT_MOST_EVERY))
            .unwrap_or(false)
    }
}

/// The cookie and CSRF MAC secret shared by every instance, stored sealed; created on
/// first use, and sealed on first start if an older version stored it in clear.
async fn cookie_secret(store: &Store, kek: &Kek, now: i64) -> Result<String, StateError> {
    const NAME: &str = "cookie_mac";
    let purpose = "server-secret:cookie_mac";
    let candidate = kek.seal(purpose, random_key_b64().as_bytes())?;
    let stored = store.shared_secret(NAME, &candidate, now).await?;
    match kek.open(purpose, &stored)? {
        Some(plain) => String::from_utf8(plain).map_err(|_| KeyError::Corrupt(NAME.into()).into()),
        None => {
            store
                .set_shared_secret(NAME, &kek.seal(purpose, stored.as_bytes())?)
                .await?;
            tracing::info!("cookie secret sealed under the key-encryption key");
            Ok(stored)
        }
    }
}

impl AppState {
    /// Loads (creating on first start) the signing key and the shared cookie secret.
    pub async fn load(
        store: Store,
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StateError> {
        let now = clock.now();
        let kek = &config.keys.kek.clone();
        let mut stored = store.list_signing_keys().await?;
        if !stored.iter().any(|k| k.retired_at.is_none()) {
            store
                .insert_first_signing_key(&keys::generate(random::id("key"), now, kek)?)
                .await?;
            stored = store.list_signing_keys().await?;
        }
        // Keys written before sealing existed are sealed now, once.
        for key in &mut stored {
            if let Some(sealed) = keys::seal_if_clear(key, kek)? {
                store.set_signing_private_key(&key.kid, &sealed).await?;
                tracing::info!(kid = %key.kid, "signing key sealed under the key-encryption key");
                key.private_key = sealed;
            }
        }
        let keys = KeySet::from_stored(&stored, kek)?;
        let secret = cookie_secret(&store, kek, now).await?;
        let resource = ResourceUri::for_public_url(&config.server.public_url);
        let mcp_guard = Arc::new(OriginGuard::new(&config));
        let metrics = Arc::new(Metrics::new(&store));
        Ok(Self(Arc::new(Shared {
            store,
            config: Arc::new(config),
            clock,
            keys: Arc::new(KeyRing {
                set: RwLock::new(Arc::new(keys)),
                kek: kek.clone(),
                loaded: Mutex::new(None),
            }),
            mac: MacKey::from_bytes(secret.as_bytes()),
            resource,
            cimd_cache: Arc::new(crate::oauth::cimd::cache()),
            client_cache: Arc::new(crate::oauth::clients::auth_cache()),
            token_cache: Arc::new(TokenCache::default()),
            tools: Arc::new(Registry::builtin()),
            extra_tools: Arc::default(),
            mcp_guard,
            meter: Arc::new(Meter::default()),
            metrics,
            mcp_limits: Arc::new(LocalCounter::default()),
            sse: Arc::default(),
        })))
    }
}
