use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OrgError {
    #[error(
        "organization slug must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit"
    )]
    BadSlug,
    #[error("organization name must be 1-200 characters with no control characters")]
    BadName,
    #[error("unknown organization status {0:?} (expected active, read_only or suspended)")]
    BadStatus(String),
    #[error("unknown role {0:?} (expected owner, admin or member)")]
    BadRole(String),
}

/// The short, URL-safe handle of an organization (`default`, `acme-corp`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgSlug(String);

impl OrgSlug {
    pub fn parse(raw: &str) -> Result<Self, OrgError> {
        let ok = !raw.is_empty()
            && raw.len() <= 63
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !raw.starts_with('-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(OrgError::BadSlug)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OrgSlug {
    type Error = OrgError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<OrgSlug> for String {
    fn from(value: OrgSlug) -> Self {
        value.0
    }
}

impl fmt::Display for OrgSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A human-readable organization name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgName(String);

impl OrgName {
    pub fn parse(raw: &str) -> Result<Self, OrgError> {
        let trimmed = raw.trim();
        let ok = !trimmed.is_empty()
            && trimmed.chars().count() <= 200
            && !trimmed.chars().any(char::is_control);
        if ok {
            Ok(Self(trimmed.to_owned()))
        } else {
            Err(OrgError::BadName)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What an organization's members may do right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgStatus {
    Active,
    /// Read tools keep working; anything that writes is refused.
    ReadOnly,
    /// Nothing works for its members.
    Suspended,
}

impl OrgStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::ReadOnly => "read_only",
            Self::Suspended => "suspended",
        }
    }
}

impl FromStr for OrgStatus {
    type Err = OrgError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "read_only" | "read-only" => Ok(Self::ReadOnly),
            "suspended" => Ok(Self::Suspended),
            other => Err(OrgError::BadStatus(other.to_owned())),
        }
    }
}

impl fmt::Display for OrgStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A member's role in one organization. Ordered: an owner can do what an admin can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }

    /// Whether this role includes everything `needed` allows.
    pub fn satisfies(self, needed: Role) -> bool {
        self >= needed
    }
}

impl FromStr for Role {
    type Err = OrgError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "owner" => Ok(Self::Owner),
            "admin" => Ok(Self::Admin),
            "member" => Ok(Self::Member),
            other => Err(OrgError::BadRole(other.to_owned())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_accepts_lowercase_digits_and_dashes() {
        assert_eq!(OrgSlug::parse("acme-2").unwrap().as_str(), "acme-2");
    }

    #[test]
    fn slug_rejects_uppercase_spaces_leading_dash_and_empty() {
        for bad in ["Acme", "a b", "-acme", "", &"a".repeat(64), "acme_corp"] {
            assert_eq!(OrgSlug::parse(bad), Err(OrgError::BadSlug), "{bad:?}");
        }
    }

    #[test]
    fn status_round_trips_and_rejects_unknown() {
        for s in ["active", "read_only", "suspended"] {
            assert_eq!(s.parse::<OrgStatus>().unwrap().as_str(), s);
        }
        assert!("frozen".parse::<OrgStatus>().is_err());
    }

    #[test]
    fn owner_satisfies_admin_but_member_does_not() {
        assert!(Role::Owner.satisfies(Role::Admin));
        assert!(Role::Admin.satisfies(Role::Admin));
        assert!(!Role::Member.satisfies(Role::Admin));
    }

    #[test]
    fn org_name_is_trimmed_and_bounded() {
        assert_eq!(OrgName::parse("  Acme  ").unwrap().as_str(), "Acme");
        assert!(OrgName::parse("   ").is_err());
        assert!(OrgName::parse("a\nb").is_err());
    }
}
