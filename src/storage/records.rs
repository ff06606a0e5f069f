//! Rows as stored. The same structs decode from both backends.

use serde::Serialize;

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct OrgRow {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub status: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub display_name: String,
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub created_at: i64,
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
