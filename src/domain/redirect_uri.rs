//! Redirect URIs (RFC 6749 §3.1.2, OAuth 2.1 §2.3, RFC 8252 §7).

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RedirectUriError {
    #[error("redirect URI is not an absolute URL")]
    NotAbsolute,
    #[error(
        "redirect URI must use https, http on a loopback host, or an app's own (private-use) scheme"
    )]
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

/// Where a redirect URI sends the browser, which decides how far it can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RedirectKind {
    /// An https URL: only the host's owner can receive it.
    Https,
    /// `http://localhost`, `127.0.0.1` or `[::1]` (RFC 8252 §7.3): any program on the
    /// person's machine can listen there.
    Loopback,
    /// An app's own scheme such as `cursor://…` or `com.example.app:/cb` (RFC 8252
    /// §7.1): any app on the machine can claim it.
    PrivateUse,
}

/// A registered or requested redirect URI, kept exactly as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RedirectUri {
    raw: String,
    kind: RedirectKind,
}

fn is_loopback_host(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// Schemes a browser handles itself or that reach something other than the app that
/// registered them: never a place to deliver an authorization code.
const NOT_APP_SCHEMES: &[&str] = &[
    "http",
    "https",
    "javascript",
    "data",
    "file",
    "blob",
    "filesystem",
    "about",
    "vbscript",
    "view-source",
    "ws",
    "wss",
    "ftp",
    "mailto",
    "tel",
    "sms",
    "urn",
    "intent",
    "content",
    "chrome",
    "resource",
];

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
        let kind = match url.scheme() {
            "https" if !host.is_empty() => RedirectKind::Https,
            "http" if is_loopback_host(host) => RedirectKind::Loopback,
            // `url` lowercases the scheme; it must name an app, not a browser feature.
            s if !NOT_APP_SCHEMES.contains(&s) && !url.cannot_be_a_base() => {
                RedirectKind::PrivateUse
            }
            _ => return Err(RedirectUriError::InsecureScheme),
        };
        Ok(Self {
            raw: raw.to_owned(),
            kind,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn kind(&self) -> RedirectKind {
        self.kind
    }

    pub fn is_loopback(&self) -> bool {
        self.kind == RedirectKind::Loopback
    }

    pub fn is_private_use(&self) -> bool {
        self.kind == RedirectKind::PrivateUse
    }

    /// Whether a program on the person's own machine could receive this redirect
    /// (loopback or private-use), so that a remembered consent must not be replayed
    /// to it silently (RFC 8252 §8.6).
    pub fn is_on_device(&self) -> bool {
        self.kind != RedirectKind::Https
    }

    /// The scheme, lowercased (`https`, `http`, `cursor`, …).
    pub fn scheme(&self) -> String {
        url::Url::parse(&self.raw)
            .map(|u| u.scheme().to_owned())
            .unwrap_or_default()
    }

    /// The host a person should see on the consent page.
    pub fn host(&self) -> String {
        url::Url::parse(&self.raw)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Whether a requested URI matches this registered one: exactly, except that a
    /// loopback redirect may use any port and any of the loopback names (RFC 8252 §7.3;
    /// clients register `127.0.0.1` and then send `localhost`, or the reverse).
    pub fn matches(&self, requested: &RedirectUri) -> bool {
        if self.raw == requested.raw {
            return true;
        }
        if !(self.is_loopback() && requested.is_loopback()) {
            return false;
        }
        match (url::Url::parse(&self.raw), url::Url::parse(&requested.raw)) {
            (Ok(a), Ok(b)) => a.path() == b.path() && a.query() == b.query(),
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
        assert!(lo.matches(&RedirectUri::parse("http://127.0.0.1:53121/callback").unwrap()));
        assert!(lo.matches(&RedirectUri::parse("http://[::1]:9/callback").unwrap()));
        assert!(!lo.matches(&RedirectUri::parse("http://localhost:1/callback?x=1").unwrap()));
        let app = RedirectUri::parse("cursor://anysphere.cursor-mcp/oauth/callback").unwrap();
        assert!(
            !app.matches(&RedirectUri::parse("cursor://anysphere.cursor-mcp/oauth/other").unwrap())
        );
        assert!(!app.matches(&RedirectUri::parse("cursor://evil/oauth/callback").unwrap()));
    }

    #[test]
    fn private_use_schemes_are_apps_but_browser_schemes_are_not() {
        for ok in [
            "cursor://anysphere.cursor-mcp/oauth/callback",
            "com.example.app:/oauth2redirect",
            "vscode://vscode.github-authentication/did-authenticate",
        ] {
            let uri = RedirectUri::parse(ok).unwrap();
            assert_eq!(uri.kind(), RedirectKind::PrivateUse, "{ok}");
            assert!(uri.is_on_device());
        }
        for bad in [
            "javascript://x/%0aalert(1)",
            "data://text/html,x",
            "file:///etc/passwd",
            "ws://localhost/cb",
            "intent://x/#Intent;end",
            "mailto:someone@example.com",
            "custom:no-slash",
        ] {
            assert!(RedirectUri::parse(bad).is_err(), "{bad}");
        }
        assert!(
            !RedirectUri::parse("https://a.example/cb")
                .unwrap()
                .is_on_device()
        );
        assert!(
            RedirectUri::parse("http://127.0.0.1/cb")
                .unwrap()
                .is_on_device()
        );
    }
}
