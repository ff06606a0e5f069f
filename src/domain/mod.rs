//! Pure domain types: parsed once at the edge, valid everywhere after.
//! No I/O here, and nothing from axum, sqlx or the crypto crates.

pub mod org;
pub mod scope;
pub mod user;

pub use org::{OrgSlug, OrgStatus, Role};
pub use scope::{Scope, ScopeSet};
pub use user::{DisplayName, Email};
