//! Tool pins (gateway `on_change`): what each upstream tool was approved as.

use super::{AuditEntry, StorageError, Store, audit::insert_audit, with_pool};

/// One upstream tool's pin.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ToolPin {
    pub upstream: String,
    /// The tool's name at the upstream.
    pub tool: String,
    /// The approved definition's digest.
    pub digest: String,
    /// A changed definition waiting for approval (`on_change = "block"`).
    pub pending_digest: Option<String>,
    pub pending_definition: Option<String>,
    pub first_seen: i64,
    pub updated_at: i64,
}

const COLUMNS: &str =
    "upstream, tool, digest, pending_digest, pending_definition, first_seen, updated_at";

impl Store {
    /// Every pin, by upstream and tool.
    pub async fn tool_pins(&self) -> Result<Vec<ToolPin>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM upstream_tool_pins ORDER BY upstream, tool");
        Ok(with_pool!(self, |pool| {
            sqlx::query_as::<_, ToolPin>(&sql).fetch_all(pool).await?
        }))
    }

    /// Pins a tool seen for the first time (another instance may have just done so:
    /// then its pin stands). Returns the pin in force.
    pub async fn pin_tool(
        &self,
        upstream: &str,
        tool: &str,
        digest: &str,
        now: i64,
    ) -> Result<ToolPin, StorageError> {
        let sql =
            format!("SELECT {COLUMNS} FROM upstream_tool_pins WHERE upstream = $1 AND tool = $2");
        Ok(with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO upstream_tool_pins (upstream, tool, digest, first_seen, updated_at) \
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT (upstream, tool) DO NOTHING",
            )
            .bind(upstream)
            .bind(tool)
            .bind(digest)
            .bind(now)
            .execute(pool)
            .await?;
            sqlx::query_as::<_, ToolPin>(&sql)
                .bind(upstream)
                .bind(tool)
                .fetch_one(pool)
                .await?
        }))
    }

    /// Records a changed definition: waiting for approval (`accept = false`) or taken
    /// as the new pin at once (`warn`, `accept`); audited with `audit`. Does nothing
    /// (and audits nothing) when this change was recorded already.
    pub async fn record_tool_change(
        &self,
        pin: &ToolPin,
        digest: &str,
        definition: &str,
        accept: bool,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StorageError> {
        // Each form binds exactly the parameters it names (PostgreSQL wants a type for
        // every one).
        let sql = if accept {
            "UPDATE upstream_tool_pins SET digest = $3, pending_digest = NULL, \
             pending_definition = NULL, updated_at = $4 \
             WHERE upstream = $1 AND tool = $2 AND digest <> $3"
        } else {
            "UPDATE upstream_tool_pins SET pending_digest = $3, pending_definition = $5, \
             updated_at = $4 WHERE upstream = $1 AND tool = $2 \
             AND (pending_digest IS NULL OR pending_digest <> $3)"
        };
        Ok(with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let mut q = sqlx::query(sql)
                .bind(&pin.upstream)
                .bind(&pin.tool)
                .bind(digest)
                .bind(now);
            if !accept {
                q = q.bind(definition);
            }
            let changed = q.execute(&mut *tx).await?.rows_affected() > 0;
            if changed {
                insert_audit!(audit, &mut *tx)?;
            }
            tx.commit().await?;
            changed
        }))
    }

    /// Approves the changed definitions waiting for `upstream` (only `tool`'s, and
    /// only one whose digest is `digest`, when given: what was reviewed, not whatever
    /// the upstream put there since), each audited with its digest; returns the
    /// `(tool, digest)` pairs approved.
    pub async fn approve_tool_changes(
        &self,
        upstream: &str,
        tool: Option<&str>,
        digest: Option<&str>,
        now: i64,
        actor: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        Ok(with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let tools: Vec<(String, String)> = sqlx::query_as(
                "UPDATE upstream_tool_pins SET digest = pending_digest, pending_digest = NULL, \
                 pending_definition = NULL, updated_at = $3 \
                 WHERE upstream = $1 AND ($2 IS NULL OR tool = $2) \
                 AND ($4 IS NULL OR pending_digest = $4) AND pending_digest IS NOT NULL \
                 RETURNING tool, digest",
            )
            .bind(upstream)
            .bind(tool)
            .bind(now)
            .bind(digest)
            .fetch_all(&mut *tx)
            .await?;
            for (t, d) in &tools {
                let entry = AuditEntry::new(now, actor, "gateway.tool_approved")
                    .target(format!("upstream:{upstream}/tool:{t}"))
                    .detail(serde_json::json!({ "digest": d }));
                insert_audit!(&entry, &mut *tx)?;
            }
            tx.commit().await?;
            tools
        }))
    }
}
