//! Client ID Metadata Documents: a `client_id` that is an https URL names a JSON document
//! describing the client. Fetched with an SSRF guard (public addresses only, pinned at
//! connect, no redirects, short timeout, small size cap) and cached in memory.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::clients::ClientCache;
use crate::domain::RedirectUri;
use crate::state::AppState;
use crate::storage::ClientRow;

const MAX_BYTES: usize = 5 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);
const CACHE_SECS: i64 = 600;
const CACHE_ENTRIES: usize = 1000;

/// Documents fetched recently, by URL.
pub fn cache() -> ClientCache {
    ClientCache::new(CACHE_SECS, CACHE_ENTRIES)
}

#[derive(Debug, Deserialize)]
struct Document {
    client_id: String,
    client_name: Option<String>,
    redirect_uris: Vec<String>,
    token_endpoint_auth_method: Option<String>,
    /// Every method the client can use (draft SEP-3149): ChatGPT prefers
    /// `private_key_jwt` but also lists `none`.
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    client_secret: Option<serde_json::Value>,
}

/// Whether an address is on the public internet (not private, loopback, link-local,
/// CGNAT, multicast, documentation or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xC0) == 64))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            let mapped_ok = a
                .to_ipv4_mapped()
                .is_none_or(|v4| is_public(IpAddr::V4(v4)));
            mapped_ok
                && !(a.is_loopback()
                    || a.is_unspecified()
                    || a.is_multicast()
                    || (s[0] & 0xfe00) == 0xfc00
                    || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Checks the URL's shape (draft-ietf-oauth-client-id-metadata-document §3).
fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|_| "client_id is not a URL".to_owned())?;
    let scheme_ok = url.scheme() == "https" || (allow_private && url.scheme() == "http");
    if !scheme_ok {
        return Err("client_id URL must be https".into());
    }
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err("client_id URL must have no fragment or credentials".into());
    }
    if url.path() == "/" || url.path().is_empty() {
        return Err("client_id URL must have a path".into());
    }
    if raw.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("client_id URL must not contain dot segments".into());
    }
    Ok(url)
}

async fn fetch(url: &url::Url, allow_private: bool) -> Result<Vec<u8>, String> {
    let host = url.host_str().ok_or("no host")?.to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<std::net::SocketAddr> =
        tokio::time::timeout(TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
            .await
            .map_err(|_| "DNS lookup timed out".to_owned())?
            .map_err(|e| format!("DNS lookup failed: {e}"))?
            .collect();
    // Every address must be public, and the connection is pinned to the checked one,
    // so a second DNS answer cannot point the fetch somewhere else.
    let addr = *addrs.first().ok_or("host has no address")?;
    if !allow_private && addrs.iter().any(|a| !is_public(a.ip())) {
        return Err("host resolves to a private or loopback address".into());
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .resolve(&host, addr)
        .user_agent("gatehouse (client metadata fetch)")
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let mut res = client
        .get(url.as_str())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("fetch failed: {e}"))?;
    if !res.status().is_success() {
        return Err(format!("fetch answered {}", res.status()));
    }
    let json = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err("document is not application/json".into());
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| format!("read failed: {e}"))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BYTES {
            return Err(format!("document is larger than {MAX_BYTES} bytes"));
        }
    }
    Ok(body)
}

fn validate(id: &str, body: &[u8]) -> Result<ClientRow, String> {
    let doc: Document =
        serde_json::from_slice(body).map_err(|e| format!("document is not valid metadata: {e}"))?;
    if doc.client_id != id {
        return Err("the document's client_id differs from its URL".into());
    }
    if doc.client_secret.is_some() {
        return Err("a metadata document must not carry a client secret".into());
    }
    // A metadata document cannot carry a secret, and `private_key_jwt` is not offered
    // here, so the one method both sides can share is `none`: taken when the client
    // prefers it or lists it among the methods it supports (SEP-3149), refused only
    // when it does neither.
    let preferred = doc.token_endpoint_auth_method.as_deref().unwrap_or("none");
    let lists_none = doc
        .token_endpoint_auth_methods_supported
        .as_ref()
        .is_some_and(|m| m.iter().any(|m| m == "none"));
    if preferred != "none" && !lists_none {
        return Err(format!(
            "token_endpoint_auth_method {:?} is not supported for metadata documents, and \
             token_endpoint_auth_methods_supported does not list \"none\"",
            preferred.chars().take(64).collect::<String>()
        ));
    }
    if doc.redirect_uris.is_empty() || doc.redirect_uris.len() > 10 {
        return Err("redirect_uris must list 1 to 10 URIs".into());
    }
    for u in &doc.redirect_uris {
        RedirectUri::parse(u).map_err(|e| format!("redirect URI {u:?}: {e}"))?;
    }
    let host = url::Url::parse(id)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let name = doc
        .client_name
        .map(|n| {
            n.trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or(host);
    Ok(ClientRow {
        id: id.to_owned(),
        origin: "cimd".into(),
        name,
        redirect_uris: serde_json::to_string(&doc.redirect_uris).unwrap_or_else(|_| "[]".into()),
        auth_method: "none".into(),
        secret_hash: None,
        can_introspect: false,
        dedupe_key: None,
        metadata: String::from_utf8_lossy(body).into_owned(),
        created_at: 0,
        last_used_at: None,
    })
}

/// The client a metadata-document URL describes, from the cache or a fresh fetch.
pub async fn resolve(state: &AppState, id: &str) -> Result<ClientRow, String> {
    let now = state.clock.now();
    if let Some(row) = state.cimd_cache.get(id, now) {
        return Ok(row);
    }
    let allow_private = state.config.oauth.cimd_allow_private_addresses;
    let url = check_url(id, allow_private)?;
    let body = fetch(&url, allow_private).await?;
    let row = validate(id, &body)?;
    state.cimd_cache.put(&row, now);
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "10.0.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn url_shape_rules() {
        assert!(check_url("https://app.example/client.json", false).is_ok());
        assert!(check_url("http://app.example/client.json", false).is_err());
        assert!(check_url("https://app.example/", false).is_err());
        assert!(check_url("https://app.example/a/../b", false).is_err());
        assert!(check_url("https://u:p@app.example/c", false).is_err());
        assert!(check_url("https://app.example/c#f", false).is_err());
    }

    #[test]
    fn document_must_match_its_url_and_carry_no_secret() {
        let id = "https://app.example/c.json";
        let ok = br#"{"client_id":"https://app.example/c.json","client_name":"App","redirect_uris":["https://app.example/cb"]}"#;
        assert_eq!(validate(id, ok).unwrap().name, "App");
        let other = br#"{"client_id":"https://evil.example/c.json","redirect_uris":["https://app.example/cb"]}"#;
        assert!(validate(id, other).is_err());
        let secret = br#"{"client_id":"https://app.example/c.json","client_secret":"s","redirect_uris":["https://app.example/cb"]}"#;
        assert!(validate(id, secret).is_err());
        let chatgpt = br#"{"client_id":"https://app.example/c.json","token_endpoint_auth_method":"private_key_jwt","token_endpoint_auth_methods_supported":["none","private_key_jwt"],"jwks_uri":"https://app.example/jwks.json","redirect_uris":["https://app.example/cb"]}"#;
        assert_eq!(validate(id, chatgpt).unwrap().auth_method, "none");
        let jwt_only = br#"{"client_id":"https://app.example/c.json","token_endpoint_auth_method":"private_key_jwt","redirect_uris":["https://app.example/cb"]}"#;
        let err = validate(id, jwt_only).unwrap_err();
        assert!(err.contains("private_key_jwt"), "{err}");
        let bad_uri = br#"{"client_id":"https://app.example/c.json","redirect_uris":["http://app.example/cb"]}"#;
        assert!(validate(id, bad_uri).is_err());
    }
}
