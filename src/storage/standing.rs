use super::{StorageError, Store, with_pool};

/// Where a caller stands in their organization right now: what `/mcp` re-checks for a
/// cached token at most once a second.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StandingRow {
    pub status: String,
    pub daily_tool_call_quota: Option<i64>,
    /// `None` when the user is no longer a member.
    pub role: Option<String>,
}

impl Store {
    /// `None` when the organization no longer exists.
    pub async fn find_standing(
        &self,
        org_id: &str,
        user_id: &str,
    ) -> Result<Option<StandingRow>, StorageError> {
        const SQL: &str = "SELECT o.status, o.daily_tool_call_quota, m.role \
             FROM organizations o LEFT JOIN memberships m ON m.org_id = o.id AND m.user_id = $2 \
             WHERE o.id = $1";
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, StandingRow>(
            SQL
        )
        .bind(org_id)
        .bind(user_id)
        .fetch_optional(pool)
        .await?))
    }
}
