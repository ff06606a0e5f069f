//! Opaque bearer secrets: `gth_<kind>_<body><checksum>`.
//!
//! The prefix says what a leaked string is (secret scanners can match it), the checksum
//! catches typos before any database lookup, and only the SHA-256 digest is ever stored.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::random::{base62, encode_base62, is_base62};

/// 30 base62 characters ≈ 178 bits of entropy.
const BODY_LEN: usize = 30;
const CHECKSUM_LEN: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A user's sign-in credential for the consent page.
    ApiKey,
    /// A personal access token for header-based agents.
    Pat,
    /// An OAuth refresh token.
    Refresh,
    /// An OAuth authorization code.
    Code,
    /// A confidential client's secret.
    ClientSecret,
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::ApiKey => "gth_key_",
            Self::Pat => "gth_pat_",
            Self::Refresh => "gth_rt_",
            Self::Code => "gth_code_",
            Self::ClientSecret => "gth_cs_",
        }
    }

    const ALL: [TokenKind; 5] = [
        Self::ApiKey,
        Self::Pat,
        Self::Refresh,
        Self::Code,
        Self::ClientSecret,
    ];

    /// The kind a string claims to be by its prefix, if any.
    pub fn of(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| raw.starts_with(k.prefix()))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a {0:?} token")]
    WrongKind(TokenKind),
    #[error("malformed token")]
    Malformed,
    #[error("token checksum does not match (typo?)")]
    BadChecksum,
}

/// A token in plain text. Exists only between creation and the one time it is shown,
/// or between parsing a request and hashing it. `Debug` prints only the kind.
pub struct PlainToken {
    kind: TokenKind,
    value: String,
}

fn checksum(prefix: &str, body: &str) -> String {
    let digest = Sha256::new()
        .chain_update(prefix.as_bytes())
        .chain_update(body.as_bytes())
        .finalize();
    let n = u64::from_be_bytes([0, 0, 0, 0, digest[0], digest[1], digest[2], digest[3]]);
    encode_base62(n, CHECKSUM_LEN)
}

impl PlainToken {
    pub fn generate(kind: TokenKind) -> Self {
        let body = base62(BODY_LEN);
        let sum = checksum(kind.prefix(), &body);
        Self {
            kind,
            value: format!("{}{body}{sum}", kind.prefix()),
        }
    }

    /// Checks prefix, length, alphabet and checksum; no database is involved.
    pub fn parse(kind: TokenKind, raw: &str) -> Result<Self, TokenError> {
        let rest = raw
            .strip_prefix(kind.prefix())
            .ok_or(TokenError::WrongKind(kind))?;
        if rest.len() != BODY_LEN + CHECKSUM_LEN || !is_base62(rest) {
            return Err(TokenError::Malformed);
        }
        let (body, sum) = rest.split_at(BODY_LEN);
        let expected = checksum(kind.prefix(), body);
        if !bool::from(expected.as_bytes().ct_eq(sum.as_bytes())) {
            return Err(TokenError::BadChecksum);
        }
        Ok(Self {
            kind,
            value: raw.to_owned(),
        })
    }

    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// The secret itself, for showing once or sending to the client.
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn hash(&self) -> HashedToken {
        HashedToken::of(&self.value)
    }
}

impl fmt::Debug for PlainToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlainToken({:?}, <redacted>)", self.kind)
    }
}

/// The SHA-256 digest of a token, lower-case hex: what the database stores and looks up.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HashedToken(String);

impl HashedToken {
    pub fn of(secret: &str) -> Self {
        let digest = Sha256::digest(secret.as_bytes());
        let mut hex = String::with_capacity(64);
        for b in digest {
            hex.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
            hex.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
        }
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A digest read back from storage or a cache key (already a digest).
    pub fn from_digest(hex: &str) -> Self {
        Self(hex.to_owned())
    }
}

impl fmt::Debug for HashedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest is not secret, but a short form keeps logs readable.
        write!(f, "HashedToken({}…)", &self.0[..8.min(self.0.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_token_parses_back() {
        let t = PlainToken::generate(TokenKind::Pat);
        assert!(t.expose().starts_with("gth_pat_"));
        let parsed = PlainToken::parse(TokenKind::Pat, t.expose()).unwrap();
        assert_eq!(parsed.hash(), t.hash());
    }

    #[test]
    fn a_single_typo_fails_the_checksum() {
        let t = PlainToken::generate(TokenKind::ApiKey);
        let mut chars: Vec<char> = t.expose().chars().collect();
        let i = 12;
        chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(
            PlainToken::parse(TokenKind::ApiKey, &typo).unwrap_err(),
            TokenError::BadChecksum
        );
    }

    #[test]
    fn wrong_prefix_and_wrong_length_are_rejected() {
        let t = PlainToken::generate(TokenKind::ApiKey);
        assert_eq!(
            PlainToken::parse(TokenKind::Pat, t.expose()).unwrap_err(),
            TokenError::WrongKind(TokenKind::Pat)
        );
        assert_eq!(
            PlainToken::parse(TokenKind::ApiKey, "gth_key_short").unwrap_err(),
            TokenError::Malformed
        );
        assert_eq!(
            TokenKind::of(t.expose()),
            Some(TokenKind::ApiKey),
            "kind is recognisable by prefix"
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = PlainToken::generate(TokenKind::Refresh);
        assert!(!format!("{t:?}").contains(t.expose()));
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            HashedToken::of("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
