//! What every handler can reach. No globals: tests build as many of these as they like.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::clock::Clock;
use crate::config::Config;
use crate::crypto::keys::{self, KeyError, KeySet};
use crate::crypto::mac::{MacKey, random_key_b64};
use crate::crypto::random;
use crate::domain::ResourceUri;
use crate::mcp::auth::TokenCache;
use crate::mcp::guard::OriginGuard;
use crate::mcp::meter::Meter;
use crate::mcp::tools::Registry;
use crate::storage::{ClientRow, StorageError, Store};

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
    /// Access-token signing and verification keys, loaded at start.
    pub keys: Arc<KeySet>,
    /// Shared by every instance: signs session cookies and CSRF tokens.
    pub mac: MacKey,
    /// `<public_url>/mcp`, the audience of every access token.
    pub resource: ResourceUri,
    /// Client ID Metadata Documents fetched recently, by URL, with the fetch time.
    pub cimd_cache: Arc<Mutex<HashMap<String, (i64, ClientRow)>>>,
    /// Bearer tokens already verified by `/mcp`.
    pub token_cache: Arc<TokenCache>,
    /// The tools, prompts and resources `/mcp` serves.
    pub tools: Arc<Registry>,
    /// Host and Origin checks for `/mcp`.
    pub mcp_guard: Arc<OriginGuard>,
    /// Tool-call metering, last-used times and audit rows waiting to be written.
    pub meter: Arc<Meter>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
}

impl AppState {
    /// Loads (creating on first start) the signing key and the shared cookie secret.
    pub async fn load(
        store: Store,
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StateError> {
        let now = clock.now();
        let mut stored = store.list_signing_keys().await?;
        if !stored.iter().any(|k| k.retired_at.is_none()) {
            store
                .insert_signing_key(&keys::generate(random::id("key"), now)?)
                .await?;
            stored = store.list_signing_keys().await?;
        }
        let keys = KeySet::from_stored(&stored)?;
        let secret = store
            .shared_secret("cookie_mac", &random_key_b64(), now)
            .await?;
        let resource = ResourceUri::for_public_url(&config.server.public_url);
        let mcp_guard = Arc::new(OriginGuard::new(&config));
        Ok(Self {
            store,
            config: Arc::new(config),
            clock,
            keys: Arc::new(keys),
            mac: MacKey::from_bytes(secret.as_bytes()),
            resource,
            cimd_cache: Arc::new(Mutex::new(HashMap::new())),
            token_cache: Arc::new(TokenCache::default()),
            tools: Arc::new(Registry::builtin()),
            mcp_guard,
            meter: Arc::new(Meter::default()),
        })
    }
}
