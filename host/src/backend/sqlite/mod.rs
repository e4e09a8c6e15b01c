//! SQLite: consumes a `sqlite:` url, produces its [`Driver`]: a pool of
//! connections opened read-only and, on a writing database, a writable
//! one; the catalog from `pragma_table_info`/`pragma_index_list`; values
//! that keep their storage class; guard tokens from `quote()`; its result
//! codes classified. It has no schemas, replicas, leases or health
//! indicators.

pub(crate) mod read;
pub(crate) mod write;

use std::time::Duration;

pub use read::kind_of;
pub use write::update_sql;

use super::{Address, Backend, Capabilities, Driver, Failure, Indicators, Lag, Spelling, Store};
use crate::chunk::{Key, KeyType};
use crate::db::DbUrl;
use crate::sink::{Guard, SinkError, Update};
use crate::source::{
    ColumnInfo, Dialect, Layout, Rows, SourceError, TableInfo, TableRef, Timeouts,
};
use crate::value::Value;

/// SQLite, as a [`Driver`].
#[derive(Clone, Copy, Debug)]
pub struct Sqlite;

/// The pools of a SQLite database.
#[derive(Clone, Debug)]
pub struct Pools {
    /// Opened read-only (`SQLITE_OPEN_READONLY`).
    read: sqlx::SqlitePool,
    /// Opened for writing, on a writing database only.
    write: Option<sqlx::SqlitePool>,
}

impl Driver for Sqlite {
    type Db = sqlx::Sqlite;
    type Pool = Pools;

    const KIND: Backend = Backend::Sqlite;
    const CAPABILITIES: Capabilities = Capabilities {
        schemas: false,
        workers: false,
        atomic_checkpoints: false,
        names_lock_holders: false,
        lag: Lag::None,
        lag_by_default: false,
        indicators: Indicators {
            vacuum: false,
            wal: false,
            active_backends: false,
            threads_running: false,
            history_length: false,
        },
    };
    const ADDRESS: Address = Address {
        schemes: &["sqlite"],
        default_port: None,
    };
    const DIALECT: Dialect = read::DIALECT;
    const STORE: Store = Store {
        spelling: Spelling::Numbered,
        raced: Store::unique_violation,
        index_exists: |_| false,
        count_tables: "SELECT count(*) FROM sqlite_master WHERE name = 'refill_runs'",
        // WAL lets `refill status` read while a run writes; NORMAL sync is
        // durable across process crashes.
        setup: &[
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA busy_timeout = 10000",
        ],
        create: Some("mode=rwc"),
        tune: &[],
    };

    async fn connect(
        url: &DbUrl,
        connections: u32,
        timeout: Duration,
        _timeouts: &Timeouts,
        writes: bool,
    ) -> Result<Pools, sqlx::Error> {
        Ok(Pools {
            read: read::connect(url, connections, timeout, true).await?,
            write: match writes {
                true => Some(read::connect(url, connections, timeout, false).await?),
                false => None,
            },
        })
    }

    /// A transaction on a connection opened read-only: no statement can
    /// make it write. Its busy timeout bounds the waits.
    async fn begin_read(
        pool: &Pools,
        _timeout: Duration,
        _lock: Duration,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        pool.read.begin().await
    }

    async fn table(
        conn: &mut sqlx::SqliteConnection,
        table: &TableRef,
    ) -> Result<Option<TableInfo>, SourceError> {
        read::table(conn, table).await
    }

    fn bind_rows<'q>(
        rows: &Rows<'_>,
        query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
        key_type: KeyType,
    ) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
        read::bind_rows(rows, query, key_type)
    }

    fn decode(
        row: &sqlx::sqlite::SqliteRow,
        i: usize,
        column: &ColumnInfo,
    ) -> Result<Value, String> {
        read::decode(row, i, column)
    }

    async fn write(
        pool: &Pools,
        _timeouts: &Timeouts,
        layout: &Layout,
        updates: &[Update],
        guard: Guard,
    ) -> Result<(Vec<Key>, Vec<Key>), SinkError> {
        let Some(writer) = &pool.write else {
            return Err(SinkError::ReadOnly {
                table: layout.target.quoted(),
            });
        };
        // SQLite locks the whole database for a write: no row is ever
        // busy while refill holds the write lock.
        write::write(writer, layout, updates, guard)
            .await
            .map(|keys| (keys, Vec::new()))
    }

    fn failure(error: &(dyn sqlx::error::DatabaseError + 'static)) -> Option<Failure> {
        error.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
        // The extended result code; its low byte is the primary one.
        let code: u32 = error.code().and_then(|c| c.parse().ok()).unwrap_or(0);
        Some(match code & 0xff {
            // SQLITE_BUSY, SQLITE_LOCKED.
            5 | 6 => Failure::Transient,
            // SQLITE_READONLY.
            8 => Failure::WritesRefused,
            // SQLITE_CONSTRAINT: a constraint, a trigger's RAISE(ABORT),
            // a STRICT table's type check.
            19 => Failure::RefusedValue,
            _ => Failure::Other,
        })
    }
}
