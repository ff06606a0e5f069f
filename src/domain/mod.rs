//! Pure domain types: parsed once at the edge, valid everywhere after.
//! No I/O here, and nothing from axum, sqlx or the token crates.

pub mod limit;
pub mod org;
pub mod pkce;
pub mod redirect_uri;
pub mod resource;
pub mod scope;
pub mod user;

pub use org::{OrgSlug, OrgStatus, Role};
pub use pkce::{CodeChallenge, CodeVerifier};
pub use redirect_uri::{RedirectKind, RedirectUri};
pub use resource::ResourceUri;
pub use scope::{Scope, ScopeSet};
pub use user::{DisplayName, Email};
