//! Abuse-limit counters (see `crate::limits`).

use super::{StorageError, Store, with_pool};
use crate::limits::Counts;

impl Store {
    /// The counts of `bucket` in the window starting at `window` and the one before.
    pub async fn rate_counts(
        &self,
        bucket: &str,
        window: i64,
        window_secs: i64,
    ) -> Result<Counts, StorageError> {
        let rows: Vec<(i64, i64, i64)> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT window_start, hits, last_at FROM rate_counters \
                 WHERE bucket = $1 AND window_start >= $2",
            )
            .bind(bucket)
            .bind(window - window_secs)
            .fetch_all(pool)
            .await?
        });
        let mut counts = Counts::default();
        for (start, hits, last_at) in rows {
            if start >= window {
                counts.current += hits;
            } else {
                counts.previous += hits;
            }
            counts.last_at = counts.last_at.max(last_at);
        }
        Ok(counts)
    }

    /// Adds `n` events to `bucket`'s window and returns the window's total.
    pub async fn rate_add(
        &self,
        bucket: &str,
        window: i64,
        n: i64,
        now: i64,
    ) -> Result<i64, StorageError> {
        Ok(with_pool!(self, |pool| {
            sqlx::query_scalar(
                "INSERT INTO rate_counters (bucket, window_start, hits, last_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (bucket, window_start) DO UPDATE \
                 SET hits = rate_counters.hits + excluded.hits, last_at = excluded.last_at \
                 RETURNING hits",
            )
            .bind(bucket)
            .bind(window)
            .bind(n)
            .bind(now)
            .fetch_one(pool)
            .await?
        }))
    }

    /// Adds each `(bucket, window, n)` and returns the windows' totals, in as few
    /// statements as the backends' parameter limits allow (one per 500 counters): an
    /// instance serving many live tokens syncs them all each flush. Each bucket may
    /// appear once.
    pub async fn rate_add_many(
        &self,
        adds: &[(String, i64, i64)],
        now: i64,
    ) -> Result<Vec<(String, i64, i64)>, StorageError> {
        let mut totals = Vec::with_capacity(adds.len());
        for chunk in adds.chunks(500) {
            let rows: Vec<(String, i64, i64)> = with_pool!(self, |pool| {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO rate_counters (bucket, window_start, hits, last_at) ",
                );
                q.push_values(chunk, |mut row, (bucket, window, n)| {
                    row.push_bind(bucket)
                        .push_bind(window)
                        .push_bind(n)
                        .push_bind(now);
                });
                q.push(
                    " ON CONFLICT (bucket, window_start) DO UPDATE \
                     SET hits = rate_counters.hits + excluded.hits, last_at = excluded.last_at \
                     RETURNING bucket, window_start, hits",
                );
                q.build_query_as().fetch_all(pool).await?
            });
            totals.extend(rows);
        }
        Ok(totals)
    }

    /// Drops counters of windows that began before `before`.
    pub async fn purge_rate_counters(&self, before: i64) -> Result<u64, StorageError> {
        Ok(with_pool!(self, |pool| {
            sqlx::query("DELETE FROM rate_counters WHERE window_start < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }
}
