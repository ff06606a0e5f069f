use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("{0:?} is not a valid email address")]
    BadEmail(String),
    #[error("display name must be 1-100 characters with no control characters")]
    BadDisplayName,
    #[error("password must be 12-1024 characters")]
    BadPassword,
}

/// An email address, trimmed and lower-cased so that lookups are case-insensitive.
/// Only the shape is checked (one `@`, something on each side, no spaces): delivery is
/// not our business.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, UserError> {
        let s = raw.trim().to_lowercase();
        let valid = s.len() <= 254
            && s.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            })
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if valid {
            Ok(Self(s))
        } else {
            Err(UserError::BadEmail(raw.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, UserError> {
        let s = raw.trim();
        if !s.is_empty() && s.chars().count() <= 100 && !s.chars().any(char::is_control) {
            Ok(Self(s.to_owned()))
        } else {
            Err(UserError::BadDisplayName)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password as typed; checked for length only (NIST SP 800-63B: length beats rules).
/// `Debug` never prints it.
pub struct Password(String);

impl Password {
    pub fn parse(raw: String) -> Result<Self, UserError> {
        let n = raw.chars().count();
        if (12..=1024).contains(&n) {
            Ok(Self(raw))
        } else {
            Err(UserError::BadPassword)
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_normalised_to_lower_case() {
        assert_eq!(
            Email::parse(" Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
    }

    #[test]
    fn email_rejects_malformed_addresses() {
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "a b@c.d",
            "a@b@c",
            "a@.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn password_debug_is_redacted_and_length_checked() {
        let p = Password::parse("correct horse battery".into()).unwrap();
        assert!(!format!("{p:?}").contains("horse"));
        assert!(Password::parse("short".into()).is_err());
    }
}
