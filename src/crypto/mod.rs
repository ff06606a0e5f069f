//! Token material: opaque tokens, JWTs and their keys, MACs, password hashing.
//! No HTTP and no SQL here.

pub mod jwt;
pub mod keys;
pub mod mac;
pub mod opaque;
pub mod password;
pub mod random;

pub use opaque::{HashedToken, PlainToken, TokenError, TokenKind};
