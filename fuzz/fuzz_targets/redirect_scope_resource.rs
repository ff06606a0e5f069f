//! Redirect URIs, scopes and resource indicators (src/domain/redirect_uri.rs, scope.rs,
//! resource.rs). The input is split into lines; each line goes through every parser,
//! and neighbouring lines are compared with each other.
//!
//! Invariants: a parsed redirect URI is kept byte for byte, re-parses to itself, has no
//! fragment or credentials, and is https with a host, http on a loopback host, or an
//! app's own scheme (never one a browser handles itself); loopback matching ignores only
//! the port and which loopback name is used, and is symmetric. A scope set prints in canonical form
//! and parses back to itself, holds only valid tokens, and obeys the set laws. A resource
//! indicator that resolves always names this server.

#![no_main]

use gatehouse::domain::{RedirectKind, RedirectUri, ResourceUri, Scope, ScopeSet};
use libfuzzer_sys::fuzz_target;

const SERVERS: &[&str] = &["https://gate.example.com", "http://127.0.0.1:8080"];

fn check_redirect(line: &str) -> Option<(RedirectUri, url::Url)> {
    let uri = RedirectUri::parse(line).ok()?;
    assert_eq!(uri.as_str(), line, "kept exactly as given");
    assert_eq!(uri.to_string(), line);
    assert_eq!(RedirectUri::parse(uri.as_str()).as_ref(), Ok(&uri));
    assert!(!line.contains('#'), "no fragment");
    let url = url::Url::parse(line).expect("a parsed redirect URI is a URL");
    assert!(url.username().is_empty() && url.password().is_none());
    let host = url.host_str().unwrap_or_default();
    let loopback_host = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    match url.scheme() {
        "https" => assert!(!host.is_empty() && uri.kind() == RedirectKind::Https),
        "http" => assert!(
            loopback_host && uri.kind() == RedirectKind::Loopback,
            "plain http only on loopback"
        ),
        "javascript" | "data" | "file" | "blob" | "about" | "vbscript" | "ws" | "wss"
        | "mailto" | "intent" | "content" | "chrome" => {
            panic!("browser scheme {:?} accepted", url.scheme())
        }
        _ => {
            assert_eq!(uri.kind(), RedirectKind::PrivateUse);
            assert!(!url.cannot_be_a_base(), "an app scheme has a path");
        }
    }
    assert_eq!(uri.host(), host);
    assert!(uri.matches(&uri));
    Some((uri, url))
}

fn check_pair(a: &(RedirectUri, url::Url), b: &(RedirectUri, url::Url)) {
    let m = a.0.matches(&b.0);
    assert_eq!(m, b.0.matches(&a.0), "matching is symmetric");
    if m && a.0 != b.0 {
        // Only loopback redirects may differ, and only in the port and loopback name.
        assert!(a.0.is_loopback() && b.0.is_loopback());
        assert_eq!(a.1.scheme(), b.1.scheme());
        assert_eq!(a.1.path(), b.1.path());
        assert_eq!(a.1.query(), b.1.query());
    }
}

fn valid_scope_byte(b: u8) -> bool {
    b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b)
}

fn check_scopes(line: &str) -> Option<ScopeSet> {
    let tokens: Vec<&str> = line.split(' ').filter(|t| !t.is_empty()).collect();
    let parsed = ScopeSet::parse(line);
    let all_valid = tokens
        .iter()
        .all(|t| t.len() <= 128 && t.bytes().all(valid_scope_byte));
    let set = match parsed {
        Ok(set) => set,
        Err(_) => {
            let mut distinct = tokens.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert!(
                !all_valid || distinct.len() > 64,
                "refused a valid scope list"
            );
            return None;
        }
    };
    assert!(all_valid, "accepted an invalid scope token");
    assert!(set.len() <= 64);
    for t in &tokens {
        assert!(set.contains(t));
        assert_eq!(Scope::parse(t).map(|s| s.to_string()).as_deref(), Ok(*t));
    }
    let printed = set.to_string();
    assert!(!printed.contains("  ") && !printed.starts_with(' ') && !printed.ends_with(' '));
    assert_eq!(
        ScopeSet::parse(&printed).as_ref(),
        Ok(&set),
        "print, parse round trip"
    );
    for s in set.iter() {
        let json = serde_json::to_string(s).expect("a scope serializes");
        assert_eq!(serde_json::from_str::<Scope>(&json).ok().as_ref(), Some(s));
    }
    Some(set)
}

fn check_set_laws(a: &ScopeSet, b: &ScopeSet) {
    let u = a.union(b);
    assert!(a.is_subset(&u) && b.is_subset(&u));
    let d = a.difference(b);
    assert!(d.is_subset(a));
    assert!(d.iter().all(|s| !b.contains(s.as_str())));
    assert_eq!(d.union(b), u);
}

fn check_resource(line: &str) {
    for server in SERVERS {
        let canonical = ResourceUri::for_public_url(server);
        let Ok(resolved) = canonical.resolve(line, server) else {
            continue;
        };
        assert_eq!(resolved, canonical);
        let url = url::Url::parse(line.trim()).expect("a resolved resource is a URL");
        let ours = url::Url::parse(server).expect("server URL");
        assert_eq!(url.scheme(), ours.scheme());
        assert_eq!(url.host_str(), ours.host_str());
        assert_eq!(url.port(), ours.port());
        assert!(url.query().is_none() && url.fragment().is_none());
        assert!(matches!(url.path().trim_end_matches('/'), "" | "/mcp"));
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut redirects = Vec::new();
    let mut scope_sets = Vec::new();
    for line in std::iter::once(text.as_ref()).chain(text.split('\n')) {
        if let Some(r) = check_redirect(line) {
            redirects.push(r);
        }
        if let Some(s) = check_scopes(line) {
            scope_sets.push(s);
        }
        check_resource(line);
    }
    for w in redirects.windows(2) {
        check_pair(&w[0], &w[1]);
    }
    for w in scope_sets.windows(2) {
        check_set_laws(&w[0], &w[1]);
    }
});
