#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic by design
//! The one integration-test binary. Every test here talks to a real server (or the real
//! CLI binary) with a fresh database, on SQLite and on PostgreSQL.

mod helpers;

mod cli;
mod clients;
mod gateway;
mod gateway_openapi;
mod health;
mod legacy_sse;
mod lifecycle;
mod mcp;
mod mcp_protocol;
mod mcp_tools;
mod metrics;
mod multi_instance;
mod oauth;
mod oauth_helpers;
mod process;
mod security_authz;
mod security_limits;
mod security_store;
mod security_token;
mod signals;
mod storage;
mod traces;
