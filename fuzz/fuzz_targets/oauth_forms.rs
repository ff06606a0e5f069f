//! The authorization server's form and query parsers (src/oauth/form.rs, token.rs,
//! client_auth.rs, revoke.rs, authorize.rs).
//!
//! Input: the first line is the `Authorization` header's value (empty for none); the
//! rest is the body. The body is read as a `/token` or `/revoke` form with client
//! authentication, and as an `/authorize` query. `/authorize` looks the client up in
//! the database half-way through its checks, so this target runs its pure steps in the
//! same order (parameter pairs, duplicates, redirect URI, response type, PKCE, resource,
//! scope) and then builds the redirect back to the client.
//!
//! Invariants: a form with a repeated parameter is refused, any other is accepted and
//! reads back its values; a token request names its grant and carries what that grant
//! needs; Basic credentials round-trip through their encoding (RFC 6749 §2.3.1) and
//! never mix with a secret in the body; the redirect back to a client is one header-safe
//! URL that keeps the client's URI and ends with exactly the parameters we added.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gatehouse::crypto::{PlainToken, TokenKind};
use gatehouse::domain::{CodeChallenge, CodeVerifier, RedirectUri, ResourceUri, ScopeSet};
use gatehouse::fuzzing::headers;
use gatehouse::fuzzing::oauth::{self, Params, TokenGrant};
use gatehouse::oauth::ErrorCode;
use libfuzzer_sys::fuzz_target;

const ISSUER: &str = "https://gate.example.com";
/// The shape of an authorization code (fixed, so that runs are reproducible).
const CODE: &str = "gth_code_0123456789ABCDEFGHIJKLMNOPQRSTuvwxyz";

fn pairs(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn has_duplicates(pairs: &[(String, String)]) -> bool {
    pairs
        .iter()
        .enumerate()
        .any(|(i, (k, _))| pairs[i + 1..].iter().any(|(k2, _)| k2 == k))
}

fn check_form(body: &[u8]) -> Option<Params> {
    let pairs = pairs(body);
    let Ok(params) = Params::parse(body) else {
        assert!(has_duplicates(&pairs), "refused a form without repeats");
        return None;
    };
    assert!(!has_duplicates(&pairs), "accepted a repeated parameter");
    for (k, v) in &pairs {
        let expected = (!v.is_empty()).then_some(v.as_str());
        assert_eq!(params.get(k), expected);
        assert_eq!(params.require(k).ok(), expected);
    }
    Some(params)
}

fn check_token_request(params: &Params) {
    match oauth::token_request(params) {
        Ok(TokenGrant::AuthorizationCode { code, redirect_uri }) => {
            assert_eq!(params.get("grant_type"), Some("authorization_code"));
            assert_eq!(params.get("code"), Some(code.as_str()));
            assert_eq!(params.get("redirect_uri"), redirect_uri.as_deref());
            assert!(CodeVerifier::parse(params.get("code_verifier").unwrap_or_default()).is_ok());
        }
        Ok(TokenGrant::RefreshToken {
            refresh_token,
            scope,
        }) => {
            assert_eq!(params.get("grant_type"), Some("refresh_token"));
            assert_eq!(params.get("refresh_token"), Some(refresh_token.as_str()));
            assert_eq!(params.get("scope"), scope.as_deref());
        }
        Err(e) => assert!(matches!(
            e.code,
            ErrorCode::InvalidRequest | ErrorCode::InvalidGrant | ErrorCode::UnsupportedGrantType
        )),
    }
}

fn check_client_auth(authorization: &[u8], params: &Params) {
    let form_id = params.get("client_id");
    let form_secret = params.get("client_secret");
    let h = if authorization.is_empty() {
        headers([])
    } else {
        headers([("authorization", authorization)])
    };
    match oauth::client_credentials(&h, form_id, form_secret) {
        Ok(c) if c.used_basic => {
            assert!(form_secret.is_none(), "two authentication methods at once");
            assert!(form_id.is_none_or(|f| f == c.id));
            assert!(c.secret.is_some());
        }
        Ok(c) => {
            assert!(h.get("authorization").is_none());
            assert_eq!(Some(c.id.as_str()), form_id);
            assert_eq!(c.secret.as_deref(), form_secret);
        }
        Err(e) => assert!(matches!(
            e.code,
            ErrorCode::InvalidRequest | ErrorCode::InvalidClient
        )),
    }
    // Basic built from the form's values reads back exactly (RFC 6749 §2.3.1).
    if let (Some(id), Some(secret)) = (form_id, form_secret) {
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
        );
        let h = headers([("authorization", basic.as_bytes())]);
        let c = oauth::client_credentials(&h, Some(id), None)
            .unwrap_or_else(|e| panic!("well-formed Basic refused: {}", e.description));
        assert!(c.used_basic);
        assert_eq!(c.id, id);
        assert_eq!(c.secret.as_deref(), Some(secret));
    }
}

fn check_revoke(params: &Params) {
    let Some(token) = params.get("token") else {
        return;
    };
    if let Some(kind) = TokenKind::of(token)
        && let Ok(t) = PlainToken::parse(kind, token)
    {
        assert_eq!(t.kind(), kind);
    }
}

/// The redirect back to the client must be a single valid `Location` value that keeps
/// the registered URI and ends with our parameters, in order, unaltered.
fn check_client_redirect(uri: &RedirectUri, added: &[(&str, &str)]) {
    let target = oauth::client_redirect(uri, added);
    assert!(
        target.bytes().all(|b| (0x21..=0x7e).contains(&b)),
        "Location must be header-safe"
    );
    let url = url::Url::parse(&target).expect("the redirect is a URL");
    let original = url::Url::parse(uri.as_str()).expect("a redirect URI is a URL");
    assert_eq!(url.scheme(), original.scheme());
    assert_eq!(url.host_str(), original.host_str());
    assert_eq!(url.port(), original.port());
    assert_eq!(url.path(), original.path());
    assert!(url.fragment().is_none());
    let got: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert!(got.len() >= added.len());
    let tail = &got[got.len() - added.len()..];
    for ((k, v), (gk, gv)) in added.iter().zip(tail) {
        assert_eq!((*k, *v), (gk.as_str(), gv.as_str()));
    }
}

fn check_authorize_query(raw: &str) {
    if raw.len() > 8192 {
        return;
    }
    let pairs = pairs(raw.as_bytes());
    let one = |name: &str| -> Option<String> {
        let mut found = pairs.iter().filter(|(k, _)| k == name);
        match (found.next(), found.next()) {
            (Some((_, v)), None) => Some(v.clone()),
            _ => None,
        }
    };
    let Some(redirect_uri) = one("redirect_uri").and_then(|r| RedirectUri::parse(&r).ok()) else {
        return;
    };
    let state = one("state");
    let challenge = CodeChallenge::parse(
        one("code_challenge").as_deref(),
        one("code_challenge_method").as_deref(),
    );
    if let Ok(c) = &challenge {
        assert_eq!(c.as_str().len(), 43);
        assert_eq!(one("code_challenge_method").as_deref(), Some("S256"));
    }
    if let Some(r) = one("resource") {
        let _ = ResourceUri::for_public_url(ISSUER).resolve(&r, ISSUER);
    }
    if let Ok(scopes) = ScopeSet::parse(&one("scope").unwrap_or_default()) {
        assert_eq!(ScopeSet::parse(&scopes.to_string()).ok(), Some(scopes));
    }
    let description = format!(
        "parameter {} appears more than once",
        pairs.first().map(|(k, _)| k.as_str()).unwrap_or_default()
    );
    let mut added = vec![
        ("error", "invalid_request"),
        ("error_description", description.as_str()),
    ];
    if let Some(s) = &state {
        added.push(("state", s));
    }
    added.push(("iss", ISSUER));
    check_client_redirect(&redirect_uri, &added);
    let mut added = vec![("code", CODE)];
    if let Some(s) = &state {
        added.push(("state", s));
    }
    added.push(("iss", ISSUER));
    check_client_redirect(&redirect_uri, &added);
}

fuzz_target!(|data: &[u8]| {
    let (authorization, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&data[..0], data),
    };
    if let Some(params) = check_form(body) {
        check_token_request(&params);
        check_client_auth(authorization, &params);
        check_revoke(&params);
    }
    check_authorize_query(&String::from_utf8_lossy(body));
});
