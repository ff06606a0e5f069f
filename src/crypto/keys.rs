//! Ed25519 signing keys for access tokens, and the JWKS that publishes them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
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
    #[error(
        "stored secret {0} cannot be opened with this key-encryption key (keys.encryption_key \
         or keys.encryption_key_file): was it changed? Start with the key it was sealed with"
    )]
    WrongKek(String),
}

/// The key-encryption key: private signing keys and the cookie secret are stored sealed
/// under it (ChaCha20-Poly1305, a key derived per purpose), so a copy of the database
/// alone cannot forge tokens or sessions.
#[derive(Clone)]
pub struct Kek {
    secret: String,
    development: bool,
}

/// Never shows the key.
impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.development {
            "Kek(development)"
        } else {
            "Kek(***)"
        })
    }
}

/// Marks a sealed value; values without it were written before sealing existed.
const SEALED: &str = "kek1:";

impl Kek {
    /// At least 32 characters: `openssl rand -base64 32` gives 44.
    pub fn new(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        if secret.len() < 32 {
            return Err(
                "must be at least 32 characters (generate one with: openssl rand -base64 32)"
                    .into(),
            );
        }
        Ok(Self {
            secret: secret.to_owned(),
            development: false,
        })
    }

    /// A fixed, public key for development: it keeps the code path the same, and
    /// protects nothing. Production mode refuses to start with it.
    pub fn development() -> Self {
        Self {
            secret: "gatehouse development key-encryption key; protects nothing".into(),
            development: true,
        }
    }

    pub fn is_development(&self) -> bool {
        self.development
    }

    /// Seals `plain` for storage under `name` (a sealed value only opens under its name).
    pub fn seal(&self, name: &str, plain: &[u8]) -> Result<String, KeyError> {
        super::mac::seal(&self.secret, name, plain)
            .map(|s| format!("{SEALED}{s}"))
            .ok_or(KeyError::Generate)
    }

    /// Opens a stored value: `Ok(None)` when it predates sealing (stored in clear).
    pub fn open(&self, name: &str, stored: &str) -> Result<Option<Vec<u8>>, KeyError> {
        match stored.strip_prefix(SEALED) {
            Some(sealed) => super::mac::open(&self.secret, name, sealed)
                .map(Some)
                .ok_or_else(|| KeyError::WrongKek(name.to_owned())),
            None => Ok(None),
        }
    }

    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(SEALED)
    }
}

fn key_name(kid: &str) -> String {
    format!("signing-key:{kid}")
}

/// A key as stored: the PKCS#8 private key sealed under the [`Kek`] (base64url in clear
/// for keys written before sealing), and the raw public key, base64url.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub kid: String,
    pub private_key: String,
    pub public_key: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

/// A freshly generated key pair, its private half sealed under `kek`.
pub fn generate(kid: String, now: i64, kek: &Kek) -> Result<StoredKey, KeyError> {
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)?;
    Ok(StoredKey {
        private_key: kek.seal(&key_name(&kid), pkcs8.as_ref())?,
        kid,
        public_key: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        created_at: now,
        retired_at: None,
    })
}

pub struct SigningKey {
    pub kid: String,
    /// Parsed once: parsing derives the public key, a second scalar multiplication
    /// that would otherwise double the cost of every token signed.
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// A compact JWS (`alg: EdDSA`, this key's `kid`, `typ`) over `claims`.
    pub fn sign_jwt(
        &self,
        typ: &str,
        claims: &impl serde::Serialize,
    ) -> Result<String, serde_json::Error> {
        #[derive(serde::Serialize)]
        struct Header<'a> {
            typ: &'a str,
            alg: &'static str,
            kid: &'a str,
        }
        let header = serde_json::to_vec(&Header {
            typ,
            alg: "EdDSA",
            kid: &self.kid,
        })?;
        let claims = serde_json::to_vec(claims)?;
        let mut out = URL_SAFE_NO_PAD.encode(header);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut out);
        let signature = self.pair.sign(out.as_bytes());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut out);
        Ok(out)
    }
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

/// The PKCS#8 DER of a stored key, opened under `kek` (or decoded, if stored in clear).
fn private_der(key: &StoredKey, kek: &Kek) -> Result<Vec<u8>, KeyError> {
    match kek.open(&key_name(&key.kid), &key.private_key)? {
        Some(der) => Ok(der),
        None => URL_SAFE_NO_PAD
            .decode(&key.private_key)
            .map_err(|_| KeyError::Corrupt(key.kid.clone())),
    }
}

/// The private half of a key stored in clear, sealed under `kek` (for the upgrade of
/// keys written before sealing); `None` when it is sealed already.
pub fn seal_if_clear(key: &StoredKey, kek: &Kek) -> Result<Option<String>, KeyError> {
    if Kek::is_sealed(&key.private_key) {
        return Ok(None);
    }
    let der = private_der(key, kek)?;
    kek.seal(&key_name(&key.kid), &der).map(Some)
}

impl KeySet {
    /// `keys` newest first; the newest unretired key signs.
    pub fn from_stored(keys: &[StoredKey], kek: &Kek) -> Result<Self, KeyError> {
        let active = keys
            .iter()
            .filter(|k| k.retired_at.is_none())
            .max_by(|a, b| a.created_at.cmp(&b.created_at).then(a.kid.cmp(&b.kid)))
            .ok_or(KeyError::NoActiveKey)?;
        let der = private_der(active, kek)?;
        let pair =
            Ed25519KeyPair::from_pkcs8(&der).map_err(|_| KeyError::Corrupt(active.kid.clone()))?;
        let signing = SigningKey {
            kid: active.kid.clone(),
            pair,
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
