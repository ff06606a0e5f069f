//! Client authentication at the token and revocation endpoints (RFC 6749 §2.3,
//! OAuth 2.1 §2.4): HTTP Basic, or credentials in the form body, or none for public clients.

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq;

use super::clients::find_client;
use super::error::OAuthError;
use crate::crypto::HashedToken;
use crate::state::AppState;
use crate::storage::ClientRow;

fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| OAuthError::invalid_client("malformed Authorization header", true))?;
    let Some(b64) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Err(OAuthError::invalid_client(
            "only Basic client authentication is accepted here",
            true,
        ));
    };
    let raw = STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials", true))?;
    let (id, secret) = raw
        .split_once(':')
        .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials", true))?;
    // RFC 6749 §2.3.1: both parts are form-urlencoded.
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Ok(Some((
        decode(id).unwrap_or_default(),
        decode(secret).unwrap_or_default(),
    )))
}

/// Authenticates the client of a token or revocation request.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    form_id: Option<&str>,
    form_secret: Option<&str>,
) -> Result<ClientRow, OAuthError> {
    let basic = basic_credentials(headers)?;
    if basic.is_some() && form_secret.is_some() {
        return Err(OAuthError::invalid_request(
            "use one client authentication method, not two",
        ));
    }
    let used_basic = basic.is_some();
    let (id, secret) = match basic {
        Some((id, secret)) => {
            if form_id.is_some_and(|f| f != id) {
                return Err(OAuthError::invalid_request(
                    "client_id in the body differs from the Basic credentials",
                ));
            }
            (id, Some(secret))
        }
        None => (
            form_id
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    OAuthError::invalid_client("client authentication is required", false)
                })?
                .to_owned(),
            form_secret.map(str::to_owned),
        ),
    };
    let client = find_client(state, &id)
        .await?
        .ok_or_else(|| OAuthError::invalid_client("unknown client; register again", used_basic))?;
    match (client.auth_method.as_str(), &client.secret_hash, secret) {
        ("none", _, _) => Ok(client),
        (method, Some(stored), Some(given)) => {
            let method_ok = match method {
                "client_secret_basic" => used_basic,
                "client_secret_post" => !used_basic,
                _ => false,
            };
            let given = HashedToken::of(&given);
            let secret_ok: bool = given.as_str().as_bytes().ct_eq(stored.as_bytes()).into();
            if secret_ok && method_ok {
                Ok(client)
            } else if secret_ok {
                Err(OAuthError::invalid_client(
                    format!("this client must authenticate with {method}"),
                    used_basic,
                ))
            } else {
                tracing::info!(client.id = %client.id, "wrong client secret");
                Err(OAuthError::invalid_client(
                    "client authentication failed",
                    used_basic,
                ))
            }
        }
        _ => Err(OAuthError::invalid_client(
            "client authentication failed",
            used_basic,
        )),
    }
}
