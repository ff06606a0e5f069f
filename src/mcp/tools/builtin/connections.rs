//! The apps (OAuth clients) the caller has authorised in their organization.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    Built, Outcome, actor, builtin_spec, object, parse_args, require_account, respond,
    storage_failure, time, time_schema,
};
use crate::mcp::tools::{Annotations, ToolContext, ToolResult, tool_fn};
use crate::storage::{AuditEntry, ConnectionRow, StorageError};

pub(super) fn list_connections() -> Built {
    let spec = builtin_spec(
        "list_connections",
        "Lists the apps (OAuth clients) you have authorised to act for you in this organization, most recently used first: \
         each one's client_id, name, whether that name is verified, how the app was registered, the scopes it holds, \
         and when it was first and last used. A name with verified=false was chosen by the app itself and may imitate \
         another app. To disconnect an app, pass its client_id to revoke_connection.",
    )?
    .title("List connected apps")
    .scopes(&["account:read"])?
    .annotations(Annotations::READ_ONLY)
    .output_schema(object(
        json!({
            "connections": {
                "type": "array",
                "description": "Most recently used first.",
                "items": object(
                    json!({
                        "client_id": { "type": "string", "description": "The OAuth client_id; a URL for apps registered by metadata document." },
                        "name": { "type": "string", "description": "The app's name." },
                        "verified": { "type": "boolean", "description": "True when the name can be trusted: the operator registered the app, or its client_id is an https URL on the app's own domain. False when the app named itself at dynamic registration." },
                        "origin": { "enum": ["dcr", "cimd", "static"], "description": "dcr: dynamic client registration; cimd: client ID metadata document; static: registered by the operator." },
                        "scopes": { "type": "string", "description": "Space-separated scopes granted to the app." },
                        "first_used_at": time_schema("When the app was first authorised (RFC 3339, UTC)."),
                        "last_used_at": time_schema("When the app last used its access (RFC 3339, UTC)."),
                    }),
                    &["client_id", "name", "verified", "origin", "scopes", "first_used_at", "last_used_at"],
                ),
            },
        }),
        &["connections"],
    ));
    Ok(tool_fn(spec, |ctx, _args| {
        Box::pin(async move { respond(run_list_connections(ctx).await) })
    }))
}

/// Whether a client's name was vouched for: by the operator (`static`) or by the
/// domain serving its metadata document (`cimd`). A `dcr` client named itself.
fn is_verified(origin: &str) -> bool {
    matches!(origin, "cimd" | "static")
}

fn connection_json(c: ConnectionRow) -> Value {
    json!({
        "client_id": c.client_id,
        "name": c.client_name,
        "verified": is_verified(&c.origin),
        "origin": c.origin,
        "scopes": c.scopes,
        "first_used_at": time(c.first_used_at),
        "last_used_at": time(c.last_used_at),
    })
}

async fn run_list_connections(ctx: ToolContext) -> Outcome {
    require_account(&ctx)?;
    let caller = &ctx.caller;
    let rows = ctx
        .state
        .store
        .list_connections(&caller.org_id, &caller.user_id)
        .await
        .map_err(storage_failure("list_connections"))?;
    let connections: Vec<Value> = rows.into_iter().map(connection_json).collect();
    Ok(json!({ "connections": connections }))
}

pub(super) fn revoke_connection() -> Built {
    let spec = builtin_spec(
        "revoke_connection",
        "Disconnects an app (OAuth client) from your account in this organization: its access and refresh tokens \
         stop working within about a second and the consent you gave is forgotten, so it must ask again. Get the \
         client_id from list_connections. Disconnecting the app you are using right now ends this session.",
    )?
    .title("Disconnect an app")
    .scopes(&["account:write"])?
    .annotations(Annotations::DESTRUCTIVE)
    .input_schema(object(
        json!({
            "client_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 2048,
                "description": "The client_id of the app, exactly as list_connections shows it.",
            },
        }),
        &["client_id"],
    ))
    .output_schema(object(
        json!({
            "client_id": { "type": "string" },
            "revoked": { "const": true },
            "sessions_ended": {
                "type": "integer",
                "minimum": 0,
                "description": "How many sign-in sessions (token families) of the app were ended; 0 when only a remembered consent was removed.",
            },
        }),
        &["client_id", "revoked", "sessions_ended"],
    ));
    Ok(tool_fn(spec, |ctx, args| {
        Box::pin(async move { respond(run_revoke_connection(ctx, args).await) })
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeConnectionArgs {
    client_id: String,
}

async fn run_revoke_connection(ctx: ToolContext, args: Map<String, Value>) -> Outcome {
    require_account(&ctx)?;
    let args: RevokeConnectionArgs = parse_args(args)?;
    let caller = &ctx.caller;
    let now = ctx.state.clock.now();
    let audit = AuditEntry::new(now, actor(&ctx), "connection.revoke");
    let revoked = ctx
        .state
        .store
        .revoke_connection(&caller.org_id, &caller.user_id, &args.client_id, now, audit)
        .await
        .map_err(|e| match e {
            StorageError::NotFound => ToolResult::coded_error(
                "NOT_FOUND",
                format!(
                    "you have no connection to an app with client_id {:?} in this organization; list_connections shows the ones you have",
                    clip(&args.client_id)
                ),
            ),
            other => storage_failure("revoke_connection")(other),
        })?;
    Ok(json!({ "client_id": args.client_id, "revoked": true, "sessions_ended": revoked }))
}

/// At most 200 characters of something the caller sent, for an error message.
fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_operator_and_metadata_document_names_are_verified() {
        assert!(is_verified("static"));
        assert!(is_verified("cimd"));
        assert!(!is_verified("dcr"));
        assert!(!is_verified(""));
    }
}
