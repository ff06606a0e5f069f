//! Tools: what each needs (scopes) and what it does. The registry is public so a Rust
//! user can add tools of their own.

use std::future::Future;
use std::pin::Pin;

use serde_json::{Value, json};

use super::auth::Principal;
use crate::domain::ScopeSet;
use crate::state::AppState;

pub type ToolFuture<'a> = Pin<Box<dyn Future<Output = ToolResult> + Send + 'a>>;

/// A tool's answer: content for the model, and whether it is an error the model may fix.
pub struct ToolResult {
    pub text: String,
    pub structured: Option<Value>,
    pub is_error: bool,
}

impl ToolResult {
    pub fn json(value: Value) -> Self {
        Self {
            text: value.to_string(),
            structured: Some(value),
            is_error: false,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            text: message.into(),
            structured: None,
            is_error: true,
        }
    }

    pub fn to_json(&self) -> Value {
        let mut out =
            json!({ "content": [{ "type": "text", "text": self.text }], "isError": self.is_error });
        if let Some(s) = &self.structured {
            out["structuredContent"] = s.clone();
        }
        out
    }
}

pub trait Tool: Send + Sync {
    fn name(&self) -> &'static str;
    fn title(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn input_schema(&self) -> Value {
        json!({ "type": "object", "properties": {}, "additionalProperties": false })
    }
    fn read_only(&self) -> bool;
    /// Every scope here must be granted to call the tool.
    fn required_scopes(&self) -> &'static [&'static str];
    fn call<'a>(
        &'a self,
        state: &'a AppState,
        caller: &'a Principal,
        args: Value,
    ) -> ToolFuture<'a>;

    fn definition(&self) -> Value {
        json!({
            "name": self.name(),
            "title": self.title(),
            "description": self.description(),
            "inputSchema": self.input_schema(),
            "annotations": {
                "title": self.title(),
                "readOnlyHint": self.read_only(),
                "destructiveHint": !self.read_only(),
                "idempotentHint": self.read_only(),
                "openWorldHint": false,
            },
        })
    }

    /// The scopes the caller lacks for this tool.
    fn missing_scopes(&self, granted: &ScopeSet) -> ScopeSet {
        let needed = ScopeSet::parse(&self.required_scopes().join(" ")).unwrap_or_default();
        needed.difference(granted)
    }
}

pub struct Registry(Vec<Box<dyn Tool>>);

impl Registry {
    pub fn builtin() -> Self {
        Self(vec![Box::new(WhoAmI)])
    }

    pub fn with(mut self, tool: Box<dyn Tool>) -> Self {
        self.0.push(tool);
        self
    }

    pub fn list(&self) -> impl Iterator<Item = &dyn Tool> {
        self.0.iter().map(|t| t.as_ref())
    }

    pub fn find(&self, name: &str) -> Option<&dyn Tool> {
        self.list().find(|t| t.name() == name)
    }
}

/// `whoami`: the caller's identity and organization.
struct WhoAmI;

impl Tool for WhoAmI {
    fn name(&self) -> &'static str {
        "whoami"
    }
    fn title(&self) -> &'static str {
        "Who am I"
    }
    fn description(&self) -> &'static str {
        "Shows the signed-in user, their organization and role, and the scopes this connection holds."
    }
    fn read_only(&self) -> bool {
        true
    }
    fn required_scopes(&self) -> &'static [&'static str] {
        &["account:read"]
    }
    fn call<'a>(
        &'a self,
        state: &'a AppState,
        caller: &'a Principal,
        _args: Value,
    ) -> ToolFuture<'a> {
        Box::pin(async move {
            match state
                .store
                .find_membership(&caller.org_id, &caller.user_id)
                .await
            {
                Ok(Some(m)) => ToolResult::json(json!({
                    "user": { "id": m.user_id, "email": m.email, "display_name": m.display_name },
                    "organization": { "id": m.org_id, "slug": m.org_slug },
                    "role": m.role,
                    "scopes": caller.scopes.to_string(),
                    "client_id": caller.client_id,
                })),
                Ok(None) => ToolResult::error("you are no longer a member of this organization"),
                Err(_) => {
                    ToolResult::error("the account database is unavailable; try again shortly")
                }
            }
        })
    }
}
