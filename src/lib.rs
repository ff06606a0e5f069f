//! Gatehouse: an OAuth 2.1 authorization server and an MCP resource server in one binary.
//!
//! The crate is a library so that the integration tests can drive the real application;
//! `main.rs` only parses the command line and calls into it.

pub mod app;
pub mod bootstrap;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod http;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod oauth;
pub mod routes;
pub mod state;
pub mod storage;
pub mod telemetry;
