//! The gateway (issue #15): upstream MCP servers and REST APIs served behind `/mcp`.
//! Built in steps; so far only the naming rules exist. The MCP dispatcher will see
//! upstreams only through a trait it owns, so `mcp` never imports this module.

pub mod naming;
