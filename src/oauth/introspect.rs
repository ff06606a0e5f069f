//! `POST /introspect` (RFC 7662), for authenticated clients allowed to introspect
//! (operator-registered confidential clients).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::client_auth::{Lookup, authenticate};
use super::error::{ErrorCode, OAuthError};
use super::form::FormParams;
use crate::crypto::{HashedToken, PlainToken, TokenKind};
use crate::limits::ClientAddr;
use crate::state::AppState;

pub async fn post_introspect(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    FormParams(params): FormParams,
) -> Result<Response, OAuthError> {
    let get = |name: &str| params.get(name);
    let client = authenticate(
        &state,
        addr,
        &headers,
        get("client_id"),
        get("client_secret"),
        Lookup::Fresh,
    )
    .await?;
    // A public client proves nothing by naming itself: no authentication, no answer
    // (RFC 7662 §2.1, §2.3), and no hint whether the token is live.
    if client.auth_method == "none" {
        return Err(OAuthError::invalid_client(
            "introspection requires client authentication",
            false,
        ));
    }
    if !client.can_introspect {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "this client may not introspect tokens",
        ));
    }
    let token = params.require("token")?;
    let now = state.clock.now();
    let inactive = json!({ "active": false });
    let issuer = &state.config.server.public_url;
    let body = match TokenKind::of(token) {
        Some(TokenKind::Refresh) => match PlainToken::parse(TokenKind::Refresh, token) {
            Ok(t) => match state
                .store
                .find_live_refresh_token(t.hash().as_str(), now)
                .await?
            {
                Some(r) => json!({
                    "active": true, "token_type": "refresh_token", "scope": r.scopes, "client_id": r.client_id,
                    "sub": r.user_id, "org": r.org_id, "exp": r.expires_at, "iat": r.created_at, "aud": r.resource, "iss": issuer,
                }),
                None => inactive,
            },
            Err(_) => inactive,
        },
        Some(TokenKind::Pat) => match PlainToken::parse(TokenKind::Pat, token) {
            Ok(t) => match state.store.find_pat_by_hash(&t.hash(), now).await? {
                Some(p) => json!({
                    "active": true, "token_type": "personal_access_token", "scope": p.scopes, "sub": p.user_id,
                    "org": p.org_id, "exp": p.expires_at, "iat": p.created_at, "aud": state.resource.as_str(), "iss": issuer,
                }),
                None => inactive,
            },
            Err(_) => inactive,
        },
        _ => match state
            .keys
            .verify(&state.store, token, issuer, state.resource.as_str(), now)
            .await
        {
            Ok(c)
                if !state
                    .store
                    .is_access_token_revoked(HashedToken::of(&c.jti).as_str())
                    .await? =>
            {
                json!({
                    "active": true, "token_type": "Bearer", "scope": c.scope, "client_id": c.client_id, "sub": c.sub,
                    "org": c.org, "exp": c.exp, "iat": c.iat, "aud": c.aud, "iss": c.iss, "jti": c.jti,
                })
            }
            _ => inactive,
        },
    };
    let mut res = axum::Json(body).into_response();
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(res)
}
