//! Public tool names for upstream tools. Every name Gatehouse serves must match
//! `^[a-zA-Z0-9_-]{1,64}$` (claude.ai rejects the whole tool list over one other name),
//! while upstreams may use `.`, `/`, `:` or long names. The rules here are pure and
//! deterministic:
//!
//! - A name that is already valid and fits is kept (with the upstream's prefix).
//! - Otherwise the invalid characters become `_`, the result is cut to fit, and a
//!   suffix of eight hex digits of a hash of the upstream and the original name is
//!   appended. The suffix depends only on that tool, never on its neighbours, so a name
//!   does not change when other tools or upstreams come and go, and two tools whose
//!   cleaned names coincide (`a.b` and `a_b`) still differ.
//! - A collision left after that (two upstreams with the same prefix, or an upstream
//!   tool named like a built-in) never stops the server: built-in tools keep their
//!   names, then the upstream listed first in the configuration, and every later one
//!   gets the hash-suffixed form. The collisions are returned to be reported.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// The longest name claude.ai accepts.
pub const MAX_NAME: usize = 64;
/// `_` and eight hex digits.
const SUFFIX: usize = 9;

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Whether every client accepts `name` as a tool name.
pub fn is_portable(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len()) && name.chars().all(allowed)
}

fn suffix(upstream: &str, tool: &str) -> String {
    let digest = Sha256::digest(format!("{upstream}\0{tool}").as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash-suffixed form: cleaned, cut to leave room for the suffix, suffixed.
fn suffixed(upstream: &str, prefix: &str, tool: &str) -> String {
    let cleaned: String = format!("{prefix}{tool}")
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .take(MAX_NAME - SUFFIX)
        .collect();
    let cleaned = cleaned.trim_end_matches('_');
    let head = if cleaned.is_empty() { "tool" } else { cleaned };
    format!("{head}_{}", suffix(upstream, tool))
}

/// The public name of upstream `upstream`'s tool `tool` under `prefix`, before
/// collisions are resolved.
pub fn public_name(upstream: &str, prefix: &str, tool: &str) -> String {
    let plain = format!("{prefix}{tool}");
    if is_portable(&plain) {
        plain
    } else {
        suffixed(upstream, prefix, tool)
    }
}

/// One upstream tool to be named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The upstream's name from the configuration.
    pub upstream: String,
    /// The upstream's position in the configuration (earlier wins a collision).
    pub order: usize,
    pub prefix: String,
    /// The tool's name at the upstream.
    pub tool: String,
}

/// A tool that did not get its plain public name, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub upstream: String,
    pub tool: String,
    /// The name it wanted.
    pub wanted: String,
    /// Who has that name: `built-in` or the upstream listed earlier.
    pub taken_by: String,
    /// The name it got instead.
    pub given: String,
}

/// Public names for `candidates` (in the order given), next to the `builtin` tool
/// names, and the collisions resolved on the way. The result is the same for the same
/// input in any order.
pub fn assign(builtin: &[&str], candidates: &[Candidate]) -> (Vec<String>, Vec<Collision>) {
    let mut taken: HashMap<String, String> = builtin
        .iter()
        .map(|b| ((*b).to_owned(), "built-in".to_owned()))
        .collect();
    // Decided in configuration order, then by tool name, whatever order they came in.
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&candidates[a], &candidates[b]);
        (a.order, &a.tool).cmp(&(b.order, &b.tool))
    });
    let mut names = vec![String::new(); candidates.len()];
    let mut collisions = Vec::new();
    for i in order {
        let c = &candidates[i];
        let wanted = public_name(&c.upstream, &c.prefix, &c.tool);
        let name = match taken.get(&wanted) {
            None => wanted,
            Some(owner) => {
                let mut given = suffixed(&c.upstream, &c.prefix, &c.tool);
                // A hash suffix colliding too is astronomically rare; still never fatal.
                let mut n = 2;
                while taken.contains_key(&given) {
                    given = suffixed(&c.upstream, &c.prefix, &format!("{}#{n}", c.tool));
                    n += 1;
                }
                collisions.push(Collision {
                    upstream: c.upstream.clone(),
                    tool: c.tool.clone(),
                    wanted,
                    taken_by: owner.clone(),
                    given: given.clone(),
                });
                given
            }
        };
        taken.insert(name.clone(), c.upstream.clone());
        names[i] = name;
    }
    (names, collisions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(upstream: &str, order: usize, prefix: &str, tool: &str) -> Candidate {
        Candidate {
            upstream: upstream.into(),
            order,
            prefix: prefix.into(),
            tool: tool.into(),
        }
    }

    #[test]
    fn valid_names_are_kept_and_others_made_portable_and_distinct() {
        assert_eq!(
            public_name("crm", "crm_", "find_contact"),
            "crm_find_contact"
        );
        let dotted = public_name("crm", "crm_", "contacts.find");
        assert!(
            is_portable(&dotted) && dotted.starts_with("crm_contacts_find_"),
            "{dotted}"
        );
        // Cleaned alike, named apart.
        assert_ne!(public_name("crm", "", "a.b"), public_name("crm", "", "a/b"));
        assert_eq!(public_name("crm", "", "a_b"), "a_b");
        let long = "x".repeat(100);
        let named = public_name("crm", "crm_", &long);
        assert!(is_portable(&named) && named.len() <= MAX_NAME, "{named}");
        // Stable: the same tool, the same name, whatever else exists.
        assert_eq!(named, public_name("crm", "crm_", &long));
        for odd in ["", "...", "é", "名前", "a b"] {
            assert!(is_portable(&public_name("u", "", odd)), "{odd:?}");
        }
    }

    #[test]
    fn collisions_are_resolved_the_same_way_every_time() {
        let input = vec![
            c("search-b", 2, "", "search"),
            c("search-a", 1, "", "search"),
            c("acct", 0, "", "whoami"),
            c("search-a", 1, "", "other"),
        ];
        let (names, collisions) = assign(&["whoami"], &input);
        assert_eq!(
            names[1], "search",
            "the upstream listed first keeps the name"
        );
        assert_ne!(names[0], "search");
        assert!(names[0].starts_with("search_") && is_portable(&names[0]));
        assert_ne!(names[2], "whoami", "built-ins keep theirs");
        assert_eq!(names[3], "other");
        assert_eq!(collisions.len(), 2);
        assert!(collisions.iter().any(|c| c.taken_by == "built-in"));
        // Any input order gives the same names.
        let mut reversed = input.clone();
        reversed.reverse();
        let (again, _) = assign(&["whoami"], &reversed);
        let mut again = again;
        again.reverse();
        assert_eq!(again, names);
        // A later upstream's arrival renames none of the earlier ones.
        let mut more = input.clone();
        more.push(c("late", 3, "", "search"));
        let (with_late, _) = assign(&["whoami"], &more);
        assert_eq!(&with_late[..4], &names[..]);
        let unique: std::collections::HashSet<_> = with_late.iter().collect();
        assert_eq!(unique.len(), with_late.len());
    }
}
