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
mod mcp;
pub mod oauth;
pub mod records;
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
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
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

#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
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
                .acquire_timeout(cfg.connect_timeout)
                .connect_with(opts)
                .await
                .map_err(StorageError::Unavailable)?;
            Ok(Self::Sqlite(pool))
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(cfg.max_connections)
                .acquire_timeout(cfg.connect_timeout)
                .connect(&cfg.url)
                .await
                .map_err(StorageError::Unavailable)?;
            Ok(Self::Postgres(pool))
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

    /// Cheap liveness check for `/readyz`.
    pub async fn ping(&self) -> Result<(), StorageError> {
        with_pool!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }
}
