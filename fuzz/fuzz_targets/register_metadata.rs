//! `POST /register` (RFC 7591, src/oauth/register.rs): the JSON body as the extractor
//! reads it, then the metadata checks.
//!
//! Invariants: an accepted registration has 1 to 10 distinct redirect URIs that each
//! parse again, a trimmed non-empty name of at most 200 characters without control
//! characters, a supported authentication method and supported grant types; a refusal
//! is `invalid_redirect_uri` or `invalid_client_metadata`.

#![no_main]

use gatehouse::domain::RedirectUri;
use gatehouse::fuzzing::oauth;
use gatehouse::oauth::ErrorCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match oauth::register(data) {
        Ok(r) => {
            assert!((1..=10).contains(&r.redirect_uris.len()));
            for (i, u) in r.redirect_uris.iter().enumerate() {
                assert_eq!(RedirectUri::parse(u.as_str()).as_ref(), Ok(u));
                assert!(
                    !r.redirect_uris[i + 1..].contains(u),
                    "duplicate redirect URI"
                );
            }
            assert!(!r.name.is_empty());
            assert_eq!(r.name.trim(), r.name);
            assert!(r.name.chars().count() <= 200);
            assert!(!r.name.chars().any(char::is_control));
            assert!(matches!(
                r.auth_method,
                "none" | "client_secret_basic" | "client_secret_post"
            ));
            assert!(r.grant_types.iter().all(|g| matches!(
                g.as_str(),
                "authorization_code"
                    | "refresh_token"
                    | "urn:ietf:params:oauth:grant-type:jwt-bearer"
            )));
            // What the endpoint stores and answers serializes.
            let metadata = serde_json::json!({
                "client_name": r.name,
                "redirect_uris": r.redirect_uris.iter().map(RedirectUri::as_str).collect::<Vec<_>>(),
                "token_endpoint_auth_method": r.auth_method,
                "grant_types": r.grant_types,
            });
            assert!(serde_json::to_vec(&metadata).is_ok());
        }
        Err(Some(e)) => assert!(matches!(
            e.code,
            ErrorCode::InvalidRedirectUri | ErrorCode::InvalidClientMetadata
        )),
        Err(None) => {}
    }
});
