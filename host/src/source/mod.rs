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
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The masked url.
        url: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A query failed.
    #[error("{what} failed on {table}: {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The table, quoted.
        table: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A value could not be decoded.
    #[error("cannot read column {column} of {table} at key {key}: {message}")]
    Decode {
        /// The table, quoted.
        table: String,
        /// The column.
        column: String,
        /// The row's key.
        key: String,
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
    /// Its SQL type as the database spells it.
    pub sql_type: String,
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
        let connect_error = |source| SourceError::Connect {
            url: url.masked(),
            source,
        };
        let timeout = Duration::from_secs(10);
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
        let result = match self {
            Database::Postgres(pool) => postgres::scope(pool, layout).await,
            Database::Sqlite(pool) => sqlite::scope(pool, layout).await,
        };
        result.map_err(|source| SourceError::Query {
            what: "counting the rows in scope",
            table: layout.source.quoted(),
            source,
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
        match self {
            Database::Postgres(pool) => postgres::read(pool, layout, lo, hi, limit).await,
            Database::Sqlite(pool) => sqlite::read(pool, layout, lo, hi, limit).await,
        }
    }
}

/// Builds the chunk-read query shared by both backends. `key_expr`,
/// `column_expr` render a column for the select list; placeholders are
/// `$1` (lo, when present), then hi, then the limit.
fn read_sql(
    layout: &Layout,
    has_lo: bool,
    has_limit: bool,
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
        filter.push_str(&format!("{key} > {} AND ", param()));
    }
    filter.push_str(&format!("{key} <= {}", param()));
    let limit = if has_limit {
        format!(" LIMIT {}", param())
    } else {
        String::new()
    };
    let inputs: Vec<String> = layout.inputs.iter().map(|c| column_expr("s", c)).collect();
    if layout.same_table() {
        let outputs: Vec<String> = layout.outputs.iter().map(|c| column_expr("s", c)).collect();
        format!(
            "SELECT {}, {}, {} FROM {} AS s WHERE {filter} AND {} ORDER BY {key}{limit}",
            key_expr("s", &layout.key),
            inputs.join(", "),
            outputs.join(", "),
            layout.source.quoted(),
            layout.scope_sql(),
        )
    } else {
        // Read the chunk from the source first (its scope may name any
        // source column), then join the target's current values on.
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
        let sql = read_sql(&l, true, true, plain, plain);
        assert_eq!(
            sql,
            "SELECT s.\"id\", s.\"status\", s.\"status_v2\" FROM \"quo\"\"tes\" AS s \
             WHERE \"id\" > $1 AND \"id\" <= $2 AND (created_at < '2024-01-01') ORDER BY \"id\" LIMIT $3"
        );
        let first = read_sql(&l, false, false, plain, plain);
        assert!(first.contains("WHERE \"id\" <= $1 AND"), "{first}");
        assert!(!first.contains("LIMIT"), "{first}");
    }

    #[test]
    fn read_sql_joins_a_separate_target() {
        let l = layout("derived");
        let plain = |a: &str, c: &ColumnInfo| format!("{a}.{}", quote(&c.name));
        let sql = read_sql(&l, false, true, plain, plain);
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
