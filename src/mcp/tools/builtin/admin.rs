//! What an organization's admins and owners may read: its members and its audit log.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    Built, Outcome, builtin_spec, object, parse_args, require_account, respond, storage_failure,
    time, time_schema,
};
use crate::domain::Role;
use crate::mcp::tools::{Annotations, ToolContext, ToolResult, tool_fn};
use crate::storage::{AuditFilter, AuditRow, MemberRow};

const DEFAULT_AUDIT_LIMIT: i64 = 50;

pub(super) fn list_members() -> Built {
    let spec = builtin_spec(
        "list_members",
        "Lists the members of your organization, by email: user id, email, display name, role (owner, admin or member) \
         and when they joined. Needs the admin or owner role.",
    )?
    .title("List organization members")
    .scopes(&["admin:read"])?
    .role(Role::Admin)
    .annotations(Annotations::READ_ONLY)
    .output_schema(object(
        json!({
            "members": {
                "type": "array",
                "description": "Sorted by email.",
                "items": object(
                    json!({
                        "user_id": { "type": "string" },
                        "email": { "type": "string" },
                        "display_name": { "type": "string" },
                        "role": { "enum": ["owner", "admin", "member"] },
                        "joined_at": time_schema("When they joined the organization (RFC 3339, UTC)."),
                    }),
                    &["user_id", "email", "display_name", "role", "joined_at"],
                ),
            },
        }),
        &["members"],
    ));
    Ok(tool_fn(spec, |ctx, _args| {
        Box::pin(async move { respond(run_list_members(ctx).await) })
    }))
}

fn member_json(m: MemberRow) -> Value {
    json!({
        "user_id": m.user_id,
        "email": m.email,
        "display_name": m.display_name,
        "role": m.role,
        "joined_at": time(m.created_at),
    })
}

async fn run_list_members(ctx: ToolContext) -> Outcome {
    require_account(&ctx)?;
    let store = &ctx.state.store;
    let org = store
        .find_org(&ctx.caller.org_id)
        .await
        .map_err(storage_failure("list_members"))?
        .ok_or_else(|| {
            ToolResult::coded_error("NOT_FOUND", "your organization no longer exists")
        })?;
    let members = store
        .list_members(&org)
        .await
        .map_err(storage_failure("list_members"))?;
    let members: Vec<Value> = members.into_iter().map(member_json).collect();
    Ok(json!({ "members": members }))
}

pub(super) fn list_audit_events() -> Built {
    let spec = builtin_spec(
        "list_audit_events",
        "Lists your organization's audit log, newest first: who did what to what, and when. Actions are dotted verbs \
         such as pat.create, pat.revoke or connection.revoke; action_prefix narrows the list (\"pat.\" for all token \
         events). Actors are user:<id> (see list_members), cli or system. Needs the admin or owner role.",
    )?
    .title("List audit events")
    .scopes(&["admin:read"])?
    .role(Role::Admin)
    .annotations(Annotations::READ_ONLY)
    .input_schema(object(
        json!({
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": 200,
                "default": DEFAULT_AUDIT_LIMIT,
                "description": "How many events at most.",
            },
            "action_prefix": {
                "type": "string",
                "minLength": 1,
                "maxLength": 100,
                "description": "Only actions starting with this, e.g. \"pat.\" or \"connection.revoke\".",
            },
        }),
        &[],
    ))
    .output_schema(object(
        json!({
            "events": {
                "type": "array",
                "description": "Newest first.",
                "items": object(
                    json!({
                        "id": { "type": "integer" },
                        "at": time_schema("RFC 3339, UTC."),
                        "actor": { "type": "string", "description": "user:<id>, client:<id>, cli or system." },
                        "action": { "type": "string" },
                        "target": { "type": ["string", "null"], "description": "What was acted on, such as pat:<id> or client:<client_id>." },
                        "source_addr": { "type": ["string", "null"], "description": "The network address the action came from, when known." },
                        "detail": { "description": "Extra facts about the event (JSON), or null." },
                    }),
                    &["id", "at", "actor", "action", "target", "source_addr", "detail"],
                ),
            },
        }),
        &["events"],
    ));
    Ok(tool_fn(spec, |ctx, args| {
        Box::pin(async move { respond(run_list_audit_events(ctx, args).await) })
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditArgs {
    limit: Option<i64>,
    action_prefix: Option<String>,
}

fn event_json(e: AuditRow) -> Value {
    // The column holds JSON written by this crate; anything else is passed on as text.
    let detail = e
        .detail
        .map(|d| serde_json::from_str::<Value>(&d).unwrap_or(Value::String(d)))
        .unwrap_or(Value::Null);
    json!({
        "id": e.id,
        "at": time(e.at),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "source_addr": e.source_addr,
        "detail": detail,
    })
}

async fn run_list_audit_events(ctx: ToolContext, args: Map<String, Value>) -> Outcome {
    require_account(&ctx)?;
    let args: AuditArgs = parse_args(args)?;
    let filter = AuditFilter {
        // Always this organization: a filter without one would read every organization's log.
        org_id: Some(ctx.caller.org_id.clone()),
        action_prefix: args.action_prefix,
        limit: args.limit.unwrap_or(DEFAULT_AUDIT_LIMIT),
    };
    let events = ctx
        .state
        .store
        .list_audit(&filter)
        .await
        .map_err(storage_failure("list_audit_events"))?;
    let events: Vec<Value> = events.into_iter().map(event_json).collect();
    Ok(json!({ "events": events }))
}
