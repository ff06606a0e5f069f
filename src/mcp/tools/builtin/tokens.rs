//! The caller's personal access tokens (PATs) in their organization.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    Built, Outcome, actor, builtin_spec, object, opt_time, opt_time_schema, parse_args,
    require_account, respond, storage_failure, time, time_schema,
};
use crate::crypto::{PlainToken, TokenKind};
use crate::domain::{DisplayName, ScopeSet};
use crate::mcp::tools::{Annotations, ToolContext, ToolResult, tool_fn};
use crate::storage::credentials::NewPat;
use crate::storage::{AuditEntry, PatRow, StorageError};

const DEFAULT_EXPIRY_DAYS: i64 = 90;

/// A scope that only concerns refresh tokens at the authorization server: meaningless
/// on a PAT, so it is never copied onto one.
const OFFLINE_ACCESS: &str = "offline_access";

fn status(pat: &PatRow, now: i64) -> &'static str {
    if pat.revoked_at.is_some() {
        "revoked"
    } else if pat.expires_at.is_some_and(|t| t <= now) {
        "expired"
    } else {
        "active"
    }
}

fn token_properties() -> Value {
    json!({
        "id": { "type": "string", "description": "Pass this to revoke_access_token." },
        "name": { "type": "string" },
        "scopes": { "type": "string", "description": "Space-separated scopes the token carries." },
        "status": { "enum": ["active", "expired", "revoked"] },
        "created_at": time_schema("RFC 3339, UTC."),
        "expires_at": opt_time_schema("RFC 3339, UTC; null if it never expires."),
        "last_used_at": opt_time_schema("RFC 3339, UTC; null if never used."),
        "revoked_at": opt_time_schema("RFC 3339, UTC; null unless revoked."),
    })
}

const TOKEN_FIELDS: &[&str] = &[
    "id",
    "name",
    "scopes",
    "status",
    "created_at",
    "expires_at",
    "last_used_at",
    "revoked_at",
];

fn token_json(pat: &PatRow, now: i64) -> Value {
    json!({
        "id": pat.id,
        "name": pat.name,
        "scopes": pat.scopes,
        "status": status(pat, now),
        "created_at": time(pat.created_at),
        "expires_at": opt_time(pat.expires_at),
        "last_used_at": opt_time(pat.last_used_at),
        "revoked_at": opt_time(pat.revoked_at),
    })
}

pub(super) fn list_access_tokens() -> Built {
    let spec = builtin_spec(
        "list_access_tokens",
        "Lists your personal access tokens in this organization, newest first, including expired and revoked ones: \
         id, name, scopes, status (active, expired or revoked) and when each was created, expires and was last used. \
         The secret tokens themselves are never shown again after creation.",
    )?
    .title("List your access tokens")
    .scopes(&["account:read"])?
    .annotations(Annotations::READ_ONLY)
    .output_schema(object(
        json!({
            "tokens": {
                "type": "array",
                "description": "Newest first.",
                "items": object(token_properties(), TOKEN_FIELDS),
            },
        }),
        &["tokens"],
    ));
    Ok(tool_fn(spec, |ctx, _args| {
        Box::pin(async move { respond(run_list_access_tokens(ctx).await) })
    }))
}

async fn run_list_access_tokens(ctx: ToolContext) -> Outcome {
    require_account(&ctx)?;
    let caller = &ctx.caller;
    let now = ctx.state.clock.now();
    let pats = ctx
        .state
        .store
        .list_pats_of_user(&caller.org_id, &caller.user_id)
        .await
        .map_err(storage_failure("list_access_tokens"))?;
    let tokens: Vec<Value> = pats.iter().map(|p| token_json(p, now)).collect();
    Ok(json!({ "tokens": tokens }))
}

pub(super) fn create_access_token() -> Built {
    let spec = builtin_spec(
        "create_access_token",
        "Creates a personal access token for you in this organization, for an agent or script that sends \
         `Authorization: Bearer <token>`. It can carry only scopes this connection holds; by default it gets all of them. \
         It expires after expires_in_days (default 90). The token is in the result and is shown only this once: \
         hand it to the user to store safely, and do not repeat it elsewhere.",
    )?
    .title("Create an access token")
    .scopes(&["account:write"])?
    .annotations(Annotations::ADDITIVE)
    .returns_secret()
    .input_schema(object(
        json!({
            "name": {
                "type": "string",
                "minLength": 1,
                "maxLength": 100,
                "description": "A name to recognise the token by, such as the agent that will use it.",
            },
            "scopes": {
                "type": "string",
                "minLength": 1,
                "maxLength": 1000,
                "description": "Space-separated scopes, e.g. \"account:read\". Each must be one this connection holds (see whoami). Default: all of them.",
            },
            "expires_in_days": {
                "type": "integer",
                "minimum": 1,
                "maximum": 365,
                "default": DEFAULT_EXPIRY_DAYS,
                "description": "Days until the token stops working.",
            },
        }),
        &["name"],
    ))
    .output_schema(object(
        json!({
            "id": { "type": "string", "description": "Pass this to revoke_access_token." },
            "name": { "type": "string" },
            "scopes": { "type": "string", "description": "Space-separated scopes the token carries." },
            "created_at": time_schema("RFC 3339, UTC."),
            "expires_at": time_schema("RFC 3339, UTC."),
            "token": { "type": "string", "description": "The secret token. Shown only this once." },
            "note": { "type": "string" },
        }),
        &["id", "name", "scopes", "created_at", "expires_at", "token", "note"],
    ));
    Ok(tool_fn(spec, |ctx, args| {
        Box::pin(async move { respond(run_create_access_token(ctx, args).await) })
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateArgs {
    name: String,
    scopes: Option<String>,
    expires_in_days: Option<i64>,
}

/// The scopes a new token gets: `requested` (default: all the caller holds) without
/// `offline_access`, and only if the caller holds every one of them.
fn scopes_for_new_token(requested: Option<&str>, held: &ScopeSet) -> Result<ScopeSet, ToolResult> {
    let mut scopes = match requested {
        Some(raw) => ScopeSet::parse(raw)
            .map_err(|e| ToolResult::coded_error("INVALID_ARGUMENTS", format!("scopes: {e}")))?,
        None => held.clone(),
    };
    scopes.retain(|s| s.as_str() != OFFLINE_ACCESS);
    let missing = scopes.difference(held);
    if !missing.is_empty() {
        let mut usable = held.clone();
        usable.retain(|s| s.as_str() != OFFLINE_ACCESS);
        return Err(ToolResult::coded_error(
            "SCOPES_NOT_HELD",
            format!(
                "a new token can only carry scopes this connection holds, and it lacks: {missing}. \
                 Ask for some of: {usable}"
            ),
        ));
    }
    if scopes.is_empty() {
        return Err(ToolResult::coded_error(
            "INVALID_ARGUMENTS",
            "scopes: a token needs at least one scope other than offline_access",
        ));
    }
    Ok(scopes)
}

async fn run_create_access_token(ctx: ToolContext, args: Map<String, Value>) -> Outcome {
    require_account(&ctx)?;
    let args: CreateArgs = parse_args(args)?;
    let caller = &ctx.caller;
    let name = DisplayName::parse(&args.name).map_err(|_| {
        ToolResult::coded_error(
            "INVALID_ARGUMENTS",
            "name: use 1-100 characters that are not all spaces and include no control characters",
        )
    })?;
    let scopes = scopes_for_new_token(args.scopes.as_deref(), &caller.scopes)?;
    let now = ctx.state.clock.now();
    let days = args.expires_in_days.unwrap_or(DEFAULT_EXPIRY_DAYS);
    let expires_at = now + days * 86_400;
    let token = PlainToken::generate(TokenKind::Pat);
    let hash = token.hash();
    let row = ctx
        .state
        .store
        .insert_pat(
            NewPat {
                user_id: &caller.user_id,
                org_id: &caller.org_id,
                name: name.as_str(),
                scopes: &scopes,
                expires_at: Some(expires_at),
                hash: &hash,
            },
            now,
            AuditEntry::new(now, actor(&ctx), "pat.create"),
        )
        .await
        .map_err(|e| match e {
            StorageError::Conflict(message) => ToolResult::coded_error("CONFLICT", message),
            other => storage_failure("create_access_token")(other),
        })?;
    Ok(json!({
        "id": row.id,
        "name": row.name,
        "scopes": row.scopes,
        "created_at": time(row.created_at),
        "expires_at": time(expires_at),
        "token": token.expose(),
        "note": "This is the only time the token is shown: only its hash is stored. \
                 Send it as `Authorization: Bearer <token>`; revoke it with revoke_access_token and the id.",
    }))
}

pub(super) fn revoke_access_token() -> Built {
    let spec = builtin_spec(
        "revoke_access_token",
        "Revokes one of your personal access tokens in this organization, by the id list_access_tokens shows. \
         It stops working within about a second; this cannot be undone.",
    )?
    .title("Revoke an access token")
    .scopes(&["account:write"])?
    .annotations(Annotations::DESTRUCTIVE)
    .input_schema(object(
        json!({
            "id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 100,
                "description": "The token's id (like pat_…), not the secret token.",
            },
        }),
        &["id"],
    ))
    .output_schema(object(token_properties(), TOKEN_FIELDS));
    Ok(tool_fn(spec, |ctx, args| {
        Box::pin(async move { respond(run_revoke_access_token(ctx, args).await) })
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeArgs {
    id: String,
}

async fn run_revoke_access_token(ctx: ToolContext, args: Map<String, Value>) -> Outcome {
    require_account(&ctx)?;
    let args: RevokeArgs = parse_args(args)?;
    let caller = &ctx.caller;
    let store = &ctx.state.store;
    // Another user's token, or one in another organization, is answered exactly like
    // an unknown id: whether it exists is none of the caller's business.
    let not_found = || {
        ToolResult::coded_error(
            "NOT_FOUND",
            format!(
                "you have no access token with id {:?} in this organization; list_access_tokens shows yours",
                args.id.chars().take(100).collect::<String>()
            ),
        )
    };
    let already_revoked = || {
        ToolResult::coded_error(
            "ALREADY_REVOKED",
            format!("access token {} is already revoked", args.id),
        )
    };
    let pat = store
        .find_pat(&args.id)
        .await
        .map_err(storage_failure("revoke_access_token"))?
        .filter(|p| p.user_id == caller.user_id && p.org_id == caller.org_id)
        .ok_or_else(not_found)?;
    if pat.revoked_at.is_some() {
        return Err(already_revoked());
    }
    let now = ctx.state.clock.now();
    store
        .revoke_pat(
            &pat.id,
            now,
            AuditEntry::new(now, actor(&ctx), "pat.revoke"),
        )
        .await
        .map_err(|e| match e {
            StorageError::NotFound => not_found(),
            // Revoked by someone else between the read and the update.
            StorageError::Conflict(_) => already_revoked(),
            other => storage_failure("revoke_access_token")(other),
        })?;
    let pat = PatRow {
        revoked_at: Some(now),
        ..pat
    };
    Ok(token_json(&pat, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> ScopeSet {
        ScopeSet::parse(s).unwrap()
    }

    #[test]
    fn new_tokens_default_to_the_held_scopes_without_offline_access() {
        let held = set("account:read account:write offline_access");
        assert_eq!(
            scopes_for_new_token(None, &held).unwrap(),
            set("account:read account:write")
        );
        assert_eq!(
            scopes_for_new_token(Some("account:read offline_access"), &held).unwrap(),
            set("account:read")
        );
    }

    #[test]
    fn new_tokens_cannot_carry_scopes_the_caller_lacks() {
        let held = set("account:read account:write");
        let err = scopes_for_new_token(Some("account:read admin:read admin:write"), &held)
            .unwrap_err()
            .to_json();
        assert_eq!(err["structuredContent"]["error"]["code"], "SCOPES_NOT_HELD");
        let text = err["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("lacks: admin:read admin:write."), "{text}");
        assert!(
            scopes_for_new_token(Some("offline_access"), &held).is_err(),
            "nothing left"
        );
        assert!(scopes_for_new_token(Some("bad\"scope"), &held).is_err());
    }
}
