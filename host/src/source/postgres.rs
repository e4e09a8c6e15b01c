//! PostgreSQL reads: consumes a pool and a [`Layout`], produces catalog
//! entries from `pg_attribute`/`pg_index`, the scope, and chunks decoded
//! from the binary protocol into WIT values.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row as _};

use super::{
    ChunkRows, ColumnInfo, Layout, Scope, SourceError, TableInfo, TableRef, quote, read_sql,
};
use crate::chunk::{Key, KeyType};
use crate::db::DbUrl;
use crate::value::{self, ColumnKind, Value};

/// Opens a pool. Sessions announce themselves as `refill` in
/// `pg_stat_activity`.
pub async fn connect(
    url: &DbUrl,
    connections: u32,
    timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url.expose())?.application_name("refill");
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(timeout)
        .connect_with(options)
        .await
}

/// How a PostgreSQL type is read and written.
pub fn kind_of(type_name: &str, formatted: &str) -> ColumnKind {
    match type_name {
        "bool" => ColumnKind::Boolean,
        "int2" | "int4" | "int8" => ColumnKind::Integer,
        "float4" | "float8" => ColumnKind::Float,
        "text" | "varchar" | "bpchar" | "name" | "citext" => ColumnKind::Text,
        "bytea" => ColumnKind::Bytes,
        "json" | "jsonb" => ColumnKind::Json,
        "timestamp" | "timestamptz" => ColumnKind::Timestamp,
        _ => ColumnKind::TextForm(formatted.to_string()),
    }
}

/// Looks `table` up in the catalog.
pub async fn table(pool: &PgPool, table: &TableRef) -> Result<Option<TableInfo>, SourceError> {
    let query_error = |source| SourceError::Query {
        what: "reading the catalog",
        table: table.quoted(),
        source,
    };
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table.quoted())
        .fetch_one(pool)
        .await
        .map_err(query_error)?;
    if !exists {
        return Ok(None);
    }
    // Domains are read as their base type.
    let rows = sqlx::query(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                COALESCE(b.typname, t.typname)::text, a.attnotnull, \
                EXISTS (SELECT 1 FROM pg_index i \
                        WHERE i.indrelid = a.attrelid AND i.indisunique AND i.indnkeyatts = 1 \
                          AND i.indkey[0] = a.attnum AND i.indpred IS NULL) \
         FROM pg_attribute a \
         JOIN pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_type b ON t.typtype = 'd' AND b.oid = t.typbasetype \
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .bind(table.quoted())
    .fetch_all(pool)
    .await
    .map_err(query_error)?;
    let columns = rows
        .iter()
        .map(|r| {
            let sql_type: String = r.get(1);
            let type_name: String = r.get(2);
            ColumnInfo {
                name: r.get(0),
                kind: kind_of(&type_name, &sql_type),
                sql_type,
                not_null: r.get(3),
                unique: r.get(4),
            }
        })
        .collect();
    Ok(Some(TableInfo {
        table: table.clone(),
        columns,
    }))
}

/// The select-list expression reading column `c` of the table aliased `a`,
/// so that it decodes as the Rust type of its kind.
fn column_expr(alias: &str, c: &ColumnInfo) -> String {
    let col = format!("{alias}.{}", quote(&c.name));
    match &c.kind {
        ColumnKind::Integer => format!("{col}::int8"),
        ColumnKind::Float => format!("{col}::float8"),
        ColumnKind::Boolean | ColumnKind::Bytes | ColumnKind::Any => col,
        ColumnKind::Timestamp if c.sql_type.starts_with("timestamp without") => {
            format!("({col} AT TIME ZONE 'UTC')")
        }
        ColumnKind::Timestamp => col,
        ColumnKind::Text | ColumnKind::Json | ColumnKind::TextForm(_) => format!("{col}::text"),
    }
}

fn key_expr(alias: &str, c: &ColumnInfo) -> String {
    match c.key_type() {
        Some(KeyType::Integer) => format!("{alias}.{}::int8", quote(&c.name)),
        _ => format!("{alias}.{}::text", quote(&c.name)),
    }
}

/// Counts the rows in scope and finds the first and last keys.
pub async fn scope(pool: &PgPool, layout: &Layout) -> Result<Scope, sqlx::Error> {
    let key = key_expr("s", &layout.key);
    let sql = format!(
        "SELECT count(*), min({key}), max({key}) FROM {} AS s WHERE {}",
        layout.source.quoted(),
        layout.scope_sql()
    );
    let row = sqlx::query(super::built(sql)).fetch_one(pool).await?;
    let rows: i64 = row.try_get(0)?;
    let (first, last) = match layout.key_type {
        KeyType::Integer => (
            row.try_get::<Option<i64>, _>(1)?.map(Key::Int),
            row.try_get::<Option<i64>, _>(2)?.map(Key::Int),
        ),
        KeyType::Text => (
            row.try_get::<Option<String>, _>(1)?.map(Key::Text),
            row.try_get::<Option<String>, _>(2)?.map(Key::Text),
        ),
    };
    Ok(Scope {
        rows: u64::try_from(rows).unwrap_or(0),
        first,
        high_watermark: last,
    })
}

/// Reads the rows in scope with keys in `(lo, hi]`, at most `limit`.
pub async fn read(
    pool: &PgPool,
    layout: &Layout,
    lo: Option<&Key>,
    hi: &Key,
    limit: Option<u64>,
) -> Result<ChunkRows, SourceError> {
    let sql = read_sql(layout, lo.is_some(), limit.is_some(), key_expr, column_expr);
    let mut query = sqlx::query(super::built(sql));
    for key in lo.into_iter().chain([hi]) {
        query = match key {
            Key::Int(i) => query.bind(*i),
            Key::Text(s) => query.bind(s.as_str()),
        };
    }
    if let Some(n) = limit {
        query = query.bind(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let rows = query
        .fetch_all(pool)
        .await
        .map_err(|source| SourceError::Query {
            what: "reading a chunk",
            table: layout.source.quoted(),
            source,
        })?;
    let mut out = ChunkRows::default();
    let n_in = layout.inputs.len();
    let n_out = layout.outputs.len();
    for row in &rows {
        let key = match layout.key_type {
            KeyType::Integer => Key::Int(
                row.try_get(0)
                    .map_err(|e| decode_error(layout, &layout.key.name, "?", &e))?,
            ),
            KeyType::Text => Key::Text(
                row.try_get(0)
                    .map_err(|e| decode_error(layout, &layout.key.name, "?", &e))?,
            ),
        };
        let mut inputs = Vec::with_capacity(n_in);
        for (i, c) in layout.inputs.iter().enumerate() {
            inputs.push(
                decode(row, 1 + i, c)
                    .map_err(|e| decode_error(layout, &c.name, &key.to_string(), &e))?,
            );
        }
        let mut current = Vec::with_capacity(n_out);
        for (i, c) in layout.outputs.iter().enumerate() {
            current.push(
                decode(row, 1 + n_in + i, c)
                    .map_err(|e| decode_error(layout, &c.name, &key.to_string(), &e))?,
            );
        }
        let present =
            layout.same_table() || row.try_get::<bool, _>(1 + n_in + n_out).unwrap_or(false);
        out.push(key, inputs, present.then_some(current));
    }
    Ok(out)
}

fn decode_error(layout: &Layout, column: &str, key: &str, e: &sqlx::Error) -> SourceError {
    SourceError::Decode {
        table: layout.source.quoted(),
        column: column.to_string(),
        key: key.to_string(),
        message: e.to_string(),
    }
}

fn decode(row: &PgRow, i: usize, c: &ColumnInfo) -> Result<Value, sqlx::Error> {
    Ok(match &c.kind {
        ColumnKind::Integer => row
            .try_get::<Option<i64>, _>(i)?
            .map_or(Value::Null, Value::Integer),
        ColumnKind::Float => row
            .try_get::<Option<f64>, _>(i)?
            .map_or(Value::Null, Value::Float),
        ColumnKind::Boolean => row
            .try_get::<Option<bool>, _>(i)?
            .map_or(Value::Null, Value::Boolean),
        ColumnKind::Bytes => row
            .try_get::<Option<Vec<u8>>, _>(i)?
            .map_or(Value::Null, Value::Bytes),
        ColumnKind::Json => row
            .try_get::<Option<String>, _>(i)?
            .map_or(Value::Null, Value::Json),
        ColumnKind::Timestamp => row
            .try_get::<Option<DateTime<Utc>>, _>(i)?
            .map_or(Value::Null, value::timestamp),
        ColumnKind::Text | ColumnKind::TextForm(_) | ColumnKind::Any => row
            .try_get::<Option<String>, _>(i)?
            .map_or(Value::Null, Value::Text),
    })
}
