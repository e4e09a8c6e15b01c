//! Reading rows: consumes a database url and the tables and columns a plan
//! resolved, produces the tables' catalog entries, the run's scope (row
//! count and high-watermark key) and key-ordered chunks of rows, each with
//! the transform's inputs and the target columns' current values.
//!
//! Every identifier that reaches SQL is quoted by its backend's
//! [`Dialect`] (double quotes on PostgreSQL and SQLite, backticks on
//! MySQL/MariaDB); the only SQL taken from a spec as written is its `where`
//! condition.

use std::time::Duration;

use sqlx::Row as _;

use crate::backend::{Backend, Capabilities, Pools, on_backend};
use crate::chunk::{Key, KeyType};
use crate::db::DbUrl;
use crate::value::{ColumnKind, Row, Value};

/// Errors of the source stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Could not connect.
    #[error("cannot connect to {url}: {}", crate::db::describe(error))]
    Connect {
        /// The masked url.
        url: String,
        /// Why.
        error: sqlx::Error,
    },
    /// A SQLite database file is not there.
    #[error("SQLite database {0} does not exist; check [source] url")]
    Missing(String),
    /// A query failed.
    #[error("{}", query_message(what, table, error))]
    Query {
        /// What was being done.
        what: &'static str,
        /// The table, quoted.
        table: String,
        /// Why.
        error: sqlx::Error,
    },
    /// A value could not be decoded.
    #[error("cannot read column {column} of {table}{}: {message}", key.as_ref().map(|k| format!(" at key {k}")).unwrap_or_default())]
    Decode {
        /// The table, quoted.
        table: String,
        /// The column.
        column: String,
        /// The row's key, once it could be read.
        key: Option<String>,
        /// What went wrong.
        message: String,
    },
}

impl SourceError {
    /// What a failed read of `table`'s catalog entry becomes.
    pub fn catalog(table: &TableRef) -> impl Fn(sqlx::Error) -> SourceError + Copy + '_ {
        move |error| SourceError::Query {
            what: "reading the catalog",
            table: table.quoted(),
            error,
        }
    }

    /// A query's error.
    pub fn query(what: &'static str, table: String, error: sqlx::Error) -> SourceError {
        SourceError::Query { what, table, error }
    }

    /// Whether the database refused a write in a statement refill ran
    /// read-only: SQL from the spec tried to write.
    pub fn writes_refused(&self) -> bool {
        matches!(self, SourceError::Query { error, .. } if crate::backend::writes_refused(error))
    }
}

/// A failed query in one line; one that tried to write in a read-only
/// statement names the spec's `where`, the only SQL of a spec that reads
/// of the source carry.
fn query_message(what: &str, table: &str, error: &sqlx::Error) -> String {
    if crate::backend::writes_refused(error) {
        return format!(
            "the spec's [source] where tried to write while {what} on {table} ({}): refill \
             runs its reads read-only, so nothing was written; remove the writing function \
             from the condition",
            crate::db::describe(error)
        );
    }
    format!("{what} failed on {table}: {}", crate::db::describe(error))
}

impl crate::backoff::Transient for SourceError {
    fn is_transient(&self) -> bool {
        match self {
            SourceError::Connect { error, .. } | SourceError::Query { error, .. } => {
                crate::backend::transient(error)
            }
            _ => false,
        }
    }
}

/// Quotes an SQL identifier for PostgreSQL and SQLite: wraps it in double
/// quotes and doubles any double quote inside. This is also how messages
/// show names, whatever the backend.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Marks SQL that refill built as safe to send: every identifier in it went
/// through its dialect's quoting, values are bound as parameters, and the only text
/// pasted as written is the spec's reviewed `where` condition.
pub(crate) fn built<S>(sql: S) -> sqlx::AssertSqlSafe<S> {
    sqlx::AssertSqlSafe(sql)
}

/// A table, possibly schema-qualified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRef {
    /// The schema, if given.
    pub schema: Option<String>,
    /// The table name.
    pub name: String,
}

impl TableRef {
    /// The qualified name quoted with double quotes: for messages, and for
    /// SQL on PostgreSQL and SQLite ([`Dialect::table`] quotes for any
    /// backend).
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote(s), quote(&self.name)),
            None => quote(&self.name),
        }
    }
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.quoted())
    }
}

/// A column as the catalog describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Its name.
    pub name: String,
    /// Its SQL type as the database spells it (`character varying(20)`).
    pub sql_type: String,
    /// The name of its base type (PostgreSQL's `typname`, such as
    /// `timestamptz`; SQLite's declared type).
    pub type_name: String,
    /// How refill reads and writes it.
    pub kind: ColumnKind,
    /// Whether it is declared NOT NULL.
    pub not_null: bool,
    /// Whether it alone is the primary key or a unique key.
    pub unique: bool,
    /// Its collation, where the backend needs it spelled out to compare a
    /// bound value the way the column compares (MySQL: `utf8mb4_0900_ai_ci`).
    pub collation: Option<String>,
}

impl ColumnInfo {
    /// The key type this column can serve as, if any.
    pub fn key_type(&self) -> Option<KeyType> {
        match self.kind {
            ColumnKind::Integer => Some(KeyType::Integer),
            ColumnKind::Text => Some(KeyType::Text),
            _ => None,
        }
    }
}

/// A table as the catalog describes it.
#[derive(Clone, Debug)]
pub struct TableInfo {
    /// Which table.
    pub table: TableRef,
    /// Its columns, in declaration order.
    pub columns: Vec<ColumnInfo>,
}

impl TableInfo {
    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The column names, for "it has: …" messages.
    pub fn column_names(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a run reads and writes, resolved against the catalog.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The table read.
    pub source: TableRef,
    /// Its key column.
    pub key: ColumnInfo,
    /// The key's type.
    pub key_type: KeyType,
    /// The columns handed to the transform, in order.
    pub inputs: Vec<ColumnInfo>,
    /// The `where` condition, as written in the spec.
    pub scope: Option<String>,
    /// The table written.
    pub target: TableRef,
    /// The target's key column.
    pub target_key: ColumnInfo,
    /// The columns written, in order.
    pub outputs: Vec<ColumnInfo>,
}

impl Layout {
    /// Whether the target is the source table.
    pub fn same_table(&self) -> bool {
        self.source == self.target && self.key.name == self.target_key.name
    }

    /// The source's scope condition for SQL, or an always-true one.
    pub(crate) fn scope_sql(&self) -> String {
        match &self.scope {
            Some(s) => format!("({s})"),
            None => "1 = 1".to_string(),
        }
    }
}

/// The rows a run covers, fixed when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Rows in scope, with a key.
    pub rows: u64,
    /// Rows in scope whose key is NULL, which no chunk can address.
    pub null_keys: u64,
    /// The smallest key in scope.
    pub first: Option<Key>,
    /// The largest key in scope: rows inserted later with larger keys are
    /// not chased.
    pub high_watermark: Option<Key>,
}

/// The rows of one chunk, in key order.
#[derive(Debug, Default)]
pub struct ChunkRows {
    /// Each row's key.
    pub keys: Vec<Key>,
    /// What the transform receives, one per key.
    pub rows: Vec<Row>,
    /// The target columns' values now, one per key; `None` where the target
    /// table has no row with that key.
    pub current: Vec<Option<Vec<Value>>>,
    /// The inputs' guard tokens, one per key, when they were read (and the
    /// backend uses tokens).
    pub tokens: Vec<Option<String>>,
    /// Why a row's values could not be read, one per key (`None` for the
    /// rows read whole). An unreadable row holds NULLs in their place; it
    /// is never handed to the transform, and fails on its own.
    pub unreadable: Vec<Option<String>>,
    /// The bytes of the values read, roughly (see [`value_bytes`]).
    pub bytes: u64,
    /// Whether rows may follow in the read's range: it stopped at its
    /// byte bound before its row limit (or, for the pipeline's keyset
    /// reads, at either).
    pub cut: bool,
}

/// The bytes a value takes in memory, roughly: its text or bytes, or 8.
pub fn value_bytes(value: &Value) -> u64 {
    match value {
        Value::Text(s) | Value::Json(s) => s.len() as u64,
        Value::Bytes(b) => b.len() as u64,
        _ => 8,
    }
}

impl ChunkRows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn push(
        &mut self,
        key: Key,
        inputs: Vec<Value>,
        current: Option<Vec<Value>>,
        token: Option<String>,
        unreadable: Option<String>,
    ) {
        self.bytes += inputs
            .iter()
            .chain(current.iter().flatten())
            .map(value_bytes)
            .sum::<u64>();
        self.rows.push(Row {
            key: key.to_wit(),
            values: inputs,
        });
        self.keys.push(key);
        self.current.push(current);
        self.tokens.push(token);
        self.unreadable.push(unreadable);
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> ChunkRows {
        ChunkRows {
            keys: indices.iter().map(|&i| self.keys[i].clone()).collect(),
            rows: indices.iter().map(|&i| self.rows[i].clone()).collect(),
            current: indices.iter().map(|&i| self.current[i].clone()).collect(),
            tokens: indices.iter().map(|&i| self.tokens[i].clone()).collect(),
            unreadable: indices
                .iter()
                .map(|&i| self.unreadable[i].clone())
                .collect(),
            bytes: indices
                .iter()
                .map(|&i| {
                    self.rows[i]
                        .values
                        .iter()
                        .chain(self.current[i].iter().flatten())
                        .map(value_bytes)
                        .sum::<u64>()
                })
                .sum(),
            cut: false,
        }
    }

    /// Appends the rows of `other`, read after these.
    pub fn extend(&mut self, other: ChunkRows) {
        self.bytes += other.bytes;
        self.cut = other.cut;
        self.keys.extend(other.keys);
        self.rows.extend(other.rows);
        self.current.extend(other.current);
        self.tokens.extend(other.tokens);
        self.unreadable.extend(other.unreadable);
    }
}

/// How long refill's statements may run, and wait for a lock, by kind of
/// statement: a bad plan cannot run for minutes, and no statement queues
/// for long behind the application's locks (see docs/production.md, "Protecting
/// production").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Reads of a chunk, of rows by key, of the catalog; probes; lookup
    /// queries.
    pub read: Duration,
    /// Scans of the whole scope at plan time (the count, chunk bounds).
    pub scan: Duration,
    /// A chunk's write.
    pub write: Duration,
    /// The longest any statement waits for a lock (MySQL/MariaDB count
    /// whole seconds, at least 1).
    pub lock: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            read: Duration::from_secs(60),
            scan: Duration::from_secs(3600),
            write: Duration::from_secs(60),
            lock: Duration::from_secs(1),
        }
    }
}

/// The source (and target) database. Every statement refill reads with,
/// including the spec's `where`, lookup queries and probes, runs read-only
/// (a `BEGIN READ ONLY` transaction on PostgreSQL, `START TRANSACTION READ
/// ONLY` on MySQL/MariaDB, a connection opened read-only on SQLite), so SQL
/// from a spec cannot write whatever it calls. Only the sink writes, and
/// only on a database connected with [`Database::connect_writer`].
#[derive(Clone, Debug)]
pub struct Database {
    pools: Pools,
    timeouts: Timeouts,
    writes: bool,
}

/// Runs `$body`, with `$conn` a connection of `$db` (a `&mut` to the
/// backend's connection type) and `$d` its [`Driver`](crate::backend::Driver),
/// inside a read-only session whose statements end after `$timeout`.
/// `$body` evaluates to a `Result<T, sqlx::Error>`; so does the macro.
macro_rules! read_only {
    ($db:expr, $timeout:expr, |$conn:ident, $d:ident| $body:expr) => {{
        let timeout: ::std::time::Duration = $timeout;
        let lock = $db.timeouts.lock;
        on_backend!(&$db.pools, |$d, pool| {
            async {
                let mut session = $d::begin_read(pool, timeout, lock).await?;
                let out: Result<_, sqlx::Error> = {
                    let $conn = &mut *session;
                    $body
                };
                let out = out?;
                session.commit().await?;
                Ok::<_, sqlx::Error>(out)
            }
            .await
        })
    }};
}

impl Database {
    /// Connects for reading only, with room for `connections` concurrent
    /// queries: what `plan`, dry runs, `verify`, `status` and probes use.
    pub async fn connect(url: &DbUrl, connections: u32) -> Result<Database, SourceError> {
        Database::open(url, connections, Timeouts::default(), false).await
    }

    /// Connects for reading and, through the sink, writing.
    pub async fn connect_writer(url: &DbUrl, connections: u32) -> Result<Database, SourceError> {
        Database::open(url, connections, Timeouts::default(), true).await
    }

    /// Connects with `timeouts`; for writing if `writes`.
    pub async fn open(
        url: &DbUrl,
        connections: u32,
        timeouts: Timeouts,
        writes: bool,
    ) -> Result<Database, SourceError> {
        let connect_error = |error| SourceError::Connect {
            url: url.masked(),
            error,
        };
        let timeout = Duration::from_secs(10);
        if let Some(path) = url.sqlite_path()
            && !path.exists()
        {
            return Err(SourceError::Missing(path.display().to_string()));
        }
        let pools = Pools::connect(url, connections, timeout, &timeouts, writes)
            .await
            .map_err(connect_error)?;
        Ok(Database {
            pools,
            timeouts,
            writes,
        })
    }

    /// Connects to a spec's source with its `[timeouts]`, for writing if
    /// `writes` (an executing run, retry or rollback).
    pub async fn for_spec(
        spec: &crate::spec::Spec,
        connections: u32,
        writes: bool,
    ) -> Result<Database, SourceError> {
        let timeouts = spec.file.timeouts.statements();
        Database::open(&spec.source_url, connections, timeouts, writes).await
    }

    /// The same database with other timeouts.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Database {
        self.timeouts = timeouts;
        self
    }

    /// Its timeouts.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Its pools, for refill's own queries of server state (replica lag,
    /// health indicators): never for SQL from a spec.
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// Whether it was connected for writing.
    pub fn writes(&self) -> bool {
        self.writes
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.pools.backend()
    }

    /// What the backend can do.
    pub fn capabilities(&self) -> &'static Capabilities {
        self.pools.capabilities()
    }

    /// How this backend spells refill's queries.
    pub fn dialect(&self) -> &'static Dialect {
        self.pools.dialect()
    }

    /// Why a key column of `sql_type` cannot key a run here, if it cannot.
    pub fn refuses_key(&self, sql_type: &str) -> Option<String> {
        on_backend!(&self.pools, |B, _pool| B::refuses_key(sql_type))
    }

    /// Whether a column of this type (as the catalog names it) cannot be
    /// read or written here.
    pub fn unsupported(&self, type_name: &str) -> bool {
        on_backend!(&self.pools, |B, _pool| B::unsupported(type_name))
    }

    /// The catalog entry of `table`, or `None` if there is no such table.
    pub async fn table(&self, table: &TableRef) -> Result<Option<TableInfo>, SourceError> {
        read_only!(self, self.timeouts.read, |conn, B| Ok(B::table(
            conn, table
        )
        .await))
        .map_err(|error| SourceError::query("reading the catalog", table.quoted(), error))?
    }

    /// Checks that `condition` is a valid `where` condition on `table`.
    /// Fails with the database's message if it is not.
    pub async fn check_scope(&self, table: &TableRef, condition: &str) -> Result<(), sqlx::Error> {
        let sql = format!(
            "SELECT 1 FROM {} WHERE ({condition}) LIMIT 0",
            self.dialect().table(table)
        );
        read_only!(self, self.timeouts.read, |conn, B| sqlx::query(built(sql))
            .execute(conn)
            .await
            .map(drop))
    }

    /// The functions `condition` calls that may write (see
    /// `Driver::volatile_functions`); none
    /// on SQLite, whose functions cannot write.
    pub async fn volatile_functions(
        &self,
        table: &TableRef,
        condition: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let table = self.dialect().table(table);
        on_backend!(&self.pools, |B, pool| B::volatile_functions(
            pool,
            &self.timeouts,
            &table,
            condition
        )
        .await)
    }

    /// Times a cheap indexed point read of `table`: the first key of its
    /// `key` column (what the gentle limiter measures the database's
    /// latency by), read-only and bounded like every read.
    pub async fn point_read(&self, table: &TableRef, key: &str) -> Result<Duration, sqlx::Error> {
        let d = self.dialect();
        let key = (d.quote)(key);
        let read = format!("SELECT 1 FROM {} ORDER BY {key} LIMIT 1", d.table(table));
        // A writing run's read commits like the application does (see
        // `Driver::committing`); a read-only one stays one read.
        let sql = match self.writes {
            true => on_backend!(&self.pools, |B, _pool| B::committing(read)),
            false => read,
        };
        let started = std::time::Instant::now();
        read_only!(self, self.timeouts.read, |conn, B| sqlx::query(built(sql))
            .fetch_optional(conn)
            .await
            .map(drop))?;
        Ok(started.elapsed())
    }

    /// Runs `query`, which returns one number (a user's probe), and reads
    /// it as a float; `None` if it returned NULL.
    pub async fn number(&self, query: &str) -> Result<Option<f64>, sqlx::Error> {
        // A scalar subquery: one column and at most one row, or an error
        // that says so.
        let sql = format!("SELECT CAST(({query}) AS {})", self.dialect().double);
        read_only!(self, self.timeouts.read, |conn, B| sqlx::query_scalar(
            built(sql)
        )
        .fetch_one(conn)
        .await)
    }

    /// Runs `query` (a lookup table's) and reads every column of every row
    /// as text: text as it is, integers, floats and booleans in their text
    /// form, NULL as `None`. Fails on any other column type, saying to cast
    /// it to text.
    pub async fn fetch_texts(&self, query: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        fn texts<R>(row: &R) -> Result<Vec<Option<String>>, String>
        where
            R: sqlx::Row,
            usize: sqlx::ColumnIndex<R>,
            for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            for<'r> Option<i32>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            for<'r> Option<bool>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        {
            (0..row.len())
                .map(|i| {
                    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
                        return Ok(v);
                    }
                    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
                        return Ok(v.map(|v| v.to_string()));
                    }
                    if let Ok(v) = row.try_get::<Option<i32>, _>(i) {
                        return Ok(v.map(|v| v.to_string()));
                    }
                    if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
                        return Ok(v.map(|v| v.to_string()));
                    }
                    if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
                        return Ok(v.map(|v| v.to_string()));
                    }
                    Err(format!(
                        "column {} is neither text nor a number nor a boolean; cast it to text in the query",
                        i + 1
                    ))
                })
                .collect()
        }
        let sql = query.to_string();
        read_only!(self, self.timeouts.read, |conn, B| {
            let rows = sqlx::query(built(sql)).fetch_all(conn).await?;
            Ok(rows.iter().map(texts).collect::<Result<Vec<_>, String>>())
        })
        .map_err(|e| match crate::backend::writes_refused(&e) {
            true => format!(
                "it tried to write ({}); refill runs lookup queries read-only, so nothing was written: make it a query that only reads",
                crate::db::describe(&e)
            ),
            false => crate::db::describe(&e),
        })?
    }

    /// The last key in scope at or before both `a` and `b`, in the key's
    /// own order (its collation), or `None` if there is none.
    pub async fn last_key_within(
        &self,
        layout: &Layout,
        a: &Key,
        b: &Key,
    ) -> Result<Option<Key>, SourceError> {
        let d = self.dialect();
        let key = (d.quote)(&layout.key.name);
        let cast = (d.key_cast)(&layout.key);
        let sql = format!(
            "SELECT {} FROM {} WHERE {key} <= {}{cast} AND {key} <= {}{cast} AND {}",
            (d.as_text)(&format!("max({key})")),
            d.table(&layout.source),
            (d.param)(1),
            (d.param)(2),
            layout.scope_sql()
        );
        let bounds = Rows::Range {
            lo: Some(a),
            hi: b,
            limit: None,
        };
        let text: Result<Option<String>, sqlx::Error> =
            read_only!(self, self.timeouts.scan, |conn, B| bounds
                .bind(sqlx::query(built(sql)))
                .fetch_one(conn)
                .await
                .and_then(|row| row.try_get(0)));
        let query_error = |error| SourceError::Query {
            what: "finding the last key before --until-key",
            table: layout.source.quoted(),
            error,
        };
        match text.map_err(query_error)? {
            None => Ok(None),
            Some(text) => Key::decode(&text, layout.key_type)
                .map(Some)
                .ok_or_else(|| {
                    query_error(sqlx::Error::Decode(
                        format!("the key column holds {text:?}").into(),
                    ))
                }),
        }
    }

    /// The upper keys of chunks of `rows` rows each, in key order, that
    /// cover the scope up to `high_watermark`: a run planned for workers
    /// records them all before any worker starts. One indexed query per
    /// chunk, each skipping `rows - 1` keys after the last bound.
    pub async fn chunk_bounds(
        &self,
        layout: &Layout,
        high_watermark: &Key,
        rows: u64,
    ) -> Result<Vec<Key>, SourceError> {
        let d = self.dialect();
        let key = (d.quote)(&layout.key.name);
        let cast = (d.key_cast)(&layout.key);
        let query_error = |error| SourceError::Query {
            what: "planning chunks",
            table: layout.source.quoted(),
            error,
        };
        // The text of the key is named apart: ordered by a name it shares
        // with the key, PostgreSQL would sort the text.
        let mut bounds: Vec<Key> = Vec::new();
        loop {
            let (lo, hi) = match bounds.last() {
                Some(_) => (format!("{key} > {}{cast} AND ", (d.param)(1)), (d.param)(2)),
                None => (String::new(), (d.param)(1)),
            };
            let sql = format!(
                "SELECT {} AS {} FROM {} WHERE {lo}{key} <= {hi}{cast} AND {} ORDER BY {key} LIMIT 1 OFFSET {}",
                (d.as_text)(&key),
                (d.quote)("__refill_bound"),
                d.table(&layout.source),
                layout.scope_sql(),
                rows.saturating_sub(1)
            );
            let range = Rows::Range {
                lo: bounds.last(),
                hi: high_watermark,
                limit: None,
            };
            let text: Option<String> = read_only!(self, self.timeouts.scan, |conn, B| range
                .bind(sqlx::query(built(sql)))
                .fetch_optional(conn)
                .await
                .and_then(|row| row.map(|r| r.try_get(0)).transpose()))
            .map_err(query_error)?;
            let Some(text) = text else {
                // The last chunk ends at the high-watermark.
                if bounds.last() != Some(high_watermark) {
                    bounds.push(high_watermark.clone());
                }
                return Ok(bounds);
            };
            let bound = Key::decode(&text, layout.key_type).ok_or_else(|| {
                query_error(sqlx::Error::Decode(
                    format!("the key column holds {text:?}").into(),
                ))
            })?;
            bounds.push(bound);
        }
    }

    /// Counts the rows in scope and finds the first and last keys.
    pub async fn scope(&self, layout: &Layout) -> Result<Scope, SourceError> {
        let d = self.dialect();
        let key = (d.quote)(&layout.key.name);
        let sql = format!(
            "SELECT count({key}), {}, {}, count(*) FROM {} WHERE {}",
            (d.as_text)(&format!("min({key})")),
            (d.as_text)(&format!("max({key})")),
            d.table(&layout.source),
            layout.scope_sql()
        );
        let result = read_only!(self, self.timeouts.scan, |conn, B| sqlx::query(built(sql))
            .fetch_one(conn)
            .await
            .and_then(|row| scope_of(&row, layout.key_type)));
        result.map_err(|error| SourceError::Query {
            what: "counting the rows in scope",
            table: layout.source.quoted(),
            error,
        })
    }

    /// Reads the rows in scope with keys in `(lo, hi]`, in key order, at
    /// most `limit` of them. With `tokens`, each row also carries the guard
    /// token of its inputs (see [`Dialect::token`]).
    pub async fn read(
        &self,
        layout: &Layout,
        lo: Option<&Key>,
        hi: &Key,
        limit: Option<u64>,
        tokens: bool,
    ) -> Result<ChunkRows, SourceError> {
        self.fetch(
            layout,
            Rows::Range { lo, hi, limit },
            tokens,
            "reading a chunk",
            u64::MAX,
        )
        .await
    }

    /// As [`read`](Database::read), stopping once the values read reach
    /// `max_bytes` (the row that reaches it is kept, so a huge row is read
    /// alone): the rows come one by one and the rest of the query is
    /// dropped, marking the result [`cut`](ChunkRows::cut).
    pub async fn read_within(
        &self,
        layout: &Layout,
        lo: Option<&Key>,
        hi: &Key,
        limit: u64,
        tokens: bool,
        max_bytes: u64,
    ) -> Result<ChunkRows, SourceError> {
        let rows = Rows::Range {
            lo,
            hi,
            limit: Some(limit),
        };
        self.fetch(layout, rows, tokens, "reading a chunk", max_bytes)
            .await
    }

    /// Reads the rows in scope with these keys, in key order (rows deleted
    /// or out of scope are not returned).
    pub async fn read_keys(
        &self,
        layout: &Layout,
        keys: &[Key],
        tokens: bool,
    ) -> Result<ChunkRows, SourceError> {
        let mut out = ChunkRows::default();
        // SQLite allows 32,766 parameters, MySQL 65,535; PostgreSQL binds
        // one array.
        for part in keys.chunks(KEYS_PER_QUERY) {
            let rows = self
                .fetch(
                    layout,
                    Rows::Keys(part),
                    tokens,
                    "reading rows by key",
                    u64::MAX,
                )
                .await?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// Reads the target columns of the target rows with these keys, with
    /// the guard token of those columns: what a rollback compares and
    /// writes conditionally on. Rows that are gone are not returned.
    pub async fn read_targets(
        &self,
        layout: &Layout,
        keys: &[Key],
    ) -> Result<Vec<TargetRow>, SourceError> {
        let mut out = Vec::with_capacity(keys.len());
        for part in keys.chunks(KEYS_PER_QUERY) {
            let query_error = |error| SourceError::Query {
                what: "reading target rows",
                table: layout.target.quoted(),
                error,
            };
            let rows = Rows::Keys(part);
            let fetched = read_only!(self, self.timeouts.read, |conn, B| {
                let sql = targets_sql(layout, &B::DIALECT, part.len());
                let query = B::bind_rows(&rows, sqlx::query(built(sql)), layout.key_type);
                let fetched = query.fetch_all(conn).await?;
                Ok(assemble_targets(&fetched, layout, B::decode))
            })
            .map_err(query_error)??;
            out.extend(fetched);
        }
        Ok(out)
    }

    /// Runs a chunk query and decodes its rows one by one as they arrive,
    /// stopping once the values read reach `max_bytes` (the row that
    /// reaches it is kept); a read stopped before the end of a range with
    /// a row limit is marked [`cut`](ChunkRows::cut).
    async fn fetch(
        &self,
        layout: &Layout,
        rows: Rows<'_>,
        tokens: bool,
        what: &'static str,
        max_bytes: u64,
    ) -> Result<ChunkRows, SourceError> {
        let query_error = |error| SourceError::Query {
            what,
            table: layout.source.quoted(),
            error,
        };
        let limit = match rows {
            Rows::Range { limit, .. } => limit,
            Rows::Keys(_) => None,
        };
        read_only!(self, self.timeouts.read, |conn, B| {
            use futures_util::TryStreamExt as _;
            let tokens = tokens && B::DIALECT.token.is_some();
            let sql = read_sql(layout, &B::DIALECT, &rows, tokens);
            let query = B::bind_rows(&rows, sqlx::query(built(sql)), layout.key_type);
            let mut stream = query.fetch(conn);
            let mut out = ChunkRows::default();
            let mut failed = None;
            while let Some(row) = stream.try_next().await? {
                if let Err(e) = assemble_row(&row, layout, tokens, B::decode, &mut out) {
                    failed = Some(e);
                    break;
                }
                if out.bytes >= max_bytes {
                    out.cut = limit.is_some_and(|limit| (out.len() as u64) < limit);
                    break;
                }
            }
            drop(stream);
            Ok(match failed {
                Some(e) => Err(e),
                None => Ok(out),
            })
        })
        .map_err(query_error)?
    }
}

/// A target row as a rollback sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetRow {
    /// Its key.
    pub key: Key,
    /// The target columns' values.
    pub values: Vec<Value>,
    /// Their guard token, where the backend uses tokens.
    pub token: Option<String>,
}

fn targets_sql(layout: &Layout, dialect: &Dialect, keys: usize) -> String {
    let target = dialect.table(&layout.target);
    let columns: Vec<String> = layout
        .outputs
        .iter()
        .map(|c| (dialect.column_expr)(&target, c))
        .collect();
    format!(
        "SELECT {}, {}, {} FROM {target} WHERE {}",
        (dialect.key_expr)(&target, &layout.target_key),
        columns.join(", "),
        dialect.token.map_or_else(
            || "NULL".to_string(),
            |token| token(&target, &layout.outputs)
        ),
        (dialect.keys_filter)(&layout.target_key, 1, keys),
    )
}

fn assemble_targets<'r, R>(
    rows: &'r [R],
    layout: &Layout,
    decode: impl Fn(&'r R, usize, &ColumnInfo) -> Result<Value, String>,
) -> Result<Vec<TargetRow>, SourceError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let decode_error = |column: &str, message: String| SourceError::Decode {
        table: layout.target.quoted(),
        column: column.to_string(),
        key: None,
        message,
    };
    rows.iter()
        .map(|row| {
            let key = match decode(row, 0, &layout.target_key)
                .map_err(|m| decode_error(&layout.target_key.name, m))?
            {
                Value::Integer(i) => Key::Int(i),
                Value::Text(s) => Key::Text(s),
                other => {
                    let message = format!(
                        "a key column holds a {} value",
                        crate::value::type_name(&other)
                    );
                    return Err(decode_error(&layout.target_key.name, message));
                }
            };
            let values = layout
                .outputs
                .iter()
                .enumerate()
                .map(|(i, c)| decode(row, 1 + i, c).map_err(|m| decode_error(&c.name, m)))
                .collect::<Result<Vec<_>, _>>()?;
            let n = layout.outputs.len();
            let token: Option<String> = row
                .try_get(1 + n)
                .map_err(|e| decode_error("(guard token)", e.to_string()))?;
            Ok(TargetRow { key, values, token })
        })
        .collect()
}

/// Keys per query when reading rows by key.
const KEYS_PER_QUERY: usize = 1_000;

/// How a backend spells the parts of the queries refill builds.
pub struct Dialect {
    /// Quotes an identifier.
    pub quote: fn(&str) -> String,
    /// The placeholder of the `n`th bound parameter (from 1).
    pub param: fn(usize) -> String,
    /// Casts an expression to text.
    pub as_text: fn(&str) -> String,
    /// The cast appended to a bound key so that it compares the way the
    /// key column sorts.
    pub key_cast: fn(&ColumnInfo) -> String,
    /// The select-list expression reading a key column of a table or alias.
    pub key_expr: fn(&str, &ColumnInfo) -> String,
    /// The select-list expression reading any other column.
    pub column_expr: fn(&str, &ColumnInfo) -> String,
    /// The guard token of some columns of a table or alias: one text that
    /// changes whenever any of the columns' values change. A write
    /// conditional on the token writes only rows nobody changed since they
    /// were read. `None` where the backend compares the values themselves
    /// (PostgreSQL: cheaper than hashing every row twice).
    pub token: Option<fn(&str, &[ColumnInfo]) -> String>,
    /// The condition selecting a list of keys, given the first placeholder
    /// number and the count.
    pub keys_filter: fn(&ColumnInfo, usize, usize) -> String,
    /// The SQL type a number is cast to: `DOUBLE PRECISION`, or MySQL's
    /// `DOUBLE`.
    pub double: &'static str,
    /// The condition that `read`, a column read through `column_expr`,
    /// holds exactly `expected` (NULL included), byte for byte: a case- or
    /// accent-insensitive collation must not let a changed text pass as
    /// unchanged. Used where the backend has no guard token.
    pub same_value: fn(&str, &ColumnInfo, &str) -> String,
}

impl Dialect {
    /// The quoted, qualified name of `table` for SQL.
    pub fn table(&self, table: &TableRef) -> String {
        match &table.schema {
            Some(s) => format!("{}.{}", (self.quote)(s), (self.quote)(&table.name)),
            None => (self.quote)(&table.name),
        }
    }
}

/// `$n`: the placeholders of PostgreSQL and SQLite.
pub(crate) fn dollar(n: usize) -> String {
    format!("${n}")
}

/// `CAST(e AS TEXT)`, for PostgreSQL and SQLite.
pub(crate) fn cast_text(e: &str) -> String {
    format!("CAST({e} AS TEXT)")
}

/// Which rows a chunk query selects.
pub enum Rows<'a> {
    /// Keys in `(lo, hi]`, at most `limit`.
    Range {
        /// The key before the first, if any.
        lo: Option<&'a Key>,
        /// The last key.
        hi: &'a Key,
        /// At most this many rows.
        limit: Option<u64>,
    },
    /// These keys.
    Keys(&'a [Key]),
}

impl Rows<'_> {
    /// Binds the parameters in the order [`read_sql`] numbers them, a key
    /// list as one parameter per key.
    pub(crate) fn bind<'q, DB>(
        &self,
        mut query: sqlx::query::Query<'q, DB, DB::Arguments>,
    ) -> sqlx::query::Query<'q, DB, DB::Arguments>
    where
        DB: sqlx::Database,
        i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        let bind_key = |query: sqlx::query::Query<'q, DB, DB::Arguments>, key: &Key| match key {
            Key::Int(i) => query.bind(*i),
            Key::Text(s) => query.bind(s.clone()),
        };
        match self {
            Rows::Range { lo, hi, limit } => {
                for key in lo.iter().copied().chain([*hi]) {
                    query = bind_key(query, key);
                }
                if let Some(n) = limit {
                    query = query.bind(i64::try_from(*n).unwrap_or(i64::MAX));
                }
                query
            }
            Rows::Keys(keys) => keys.iter().fold(query, bind_key),
        }
    }
}

/// Reads a scope query's row: the count of keys, the first and last keys
/// as text, then the count of rows.
fn scope_of<'r, R>(row: &'r R, key_type: KeyType) -> Result<Scope, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let key = |i: usize| -> Result<Option<Key>, sqlx::Error> {
        match row.try_get::<Option<String>, _>(i)? {
            None => Ok(None),
            Some(text) => Key::decode(&text, key_type).map(Some).ok_or_else(|| {
                sqlx::Error::Decode(
                    format!("the key column holds {text:?}, which is not an {key_type} key").into(),
                )
            }),
        }
    };
    let rows = u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0);
    let all = u64::try_from(row.try_get::<i64, _>(3)?).unwrap_or(0);
    Ok(Scope {
        rows,
        null_keys: all.saturating_sub(rows),
        first: key(1)?,
        high_watermark: key(2)?,
    })
}

/// Decodes one row of a chunk query onto `out`, each column with the
/// backend's `decode`.
fn assemble_row<'r, R>(
    row: &'r R,
    layout: &Layout,
    tokens: bool,
    decode: impl Fn(&'r R, usize, &ColumnInfo) -> Result<Value, String>,
    out: &mut ChunkRows,
) -> Result<(), SourceError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let decode_error = |column: &str, key: Option<&Key>, message: String| SourceError::Decode {
        table: layout.source.quoted(),
        column: column.to_string(),
        key: key.map(ToString::to_string),
        message,
    };
    let n_in = layout.inputs.len();
    let n_out = layout.outputs.len();
    let key = match decode(row, 0, &layout.key) {
        Ok(Value::Integer(i)) if layout.key_type == KeyType::Integer => Key::Int(i),
        Ok(Value::Text(s)) if layout.key_type == KeyType::Text => Key::Text(s),
        Ok(other) => {
            let message = format!(
                "a {} key column holds a {} value",
                layout.key_type,
                crate::value::type_name(&other)
            );
            return Err(decode_error(&layout.key.name, None, message));
        }
        Err(message) => return Err(decode_error(&layout.key.name, None, message)),
    };
    // A value that cannot be read fails its row, not the chunk.
    let mut values = Vec::with_capacity(n_in + n_out);
    let mut unreadable = None;
    for (i, c) in layout.inputs.iter().chain(&layout.outputs).enumerate() {
        match decode(row, 1 + i, c) {
            Ok(value) => values.push(value),
            Err(message) => {
                unreadable
                    .get_or_insert_with(|| decode_error(&c.name, Some(&key), message).to_string());
                values.push(Value::Null);
            }
        }
    }
    let current = values.split_off(n_in);
    let mut next = 1 + n_in + n_out;
    let present = layout.same_table() || {
        next += 1;
        row.try_get::<bool, _>(next - 1).unwrap_or(false)
    };
    // A token that cannot be read (SQLite's quote() of text that is not
    // UTF-8) makes its row unreadable, like the value it comes from.
    let token = if tokens {
        match row.try_get::<Option<String>, _>(next) {
            Ok(token) => token,
            Err(e) => {
                unreadable.get_or_insert_with(|| {
                    decode_error("(guard token)", Some(&key), e.to_string()).to_string()
                });
                None
            }
        }
    } else {
        None
    };
    out.push(key, values, present.then_some(current), token, unreadable);
    Ok(())
}

/// Builds a chunk query: the key, the inputs, the target columns' current
/// values, (for a separate target) whether the target row exists, and
/// (with `tokens`) the inputs' guard token. Placeholders: for a range, `$1`
/// (lo, when present), then hi, then the limit; for keys, the keys.
pub(crate) fn read_sql(
    layout: &Layout,
    dialect: &Dialect,
    rows: &Rows<'_>,
    tokens: bool,
) -> String {
    let quote = dialect.quote;
    let key = quote(&layout.key.name);
    let cast = (dialect.key_cast)(&layout.key);
    let (filter, limit) = match rows {
        Rows::Range { lo, limit, .. } => {
            let mut n = 0;
            let mut param = || {
                n += 1;
                (dialect.param)(n)
            };
            let mut filter = String::new();
            if lo.is_some() {
                filter.push_str(&format!("{key} > {}{cast} AND ", param()));
            }
            filter.push_str(&format!("{key} <= {}{cast}", param()));
            let limit = if limit.is_some() {
                format!(" LIMIT {}", param())
            } else {
                String::new()
            };
            (filter, limit)
        }
        Rows::Keys(keys) => (
            (dialect.keys_filter)(&layout.key, 1, keys.len()),
            String::new(),
        ),
    };
    let source = dialect.table(&layout.source);
    if layout.same_table() {
        // No alias: the `where` condition may name the table, and plan
        // checks it against the bare table too.
        let mut columns: Vec<String> = layout
            .inputs
            .iter()
            .chain(&layout.outputs)
            .map(|c| (dialect.column_expr)(&source, c))
            .collect();
        if let Some(token) = dialect.token.filter(|_| tokens) {
            columns.push(token(&source, &layout.inputs));
        }
        format!(
            // ORDER BY names the table's column: a bare name would pick the
            // select list's cast of it, which may sort differently (citext).
            "SELECT {}, {} FROM {source} WHERE {filter} AND {} ORDER BY {source}.{key}{limit}",
            (dialect.key_expr)(&source, &layout.key),
            columns.join(", "),
            layout.scope_sql(),
        )
    } else {
        // Read the chunk from the source first (its scope may name any
        // source column), then join the target's current values on.
        let mut columns: Vec<String> = layout
            .inputs
            .iter()
            .map(|c| (dialect.column_expr)("s", c))
            .collect();
        columns.extend(layout.outputs.iter().map(|c| (dialect.column_expr)("t", c)));
        columns.push(format!("t.{} IS NOT NULL", quote(&layout.target_key.name)));
        if let Some(token) = dialect.token.filter(|_| tokens) {
            columns.push(token("s", &layout.inputs));
        }
        format!(
            "SELECT {}, {} FROM (SELECT * FROM {source} WHERE {filter} AND {} ORDER BY {key}{limit}) AS s \
             LEFT JOIN {} AS t ON t.{} = s.{key} ORDER BY s.{key}",
            (dialect.key_expr)("s", &layout.key),
            columns.join(", "),
            layout.scope_sql(),
            dialect.table(&layout.target),
            quote(&layout.target_key.name),
        )
    }
}

/// Catalog entries and layouts for the SQL builders' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A nullable, non-unique column of `kind`.
    pub(crate) fn column(name: &str, kind: ColumnKind) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            sql_type: String::new(),
            type_name: String::new(),
            kind,
            not_null: false,
            unique: false,
            collation: None,
        }
    }

    /// `status` of `source` (integer key `id`, in `scope`) into
    /// `status_v2` of `target`.
    pub(crate) fn layout(source: TableRef, target: TableRef, scope: &str) -> Layout {
        Layout {
            source,
            key: column("id", ColumnKind::Integer),
            key_type: KeyType::Integer,
            inputs: vec![column("status", ColumnKind::Text)],
            scope: Some(scope.into()),
            target,
            target_key: column("id", ColumnKind::Integer),
            outputs: vec![column("status_v2", ColumnKind::Text)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::column;
    use super::*;
    use crate::backend::Driver as _;
    use crate::backend::postgres::Postgres;
    use crate::backend::sqlite::Sqlite;

    fn layout(target: &str) -> Layout {
        super::testing::layout(
            TableRef {
                schema: None,
                name: "quo\"tes".into(),
            },
            TableRef {
                schema: Some("app".into()),
                name: target.into(),
            },
            "created_at < '2024-01-01'",
        )
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            TableRef {
                schema: Some("s".into()),
                name: "t".into()
            }
            .quoted(),
            "\"s\".\"t\""
        );
    }

    #[test]
    fn read_sql_filters_orders_and_limits() {
        let mut l = layout("quo\"tes");
        l.target = l.source.clone();
        l.key = column("id", ColumnKind::Text);
        l.key.sql_type = "citext".into();
        let (lo, hi) = (Key::Text("a".into()), Key::Text("m".into()));
        let range = Rows::Range {
            lo: Some(&lo),
            hi: &hi,
            limit: Some(10),
        };
        assert_eq!(
            read_sql(&l, &Postgres::DIALECT, &range, false),
            "SELECT \"quo\"\"tes\".\"id\"::text, \"quo\"\"tes\".\"status\"::text, \"quo\"\"tes\".\"status_v2\"::text \
             FROM \"quo\"\"tes\" WHERE \"id\" > $1::citext AND \"id\" <= $2::citext \
             AND (created_at < '2024-01-01') ORDER BY \"quo\"\"tes\".\"id\" LIMIT $3"
        );
        let first = Rows::Range {
            lo: None,
            hi: &hi,
            limit: None,
        };
        let sql = read_sql(&l, &Sqlite::DIALECT, &first, true);
        assert!(sql.contains("WHERE \"id\" <= $1 AND"), "{sql}");
        assert!(
            sql.contains(", quote(\"quo\"\"tes\".\"status\") FROM"),
            "{sql}"
        );
        assert!(!sql.contains("LIMIT"), "{sql}");
        let keys = [Key::Text("b".into()), Key::Text("c".into())];
        let sql = read_sql(&l, &Sqlite::DIALECT, &Rows::Keys(&keys), false);
        assert!(sql.contains("WHERE \"id\" IN ($1, $2) AND"), "{sql}");
        let sql = read_sql(&l, &Postgres::DIALECT, &Rows::Keys(&keys), true);
        assert!(
            sql.contains("WHERE \"id\" = ANY($1::citext[]) AND"),
            "{sql}"
        );
        assert!(
            sql.contains("\"status_v2\"::text FROM"),
            "PostgreSQL guards with values, not tokens: {sql}"
        );
    }

    #[test]
    fn read_sql_joins_a_separate_target() {
        let l = layout("derived");
        let hi = Key::Int(5);
        let sql = read_sql(
            &l,
            &Sqlite::DIALECT,
            &Rows::Range {
                lo: None,
                hi: &hi,
                limit: Some(3),
            },
            true,
        );
        assert!(
            sql.contains("t.\"status_v2\", t.\"id\" IS NOT NULL, quote(s.\"status\") FROM (SELECT * FROM \"quo\"\"tes\""),
            "{sql}"
        );
        assert!(
            sql.contains("LEFT JOIN \"app\".\"derived\" AS t ON t.\"id\" = s.\"id\""),
            "{sql}"
        );
    }
}
