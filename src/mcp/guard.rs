//! DNS-rebinding guard for `/mcp`: a request whose `Host` is not ours, or whose
//! browser `Origin` is not one we allow, is refused before anything else happens.

use axum::http::{HeaderMap, header};

use crate::config::Config;

const LOOPBACK_NAMES: &[&str] = &["localhost", "127.0.0.1", "[::1]"];

pub struct OriginGuard {
    origins: Vec<String>,
    hosts: Vec<String>,
}

impl OriginGuard {
    pub fn new(config: &Config) -> Self {
        let public = url::Url::parse(&config.server.public_url).ok();
        let mut origins = config.mcp.allowed_origins.clone();
        let mut hosts = config.mcp.allowed_hosts.clone();
        if let Some(u) = &public {
            origins.push(u.origin().ascii_serialization());
            if let Some(h) = u.host_str() {
                hosts.push(h.to_ascii_lowercase());
                if LOOPBACK_NAMES.contains(&h) {
                    hosts.extend(LOOPBACK_NAMES.iter().map(|s| (*s).to_owned()));
                }
            }
        }
        Self { origins, hosts }
    }

    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().map_err(|_| "Host header not allowed")?;
            if !self.hosts.iter().any(|h| *h == host_name(host)) {
                return Err("Host header not allowed");
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().map_err(|_| "origin not allowed")?;
            let ok = self.origins.iter().any(|o| o == origin)
                || url::Url::parse(origin).is_ok_and(|u| {
                    // A local tool's page on any loopback port, when we are local too.
                    u.host_str().is_some_and(|h| LOOPBACK_NAMES.contains(&h))
                        && self.hosts.iter().any(|h| h == "localhost")
                });
            if !ok {
                return Err("origin not allowed");
            }
        }
        Ok(())
    }
}

/// `Example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => host[..=i].to_owned(),
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_owned(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn guard(public_url: &str) -> OriginGuard {
        let mut c = Config::defaults().unwrap();
        c.server.public_url = public_url.into();
        OriginGuard::new(&c)
    }

    fn headers(host: Option<&'static str>, origin: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(header::HOST, HeaderValue::from_static(v));
        }
        if let Some(v) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn public_host_and_claude_origin_pass_others_do_not() {
        let g = guard("https://mcp.example.com");
        assert!(g.check(&headers(Some("mcp.example.com"), None)).is_ok());
        assert!(
            g.check(&headers(
                Some("MCP.example.com:443"),
                Some("https://claude.ai")
            ))
            .is_ok()
        );
        assert!(g.check(&headers(Some("evil.example.com"), None)).is_err());
        assert!(
            g.check(&headers(
                Some("mcp.example.com"),
                Some("https://evil.example.com")
            ))
            .is_err()
        );
        assert!(g.check(&headers(Some("localhost:8080"), None)).is_err());
    }

    #[test]
    fn loopback_servers_accept_loopback_names() {
        let g = guard("http://127.0.0.1:8080");
        assert!(
            g.check(&headers(
                Some("localhost:3001"),
                Some("http://localhost:3001")
            ))
            .is_ok()
        );
        assert!(g.check(&headers(Some("[::1]:8080"), None)).is_ok());
        assert!(g.check(&headers(Some("evil.example.com"), None)).is_err());
        assert!(
            g.check(&headers(Some("localhost"), Some("http://evil.example.com")))
                .is_err()
        );
    }
}
