//! RFC 7591 dynamic client registration.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::error::{ErrorCode, OAuthError};
use crate::crypto::random;
use crate::crypto::{PlainToken, TokenKind};
use crate::domain::RedirectUri;
use crate::limits::{self, Bucket, ClientAddr};
use crate::state::AppState;
use crate::storage::AuditEntry;
use crate::storage::oauth::NewClient;

const MAX_REDIRECT_URIS: usize = 10;
const MAX_NAME_CHARS: usize = 200;

/// The wire form: raw values, checked in [`parse`].
#[derive(Debug, Deserialize)]
pub struct RegisterRequest {
    redirect_uris: Option<Vec<String>>,
    client_name: Option<String>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

pub(crate) struct Registration {
    pub(crate) name: String,
    pub(crate) redirect_uris: Vec<RedirectUri>,
    pub(crate) auth_method: &'static str,
    pub(crate) grant_types: Vec<String>,
}

fn metadata_error(d: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidClientMetadata, d)
}

pub(crate) fn parse(req: RegisterRequest) -> Result<Registration, OAuthError> {
    let uris = req.redirect_uris.unwrap_or_default();
    if uris.is_empty() {
        return Err(OAuthError::new(
            ErrorCode::InvalidRedirectUri,
            "redirect_uris must list at least one URI",
        ));
    }
    if uris.len() > MAX_REDIRECT_URIS {
        return Err(OAuthError::new(
            ErrorCode::InvalidRedirectUri,
            format!("at most {MAX_REDIRECT_URIS} redirect_uris"),
        ));
    }
    let mut redirect_uris = Vec::new();
    for raw in &uris {
        let uri = RedirectUri::parse(raw).map_err(|e| {
            OAuthError::new(
                ErrorCode::InvalidRedirectUri,
                format!("{}: {e}", raw.chars().take(100).collect::<String>()),
            )
        })?;
        if !redirect_uris.contains(&uri) {
            redirect_uris.push(uri);
        }
    }
    let name = req.client_name.unwrap_or_default().trim().to_owned();
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(metadata_error(format!(
            "client_name must be at most {MAX_NAME_CHARS} characters without control characters"
        )));
    }
    let name = if name.is_empty() {
        "Unnamed client".to_owned()
    } else {
        name
    };
    let auth_method = match req
        .token_endpoint_auth_method
        .as_deref()
        .unwrap_or("client_secret_basic")
    {
        "none" => "none",
        "client_secret_basic" => "client_secret_basic",
        "client_secret_post" => "client_secret_post",
        other => {
            return Err(metadata_error(format!(
                "token_endpoint_auth_method {other:?} is not supported (none, client_secret_basic, client_secret_post)"
            )));
        }
    };
    let grant_types = req
        .grant_types
        .unwrap_or_else(|| vec!["authorization_code".into()]);
    for g in &grant_types {
        // Claude's documents also list jwt-bearer; it is tolerated but never granted.
        if !matches!(
            g.as_str(),
            "authorization_code" | "refresh_token" | "urn:ietf:params:oauth:grant-type:jwt-bearer"
        ) {
            return Err(metadata_error(format!("grant type {g:?} is not supported")));
        }
    }
    if let Some(rt) = &req.response_types
        && rt.iter().any(|r| r != "code")
    {
        return Err(metadata_error(
            "only the \"code\" response type is supported",
        ));
    }
    // RFC 8252 §8.4: an app's own scheme can be claimed by any app on the machine, so
    // such a client cannot keep a secret; it is public and relies on PKCE.
    if auth_method != "none"
        && let Some(uri) = redirect_uris.iter().find(|u| u.is_private_use())
    {
        return Err(OAuthError::new(
            ErrorCode::InvalidRedirectUri,
            format!(
                "{}: an app's own scheme is only for public clients (token_endpoint_auth_method \"none\")",
                uri.as_str().chars().take(100).collect::<String>()
            ),
        ));
    }
    let _ = req.other;
    Ok(Registration {
        name,
        redirect_uris,
        auth_method,
        grant_types,
    })
}

pub async fn post_register(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    body: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<Response, OAuthError> {
    let Json(req) = body.map_err(|e| {
        metadata_error(format!(
            "body is not valid registration JSON: {}",
            e.body_text()
        ))
    })?;
    let reg = parse(req)?;
    let now = state.clock.now();
    let bucket = Bucket::address("register", addr);
    let rate = state.config.limits.register;
    limits::check(&state.store, &bucket, rate, now)
        .await?
        .map_err(|e| {
            tracing::info!(client.address = %addr, "registration limit reached");
            OAuthError::rate_limited(e)
        })?;
    let redirects: Vec<String> = reg
        .redirect_uris
        .iter()
        .map(|u| u.as_str().to_owned())
        .collect();
    let public = reg.auth_method == "none";
    let secret = (!public).then(|| PlainToken::generate(TokenKind::ClientSecret));
    // Claude registers again on every connection: identical public registrations share a row.
    let dedupe_key = public.then(|| {
        let mut sorted = redirects.clone();
        sorted.sort();
        let digest = Sha256::new()
            .chain_update(reg.name.as_bytes())
            .chain_update([0])
            .chain_update(sorted.join("\n").as_bytes())
            .chain_update([0])
            .chain_update(reg.auth_method.as_bytes())
            .finalize();
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    let metadata = serde_json::json!({
        "client_name": reg.name,
        "redirect_uris": redirects,
        "token_endpoint_auth_method": reg.auth_method,
        "grant_types": reg.grant_types,
        "response_types": ["code"],
    });
    let (row, created) = state
        .store
        .insert_client(
            NewClient {
                id: random::long_id("client"),
                origin: "dcr",
                name: reg.name.clone(),
                redirect_uris: redirects.clone(),
                auth_method: reg.auth_method.to_owned(),
                secret_hash: secret.as_ref().map(|s| s.hash().as_str().to_owned()),
                can_introspect: false,
                dedupe_key,
                metadata: metadata.clone(),
            },
            now,
            AuditEntry::new(now, "anonymous", "client.register"),
        )
        .await?;
    if created {
        limits::count(&state.store, &bucket, rate, now).await?;
    }
    tracing::info!(client.id = %row.id, created, "client registered");
    let mut body = metadata;
    body["client_id"] = row.id.clone().into();
    body["client_id_issued_at"] = row.created_at.into();
    if let Some(secret) = &secret {
        body["client_secret"] = secret.expose().into();
        body["client_secret_expires_at"] = 0.into();
    }
    let mut res = (StatusCode::CREATED, Json(body)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
