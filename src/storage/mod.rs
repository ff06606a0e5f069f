//! Persistence. One [`Store`] over either backend, with one method per use case.
//!
//! Most statements are written once: sqlx's SQLite driver accepts `$N` placeholders,
//! and the schema sticks to TEXT, integers and booleans, so the same SQL runs on both.
//! The [`with_pool!`] macro expands a body once per backend, so each arm is compiled
//! against its own driver and a missing arm is a compile error. Where the dialects
//! differ, the method matches on the backend itself.

mod accounts;
mod audit;
pub mod credentials;
mod limits;
mod mcp;
pub mod oauth;
pub mod pins;
pub mod records;
pub mod relay;
mod standing;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::config::DatabaseConfig;

pub use audit::{AuditEntry, AuditFilter};
pub use mcp::{ConnectionRow, IdempotencyBegin, UsageRecord, UsageRow};
pub use records::*;
pub use standing::{CredentialChange, StandingRow};

/// A pooled connection idle for longer than this is pinged before it is handed out.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Replaces sqlx's default check, a ping on every acquire: that doubled the round trips
/// of every statement (a refresh grant made six instead of three). A connection in
/// steady use is known to be alive; one that sat idle may have been closed by a
/// restarted server or a proxy, so it is pinged, and dropped if it does not answer.
async fn check_if_idle<C: sqlx::Connection>(
    conn: &mut C,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> Result<bool, sqlx::Error> {
    if meta.idle_for < PING_AFTER_IDLE {
        return Ok(true);
    }
    Ok(conn.ping().await.is_ok())
}

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not found")]
    NotFound,
    /// A uniqueness or state rule was broken; the text says which, for the user.
    #[error("{0}")]
    Conflict(String),
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("{0}")]
    Migration(String),
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(e),
            // Connection exceptions (08…) and the server shutting down or starting up
            // (57P01..57P03): the database is going away or coming back, not refusing us.
            sqlx::Error::Database(ref db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) =>
            {
                Self::Unavailable(e)
            }
            other => Self::Database(other),
        }
    }
}

/// Maps a unique-constraint violation to a readable conflict at the call site.
pub(crate) trait OnUnique<T> {
    fn on_unique(self, message: impl FnOnce() -> String) -> Result<T, StorageError>;
}

impl<T> OnUnique<T> for Result<T, sqlx::Error> {
    fn on_unique(self, message: impl FnOnce() -> String) -> Result<T, StorageError> {
        match self {
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(StorageError::Conflict(message()))
            }
            other => other.map_err(StorageError::from),
        }
    }
}

/// A sample of the connection pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u64,
    pub idle: u64,
    pub max: u64,
}

#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Starts a transaction that may write. On SQLite it takes the write lock at `BEGIN`
/// (`IMMEDIATE`): a deferred transaction that reads first and then writes fails at once
/// with `SQLITE_BUSY` when another connection wrote in between (the metering flush, say),
/// where waiting for the lock would have succeeded.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send;
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error>,
    > + Send {
        self.begin()
    }
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error>,
    > + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

/// Runs `$body` with `$pool` bound to the backend's pool, once per backend.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            $crate::storage::Store::Postgres($pool) => $body,
            $crate::storage::Store::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Background jobs that one instance at a time should run (advisory lock keys).
#[derive(Debug, Clone, Copy)]
#[repr(i64)]
pub enum JobKey {
    Housekeeping = 7_308_190_001,
}

/// Held while a background job runs; dropping it releases the claim.
pub struct JobLock(#[allow(dead_code)] Option<sqlx::Transaction<'static, sqlx::Postgres>>);

impl Store {
    /// Opens a pool (creating the SQLite file if needed) and checks that it answers.
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Self, StorageError> {
        if cfg.url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(&cfg.url)
                .map_err(|e| StorageError::Migration(format!("database.url: {e}")))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(cfg.max_connections)
                .acquire_timeout(cfg.acquire_timeout)
                .test_before_acquire(false)
                .before_acquire(|conn, meta| Box::pin(check_if_idle(conn, meta)))
                .connect_with(opts)
                .await
                .map_err(StorageError::Unavailable)?;
            Ok(Self::Sqlite(pool))
        } else {
            let opts = sqlx::postgres::PgConnectOptions::from_str(&cfg.url)
                .map_err(|e| StorageError::Migration(format!("database.url: {e}")))?;
            let pool = PgPoolOptions::new()
                .max_connections(cfg.max_connections)
                .acquire_timeout(cfg.acquire_timeout)
                .test_before_acquire(false)
                .before_acquire(|conn, meta| Box::pin(check_if_idle(conn, meta)))
                .connect_lazy_with(opts);
            let store = Self::Postgres(pool);
            // Start-up waits up to connect_timeout for a database that is still starting.
            let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
            loop {
                match store.ping().await {
                    Ok(()) => return Ok(store),
                    Err(StorageError::Unavailable(e))
                        if tokio::time::Instant::now() >= deadline =>
                    {
                        return Err(StorageError::Unavailable(e));
                    }
                    Err(StorageError::Unavailable(_)) => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(other) => return Err(other),
                }
            }
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Applies the embedded migrations. A database written by a newer Gatehouse is
    /// refused rather than touched.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let (migrator, result) = match self {
            Self::Postgres(pool) => (&POSTGRES_MIGRATIONS, POSTGRES_MIGRATIONS.run(pool).await),
            Self::Sqlite(pool) => (&SQLITE_MIGRATIONS, SQLITE_MIGRATIONS.run(pool).await),
        };
        let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        result.map_err(|e| match e {
            MigrateError::VersionMissing(v) => StorageError::Migration(format!(
                "the database has schema version {v}, which this gatehouse does not know \
                 (it knows up to {latest}); it was migrated by a newer version, so upgrade gatehouse"
            )),
            MigrateError::VersionMismatch(v) => StorageError::Migration(format!(
                "migration {v} applied to this database differs from the one built into gatehouse"
            )),
            MigrateError::Execute(e) => StorageError::from(e),
            other => StorageError::Migration(format!("migration failed: {other}")),
        })
    }

    /// Claims a background job (housekeeping) for this instance until the returned lock
    /// is dropped; `None` when another instance on the same PostgreSQL holds it. A
    /// transaction-scoped advisory lock: it goes with the transaction, even if this
    /// process dies. SQLite serves one instance and always grants it.
    pub async fn try_job_lock(&self, job: JobKey) -> Result<Option<JobLock>, StorageError> {
        match self {
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(job as i64)
                    .fetch_one(&mut *tx)
                    .await?;
                Ok(mine.then_some(JobLock(Some(tx))))
            }
            Self::Sqlite(_) => Ok(Some(JobLock(None))),
        }
    }

    /// Cheap liveness check for `/readyz`.
    pub async fn ping(&self) -> Result<(), StorageError> {
        with_pool!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// The connection pool's size, idle connections and limit, for metrics.
    pub fn pool_stats(&self) -> PoolStats {
        with_pool!(self, |pool| PoolStats {
            size: u64::from(pool.size()),
            idle: pool.num_idle() as u64,
            max: u64::from(pool.options().get_max_connections()),
        })
    }

    /// The file behind a `sqlite:` URL (`None` for other URLs, or one SQLite cannot read).
    pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
        if !url.starts_with("sqlite:") {
            return None;
        }
        SqliteConnectOptions::from_str(url)
            .ok()
            .map(|o| o.get_filename().to_path_buf())
    }

    /// Writes a consistent copy of a SQLite database to `path` (which must not exist)
    /// while others keep using it (`VACUUM INTO`). PostgreSQL has `pg_dump` for this.
    pub async fn backup_sqlite(&self, path: &str) -> Result<(), StorageError> {
        match self {
            Self::Sqlite(pool) => {
                sqlx::query("VACUUM INTO $1")
                    .bind(path)
                    .execute(pool)
                    .await?;
                Ok(())
            }
            Self::Postgres(_) => Err(StorageError::Conflict(
                "backup works on SQLite only; for PostgreSQL use pg_dump -Fc".into(),
            )),
        }
    }

    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }
}
