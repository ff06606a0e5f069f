//! The built-in account tools, all bound to the caller's organization.

use serde_json::{Map, Value, json};

use super::{Registry, ToolContext, ToolResult, ToolSpec, tool_fn};

/// Adds every built-in tool. The specs are constants of this crate, so a failure
/// here is a programming error caught by the tests, not a runtime condition.
pub(crate) fn register(mut registry: Registry) -> Registry {
    for result in [whoami()] {
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

const UNAVAILABLE: &str = "the account database is unavailable; try again shortly";

fn whoami() -> Built {
    let spec = ToolSpec::new(
        "whoami",
        "Shows the signed-in user, their organization and role, and the scopes this connection holds.",
    )?
    .title("Who am I")
    .scopes(&["account:read"])?;
    Ok(tool_fn(spec, |ctx, _args| {
        Box::pin(async move {
            let caller = &ctx.caller;
            match ctx
                .state
                .store
                .find_membership(&caller.org_id, &caller.user_id)
                .await
            {
                Ok(Some(m)) => ToolResult::json(json!({
                    "user": { "id": m.user_id, "email": m.email, "display_name": m.display_name },
                    "organization": { "id": m.org_id, "slug": m.org_slug, "status": caller.standing.status.as_str() },
                    "role": m.role,
                    "scopes": caller.scopes.to_string(),
                    "client_id": caller.client_id,
                })),
                Ok(None) => ToolResult::error("you are no longer a member of this organization"),
                Err(_) => ToolResult::error(UNAVAILABLE),
            }
        })
    }))
}
