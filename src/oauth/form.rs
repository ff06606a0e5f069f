//! `application/x-www-form-urlencoded` bodies of the token, revocation and introspection
//! endpoints: a parameter given twice is an error (RFC 6749 §3.2), empty means absent.

use std::collections::HashMap;

use axum::extract::rejection::RawFormRejection;
use axum::extract::{FromRequest, RawForm, Request};
use axum::response::{IntoResponse, Response};

use super::error::OAuthError;

pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
        // Counted in one pass: comparing every pair with every other made a large body of
        // distinct names cost quadratic time before any client was authenticated.
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(pairs.len());
        for (k, _) in &pairs {
            *seen.entry(k.as_str()).or_default() += 1;
        }
        if let Some((k, _)) = pairs.iter().find(|(k, _)| seen[k.as_str()] > 1) {
            return Err(OAuthError::invalid_request(format!(
                "parameter {k} appears more than once"
            )));
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

/// The body of a token, revocation or introspection request, parsed into [`Params`].
/// A body that is not a form (JSON, say) gets our `invalid_request` instead of axum's
/// plain-text 415; other rejections (a body over the size limit) keep their status.
pub struct FormParams(pub Params);

impl<S: Send + Sync> FromRequest<S> for FormParams {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match RawForm::from_request(req, state).await {
            Ok(RawForm(body)) => Params::parse(&body)
                .map(Self)
                .map_err(IntoResponse::into_response),
            Err(RawFormRejection::InvalidFormContentType(_)) => Err(OAuthError::invalid_request(
                "the body must be application/x-www-form-urlencoded",
            )
            .into_response()),
            Err(other) => Err(other.into_response()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_repeated_name_in_the_body_is_reported() {
        let e = Params::parse(b"a=1&b=1&b=2&a=2").err().unwrap();
        assert_eq!(e.description, "parameter a appears more than once");
        let p = Params::parse(b"grant_type=refresh_token&scope=&x=1").unwrap();
        assert_eq!(p.get("grant_type"), Some("refresh_token"));
        assert_eq!(p.get("scope"), None, "empty means absent");
    }

    #[test]
    fn a_large_form_of_distinct_names_parses() {
        // About 1 MiB, the default body limit: once quadratic, now a single pass.
        let body: Vec<String> = (0..150_000).map(|i| format!("k{i}=")).collect();
        let p = Params::parse(body.join("&").as_bytes()).unwrap();
        assert_eq!(p.get("k149999"), None);
        let mut with_repeat = body.join("&");
        with_repeat.push_str("&k7=x");
        let e = Params::parse(with_repeat.as_bytes()).err().unwrap();
        assert_eq!(e.description, "parameter k7 appears more than once");
    }
}
