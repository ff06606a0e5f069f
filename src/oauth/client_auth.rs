//! Client authentication at the token and revocation endpoints (RFC 6749 §2.3,
//! OAuth 2.1 §2.4): HTTP Basic, or credentials in the form body, or none for public clients.

use std::net::IpAddr;

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq;

use super::clients::{find_client, find_client_for_grant};
use super::error::OAuthError;

use crate::crypto::HashedToken;
use crate::limits::Bucket;
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

/// The credentials a request presents, before any lookup.
pub struct ClientCredentials {
    pub id: String,
    pub secret: Option<String>,
    pub used_basic: bool,
}

/// Never shows the secret.
impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("id", &self.id)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("used_basic", &self.used_basic)
            .finish()
    }
}

/// Reads the client's credentials from the Basic header or the form, refusing both at once.
pub(crate) fn client_credentials(
    headers: &HeaderMap,
    form_id: Option<&str>,
    form_secret: Option<&str>,
) -> Result<ClientCredentials, OAuthError> {
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
    Ok(ClientCredentials {
        id,
        secret,
        used_basic,
    })
}

/// After a grant was refused to a client authenticated through [`Lookup::ForGrant`]:
/// the error to give instead if the client has been deleted meanwhile. Deletion revokes
/// the client's grants, so the grant fails; the client must hear `invalid_client` (and
/// register again), as it would have without the cache.
pub async fn deleted_meanwhile(
    state: &AppState,
    headers: &HeaderMap,
    client: &ClientRow,
) -> Option<OAuthError> {
    // Client ID Metadata Documents are not stored, so not cached here either.
    if client.origin == "cimd" || !matches!(find_client(state, &client.id).await, Ok(None)) {
        return None;
    }
    state.client_cache.forget(&client.id);
    let used_basic = matches!(basic_credentials(headers), Ok(Some(_)));
    Some(OAuthError::invalid_client(
        "unknown client; register again",
        used_basic,
    ))
}

/// Where [`authenticate`] reads the client from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The database, every time (introspection and revocation).
    Fresh,
    /// The token endpoint: a short-lived cache (see [`find_client_for_grant`]).
    ForGrant,
}

/// Authenticates the client of a token or revocation request. Wrong secrets (and
/// unknown client ids) count against the client's and the address's limits; once one
/// is reached, every attempt is refused with 429, even one with the right secret.
pub async fn authenticate(
    state: &AppState,
    addr: IpAddr,
    headers: &HeaderMap,
    form_id: Option<&str>,
    form_secret: Option<&str>,
    lookup: Lookup,
) -> Result<ClientRow, OAuthError> {
    let ClientCredentials {
        id,
        secret,
        used_basic,
    } = client_credentials(headers, form_id, form_secret)?;
    let limits = &state.config.limits;
    let now = state.clock.now();
    let by_client = Bucket::client("client_auth", &id);
    let by_address = Bucket::address("client_auth", addr);
    // Public clients present nothing to guess; only secrets are checked against limits.
    if secret.is_some() {
        for (bucket, rate) in [
            (&by_client, limits.client_auth_per_client),
            (&by_address, limits.client_auth_per_address),
        ] {
            if let Err(e) = crate::limits::check(&state.store, bucket, rate, now).await? {
                tracing::info!(client.id = %id, client.address = %addr, "client authentication limit reached");
                return Err(OAuthError::rate_limited(e));
            }
        }
    }
    let failed = |client: bool| async move {
        if client {
            crate::limits::count(&state.store, &by_client, limits.client_auth_per_client, now)
                .await?;
        }
        crate::limits::count(
            &state.store,
            &by_address,
            limits.client_auth_per_address,
            now,
        )
        .await
    };
    let found = match lookup {
        Lookup::Fresh => find_client(state, &id).await?,
        Lookup::ForGrant => find_client_for_grant(state, &id).await?,
    };
    let Some(client) = found else {
        failed(false).await?;
        return Err(OAuthError::invalid_client(
            "unknown client; register again",
            used_basic,
        ));
    };
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
                failed(true).await?;
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn basic(raw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode(raw));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).unwrap(),
        );
        h
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let c = client_credentials(&basic("c%3A1:p%40ss+word"), Some("c:1"), None).unwrap();
        assert_eq!(
            (c.id.as_str(), c.secret.as_deref(), c.used_basic),
            ("c:1", Some("p@ss word"), true)
        );
    }

    #[test]
    fn one_method_at_a_time_and_the_ids_must_agree() {
        let both = client_credentials(&basic("c1:s"), None, Some("s")).unwrap_err();
        assert_eq!(both.code, super::super::ErrorCode::InvalidRequest);
        let differ = client_credentials(&basic("c1:s"), Some("c2"), None).unwrap_err();
        assert_eq!(differ.code, super::super::ErrorCode::InvalidRequest);
        let none = client_credentials(&HeaderMap::new(), None, Some("s")).unwrap_err();
        assert_eq!(none.code, super::super::ErrorCode::InvalidClient);
        let post = client_credentials(&HeaderMap::new(), Some("c1"), Some("s")).unwrap();
        assert_eq!(
            (post.id.as_str(), post.secret.as_deref(), post.used_basic),
            ("c1", Some("s"), false)
        );
    }
}
