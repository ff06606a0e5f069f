//! Finding a client: stored ones, plus Claude's two Client ID Metadata Documents built
//! in, so that a blocked fetch of claude.ai never blocks Claude.

use crate::state::AppState;
use crate::storage::{ClientRow, StorageError};

pub const CLAUDE_AI: &str = "https://claude.ai/oauth/mcp-oauth-client-metadata";
pub const CLAUDE_CODE: &str = "https://claude.ai/oauth/claude-code-client-metadata";

fn builtin(id: &str) -> Option<ClientRow> {
    let (name, redirects): (&str, &[&str]) = match id {
        CLAUDE_AI => (
            "Claude",
            &[
                "https://claude.ai/api/mcp/auth_callback",
                "https://claude.com/api/mcp/auth_callback",
            ],
        ),
        CLAUDE_CODE => (
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

pub async fn find_client(state: &AppState, id: &str) -> Result<Option<ClientRow>, StorageError> {
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
    state.store.find_client(id).await
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
                Ok(()) => removed += 1,
                Err(StorageError::NotFound) => {} // another instance got there first
                Err(e) => return Err(e),
            }
        }
        if !full {
            return Ok(removed);
        }
    }
}
