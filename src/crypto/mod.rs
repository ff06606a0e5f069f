//! Token material: opaque tokens, password hashing, random identifiers.
//! No HTTP and no SQL here.

pub mod opaque;
pub mod password;
pub mod random;

pub use opaque::{HashedToken, PlainToken, TokenError, TokenKind};
