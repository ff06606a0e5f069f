//! Bearer authentication for `/mcp`: OAuth access tokens (JWTs signed by our own keys)
//! and personal access tokens. Verified tokens are cached by digest; a cached entry is
//! re-checked against revocations at most a second after its last check.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::crypto::jwt;
use crate::crypto::{HashedToken, PlainToken, TokenKind};
use crate::domain::ScopeSet;
use crate::state::AppState;

const CACHE_ENTRIES: usize = 10_000;
const RECHECK: Duration = Duration::from_secs(1);

/// Who is calling, and with what rights.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub org_id: String,
    pub scopes: ScopeSet,
    /// The OAuth client, for access tokens; `None` for a personal access token.
    pub client_id: Option<String>,
    pub expires_at: Option<i64>,
}

struct Cached {
    principal: Principal,
    /// What to look up again to see whether the token was revoked.
    revocation_key: String,
    checked: Instant,
}

/// Verified tokens by the SHA-256 of the token.
#[derive(Default)]
pub struct TokenCache(Mutex<HashMap<String, Cached>>);

pub enum BearerError {
    Missing,
    Invalid(&'static str),
    InsufficientScope(ScopeSet),
    /// The caller's organization is suspended: refused everywhere.
    Suspended,
    Unavailable,
}

fn challenge(state: &AppState, extra: &str) -> HeaderValue {
    let scopes: Vec<&str> = crate::domain::scope::BUILTIN_SCOPES
        .iter()
        .take(2)
        .map(|(s, _)| *s)
        .collect();
    let value = format!(
        "Bearer resource_metadata=\"{}{}\", scope=\"{}\"{extra}",
        state.config.server.public_url,
        super::metadata::PATH_SUFFIXED,
        scopes.join(" ")
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

impl BearerError {
    pub fn into_response(self, state: &AppState) -> Response {
        let (status, header_value, message) = match self {
            Self::Missing => (
                StatusCode::UNAUTHORIZED,
                challenge(state, ""),
                "authorization required".to_owned(),
            ),
            Self::Invalid(why) => (
                StatusCode::UNAUTHORIZED,
                challenge(
                    state,
                    &format!(", error=\"invalid_token\", error_description=\"{why}\""),
                ),
                why.to_owned(),
            ),
            Self::InsufficientScope(needed) => {
                let value = format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{needed}\", resource_metadata=\"{}{}\", error_description=\"this tool needs more permissions\"",
                    state.config.server.public_url,
                    super::metadata::PATH_SUFFIXED
                );
                (
                    StatusCode::FORBIDDEN,
                    HeaderValue::from_str(&value)
                        .unwrap_or_else(|_| HeaderValue::from_static("Bearer")),
                    format!("insufficient scope: needs {needed}"),
                )
            }
            Self::Suspended => (
                StatusCode::FORBIDDEN,
                HeaderValue::from_static(
                    "Bearer error=\"insufficient_scope\", error_description=\"organization suspended\"",
                ),
                "this organization is suspended".to_owned(),
            ),
            Self::Unavailable => {
                let mut res = crate::http::json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "try again shortly",
                );
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                return res;
            }
        };
        let body = serde_json::json!({ "jsonrpc": "2.0", "id": null, "error": { "code": -32001, "message": message } });
        let mut res = (status, axum::Json(body)).into_response();
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header_value);
        res
    }
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, BearerError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| BearerError::Invalid("malformed Authorization header"))?;
    match v.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(BearerError::Invalid(
            "expected Authorization: Bearer <token>",
        )),
    }
}

/// Authenticates a request; `Ok(None)` when it carries no credentials.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Principal>, BearerError> {
    let Some(token) = bearer(headers)? else {
        return Ok(None);
    };
    let digest = HashedToken::of(token).as_str().to_owned();
    let now = state.clock.now();
    let cached = state.token_cache.0.lock().ok().and_then(|c| {
        c.get(&digest).map(|e| {
            (
                e.principal.clone(),
                e.revocation_key.clone(),
                e.checked.elapsed() < RECHECK,
            )
        })
    });
    if let Some((principal, revocation_key, fresh)) = cached {
        if principal.expires_at.is_some_and(|exp| exp <= now) {
            forget(state, &digest);
            return Err(BearerError::Invalid("token expired"));
        }
        if fresh {
            return Ok(Some(principal));
        }
        return match still_valid(state, &revocation_key, &principal.org_id, now).await {
            Ok(true) => {
                if let Ok(mut c) = state.token_cache.0.lock()
                    && let Some(e) = c.get_mut(&digest)
                {
                    e.checked = Instant::now();
                }
                Ok(Some(principal))
            }
            Ok(false) => {
                forget(state, &digest);
                Err(BearerError::Invalid("token revoked"))
            }
            Err(e) => {
                if matches!(e, BearerError::Suspended) {
                    forget(state, &digest);
                }
                Err(e)
            }
        };
    }
    let (principal, revocation_key) = verify(state, token, now).await?;
    check_org(state, &principal.org_id).await?;
    if let Ok(mut c) = state.token_cache.0.lock() {
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
        c.insert(
            digest,
            Cached {
                principal: principal.clone(),
                revocation_key,
                checked: Instant::now(),
            },
        );
    }
    Ok(Some(principal))
}

fn forget(state: &AppState, digest: &str) {
    if let Ok(mut c) = state.token_cache.0.lock() {
        c.remove(digest);
    }
}

async fn check_org(state: &AppState, org_id: &str) -> Result<(), BearerError> {
    match state.store.find_org(org_id).await {
        Ok(Some(org)) if org.status == "suspended" => Err(BearerError::Suspended),
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(BearerError::Invalid("organization no longer exists")),
        Err(_) => Err(BearerError::Unavailable),
    }
}

/// `revocation_key` is `jti:<digest>` or `pat:<digest>`.
async fn still_valid(
    state: &AppState,
    key: &str,
    org_id: &str,
    now: i64,
) -> Result<bool, BearerError> {
    check_org(state, org_id).await?;
    let result = match key.split_once(':') {
        Some(("jti", d)) => state.store.is_access_token_revoked(d).await.map(|r| !r),
        Some(("pat", d)) => {
            let hash = HashedToken::from_digest(d);
            state
                .store
                .find_pat_by_hash(&hash, now)
                .await
                .map(|p| p.is_some())
        }
        _ => Ok(false),
    };
    result.map_err(|_| BearerError::Unavailable)
}

async fn verify(
    state: &AppState,
    token: &str,
    now: i64,
) -> Result<(Principal, String), BearerError> {
    if TokenKind::of(token) == Some(TokenKind::Pat) {
        let plain = PlainToken::parse(TokenKind::Pat, token)
            .map_err(|_| BearerError::Invalid("malformed token"))?;
        let hash = plain.hash();
        let pat = state
            .store
            .find_pat_by_hash(&hash, now)
            .await
            .map_err(|_| BearerError::Unavailable)?
            .ok_or(BearerError::Invalid("unknown, expired or revoked token"))?;
        let principal = Principal {
            user_id: pat.user_id,
            org_id: pat.org_id,
            scopes: ScopeSet::parse(&pat.scopes).unwrap_or_default(),
            client_id: None,
            expires_at: pat.expires_at,
        };
        return Ok((principal, format!("pat:{}", hash.as_str())));
    }
    let claims = jwt::verify(
        &state.keys,
        token,
        &state.config.server.public_url,
        state.resource.as_str(),
        now,
    )
    .map_err(|e| match e {
        jwt::JwtError::Expired => BearerError::Invalid("token expired"),
        jwt::JwtError::WrongAudience => BearerError::Invalid("token is for another resource"),
        _ => BearerError::Invalid("invalid token"),
    })?;
    let jti = HashedToken::of(&claims.jti);
    let revoked = state
        .store
        .is_access_token_revoked(jti.as_str())
        .await
        .map_err(|_| BearerError::Unavailable)?;
    if revoked {
        return Err(BearerError::Invalid("token revoked"));
    }
    let principal = Principal {
        user_id: claims.sub,
        org_id: claims.org,
        scopes: ScopeSet::parse(&claims.scope).unwrap_or_default(),
        client_id: Some(claims.client_id),
        expires_at: Some(claims.exp),
    };
    Ok((principal, format!("jti:{}", jti.as_str())))
}
