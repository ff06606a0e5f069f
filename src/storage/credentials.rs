use super::BeginWrite;
use super::audit::insert_audit;
use super::oauth::revoke_families_where;
use super::{ApiKeyRow, AuditEntry, OnUnique, PatRow, StorageError, Store, with_pool};
use crate::crypto::HashedToken;
use crate::crypto::random;
use crate::domain::ScopeSet;

const KEY_SELECT: &str = "SELECT k.id, k.user_id, u.email, k.org_id, o.slug AS org_slug, k.name, k.created_at, k.last_used_at, k.revoked_at \
     FROM api_keys k JOIN users u ON u.id = k.user_id JOIN organizations o ON o.id = k.org_id";
pub(super) const PAT_SELECT: &str = "SELECT t.id, t.user_id, u.email, t.org_id, o.slug AS org_slug, t.name, t.scopes, t.created_at, t.expires_at, t.last_used_at, t.revoked_at \
     FROM personal_access_tokens t JOIN users u ON u.id = t.user_id JOIN organizations o ON o.id = t.org_id";

/// What a new PAT is.
pub struct NewPat<'a> {
    pub user_id: &'a str,
    pub org_id: &'a str,
    pub name: &'a str,
    pub scopes: &'a ScopeSet,
    pub expires_at: Option<i64>,
    pub hash: &'a HashedToken,
}

/// Which table a credential lives in; the SQL differs only by that.
#[derive(Clone, Copy)]
enum Credential {
    ApiKey,
    Pat,
}

impl Credential {
    fn table(self) -> &'static str {
        match self {
            Self::ApiKey => "api_keys",
            Self::Pat => "personal_access_tokens",
        }
    }
}

impl Store {
    /// Stores a new API key for a member of the organization.
    pub async fn insert_api_key(
        &self,
        user_id: &str,
        org_id: &str,
        name: &str,
        hash: &HashedToken,
        now: i64,
        audit: AuditEntry,
    ) -> Result<ApiKeyRow, StorageError> {
        let id = random::id("key");
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO api_keys (id, user_id, org_id, name, token_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&id)
            .bind(user_id)
            .bind(org_id)
            .bind(name)
            .bind(hash.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .on_unique(|| "token collision; try again".to_owned())?;
            insert_audit!(&audit.org(org_id).target(format!("api_key:{id}")), &mut *tx)?;
            tx.commit().await?;
        });
        self.find_api_key(&id).await?.ok_or(StorageError::NotFound)
    }

    pub async fn find_api_key(&self, id: &str) -> Result<Option<ApiKeyRow>, StorageError> {
        let sql = format!("{KEY_SELECT} WHERE k.id = $1");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, ApiKeyRow>(
            &sql
        )
        .bind(id)
        .fetch_optional(pool)
        .await?))
    }

    /// The live (unrevoked) key with this digest, if any.
    pub async fn find_api_key_by_hash(
        &self,
        hash: &HashedToken,
    ) -> Result<Option<ApiKeyRow>, StorageError> {
        let sql = format!("{KEY_SELECT} WHERE k.token_hash = $1 AND k.revoked_at IS NULL");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, ApiKeyRow>(
            &sql
        )
        .bind(hash.as_str())
        .fetch_optional(pool)
        .await?))
    }

    pub async fn list_api_keys(
        &self,
        org_id: Option<&str>,
    ) -> Result<Vec<ApiKeyRow>, StorageError> {
        let sql =
            format!("{KEY_SELECT} WHERE ($1 IS NULL OR k.org_id = $1) ORDER BY k.created_at, k.id");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, ApiKeyRow>(
            &sql
        )
        .bind(org_id)
        .fetch_all(pool)
        .await?))
    }

    pub async fn insert_pat(
        &self,
        pat: NewPat<'_>,
        now: i64,
        audit: AuditEntry,
    ) -> Result<PatRow, StorageError> {
        let id = random::id("pat");
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO personal_access_tokens (id, user_id, org_id, name, scopes, token_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&id)
            .bind(pat.user_id)
            .bind(pat.org_id)
            .bind(pat.name)
            .bind(pat.scopes.to_string())
            .bind(pat.hash.as_str())
            .bind(now)
            .bind(pat.expires_at)
            .execute(&mut *tx)
            .await
            .on_unique(|| "token collision; try again".to_owned())?;
            let audit = audit
                .org(pat.org_id)
                .target(format!("pat:{id}"))
                .detail(serde_json::json!({ "scopes": pat.scopes.to_string(), "expires_at": pat.expires_at }));
            insert_audit!(&audit, &mut *tx)?;
            tx.commit().await?;
        });
        self.find_pat(&id).await?.ok_or(StorageError::NotFound)
    }

    pub async fn find_pat(&self, id: &str) -> Result<Option<PatRow>, StorageError> {
        let sql = format!("{PAT_SELECT} WHERE t.id = $1");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, PatRow>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await?))
    }

    /// The live PAT with this digest: not revoked and not expired at `now`.
    pub async fn find_pat_by_hash(
        &self,
        hash: &HashedToken,
        now: i64,
    ) -> Result<Option<PatRow>, StorageError> {
        let sql = format!(
            "{PAT_SELECT} WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $2)"
        );
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, PatRow>(&sql)
            .bind(hash.as_str())
            .bind(now)
            .fetch_optional(pool)
            .await?))
    }

    pub async fn list_pats(&self, org_id: Option<&str>) -> Result<Vec<PatRow>, StorageError> {
        let sql =
            format!("{PAT_SELECT} WHERE ($1 IS NULL OR t.org_id = $1) ORDER BY t.created_at, t.id");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, PatRow>(&sql)
            .bind(org_id)
            .fetch_all(pool)
            .await?))
    }

    pub async fn revoke_api_key(
        &self,
        id: &str,
        now: i64,
        audit: AuditEntry,
    ) -> Result<(), StorageError> {
        self.revoke_credential(Credential::ApiKey, id, now, audit)
            .await
    }

    pub async fn revoke_pat(
        &self,
        id: &str,
        now: i64,
        audit: AuditEntry,
    ) -> Result<(), StorageError> {
        self.revoke_credential(Credential::Pat, id, now, audit)
            .await
    }

    /// Marks a credential revoked. Revoking twice is a conflict so that scripts notice typos.
    async fn revoke_credential(
        &self,
        kind: Credential,
        id: &str,
        now: i64,
        audit: AuditEntry,
    ) -> Result<(), StorageError> {
        let table = kind.table();
        let select = format!("SELECT org_id, revoked_at FROM {table} WHERE id = $1");
        let update =
            format!("UPDATE {table} SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL");
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let row: Option<(String, Option<i64>)> = sqlx::query_as(&select)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let (org_id, revoked_at) = row.ok_or(StorageError::NotFound)?;
            if revoked_at.is_some() {
                return Err(StorageError::Conflict(format!("{id} is already revoked")));
            }
            sqlx::query(&update)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            // The OAuth grants a user made after signing in with this key go with it.
            if matches!(kind, Credential::ApiKey) {
                revoke_families_where!(tx, "api_key_id = $2", now, "api_key_revoked", id);
            }
            insert_audit!(&audit.org(org_id).target(id.to_owned()), &mut *tx)?;
            tx.commit().await?;
        });
        Ok(())
    }
}
