//! RFC 9068 access tokens: EdDSA-signed JWTs with `typ: at+jwt`.

use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};

use super::keys::KeySet;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    pub scope: String,
    /// The organization the token acts in.
    pub org: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("token is not an access token")]
    WrongType,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("signing failed")]
    Sign,
}

pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

pub fn sign(keys: &KeySet, claims: &AccessClaims) -> Result<String, JwtError> {
    keys.signing()
        .sign_jwt(ACCESS_TOKEN_TYP, claims)
        .map_err(|_| JwtError::Sign)
}

/// Verifies signature (EdDSA only), `typ`, `iss`, `aud` and expiry at `now`.
pub fn verify(
    keys: &KeySet,
    token: &str,
    issuer: &str,
    audience: &str,
    now: i64,
) -> Result<AccessClaims, JwtError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
    if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
        return Err(JwtError::WrongType);
    }
    let kid = header.kid.ok_or(JwtError::UnknownKey)?;
    let key = keys.verifying(&kid).ok_or(JwtError::UnknownKey)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    // Expiry and audience are checked below against our own clock and rules.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &validation).map_err(
        |e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => JwtError::BadSignature,
            _ => JwtError::Malformed,
        },
    )?;
    let claims = data.claims;
    if claims.iss != issuer {
        return Err(JwtError::WrongIssuer);
    }
    if claims.aud.trim_end_matches('/') != audience.trim_end_matches('/') {
        return Err(JwtError::WrongAudience);
    }
    if claims.exp <= now {
        return Err(JwtError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::{Kek, KeySet, generate};

    fn claims(now: i64) -> AccessClaims {
        AccessClaims {
            iss: "https://gate.example".into(),
            sub: "usr_1".into(),
            aud: "https://gate.example/mcp".into(),
            client_id: "c1".into(),
            scope: "account:read".into(),
            org: "org_1".into(),
            exp: now + 60,
            iat: now,
            jti: "j1".into(),
        }
    }

    #[test]
    fn signs_and_verifies_with_every_check() {
        let keys = KeySet::from_stored(
            &[generate("k1".into(), 0, &Kek::development()).unwrap()],
            &Kek::development(),
        )
        .unwrap();
        let t = sign(&keys, &claims(1000)).unwrap();
        let ok = verify(
            &keys,
            &t,
            "https://gate.example",
            "https://gate.example/mcp/",
            1000,
        )
        .unwrap();
        assert_eq!(ok, claims(1000));
        assert_eq!(
            verify(&keys, &t, "https://other", "https://gate.example/mcp", 1000),
            Err(JwtError::WrongIssuer)
        );
        assert_eq!(
            verify(&keys, &t, "https://gate.example", "https://x/mcp", 1000),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            verify(
                &keys,
                &t,
                "https://gate.example",
                "https://gate.example/mcp",
                1060
            ),
            Err(JwtError::Expired)
        );
    }

    #[test]
    fn tampering_and_foreign_keys_fail() {
        let keys = KeySet::from_stored(
            &[generate("k1".into(), 0, &Kek::development()).unwrap()],
            &Kek::development(),
        )
        .unwrap();
        let t = sign(&keys, &claims(1000)).unwrap();
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let flip = if &parts[1][5..6] == "A" { "B" } else { "A" };
        parts[1].replace_range(5..6, flip);
        let tampered = parts.join(".");
        assert!(
            verify(
                &keys,
                &tampered,
                "https://gate.example",
                "https://gate.example/mcp",
                1000
            )
            .is_err()
        );
        let other = KeySet::from_stored(
            &[generate("k1".into(), 0, &Kek::development()).unwrap()],
            &Kek::development(),
        )
        .unwrap();
        assert_eq!(
            verify(
                &other,
                &t,
                "https://gate.example",
                "https://gate.example/mcp",
                1000
            ),
            Err(JwtError::BadSignature)
        );
        assert!(verify(&keys, "not.a.jwt", "i", "a", 0).is_err());
    }
}
