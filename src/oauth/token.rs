//! `POST /token`: the authorization-code and refresh-token grants.

use std::net::IpAddr;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::client_auth::{Lookup, authenticate, deleted_meanwhile};
use super::error::{ErrorCode, OAuthError};
use super::form::{FormParams, Params};
use crate::crypto::jwt::{self, AccessClaims};
use crate::crypto::mac::{open, seal};
use crate::crypto::{HashedToken, PlainToken, TokenKind, random};
use crate::domain::{CodeChallenge, CodeVerifier, ScopeSet};
use crate::limits::ClientAddr;
use crate::metrics::{ClientOrigin, Grant as MetricGrant, TokenRejection};
use crate::state::AppState;
use crate::storage::oauth::{CodeRedemption, IssuedTokens, RefreshOutcome};
use crate::storage::{AuditEntry, ClientRow, CodeRow};

const SUCCESSOR: &str = "refresh-successor";

/// The form, parsed into one variant per grant so a handler never unwraps an option.
pub(crate) enum TokenRequest {
    AuthorizationCode {
        code: String,
        /// OAuth 2.1 clients may leave it out; when sent, it must match (§4.1.3).
        redirect_uri: Option<String>,
        verifier: CodeVerifier,
    },
    RefreshToken {
        refresh_token: String,
        scope: Option<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    scope: String,
}

pub(crate) fn parse_request(p: &Params) -> Result<TokenRequest, OAuthError> {
    match p.get("grant_type") {
        Some("authorization_code") => Ok(TokenRequest::AuthorizationCode {
            code: p.require("code")?.to_owned(),
            redirect_uri: p.get("redirect_uri").map(str::to_owned),
            verifier: CodeVerifier::parse(p.require("code_verifier")?)
                .map_err(|e| OAuthError::invalid_grant(e.to_string()))?,
        }),
        Some("refresh_token") => Ok(TokenRequest::RefreshToken {
            refresh_token: p.require("refresh_token")?.to_owned(),
            scope: p.get("scope").map(str::to_owned),
        }),
        Some(other) => Err(OAuthError::new(
            ErrorCode::UnsupportedGrantType,
            format!(
                "grant_type {:?} is not supported",
                other.chars().take(60).collect::<String>()
            ),
        )),
        None => Err(OAuthError::invalid_request("grant_type is required")),
    }
}

fn json_no_store(body: &impl Serialize) -> Response {
    let mut res = axum::Json(body).into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

pub async fn post_token(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    FormParams(params): FormParams,
) -> Result<Response, OAuthError> {
    let result = token(&state, addr, &headers, params).await;
    if let Err(e) = &result {
        let why = match e.retry_after {
            Some(_) => TokenRejection::RateLimited,
            None => rejection(e.code),
        };
        state.metrics.oauth.token_rejected(why);
    }
    result
}

fn rejection(code: ErrorCode) -> TokenRejection {
    match code {
        ErrorCode::InvalidRequest => TokenRejection::InvalidRequest,
        ErrorCode::InvalidClient => TokenRejection::InvalidClient,
        ErrorCode::InvalidGrant => TokenRejection::InvalidGrant,
        ErrorCode::UnauthorizedClient => TokenRejection::UnauthorizedClient,
        ErrorCode::UnsupportedGrantType => TokenRejection::UnsupportedGrantType,
        ErrorCode::InvalidScope => TokenRejection::InvalidScope,
        ErrorCode::InvalidTarget => TokenRejection::InvalidTarget,
        ErrorCode::ServerError => TokenRejection::ServerError,
        ErrorCode::TemporarilyUnavailable => TokenRejection::TemporarilyUnavailable,
        _ => TokenRejection::Other,
    }
}

/// Counts tokens issued to `client` by `grant`.
fn issued(state: &AppState, grant: MetricGrant, client: &ClientRow) {
    let origin = match client.origin.as_str() {
        "cimd" => ClientOrigin::Cimd,
        "static" => ClientOrigin::Preregistered,
        _ => ClientOrigin::Registered,
    };
    state
        .metrics
        .oauth
        .token_issued(grant, origin, client.auth_method == "none");
}

async fn token(
    state: &AppState,
    addr: IpAddr,
    headers: &HeaderMap,
    params: Params,
) -> Result<Response, OAuthError> {
    let request = parse_request(&params)?;
    let client = authenticate(
        state,
        addr,
        headers,
        params.get("client_id"),
        params.get("client_secret"),
        Lookup::ForGrant,
    )
    .await?;
    if let Some(r) = params.get("resource") {
        state
            .resource
            .resolve(r, &state.config.server.public_url)
            .map_err(|e| OAuthError::new(ErrorCode::InvalidTarget, e.to_string()))?;
    }
    let result = match request {
        TokenRequest::AuthorizationCode {
            code,
            redirect_uri,
            verifier,
        } => {
            exchange_authorization_code(state, &client, &code, redirect_uri.as_deref(), &verifier)
                .await
        }
        TokenRequest::RefreshToken {
            refresh_token,
            scope,
        } => refresh(state, &client, &refresh_token, scope.as_deref()).await,
    };
    match result {
        Err(e) if e.code == ErrorCode::InvalidGrant => {
            Err(deleted_meanwhile(state, headers, &client)
                .await
                .unwrap_or(e))
        }
        other => other,
    }
}

/// Who a grant is for, and what it allows.
struct Grant<'a> {
    client_id: &'a str,
    user_id: &'a str,
    org_id: &'a str,
    family_id: &'a str,
    scopes: &'a ScopeSet,
    resource: &'a str,
}

/// A fresh access token (and refresh token when wanted), plus what to store about them.
fn mint(
    state: &AppState,
    g: Grant<'_>,
    with_refresh: bool,
) -> Result<(IssuedTokens, TokenResponse), OAuthError> {
    let Grant {
        client_id,
        user_id,
        org_id,
        family_id,
        scopes,
        resource,
    } = g;
    let now = state.clock.now();
    let ttl = state.config.tokens.access_ttl_secs;
    let jti = random::base62(22);
    let claims = AccessClaims {
        iss: state.config.server.public_url.clone(),
        sub: user_id.to_owned(),
        aud: resource.to_owned(),
        client_id: client_id.to_owned(),
        scope: scopes.to_string(),
        org: org_id.to_owned(),
        exp: now + ttl,
        iat: now,
        jti: jti.clone(),
    };
    let access_token = jwt::sign(&state.keys.current(), &claims)
        .map_err(|_| OAuthError::new(ErrorCode::ServerError, "signing failed"))?;
    let refresh = with_refresh.then(|| PlainToken::generate(TokenKind::Refresh));
    let refresh_expires = now + state.config.tokens.refresh_ttl_secs;
    let issued = IssuedTokens {
        family_id: family_id.to_owned(),
        client_id: client_id.to_owned(),
        user_id: user_id.to_owned(),
        org_id: org_id.to_owned(),
        scopes: scopes.to_string(),
        resource: resource.to_owned(),
        access_jti_hash: HashedToken::of(&jti).as_str().to_owned(),
        access_expires_at: now + ttl,
        refresh: refresh
            .as_ref()
            .map(|r| (r.hash().as_str().to_owned(), refresh_expires)),
    };
    let response = TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in: ttl,
        refresh_token: refresh.map(|r| r.expose().to_owned()),
        scope: scopes.to_string(),
    };
    Ok((issued, response))
}

async fn exchange_authorization_code(
    state: &AppState,
    client: &ClientRow,
    code: &str,
    redirect_uri: Option<&str>,
    verifier: &CodeVerifier,
) -> Result<Response, OAuthError> {
    let Ok(code) = PlainToken::parse(TokenKind::Code, code) else {
        return Err(OAuthError::invalid_grant("the code is not valid"));
    };
    let now = state.clock.now();
    let audit = AuditEntry::new(now, format!("client:{}", client.id), "oauth.tokens_issued")
        .detail(serde_json::json!({ "grant_type": "authorization_code" }));
    // Whether this request could have redeemed the code: only such a request, if the
    // code was spent already, revokes what it gave (a wrong verifier or another client
    // proves nothing, and must not let whoever saw a code end its session).
    let matches = |row: &CodeRow| -> Result<(), String> {
        if row.client_id != client.id {
            return Err("the code was issued to another client".into());
        }
        if redirect_uri.is_some_and(|r| r != row.redirect_uri) {
            return Err("redirect_uri does not match the authorization request".into());
        }
        if !CodeChallenge::from_stored(row.code_challenge.clone()).verify(verifier) {
            return Err("code_verifier does not match the code_challenge".into());
        }
        Ok(())
    };
    let outcome = state
        .store
        .redeem_code(
            code.hash().as_str(),
            now,
            matches,
            |row| {
                let scopes = ScopeSet::parse(&row.scopes).unwrap_or_default();
                let with_refresh = state.config.oauth.always_issue_refresh_token
                    || scopes.contains("offline_access");
                mint(
                    state,
                    Grant {
                        client_id: &client.id,
                        user_id: &row.user_id,
                        org_id: &row.org_id,
                        family_id: &row.family_id,
                        scopes: &scopes,
                        resource: &row.resource,
                    },
                    with_refresh,
                )
                .map_err(|e| e.description)
            },
            audit,
        )
        .await?;
    match outcome {
        CodeRedemption::Redeemed(response) => {
            issued(state, MetricGrant::AuthorizationCode, client);
            Ok(json_no_store(&response))
        }
        CodeRedemption::Rejected(reason) => Err(OAuthError::invalid_grant(reason)),
        CodeRedemption::Replayed => {
            tracing::warn!(client.id = %client.id, "authorization code replayed; its tokens are revoked");
            Err(OAuthError::invalid_grant("the code was already used"))
        }
        CodeRedemption::Unknown => Err(OAuthError::invalid_grant("the code is invalid or expired")),
    }
}

async fn refresh(
    state: &AppState,
    client: &ClientRow,
    token: &str,
    scope: Option<&str>,
) -> Result<Response, OAuthError> {
    let Ok(token) = PlainToken::parse(TokenKind::Refresh, token) else {
        return Err(OAuthError::invalid_grant("the refresh token is not valid"));
    };
    let requested = match scope {
        Some(s) => Some(
            ScopeSet::parse(s)
                .map_err(|e| OAuthError::new(ErrorCode::InvalidScope, e.to_string()))?,
        ),
        None => None,
    };
    let now = state.clock.now();
    let outcome = state
        .store
        .rotate_refresh_token(
            token.hash().as_str(),
            &client.id,
            now,
            state.config.tokens.refresh_grace_secs,
            |row| {
                let granted = ScopeSet::parse(&row.scopes).unwrap_or_default();
                let scopes = match &requested {
                    Some(r) if !r.is_subset(&granted) => {
                        return Err(OAuthError::new(
                            ErrorCode::InvalidScope,
                            "scope exceeds what was granted",
                        ));
                    }
                    Some(r) => r.clone(),
                    None => granted.clone(),
                };
                let (mut issued, response) = mint(
                    state,
                    Grant {
                        client_id: &client.id,
                        user_id: &row.user_id,
                        org_id: &row.org_id,
                        family_id: &row.family_id,
                        scopes: &scopes,
                        resource: &row.resource,
                    },
                    true,
                )?;
                // The refresh token keeps the full grant; a narrower scope only narrows this access token.
                issued.scopes = granted.to_string();
                let body = serde_json::to_vec(&response)
                    .map_err(|_| OAuthError::new(ErrorCode::ServerError, "internal error"))?;
                let sealed = seal(token.expose(), SUCCESSOR, &body)
                    .ok_or_else(|| OAuthError::new(ErrorCode::ServerError, "internal error"))?;
                Ok((issued, sealed, response))
            },
        )
        .await?;
    match outcome {
        RefreshOutcome::Rotated(response) => {
            issued(state, MetricGrant::RefreshToken, client);
            Ok(json_no_store(&response))
        }
        RefreshOutcome::Refused(e) => Err(e),
        RefreshOutcome::Retried(sealed) => {
            state.metrics.oauth.refresh_retried();
            let body = open(token.expose(), SUCCESSOR, &sealed)
                .ok_or_else(|| OAuthError::invalid_grant("the refresh token was already used"))?;
            let response: TokenResponse = serde_json::from_slice(&body)
                .map_err(|_| OAuthError::invalid_grant("the refresh token was already used"))?;
            Ok(json_no_store(&response))
        }
        RefreshOutcome::ReuseDetected { family_id } => {
            state.metrics.oauth.refresh_reuse_detected();
            tracing::warn!(client.id = %client.id, family.id = %family_id, "refresh token reused after rotation; family revoked");
            Err(OAuthError::invalid_grant(
                "the refresh token was already used; sign in again",
            ))
        }
        RefreshOutcome::Invalid => Err(OAuthError::invalid_grant(
            "the refresh token is invalid, expired or revoked",
        )),
    }
}
