//! Dead letters: the rows of a run that failed, each with its key, chunk,
//! error, a fingerprint of its inputs and the digest of the component that
//! failed on it; retries resolve them or record them failing again.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{StateError, StateStore, get, now, q, to_i64, to_u64};
use crate::backend::store_sql;
use crate::chunk::{Key, KeyType};
use crate::transform::Trapped;

/// Rows per INSERT statement.
const ROWS_PER_INSERT: usize = 100;

/// A row that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Its key.
    pub key: Key,
    /// The chunk it belongs to.
    pub chunk_id: u64,
    /// What kind of failure it was (the last time); `None` for a dead
    /// letter recorded by a refill from before kinds were recorded.
    pub kind: Option<FailureKind>,
    /// What trapped, when the transform trapped on it (the last time).
    pub trap: Option<Trapped>,
    /// Why it failed (the last time).
    pub error: String,
    /// The fingerprint of its input values when it failed.
    pub input_hash: String,
    /// The component that failed on it (the last time).
    pub component_digest: String,
    /// How many times it was tried.
    pub attempts: u64,
    /// When it first failed.
    pub first_seen_at: String,
    /// When it last failed.
    pub last_seen_at: String,
    /// When a retry made it right, if one did.
    pub resolved_at: Option<String>,
    /// The retry that did.
    pub resolved_by: Option<String>,
    /// How it was resolved.
    pub resolution: Option<Resolution>,
}

/// What made a row fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The transform returned an `error` outcome for it.
    Error,
    /// The transform trapped on it, run on its own.
    Trap,
    /// The transform broke the interface contract on it (the wrong number
    /// of outcomes), run on its own.
    Contract,
    /// The transform's output does not fit the target: the wrong number of
    /// values, a type the column cannot take, a NULL for NOT NULL.
    Output,
    /// One of its input or target values could not be read.
    Unreadable,
    /// The database refused to write it (a constraint, a value out of
    /// range, an unknown enum label).
    Refused,
    /// It changed between refill's read and its write on every attempt.
    Conflict,
    /// Another transaction held it locked for longer than `max_lock_wait`.
    Locked,
}

impl FailureKind {
    const ALL: [FailureKind; 8] = [
        FailureKind::Error,
        FailureKind::Trap,
        FailureKind::Contract,
        FailureKind::Output,
        FailureKind::Unreadable,
        FailureKind::Refused,
        FailureKind::Conflict,
        FailureKind::Locked,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Error => "error",
            FailureKind::Trap => "trap",
            FailureKind::Contract => "contract",
            FailureKind::Output => "output",
            FailureKind::Unreadable => "unreadable",
            FailureKind::Refused => "refused",
            FailureKind::Conflict => "conflict",
            FailureKind::Locked => "locked",
        }
    }

    fn parse(s: &str) -> Option<FailureKind> {
        FailureKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// How a retry resolved a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resolution {
    /// The row now holds what the transform computes (written, or it
    /// already did).
    Fixed,
    /// The transform skipped the row.
    Skipped,
    /// The row was deleted or left the scope.
    Gone,
}

impl Resolution {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Fixed => "fixed",
            Resolution::Skipped => "skipped",
            Resolution::Gone => "gone",
        }
    }

    fn parse(s: &str) -> Option<Resolution> {
        [Resolution::Fixed, Resolution::Skipped, Resolution::Gone]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl DeadLetter {
    /// A row failing for the first time.
    pub fn new(
        key: Key,
        chunk_id: u64,
        kind: FailureKind,
        error: String,
        input_hash: String,
        component_digest: &str,
    ) -> DeadLetter {
        let at = now();
        DeadLetter {
            key,
            chunk_id,
            kind: Some(kind),
            trap: None,
            error,
            input_hash,
            component_digest: component_digest.to_string(),
            attempts: 1,
            first_seen_at: at.clone(),
            last_seen_at: at,
            resolved_at: None,
            resolved_by: None,
            resolution: None,
        }
    }
}

/// The primary-key hash of a row key: keys can be long texts, which some
/// databases cannot index whole.
pub(super) fn key_hash(key: &Key) -> String {
    hex::encode(Sha256::digest(key.encode().as_bytes()))
}

/// Records a chunk's dead letters inside its checkpoint transaction, on
/// the state store's own connection or, when the checkpoint commits with
/// the chunk's writes, on the target's PostgreSQL connection. Those
/// recorded for the chunk before are replaced: a checkpoint retried after
/// its commit went through records the same rows again.
pub(super) async fn replace<DB>(
    conn: &mut DB::Connection,
    backend: crate::db::Backend,
    run_id: &str,
    chunk_id: u64,
    dead: &[DeadLetter],
) -> Result<(), StateError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let delete =
        store_sql!["DELETE FROM refill_dead_letters WHERE run_id = " ? " AND chunk_id = " ?];
    super::delete_of_chunk::<DB>(conn, backend, delete, run_id, chunk_id)
        .await
        .map_err(q("recording dead letters"))?;
    insert::<DB>(conn, backend, run_id, dead).await
}

/// Inserts dead letters for rows that have none.
pub(super) async fn insert<DB>(
    conn: &mut DB::Connection,
    backend: crate::db::Backend,
    run_id: &str,
    dead: &[DeadLetter],
) -> Result<(), StateError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let spelling = crate::backend::store(backend).spelling;
    for batch in dead.chunks(ROWS_PER_INSERT) {
        let tuples: Vec<String> = (0..batch.len())
            .map(|r| format!("({})", spelling.placeholders(r * 13 + 1, 13)))
            .collect();
        let sql = format!(
            "INSERT INTO refill_dead_letters (run_id, key_hash, row_key, chunk_id, kind, error, input_hash, \
             component_digest, attempts, first_seen_at, last_seen_at, resolved_at, trap) VALUES {}",
            tuples.join(", ")
        );
        let mut query = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql));
        for d in batch {
            query = query
                .bind(run_id.to_string())
                .bind(key_hash(&d.key))
                .bind(d.key.encode())
                .bind(to_i64(d.chunk_id))
                .bind(d.kind.map(|k| k.as_str().to_string()))
                .bind(d.error.clone())
                .bind(d.input_hash.clone())
                .bind(d.component_digest.clone())
                .bind(to_i64(d.attempts))
                .bind(d.first_seen_at.clone())
                .bind(d.last_seen_at.clone())
                .bind(d.resolved_at.clone())
                .bind(d.trap.map(Trapped::encode));
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(q("recording dead letters"))?;
    }
    Ok(())
}

/// A stored failure kind: `None` from an older refill, an error when it
/// is not one this refill knows.
fn parse_kind(stored: Option<String>) -> Result<Option<FailureKind>, StateError> {
    stored
        .map(|s| {
            FailureKind::parse(&s)
                .ok_or_else(|| StateError::Corrupt(format!("dead letter kind `{s}`")))
        })
        .transpose()
}

/// Unresolved dead letters of one kind and error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetterGroup {
    /// Their kind (`None`: recorded by an older refill).
    pub kind: Option<FailureKind>,
    /// Their error.
    pub error: String,
    /// How many rows.
    pub rows: u64,
    /// A few of their keys.
    pub keys: Vec<String>,
}

fn from_row(r: &AnyRow, key_type: KeyType) -> Result<DeadLetter, StateError> {
    let key: String = get(r, "row_key")?;
    Ok(DeadLetter {
        key: Key::decode(&key, key_type)
            .ok_or_else(|| StateError::Corrupt(format!("dead letter key `{key}`")))?,
        chunk_id: to_u64(get(r, "chunk_id")?),
        kind: parse_kind(get(r, "kind")?)?,
        trap: get::<Option<String>>(r, "trap")?
            .map(|s| {
                Trapped::decode(&s)
                    .ok_or_else(|| StateError::Corrupt(format!("dead letter trap `{s}`")))
            })
            .transpose()?,
        error: get(r, "error")?,
        input_hash: get(r, "input_hash")?,
        component_digest: get(r, "component_digest")?,
        attempts: to_u64(get(r, "attempts")?),
        first_seen_at: get(r, "first_seen_at")?,
        last_seen_at: get(r, "last_seen_at")?,
        resolved_at: get(r, "resolved_at")?,
        resolved_by: get(r, "resolved_by")?,
        resolution: get::<Option<String>>(r, "resolution")?
            .map(|s| {
                Resolution::parse(&s)
                    .ok_or_else(|| StateError::Corrupt(format!("dead letter resolution `{s}`")))
            })
            .transpose()?,
    })
}

impl StateStore {
    /// A run's dead letters, by chunk; only the unresolved ones if
    /// `unresolved`.
    pub async fn dead_letters(
        &self,
        run_id: &str,
        key_type: KeyType,
        unresolved: bool,
    ) -> Result<Vec<DeadLetter>, StateError> {
        let sql = if unresolved {
            store_sql!["SELECT * FROM refill_dead_letters WHERE run_id = " ? " AND resolved_at IS NULL ORDER BY chunk_id, first_seen_at"]
        } else {
            store_sql!["SELECT * FROM refill_dead_letters WHERE run_id = " ? " ORDER BY chunk_id, first_seen_at"]
        };
        let rows = sqlx::query(self.sql(sql))
            .bind(run_id)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading dead letters"))?;
        rows.iter().map(|r| from_row(r, key_type)).collect()
    }

    /// How many of a run's dead letters no retry has resolved.
    pub async fn unresolved_count(&self, run_id: &str) -> Result<u64, StateError> {
        let n: i64 = sqlx::query_scalar(self.sql(
            store_sql!["SELECT CAST(count(*) AS " bigint ") FROM refill_dead_letters WHERE run_id = " ? " AND resolved_at IS NULL"],
        ))
        .bind(run_id)
        .fetch_one(&self.pool)
        .await
        .map_err(q("counting dead letters"))?;
        Ok(to_u64(n))
    }

    /// Unresolved dead letters grouped by kind and error, most frequent
    /// first: the kind, the error, how many rows, and a few keys.
    pub async fn dead_letter_groups(
        &self,
        run_id: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetterGroup>, StateError> {
        let rows = sqlx::query(
            self.sql(store_sql!["SELECT kind, error, CAST(count(*) AS " bigint ") AS n FROM refill_dead_letters \
             WHERE run_id = " ? " AND resolved_at IS NULL GROUP BY kind, error ORDER BY n DESC, error LIMIT " ?]),
        )
        .bind(run_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(q("grouping dead letters"))?;
        let mut groups = Vec::new();
        for r in rows {
            let error: String = get(&r, "error")?;
            let kind = parse_kind(get(&r, "kind")?)?;
            let keys: Vec<String> = sqlx::query_scalar(
                self.sql(store_sql!["SELECT row_key FROM refill_dead_letters WHERE run_id = " ? " AND resolved_at IS NULL AND error = " ? " \
                 ORDER BY chunk_id LIMIT 3"]),
            )
            .bind(run_id)
            .bind(&error)
            .fetch_all(&self.pool)
            .await
            .map_err(q("grouping dead letters"))?;
            groups.push(DeadLetterGroup {
                kind,
                error,
                rows: to_u64(
                    r.try_get::<i64, _>("n")
                        .map_err(q("grouping dead letters"))?,
                ),
                keys,
            });
        }
        Ok(groups)
    }

    /// Records what a retry (`resolved_by`, running `digest`) found, in
    /// one transaction: the dead letters it resolved, each with how, and
    /// those failing again, with their new error.
    pub async fn settle_dead_letters(
        &self,
        run_id: &str,
        resolved: &[(Key, Resolution)],
        failed: &[DeadLetter],
        resolved_by: &str,
        digest: &str,
    ) -> Result<(), StateError> {
        let at = now();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("settling dead letters"))?;
        for (key, resolution) in resolved {
            sqlx::query(
                self.sql(store_sql!["UPDATE refill_dead_letters SET resolved_at = " ? ", resolved_by = " ? ", resolution = " ? ", \
                 component_digest = " ? ", attempts = attempts + 1 WHERE run_id = " ? " AND key_hash = " ?]),
            )
            .bind(&at)
            .bind(resolved_by)
            .bind(resolution.as_str())
            .bind(digest)
            .bind(run_id)
            .bind(key_hash(key))
            .execute(&mut *tx)
            .await
            .map_err(q("resolving dead letters"))?;
        }
        for d in failed {
            sqlx::query(
                self.sql(store_sql!["UPDATE refill_dead_letters SET error = " ? ", input_hash = " ? ", component_digest = " ? ", \
                 attempts = attempts + 1, last_seen_at = " ? ", kind = " ? ", trap = " ? " WHERE run_id = " ? " AND key_hash = " ?]),
            )
            .bind(&d.error)
            .bind(&d.input_hash)
            .bind(&d.component_digest)
            .bind(&at)
            .bind(d.kind.map(FailureKind::as_str))
            .bind(d.trap.map(Trapped::encode))
            .bind(run_id)
            .bind(key_hash(&d.key))
            .execute(&mut *tx)
            .await
            .map_err(q("updating dead letters"))?;
        }
        tx.commit().await.map_err(q("settling dead letters"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_kinds_are_stored_by_name_and_unknown_names_are_refused() {
        for kind in FailureKind::ALL {
            assert_eq!(
                parse_kind(Some(kind.as_str().to_string())).ok(),
                Some(Some(kind))
            );
        }
        assert_eq!(parse_kind(None).ok(), Some(None));
        match parse_kind(Some("gremlins".into())) {
            Err(StateError::Corrupt(message)) => assert!(message.contains("gremlins")),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
