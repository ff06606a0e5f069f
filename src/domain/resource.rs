//! The MCP resource this server protects (RFC 8707 audience).

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("resource {0:?} is not served here")]
pub struct UnknownResource(pub String);

/// The canonical resource URI, `<public_url>/mcp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceUri(String);

impl ResourceUri {
    pub fn for_public_url(public_url: &str) -> Self {
        Self(format!("{public_url}/mcp"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Accepts what clients send for this resource: the canonical URI with or without a
    /// trailing slash and with any case in scheme and host, or the server's origin.
    /// Anything else names some other resource.
    pub fn resolve(&self, requested: &str, public_url: &str) -> Result<Self, UnknownResource> {
        let norm = |s: &str| -> Option<String> {
            let url = url::Url::parse(s.trim()).ok()?;
            if url.fragment().is_some() || url.query().is_some() {
                return None;
            }
            let mut out = format!("{}://{}", url.scheme(), url.host_str()?);
            if let Some(p) = url.port() {
                out.push_str(&format!(":{p}"));
            }
            out.push_str(url.path().trim_end_matches('/'));
            Some(out)
        };
        let wanted = norm(requested);
        if wanted.is_some() && (wanted == norm(&self.0) || wanted == norm(public_url)) {
            Ok(self.clone())
        } else {
            Err(UnknownResource(requested.chars().take(200).collect()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerates_slash_case_and_origin_but_nothing_else() {
        let base = "https://gate.example.com";
        let r = ResourceUri::for_public_url(base);
        for ok in [
            "https://gate.example.com/mcp",
            "https://gate.example.com/mcp/",
            "HTTPS://Gate.Example.com/mcp",
            "https://gate.example.com",
            "https://gate.example.com/",
        ] {
            assert_eq!(
                r.resolve(ok, base).unwrap().as_str(),
                "https://gate.example.com/mcp",
                "{ok}"
            );
        }
        for bad in [
            "https://evil.example.com/mcp",
            "https://gate.example.com/other",
            "https://gate.example.com/mcp#x",
            "not a url",
            "https://gate.example.com:8443/mcp",
        ] {
            assert!(r.resolve(bad, base).is_err(), "{bad}");
        }
    }
}
