//! PostgreSQL: consumes a `postgres://` url, produces its [`Driver`]:
//! pools whose reads run in `BEGIN READ ONLY` transactions, the catalog
//! from `pg_attribute`/`pg_index`, values decoded from the binary
//! protocol, skip-locked guarded writes, its SQLSTATEs classified, replica
//! lag from `pg_stat_replication` and the health indicators of
//! `docs/production.md`.

mod health;
mod lag;
pub(crate) mod read;
pub(crate) mod write;

use std::time::Duration;

pub use read::{begin_write, kind_of, session_name};
pub use write::{Parts, stored_form_sql};

use super::{Address, Backend, Capabilities, Driver, Failure, Indicators, Lag, Spelling, Store};
use crate::chunk::{Key, KeyType};
use crate::db::DbUrl;
use crate::sink::{Guard, SinkError, Update};
use crate::source::{
    ColumnInfo, Dialect, Layout, Rows, SourceError, TableInfo, TableRef, Timeouts,
};
use crate::throttle::health::{Blind, Finding, Health};
use crate::value::Value;

/// PostgreSQL, as a [`Driver`].
#[derive(Clone, Copy, Debug)]
pub struct Postgres;

impl Driver for Postgres {
    type Db = sqlx::Postgres;
    type Pool = sqlx::PgPool;

    const KIND: Backend = Backend::Postgres;
    const CAPABILITIES: Capabilities = Capabilities {
        schemas: true,
        workers: true,
        atomic_checkpoints: true,
        names_lock_holders: true,
        lag: Lag::Anywhere,
        lag_by_default: true,
        indicators: Indicators {
            vacuum: true,
            wal: true,
            active_backends: true,
            threads_running: false,
            history_length: false,
        },
    };
    const ADDRESS: Address = Address {
        schemes: &["postgres", "postgresql"],
        default_port: Some(5432),
    };
    const DIALECT: Dialect = read::DIALECT;
    const STORE: Store = Store {
        spelling: Spelling::Numbered,
        // `CREATE … IF NOT EXISTS` checks, then creates: two at once
        // collide on the table (42P07), its row type (42710) or the
        // catalog's unique index (23505).
        raced: |e| {
            Store::unique_violation(e)
                || matches!(e, sqlx::Error::Database(d)
                    if matches!(d.code().as_deref(), Some("42P07" | "42710")))
        },
        index_exists: |_| false,
        count_tables: "SELECT count(*) FROM information_schema.tables WHERE table_name = 'refill_runs' AND table_schema = ANY(current_schemas(false))",
        setup: &[],
        create: None,
        // A chunk's before-images are one value of a few hundred KiB,
        // compressed into TOAST with pglz by default: 1.7% of the
        // machine's CPU samples over a 1,000,000-row backfill. lz4
        // (PostgreSQL 14 and later, where built with it) compresses
        // faster; the server's CPU over the run came out lower but within
        // its spread, and the images took 5.4 MB for 35.6 MB of JSON. The
        // lock is waited for briefly: a store being made is not in use yet.
        tune: &[
            "SET LOCAL lock_timeout = 1000",
            "ALTER TABLE refill_images ALTER COLUMN data SET COMPRESSION lz4",
        ],
    };

    async fn connect(
        url: &DbUrl,
        connections: u32,
        timeout: Duration,
        _timeouts: &Timeouts,
        _writes: bool,
    ) -> Result<sqlx::PgPool, sqlx::Error> {
        read::connect(url, connections, timeout).await
    }

    async fn begin_read(
        pool: &sqlx::PgPool,
        timeout: Duration,
        lock: Duration,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        read::begin_read(pool, timeout, lock).await
    }

    async fn table(
        conn: &mut sqlx::PgConnection,
        table: &TableRef,
    ) -> Result<Option<TableInfo>, SourceError> {
        read::table(conn, table).await
    }

    async fn volatile_functions(
        pool: &sqlx::PgPool,
        timeouts: &Timeouts,
        table: &str,
        condition: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        read::volatile_functions(pool, timeouts, table, condition).await
    }

    fn committing(read: String) -> String {
        read::committing(&read)
    }

    fn bind_rows<'q>(
        rows: &Rows<'_>,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        key_type: KeyType,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        read::bind_rows(rows, query, key_type)
    }

    fn decode(row: &sqlx::postgres::PgRow, i: usize, column: &ColumnInfo) -> Result<Value, String> {
        read::decode(row, i, column)
    }

    async fn write(
        pool: &sqlx::PgPool,
        timeouts: &Timeouts,
        layout: &Layout,
        updates: &[Update],
        guard: Guard,
    ) -> Result<(Vec<Key>, Vec<Key>), SinkError> {
        write::write_bounded(pool, timeouts, layout, updates, guard).await
    }

    async fn holders(
        pool: &sqlx::PgPool,
        timeouts: &Timeouts,
        layout: &Layout,
        keys: &[Key],
    ) -> Result<Vec<(Key, String)>, sqlx::Error> {
        write::holders(pool, timeouts, layout, keys).await
    }

    fn reshapes(column: &ColumnInfo) -> bool {
        write::reshapes(column)
    }

    async fn reshape(
        pool: &sqlx::PgPool,
        timeouts: &Timeouts,
        layout: &Layout,
        rows: &mut [Vec<Value>],
    ) -> Result<(), SinkError> {
        write::reshape(pool, timeouts, layout, rows).await
    }

    fn failure(error: &(dyn sqlx::error::DatabaseError + 'static)) -> Option<Failure> {
        let code = error
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?
            .code();
        Some(match code {
            // Statement timeout (query canceled), lock not available.
            "57014" | "55P03" => Failure::TimedOut,
            // Serialization failure, deadlock, too many connections,
            // admin/crash shutdown, cannot connect now; connection
            // exceptions.
            "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03" => Failure::Transient,
            c if c.starts_with("08") => Failure::Transient,
            // A write in a read-only transaction.
            "25006" => Failure::WritesRefused,
            // Data exceptions, integrity constraints, a trigger's RAISE
            // EXCEPTION.
            c if c.starts_with("22") || c.starts_with("23") || c == "P0001" => {
                Failure::RefusedValue
            }
            _ => Failure::Other,
        })
    }

    async fn replica_lag(
        pool: &sqlx::PgPool,
        replica: bool,
        optional: bool,
        _name: &str,
    ) -> Result<Duration, String> {
        lag::replica_lag(pool, replica, optional).await
    }

    async fn health(pool: &sqlx::PgPool, health: &Health) -> Vec<Finding> {
        health::check(pool, health).await
    }

    async fn blind_spots(pool: &sqlx::PgPool, health: &Health) -> Result<Vec<Blind>, String> {
        health::blind_spots(pool, health).await
    }
}
