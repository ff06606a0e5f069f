//! Redirect URIs (RFC 6749 §3.1.2, OAuth 2.1 §2.3, RFC 8252 §7.3).

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RedirectUriError {
    #[error("redirect URI is not an absolute URL")]
    NotAbsolute,
    #[error("redirect URI must use https, or http on a loopback host")]
    InsecureScheme,
    #[error("redirect URI must not contain a fragment")]
    Fragment,
    #[error("redirect URI must not contain user credentials")]
    Credentials,
    #[error("redirect URI is too long")]
    TooLong,
    #[error("redirect URI host is not a host name (no wildcards)")]
    InvalidHost,
}

/// A registered or requested redirect URI, kept exactly as given (comparison is exact).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RedirectUri {
    raw: String,
    loopback: bool,
}

fn is_loopback_host(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

impl RedirectUri {
    pub fn parse(raw: &str) -> Result<Self, RedirectUriError> {
        if raw.len() > 2000 {
            return Err(RedirectUriError::TooLong);
        }
        let url = url::Url::parse(raw).map_err(|_| RedirectUriError::NotAbsolute)?;
        if raw.contains('#') {
            return Err(RedirectUriError::Fragment);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(RedirectUriError::Credentials);
        }
        // A domain is letters, digits, `-`, `.` (and `_`, seen in real DNS names): a
        // wildcard such as `*.example.com` would parse as a literal host otherwise.
        if let Some(url::Host::Domain(d)) = url.host()
            && !d
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(RedirectUriError::InvalidHost);
        }
        let host = url.host_str().unwrap_or_default();
        let loopback = url.scheme() == "http" && is_loopback_host(host);
        match url.scheme() {
            "https" if !host.is_empty() => {}
            "http" if loopback => {}
            _ => return Err(RedirectUriError::InsecureScheme),
        }
        Ok(Self {
            raw: raw.to_owned(),
            loopback,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn is_loopback(&self) -> bool {
        self.loopback
    }

    /// The host a person should see on the consent page.
    pub fn host(&self) -> String {
        url::Url::parse(&self.raw)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Whether a requested URI matches this registered one: exactly, except that a
    /// loopback redirect may use any port (RFC 8252 §7.3).
    pub fn matches(&self, requested: &RedirectUri) -> bool {
        if self.raw == requested.raw {
            return true;
        }
        if !(self.loopback && requested.loopback) {
            return false;
        }
        match (url::Url::parse(&self.raw), url::Url::parse(&requested.raw)) {
            (Ok(mut a), Ok(mut b)) => {
                let _ = a.set_port(None);
                let _ = b.set_port(None);
                a == b
            }
            _ => false,
        }
    }
}

impl fmt::Display for RedirectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_https_and_loopback_http() {
        assert!(RedirectUri::parse("https://claude.ai/api/mcp/auth_callback").is_ok());
        assert!(RedirectUri::parse("http://127.0.0.1:3000/callback").is_ok());
        assert!(RedirectUri::parse("http://localhost/callback").is_ok());
        assert!(RedirectUri::parse("http://[::1]:9/cb").is_ok());
    }

    #[test]
    fn rejects_plain_http_fragments_credentials_and_junk() {
        use RedirectUriError::*;
        assert_eq!(
            RedirectUri::parse("http://example.com/cb"),
            Err(InsecureScheme)
        );
        assert_eq!(RedirectUri::parse("https://a.example/cb#x"), Err(Fragment));
        assert_eq!(
            RedirectUri::parse("https://u:p@a.example/cb"),
            Err(Credentials)
        );
        assert_eq!(RedirectUri::parse("/relative"), Err(NotAbsolute));
        assert_eq!(
            RedirectUri::parse("javascript:alert(1)"),
            Err(InsecureScheme)
        );
        assert_eq!(
            RedirectUri::parse("http://localhost.evil.com/cb"),
            Err(InsecureScheme)
        );
        assert_eq!(
            RedirectUri::parse("https://*.example.com/cb"),
            Err(InvalidHost)
        );
        assert!(
            RedirectUri::parse("https://bücher.example/cb").is_ok(),
            "IDN as punycode"
        );
    }

    #[test]
    fn matching_is_exact_except_loopback_ports() {
        let reg = RedirectUri::parse("https://claude.ai/api/mcp/auth_callback").unwrap();
        assert!(
            reg.matches(&RedirectUri::parse("https://claude.ai/api/mcp/auth_callback").unwrap())
        );
        assert!(
            !reg.matches(&RedirectUri::parse("https://claude.ai/api/mcp/auth_callback/").unwrap())
        );
        assert!(
            !reg.matches(
                &RedirectUri::parse("https://claude.ai/api/mcp/auth_callback?x=1").unwrap()
            )
        );
        let lo = RedirectUri::parse("http://localhost/callback").unwrap();
        assert!(lo.matches(&RedirectUri::parse("http://localhost:53121/callback").unwrap()));
        assert!(!lo.matches(&RedirectUri::parse("http://localhost:53121/other").unwrap()));
        assert!(!lo.matches(&RedirectUri::parse("http://127.0.0.1:53121/callback").unwrap()));
    }
}
