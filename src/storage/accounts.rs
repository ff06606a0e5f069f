use super::BeginWrite;
use super::audit::insert_audit;
use super::oauth::revoke_families_where;
use super::{AuditEntry, MemberRow, OnUnique, OrgRow, StorageError, Store, UserRow, with_pool};
use crate::crypto::HashedToken;
use crate::crypto::random;
use crate::domain::org::OrgName;
use crate::domain::{DisplayName, Email, OrgSlug, OrgStatus, Role};

const ORG_COLUMNS: &str = "id, slug, name, status, created_at, daily_tool_call_quota";
const USER_COLUMNS: &str = "id, email, display_name, password_hash, created_at, disabled_at";
const MEMBER_SELECT: &str = "SELECT m.org_id, o.slug AS org_slug, m.user_id, u.email, u.display_name, m.role, m.created_at \
     FROM memberships m JOIN organizations o ON o.id = m.org_id JOIN users u ON u.id = m.user_id";

/// What the first start of an empty database creates.
pub struct InitialOwner {
    pub org: OrgRow,
    pub user: UserRow,
}

impl Store {
    pub async fn create_org(
        &self,
        slug: &OrgSlug,
        name: &OrgName,
        now: i64,
        audit: AuditEntry,
    ) -> Result<OrgRow, StorageError> {
        let id = random::id("org");
        let sql = format!(
            "INSERT INTO organizations (id, slug, name, status, created_at) VALUES ($1, $2, $3, 'active', $4) RETURNING {ORG_COLUMNS}"
        );
        let org = with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let org = sqlx::query_as::<_, OrgRow>(&sql)
                .bind(&id)
                .bind(slug.as_str())
                .bind(name.as_str())
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .on_unique(|| {
                    format!(
                        "an organization with slug {slug:?} already exists",
                        slug = slug.as_str()
                    )
                })?;
            insert_audit!(
                &audit.org(&id).target(format!("org:{}", slug.as_str())),
                &mut *tx
            )?;
            tx.commit().await?;
            org
        });
        Ok(org)
    }

    pub async fn list_orgs(&self) -> Result<Vec<OrgRow>, StorageError> {
        let sql = format!("SELECT {ORG_COLUMNS} FROM organizations ORDER BY slug");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, OrgRow>(&sql)
            .fetch_all(pool)
            .await?))
    }

    pub async fn find_org_by_slug(&self, slug: &OrgSlug) -> Result<Option<OrgRow>, StorageError> {
        let sql = format!("SELECT {ORG_COLUMNS} FROM organizations WHERE slug = $1");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, OrgRow>(&sql)
            .bind(slug.as_str())
            .fetch_optional(pool)
            .await?))
    }

    pub async fn find_org(&self, id: &str) -> Result<Option<OrgRow>, StorageError> {
        let sql = format!("SELECT {ORG_COLUMNS} FROM organizations WHERE id = $1");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, OrgRow>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await?))
    }

    pub async fn set_org_status(
        &self,
        slug: &OrgSlug,
        status: OrgStatus,
        audit: AuditEntry,
    ) -> Result<OrgRow, StorageError> {
        let sql =
            format!("UPDATE organizations SET status = $1 WHERE slug = $2 RETURNING {ORG_COLUMNS}");
        let org = with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let org = sqlx::query_as::<_, OrgRow>(&sql)
                .bind(status.as_str())
                .bind(slug.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StorageError::NotFound)?;
            // Suspension ends every OAuth grant in the organization (users connect again
            // after reactivation); PATs and API keys are refused while it lasts.
            if status == OrgStatus::Suspended {
                revoke_families_where!(
                    tx,
                    "org_id = $2",
                    audit.at,
                    "organization_suspended",
                    &org.id
                );
            }
            let audit = audit
                .org(&org.id)
                .target(format!("org:{}", org.slug))
                .detail(serde_json::json!({ "status": status.as_str() }));
            insert_audit!(&audit, &mut *tx)?;
            tx.commit().await?;
            org
        });
        Ok(org)
    }

    pub async fn create_user(
        &self,
        email: &Email,
        display_name: &DisplayName,
        password_hash: Option<String>,
        now: i64,
        audit: AuditEntry,
    ) -> Result<UserRow, StorageError> {
        let id = random::id("usr");
        let sql = format!(
            "INSERT INTO users (id, email, display_name, password_hash, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLUMNS}"
        );
        let user = with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let user = sqlx::query_as::<_, UserRow>(&sql)
                .bind(&id)
                .bind(email.as_str())
                .bind(display_name.as_str())
                .bind(password_hash.as_deref())
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .on_unique(|| format!("a user with email {email} already exists"))?;
            insert_audit!(&audit.target(format!("user:{id}")), &mut *tx)?;
            tx.commit().await?;
            user
        });
        Ok(user)
    }

    pub async fn list_users(&self) -> Result<Vec<UserRow>, StorageError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY email");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, UserRow>(&sql)
            .fetch_all(pool)
            .await?))
    }

    pub async fn find_user_by_email(&self, email: &Email) -> Result<Option<UserRow>, StorageError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, UserRow>(&sql)
            .bind(email.as_str())
            .fetch_optional(pool)
            .await?))
    }

    /// Disables a user (revoking their API keys, PATs and OAuth grants everywhere; they
    /// cannot sign in) or enables them again (with no credentials: they get new ones).
    pub async fn set_user_disabled(
        &self,
        email: &Email,
        disabled: bool,
        now: i64,
        audit: AuditEntry,
    ) -> Result<UserRow, StorageError> {
        let sql = format!(
            "UPDATE users SET disabled_at = CASE WHEN $1 THEN COALESCE(disabled_at, $2) END \
             WHERE email = $3 RETURNING {USER_COLUMNS}"
        );
        Ok(with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let user = sqlx::query_as::<_, UserRow>(&sql)
                .bind(disabled)
                .bind(now)
                .bind(email.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StorageError::NotFound)?;
            if disabled {
                for table in ["api_keys", "personal_access_tokens"] {
                    sqlx::query(&format!(
                        "UPDATE {table} SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL"
                    ))
                    .bind(now)
                    .bind(&user.id)
                    .execute(&mut *tx)
                    .await?;
                }
                revoke_families_where!(tx, "user_id = $2", now, "user_disabled", &user.id);
            }
            insert_audit!(&audit.target(format!("user:{}", user.id)), &mut *tx)?;
            tx.commit().await?;
            user
        }))
    }

    pub async fn set_user_password(
        &self,
        email: &Email,
        password_hash: &str,
        audit: AuditEntry,
    ) -> Result<(), StorageError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let id: Option<String> = sqlx::query_scalar(
                "UPDATE users SET password_hash = $1 WHERE email = $2 RETURNING id",
            )
            .bind(password_hash)
            .bind(email.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let id = id.ok_or(StorageError::NotFound)?;
            insert_audit!(&audit.target(format!("user:{id}")), &mut *tx)?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn add_member(
        &self,
        org: &OrgRow,
        user: &UserRow,
        role: Role,
        now: i64,
        audit: AuditEntry,
    ) -> Result<(), StorageError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO memberships (org_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)")
                .bind(&org.id)
                .bind(&user.id)
                .bind(role.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await
                .on_unique(|| format!("{} is already a member of {}", user.email, org.slug))?;
            let audit = audit
                .org(&org.id)
                .target(format!("user:{}", user.id))
                .detail(serde_json::json!({ "role": role.as_str() }));
            insert_audit!(&audit, &mut *tx)?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Removes a membership and revokes the keys and tokens the user held in that
    /// organization. The last owner cannot be removed.
    pub async fn remove_member(
        &self,
        org: &OrgRow,
        user: &UserRow,
        now: i64,
        audit: AuditEntry,
    ) -> Result<(), StorageError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let role: Option<String> = sqlx::query_scalar(
                "SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2",
            )
            .bind(&org.id)
            .bind(&user.id)
            .fetch_optional(&mut *tx)
            .await?;
            let role = role.ok_or(StorageError::NotFound)?;
            if role == "owner" {
                let owners: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM memberships WHERE org_id = $1 AND role = 'owner'",
                )
                .bind(&org.id)
                .fetch_one(&mut *tx)
                .await?;
                if owners <= 1 {
                    return Err(StorageError::Conflict(format!(
                        "{} is the last owner of {}; add another owner first",
                        user.email, org.slug
                    )));
                }
            }
            sqlx::query("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2")
                .bind(&org.id)
                .bind(&user.id)
                .execute(&mut *tx)
                .await?;
            for table in ["api_keys", "personal_access_tokens"] {
                sqlx::query(&format!(
                    "UPDATE {table} SET revoked_at = $1 WHERE org_id = $2 AND user_id = $3 AND revoked_at IS NULL"
                ))
                .bind(now)
                .bind(&org.id)
                .bind(&user.id)
                .execute(&mut *tx)
                .await?;
            }
            revoke_families_where!(
                tx,
                "org_id = $2 AND user_id = $3",
                now,
                "member_removed",
                &org.id,
                &user.id
            );
            insert_audit!(
                &audit.org(&org.id).target(format!("user:{}", user.id)),
                &mut *tx
            )?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn list_members(&self, org: &OrgRow) -> Result<Vec<MemberRow>, StorageError> {
        let sql = format!("{MEMBER_SELECT} WHERE m.org_id = $1 ORDER BY u.email");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, MemberRow>(
            &sql
        )
        .bind(&org.id)
        .fetch_all(pool)
        .await?))
    }

    pub async fn find_membership(
        &self,
        org_id: &str,
        user_id: &str,
    ) -> Result<Option<MemberRow>, StorageError> {
        // A disabled user's membership does not count (their browser session ends).
        let sql = format!(
            "{MEMBER_SELECT} WHERE m.org_id = $1 AND m.user_id = $2 AND u.disabled_at IS NULL"
        );
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, MemberRow>(
            &sql
        )
        .bind(org_id)
        .bind(user_id)
        .fetch_optional(pool)
        .await?))
    }

    /// On an empty database, creates the `default` organization, its owner and an API
    /// key for them, all in one transaction. Returns `None` when any organization
    /// already exists (including one created a moment ago by another instance).
    pub async fn create_initial_owner(
        &self,
        owner_email: &Email,
        key_hash: &HashedToken,
        now: i64,
    ) -> Result<Option<InitialOwner>, StorageError> {
        let org_id = random::id("org");
        let user_id = random::id("usr");
        let key_id = random::id("key");
        let org_sql = format!(
            "INSERT INTO organizations (id, slug, name, status, created_at) VALUES ($1, 'default', 'Default', 'active', $2) RETURNING {ORG_COLUMNS}"
        );
        let user_sql = format!(
            "INSERT INTO users (id, email, display_name, password_hash, created_at) VALUES ($1, $2, 'Owner', NULL, $3) \
             ON CONFLICT (email) DO UPDATE SET email = excluded.email RETURNING {USER_COLUMNS}"
        );
        let created = with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM organizations")
                .fetch_one(&mut *tx)
                .await?;
            if existing > 0 {
                return Ok(None);
            }
            let org = match sqlx::query_as::<_, OrgRow>(&org_sql)
                .bind(&org_id)
                .bind(now)
                .fetch_one(&mut *tx)
                .await
            {
                Ok(org) => org,
                // Another instance won the race; it prints the key, we print nothing.
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let user = sqlx::query_as::<_, UserRow>(&user_sql)
                .bind(&user_id)
                .bind(owner_email.as_str())
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO memberships (org_id, user_id, role, created_at) VALUES ($1, $2, 'owner', $3)")
                .bind(&org.id)
                .bind(&user.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO api_keys (id, user_id, org_id, name, token_hash, created_at) VALUES ($1, $2, $3, 'initial owner key', $4, $5)",
            )
            .bind(&key_id)
            .bind(&user.id)
            .bind(&org.id)
            .bind(key_hash.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let audit = AuditEntry::new(now, "system", "bootstrap.owner_created")
                .org(&org.id)
                .target(format!("user:{}", user.id))
                .detail(serde_json::json!({ "api_key_id": key_id }));
            insert_audit!(&audit, &mut *tx)?;
            tx.commit().await?;
            InitialOwner { org, user }
        });
        Ok(Some(created))
    }
}

impl Store {
    /// Every organization the user belongs to.
    pub async fn list_memberships_of_user(
        &self,
        user_id: &str,
    ) -> Result<Vec<MemberRow>, StorageError> {
        let sql = format!("{MEMBER_SELECT} WHERE m.user_id = $1 ORDER BY o.slug");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, MemberRow>(
            &sql
        )
        .bind(user_id)
        .fetch_all(pool)
        .await?))
    }

    pub async fn find_user(&self, id: &str) -> Result<Option<UserRow>, StorageError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, UserRow>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await?))
    }
}
