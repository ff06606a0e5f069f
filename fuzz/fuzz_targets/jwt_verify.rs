//! Access-token verification (src/crypto/jwt.rs) of arbitrary bytes against a fixed key.
//!
//! Input that parses as an `AccessClaims` JSON object is signed with the fixed key and
//! verified back; anything else is verified as a token.
//!
//! Invariants: verification never panics; a token that verifies carries our issuer and
//! audience and has not expired; claims signed by us verify to exactly the same claims;
//! and changing any one character of a signed token makes it fail.

#![no_main]

use std::sync::OnceLock;

use gatehouse::crypto::jwt::{self, AccessClaims};
use gatehouse::crypto::keys::{Kek, KeySet, StoredKey};
use libfuzzer_sys::fuzz_target;

/// A key made for this target only (PKCS#8 v2 and raw public key, base64url).
const PRIVATE_KEY: &str = "MFMCAQEwBQYDK2VwBCIEIPy0e-zXb8NPV-SZSvmX95P5S0AJ2-3plygCY6WOz8nuoSMDIQDyjqcTVr2uZXXNXRxRhkHIXuFvtczblJnsZDkqyQ6uyw";
const PUBLIC_KEY: &str = "8o6nE1a9rmV1zV0cUYZByF7hb7XM25SZ7GQ5KskOrss";
const ISSUER: &str = "https://gate.example.com";
const AUDIENCE: &str = "https://gate.example.com/mcp";
const NOW: i64 = 1_700_000_000;

fn keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        KeySet::from_stored(&[StoredKey {
            kid: "fuzz-key".into(),
            private_key: PRIVATE_KEY.into(),
            public_key: PUBLIC_KEY.into(),
            created_at: 0,
            retired_at: None,
        }], &Kek::development())
        .expect("the fuzz key loads")
    })
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";

fn round_trip(claims: &AccessClaims, seed: &[u8]) {
    let token = jwt::sign(keys(), claims).expect("any claims can be signed");
    let Some(now) = claims.exp.checked_sub(1) else {
        return;
    };
    assert_eq!(
        jwt::verify(keys(), &token, &claims.iss, &claims.aud, now).as_ref(),
        Ok(claims),
        "our own token verifies to the claims we signed"
    );
    // One changed character anywhere must break it.
    let sum: usize = seed.iter().map(|b| usize::from(*b)).sum();
    let at = sum % token.len();
    let mut bytes = token.clone().into_bytes();
    let old = bytes[at];
    let new = ALPHABET[(sum / token.len() + usize::from(old)) % ALPHABET.len()];
    if new == old {
        return;
    }
    bytes[at] = new;
    let tampered = String::from_utf8(bytes).expect("ASCII");
    assert!(
        jwt::verify(keys(), &tampered, &claims.iss, &claims.aud, now).is_err(),
        "a tampered token verified (position {at}, {old:#x} -> {new:#x})"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(claims) = serde_json::from_slice::<AccessClaims>(data) {
        round_trip(&claims, data);
        return;
    }
    let token = String::from_utf8_lossy(data);
    if let Ok(claims) = jwt::verify(keys(), &token, ISSUER, AUDIENCE, NOW) {
        assert_eq!(claims.iss, ISSUER);
        assert_eq!(claims.aud.trim_end_matches('/'), AUDIENCE);
        assert!(claims.exp > NOW);
    }
});
