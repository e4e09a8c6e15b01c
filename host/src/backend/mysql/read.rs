//! MySQL/MariaDB reads: consumes a pool and a [`Layout`], produces catalog
//! entries from `information_schema` (columns, single-column primary and
//! unique keys, MariaDB's `json_valid` checks), the scope, and chunks
//! decoded from the binary protocol into WIT values.
//!
//! Identifiers are quoted with backticks. Sessions run in UTC (so
//! `TIMESTAMP` columns read and write UTC instants) and in strict mode (so a
//! value a column cannot take is refused, not truncated with a warning),
//! with the server's `sql_mode` otherwise unchanged: the spec's `where` means
//! what it means in a console on that server.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlConnectOptions, MySqlRow};
use sqlx::{Executor as _, MySqlPool, Row as _};

use crate::chunk::KeyType;
use crate::db::DbUrl;
use crate::source::{ColumnInfo, Dialect, Rows, SourceError, TableInfo, TableRef, Timeouts};
use crate::value::{self, ColumnKind, Value};

/// Adds strict mode to the session's `sql_mode`, keeping the rest.
const STRICT: &str =
    "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES')";

/// Opens a pool.
pub async fn connect(
    url: &DbUrl,
    connections: u32,
    timeout: Duration,
    timeouts: &Timeouts,
) -> Result<MySqlPool, sqlx::Error> {
    // Lock waits count whole seconds, 1 at least: InnoDB's row locks
    // (default 50 s) and metadata locks (default a day). A statement ends
    // after `read` (MariaDB's max_statement_time, in seconds; MySQL 8's
    // max_execution_time, in milliseconds, covers SELECT only).
    let lock = timeouts.lock.as_secs().max(1);
    let bounds = format!(
        "SET SESSION innodb_lock_wait_timeout = {lock}, SESSION lock_wait_timeout = {lock}"
    );
    let read = timeouts.read.max(timeouts.write);
    let mariadb_time = format!("SET SESSION max_statement_time = {}", read.as_secs_f64());
    let mysql_time = format!(
        "SET SESSION max_execution_time = {}",
        read.as_millis().max(1)
    );
    // sqlx adds PIPES_AS_CONCAT by default, which would change what `||`
    // means in a spec's `where`; the session keeps the server's meaning.
    let options = MySqlConnectOptions::from_str(url.expose())?
        .pipes_as_concat(false)
        .timezone(Some("+00:00".to_string()));
    crate::backend::probe(&options, timeout).await?;
    crate::backend::pool_options::<sqlx::MySql>(connections, timeout)
        .after_connect(move |conn, _| {
            let bounds = bounds.clone();
            let mariadb_time = mariadb_time.clone();
            let mysql_time = mysql_time.clone();
            Box::pin(async move {
                conn.execute(STRICT).await?;
                conn.execute(sqlx::AssertSqlSafe(bounds)).await?;
                if conn
                    .execute(sqlx::AssertSqlSafe(mariadb_time))
                    .await
                    .is_err()
                {
                    conn.execute(sqlx::AssertSqlSafe(mysql_time)).await?;
                }
                // MariaDB indexes a materialized derived table to join on
                // it, and with two long values (a megabyte of new text and
                // the expected old one) that temporary Aria table comes out
                // "corrupted" (error 127). The writes join the derived rows
                // to the target's key, which needs no index on the rows.
                // MySQL has no such switch: its error is ignored.
                let _ = conn
                    .execute("SET SESSION optimizer_switch = 'derived_with_keys=off'")
                    .await;
                Ok(())
            })
        })
        .connect_with(options)
        .await
}

/// Starts a read-only transaction (`START TRANSACTION READ ONLY`: a
/// function called from the spec's `where` cannot make it read-write, and
/// InnoDB refuses its writes). The session's timeouts bound it.
pub async fn begin_read(
    pool: &MySqlPool,
) -> Result<sqlx::Transaction<'static, sqlx::MySql>, sqlx::Error> {
    pool.begin_with("START TRANSACTION READ ONLY").await
}

/// The stored functions `condition` names, as `name(`, that are not
/// declared `DETERMINISTIC` (MySQL/MariaDB do not enforce `READS SQL DATA`,
/// so any other function may write). Functions are matched by name, in
/// any database the session can see.
pub async fn volatile_functions(
    pool: &MySqlPool,
    condition: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = begin_read(pool).await?;
    let functions: Vec<(String, String)> = sqlx::query_as(
        "SELECT CAST(ROUTINE_SCHEMA AS CHAR), CAST(ROUTINE_NAME AS CHAR) FROM information_schema.ROUTINES \
         WHERE ROUTINE_TYPE = 'FUNCTION' AND IS_DETERMINISTIC = 'NO'",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let text = condition.to_ascii_lowercase();
    let calls = |name: &str| {
        let name = name.to_ascii_lowercase();
        text.match_indices(&name).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + name.len()..].trim_start().starts_with('(');
            after && !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    };
    let mut names: Vec<String> = functions
        .into_iter()
        .filter(|(_, name)| calls(name))
        .map(|(schema, name)| format!("{schema}.{name}()"))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Quotes an identifier with backticks, doubling any backtick inside.
pub fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// Binds the parameters of a chunk query as [`read_sql`](crate::source::read_sql) numbers
/// them.
pub(super) fn bind_rows<'q>(
    rows: &Rows<'_>,
    query: sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    _key_type: crate::chunk::KeyType,
) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    rows.bind(query)
}

/// How a MySQL/MariaDB column is read and written, from its
/// `information_schema` `DATA_TYPE` and `COLUMN_TYPE`; `json` is whether a
/// MariaDB `json_valid` check makes a text column a JSON one (MariaDB's
/// `JSON` is `LONGTEXT` with that check).
pub fn kind_of(data_type: &str, column_type: &str, json: bool) -> ColumnKind {
    let data_type = data_type.to_ascii_lowercase();
    let column_type = column_type.to_ascii_lowercase();
    match data_type.as_str() {
        _ if json => ColumnKind::Json,
        // BOOL and BOOLEAN are TINYINT(1).
        "tinyint" if column_type.starts_with("tinyint(1)") => ColumnKind::Boolean,
        "bool" | "boolean" => ColumnKind::Boolean,
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => ColumnKind::Integer,
        "float" | "double" | "real" | "double precision" => ColumnKind::Float,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" => {
            ColumnKind::Text
        }
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            ColumnKind::Bytes
        }
        "json" => ColumnKind::Json,
        "datetime" | "timestamp" => ColumnKind::Timestamp,
        // decimal, date, time, year, set, bit…: read in their text form,
        // written as text that the server converts (refusing what does
        // not fit, in strict mode).
        _ => ColumnKind::TextForm(column_type),
    }
}

/// Whether refill cannot read or write a MySQL/MariaDB column of this
/// `DATA_TYPE` at all: spatial types (no text cast) and BIT (whose text
/// form is raw bytes). Plan refuses them by name.
pub fn unsupported(data_type: &str) -> bool {
    matches!(
        data_type,
        "bit"
            | "geometry"
            | "point"
            | "linestring"
            | "polygon"
            | "multipoint"
            | "multilinestring"
            | "multipolygon"
            | "geometrycollection"
    )
}

/// Looks `table` up in `information_schema`; a table without a schema is
/// looked up in the url's database.
pub async fn table(
    conn: &mut sqlx::MySqlConnection,
    table: &TableRef,
) -> Result<Option<TableInfo>, SourceError> {
    let query_error = SourceError::catalog(table);
    // information_schema columns are binary strings on some versions:
    // every text is cast, so that it decodes as text everywhere.
    let rows = sqlx::query(
        "SELECT CAST(c.COLUMN_NAME AS CHAR), CAST(c.COLUMN_TYPE AS CHAR), CAST(c.DATA_TYPE AS CHAR), \
                c.IS_NULLABLE = 'NO', \
                EXISTS (SELECT 1 FROM information_schema.STATISTICS s \
                        WHERE s.TABLE_SCHEMA = c.TABLE_SCHEMA AND s.TABLE_NAME = c.TABLE_NAME \
                          AND s.COLUMN_NAME = c.COLUMN_NAME AND s.NON_UNIQUE = 0 \
                          AND NOT EXISTS (SELECT 1 FROM information_schema.STATISTICS o \
                                          WHERE o.TABLE_SCHEMA = s.TABLE_SCHEMA AND o.TABLE_NAME = s.TABLE_NAME \
                                            AND o.INDEX_NAME = s.INDEX_NAME AND o.COLUMN_NAME <> s.COLUMN_NAME)), \
                CAST(c.COLLATION_NAME AS CHAR), CAST(c.TABLE_SCHEMA AS CHAR) \
         FROM information_schema.COLUMNS c \
         WHERE c.TABLE_SCHEMA = COALESCE(?, DATABASE()) AND c.TABLE_NAME = ? \
         ORDER BY c.ORDINAL_POSITION",
    )
    .bind(table.schema.as_deref())
    .bind(&table.name)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_error)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let schema: String = first.try_get(6).map_err(query_error)?;
    let json = json_columns(&mut *conn, &schema, &table.name).await;
    let columns = rows
        .iter()
        .map(|r| {
            let name: String = r.try_get(0)?;
            let sql_type: String = r.try_get(1)?;
            let type_name: String = r.try_get::<String, _>(2)?.to_ascii_lowercase();
            Ok(ColumnInfo {
                kind: kind_of(&type_name, &sql_type, json.contains(&name)),
                not_null: r.try_get(3)?,
                unique: r.try_get(4)?,
                collation: r.try_get(5)?,
                name,
                sql_type,
                type_name,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(query_error)?;
    Ok(Some(TableInfo {
        table: table.clone(),
        columns,
    }))
}

/// The columns a MariaDB `json_valid(col)` check declares JSON. MySQL's
/// `CHECK_CONSTRAINTS` has no table name (and its JSON type is its own), so
/// an error here means "none".
async fn json_columns(conn: &mut sqlx::MySqlConnection, schema: &str, table: &str) -> Vec<String> {
    let clauses: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(CHECK_CLAUSE AS CHAR) FROM information_schema.CHECK_CONSTRAINTS \
         WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    clauses
        .iter()
        .filter_map(|clause| {
            let inner = clause
                .trim()
                .strip_prefix("json_valid(")?
                .strip_suffix(')')?;
            let name = inner.strip_prefix('`')?.strip_suffix('`')?;
            Some(name.replace("``", "`"))
        })
        .collect()
}

/// How MySQL/MariaDB spells refill's queries. Like PostgreSQL it has no
/// guard token: a conditional write compares each column with the value
/// read, with `<=>` (NULL-safe) and text as bytes.
pub const DIALECT: Dialect = Dialect {
    quote,
    param: |_| "?".to_string(),
    as_text: |e| format!("CAST({e} AS CHAR)"),
    // A bound text compares in the column's collation already (a literal
    // yields to a column), so keys need no cast.
    key_cast: |_| String::new(),
    key_expr: |alias, c| format!("{alias}.{}", quote(&c.name)),
    column_expr,
    token: None,
    keys_filter,
    same_value,
    double: "DOUBLE",
};

/// `key IN (?, ?, …)`.
fn keys_filter(key: &ColumnInfo, _first: usize, count: usize) -> String {
    format!("{} IN ({})", quote(&key.name), vec!["?"; count].join(", "))
}

/// The select-list expression reading column `c` of the table aliased `a`:
/// JSON and text forms (decimal, date…) as text, the rest as they are.
pub(super) fn column_expr(alias: &str, c: &ColumnInfo) -> String {
    read_expr(&format!("{alias}.{}", quote(&c.name)), c)
}

/// The expression reading `col`, a value of column `c`'s type.
pub(crate) fn read_expr(col: &str, c: &ColumnInfo) -> String {
    match &c.kind {
        ColumnKind::Json | ColumnKind::TextForm(_) => format!("CAST({col} AS CHAR)"),
        _ => col.to_string(),
    }
}

/// `read <=> expected`, with text compared as its utf8mb4 bytes: the
/// column's collation may be case-, accent- or trailing-space-insensitive,
/// and a changed text must not pass as unchanged.
fn same_value(read: &str, c: &ColumnInfo, expected: &str) -> String {
    match &c.kind {
        ColumnKind::Text | ColumnKind::TextForm(_) | ColumnKind::Json | ColumnKind::Any => {
            format!("CAST(CONVERT({read} USING utf8mb4) AS BINARY) <=> CAST({expected} AS BINARY)")
        }
        _ => format!("{read} <=> {expected}"),
    }
}

/// `expr`, a text value refill sends, converted to key column `key`'s
/// character set and collation, so that comparing it with the column is
/// legal (MySQL refuses to compare two implicit collations) and matches the
/// way the column compares; integer keys as they are.
pub(crate) fn key_match(expr: &str, key: &ColumnInfo) -> String {
    match (key.key_type(), &key.collation) {
        (Some(KeyType::Text), Some(collation)) => {
            let charset = collation.split('_').next().unwrap_or(collation);
            format!("CONVERT({expr} USING {charset}) COLLATE {collation}")
        }
        _ => expr.to_string(),
    }
}

/// Decodes column `i` as the Rust type of its kind.
pub(crate) fn decode(row: &MySqlRow, i: usize, c: &ColumnInfo) -> Result<Value, String> {
    if c.kind == ColumnKind::Timestamp {
        // A zero date (`0000-00-00`) is no point in time. sqlx reports it
        // as NULL; its bytes tell it from a real NULL (an empty binary
        // value, or those zeros as text).
        use sqlx::ValueRef as _;
        let raw = row.try_get_raw(i).map_err(|e| crate::db::describe(&e))?;
        let zero = raw.is_null()
            && <&[u8] as sqlx::Decode<'_, sqlx::MySql>>::decode(raw)
                .is_ok_and(|b| b.first() == Some(&0) || b.starts_with(b"0000-00-00"));
        if zero {
            return Err(unrepresentable("the zero date 0000-00-00"));
        }
        return typed(row, i, c).map_err(|e| match e {
            sqlx::Error::ColumnDecode { source, .. } => {
                unrepresentable(&format!("an invalid date ({source})"))
            }
            other => crate::db::describe(&other),
        });
    }
    typed(row, i, c).map_err(|e| crate::db::describe(&e))
}

/// Why a date the server holds cannot be read, and what to do about it.
fn unrepresentable(what: &str) -> String {
    format!(
        "the value is {what}, which a transform's timestamp cannot hold; leave such rows out \
         with [source] where (for example `column > '0000-00-00'`), or fix the value"
    )
}

fn typed(row: &MySqlRow, i: usize, c: &ColumnInfo) -> Result<Value, sqlx::Error> {
    if let Some(value) = crate::backend::decode_common(row, i, &c.kind)? {
        return Ok(value);
    }
    let value = match &c.kind {
        ColumnKind::Integer => match row.try_get::<Option<i64>, _>(i) {
            Ok(v) => v.map_or(Value::Null, Value::Integer),
            // BIGINT UNSIGNED: fine up to i64::MAX.
            Err(_) => match row.try_get::<Option<u64>, _>(i)? {
                None => Value::Null,
                Some(u) => Value::Integer(i64::try_from(u).map_err(|_| {
                    sqlx::Error::Decode(format!("{u} is larger than a 64-bit integer").into())
                })?),
            },
        },
        // TINYINT(1) holds any small integer, and a boolean is 0 or 1
        // only: reading 2 as true would make the guard see a change that
        // is not there, on every attempt.
        ColumnKind::Boolean => {
            let n = match row.try_get::<Option<i64>, _>(i) {
                Ok(n) => n,
                Err(_) => row
                    .try_get::<Option<u64>, _>(i)?
                    .map(|u| i64::try_from(u).unwrap_or(i64::MAX)),
            };
            match n {
                None => Value::Null,
                Some(0) => Value::Boolean(false),
                Some(1) => Value::Boolean(true),
                Some(n) => {
                    return Err(sqlx::Error::Decode(
                        format!(
                            "it holds {n}, but refill reads a TINYINT(1) (BOOLEAN) column as a boolean, 0 or 1; leave such rows out with [source] where, or make the column a wider TINYINT"
                        )
                        .into(),
                    ));
                }
            }
        }
        // A timestamp: decode_common read the other kinds.
        _ => row
            .try_get::<Option<DateTime<Utc>>, _>(i)?
            .map_or(Value::Null, value::timestamp),
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_with_backticks() {
        assert_eq!(quote("a`b"), "`a``b`");
        assert_eq!(quote("status"), "`status`");
        assert_eq!(
            DIALECT.table(&TableRef {
                schema: Some("app`x".into()),
                name: "quo\"tes".into()
            }),
            "`app``x`.`quo\"tes`"
        );
    }

    #[test]
    fn column_types_map_to_kinds() {
        assert_eq!(kind_of("tinyint", "tinyint(1)", false), ColumnKind::Boolean);
        assert_eq!(kind_of("tinyint", "tinyint(4)", false), ColumnKind::Integer);
        assert_eq!(
            kind_of("bigint", "bigint(20) unsigned", false),
            ColumnKind::Integer
        );
        assert_eq!(kind_of("double", "double", false), ColumnKind::Float);
        assert_eq!(kind_of("varchar", "varchar(20)", false), ColumnKind::Text);
        assert_eq!(kind_of("enum", "enum('a','b')", false), ColumnKind::Text);
        assert_eq!(kind_of("longtext", "longtext", true), ColumnKind::Json);
        assert_eq!(kind_of("json", "json", false), ColumnKind::Json);
        assert_eq!(
            kind_of("datetime", "datetime(6)", false),
            ColumnKind::Timestamp
        );
        assert_eq!(kind_of("blob", "blob", false), ColumnKind::Bytes);
        assert_eq!(
            kind_of("decimal", "decimal(10,2)", false),
            ColumnKind::TextForm("decimal(10,2)".into())
        );
    }

    #[test]
    fn text_guards_compare_bytes_and_keys_take_the_column_collation() {
        let mut c = ColumnInfo {
            name: "k".into(),
            sql_type: "varchar(20)".into(),
            type_name: "varchar".into(),
            kind: ColumnKind::Text,
            not_null: true,
            unique: true,
            collation: Some("utf8mb4_unicode_ci".into()),
        };
        assert_eq!(
            same_value("t.`k`", &c, "u.e"),
            "CAST(CONVERT(t.`k` USING utf8mb4) AS BINARY) <=> CAST(u.e AS BINARY)"
        );
        assert_eq!(
            key_match("u.k", &c),
            "CONVERT(u.k USING utf8mb4) COLLATE utf8mb4_unicode_ci"
        );
        c.kind = ColumnKind::Integer;
        assert_eq!(same_value("t.`k`", &c, "u.e"), "t.`k` <=> u.e");
        assert_eq!(key_match("u.k", &c), "u.k");
    }
}
