//! The built-in account tools, all bound to the caller's organization and user.
//!
//! | tool                  | scope         | role                    | annotations |
//! |-----------------------|---------------|-------------------------|-------------|
//! | `whoami`              | account:read  |                         | read-only   |
//! | `list_connections`    | account:read  |                         | read-only   |
//! | `revoke_connection`   | account:write |                         | destructive |
//! | `list_access_tokens`  | account:read  |                         | read-only   |
//! | `create_access_token` | account:write |                         | additive    |
//! | `revoke_access_token` | account:write |                         | destructive |
//! | `usage_stats`         | account:read  | admin for `all_members` | read-only   |
//! | `list_members`        | admin:read    | admin                   | read-only   |
//! | `list_audit_events`   | admin:read    | admin                   | read-only   |
//!
//! Each tool's body returns an `Outcome`: the structured result, or an error result the
//! model can act on. A database failure is logged here, once, and answered with an
//! error result asking to retry.

mod admin;
mod connections;
mod tokens;
mod usage;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::{Registry, ToolContext, ToolResult, ToolSpec, tool_fn};
use crate::clock::rfc3339;
use crate::mcp::auth::CredentialKind;
use crate::storage::StorageError;

/// Adds every built-in tool, `whoami` first. The specs are constants of this crate, so
/// a failure here is a programming error caught by the tests, not a runtime condition.
pub(crate) fn register(mut registry: Registry) -> Registry {
    for result in [
        whoami(),
        connections::list_connections(),
        connections::revoke_connection(),
        tokens::list_access_tokens(),
        tokens::create_access_token(),
        tokens::revoke_access_token(),
        usage::usage_stats(),
        admin::list_members(),
        admin::list_audit_events(),
    ] {
        if let Err(e) = result.and_then(|tool| registry.add_tool(tool)) {
            tracing::error!(error = %e, "built-in tool refused");
        }
    }
    registry
}

type Built = Result<
    super::FnTool<fn(ToolContext, Map<String, Value>) -> super::ToolFuture<'static>>,
    super::RegistryError,
>;

/// A built-in tool's spec: none of them sends notifications.
fn builtin_spec(name: &str, description: &str) -> Result<ToolSpec, super::RegistryError> {
    Ok(ToolSpec::new(name, description)?.silent())
}

/// A tool body's answer: the structured result, or an error result.
type Outcome = Result<Value, ToolResult>;

fn respond(outcome: Outcome) -> ToolResult {
    match outcome {
        Ok(value) => ToolResult::json(value),
        Err(error) => error,
    }
}

const UNAVAILABLE: &str = "the account database is unavailable; try again shortly";

/// Logs a storage failure once and answers with an error result asking to retry.
/// `NotFound` and `Conflict` are for the caller to map before this.
fn storage_failure(tool: &'static str) -> impl FnOnce(StorageError) -> ToolResult {
    move |e| {
        tracing::error!(tool.name = tool, error = ?e, "built-in tool failed on the database");
        ToolResult::coded_error("UNAVAILABLE", UNAVAILABLE)
    }
}

/// The arguments as `T`. They were validated against the input schema already, so a
/// failure here means the schema and `T` disagree.
fn parse_args<T: DeserializeOwned>(args: Map<String, Value>) -> Result<T, ToolResult> {
    serde_json::from_value(Value::Object(args)).map_err(|e| {
        ToolResult::coded_error("INVALID_ARGUMENTS", format!("invalid arguments: {e}"))
    })
}

/// Refuses callers without an account (anonymous access): these tools act on one.
fn require_account(ctx: &ToolContext) -> Result<(), ToolResult> {
    if ctx.caller.kind == CredentialKind::Anonymous {
        return Err(ToolResult::coded_error(
            "SIGN_IN_REQUIRED",
            "this tool acts on your account; connect with a signed-in account first",
        ));
    }
    Ok(())
}

/// The audit actor for the caller.
fn actor(ctx: &ToolContext) -> String {
    format!("user:{}", ctx.caller.user_id)
}

fn time(t: i64) -> Value {
    json!(rfc3339(t))
}

fn opt_time(t: Option<i64>) -> Value {
    t.map_or(Value::Null, time)
}

/// The schema of an object with exactly these properties.
fn object(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn time_schema(description: &str) -> Value {
    json!({ "type": "string", "format": "date-time", "description": description })
}

fn opt_time_schema(description: &str) -> Value {
    json!({ "type": ["string", "null"], "format": "date-time", "description": description })
}

fn whoami() -> Built {
    let spec = builtin_spec(
        "whoami",
        "Shows the signed-in user, their organization and role, and the scopes this connection holds.",
    )?
    .title("Who am I")
    .scopes(&["account:read"])?
    .output_schema(object(
        json!({
            "user": object(
                json!({
                    "id": { "type": "string" },
                    "email": { "type": "string" },
                    "display_name": { "type": "string" },
                }),
                &["id", "email", "display_name"],
            ),
            "organization": object(
                json!({
                    "id": { "type": "string" },
                    "slug": { "type": "string" },
                    "status": { "enum": ["active", "read_only", "suspended"] },
                }),
                &["id", "slug", "status"],
            ),
            "role": { "enum": ["owner", "admin", "member"] },
            "scopes": { "type": "string", "description": "Space-separated scopes of this connection." },
            "client_id": { "type": ["string", "null"], "description": "The OAuth client of this connection; null for a personal access token." },
        }),
        &["user", "organization", "role", "scopes", "client_id"],
    ));
    // Answers from what the token cache holds about the caller (kept current through the
    // credential-change feed), so the most common first call costs no query.
    Ok(tool_fn(spec, |ctx, _args| {
        Box::pin(async move {
            if let Err(refusal) = require_account(&ctx) {
                return refusal;
            }
            let caller = &ctx.caller;
            let standing = &caller.standing;
            let Some(role) = standing.role else {
                return ToolResult::error("you are no longer a member of this organization");
            };
            let who = &standing.identity;
            ToolResult::structured(&Whoami {
                user: WhoamiUser {
                    id: &caller.user_id,
                    email: &who.email,
                    display_name: &who.display_name,
                },
                organization: WhoamiOrg {
                    id: &caller.org_id,
                    slug: &who.org_slug,
                    status: standing.status.as_str(),
                },
                role: role.as_str(),
                scopes: caller.scopes.to_string(),
                client_id: caller.client_id.as_deref(),
            })
        })
    }))
}

/// `whoami`'s result, serialized straight from the cached caller: the most frequent
/// call builds no JSON tree.
#[derive(serde::Serialize)]
struct Whoami<'a> {
    user: WhoamiUser<'a>,
    organization: WhoamiOrg<'a>,
    role: &'a str,
    scopes: String,
    client_id: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct WhoamiUser<'a> {
    id: &'a str,
    email: &'a str,
    display_name: &'a str,
}

#[derive(serde::Serialize)]
struct WhoamiOrg<'a> {
    id: &'a str,
    slug: &'a str,
    status: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_tool_registers_with_title_and_output_schema() {
        let registry = register(Registry::empty());
        let names: Vec<&str> = registry.tool_names().collect();
        assert_eq!(
            names,
            [
                "whoami",
                "list_connections",
                "revoke_connection",
                "list_access_tokens",
                "create_access_token",
                "revoke_access_token",
                "usage_stats",
                "list_members",
                "list_audit_events",
            ]
        );
        for tool in registry.tools() {
            let def = &tool.definition;
            assert!(def["title"].is_string(), "{def}");
            assert!(def["outputSchema"].is_object(), "{def}");
            assert_eq!(def["inputSchema"]["additionalProperties"], false, "{def}");
            assert!(
                !tool.tool.spec().may_notify(),
                "built-in tools are silent: {def}"
            );
        }
    }
}
