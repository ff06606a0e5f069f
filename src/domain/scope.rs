//! OAuth scopes (RFC 6749 §3.3): space-delimited, case-sensitive tokens.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("{0:?} is not a valid scope token")]
    Malformed(String),
    #[error("too many scopes (at most {0})")]
    TooMany(usize),
}

const MAX_SCOPES: usize = 64;
const MAX_SCOPE_LEN: usize = 128;

/// One scope token: `1*( %x21 / %x23-5B / %x5D-7E )`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

impl Scope {
    pub fn parse(raw: &str) -> Result<Self, ScopeError> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_SCOPE_LEN
            && raw
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ScopeError::Malformed(raw.chars().take(40).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Scope {
    type Error = ScopeError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Scope> for String {
    fn from(value: Scope) -> Self {
        value.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of scopes, kept sorted so its string form is canonical.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Parses a space-delimited list; repeated spaces and duplicates are tolerated.
    pub fn parse(raw: &str) -> Result<Self, ScopeError> {
        let mut set = BTreeSet::new();
        for token in raw.split(' ').filter(|t| !t.is_empty()) {
            set.insert(Scope::parse(token)?);
            if set.len() > MAX_SCOPES {
                return Err(ScopeError::TooMany(MAX_SCOPES));
            }
        }
        Ok(Self(set))
    }

    pub fn from_scopes(scopes: impl IntoIterator<Item = Scope>) -> Self {
        Self(scopes.into_iter().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.0.iter().any(|s| s.as_str() == scope)
    }

    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    /// Keeps only the scopes `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&Scope) -> bool) {
        self.0.retain(|s| keep(s));
    }

    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        Self(self.0.union(&other.0).cloned().collect())
    }

    pub fn difference(&self, other: &ScopeSet) -> ScopeSet {
        Self(self.0.difference(&other.0).cloned().collect())
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(s.as_str())?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_space_delimited_scopes_in_canonical_order() {
        let set = ScopeSet::parse("b a  b").unwrap();
        assert_eq!(set.to_string(), "a b");
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn rejects_quotes_backslashes_and_control_characters() {
        for bad in ["a\"b", "a\\b", "a\tb", "é"] {
            assert!(ScopeSet::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn empty_string_is_the_empty_set() {
        assert!(ScopeSet::parse("").unwrap().is_empty());
    }

    #[test]
    fn subset_and_difference() {
        let small = ScopeSet::parse("account:read").unwrap();
        let big = ScopeSet::parse("account:read account:write").unwrap();
        assert!(small.is_subset(&big));
        assert!(!big.is_subset(&small));
        assert_eq!(big.difference(&small).to_string(), "account:write");
    }

    #[test]
    fn caps_the_number_of_scopes() {
        let many: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
        assert_eq!(
            ScopeSet::parse(&many.join(" ")),
            Err(ScopeError::TooMany(64))
        );
    }
}

/// The scopes Gatehouse itself defines, with the words shown to a person on the consent page.
pub const BUILTIN_SCOPES: &[(&str, &str)] = &[
    (
        "account:read",
        "See your account, connections, tokens and usage",
    ),
    (
        "account:write",
        "Create and revoke your access tokens and connections",
    ),
    (
        "admin:read",
        "See your organization's members and audit log",
    ),
    (
        "admin:write",
        "Manage your organization's members and settings",
    ),
];

/// The scopes this deployment defines: the built-in ones plus the operator's, each with
/// the words shown on the consent page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeCatalog(Vec<(Scope, String)>);

impl ScopeCatalog {
    /// The built-in scopes plus `extra`, written `name=words; name=words` (so that it fits
    /// in one environment variable). A name may not be defined twice.
    pub fn with_extra(extra: &str) -> Result<Self, String> {
        let mut all: Vec<(Scope, String)> = BUILTIN_SCOPES
            .iter()
            .filter_map(|(n, w)| Scope::parse(n).ok().map(|s| (s, (*w).to_owned())))
            .collect();
        for entry in extra.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, words) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not name=description"))?;
            let scope = Scope::parse(name.trim()).map_err(|e| e.to_string())?;
            let words = words.trim();
            if words.is_empty() || words.len() > 200 {
                return Err(format!(
                    "scope {scope}: the description must be 1-200 characters"
                ));
            }
            if scope.as_str() == "offline_access" || all.iter().any(|(s, _)| *s == scope) {
                return Err(format!("scope {scope} is defined twice"));
            }
            all.push((scope, words.to_owned()));
        }
        Ok(Self(all))
    }

    pub fn builtin() -> Self {
        Self(
            BUILTIN_SCOPES
                .iter()
                .filter_map(|(n, w)| Scope::parse(n).ok().map(|s| (s, (*w).to_owned())))
                .collect(),
        )
    }

    /// Adds `scope` with `words` unless it is already defined (an operator's own words
    /// in `extra_scopes` win over an upstream's default ones).
    pub fn define_if_absent(&mut self, scope: &Scope, words: &str) {
        if !self.contains(scope.as_str()) {
            self.0.push((scope.clone(), words.to_owned()));
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(s, _)| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names().any(|n| n == name)
    }

    /// The words for a person, if the scope is defined.
    pub fn describe(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(s, _)| s.as_str() == name)
            .map(|(_, w)| w.as_str())
    }

    /// Parses scopes a person asked for by name, refusing any this catalogue lacks.
    pub fn parse_known(&self, raw: &str) -> Result<ScopeSet, String> {
        let set = ScopeSet::parse(&raw.replace(',', " ")).map_err(|e| e.to_string())?;
        if set.is_empty() {
            return Err("at least one scope is needed".into());
        }
        for s in set.iter() {
            if !self.contains(s.as_str()) {
                let known: Vec<&str> = self.names().collect();
                return Err(format!(
                    "unknown scope {:?} (known: {})",
                    s.as_str(),
                    known.join(", ")
                ));
            }
        }
        Ok(set)
    }
}

/// Parses scopes a person asked for by name, refusing any Gatehouse does not define.
pub fn parse_known_scopes(raw: &str) -> Result<ScopeSet, String> {
    ScopeCatalog::builtin().parse_known(raw)
}

#[cfg(test)]
mod known_tests {
    use super::*;

    #[test]
    fn known_scopes_accept_commas_and_refuse_unknown() {
        assert_eq!(
            parse_known_scopes("account:read,admin:read")
                .unwrap()
                .to_string(),
            "account:read admin:read"
        );
        assert!(
            parse_known_scopes("account:read bogus")
                .unwrap_err()
                .contains("bogus")
        );
        assert!(parse_known_scopes("").is_err());
    }

    #[test]
    fn operators_add_scopes_with_words() {
        let c = ScopeCatalog::with_extra("inventory:read = See the inventory; ci:run=Run builds")
            .unwrap();
        assert_eq!(c.describe("inventory:read"), Some("See the inventory"));
        assert!(c.parse_known("ci:run account:read").is_ok());
        assert!(ScopeCatalog::with_extra("account:read=again").is_err());
        assert!(ScopeCatalog::with_extra("nodescription").is_err());
        assert!(ScopeCatalog::with_extra("bad\"scope=x").is_err());
    }
}
