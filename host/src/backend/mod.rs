//! The databases refill talks to: consumes a [`DbUrl`], produces pools and
//! everything that differs between PostgreSQL, MySQL/MariaDB and SQLite,
//! behind one trait, [`Driver`], modelled on sqlx's `Database`.
//!
//! Each database has its folder (`postgres/`, `mysql/`, `sqlite/`) holding
//! everything it needs: connecting (read-only and writing sessions), its
//! catalog, decoding and binding values, its spelling of refill's queries,
//! guarded writes, which of its errors are transient, replica lag and
//! health indicators. Nothing outside this folder matches over the
//! database: it asks a [`Driver`], or the [`Capabilities`] one declares,
//! through [`on_backend!`], the one place that picks the driver of a pool.

pub mod mysql;
pub mod postgres;
pub mod sqlite;
mod statement;

pub use statement::{Spelling, Sql, store_sql};

use std::future::Future;
use std::time::Duration;

use crate::chunk::{Key, KeyType};
use crate::db::DbUrl;
use crate::sink::{Guard, SinkError, Update};
use crate::source::{
    ColumnInfo, Dialect, Layout, Rows, SourceError, TableInfo, TableRef, Timeouts,
};
use crate::throttle::health::{Blind, Finding, Health};
use crate::value::Value;

/// The database engines refill talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, through a file.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB (one wire protocol, one dialect).
    Mysql,
}

impl Backend {
    /// Every database refill knows.
    pub const ALL: [Backend; 3] = [Backend::Postgres, Backend::Mysql, Backend::Sqlite];

    /// The database whose urls start with `scheme` (before the `:`).
    pub fn of_scheme(scheme: &str) -> Option<Backend> {
        Backend::ALL
            .into_iter()
            .find(|b| address(*b).schemes.contains(&scheme))
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
            Backend::Mysql => "MySQL/MariaDB",
        })
    }
}

/// Where a database's replication lag can be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lag {
    /// Nowhere: it has no replicas.
    None,
    /// On a replica only (MySQL/MariaDB: a primary does not report its
    /// replicas' lag).
    OnReplica,
    /// On a replica, or on the primary for all its replicas.
    Anywhere,
}

/// The health indicators a database reports (see `docs/production.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one flag per indicator a database may have"
)]
pub struct Indicators {
    /// A VACUUM working on the target table.
    pub vacuum: bool,
    /// WAL generated per second, the archiver, replication slots.
    pub wal: bool,
    /// Client backends running a statement.
    pub active_backends: bool,
    /// `Threads_running`.
    pub threads_running: bool,
    /// The InnoDB history list length.
    pub history_length: bool,
}

/// What a database can do, as far as refill relies on it. Code outside
/// this folder asks these instead of naming the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one flag per capability refill relies on"
)]
pub struct Capabilities {
    /// Tables may live in a schema named in the spec (SQLite has only
    /// `main`).
    pub schemas: bool,
    /// A state store here can coordinate distributed workers: leases with
    /// fencing tokens and `FOR UPDATE SKIP LOCKED` claims.
    pub workers: bool,
    /// With the state store in the same database, a chunk's writes and its
    /// checkpoint commit in one transaction (see [`Atomic`]).
    pub atomic_checkpoints: bool,
    /// Who holds a locked row can be named without waiting for it.
    pub names_lock_holders: bool,
    /// Where replication lag is read.
    pub lag: Lag,
    /// A gentle run watches the replicas' lag unless the spec says
    /// otherwise.
    pub lag_by_default: bool,
    /// The health indicators it reports.
    pub indicators: Indicators,
}

/// What a database error means to refill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A statement ran or waited past its timeout: transient, and a write
    /// that times out is split.
    TimedOut,
    /// Worth trying again: a lost connection, a restart, a deadlock, a
    /// serialization failure, too many connections, a busy database.
    Transient,
    /// The database refused a value: a data exception, a constraint, a
    /// trigger's error. The row is a dead letter; the rest are written.
    RefusedValue,
    /// It tried to write in a read-only transaction or connection.
    WritesRefused,
    /// Anything else: permanent.
    Other,
}

/// How a database's urls look.
#[derive(Debug)]
pub struct Address {
    /// The schemes that name it: `postgres` in `postgres://…`.
    pub schemes: &'static [&'static str],
    /// Its server's port when a url names none; `None` for a database
    /// in a file, whose url is a path (resolved against the spec's
    /// folder).
    pub default_port: Option<u16>,
}

/// How a database hosts refill's state store, whose statements are
/// written once, with [`store_sql!`], in every [`Spelling`].
#[derive(Debug)]
pub struct Store {
    /// Which spelling of a statement the database takes.
    pub spelling: Spelling,
    /// Whether a definition failed because another process made the same
    /// table at the same time: trying again finds it made.
    pub raced: fn(&sqlx::Error) -> bool,
    /// Whether a definition failed only because its index exists (where
    /// `CREATE INDEX IF NOT EXISTS` is missing).
    pub index_exists: fn(&sqlx::Error) -> bool,
    /// Counts the `refill_runs` tables the session sees.
    pub count_tables: &'static str,
    /// Statements each new connection runs first.
    pub setup: &'static [&'static str],
    /// What the url of a store refill may create needs added, if it lacks
    /// a `mode=` (SQLite's `mode=rwc`).
    pub create: Option<&'static str>,
    /// Statements run in one transaction after the tables are made, to
    /// make them cheaper to write. Best effort: where the server refuses
    /// one (an older version, a feature it was built without), the store
    /// works as made.
    pub tune: &'static [&'static str],
}

impl Store {
    /// Whether `error` is a unique violation: how a database tells a
    /// second creator of a table that the first one won.
    pub(crate) fn unique_violation(error: &sqlx::Error) -> bool {
        matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
    }
}

/// One database, as refill uses it. Every function is static: the driver
/// is a type (`Postgres`, `Mysql`, `Sqlite`), picked once per pool by
/// [`on_backend!`].
pub trait Driver: Sized + Send + Sync + 'static {
    /// The sqlx database.
    type Db: sqlx::Database;
    /// Its pools: reading and, on a database connected for writing,
    /// writing.
    type Pool: Clone + std::fmt::Debug + Send + Sync;

    /// Which database it is, for messages.
    const KIND: Backend;
    /// What it can do.
    const CAPABILITIES: Capabilities;
    /// How it spells the parts of the queries refill builds.
    const DIALECT: Dialect;
    /// How it hosts the state store.
    const STORE: Store;
    /// How its urls look.
    const ADDRESS: Address;

    /// Opens its pools: for reading, and for writing if `writes`.
    fn connect(
        url: &DbUrl,
        connections: u32,
        timeout: Duration,
        timeouts: &Timeouts,
        writes: bool,
    ) -> impl Future<Output = Result<Self::Pool, sqlx::Error>> + Send;

    /// Starts a read-only transaction whose statements end after
    /// `timeout` and wait at most `lock` for a lock.
    fn begin_read(
        pool: &Self::Pool,
        timeout: Duration,
        lock: Duration,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send;

    /// The catalog entry of `table`, or `None` if there is none.
    fn table(
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        table: &TableRef,
    ) -> impl Future<Output = Result<Option<TableInfo>, SourceError>> + Send;

    /// The functions `condition` (on `table`, quoted) calls that may
    /// write. None by default: a database whose functions cannot write.
    fn volatile_functions(
        pool: &Self::Pool,
        timeouts: &Timeouts,
        table: &str,
        condition: &str,
    ) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send {
        let _ = (pool, timeouts, table, condition);
        async { Ok(Vec::new()) }
    }

    /// A read that a writing run makes commit like the application does;
    /// the read itself by default.
    fn committing(read: String) -> String {
        read
    }

    /// Binds the parameters of a chunk query in the order its SQL numbers
    /// them.
    fn bind_rows<'q>(
        rows: &Rows<'_>,
        query: sqlx::query::Query<'q, Self::Db, <Self::Db as sqlx::Database>::Arguments>,
        key_type: KeyType,
    ) -> sqlx::query::Query<'q, Self::Db, <Self::Db as sqlx::Database>::Arguments>;

    /// Decodes column `i` of `row`, of catalog entry `column`, into a
    /// value; says why not.
    fn decode(
        row: &<Self::Db as sqlx::Database>::Row,
        i: usize,
        column: &ColumnInfo,
    ) -> Result<Value, String>;

    /// Whether a column of this SQL type (as the catalog names it) cannot
    /// be read or written.
    fn unsupported(type_name: &str) -> bool {
        let _ = type_name;
        false
    }

    /// Why a key column of this SQL type cannot key a run (a phrase that
    /// follows `column "k"`), if it cannot.
    fn refuses_key(sql_type: &str) -> Option<String> {
        let _ = sql_type;
        None
    }

    /// Writes `updates` where `guard` holds; returns the keys written and
    /// those skipped because someone else holds their rows locked.
    fn write(
        pool: &Self::Pool,
        timeouts: &Timeouts,
        layout: &Layout,
        updates: &[Update],
        guard: Guard,
    ) -> impl Future<Output = Result<(Vec<Key>, Vec<Key>), SinkError>> + Send;

    /// Who holds the target rows of `keys` locked, where the database can
    /// tell without waiting; no one by default.
    fn holders(
        pool: &Self::Pool,
        timeouts: &Timeouts,
        layout: &Layout,
        keys: &[Key],
    ) -> impl Future<Output = Result<Vec<(Key, String)>, sqlx::Error>> + Send {
        let _ = (pool, timeouts, layout, keys);
        async { Ok(Vec::new()) }
    }

    /// Whether the database may store a value of `column` otherwise than
    /// it is sent (a `FLOAT` rounded to single precision, a `CHAR`
    /// padded).
    fn reshapes(column: &ColumnInfo) -> bool {
        let _ = column;
        false
    }

    /// Replaces `rows`' output values with the form the target stores
    /// them in; called only when some output [`Driver::reshapes`].
    fn reshape(
        pool: &Self::Pool,
        timeouts: &Timeouts,
        layout: &Layout,
        rows: &mut [Vec<Value>],
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = (pool, timeouts, layout, rows);
        async { Ok(()) }
    }

    /// Computed output values in the form the target will store them in,
    /// so that comparing them with what a row holds says whether writing
    /// would change it; `None` when it stores every value as sent (and
    /// then nothing is copied).
    fn stored_form(
        pool: &Self::Pool,
        timeouts: &Timeouts,
        layout: &Layout,
        rows: &[&[Value]],
    ) -> impl Future<Output = Result<Option<Vec<Vec<Value>>>, SinkError>> + Send {
        async move {
            if !layout.outputs.iter().any(Self::reshapes) {
                return Ok(None);
            }
            let mut rows: Vec<Vec<Value>> = rows.iter().map(|r| r.to_vec()).collect();
            Self::reshape(pool, timeouts, layout, &mut rows).await?;
            Ok(Some(rows))
        }
    }

    /// What an error of this database means, or `None` if it is not one
    /// of its errors.
    fn failure(error: &(dyn sqlx::error::DatabaseError + 'static)) -> Option<Failure>;

    /// The replication lag: on a replica (`replica`) or, for all its
    /// replicas, on a primary. `optional`: a gentle run's default, which a
    /// role that cannot see the replicas skips.
    fn replica_lag(
        pool: &Self::Pool,
        replica: bool,
        optional: bool,
        name: &str,
    ) -> impl Future<Output = Result<Duration, String>> + Send {
        let _ = (pool, replica, optional, name);
        async { Err(format!("{} has no replicas", Self::KIND)) }
    }

    /// Measures the health indicators `health` has on.
    fn health(pool: &Self::Pool, health: &Health) -> impl Future<Output = Vec<Finding>> + Send {
        let _ = (pool, health);
        async { Vec::new() }
    }

    /// What the role cannot see that an indicator on needs.
    fn blind_spots(
        pool: &Self::Pool,
        health: &Health,
    ) -> impl Future<Output = Result<Vec<Blind>, String>> + Send {
        let _ = (pool, health);
        async { Ok(Vec::new()) }
    }
}

/// Connects once with `options`, within `timeout`, and closes the
/// connection: a pool that cannot connect only reports that it timed out,
/// this says why (refused, unknown database, wrong password).
pub(crate) async fn probe<O: sqlx::ConnectOptions>(
    options: &O,
    timeout: Duration,
) -> Result<(), sqlx::Error>
where
    O::Connection: Sized,
{
    let conn = tokio::time::timeout(timeout, options.connect())
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    sqlx::Connection::close(conn).await
}

/// Options of a pool of `connections` that waits at most `timeout` for
/// one.
pub(crate) fn pool_options<DB: sqlx::Database>(
    connections: u32,
    timeout: Duration,
) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(timeout)
}

/// Decodes the kinds PostgreSQL and MySQL/MariaDB read alike (a float,
/// bytes, JSON, text); `None` for the kinds each reads its own way.
pub(crate) fn decode_common<'r, R>(
    row: &'r R,
    i: usize,
    kind: &crate::value::ColumnKind,
) -> Result<Option<Value>, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    use crate::value::ColumnKind;
    Ok(Some(match kind {
        ColumnKind::Float => row
            .try_get::<Option<f64>, _>(i)?
            .map_or(Value::Null, Value::Float),
        ColumnKind::Bytes => row
            .try_get::<Option<Vec<u8>>, _>(i)?
            .map_or(Value::Null, Value::Bytes),
        ColumnKind::Json => row
            .try_get::<Option<String>, _>(i)?
            .map_or(Value::Null, Value::Json),
        ColumnKind::Text | ColumnKind::TextForm(_) | ColumnKind::Any => row
            .try_get::<Option<String>, _>(i)?
            .map_or(Value::Null, Value::Text),
        ColumnKind::Integer | ColumnKind::Boolean | ColumnKind::Timestamp => return Ok(None),
    }))
}

/// The capabilities of `backend`.
pub fn capabilities(backend: Backend) -> &'static Capabilities {
    match backend {
        Backend::Postgres => &<postgres::Postgres as Driver>::CAPABILITIES,
        Backend::Mysql => &<mysql::Mysql as Driver>::CAPABILITIES,
        Backend::Sqlite => &<sqlite::Sqlite as Driver>::CAPABILITIES,
    }
}

/// How `backend`'s urls look.
pub fn address(backend: Backend) -> &'static Address {
    match backend {
        Backend::Postgres => &<postgres::Postgres as Driver>::ADDRESS,
        Backend::Mysql => &<mysql::Mysql as Driver>::ADDRESS,
        Backend::Sqlite => &<sqlite::Sqlite as Driver>::ADDRESS,
    }
}

/// How `backend` hosts the state store.
pub fn store(backend: Backend) -> &'static Store {
    match backend {
        Backend::Postgres => &<postgres::Postgres as Driver>::STORE,
        Backend::Mysql => &<mysql::Mysql as Driver>::STORE,
        Backend::Sqlite => &<sqlite::Sqlite as Driver>::STORE,
    }
}

/// The databases that have a capability, for messages ("measured on
/// PostgreSQL only").
pub fn having(has: impl Fn(&Capabilities) -> bool) -> String {
    let names: Vec<String> = Backend::ALL
        .into_iter()
        .filter(|b| has(capabilities(*b)))
        .map(|b| b.to_string())
        .collect();
    names.join(" and ")
}

/// The pools of a database, one variant per driver.
#[derive(Clone, Debug)]
pub enum Pools {
    /// PostgreSQL: reads run in read-only transactions, writes in
    /// read-write ones, on one pool.
    Postgres(<postgres::Postgres as Driver>::Pool),
    /// MySQL or MariaDB, as PostgreSQL.
    Mysql(<mysql::Mysql as Driver>::Pool),
    /// SQLite: reads go through connections opened read-only; a writing
    /// database has a second, writable pool.
    Sqlite(<sqlite::Sqlite as Driver>::Pool),
}

/// Evaluates `$body` with `$d` the [`Driver`] of `$pools` (a type) and
/// `$pool` its pool: the one place that matches over the database.
#[macro_export]
#[doc(hidden)]
macro_rules! on_backend {
    ($pools:expr, |$d:ident, $pool:ident| $body:expr) => {{
        #[allow(unused_imports, reason = "not every body calls the driver")]
        use $crate::backend::Driver as _;
        match $pools {
            $crate::backend::Pools::Postgres($pool) => {
                type $d = $crate::backend::postgres::Postgres;
                $body
            }
            $crate::backend::Pools::Mysql($pool) => {
                type $d = $crate::backend::mysql::Mysql;
                $body
            }
            $crate::backend::Pools::Sqlite($pool) => {
                type $d = $crate::backend::sqlite::Sqlite;
                $body
            }
        }
    }};
}
pub use on_backend;

impl Pools {
    /// Opens the pools of `url`: for writing too if `writes`.
    pub async fn connect(
        url: &DbUrl,
        connections: u32,
        timeout: Duration,
        timeouts: &Timeouts,
        writes: bool,
    ) -> Result<Pools, sqlx::Error> {
        Ok(match url.backend() {
            Backend::Postgres => Pools::Postgres(
                postgres::Postgres::connect(url, connections, timeout, timeouts, writes).await?,
            ),
            Backend::Mysql => Pools::Mysql(
                mysql::Mysql::connect(url, connections, timeout, timeouts, writes).await?,
            ),
            Backend::Sqlite => Pools::Sqlite(
                sqlite::Sqlite::connect(url, connections, timeout, timeouts, writes).await?,
            ),
        })
    }

    /// Which database they are.
    pub fn backend(&self) -> Backend {
        on_backend!(self, |D, _pool| D::KIND)
    }

    /// What it can do.
    pub fn capabilities(&self) -> &'static Capabilities {
        on_backend!(self, |D, _pool| &D::CAPABILITIES)
    }

    /// How it spells refill's queries.
    pub fn dialect(&self) -> &'static Dialect {
        on_backend!(self, |D, _pool| &D::DIALECT)
    }

    /// One transaction on the target for a chunk's writes and its
    /// checkpoint, where the database has them.
    pub fn atomic(&self) -> Option<Atomic> {
        if !self.capabilities().atomic_checkpoints {
            return None;
        }
        match self {
            Pools::Postgres(pool) => Some(Atomic(pool.clone())),
            _ => None,
        }
    }
}

/// A database where a chunk's writes and its checkpoint commit in one
/// transaction ([`Capabilities::atomic_checkpoints`]): the target, with
/// the state store in it.
#[derive(Clone, Debug)]
pub struct Atomic(sqlx::PgPool);

/// A transaction of an [`Atomic`] database.
pub struct AtomicTx(sqlx::Transaction<'static, sqlx::Postgres>);

/// The sqlx database of an [`AtomicTx`].
pub(crate) type AtomicDb = sqlx::Postgres;

impl Atomic {
    /// Starts a read-write transaction whose statements end after `timeout`
    /// and wait at most `lock` for a lock.
    pub async fn begin(&self, timeout: Duration, lock: Duration) -> Result<AtomicTx, sqlx::Error> {
        postgres::begin_write(&self.0, timeout, lock)
            .await
            .map(AtomicTx)
    }
}

impl AtomicTx {
    /// The database it is on.
    pub(crate) const BACKEND: Backend = Backend::Postgres;

    /// Its connection, for the state store's and the sink's statements.
    pub(crate) fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.0
    }

    /// Writes `updates` where `guard` holds, in one statement under a
    /// savepoint: a refused value undoes only that statement.
    pub(crate) async fn write_in_savepoint(
        &mut self,
        layout: &Layout,
        updates: &[Update],
        guard: Guard,
    ) -> Result<(Vec<Key>, Vec<Key>), SinkError> {
        postgres::write::in_savepoint(&mut self.0, layout, updates, guard).await
    }

    /// Commits it.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.0.commit().await
    }

    /// Rolls it back.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.0.rollback().await
    }
}

/// What `error` means to refill.
pub fn failure(error: &sqlx::Error) -> Failure {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Failure::Transient,
        sqlx::Error::Protocol(message)
            if message.contains("connection") || message.contains("closed") =>
        {
            Failure::Transient
        }
        sqlx::Error::Database(db) => {
            let db: &(dyn sqlx::error::DatabaseError + 'static) = &**db;
            postgres::Postgres::failure(db)
                .or_else(|| mysql::Mysql::failure(db))
                .or_else(|| sqlite::Sqlite::failure(db))
                .unwrap_or(Failure::Other)
        }
        _ => Failure::Other,
    }
}

/// Whether a retry may get past `error` (see [`Failure::Transient`] and
/// [`Failure::TimedOut`]).
pub fn transient(error: &sqlx::Error) -> bool {
    matches!(failure(error), Failure::Transient | Failure::TimedOut)
}

/// Whether `error` is a statement or lock timeout.
pub fn timed_out(error: &sqlx::Error) -> bool {
    failure(error) == Failure::TimedOut
}

/// Whether the database refused a value rather than failing.
pub fn refuses_a_value(error: &sqlx::Error) -> bool {
    failure(error) == Failure::RefusedValue
}

/// Whether the database refused a statement because it tried to write in
/// a read-only session.
pub fn writes_refused(error: &sqlx::Error) -> bool {
    failure(error) == Failure::WritesRefused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_without_a_database_are_classified() {
        assert!(transient(&sqlx::Error::PoolTimedOut));
        assert!(transient(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(!transient(&sqlx::Error::RowNotFound));
        assert!(!transient(&sqlx::Error::ColumnNotFound("x".into())));
    }

    /// The error `sql` fails with on `conn`.
    async fn error_of<C>(conn: &mut C, sql: &'static str) -> sqlx::Error
    where
        for<'c> &'c mut C: sqlx::Executor<'c>,
    {
        match sqlx::raw_sql(sql).execute(conn).await {
            Ok(_) => panic!("{sql} succeeded"),
            Err(e) => e,
        }
    }

    #[tokio::test]
    async fn sqlite_errors_are_classified_by_their_result_code() {
        use sqlx::Connection as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let url = format!("sqlite:{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open");
        sqlx::raw_sql(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL CHECK (v > 0)) STRICT",
        )
        .execute(&mut conn)
        .await
        .expect("create");
        for refused in [
            "INSERT INTO t VALUES (1, 0)",
            "INSERT INTO t VALUES (1, NULL)",
            "INSERT INTO t VALUES (1, 'text')",
        ] {
            let e = error_of(&mut conn, refused).await;
            assert_eq!(failure(&e), Failure::RefusedValue, "{refused}: {e}");
        }
        let e = error_of(&mut conn, "SELECT * FROM missing").await;
        assert_eq!(failure(&e), Failure::Other, "{e}");
        let options = url.replace("mode=rwc", "mode=ro");
        let mut read_only = sqlx::SqliteConnection::connect(&options)
            .await
            .expect("open");
        let e = error_of(&mut read_only, "INSERT INTO t VALUES (2, 2)").await;
        assert!(writes_refused(&e), "{e}");
    }

    #[tokio::test]
    async fn postgres_errors_are_classified_by_their_sqlstate() {
        use sqlx::Connection as _;
        let url = crate::db::test_postgres_url();
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        let e = error_of(&mut conn, "SELECT 1 / 0").await;
        assert!(refuses_a_value(&e), "{e}");
        let e = error_of(&mut conn, "SET statement_timeout = 10; SELECT pg_sleep(1)").await;
        assert!(timed_out(&e) && transient(&e), "{e}");
        let e = error_of(
            &mut conn,
            "RESET statement_timeout; BEGIN READ ONLY; CREATE TEMPORARY TABLE refill_x (a int)",
        )
        .await;
        assert!(writes_refused(&e) && !transient(&e), "{e}");
        let e = error_of(&mut conn, "ROLLBACK; SELECT * FROM refill_no_such_table").await;
        assert_eq!(failure(&e), Failure::Other, "{e}");
    }
}
