//! Keyed integrity and encryption from `ring`: HMAC-SHA256 for cookies and CSRF tokens,
//! ChaCha20-Poly1305 for the sealed successor of a rotated refresh token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// A 256-bit key for HMAC, shared by all instances through the database.
#[derive(Clone)]
pub struct MacKey(hmac::Key);

impl MacKey {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// base64url(HMAC-SHA256(key, purpose ‖ 0 ‖ parts joined by 0)).
    pub fn sign(&self, purpose: &str, parts: &[&str]) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(purpose.as_bytes());
        for p in parts {
            ctx.update(&[0]);
            ctx.update(p.as_bytes());
        }
        URL_SAFE_NO_PAD.encode(ctx.sign().as_ref())
    }

    /// Constant-time check of a value made by [`MacKey::sign`].
    pub fn verify(&self, purpose: &str, parts: &[&str], tag: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        let mut msg = Vec::new();
        msg.extend_from_slice(purpose.as_bytes());
        for p in parts {
            msg.push(0);
            msg.extend_from_slice(p.as_bytes());
        }
        hmac::verify(&self.0, &msg, &tag).is_ok()
    }
}

/// 32 random bytes, base64url.
pub fn random_key_b64() -> String {
    let mut bytes = [0u8; 32];
    // SystemRandom only fails if the OS has no randomness, where nothing else works either.
    let _ = SystemRandom::new().fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn aead_key(secret: &str, purpose: &str) -> Option<LessSafeKey> {
    let digest = Sha256::new()
        .chain_update(purpose.as_bytes())
        .chain_update([0])
        .chain_update(secret.as_bytes())
        .finalize();
    UnboundKey::new(&aead::CHACHA20_POLY1305, &digest)
        .ok()
        .map(LessSafeKey::new)
}

/// Encrypts `plaintext` under a key derived from `secret` (which is never stored).
pub fn seal(secret: &str, purpose: &str, plaintext: &[u8]) -> Option<String> {
    let key = aead_key(secret, purpose)?;
    let mut nonce = [0u8; 12];
    SystemRandom::new().fill(&mut nonce).ok()?;
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
        .ok()?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Some(URL_SAFE_NO_PAD.encode(out))
}

pub fn open(secret: &str, purpose: &str, sealed: &str) -> Option<Vec<u8>> {
    let key = aead_key(secret, purpose)?;
    let raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
    if raw.len() < 12 + 16 {
        return None;
    }
    let (nonce, rest) = raw.split_at(12);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = rest.to_vec();
    let plain = key.open_in_place(nonce, Aad::empty(), &mut buf).ok()?;
    Some(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_tamper() {
        let k = MacKey::from_bytes(b"0123456789abcdef0123456789abcdef");
        let tag = k.sign("csrf", &["a", "b"]);
        assert!(k.verify("csrf", &["a", "b"], &tag));
        assert!(!k.verify("csrf", &["a", "c"], &tag));
        assert!(!k.verify("other", &["a", "b"], &tag));
        assert!(!k.verify("csrf", &["ab"], &tag), "parts are delimited");
        assert!(!k.verify("csrf", &["a", "b"], "garbage"));
    }

    #[test]
    fn seal_opens_only_with_the_same_secret() {
        let sealed = seal("token-1", "p", b"hello").unwrap();
        assert_eq!(open("token-1", "p", &sealed).unwrap(), b"hello");
        assert!(open("token-2", "p", &sealed).is_none());
        assert!(open("token-1", "q", &sealed).is_none());
    }
}
