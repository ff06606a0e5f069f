//! OAuth state: clients, codes, consents, token families, refresh tokens, access-token
//! ids, signing keys and shared secrets.

use super::BeginWrite;
use super::audit::insert_audit;
use super::{
    AuditEntry, ClientRow, CodeRow, ConsentRow, RefreshRow, StorageError, Store, with_pool,
};
use crate::crypto::keys::StoredKey;

/// Grants move a family's and a client's last use only once this much time has passed:
/// to the minute is all anyone reads, and a write per refresh cost a row update (and its
/// WAL) on every grant.
const LAST_USE_STEP_SECS: i64 = 60;

const CLIENT_COLUMNS: &str = "id, origin, name, redirect_uris, auth_method, secret_hash, can_introspect, dedupe_key, metadata, created_at, last_used_at";
const REFRESH_SELECT: &str = "SELECT r.token_hash, r.family_id, r.client_id, r.scopes, r.resource, r.created_at, r.expires_at, r.rotated_at, r.successor, \
     f.user_id, f.org_id, f.revoked_at AS family_revoked_at \
     FROM oauth_refresh_tokens r JOIN oauth_families f ON f.id = r.family_id";

/// A client to store.
pub struct NewClient {
    pub id: String,
    pub origin: &'static str,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub auth_method: String,
    pub secret_hash: Option<String>,
    pub can_introspect: bool,
    /// Identical public registrations share this key and so one row.
    pub dedupe_key: Option<String>,
    pub metadata: serde_json::Value,
}

/// Tokens to record for one grant. Only digests and the sealed successor are stored.
pub struct IssuedTokens {
    pub family_id: String,
    pub client_id: String,
    pub user_id: String,
    pub org_id: String,
    pub scopes: String,
    pub resource: String,
    pub access_jti_hash: String,
    pub access_expires_at: i64,
    pub refresh: Option<(String, i64)>,
}

pub enum CodeRedemption<T> {
    /// The code was fresh; `T` is what the caller made of it.
    Redeemed(T),
    /// The code was valid but the request did not match it; the code is now spent.
    /// Also a spent code presented by a request that does not match it (nothing revoked).
    Rejected(String),
    /// The code had been used before and this request matches it; every token issued
    /// from it is now revoked.
    Replayed,
    /// No such code, or it expired.
    Unknown,
}

pub enum RefreshOutcome<T, E> {
    Rotated(T),
    /// `mint` refused the request; nothing was changed.
    Refused(E),
    /// A retry inside the grace window: the sealed successor from the first rotation.
    Retried(String),
    /// Used again after the grace window: the whole family is now revoked.
    ReuseDetected {
        family_id: String,
    },
    Invalid,
}

/// What one grant writes besides spending its code or claiming its refresh token.
struct GrantWrite<'a> {
    tokens: &'a IssuedTokens,
    now: i64,
    /// A code grant starts a family, remembering the API key its sign-in used; a
    /// refresh continues one.
    family: Family<'a>,
    /// A rotation seals the new pair under the old refresh token: `(sealed, old hash)`.
    successor: Option<(&'a str, &'a str)>,
}

enum Family<'a> {
    New { api_key_id: Option<&'a str> },
    Existing,
}

/// Records a grant's rows inside the caller's transaction.
trait WriteGrant {
    async fn write_grant(&mut self, w: &GrantWrite<'_>) -> Result<(), sqlx::Error>;
}

impl WriteGrant for sqlx::PgConnection {
    /// One statement (data-modifying CTEs) instead of five or six round trips: the
    /// token endpoint's throughput on PostgreSQL is bounded by round trips.
    async fn write_grant(&mut self, w: &GrantWrite<'_>) -> Result<(), sqlx::Error> {
        let t = w.tokens;
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new("WITH fam AS (");
        match w.family {
            Family::New { api_key_id } => {
                q.push("INSERT INTO oauth_families (id, client_id, user_id, org_id, created_at, last_used_at, api_key_id) VALUES (");
                let mut v = q.separated(", ");
                v.push_bind(&t.family_id)
                    .push_bind(&t.client_id)
                    .push_bind(&t.user_id)
                    .push_bind(&t.org_id)
                    .push_bind(w.now)
                    .push_bind(w.now)
                    .push_bind(api_key_id);
                q.push("))");
            }
            Family::Existing => {
                q.push("UPDATE oauth_families SET last_used_at = ")
                    .push_bind(w.now)
                    .push(" WHERE id = ")
                    .push_bind(&t.family_id)
                    .push(" AND last_used_at < ")
                    .push_bind(w.now - LAST_USE_STEP_SECS)
                    .push(")");
            }
        }
        push_token_rows(&mut q, t, w.now, FamilyFrom::Id(&t.family_id));
        if let Some((sealed, old)) = w.successor {
            q.push(", suc AS (UPDATE oauth_refresh_tokens SET successor = ")
                .push_bind(sealed)
                .push(" WHERE token_hash = ")
                .push_bind(old)
                .push(")");
        }
        push_client_use(&mut q, t, w.now, None);
        q.push(" SELECT 1");
        q.build().execute(self).await?;
        Ok(())
    }
}

type PgQuery<'a> = sqlx::QueryBuilder<'a, sqlx::Postgres>;

/// Where the rows of a grant written in one PostgreSQL statement take their family id:
/// the id itself, or each row an earlier CTE returned (so that nothing is written unless
/// that CTE, a spend or a claim, won).
#[derive(Clone, Copy)]
enum FamilyFrom<'a> {
    Id(&'a str),
    Cte {
        cte: &'static str,
        column: &'static str,
    },
}

impl<'a> FamilyFrom<'a> {
    fn push_id(self, q: &mut PgQuery<'a>) {
        match self {
            Self::Id(id) => q.push_bind(id),
            Self::Cte { column, .. } => q.push(column),
        };
    }

    fn push_source(self, q: &mut PgQuery<'a>) {
        if let Self::Cte { cte, .. } = self {
            q.push(" FROM ").push(cte);
        }
    }
}

/// Appends the `acc` and (with a refresh token) `ref` CTEs: a grant's access-token id
/// and refresh token.
fn push_token_rows<'a>(q: &mut PgQuery<'a>, t: &'a IssuedTokens, now: i64, from: FamilyFrom<'a>) {
    q.push(", acc AS (INSERT INTO oauth_access_tokens (jti_hash, family_id, expires_at) SELECT ")
        .push_bind(&t.access_jti_hash)
        .push(", ");
    from.push_id(q);
    q.push(", ").push_bind(t.access_expires_at);
    from.push_source(q);
    q.push(")");
    if let Some((hash, expires_at)) = &t.refresh {
        q.push(", ref AS (INSERT INTO oauth_refresh_tokens (token_hash, family_id, client_id, scopes, resource, created_at, expires_at) SELECT ")
            .push_bind(hash)
            .push(", ");
        from.push_id(q);
        q.push(", ")
            .push_bind(&t.client_id)
            .push(", ")
            .push_bind(&t.scopes)
            .push(", ")
            .push_bind(&t.resource)
            .push(", ")
            .push_bind(now)
            .push(", ")
            .push_bind(*expires_at);
        from.push_source(q);
        q.push(")");
    }
}

/// Appends the `cli` CTE: the client's last use, written at most once a minute (see the
/// SQLite arm of `write_grant` for why), and only if the CTE `guard` returned a row.
fn push_client_use<'a>(q: &mut PgQuery<'a>, t: &'a IssuedTokens, now: i64, guard: Option<&str>) {
    q.push(", cli AS (UPDATE oauth_clients SET last_used_at = ")
        .push_bind(now)
        .push(" WHERE id = ")
        .push_bind(&t.client_id)
        .push(" AND (last_used_at IS NULL OR last_used_at < ")
        .push_bind(now - LAST_USE_STEP_SECS)
        .push(")");
    if let Some(guard) = guard {
        q.push(" AND EXISTS (SELECT 1 FROM ").push(guard).push(")");
    }
    q.push(")");
}

/// The code grant's fast path on PostgreSQL: spends the code (still unused and
/// unexpired) and, only if that wins, creates the grant's family, tokens and audit row,
/// all in one statement. Whether the spend won.
async fn spend_and_write_pg(
    conn: &mut sqlx::PgConnection,
    code: &CodeRow,
    now: i64,
    t: &IssuedTokens,
    audit: &AuditEntry,
) -> Result<bool, sqlx::Error> {
    let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
        "WITH spent AS (UPDATE oauth_codes SET used_at = ",
    );
    q.push_bind(now)
        .push(" WHERE code_hash = ")
        .push_bind(&code.code_hash)
        .push(" AND used_at IS NULL AND expires_at > ")
        .push_bind(now)
        .push(" RETURNING code_hash)");
    q.push(", fam AS (INSERT INTO oauth_families (id, client_id, user_id, org_id, created_at, last_used_at, api_key_id) SELECT ");
    q.separated(", ")
        .push_bind(&t.family_id)
        .push_bind(&t.client_id)
        .push_bind(&t.user_id)
        .push_bind(&t.org_id)
        .push_bind(now)
        .push_bind(now)
        .push_bind(code.api_key_id.as_deref());
    q.push(" FROM spent RETURNING id)");
    // The tokens reference the family, so they are made from the family's row.
    push_token_rows(
        &mut q,
        t,
        now,
        FamilyFrom::Cte {
            cte: "fam",
            column: "id",
        },
    );
    q.push(", aud AS (INSERT INTO audit_log (at, org_id, actor, action, target, source_addr, detail) SELECT ");
    q.separated(", ")
        .push_bind(audit.at)
        .push_bind(audit.org_id.as_deref())
        .push_bind(audit.actor.as_str())
        .push_bind(audit.action.as_str())
        .push_bind(audit.target.as_deref())
        .push_bind(audit.source_addr.as_deref())
        .push_bind(audit.detail.as_ref().map(|d| d.to_string()));
    q.push(" FROM spent)");
    push_client_use(&mut q, t, now, Some("spent"));
    q.push(" SELECT count(*) FROM spent");
    let spent: i64 = q.build_query_scalar().fetch_one(conn).await?;
    Ok(spent == 1)
}

/// The refresh grant's fast path on PostgreSQL: claims the old refresh token (still
/// unrotated, unexpired, its family unrevoked) and, only if that claim wins, records its
/// successor and writes the new grant, all in one statement. Whether the claim won.
async fn claim_and_write_pg(
    conn: &mut sqlx::PgConnection,
    old_hash: &str,
    client_id: &str,
    now: i64,
    t: &IssuedTokens,
    sealed: &str,
) -> Result<bool, sqlx::Error> {
    let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
        "WITH claimed AS (UPDATE oauth_refresh_tokens SET rotated_at = ",
    );
    q.push_bind(now)
        .push(", successor = ")
        .push_bind(sealed)
        .push(" WHERE token_hash = ")
        .push_bind(old_hash)
        .push(" AND client_id = ")
        .push_bind(client_id)
        .push(" AND rotated_at IS NULL AND expires_at > ")
        .push_bind(now)
        .push(
            " AND family_id IN (SELECT id FROM oauth_families WHERE revoked_at IS NULL) RETURNING family_id)",
        );
    q.push(", fam AS (UPDATE oauth_families SET last_used_at = ")
        .push_bind(now)
        .push(" WHERE id IN (SELECT family_id FROM claimed) AND last_used_at < ")
        .push_bind(now - LAST_USE_STEP_SECS)
        .push(")");
    push_token_rows(
        &mut q,
        t,
        now,
        FamilyFrom::Cte {
            cte: "claimed",
            column: "family_id",
        },
    );
    push_client_use(&mut q, t, now, Some("claimed"));
    q.push(" SELECT count(*) FROM claimed");
    let claimed: i64 = q.build_query_scalar().fetch_one(conn).await?;
    Ok(claimed == 1)
}

impl WriteGrant for sqlx::SqliteConnection {
    /// Statement by statement: SQLite has no data-modifying CTEs, and its round trips
    /// stay in process.
    async fn write_grant(&mut self, w: &GrantWrite<'_>) -> Result<(), sqlx::Error> {
        let t = w.tokens;
        match w.family {
            Family::New { api_key_id } => {
                sqlx::query(
                    "INSERT INTO oauth_families (id, client_id, user_id, org_id, created_at, last_used_at, api_key_id) \
                     VALUES ($1, $2, $3, $4, $5, $5, $6)",
                )
                .bind(&t.family_id)
                .bind(&t.client_id)
                .bind(&t.user_id)
                .bind(&t.org_id)
                .bind(w.now)
                .bind(api_key_id)
                .execute(&mut *self)
                .await?;
            }
            Family::Existing => {
                sqlx::query(
                    "UPDATE oauth_families SET last_used_at = $1 WHERE id = $2 AND last_used_at < $3",
                )
                .bind(w.now)
                .bind(&t.family_id)
                .bind(w.now - LAST_USE_STEP_SECS)
                .execute(&mut *self)
                .await?;
            }
        }
        sqlx::query(
            "INSERT INTO oauth_access_tokens (jti_hash, family_id, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(&t.access_jti_hash)
        .bind(&t.family_id)
        .bind(t.access_expires_at)
        .execute(&mut *self)
        .await?;
        if let Some((hash, expires_at)) = &t.refresh {
            sqlx::query(
                "INSERT INTO oauth_refresh_tokens (token_hash, family_id, client_id, scopes, resource, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(hash)
            .bind(&t.family_id)
            .bind(&t.client_id)
            .bind(&t.scopes)
            .bind(&t.resource)
            .bind(w.now)
            .bind(*expires_at)
            .execute(&mut *self)
            .await?;
        }
        if let Some((sealed, old)) = w.successor {
            sqlx::query("UPDATE oauth_refresh_tokens SET successor = $1 WHERE token_hash = $2")
                .bind(sealed)
                .bind(old)
                .execute(&mut *self)
                .await?;
        }
        // One client row is shared by every user of a popular client (Claude's CIMD
        // document, say): writing it on each grant would queue all grants behind its row
        // lock, so it is written at most once a minute.
        sqlx::query(
            "UPDATE oauth_clients SET last_used_at = $1 WHERE id = $2 \
             AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(w.now)
        .bind(&t.client_id)
        .bind(w.now - LAST_USE_STEP_SECS)
        .execute(&mut *self)
        .await?;
        Ok(())
    }
}

/// Revokes a family: its refresh tokens stop working and its access tokens are denied.
macro_rules! revoke_family {
    ($tx:expr, $family_id:expr, $now:expr, $reason:expr) => {{
        sqlx::query(
            "UPDATE oauth_families SET revoked_at = $1, revoke_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
        )
        .bind($now)
        .bind($reason)
        .bind($family_id)
        .execute(&mut *$tx)
        .await?;
        sqlx::query(
            "UPDATE oauth_access_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
        )
        .bind($now)
        .bind($family_id)
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(crate) use revoke_family;

/// Revokes every live token family matching `$cond` (SQL over `oauth_families`, its
/// parameters from `$2`, bound to the trailing arguments) and their access tokens, in
/// `$tx`. The access tokens go first, while their families still read as live.
macro_rules! revoke_families_where {
    ($tx:expr, $cond:literal, $now:expr, $reason:literal $(, $arg:expr)* $(,)?) => {{
        sqlx::query(concat!(
            "UPDATE oauth_access_tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND family_id IN \
             (SELECT id FROM oauth_families WHERE revoked_at IS NULL AND ",
            $cond,
            ")"
        ))
        .bind($now)
        $(.bind($arg))*
        .execute(&mut *$tx)
        .await?;
        sqlx::query(concat!(
            "UPDATE oauth_families SET revoked_at = $1, revoke_reason = '",
            $reason,
            "' WHERE revoked_at IS NULL AND ",
            $cond
        ))
        .bind($now)
        $(.bind($arg))*
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(crate) use revoke_families_where;

impl Store {
    /// A named random secret shared by all instances, created on first use.
    pub async fn shared_secret(
        &self,
        name: &str,
        candidate: &str,
        now: i64,
    ) -> Result<String, StorageError> {
        Ok(with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(candidate)
            .bind(now)
            .execute(pool)
            .await?;
            sqlx::query_scalar::<_, String>("SELECT value FROM server_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(pool)
                .await?
        }))
    }

    /// Replaces a shared secret's stored form (to seal one stored in clear).
    pub async fn set_shared_secret(&self, name: &str, value: &str) -> Result<(), StorageError> {
        with_pool!(self, |pool| {
            sqlx::query("UPDATE server_secrets SET value = $1 WHERE name = $2")
                .bind(value)
                .bind(name)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Replaces a signing key's stored private half (to seal one stored in clear).
    pub async fn set_signing_private_key(
        &self,
        kid: &str,
        sealed: &str,
    ) -> Result<(), StorageError> {
        with_pool!(self, |pool| {
            sqlx::query("UPDATE signing_keys SET private_key = $1 WHERE kid = $2")
                .bind(sealed)
                .bind(kid)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn list_signing_keys(&self) -> Result<Vec<StoredKey>, StorageError> {
        let rows: Vec<(String, String, String, i64, Option<i64>)> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT kid, private_key, public_key, created_at, retired_at FROM signing_keys ORDER BY created_at DESC, kid",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(kid, private_key, public_key, created_at, retired_at)| StoredKey {
                    kid,
                    private_key,
                    public_key,
                    created_at,
                    retired_at,
                },
            )
            .collect())
    }

    /// Inserts `key` unless an active key exists, and says whether it did. Instances
    /// starting together on an empty database agree on one first key: on PostgreSQL a
    /// transaction-scoped advisory lock serializes them (SQLite writers are serial).
    pub async fn insert_first_signing_key(&self, key: &StoredKey) -> Result<bool, StorageError> {
        const INSERT: &str = "INSERT INTO signing_keys (kid, alg, private_key, public_key, created_at) \
             SELECT $1, 'EdDSA', $2, $3, $4 \
             WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE retired_at IS NULL)";
        let serialize = matches!(self, Store::Postgres(_));
        Ok(with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            if serialize {
                sqlx::query("SELECT pg_advisory_xact_lock(7308190414)")
                    .execute(&mut *tx)
                    .await?;
            }
            let n = sqlx::query(INSERT)
                .bind(&key.kid)
                .bind(&key.private_key)
                .bind(&key.public_key)
                .bind(key.created_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            n == 1
        }))
    }

    pub async fn insert_signing_key(&self, key: &StoredKey) -> Result<(), StorageError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO signing_keys (kid, alg, private_key, public_key, created_at) VALUES ($1, 'EdDSA', $2, $3, $4)",
            )
            .bind(&key.kid)
            .bind(&key.private_key)
            .bind(&key.public_key)
            .bind(key.created_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Stops a key signing; it stays published for verification.
    pub async fn retire_signing_keys_except(
        &self,
        kid: &str,
        now: i64,
    ) -> Result<u64, StorageError> {
        Ok(with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE signing_keys SET retired_at = $1 WHERE kid <> $2 AND retired_at IS NULL",
            )
            .bind(now)
            .bind(kid)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Removes retired keys older than `before` (their tokens have all expired).
    pub async fn delete_retired_signing_keys(&self, before: i64) -> Result<u64, StorageError> {
        Ok(with_pool!(self, |pool| {
            sqlx::query("DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// Stores a client; a public registration identical to an earlier one returns the
    /// earlier row instead (`true` in the second field when a new row was made).
    pub async fn insert_client(
        &self,
        c: NewClient,
        now: i64,
        audit: AuditEntry,
    ) -> Result<(ClientRow, bool), StorageError> {
        let insert = format!(
            "INSERT INTO oauth_clients ({CLIENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL) \
             ON CONFLICT (dedupe_key) DO NOTHING RETURNING {CLIENT_COLUMNS}"
        );
        let by_key = format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE dedupe_key = $1");
        let redirects = serde_json::to_string(&c.redirect_uris).unwrap_or_else(|_| "[]".into());
        let result = with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let row = sqlx::query_as::<_, ClientRow>(&insert)
                .bind(&c.id)
                .bind(c.origin)
                .bind(&c.name)
                .bind(&redirects)
                .bind(&c.auth_method)
                .bind(c.secret_hash.as_deref())
                .bind(c.can_introspect)
                .bind(c.dedupe_key.as_deref())
                .bind(c.metadata.to_string())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| match e {
                    sqlx::Error::Database(db) if db.is_unique_violation() => {
                        StorageError::Conflict(format!(
                            "a client with id {:?} already exists",
                            c.id
                        ))
                    }
                    other => other.into(),
                })?;
            let result = match row {
                Some(row) => {
                    insert_audit!(&audit.target(format!("client:{}", row.id)), &mut *tx)?;
                    (row, true)
                }
                None => {
                    let row = sqlx::query_as::<_, ClientRow>(&by_key)
                        .bind(c.dedupe_key.as_deref())
                        .fetch_one(&mut *tx)
                        .await?;
                    (row, false)
                }
            };
            tx.commit().await?;
            result
        });
        Ok(result)
    }

    pub async fn find_client(&self, id: &str) -> Result<Option<ClientRow>, StorageError> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE id = $1");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, ClientRow>(
            &sql
        )
        .bind(id)
        .fetch_optional(pool)
        .await?))
    }

    pub async fn list_clients(&self) -> Result<Vec<ClientRow>, StorageError> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients ORDER BY created_at, id");
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, ClientRow>(
            &sql
        )
        .fetch_all(pool)
        .await?))
    }

    /// Deletes a client and revokes everything issued to it.
    /// Dynamically registered clients due for collection, oldest first: never used
    /// and registered before `unused_before`, or last used before `idle_before`.
    pub async fn collectable_clients(
        &self,
        unused_before: Option<i64>,
        idle_before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<(String, bool)>, StorageError> {
        Ok(with_pool!(self, |pool| {
            sqlx::query_as::<_, (String, bool)>(
                "SELECT id, last_used_at IS NULL FROM oauth_clients WHERE origin = 'dcr' \
                 AND ((last_used_at IS NULL AND created_at < $1) OR last_used_at < $2) \
                 ORDER BY created_at LIMIT $3",
            )
            .bind(unused_before.unwrap_or(i64::MIN))
            .bind(idle_before.unwrap_or(i64::MIN))
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }

    pub async fn delete_client(
        &self,
        id: &str,
        now: i64,
        audit: AuditEntry,
    ) -> Result<(), StorageError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let deleted = sqlx::query("DELETE FROM oauth_clients WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if deleted == 0 {
                return Err(StorageError::NotFound);
            }
            let families: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM oauth_families WHERE client_id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            for family in &families {
                revoke_family!(tx, family, now, "client_deleted");
            }
            sqlx::query("DELETE FROM oauth_codes WHERE client_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM oauth_consents WHERE client_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            insert_audit!(&audit.target(format!("client:{id}")), &mut *tx)?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn insert_code(&self, code: &CodeRow) -> Result<(), StorageError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO oauth_codes (code_hash, client_id, redirect_uri, code_challenge, scopes, resource, user_id, org_id, family_id, created_at, expires_at, api_key_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(&code.code_hash)
            .bind(&code.client_id)
            .bind(&code.redirect_uri)
            .bind(&code.code_challenge)
            .bind(&code.scopes)
            .bind(&code.resource)
            .bind(&code.user_id)
            .bind(&code.org_id)
            .bind(&code.family_id)
            .bind(code.created_at)
            .bind(code.expires_at)
            .bind(&code.api_key_id)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Spends a code and, if the request `matches` it and `mint` succeeds, records the
    /// tokens `mint` returns, all in one transaction. A second use of a code by a request
    /// that matches it revokes what the first issued; one that does not revokes nothing.
    pub async fn redeem_code<T>(
        &self,
        code_hash: &str,
        now: i64,
        matches: impl Fn(&CodeRow) -> Result<(), String>,
        mint: impl FnOnce(&CodeRow) -> Result<(IssuedTokens, T), String>,
        audit: AuditEntry,
    ) -> Result<CodeRedemption<T>, StorageError> {
        let spend = "UPDATE oauth_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1 \
                     RETURNING code_hash, client_id, redirect_uri, code_challenge, scopes, resource, user_id, org_id, family_id, created_at, expires_at, used_at, api_key_id";
        let mut mint = Some(mint);
        // PostgreSQL, the common case: read the code, check and mint, then spend it and
        // write the grant and its audit row in one autocommitted statement that does
        // nothing unless the spend wins. Two round trips instead of five; a code's grant
        // never changes, so minting before the spend is sound. Anything unusual (a
        // mismatch, a spent or expired code, a lost race) takes the transaction below.
        if let Store::Postgres(pool) = self {
            let code = sqlx::query_as::<_, CodeRow>(
                "SELECT code_hash, client_id, redirect_uri, code_challenge, scopes, resource, user_id, org_id, family_id, created_at, expires_at, used_at, api_key_id \
                 FROM oauth_codes WHERE code_hash = $1",
            )
            .bind(code_hash)
            .fetch_optional(pool)
            .await?;
            if let Some(code) =
                code.filter(|c| c.used_at.is_none() && c.expires_at > now && matches(c).is_ok())
                && let Some(mint) = mint.take()
            {
                let mut conn = pool.acquire().await?;
                match mint(&code) {
                    Ok((issued, value)) => {
                        if spend_and_write_pg(&mut conn, &code, now, &issued, &audit).await? {
                            return Ok(CodeRedemption::Redeemed(value));
                        }
                    }
                    Err(reason) => {
                        // As in the transaction: a code that was presented is spent.
                        sqlx::query("UPDATE oauth_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL")
                            .bind(now)
                            .bind(code_hash)
                            .execute(&mut *conn)
                            .await?;
                        return Ok(CodeRedemption::Rejected(reason));
                    }
                }
            }
        }
        Ok(with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let row = if mint.is_some() {
                sqlx::query_as::<_, CodeRow>(spend)
                    .bind(now)
                    .bind(code_hash)
                    .fetch_optional(&mut *tx)
                    .await?
            } else {
                // Minted above and lost the spend: only the analysis below remains.
                None
            };
            let outcome = match row {
                Some(code) => match matches(&code).and_then(|()| match mint.take() {
                    Some(mint) => mint(&code),
                    None => Err("the code is not valid".to_owned()),
                }) {
                    Ok((issued, value)) => {
                        (*tx)
                            .write_grant(&GrantWrite {
                                tokens: &issued,
                                now,
                                family: Family::New {
                                    api_key_id: code.api_key_id.as_deref(),
                                },
                                successor: None,
                            })
                            .await?;
                        insert_audit!(&audit, &mut *tx)?;
                        CodeRedemption::Redeemed(value)
                    }
                    Err(reason) => CodeRedemption::Rejected(reason),
                },
                None => {
                    let used = sqlx::query_as::<_, CodeRow>(
                        "SELECT code_hash, client_id, redirect_uri, code_challenge, scopes, resource, user_id, org_id, family_id, created_at, expires_at, used_at, api_key_id \
                         FROM oauth_codes WHERE code_hash = $1",
                    )
                    .bind(code_hash)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match used {
                        Some(code) if code.used_at.is_some() => match matches(&code) {
                            Err(reason) => CodeRedemption::Rejected(reason),
                            Ok(()) => {
                                let family_id = code.family_id;
                                revoke_family!(tx, &family_id, now, "code_replayed");
                                let audit = AuditEntry::new(now, "system", "oauth.code_replayed")
                                    .target(format!("family:{family_id}"));
                                insert_audit!(&audit, &mut *tx)?;
                                CodeRedemption::Replayed
                            }
                        },
                        _ => CodeRedemption::Unknown,
                    }
                }
            };
            tx.commit().await?;
            outcome
        }))
    }

    /// Rotates a refresh token exactly once. `mint` makes the new pair and seals it under
    /// the old token; retries inside `grace_secs` (0: no window) get that sealed pair
    /// back, later reuse revokes the family.
    pub async fn rotate_refresh_token<T, E>(
        &self,
        token_hash: &str,
        client_id: &str,
        now: i64,
        grace_secs: i64,
        mint: impl FnOnce(&RefreshRow) -> Result<(IssuedTokens, String, T), E>,
    ) -> Result<RefreshOutcome<T, E>, StorageError> {
        let claim = "UPDATE oauth_refresh_tokens SET rotated_at = $1 WHERE token_hash = $2 AND client_id = $3 \
                     AND rotated_at IS NULL AND expires_at > $1 \
                     AND family_id IN (SELECT id FROM oauth_families WHERE revoked_at IS NULL)";
        // PostgreSQL claims and reads in one round trip; SQLite cannot return columns
        // of a joined table from an UPDATE, and its round trips cost nothing.
        let claim_returning = "UPDATE oauth_refresh_tokens AS r SET rotated_at = $1 FROM oauth_families f \
             WHERE r.token_hash = $2 AND r.client_id = $3 AND r.rotated_at IS NULL AND r.expires_at > $1 \
             AND f.id = r.family_id AND f.revoked_at IS NULL \
             RETURNING r.token_hash, r.family_id, r.client_id, r.scopes, r.resource, r.created_at, r.expires_at, \
             r.rotated_at, r.successor, f.user_id, f.org_id, f.revoked_at AS family_revoked_at";
        let one_trip = matches!(self, Store::Postgres(_));
        let select = format!("{REFRESH_SELECT} WHERE r.token_hash = $1");
        let mut mint = Some(mint);
        // PostgreSQL, the common case: read the token, mint from it, then claim it and
        // write the grant in one autocommitted statement, which does nothing unless the
        // claim wins. Two round trips instead of four (BEGIN, claim, write, COMMIT); the
        // row's grant (user, organization, scopes, resource) never changes, so minting
        // before the claim is sound. Anything unusual takes the transaction below.
        if let Store::Postgres(pool) = self {
            let row = sqlx::query_as::<_, RefreshRow>(&select)
                .bind(token_hash)
                .fetch_optional(pool)
                .await?;
            if let Some(row) = row.filter(|r| {
                r.client_id == client_id
                    && r.rotated_at.is_none()
                    && r.expires_at > now
                    && r.family_revoked_at.is_none()
            }) && let Some(mint) = mint.take()
            {
                let (issued, sealed, value) = match mint(&row) {
                    Ok(minted) => minted,
                    Err(e) => return Ok(RefreshOutcome::Refused(e)),
                };
                let mut conn = pool.acquire().await?;
                if claim_and_write_pg(&mut conn, token_hash, client_id, now, &issued, &sealed)
                    .await?
                {
                    return Ok(RefreshOutcome::Rotated(value));
                }
                // Lost a race to another request: the transaction tells which case this is.
            }
        }
        Ok(with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let claimed = if mint.is_none() {
                // Minted above and lost the claim: only the analysis below remains.
                None
            } else if one_trip {
                sqlx::query_as::<_, RefreshRow>(claim_returning)
                    .bind(now)
                    .bind(token_hash)
                    .bind(client_id)
                    .fetch_optional(&mut *tx)
                    .await?
            } else {
                let n = sqlx::query(claim)
                    .bind(now)
                    .bind(token_hash)
                    .bind(client_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 1 {
                    sqlx::query_as::<_, RefreshRow>(&select)
                        .bind(token_hash)
                        .fetch_optional(&mut *tx)
                        .await?
                } else {
                    None
                }
            };
            // Not claimed: read the token to tell a retry, a reuse and a bad token apart.
            let unclaimed = match claimed {
                Some(_) => None,
                None => {
                    sqlx::query_as::<_, RefreshRow>(&select)
                        .bind(token_hash)
                        .fetch_optional(&mut *tx)
                        .await?
                }
            };
            let outcome = match (claimed, unclaimed, mint) {
                (Some(row), _, Some(mint)) => {
                    let (issued, sealed, value) = match mint(&row) {
                        Ok(minted) => minted,
                        // Returning drops the transaction: the claim is rolled back.
                        Err(e) => return Ok(RefreshOutcome::Refused(e)),
                    };
                    (*tx)
                        .write_grant(&GrantWrite {
                            tokens: &issued,
                            now,
                            family: Family::Existing,
                            successor: Some((&sealed, token_hash)),
                        })
                        .await?;
                    RefreshOutcome::Rotated(value)
                }
                (None, Some(row), _)
                    if row.client_id == client_id
                        && row.family_revoked_at.is_none()
                        && row.expires_at > now =>
                {
                    match (row.rotated_at, row.successor) {
                        (Some(at), Some(sealed)) if grace_secs > 0 && now - at <= grace_secs => {
                            RefreshOutcome::Retried(sealed)
                        }
                        _ => {
                            revoke_family!(tx, &row.family_id, now, "refresh_reuse");
                            let audit =
                                AuditEntry::new(now, "system", "oauth.refresh_reuse_detected")
                                    .org(&row.org_id)
                                    .target(format!("family:{}", row.family_id))
                                    .detail(serde_json::json!({ "client_id": client_id }));
                            insert_audit!(&audit, &mut *tx)?;
                            RefreshOutcome::ReuseDetected {
                                family_id: row.family_id,
                            }
                        }
                    }
                }
                _ => RefreshOutcome::Invalid,
            };
            tx.commit().await?;
            outcome
        }))
    }

    /// Deletes what expired and can no longer do anything: access-token ids and refresh
    /// tokens that expired before `tokens_before` (an expired one is refused on its
    /// expiry alone) and codes that expired before `codes_before` (later than the
    /// access tokens they gave, since a connection's scopes are read from its code
    /// while it lives). Families stay: they are the connections users see.
    pub async fn purge_expired_grants(
        &self,
        tokens_before: i64,
        codes_before: i64,
    ) -> Result<u64, StorageError> {
        Ok(with_pool!(self, |pool| {
            let mut n = 0;
            for (sql, before) in [
                (
                    "DELETE FROM oauth_access_tokens WHERE expires_at < $1",
                    tokens_before,
                ),
                (
                    "DELETE FROM oauth_refresh_tokens WHERE expires_at < $1",
                    tokens_before,
                ),
                (
                    "DELETE FROM oauth_codes WHERE expires_at < $1",
                    codes_before,
                ),
            ] {
                n += sqlx::query(sql)
                    .bind(before)
                    .execute(pool)
                    .await?
                    .rows_affected();
            }
            n
        }))
    }

    /// Revokes the family of a refresh token (RFC 7009). `false` if the token is unknown.
    pub async fn revoke_refresh_token(
        &self,
        token_hash: &str,
        client_id: Option<&str>,
        now: i64,
        audit: AuditEntry,
    ) -> Result<bool, StorageError> {
        Ok(with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let row: Option<(String, String)> = sqlx::query_as(
                "SELECT family_id, client_id FROM oauth_refresh_tokens WHERE token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
            let found = match row {
                Some((family_id, owner)) if client_id.is_none_or(|c| c == owner) => {
                    revoke_family!(tx, &family_id, now, "revoked");
                    insert_audit!(&audit.target(format!("family:{family_id}")), &mut *tx)?;
                    true
                }
                _ => false,
            };
            tx.commit().await?;
            found
        }))
    }

    /// Denies one access token by the digest of its `jti`. `false` if unknown.
    pub async fn revoke_access_token(
        &self,
        jti_hash: &str,
        now: i64,
        audit: AuditEntry,
    ) -> Result<bool, StorageError> {
        Ok(with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                "UPDATE oauth_access_tokens SET revoked_at = $1 WHERE jti_hash = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(jti_hash)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n > 0 {
                insert_audit!(&audit, &mut *tx)?;
            }
            tx.commit().await?;
            n > 0
        }))
    }

    pub async fn is_access_token_revoked(&self, jti_hash: &str) -> Result<bool, StorageError> {
        let revoked: Option<Option<i64>> = with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT revoked_at FROM oauth_access_tokens WHERE jti_hash = $1")
                .bind(jti_hash)
                .fetch_optional(pool)
                .await?
        });
        // An unknown jti was never issued here (or its row was cleaned up after expiry).
        Ok(!matches!(revoked, Some(None)))
    }

    pub async fn find_consent(
        &self,
        user_id: &str,
        org_id: &str,
        client_id: &str,
        redirect_uri: &str,
    ) -> Result<Option<ConsentRow>, StorageError> {
        Ok(with_pool!(self, |pool| {
            sqlx::query_as::<_, ConsentRow>(
                "SELECT user_id, org_id, client_id, redirect_uri, scopes, created_at FROM oauth_consents \
                 WHERE user_id = $1 AND org_id = $2 AND client_id = $3 AND redirect_uri = $4",
            )
            .bind(user_id)
            .bind(org_id)
            .bind(client_id)
            .bind(redirect_uri)
            .fetch_optional(pool)
            .await?
        }))
    }

    pub async fn save_consent(
        &self,
        c: &ConsentRow,
        audit: AuditEntry,
    ) -> Result<(), StorageError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO oauth_consents (user_id, org_id, client_id, redirect_uri, scopes, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (user_id, org_id, client_id, redirect_uri) DO UPDATE SET scopes = excluded.scopes, created_at = excluded.created_at",
            )
            .bind(&c.user_id)
            .bind(&c.org_id)
            .bind(&c.client_id)
            .bind(&c.redirect_uri)
            .bind(&c.scopes)
            .bind(c.created_at)
            .execute(&mut *tx)
            .await?;
            insert_audit!(&audit, &mut *tx)?;
            tx.commit().await?;
        });
        Ok(())
    }
}

impl Store {
    /// A refresh token that can still be used: not rotated, not expired, family live.
    pub async fn find_live_refresh_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<RefreshRow>, StorageError> {
        let sql = format!(
            "{REFRESH_SELECT} WHERE r.token_hash = $1 AND r.rotated_at IS NULL AND r.expires_at > $2 AND f.revoked_at IS NULL"
        );
        Ok(with_pool!(self, |pool| sqlx::query_as::<_, RefreshRow>(
            &sql
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(pool)
        .await?))
    }
}
