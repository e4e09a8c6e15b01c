//! Deferred rows: the rows of a run that another transaction held locked
//! when refill came to write them. refill never waits for the
//! application's row locks: it records the row here, in the same
//! transaction as its chunk's checkpoint, and tries it again later in the
//! run (or in a resumed one, or another worker) until it is written or has
//! been held longer than `[timeouts] max_lock_wait`, when it becomes a dead
//! letter saying so.

use serde::Serialize;
use sqlx::Row as _;

use super::dead::{self, key_hash};
use super::{Counts, DeadLetter, StateError, StateStore, get, now, q, to_i64, to_u64};
use crate::backend::store_sql;
use crate::chunk::{Key, KeyType};

/// A row deferred because another transaction held it locked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Deferred {
    /// Its key.
    pub key: Key,
    /// The chunk it belongs to.
    pub chunk_id: u64,
    /// How many times it was found locked.
    pub attempts: u64,
    /// Who held it, as far as the database could tell, the last time.
    pub holder: String,
    /// When it was first found locked.
    pub first_seen_at: String,
    /// When it was last found locked.
    pub last_seen_at: String,
}

impl Deferred {
    /// A row found locked for the first time.
    pub fn new(key: Key, chunk_id: u64, holder: String) -> Deferred {
        let at = now();
        Deferred {
            key,
            chunk_id,
            attempts: 1,
            holder,
            first_seen_at: at.clone(),
            last_seen_at: at,
        }
    }
}

/// Records a chunk's deferred rows inside its checkpoint transaction,
/// replacing those recorded for it before (a checkpoint retried after its
/// commit went through records the same rows again).
pub(super) async fn replace<DB>(
    conn: &mut DB::Connection,
    backend: crate::db::Backend,
    run_id: &str,
    chunk_id: u64,
    rows: &[Deferred],
) -> Result<(), StateError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let spelling = crate::backend::store(backend).spelling;
    let delete = store_sql!["DELETE FROM refill_deferred WHERE run_id = " ? " AND chunk_id = " ?];
    super::delete_of_chunk::<DB>(conn, backend, delete, run_id, chunk_id)
        .await
        .map_err(q("recording deferred rows"))?;
    for d in rows {
        let insert = store_sql!["INSERT INTO refill_deferred (run_id, key_hash, row_key, chunk_id, attempts, holder, \
             first_seen_at, last_seen_at) VALUES (" ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ")"];
        let insert = insert.spelled(spelling);
        sqlx::query::<DB>(sqlx::AssertSqlSafe(insert))
            .bind(run_id.to_string())
            .bind(key_hash(&d.key))
            .bind(d.key.encode())
            .bind(to_i64(d.chunk_id))
            .bind(to_i64(d.attempts))
            .bind(d.holder.clone())
            .bind(d.first_seen_at.clone())
            .bind(d.last_seen_at.clone())
            .execute(&mut *conn)
            .await
            .map_err(q("recording deferred rows"))?;
    }
    Ok(())
}

impl StateStore {
    /// A run's deferred rows, by chunk.
    pub async fn deferred(
        &self,
        run_id: &str,
        key_type: KeyType,
    ) -> Result<Vec<Deferred>, StateError> {
        let rows = sqlx::query(self.sql(
            store_sql!["SELECT * FROM refill_deferred WHERE run_id = " ? " ORDER BY chunk_id, first_seen_at"],
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading deferred rows"))?;
        rows.iter()
            .map(|r| {
                let key: String = get(r, "row_key")?;
                Ok(Deferred {
                    key: Key::decode(&key, key_type)
                        .ok_or_else(|| StateError::Corrupt(format!("deferred key `{key}`")))?,
                    chunk_id: to_u64(get(r, "chunk_id")?),
                    attempts: to_u64(get(r, "attempts")?),
                    holder: get(r, "holder")?,
                    first_seen_at: get(r, "first_seen_at")?,
                    last_seen_at: get(r, "last_seen_at")?,
                })
            })
            .collect()
    }

    /// How many rows of a run are deferred now.
    pub async fn deferred_count(&self, run_id: &str) -> Result<u64, StateError> {
        let row = sqlx::query(
            self.sql(store_sql!["SELECT CAST(count(*) AS " bigint ") FROM refill_deferred WHERE run_id = " ?]),
        )
        .bind(run_id)
        .fetch_one(&self.pool)
        .await
        .map_err(q("counting deferred rows"))?;
        Ok(to_u64(
            row.try_get::<i64, _>(0)
                .map_err(q("counting deferred rows"))?,
        ))
    }

    /// Records, in one transaction, what trying a chunk's deferred rows
    /// again did: `counts` of their outcomes are added to the chunk's,
    /// the rows `settled` (written, unchanged, skipped, gone, failed) and
    /// those that became dead letters (`dead`) leave the deferred rows,
    /// and those `still` locked are recorded with their new attempt.
    pub async fn settle_deferred(
        &self,
        run_id: &str,
        chunk_id: u64,
        counts: &Counts,
        settled: &[Key],
        still: &[Deferred],
        dead: &[DeadLetter],
    ) -> Result<(), StateError> {
        let what = "settling deferred rows";
        let mut tx = self.pool.begin().await.map_err(q(what))?;
        sqlx::query(self.sql(
            store_sql!["UPDATE refill_chunks SET updated = updated + " ? ", unchanged = unchanged + " ? ", \
             skipped = skipped + " ? ", failed = failed + " ? ", conflicts = conflicts + " ? ", \
             retries = retries + " ? " WHERE run_id = " ? " AND chunk_id = " ?],
        ))
        .bind(to_i64(counts.updated))
        .bind(to_i64(counts.unchanged))
        .bind(to_i64(counts.skipped))
        .bind(to_i64(counts.failed))
        .bind(to_i64(counts.conflicts))
        .bind(to_i64(counts.retries))
        .bind(run_id)
        .bind(to_i64(chunk_id))
        .execute(&mut *tx)
        .await
        .map_err(q(what))?;
        for key in settled.iter().chain(dead.iter().map(|d| &d.key)) {
            sqlx::query(self.sql(
                store_sql!["DELETE FROM refill_deferred WHERE run_id = " ? " AND key_hash = " ?],
            ))
            .bind(run_id)
            .bind(key_hash(key))
            .execute(&mut *tx)
            .await
            .map_err(q(what))?;
        }
        for d in still {
            sqlx::query(self.sql(
                store_sql!["UPDATE refill_deferred SET attempts = " ? ", holder = " ? ", last_seen_at = " ? " \
                 WHERE run_id = " ? " AND key_hash = " ?],
            ))
            .bind(to_i64(d.attempts))
            .bind(&d.holder)
            .bind(&d.last_seen_at)
            .bind(run_id)
            .bind(key_hash(&d.key))
            .execute(&mut *tx)
            .await
            .map_err(q(what))?;
        }
        // A row that failed now may have failed before it was deferred:
        // its earlier dead letter gives way to the new one.
        for d in dead {
            sqlx::query(
                self.sql(store_sql!["DELETE FROM refill_dead_letters WHERE run_id = " ? " AND key_hash = " ?]),
            )
            .bind(run_id)
            .bind(key_hash(&d.key))
            .execute(&mut *tx)
            .await
            .map_err(q(what))?;
        }
        dead::insert::<sqlx::Any>(&mut tx, self.url.backend(), run_id, dead).await?;
        tx.commit().await.map_err(q(what))?;
        Ok(())
    }
}
