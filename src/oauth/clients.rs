//! Finding a client: stored ones, plus Claude's two Client ID Metadata Documents built
//! in (under both their claude.ai and claude.com addresses), so that a blocked fetch of
//! claude.ai, or a 404 from the claude.com alias, never blocks Claude.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::state::AppState;
use crate::storage::{ClientRow, StorageError};

/// Client rows by id, each kept for a while after it was read, at most `max` of them.
pub struct ClientCache {
    entries: Mutex<HashMap<String, (i64, ClientRow)>>,
    ttl_secs: i64,
    max: usize,
}

impl ClientCache {
    pub fn new(ttl_secs: i64, max: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl_secs,
            max,
        }
    }

    pub fn get(&self, id: &str, now: i64) -> Option<ClientRow> {
        let entries = self.entries.lock().ok()?;
        let (at, row) = entries.get(id)?;
        (now - at < self.ttl_secs).then(|| row.clone())
    }

    /// Full, the oldest entry makes room: a scan, but only after a miss, which cost a
    /// fetch or a query anyway.
    pub fn put(&self, row: &ClientRow, now: i64) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.max && !entries.contains_key(&row.id) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                entries.remove(&k);
            }
        }
        entries.insert(row.id.clone(), (now, row.clone()));
    }

    pub fn forget(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(id);
        }
    }
}

/// How long client authentication trusts a registered client's row it has read.
const AUTH_CACHE_SECS: i64 = 60;
const AUTH_CACHE_ENTRIES: usize = 4096;

pub fn auth_cache() -> ClientCache {
    ClientCache::new(AUTH_CACHE_SECS, AUTH_CACHE_ENTRIES)
}

pub const CLAUDE_AI: &str = "https://claude.ai/oauth/mcp-oauth-client-metadata";
pub const CLAUDE_CODE: &str = "https://claude.ai/oauth/claude-code-client-metadata";
/// The same documents under Claude's other host, which has answered 404 before.
pub const CLAUDE_AI_ALIAS: &str = "https://claude.com/oauth/mcp-oauth-client-metadata";
pub const CLAUDE_CODE_ALIAS: &str = "https://claude.com/oauth/claude-code-client-metadata";

fn builtin(id: &str) -> Option<ClientRow> {
    let (name, redirects): (&str, &[&str]) = match id {
        CLAUDE_AI | CLAUDE_AI_ALIAS => (
            "Claude",
            &[
                "https://claude.ai/api/mcp/auth_callback",
                "https://claude.com/api/mcp/auth_callback",
            ],
        ),
        CLAUDE_CODE | CLAUDE_CODE_ALIAS => (
            "Claude Code",
            &["http://localhost/callback", "http://127.0.0.1/callback"],
        ),
        _ => return None,
    };
    Some(ClientRow {
        id: id.to_owned(),
        origin: "cimd".into(),
        name: name.into(),
        redirect_uris: serde_json::to_string(redirects).unwrap_or_default(),
        auth_method: "none".into(),
        secret_hash: None,
        can_introspect: false,
        dedupe_key: None,
        metadata: "{}".into(),
        created_at: 0,
        last_used_at: None,
    })
}

/// [`find_client`] for the token endpoint's client authentication, which runs on every
/// grant: a registered client's row comes from a cache for up to a minute, saving one
/// of the grant's three database round trips. Sound because a stored client's row never
/// changes; it can only be deleted, and deleting it revokes every grant and code it
/// holds in the same transaction, so a row still cached can obtain nothing.
pub async fn find_client_for_grant(
    state: &AppState,
    id: &str,
) -> Result<Option<ClientRow>, StorageError> {
    find(state, id, true).await
}

pub async fn find_client(state: &AppState, id: &str) -> Result<Option<ClientRow>, StorageError> {
    find(state, id, false).await
}

/// Built-in, then metadata document, then stored (through the cache if `cached`).
async fn find(state: &AppState, id: &str, cached: bool) -> Result<Option<ClientRow>, StorageError> {
    if let Some(c) = builtin(id) {
        return Ok(Some(c));
    }
    if id.is_empty() || id.len() > 2000 {
        return Ok(None);
    }
    if id.starts_with("https://") || id.starts_with("http://") {
        return Ok(match super::cimd::resolve(state, id).await {
            Ok(row) => Some(row),
            Err(reason) => {
                tracing::warn!(client.id = %id, reason = %reason, "client metadata document refused");
                None
            }
        });
    }
    if !cached {
        return state.store.find_client(id).await;
    }
    let now = state.clock.now();
    if let Some(row) = state.client_cache.get(id, now) {
        return Ok(Some(row));
    }
    let row = state.store.find_client(id).await?;
    // Unknown ids are not remembered: a client registered a moment later must work.
    if let Some(row) = &row {
        state.client_cache.put(row, now);
    }
    Ok(row)
}

/// Whether the client's identity is vouched for by a domain (CIMD) rather than self-declared.
pub fn is_verified(client: &ClientRow) -> bool {
    client.origin == "cimd" || client.origin == "static"
}

/// The host that vouches for a CIMD client, for the consent page.
pub fn verified_domain(client: &ClientRow) -> Option<String> {
    (client.origin == "cimd")
        .then(|| {
            url::Url::parse(&client.id)
                .ok()?
                .host_str()
                .map(str::to_owned)
        })
        .flatten()
}

/// Deletes dynamically registered clients that never obtained a token within
/// `oauth.unused_client_ttl_secs` of registering, or whose last token is older than
/// `oauth.idle_client_ttl_secs`, revoking anything still issued to them. Returns how
/// many went. Safe to run on several instances at once: a client deleted by another is
/// simply not found.
pub async fn collect_unused(state: &AppState) -> Result<usize, StorageError> {
    let now = state.clock.now();
    let cfg = &state.config.oauth;
    if cfg.unused_client_ttl_secs.is_none() && cfg.idle_client_ttl_secs.is_none() {
        return Ok(0);
    }
    let mut removed = 0;
    loop {
        let batch = state
            .store
            .collectable_clients(
                cfg.unused_client_ttl_secs.map(|t| now - t),
                cfg.idle_client_ttl_secs.map(|t| now - t),
                500,
            )
            .await?;
        let full = batch.len() == 500;
        for (id, never_used) in batch {
            let reason = if never_used { "unused" } else { "idle" };
            let audit = crate::storage::AuditEntry::new(now, "system", "client.collected")
                .target(format!("client:{id}"))
                .detail(serde_json::json!({ "reason": reason }));
            match state.store.delete_client(&id, now, audit).await {
                Ok(()) => {
                    state.client_cache.forget(&id);
                    removed += 1;
                }
                Err(StorageError::NotFound) => {} // another instance got there first
                Err(e) => return Err(e),
            }
        }
        if !full {
            return Ok(removed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> ClientRow {
        let mut row = builtin(CLAUDE_AI).expect("a built-in client");
        row.id = id.to_owned();
        row
    }

    #[test]
    fn the_cache_forgets_after_its_ttl_and_evicts_the_oldest_when_full() {
        let cache = ClientCache::new(60, 2);
        cache.put(&row("a"), 100);
        cache.put(&row("b"), 110);
        assert_eq!(cache.get("a", 159).map(|r| r.id), Some("a".into()));
        assert!(cache.get("a", 160).is_none(), "expired after 60 s");
        cache.put(&row("c"), 120);
        assert!(cache.get("a", 121).is_none(), "the oldest made room");
        assert!(cache.get("b", 121).is_some() && cache.get("c", 121).is_some());
        cache.put(&row("b"), 130);
        assert!(
            cache.get("c", 131).is_some(),
            "refreshing a present entry evicts nothing"
        );
        cache.forget("b");
        assert!(cache.get("b", 131).is_none());
    }
}
