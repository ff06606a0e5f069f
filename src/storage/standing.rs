use super::{StorageError, Store, with_pool};

/// Where a caller stands in their organization right now: what `/mcp` re-checks for a
/// cached token at most once a second.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StandingRow {
    pub status: String,
    pub slug: String,
    pub daily_tool_call_quota: Option<i64>,
    /// `None` when the user is no longer a member, or is disabled.
    pub role: Option<String>,
    pub email: Option<String>,
    pub display_name: Option<String>,
}

impl Store {
    /// `None` when the organization no longer exists.
    pub async fn find_standing(
        &self,
        org_id: &str,
        user_id: &str,
    ) -> Result<Option<StandingRow>, StorageError> {
        // A disabled user stands nowhere, even if something they held escaped revocation.
        const SQL: &str = "SELECT o.status, o.slug, o.daily_tool_call_quota, \
             CASE WHEN u.disabled_at IS NULL THEN m.role END AS role, u.email, u.display_name \
             FROM organizations o LEFT JOIN memberships m ON m.org_id = o.id AND m.user_id = $2 \
             LEFT JOIN users u ON u.id = m.user_id \
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

/// One row of `credential_changes`: something that can make cached tokens invalid.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CredentialChange {
    pub id: i64,
    /// `jti` (an access token's digest), `pat` (a PAT's digest), `org` (an organization
    /// id) or `member` (`<org id> <user id>`).
    pub kind: String,
    pub key: String,
}

impl Store {
    /// Changes with an id above `after`, oldest first, at most `limit`.
    pub async fn credential_changes_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<CredentialChange>, StorageError> {
        const SQL: &str =
            "SELECT id, kind, key FROM credential_changes WHERE id > $1 ORDER BY id LIMIT $2";
        Ok(with_pool!(self, |pool| {
            sqlx::query_as::<_, CredentialChange>(SQL)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?
        }))
    }

    /// The newest change id (0 when there is none).
    pub async fn latest_credential_change(&self) -> Result<i64, StorageError> {
        const SQL: &str = "SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM credential_changes";
        Ok(with_pool!(self, |pool| sqlx::query_scalar::<_, i64>(SQL)
            .fetch_one(pool)
            .await?))
    }

    /// Drops changes older than `max_age_secs` by the database's own clock.
    pub async fn purge_credential_changes(&self, max_age_secs: i64) -> Result<u64, StorageError> {
        let done = match self {
            Store::Postgres(pool) => sqlx::query(
                "DELETE FROM credential_changes WHERE created_at < EXTRACT(EPOCH FROM now())::BIGINT - $1",
            )
            .bind(max_age_secs)
            .execute(pool)
            .await?
            .rows_affected(),
            Store::Sqlite(pool) => sqlx::query(
                "DELETE FROM credential_changes WHERE created_at < CAST(strftime('%s', 'now') AS INTEGER) - $1",
            )
            .bind(max_age_secs)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(done)
    }
}
