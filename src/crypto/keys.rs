//! Ed25519 signing keys for access tokens, and the JWKS that publishes them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{DecodingKey, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("stored key {0} is unreadable")]
    Corrupt(String),
    #[error("no active signing key")]
    NoActiveKey,
}

/// A key as stored: PKCS#8 private key and raw public key, both base64url.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub kid: String,
    pub private_key: String,
    pub public_key: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

/// A freshly generated key pair.
pub fn generate(kid: String, now: i64) -> Result<StoredKey, KeyError> {
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)?;
    Ok(StoredKey {
        kid,
        private_key: URL_SAFE_NO_PAD.encode(pkcs8.as_ref()),
        public_key: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        created_at: now,
        retired_at: None,
    })
}

pub struct SigningKey {
    pub kid: String,
    pub encoding: EncodingKey,
}

pub struct VerifyingKey {
    pub kid: String,
    pub x: String,
    pub decoding: DecodingKey,
    pub retired_at: Option<i64>,
}

/// The keys in use: one signs, all verify and are published.
pub struct KeySet {
    signing: SigningKey,
    verifying: Vec<VerifyingKey>,
}

impl KeySet {
    /// `keys` newest first; the newest unretired key signs.
    pub fn from_stored(keys: &[StoredKey]) -> Result<Self, KeyError> {
        let active = keys
            .iter()
            .filter(|k| k.retired_at.is_none())
            .max_by(|a, b| a.created_at.cmp(&b.created_at).then(a.kid.cmp(&b.kid)))
            .ok_or(KeyError::NoActiveKey)?;
        let der = URL_SAFE_NO_PAD
            .decode(&active.private_key)
            .map_err(|_| KeyError::Corrupt(active.kid.clone()))?;
        Ed25519KeyPair::from_pkcs8(&der).map_err(|_| KeyError::Corrupt(active.kid.clone()))?;
        let signing = SigningKey {
            kid: active.kid.clone(),
            encoding: EncodingKey::from_ed_der(&der),
        };
        let verifying = keys
            .iter()
            .map(|k| {
                Ok(VerifyingKey {
                    kid: k.kid.clone(),
                    x: k.public_key.clone(),
                    decoding: DecodingKey::from_ed_components(&k.public_key)
                        .map_err(|_| KeyError::Corrupt(k.kid.clone()))?,
                    retired_at: k.retired_at,
                })
            })
            .collect::<Result<Vec<_>, KeyError>>()?;
        Ok(Self { signing, verifying })
    }

    pub fn signing(&self) -> &SigningKey {
        &self.signing
    }

    pub fn verifying(&self, kid: &str) -> Option<&VerifyingKey> {
        self.verifying.iter().find(|k| k.kid == kid)
    }

    /// RFC 7517 JWK Set with every key that may still have live tokens.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .verifying
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": k.x,
                    "kid": k.kid,
                    "use": "sig",
                    "alg": "EdDSA",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}
