use super::{AuditRow, StorageError, Store, with_pool};

/// One thing that happened, as the audit log records it.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub at: i64,
    pub org_id: Option<String>,
    /// Who did it: `user:<id>`, `client:<id>`, `cli` or `system`.
    pub actor: String,
    /// Dotted verb such as `org.create` or `pat.revoke`.
    pub action: String,
    pub target: Option<String>,
    pub source_addr: Option<String>,
    /// Extra JSON, never containing a secret.
    pub detail: Option<serde_json::Value>,
}

impl AuditEntry {
    pub fn new(at: i64, actor: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            at,
            org_id: None,
            actor: actor.into(),
            action: action.into(),
            target: None,
            source_addr: None,
            detail: None,
        }
    }

    pub fn org(mut self, org_id: impl Into<String>) -> Self {
        self.org_id = Some(org_id.into());
        self
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    pub fn source(mut self, addr: Option<String>) -> Self {
        self.source_addr = addr;
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub org_id: Option<String>,
    pub action_prefix: Option<String>,
    pub limit: i64,
}

pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit_log (at, org_id, actor, action, target, source_addr, detail) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Binds an [`AuditEntry`] to [`INSERT_AUDIT`] and runs it on any executor.
macro_rules! insert_audit {
    ($entry:expr, $executor:expr) => {{
        let e: &$crate::storage::AuditEntry = $entry;
        sqlx::query($crate::storage::audit::INSERT_AUDIT)
            .bind(e.at)
            .bind(e.org_id.as_deref())
            .bind(e.actor.as_str())
            .bind(e.action.as_str())
            .bind(e.target.as_deref())
            .bind(e.source_addr.as_deref())
            .bind(e.detail.as_ref().map(|d| d.to_string()))
            .execute($executor)
            .await
    }};
}
pub(crate) use insert_audit;

impl Store {
    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StorageError> {
        with_pool!(self, |pool| {
            insert_audit!(entry, pool)?;
        });
        Ok(())
    }

    /// Newest first.
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, StorageError> {
        let prefix = filter.action_prefix.as_ref().map(|p| {
            format!(
                "{}%",
                p.replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            )
        });
        let sql = "SELECT id, at, org_id, actor, action, target, source_addr, detail FROM audit_log \
                   WHERE ($1 IS NULL OR org_id = $1) AND ($2 IS NULL OR action LIKE $2 ESCAPE '\\') \
                   ORDER BY id DESC LIMIT $3";
        let limit = filter.limit.clamp(1, 10_000);
        let rows = with_pool!(self, |pool| {
            sqlx::query_as::<_, AuditRow>(sql)
                .bind(filter.org_id.as_deref())
                .bind(prefix.as_deref())
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }
}
