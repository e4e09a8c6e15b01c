//! SQLite reads: consumes a pool and a [`Layout`], produces catalog entries
//! from `pragma_table_info`/`pragma_index_list`, the scope, and chunks whose
//! values keep their storage class, adapted to the column's declared type
//! (`BOOLEAN`, `JSON`, `TIMESTAMP`/`DATETIME`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::{Row as _, SqlitePool, TypeInfo as _, ValueRef as _};

use crate::db::DbUrl;
use crate::source::{
    ColumnInfo, Dialect, Rows, SourceError, TableInfo, TableRef, cast_text, dollar, quote,
};
use crate::value::{self, ColumnKind, Value};

/// Opens a pool on an existing database file; `read_only` opens it with
/// `SQLITE_OPEN_READONLY`, which no statement can undo (`PRAGMA
/// query_only` can be turned off by the next statement).
pub async fn connect(
    url: &DbUrl,
    connections: u32,
    timeout: Duration,
    read_only: bool,
) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url.expose())?
        .busy_timeout(timeout)
        .read_only(read_only);
    crate::backend::pool_options(connections, timeout)
        .connect_with(options)
        .await
}

/// Binds the parameters of a chunk query as [`read_sql`](crate::source::read_sql) numbers
/// them.
pub(super) fn bind_rows<'q>(
    rows: &Rows<'_>,
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    _key_type: crate::chunk::KeyType,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    rows.bind(query)
}

/// How a declared SQLite type is read and written, following SQLite's
/// affinity rules, with refill's names for booleans, JSON and timestamps.
pub fn kind_of(declared: &str) -> ColumnKind {
    let t = declared.to_ascii_uppercase();
    let has = |s: &str| t.contains(s);
    if t.is_empty() {
        ColumnKind::Any
    } else if has("BOOL") {
        ColumnKind::Boolean
    } else if has("JSON") {
        ColumnKind::Json
    } else if has("TIMESTAMP") || has("DATETIME") {
        ColumnKind::Timestamp
    } else if has("INT") {
        ColumnKind::Integer
    } else if has("CHAR") || has("CLOB") || has("TEXT") {
        ColumnKind::Text
    } else if has("BLOB") {
        ColumnKind::Bytes
    } else if has("REAL") || has("FLOA") || has("DOUB") {
        ColumnKind::Float
    } else {
        ColumnKind::Any
    }
}

/// Looks `table` up in the catalog.
pub async fn table(
    conn: &mut sqlx::SqliteConnection,
    table: &TableRef,
) -> Result<Option<TableInfo>, SourceError> {
    let query_error = SourceError::catalog(table);
    let schema = table.schema.as_deref().unwrap_or("main");
    let rows = sqlx::query(
        "SELECT name, type, \"notnull\", pk FROM pragma_table_info($1, $2) ORDER BY cid",
    )
    .bind(&table.name)
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_error)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let unique: Vec<String> = sqlx::query_scalar(
        "SELECT ii.name FROM pragma_index_list($1, $2) AS il, pragma_index_info(il.name, $2) AS ii \
         WHERE il.\"unique\" = 1 AND il.partial = 0 GROUP BY il.name HAVING count(*) = 1",
    )
    .bind(&table.name)
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_error)?;
    let pk_columns = rows.iter().filter(|r| r.get::<i64, _>(3) > 0).count();
    let columns = rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            let sql_type: String = r.get(1);
            let is_pk = r.get::<i64, _>(3) > 0 && pk_columns == 1;
            // A single-column INTEGER PRIMARY KEY is the rowid: never NULL.
            let rowid = is_pk && sql_type.eq_ignore_ascii_case("INTEGER");
            ColumnInfo {
                kind: kind_of(&sql_type),
                type_name: sql_type.to_ascii_uppercase(),
                not_null: r.get::<i64, _>(2) != 0 || rowid,
                unique: is_pk || unique.contains(&name),
                collation: None,
                name,
                sql_type,
            }
        })
        .collect();
    Ok(Some(TableInfo {
        table: table.clone(),
        columns,
    }))
}

/// How SQLite spells refill's queries.
pub const DIALECT: Dialect = Dialect {
    quote,
    param: dollar,
    as_text: cast_text,
    key_cast: |_| String::new(),
    key_expr: column_expr,
    column_expr,
    token: Some(token),
    keys_filter,
    // Guards compare tokens; `IS` is SQLite's NULL-safe equality.
    same_value: |read, _, expected| format!("{read} IS {expected}"),
    double: "DOUBLE PRECISION",
};

/// `quote(a) || ',' || quote(b)`: SQLite's quote() is an exact literal of
/// the value with its storage class.
pub(super) fn token(alias: &str, columns: &[ColumnInfo]) -> String {
    let cols: Vec<String> = columns
        .iter()
        .map(|c| format!("quote({alias}.{})", quote(&c.name)))
        .collect();
    cols.join(" || ',' || ")
}

/// `key IN ($n, $n+1, …)`.
fn keys_filter(key: &ColumnInfo, first: usize, count: usize) -> String {
    let params: Vec<String> = (first..first + count).map(|i| format!("${i}")).collect();
    format!("{} IN ({})", quote(&key.name), params.join(", "))
}

/// The select-list expression reading column `c` of the table aliased `a`.
pub(super) fn column_expr(alias: &str, c: &ColumnInfo) -> String {
    format!("{alias}.{}", quote(&c.name))
}

/// Decodes column `i` by the value's storage class, then adapts it to the
/// column's declared kind.
pub(super) fn decode(row: &SqliteRow, i: usize, column: &ColumnInfo) -> Result<Value, String> {
    let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let storage = raw.type_info().name().to_string();
    let get_err = |e: sqlx::Error| e.to_string();
    let value = match storage.as_str() {
        "INTEGER" => Value::Integer(row.try_get_unchecked::<i64, _>(i).map_err(get_err)?),
        "REAL" => Value::Float(row.try_get_unchecked::<f64, _>(i).map_err(get_err)?),
        "TEXT" => Value::Text(row.try_get_unchecked::<String, _>(i).map_err(get_err)?),
        "BLOB" => Value::Bytes(row.try_get_unchecked::<Vec<u8>, _>(i).map_err(get_err)?),
        other => return Err(format!("unexpected storage class {other}")),
    };
    Ok(match (&column.kind, value) {
        (ColumnKind::Boolean, Value::Integer(i)) => Value::Boolean(i != 0),
        (ColumnKind::Json, Value::Text(t)) => Value::Json(t),
        // A JSON column has NUMERIC affinity: SQLite stores a document
        // that is a number as one. It is still a JSON document, written
        // back as text and stored as that number again.
        (ColumnKind::Json, Value::Integer(i)) => Value::Json(i.to_string()),
        (ColumnKind::Json, Value::Float(f)) if f.is_finite() => Value::Json(f.to_string()),
        (ColumnKind::Timestamp, Value::Text(t)) => match value::parse_timestamp_text(&t) {
            Some(ts) => value::timestamp(ts),
            None => Value::Text(t),
        },
        (ColumnKind::Timestamp, Value::Integer(secs)) => {
            match chrono::DateTime::from_timestamp(secs, 0) {
                Some(ts) => value::timestamp(ts),
                None => Value::Integer(secs),
            }
        }
        (ColumnKind::Float, Value::Integer(i)) => {
            #[expect(
                clippy::cast_precision_loss,
                reason = "SQLite stores integral REAL values as integers"
            )]
            let f = i as f64;
            Value::Float(f)
        }
        (_, v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_follow_affinity() {
        assert_eq!(kind_of("INTEGER"), ColumnKind::Integer);
        assert_eq!(kind_of("bigint"), ColumnKind::Integer);
        assert_eq!(kind_of("VARCHAR(20)"), ColumnKind::Text);
        assert_eq!(kind_of("BOOLEAN"), ColumnKind::Boolean);
        assert_eq!(kind_of("json"), ColumnKind::Json);
        assert_eq!(kind_of("DATETIME"), ColumnKind::Timestamp);
        assert_eq!(kind_of("DOUBLE PRECISION"), ColumnKind::Float);
        assert_eq!(kind_of("BLOB"), ColumnKind::Bytes);
        assert_eq!(kind_of(""), ColumnKind::Any);
        assert_eq!(kind_of("NUMERIC"), ColumnKind::Any);
    }
}
