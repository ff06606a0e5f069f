//! The cross-instance relay of the legacy SSE transport, on PostgreSQL: a message
//! table plus `LISTEN/NOTIFY`. NOTIFY carries only the row's id and session (its payload
//! is limited to 8000 bytes; a response can be a megabyte). SQLite has no relay: one
//! process holds every stream, and these methods say so.

use sqlx::postgres::PgListener;

use super::{StorageError, Store};

const CHANNEL: &str = "gatehouse_sse";

/// A message waiting in the relay: (row id, session).
pub type Waiting = (i64, String);

impl Store {
    /// Queues `body` for the instance holding `session` and wakes every listener.
    /// `Ok(false)` on SQLite, which has no other instance to reach.
    pub async fn relay_post(
        &self,
        session: &str,
        body: &str,
        now: i64,
    ) -> Result<bool, StorageError> {
        let Self::Postgres(pool) = self else {
            return Ok(false);
        };
        // One statement, so the notification goes out with the row's commit.
        sqlx::query(
            "WITH m AS (INSERT INTO sse_relay (session_id, body, created_at) VALUES ($1, $2, $3) RETURNING id) \
             SELECT pg_notify($4, (SELECT id FROM m)::text || ' ' || $1)",
        )
        .bind(session)
        .bind(body)
        .bind(now)
        .bind(CHANNEL)
        .execute(pool)
        .await?;
        Ok(true)
    }

    /// Takes one queued message (`None` if another instance took it, or it expired).
    pub async fn relay_take(&self, id: i64) -> Result<Option<String>, StorageError> {
        let Self::Postgres(pool) = self else {
            return Ok(None);
        };
        Ok(
            sqlx::query_scalar("DELETE FROM sse_relay WHERE id = $1 RETURNING body")
                .bind(id)
                .fetch_optional(pool)
                .await?,
        )
    }

    /// Takes every queued message for these sessions, oldest first: what arrived while
    /// this instance's listener was reconnecting.
    pub async fn relay_take_for(
        &self,
        sessions: &[String],
    ) -> Result<Vec<(String, String)>, StorageError> {
        let Self::Postgres(pool) = self else {
            return Ok(Vec::new());
        };
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_as(
            "WITH d AS (DELETE FROM sse_relay WHERE session_id = ANY($1) RETURNING id, session_id, body) \
             SELECT session_id, body FROM d ORDER BY id",
        )
        .bind(sessions)
        .fetch_all(pool)
        .await?)
    }

    /// Deletes messages no instance claimed before `before` (their stream was gone).
    pub async fn relay_expire(&self, before: i64) -> Result<u64, StorageError> {
        let Self::Postgres(pool) = self else {
            return Ok(0);
        };
        Ok(sqlx::query("DELETE FROM sse_relay WHERE created_at < $1")
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected())
    }

    /// Listens for relayed messages; `None` on SQLite.
    pub async fn relay_listener(&self) -> Result<Option<RelayListener>, StorageError> {
        let Self::Postgres(pool) = self else {
            return Ok(None);
        };
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(RelayListener(listener)))
    }
}

/// The relay's notifications, on a connection of its own.
pub struct RelayListener(PgListener);

impl RelayListener {
    /// The next queued message's id and session. `Ok(None)`: the connection was lost
    /// and is being re-established, so notifications may have been missed (the caller
    /// sweeps with [`Store::relay_take_for`]).
    pub async fn next(&mut self) -> Result<Option<Waiting>, StorageError> {
        let Some(n) = self.0.try_recv().await? else {
            return Ok(None);
        };
        let parsed = n
            .payload()
            .split_once(' ')
            .and_then(|(id, s)| Some((id.parse().ok()?, s.to_owned())));
        // A payload of another shape is not ours; treated like a missed notification.
        Ok(parsed)
    }
}
