//! `POST /revoke` (RFC 7009): refresh tokens (their whole family), access tokens (by
//! `jti`) and personal access tokens. Unknown tokens get 200, as the RFC requires.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::client_auth::{Lookup, authenticate};
use super::error::OAuthError;
use super::form::FormParams;
use crate::crypto::{HashedToken, PlainToken, TokenKind};
use crate::limits::ClientAddr;
use crate::state::AppState;
use crate::storage::AuditEntry;

pub async fn post_revoke(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    FormParams(params): FormParams,
) -> Result<Response, OAuthError> {
    let get = |name: &str| params.get(name);
    let token = params.require("token")?;
    let client = authenticate(
        &state,
        addr,
        &headers,
        get("client_id"),
        get("client_secret"),
        Lookup::Fresh,
    )
    .await?;
    let now = state.clock.now();
    let audit = |action: &str| AuditEntry::new(now, format!("client:{}", client.id), action);
    match TokenKind::of(token) {
        Some(TokenKind::Refresh) => {
            if let Ok(t) = PlainToken::parse(TokenKind::Refresh, token) {
                state
                    .store
                    .revoke_refresh_token(
                        t.hash().as_str(),
                        Some(&client.id),
                        now,
                        audit("oauth.refresh_token_revoked"),
                    )
                    .await?;
            }
        }
        Some(TokenKind::Pat) => {
            if let Ok(t) = PlainToken::parse(TokenKind::Pat, token)
                && let Some(pat) = state.store.find_pat_by_hash(&t.hash(), now).await?
            {
                state
                    .store
                    .revoke_pat(&pat.id, now, audit("pat.revoke"))
                    .await?;
            }
        }
        _ => {
            // An access token: only ours count, checked by signature; its jti is then denied.
            let issuer = &state.config.server.public_url;
            if let Ok(claims) = state
                .keys
                .verify(&state.store, token, issuer, state.resource.as_str(), now)
                .await
                && claims.client_id == client.id
            {
                let jti = HashedToken::of(&claims.jti);
                state
                    .store
                    .revoke_access_token(
                        jti.as_str(),
                        now,
                        audit("oauth.access_token_revoked").org(&claims.org),
                    )
                    .await?;
            }
        }
    }
    let mut res = StatusCode::OK.into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
