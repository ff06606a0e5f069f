//! Rows as stored. The same structs decode from both backends.

use serde::Serialize;

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct OrgRow {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub status: String,
    pub created_at: i64,
    /// Tool calls allowed per UTC day; `None` is unlimited.
    pub daily_tool_call_quota: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub display_name: String,
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub created_at: i64,
    /// Set while the user is disabled: no sign-in, every credential revoked.
    pub disabled_at: Option<i64>,
}

impl UserRow {
    pub fn has_password(&self) -> bool {
        self.password_hash.is_some()
    }
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct MemberRow {
    pub org_id: String,
    pub org_slug: String,
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    pub role: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct ApiKeyRow {
    pub id: String,
    pub user_id: String,
    pub email: String,
    pub org_id: String,
    pub org_slug: String,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct PatRow {
    pub id: String,
    pub user_id: String,
    pub email: String,
    pub org_id: String,
    pub org_slug: String,
    pub name: String,
    pub scopes: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub org_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub source_addr: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct ClientRow {
    pub id: String,
    pub origin: String,
    pub name: String,
    /// JSON array of strings.
    pub redirect_uris: String,
    pub auth_method: String,
    #[serde(skip)]
    pub secret_hash: Option<String>,
    pub can_introspect: bool,
    #[serde(skip)]
    pub dedupe_key: Option<String>,
    /// The registration metadata as the client sent it (JSON).
    pub metadata: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

impl ClientRow {
    pub fn redirect_uri_list(&self) -> Vec<String> {
        serde_json::from_str(&self.redirect_uris).unwrap_or_default()
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CodeRow {
    pub code_hash: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scopes: String,
    pub resource: String,
    pub user_id: String,
    pub org_id: String,
    pub family_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    /// The API key the user signed in with (`None`: a password), so that revoking the
    /// key revokes the grant.
    pub api_key_id: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshRow {
    pub token_hash: String,
    pub family_id: String,
    pub client_id: String,
    pub scopes: String,
    pub resource: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub rotated_at: Option<i64>,
    pub successor: Option<String>,
    pub user_id: String,
    pub org_id: String,
    pub family_revoked_at: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConsentRow {
    pub user_id: String,
    pub org_id: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: String,
    pub created_at: i64,
}
