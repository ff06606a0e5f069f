//! What the MCP account tools need: the daily tool-call quota, usage counters, last-use
//! times, the user's OAuth connections and PATs, and idempotency keys.

use super::BeginWrite;
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::audit::insert_audit;
use super::credentials::PAT_SELECT;
use super::oauth::revoke_family;
use super::{AuditEntry, PatRow, StorageError, Store, with_pool};

/// Calls of one tool by one user through one client on one day, to add to the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    pub org_id: String,
    pub user_id: String,
    /// Empty for personal access tokens.
    pub client_id: String,
    pub tool: String,
    /// Unix day number: Unix seconds / 86400.
    pub day: i64,
    pub calls: i64,
    pub errors: i64,
    pub total_latency_us: i64,
}

/// Usage of one tool on one day, summed over users and clients.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    pub day: i64,
    pub tool: String,
    pub calls: i64,
    pub errors: i64,
    pub avg_latency_ms: f64,
}

/// An OAuth client a user has authorised in an organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionRow {
    pub client_id: String,
    pub client_name: String,
    /// How the client was registered: `dcr`, `cimd` or `static`.
    pub origin: String,
    /// Every scope granted to it, space-separated and sorted.
    pub scopes: String,
    pub first_used_at: i64,
    pub last_used_at: i64,
}

/// What [`Store::idempotency_begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// The key was free (or its row had expired): the caller owns it now and must
    /// `idempotency_finish` or `idempotency_abort` it.
    Started,
    /// An earlier call with this key completed.
    Done { args_hash: String, result: String },
    /// An earlier call with this key is still running.
    InProgress { args_hash: String },
}

impl Store {
    /// Sets (or with `None` clears) an organization's daily tool-call quota.
    /// `_now` is unused: the audit entry carries its own time.
    pub async fn set_org_quota(
        &self,
        org_id: &str,
        daily: Option<i64>,
        _now: i64,
        audit: AuditEntry,
    ) -> Result<(), StorageError> {
        if daily.is_some_and(|n| n <= 0) {
            return Err(StorageError::Conflict(
                "a daily tool-call quota must be a positive number".into(),
            ));
        }
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let slug: Option<String> = sqlx::query_scalar(
                "UPDATE organizations SET daily_tool_call_quota = $1 WHERE id = $2 RETURNING slug",
            )
            .bind(daily)
            .bind(org_id)
            .fetch_optional(&mut *tx)
            .await?;
            let slug = slug.ok_or(StorageError::NotFound)?;
            let audit = audit
                .org(org_id)
                .target(format!("org:{slug}"))
                .detail(serde_json::json!({ "daily_tool_call_quota": daily }));
            insert_audit!(&audit, &mut *tx)?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Adds a batch of counters to the stored ones, in one transaction.
    pub async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        // One order for every writer, so concurrent batches cannot deadlock on PostgreSQL.
        let mut sorted: Vec<&UsageRecord> = batch.iter().collect();
        sorted.sort_by(|a, b| {
            (&a.org_id, &a.user_id, &a.client_id, &a.tool, a.day).cmp(&(
                &b.org_id,
                &b.user_id,
                &b.client_id,
                &b.tool,
                b.day,
            ))
        });
        let sql = "INSERT INTO tool_usage (org_id, user_id, client_id, tool, day, calls, errors, total_latency_us) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                   ON CONFLICT (org_id, user_id, client_id, tool, day) DO UPDATE SET \
                   calls = tool_usage.calls + excluded.calls, \
                   errors = tool_usage.errors + excluded.errors, \
                   total_latency_us = tool_usage.total_latency_us + excluded.total_latency_us";
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            for r in &sorted {
                sqlx::query(sql)
                    .bind(&r.org_id)
                    .bind(&r.user_id)
                    .bind(&r.client_id)
                    .bind(&r.tool)
                    .bind(r.day)
                    .bind(r.calls)
                    .bind(r.errors)
                    .bind(r.total_latency_us)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Usage per day and tool since `since_day` (inclusive), for the whole organization
    /// or one user; newest day first, then by tool name.
    pub async fn usage_stats(
        &self,
        org_id: &str,
        user_id: Option<&str>,
        since_day: i64,
    ) -> Result<Vec<UsageRow>, StorageError> {
        // SUM of BIGINT is NUMERIC on PostgreSQL; the casts keep one row type.
        let sql = "SELECT day, tool, CAST(SUM(calls) AS BIGINT), CAST(SUM(errors) AS BIGINT), \
                   CAST(SUM(total_latency_us) AS BIGINT) FROM tool_usage \
                   WHERE org_id = $1 AND ($2 IS NULL OR user_id = $2) AND day >= $3 \
                   GROUP BY day, tool";
        let rows: Vec<(i64, String, i64, i64, i64)> = with_pool!(self, |pool| {
            sqlx::query_as(sql)
                .bind(org_id)
                .bind(user_id)
                .bind(since_day)
                .fetch_all(pool)
                .await?
        });
        let mut rows: Vec<UsageRow> = rows
            .into_iter()
            .map(|(day, tool, calls, errors, latency_us)| UsageRow {
                day,
                tool,
                calls,
                errors,
                avg_latency_ms: if calls > 0 {
                    latency_us as f64 / calls as f64 / 1000.0
                } else {
                    0.0
                },
            })
            .collect();
        // Sorted here: PostgreSQL's collation may order tool names differently from SQLite.
        rows.sort_by(|a, b| b.day.cmp(&a.day).then_with(|| a.tool.cmp(&b.tool)));
        Ok(rows)
    }

    /// Tool calls the organization made on `day` (a Unix day number).
    pub async fn tool_calls_on_day(&self, org_id: &str, day: i64) -> Result<i64, StorageError> {
        Ok(with_pool!(self, |pool| {
            sqlx::query_scalar::<_, i64>(
                "SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) FROM tool_usage WHERE org_id = $1 AND day = $2",
            )
            .bind(org_id)
            .bind(day)
            .fetch_one(pool)
            .await?
        }))
    }

    /// Records when credentials were last used: `pats` are (token digest, time),
    /// `families` are (OAuth family id, time). A stored time is only ever moved forward.
    pub async fn touch_last_used(
        &self,
        pats: &[(String, i64)],
        families: &[(String, i64)],
    ) -> Result<(), StorageError> {
        if pats.is_empty() && families.is_empty() {
            return Ok(());
        }
        let mut pats: Vec<&(String, i64)> = pats.iter().collect();
        pats.sort();
        let mut families: Vec<&(String, i64)> = families.iter().collect();
        families.sort();
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            for (hash, at) in &pats {
                sqlx::query(
                    "UPDATE personal_access_tokens SET last_used_at = $1 \
                     WHERE token_hash = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
                )
                .bind(*at)
                .bind(hash)
                .execute(&mut *tx)
                .await?;
            }
            for (id, at) in &families {
                sqlx::query(
                    "UPDATE oauth_families SET last_used_at = $1 WHERE id = $2 AND last_used_at < $1",
                )
                .bind(*at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The families of access tokens, by the digests of their `jti`s (unknown ones are
    /// left out), in one query per 500.
    pub async fn families_of_access_tokens(
        &self,
        jti_hashes: &[&str],
    ) -> Result<Vec<(String, String)>, StorageError> {
        let mut out = Vec::with_capacity(jti_hashes.len());
        for chunk in jti_hashes.chunks(500) {
            let rows: Vec<(String, String)> = with_pool!(self, |pool| {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT jti_hash, family_id FROM oauth_access_tokens WHERE jti_hash IN (",
                );
                let mut list = q.separated(", ");
                for jti in chunk {
                    list.push_bind(*jti);
                }
                q.push(")");
                q.build_query_as().fetch_all(pool).await?
            });
            out.extend(rows);
        }
        Ok(out)
    }

    /// Appends several audit entries in one transaction.
    pub async fn append_audit_batch(&self, entries: &[AuditEntry]) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            for entry in entries {
                insert_audit!(entry, &mut *tx)?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The OAuth clients the user has authorised in the organization and not revoked:
    /// those with a live token family or a remembered consent. `scopes` is the union of
    /// what was consented to and what live families were granted; `first_used_at` is the
    /// earliest live family or consent, `last_used_at` the latest use of a live family or
    /// the latest consent. Most recently used first.
    pub async fn list_connections(
        &self,
        org_id: &str,
        user_id: &str,
    ) -> Result<Vec<ConnectionRow>, StorageError> {
        let summary = "SELECT c.id, c.name, c.origin, MIN(x.first_at), MAX(x.last_at) FROM ( \
                 SELECT client_id, created_at AS first_at, last_used_at AS last_at FROM oauth_families \
                 WHERE org_id = $1 AND user_id = $2 AND revoked_at IS NULL \
                 UNION ALL \
                 SELECT client_id, created_at AS first_at, created_at AS last_at FROM oauth_consents \
                 WHERE org_id = $1 AND user_id = $2 \
             ) x JOIN oauth_clients c ON c.id = x.client_id \
             GROUP BY c.id, c.name, c.origin";
        let scopes = "SELECT client_id, scopes FROM oauth_consents WHERE org_id = $1 AND user_id = $2 \
             UNION ALL \
             SELECT f.client_id, k.scopes FROM oauth_codes k JOIN oauth_families f ON f.id = k.family_id \
             WHERE f.org_id = $1 AND f.user_id = $2 AND f.revoked_at IS NULL \
             UNION ALL \
             SELECT f.client_id, r.scopes FROM oauth_refresh_tokens r JOIN oauth_families f ON f.id = r.family_id \
             WHERE f.org_id = $1 AND f.user_id = $2 AND f.revoked_at IS NULL";
        let (rows, grants) = with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(summary)
                .bind(org_id)
                .bind(user_id)
                .fetch_all(&mut *tx)
                .await?;
            let grants: Vec<(String, String)> = sqlx::query_as(scopes)
                .bind(org_id)
                .bind(user_id)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            (rows, grants)
        });
        let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (client_id, scopes) in grants {
            granted.entry(client_id).or_default().extend(
                scopes
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        let mut connections: Vec<ConnectionRow> = rows
            .into_iter()
            .map(
                |(client_id, client_name, origin, first_used_at, last_used_at)| ConnectionRow {
                    scopes: granted
                        .get(&client_id)
                        .map(|s| s.iter().map(String::as_str).collect::<Vec<_>>().join(" "))
                        .unwrap_or_default(),
                    client_id,
                    client_name,
                    origin,
                    first_used_at,
                    last_used_at,
                },
            )
            .collect();
        connections.sort_by(|a, b| {
            b.last_used_at
                .cmp(&a.last_used_at)
                .then_with(|| a.client_id.cmp(&b.client_id))
        });
        Ok(connections)
    }

    /// Disconnects a client from the user in the organization, in one transaction:
    /// unredeemed codes are deleted, every live token family is revoked (its refresh
    /// tokens stop working and its access tokens are denied), the consents are forgotten
    /// and `audit` is written. Returns the number of families revoked; `NotFound` when
    /// there was neither a live family nor a consent.
    pub async fn revoke_connection(
        &self,
        org_id: &str,
        user_id: &str,
        client_id: &str,
        now: i64,
        audit: AuditEntry,
    ) -> Result<u64, StorageError> {
        Ok(with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            // Codes first: a code being redeemed right now either commits its family
            // before this delete returns (and the family is found below) or is gone.
            sqlx::query(
                "DELETE FROM oauth_codes WHERE org_id = $1 AND user_id = $2 AND client_id = $3 AND used_at IS NULL",
            )
            .bind(org_id)
            .bind(user_id)
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
            let consents = sqlx::query(
                "DELETE FROM oauth_consents WHERE org_id = $1 AND user_id = $2 AND client_id = $3",
            )
            .bind(org_id)
            .bind(user_id)
            .bind(client_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let families: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM oauth_families WHERE org_id = $1 AND user_id = $2 AND client_id = $3 \
                 AND revoked_at IS NULL ORDER BY id",
            )
            .bind(org_id)
            .bind(user_id)
            .bind(client_id)
            .fetch_all(&mut *tx)
            .await?;
            if families.is_empty() && consents == 0 {
                return Err(StorageError::NotFound);
            }
            for family in &families {
                revoke_family!(tx, family, now, "user_revoked");
            }
            let revoked = families.len() as u64;
            let mut audit = audit.org(org_id).target(format!("client:{client_id}"));
            if audit.detail.is_none() {
                audit = audit.detail(serde_json::json!({
                    "user_id": user_id,
                    "families_revoked": revoked,
                    "consents_removed": consents,
                }));
            }
            insert_audit!(&audit, &mut *tx)?;
            tx.commit().await?;
            revoked
        }))
    }

    /// Every personal access token the user has in the organization, revoked and expired
    /// ones included; newest first.
    pub async fn list_pats_of_user(
        &self,
        org_id: &str,
        user_id: &str,
    ) -> Result<Vec<PatRow>, StorageError> {
        let sql = format!(
            "{PAT_SELECT} WHERE t.org_id = $1 AND t.user_id = $2 ORDER BY t.created_at DESC, t.id DESC"
        );
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, PatRow>(&sql)
            .bind(org_id)
            .bind(user_id)
            .fetch_all(pool)
            .await?))
    }

    /// Claims an idempotency key for a call with arguments digest `args_hash`. A row older
    /// than `ttl_secs` counts as absent. Safe against concurrent callers: exactly one of
    /// them gets [`IdempotencyBegin::Started`].
    pub async fn idempotency_begin(
        &self,
        scope_key: &str,
        args_hash: &str,
        now: i64,
        ttl_secs: i64,
    ) -> Result<IdempotencyBegin, StorageError> {
        let expired_before = now.saturating_sub(ttl_secs);
        // Inserts, or takes over an expired row; touches nothing when a live row exists.
        let claim = "INSERT INTO idempotency_keys (scope_key, args_hash, result, created_at) VALUES ($1, $2, NULL, $3) \
                     ON CONFLICT (scope_key) DO UPDATE SET args_hash = excluded.args_hash, result = NULL, \
                     created_at = excluded.created_at WHERE idempotency_keys.created_at <= $4";
        let read = "SELECT args_hash, result FROM idempotency_keys WHERE scope_key = $1";
        // The row can vanish between the two statements (an abort or a purge); then try again.
        for _ in 0..3 {
            let (claimed, row) = with_pool!(self, |pool| {
                let claimed = sqlx::query(claim)
                    .bind(scope_key)
                    .bind(args_hash)
                    .bind(now)
                    .bind(expired_before)
                    .execute(pool)
                    .await?
                    .rows_affected()
                    > 0;
                let row: Option<(String, Option<String>)> = if claimed {
                    None
                } else {
                    sqlx::query_as(read)
                        .bind(scope_key)
                        .fetch_optional(pool)
                        .await?
                };
                (claimed, row)
            });
            if claimed {
                return Ok(IdempotencyBegin::Started);
            }
            match row {
                Some((args_hash, Some(result))) => {
                    return Ok(IdempotencyBegin::Done { args_hash, result });
                }
                Some((args_hash, None)) => return Ok(IdempotencyBegin::InProgress { args_hash }),
                None => continue,
            }
        }
        Err(StorageError::Conflict(format!(
            "idempotency key {scope_key:?} is contended; try again"
        )))
    }

    /// Stores the result of the call that claimed `scope_key`. `NotFound` when the key is
    /// not in progress (aborted, purged or already finished).
    pub async fn idempotency_finish(
        &self,
        scope_key: &str,
        result: &str,
    ) -> Result<(), StorageError> {
        let n = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE idempotency_keys SET result = $1 WHERE scope_key = $2 AND result IS NULL",
            )
            .bind(result)
            .bind(scope_key)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if n == 0 {
            return Err(StorageError::NotFound);
        }
        Ok(())
    }

    /// Releases a key whose call failed, so a retry runs again. A finished key is kept.
    pub async fn idempotency_abort(&self, scope_key: &str) -> Result<(), StorageError> {
        with_pool!(self, |pool| {
            sqlx::query("DELETE FROM idempotency_keys WHERE scope_key = $1 AND result IS NULL")
                .bind(scope_key)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Deletes keys created before `before`, finished or not. Returns how many.
    pub async fn purge_idempotency(&self, before: i64) -> Result<u64, StorageError> {
        Ok(with_pool!(self, |pool| {
            sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }
}
