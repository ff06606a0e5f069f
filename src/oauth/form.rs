//! `application/x-www-form-urlencoded` bodies of the token, revocation and introspection
//! endpoints: a parameter given twice is an error (RFC 6749 §3.2), empty means absent.

use super::error::OAuthError;

pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
        for (k, _) in &pairs {
            if pairs.iter().filter(|(k2, _)| k2 == k).count() > 1 {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {k} appears more than once"
                )));
            }
        }
        Ok(Self(pairs))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    pub fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("{name} is required")))
    }
}
