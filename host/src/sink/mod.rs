//! Writing rows: consumes a chunk's updates (a key plus new values already
//! coerced to the target columns' kinds) and produces them in the target
//! table, batched: one `UPDATE … FROM unnest(…)` round trip per chunk on
//! PostgreSQL, one transaction per chunk on SQLite. Writes are idempotent:
//! they set columns to values, so writing a chunk twice leaves it as
//! writing it once.

pub mod postgres;
pub mod sqlite;

use crate::chunk::Key;
use crate::source::{Database, Layout};
use crate::value::Value;

/// New values for one row of the target.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// The row's key.
    pub key: Key,
    /// One value per output column, coerced to the column's kind.
    pub values: Vec<Value>,
}

/// Errors of the sink stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The database refused the write.
    #[error(
        "writing {rows} rows to {table} failed: {}",
        crate::db::describe(error)
    )]
    Write {
        /// The target table, quoted.
        table: String,
        /// How many rows the write held.
        rows: usize,
        /// Why.
        error: sqlx::Error,
    },
    /// A value cannot be sent to the database.
    #[error("cannot write {column} of {table} at key {key}: {message}")]
    Encode {
        /// The target table, quoted.
        table: String,
        /// The column.
        column: String,
        /// The row's key.
        key: String,
        /// Why.
        message: String,
    },
}

/// Writes `updates` to the target of `layout`. Returns the number of rows
/// the database reports as changed.
pub async fn write(db: &Database, layout: &Layout, updates: Vec<Update>) -> Result<u64, SinkError> {
    if updates.is_empty() {
        return Ok(0);
    }
    match db {
        Database::Postgres(pool) => postgres::write(pool, layout, updates).await,
        Database::Sqlite(pool) => sqlite::write(pool, layout, updates).await,
    }
}
