//! Reading rows: consumes a database url and the tables and columns a plan
//! resolved, produces the tables' catalog entries, the run's scope (row
//! count and high-watermark key) and key-ordered chunks of rows, each with
//! the transform's inputs and the target columns' current values.
//!
//! Every identifier that reaches SQL is quoted with [`quote`]; the only SQL
//! taken from a spec as written is its `where` condition.

pub mod postgres;
pub mod sqlite;

use std::time::Duration;

use sqlx::{PgPool, SqlitePool};

use crate::chunk::{Key, KeyType};
use crate::db::{Backend, DbUrl};
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
    #[error("{what} failed on {table}: {}", crate::db::describe(error))]
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

/// Quotes an SQL identifier for PostgreSQL and SQLite: wraps it in double
/// quotes and doubles any double quote inside.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Marks SQL that refill built as safe to send: every identifier in it went
/// through [`quote`], values are bound as parameters, and the only text
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
    /// The quoted, qualified name for SQL.
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

    /// The source's scope condition for SQL, or `TRUE`.
    fn scope_sql(&self) -> String {
        match &self.scope {
            Some(s) => format!("({s})"),
            None => "1 = 1".to_string(),
        }
    }
}

/// The rows a run covers, fixed when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Rows in scope.
    pub rows: u64,
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

    fn push(&mut self, key: Key, inputs: Vec<Value>, current: Option<Vec<Value>>) {
        self.rows.push(Row {
            key: key.to_wit(),
            values: inputs,
        });
        self.keys.push(key);
        self.current.push(current);
    }
}

/// A connection pool to the source (and target) database.
#[derive(Clone, Debug)]
pub enum Database {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

impl Database {
    /// Connects with room for `connections` concurrent queries.
    pub async fn connect(url: &DbUrl, connections: u32) -> Result<Database, SourceError> {
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
        Ok(match url.backend() {
            Backend::Postgres => Database::Postgres(
                postgres::connect(url, connections, timeout)
                    .await
                    .map_err(connect_error)?,
            ),
            Backend::Sqlite => Database::Sqlite(
                sqlite::connect(url, connections, timeout)
                    .await
                    .map_err(connect_error)?,
            ),
        })
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        match self {
            Database::Postgres(_) => Backend::Postgres,
            Database::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The catalog entry of `table`, or `None` if there is no such table.
    pub async fn table(&self, table: &TableRef) -> Result<Option<TableInfo>, SourceError> {
        match self {
            Database::Postgres(pool) => postgres::table(pool, table).await,
            Database::Sqlite(pool) => sqlite::table(pool, table).await,
        }
    }

    /// Checks that `condition` is a valid `where` condition on `table`.
    /// Fails with the database's message if it is not.
    pub async fn check_scope(&self, table: &TableRef, condition: &str) -> Result<(), sqlx::Error> {
        let sql = format!(
            "SELECT 1 FROM {} WHERE ({condition}) LIMIT 0",
            table.quoted()
        );
        match self {
            Database::Postgres(pool) => sqlx::query(built(sql.clone()))
                .execute(pool)
                .await
                .map(drop),
            Database::Sqlite(pool) => sqlx::query(built(sql.clone()))
                .execute(pool)
                .await
                .map(drop),
        }
    }

    /// Counts the rows in scope and finds the first and last keys.
    pub async fn scope(&self, layout: &Layout) -> Result<Scope, SourceError> {
        let key = quote(&layout.key.name);
        let sql = format!(
            "SELECT count(*), CAST(min({key}) AS TEXT), CAST(max({key}) AS TEXT) FROM {} WHERE {}",
            layout.source.quoted(),
            layout.scope_sql()
        );
        let result = match self {
            Database::Postgres(pool) => sqlx::query(built(sql))
                .fetch_one(pool)
                .await
                .and_then(|row| scope_of(&row, layout.key_type)),
            Database::Sqlite(pool) => sqlx::query(built(sql))
                .fetch_one(pool)
                .await
                .and_then(|row| scope_of(&row, layout.key_type)),
        };
        result.map_err(|error| SourceError::Query {
            what: "counting the rows in scope",
            table: layout.source.quoted(),
            error,
        })
    }

    /// Reads the rows in scope with keys in `(lo, hi]`, in key order, at
    /// most `limit` of them.
    pub async fn read(
        &self,
        layout: &Layout,
        lo: Option<&Key>,
        hi: &Key,
        limit: Option<u64>,
    ) -> Result<ChunkRows, SourceError> {
        let query_error = |error| SourceError::Query {
            what: "reading a chunk",
            table: layout.source.quoted(),
            error,
        };
        match self {
            Database::Postgres(pool) => {
                let sql = read_sql(
                    layout,
                    lo.is_some(),
                    limit.is_some(),
                    &postgres::key_cast(&layout.key),
                    postgres::key_expr,
                    postgres::column_expr,
                );
                let query = bind_range(sqlx::query(built(sql)), lo, hi, limit);
                let rows = query.fetch_all(pool).await.map_err(query_error)?;
                assemble(&rows, layout, postgres::decode)
            }
            Database::Sqlite(pool) => {
                let sql = read_sql(
                    layout,
                    lo.is_some(),
                    limit.is_some(),
                    "",
                    sqlite::column_expr,
                    sqlite::column_expr,
                );
                let query = bind_range(sqlx::query(built(sql)), lo, hi, limit);
                let rows = query.fetch_all(pool).await.map_err(query_error)?;
                assemble(&rows, layout, sqlite::decode)
            }
        }
    }
}

/// Reads a scope query's row: the count, then the first and last keys as
/// text.
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
    Ok(Scope {
        rows: u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0),
        first: key(1)?,
        high_watermark: key(2)?,
    })
}

/// Binds a chunk query's parameters: `lo` (if any), `hi`, then `limit`
/// (if any), in the order [`read_sql`] numbers them.
fn bind_range<'q, DB>(
    mut query: sqlx::query::Query<'q, DB, DB::Arguments>,
    lo: Option<&Key>,
    hi: &Key,
    limit: Option<u64>,
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    for key in lo.into_iter().chain([hi]) {
        query = match key {
            Key::Int(i) => query.bind(*i),
            Key::Text(s) => query.bind(s.clone()),
        };
    }
    if let Some(n) = limit {
        query = query.bind(i64::try_from(n).unwrap_or(i64::MAX));
    }
    query
}

/// Turns the rows of a chunk query into [`ChunkRows`], decoding each column
/// with the backend's `decode`.
fn assemble<'r, R>(
    rows: &'r [R],
    layout: &Layout,
    decode: impl Fn(&'r R, usize, &ColumnInfo) -> Result<Value, String>,
) -> Result<ChunkRows, SourceError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let decode_error = |column: &str, key: Option<&Key>, message: String| SourceError::Decode {
        table: layout.source.quoted(),
        column: column.to_string(),
        key: key.map(ToString::to_string),
        message,
    };
    let mut out = ChunkRows::default();
    let n_in = layout.inputs.len();
    let n_out = layout.outputs.len();
    for row in rows {
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
        let mut values = Vec::with_capacity(n_in + n_out);
        for (i, c) in layout.inputs.iter().chain(&layout.outputs).enumerate() {
            values.push(decode(row, 1 + i, c).map_err(|m| decode_error(&c.name, Some(&key), m))?);
        }
        let current = values.split_off(n_in);
        let present =
            layout.same_table() || row.try_get::<bool, _>(1 + n_in + n_out).unwrap_or(false);
        out.push(key, values, present.then_some(current));
    }
    Ok(out)
}

/// Builds the chunk-read query shared by both backends. `key_expr` and
/// `column_expr` render a column of a table (or alias) for the select list;
/// `key_cast` is appended to the key-bound placeholders so that they compare
/// the way the key column sorts. Placeholders are `$1` (lo, when present),
/// then hi, then the limit.
fn read_sql(
    layout: &Layout,
    has_lo: bool,
    has_limit: bool,
    key_cast: &str,
    key_expr: impl Fn(&str, &ColumnInfo) -> String,
    column_expr: impl Fn(&str, &ColumnInfo) -> String,
) -> String {
    let key = quote(&layout.key.name);
    let mut n = 0;
    let mut param = || {
        n += 1;
        format!("${n}")
    };
    let mut filter = String::new();
    if has_lo {
        filter.push_str(&format!("{key} > {}{key_cast} AND ", param()));
    }
    filter.push_str(&format!("{key} <= {}{key_cast}", param()));
    let limit = if has_limit {
        format!(" LIMIT {}", param())
    } else {
        String::new()
    };
    if layout.same_table() {
        // No alias: the `where` condition may name the table, and plan
        // checks it against the bare table too.
        let table = layout.source.quoted();
        let columns: Vec<String> = layout
            .inputs
            .iter()
            .chain(&layout.outputs)
            .map(|c| column_expr(&table, c))
            .collect();
        format!(
            // ORDER BY names the table's column: a bare name would pick the
            // select list's cast of it, which may sort differently (citext).
            "SELECT {}, {} FROM {table} WHERE {filter} AND {} ORDER BY {table}.{key}{limit}",
            key_expr(&table, &layout.key),
            columns.join(", "),
            layout.scope_sql(),
        )
    } else {
        // Read the chunk from the source first (its scope may name any
        // source column), then join the target's current values on.
        let inputs: Vec<String> = layout.inputs.iter().map(|c| column_expr("s", c)).collect();
        let outputs: Vec<String> = layout.outputs.iter().map(|c| column_expr("t", c)).collect();
        format!(
            "SELECT {}, {}, {}, t.{} IS NOT NULL FROM \
             (SELECT * FROM {} WHERE {filter} AND {} ORDER BY {key}{limit}) AS s \
             LEFT JOIN {} AS t ON t.{} = s.{key} ORDER BY s.{key}",
            key_expr("s", &layout.key),
            inputs.join(", "),
            outputs.join(", "),
            quote(&layout.target_key.name),
            layout.source.quoted(),
            layout.scope_sql(),
            layout.target.quoted(),
            quote(&layout.target_key.name),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, kind: ColumnKind) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            sql_type: String::new(),
            type_name: String::new(),
            kind,
            not_null: false,
            unique: false,
        }
    }

    fn layout(target: &str) -> Layout {
        Layout {
            source: TableRef {
                schema: None,
                name: "quo\"tes".into(),
            },
            key: column("id", ColumnKind::Integer),
            key_type: KeyType::Integer,
            inputs: vec![column("status", ColumnKind::Text)],
            scope: Some("created_at < '2024-01-01'".into()),
            target: TableRef {
                schema: Some("app".into()),
                name: target.into(),
            },
            target_key: column("id", ColumnKind::Integer),
            outputs: vec![column("status_v2", ColumnKind::Text)],
        }
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
        let plain = |a: &str, c: &ColumnInfo| format!("{a}.{}", quote(&c.name));
        let sql = read_sql(&l, true, true, "::citext", plain, plain);
        assert_eq!(
            sql,
            "SELECT \"quo\"\"tes\".\"id\", \"quo\"\"tes\".\"status\", \"quo\"\"tes\".\"status_v2\" \
             FROM \"quo\"\"tes\" WHERE \"id\" > $1::citext AND \"id\" <= $2::citext \
             AND (created_at < '2024-01-01') ORDER BY \"quo\"\"tes\".\"id\" LIMIT $3"
        );
        let first = read_sql(&l, false, false, "", plain, plain);
        assert!(first.contains("WHERE \"id\" <= $1 AND"), "{first}");
        assert!(!first.contains("LIMIT"), "{first}");
    }

    #[test]
    fn read_sql_joins_a_separate_target() {
        let l = layout("derived");
        let plain = |a: &str, c: &ColumnInfo| format!("{a}.{}", quote(&c.name));
        let sql = read_sql(&l, false, true, "", plain, plain);
        assert!(
            sql.contains(
                "t.\"status_v2\", t.\"id\" IS NOT NULL FROM (SELECT * FROM \"quo\"\"tes\""
            ),
            "{sql}"
        );
        assert!(
            sql.contains("LEFT JOIN \"app\".\"derived\" AS t ON t.\"id\" = s.\"id\""),
            "{sql}"
        );
    }
}
