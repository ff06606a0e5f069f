//! Tool-call counters of the caller, or of their whole organization.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    Built, Outcome, builtin_spec, object, parse_args, require_account, respond, storage_failure,
};
use crate::clock::rfc3339_date;
use crate::domain::Role;
use crate::mcp::tools::{Annotations, ToolContext, ToolResult, tool_fn};
use crate::storage::UsageRow;

const DEFAULT_DAYS: i64 = 7;

pub(super) fn usage_stats() -> Built {
    let spec = builtin_spec(
        "usage_stats",
        "Shows how many MCP tool calls were made per day and tool over the last `days` UTC days (today included), \
         with errors, error rate and mean latency, plus totals. By default only your own calls in this organization; \
         all_members=true covers every member and needs the admin or owner role. Days without calls are left out.",
    )?
    .title("Tool usage statistics")
    .scopes(&["account:read"])?
    .annotations(Annotations::READ_ONLY)
    .input_schema(object(
        json!({
            "days": {
                "type": "integer",
                "minimum": 1,
                "maximum": 90,
                "default": DEFAULT_DAYS,
                "description": "How many days back, today included.",
            },
            "all_members": {
                "type": "boolean",
                "default": false,
                "description": "Count every member's calls, not only yours (admin or owner only).",
            },
        }),
        &[],
    ))
    .output_schema(object(
        json!({
            "all_members": { "type": "boolean", "description": "Whether the figures cover every member or only you." },
            "from": { "type": "string", "format": "date", "description": "First UTC day covered (RFC 3339 full-date)." },
            "to": { "type": "string", "format": "date", "description": "Last UTC day covered: today." },
            "usage": {
                "type": "array",
                "description": "One entry per day and tool with calls; newest day first, then by tool name.",
                "items": object(
                    figure_properties(json!({
                        "date": { "type": "string", "format": "date", "description": "The UTC day (RFC 3339 full-date)." },
                        "tool": { "type": "string" },
                    })),
                    &["date", "tool", "calls", "errors", "error_rate", "avg_latency_ms"],
                ),
            },
            "totals": object(
                figure_properties(json!({})),
                &["calls", "errors", "error_rate", "avg_latency_ms"],
            ),
        }),
        &["all_members", "from", "to", "usage", "totals"],
    ));
    Ok(tool_fn(spec, |ctx, args| {
        Box::pin(async move { respond(run_usage_stats(ctx, args).await) })
    }))
}

/// The schema properties of [`figures`], with `extra` ones.
fn figure_properties(extra: Value) -> Value {
    let mut properties = json!({
        "calls": { "type": "integer", "minimum": 0 },
        "errors": { "type": "integer", "minimum": 0, "description": "Calls that ended in an error." },
        "error_rate": { "type": "number", "minimum": 0, "maximum": 1, "description": "errors / calls, rounded to 4 decimals; 0 without calls." },
        "avg_latency_ms": { "type": "number", "minimum": 0, "description": "Mean call duration in milliseconds, rounded to 2 decimals." },
    });
    if let (Some(p), Value::Object(extra)) = (properties.as_object_mut(), extra) {
        p.extend(extra);
    }
    properties
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageArgs {
    days: Option<i64>,
    all_members: Option<bool>,
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

fn figures(calls: i64, errors: i64, avg_latency_ms: f64) -> Value {
    let error_rate = if calls > 0 {
        errors as f64 / calls as f64
    } else {
        0.0
    };
    json!({
        "calls": calls,
        "errors": errors,
        "error_rate": round(error_rate, 4),
        "avg_latency_ms": round(avg_latency_ms, 2),
    })
}

fn usage_json(rows: &[UsageRow]) -> (Vec<Value>, Value) {
    let mut usage = Vec::with_capacity(rows.len());
    let (mut calls, mut errors, mut latency_ms) = (0i64, 0i64, 0f64);
    for r in rows {
        let mut entry = figures(r.calls, r.errors, r.avg_latency_ms);
        entry["date"] = json!(rfc3339_date(r.day));
        entry["tool"] = json!(r.tool);
        usage.push(entry);
        calls += r.calls;
        errors += r.errors;
        latency_ms += r.avg_latency_ms * r.calls as f64;
    }
    let avg = if calls > 0 {
        latency_ms / calls as f64
    } else {
        0.0
    };
    (usage, figures(calls, errors, avg))
}

async fn run_usage_stats(ctx: ToolContext, args: Map<String, Value>) -> Outcome {
    require_account(&ctx)?;
    let args: UsageArgs = parse_args(args)?;
    let caller = &ctx.caller;
    let all_members = args.all_members.unwrap_or(false);
    if all_members
        && !caller
            .standing
            .role
            .is_some_and(|r| r.satisfies(Role::Admin))
    {
        let you = caller.standing.role.map_or("not a member", Role::as_str);
        return Err(ToolResult::coded_error(
            "ROLE_REQUIRED",
            format!(
                "all_members needs the admin role in your organization (you are: {you}); call usage_stats without all_members to see your own usage"
            ),
        ));
    }
    let today = ctx.state.clock.now().div_euclid(86_400);
    let since = today - args.days.unwrap_or(DEFAULT_DAYS) + 1;
    let user = (!all_members).then_some(caller.user_id.as_str());
    let rows = ctx
        .state
        .store
        .usage_stats(&caller.org_id, user, since)
        .await
        .map_err(storage_failure("usage_stats"))?;
    let (usage, totals) = usage_json(&rows);
    Ok(json!({
        "all_members": all_members,
        "from": rfc3339_date(since),
        "to": rfc3339_date(today),
        "usage": usage,
        "totals": totals,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_weigh_latency_by_calls() {
        let rows = [
            UsageRow {
                day: 19_000,
                tool: "b".into(),
                calls: 3,
                errors: 1,
                avg_latency_ms: 2.0,
            },
            UsageRow {
                day: 19_000,
                tool: "a".into(),
                calls: 1,
                errors: 0,
                avg_latency_ms: 6.0,
            },
        ];
        let (usage, totals) = usage_json(&rows);
        assert_eq!(
            usage[0],
            json!({ "date": "2022-01-08", "tool": "b", "calls": 3, "errors": 1, "error_rate": 0.3333, "avg_latency_ms": 2.0 })
        );
        assert_eq!(
            totals,
            json!({ "calls": 4, "errors": 1, "error_rate": 0.25, "avg_latency_ms": 3.0 })
        );
        assert_eq!(
            usage_json(&[]).1,
            json!({ "calls": 0, "errors": 0, "error_rate": 0.0, "avg_latency_ms": 0.0 })
        );
    }
}
