//! MySQL and MariaDB (one wire protocol, one dialect): consumes a
//! `mysql://` url, produces its [`Driver`]: pools whose sessions bound
//! their lock waits and statements, reads in `START TRANSACTION READ ONLY`,
//! the catalog from `information_schema`, skip-locked guarded writes
//! joined to derived rows, its error numbers classified, replica lag read
//! on a replica, and `Threads_running` and the InnoDB history list as
//! health indicators.

mod health;
mod lag;
pub(crate) mod read;
pub(crate) mod write;

use std::time::Duration;

pub use lag::{ReplicaStatus, lag_of};
pub use read::{kind_of, quote};
pub use write::{select_sql, update_sql};

use super::{Address, Backend, Capabilities, Driver, Failure, Indicators, Lag, Spelling, Store};
use crate::chunk::{Key, KeyType};
use crate::db::DbUrl;
use crate::sink::{Guard, SinkError, Update};
use crate::source::{
    ColumnInfo, Dialect, Layout, Rows, SourceError, TableInfo, TableRef, Timeouts,
};
use crate::throttle::health::{Blind, Finding, Health};
use crate::value::Value;

/// MySQL or MariaDB, as a [`Driver`].
#[derive(Clone, Copy, Debug)]
pub struct Mysql;

/// The error number of a MySQL/MariaDB error.
pub fn errno(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(sqlx::mysql::MySqlDatabaseError::number),
        _ => None,
    }
}

impl Driver for Mysql {
    type Db = sqlx::MySql;
    type Pool = sqlx::MySqlPool;

    const KIND: Backend = Backend::Mysql;
    const CAPABILITIES: Capabilities = Capabilities {
        schemas: true,
        workers: false,
        atomic_checkpoints: false,
        // InnoDB names the holder of a row lock only to a transaction
        // waiting for it, and refill never waits.
        names_lock_holders: false,
        lag: Lag::OnReplica,
        lag_by_default: false,
        indicators: Indicators {
            vacuum: false,
            wal: false,
            active_backends: false,
            threads_running: true,
            history_length: true,
        },
    };
    const ADDRESS: Address = Address {
        schemes: &["mysql", "mariadb"],
        default_port: Some(3306),
    };
    const DIALECT: Dialect = read::DIALECT;
    const STORE: Store = Store {
        spelling: Spelling::Positional,
        raced: Store::unique_violation,
        // MySQL lacks `CREATE INDEX IF NOT EXISTS` (MariaDB has it): an
        // index that exists is refused with error 1061.
        index_exists: |e| errno(e) == Some(1061),
        count_tables: "SELECT count(*) FROM information_schema.tables WHERE table_name = 'refill_runs' AND table_schema = DATABASE()",
        setup: &[],
        create: None,
        tune: &[],
    };

    async fn connect(
        url: &DbUrl,
        connections: u32,
        timeout: Duration,
        timeouts: &Timeouts,
        _writes: bool,
    ) -> Result<sqlx::MySqlPool, sqlx::Error> {
        read::connect(url, connections, timeout, timeouts).await
    }

    /// The session's timeouts bound it (see [`read::connect`]).
    async fn begin_read(
        pool: &sqlx::MySqlPool,
        _timeout: Duration,
        _lock: Duration,
    ) -> Result<sqlx::Transaction<'static, sqlx::MySql>, sqlx::Error> {
        read::begin_read(pool).await
    }

    async fn table(
        conn: &mut sqlx::MySqlConnection,
        table: &TableRef,
    ) -> Result<Option<TableInfo>, SourceError> {
        read::table(conn, table).await
    }

    async fn volatile_functions(
        pool: &sqlx::MySqlPool,
        _timeouts: &Timeouts,
        _table: &str,
        condition: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        read::volatile_functions(pool, condition).await
    }

    fn bind_rows<'q>(
        rows: &Rows<'_>,
        query: sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>,
        key_type: KeyType,
    ) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
        read::bind_rows(rows, query, key_type)
    }

    fn decode(row: &sqlx::mysql::MySqlRow, i: usize, column: &ColumnInfo) -> Result<Value, String> {
        read::decode(row, i, column)
    }

    fn unsupported(type_name: &str) -> bool {
        read::unsupported(type_name)
    }

    fn refuses_key(sql_type: &str) -> Option<String> {
        let t = sql_type.to_ascii_lowercase();
        // MySQL sorts and compares ENUM by its index but casts it to its
        // label: key ranges built from labels would miss rows.
        let kind = if t.starts_with("enum") {
            "ENUM"
        } else if t.starts_with("set") {
            "SET"
        } else {
            return None;
        };
        Some(format!(
            "is an {kind}, which MySQL and MariaDB sort by position in its list, not by its text; refill cannot cut it into key ranges: key the backfill on another unique column"
        ))
    }

    async fn write(
        pool: &sqlx::MySqlPool,
        _timeouts: &Timeouts,
        layout: &Layout,
        updates: &[Update],
        guard: Guard,
    ) -> Result<(Vec<Key>, Vec<Key>), SinkError> {
        write::write(pool, layout, updates, guard).await
    }

    fn reshapes(column: &ColumnInfo) -> bool {
        write::reshapes(column)
    }

    // MySQL rounds a FLOAT to single precision and drops a CHAR's trailing
    // spaces; both are done in the host, without a round trip.
    async fn reshape(
        _pool: &sqlx::MySqlPool,
        _timeouts: &Timeouts,
        layout: &Layout,
        rows: &mut [Vec<Value>],
    ) -> Result<(), SinkError> {
        write::stored_form(layout, rows);
        Ok(())
    }

    fn failure(error: &(dyn sqlx::error::DatabaseError + 'static)) -> Option<Failure> {
        let error = error.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()?;
        let state = error.code().unwrap_or_default();
        Some(match error.number() {
            // Lock wait timeout; statement timeouts (MariaDB's
            // max_statement_time, MySQL's max_execution_time).
            1205 | 1969 | 3024 => Failure::TimedOut,
            // Deadlock, too many connections, server shutting down, query
            // interrupted by a restart.
            1213 | 1040 | 1053 | 1927 => Failure::Transient,
            // A write in a read-only transaction.
            1792 => Failure::WritesRefused,
            n if write::refuses_a_value(n) => Failure::RefusedValue,
            _ if state.starts_with("08") || state == "40001" => Failure::Transient,
            _ => Failure::Other,
        })
    }

    async fn replica_lag(
        pool: &sqlx::MySqlPool,
        _replica: bool,
        _optional: bool,
        name: &str,
    ) -> Result<Duration, String> {
        lag::replica_lag(pool, name).await
    }

    async fn health(pool: &sqlx::MySqlPool, health: &Health) -> Vec<Finding> {
        health::check(pool, health).await
    }

    async fn blind_spots(pool: &sqlx::MySqlPool, health: &Health) -> Result<Vec<Blind>, String> {
        health::blind_spots(pool, health).await
    }
}
