//! Opaque tokens (src/crypto/opaque.rs: prefix, length, alphabet, checksum) and PKCE
//! (src/domain/pkce.rs: verifier, S256 challenge, verification). Each line of the input
//! goes through every parser.
//!
//! Invariants: a token parses only as the kind its prefix names, with a 36-character
//! base62 remainder, and hashes to the SHA-256 of its text; changing a checksum
//! character makes it fail. A verifier is 43-128 unreserved characters; a challenge is
//! 43 base64url characters and only with S256; the S256 challenge of a verifier is
//! accepted and verifies, and no other verifier matches it.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse::crypto::{HashedToken, PlainToken, TokenError, TokenKind};
use gatehouse::domain::{CodeChallenge, CodeVerifier};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const KINDS: [TokenKind; 5] = [
    TokenKind::ApiKey,
    TokenKind::Pat,
    TokenKind::Refresh,
    TokenKind::Code,
    TokenKind::ClientSecret,
];

fn check_token(raw: &str) {
    for kind in KINDS {
        let Ok(token) = PlainToken::parse(kind, raw) else {
            continue;
        };
        assert_eq!(TokenKind::of(raw), Some(kind));
        assert_eq!(token.kind(), kind);
        assert_eq!(token.expose(), raw);
        let rest = &raw[kind.prefix().len()..];
        assert_eq!(rest.len(), 36);
        assert!(rest.bytes().all(|b| b.is_ascii_alphanumeric()));
        let hash = token.hash();
        assert_eq!(hash, HashedToken::of(raw));
        assert_eq!(hash.as_str().len(), 64);
        assert!(
            hash.as_str()
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
        assert!(
            !format!("{token:?}").contains(rest),
            "Debug shows the secret"
        );
        // A typo in the checksum is always caught.
        let mut typo = raw.as_bytes().to_vec();
        let last = typo.len() - 1;
        typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).expect("ASCII");
        assert_eq!(
            PlainToken::parse(kind, &typo).err(),
            Some(TokenError::BadChecksum)
        );
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn check_pkce(line: &str, previous: Option<&str>) -> bool {
    let as_challenge = CodeChallenge::parse(Some(line), Some("S256"));
    if let Ok(c) = &as_challenge {
        assert_eq!(c.as_str(), line);
        assert_eq!(line.len(), 43);
        assert!(
            line.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
    assert!(
        CodeChallenge::parse(Some(line), None).is_err(),
        "plain is refused"
    );
    assert!(CodeChallenge::parse(Some(line), Some("plain")).is_err());
    let Ok(verifier) = CodeVerifier::parse(line) else {
        assert!(!((43..=128).contains(&line.len()) && line.bytes().all(unreserved)));
        return false;
    };
    assert!((43..=128).contains(&line.len()) && line.bytes().all(unreserved));
    assert!(
        !format!("{verifier:?}").contains(line),
        "Debug shows the verifier"
    );
    let challenge = CodeChallenge::parse(Some(&s256(line)), Some("S256"))
        .expect("an S256 challenge is accepted");
    assert!(challenge.verify(&verifier));
    if let Some(other) = previous.filter(|p| *p != line) {
        let theirs = CodeChallenge::parse(Some(&s256(other)), Some("S256")).expect("S256");
        assert!(!theirs.verify(&verifier), "a different verifier matched");
    }
    if let Ok(c) = as_challenge {
        assert_eq!(c.verify(&verifier), s256(line) == line);
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut previous: Option<&str> = None;
    for line in std::iter::once(text.as_ref()).chain(text.split('\n')) {
        check_token(line);
        if check_pkce(line, previous) {
            previous = Some(line);
        }
    }
});
