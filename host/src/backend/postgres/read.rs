//! PostgreSQL reads: consumes a pool and a [`Layout`], produces catalog
//! entries from `pg_attribute`/`pg_index`, the scope, and chunks decoded
//! from the binary protocol into WIT values.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{PgPool, Row as _};

use crate::chunk::{Key, KeyType};
use crate::db::DbUrl;
use crate::source::{
    ColumnInfo, Dialect, Rows, SourceError, TableInfo, TableRef, Timeouts, built, cast_text,
    dollar, quote,
};
use crate::value::{self, ColumnKind, Value};

/// The name this process's sessions announce themselves by in
/// `pg_stat_activity`: `refill pid N`.
pub fn session_name() -> String {
    format!("refill pid {}", std::process::id())
}

/// Opens a pool. Sessions announce themselves by [`session_name`].
pub async fn connect(
    url: &DbUrl,
    connections: u32,
    timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url.expose())?.application_name(&session_name());
    crate::backend::probe(&options, timeout).await?;
    crate::backend::pool_options(connections, timeout)
        .connect_with(options)
        .await
}

/// Binds the parameters of a chunk query as
/// [`read_sql`](crate::source::read_sql) numbers them; a key list is one
/// array.
pub(super) fn bind_rows<'q>(
    rows: &Rows<'_>,
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    key_type: KeyType,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    match (rows, key_type) {
        (Rows::Keys(keys), KeyType::Integer) => query.bind(
            keys.iter()
                .filter_map(|k| if let Key::Int(i) = k { Some(*i) } else { None })
                .collect::<Vec<_>>(),
        ),
        (Rows::Keys(keys), KeyType::Text) => query.bind(
            keys.iter()
                .filter_map(|k| match k {
                    Key::Text(s) => Some(s.clone()),
                    Key::Int(_) => None,
                })
                .collect::<Vec<_>>(),
        ),
        (range, _) => range.bind(query),
    }
}

/// Milliseconds of a timeout, at least 1 (0 would mean none).
fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

/// Starts a read-only transaction whose statements end after `timeout` and
/// wait at most `lock` for a lock. `BEGIN READ ONLY`, not the session's
/// `default_transaction_read_only`, which a function called from the spec's
/// `where` could turn off with `set_config`: once a transaction has run a
/// query, PostgreSQL refuses to make it read-write. The settings are
/// `SET LOCAL`, so nothing outlives the transaction (PgBouncer in
/// transaction mode hands the connection on after it); one round trip.
pub async fn begin_read(
    pool: &PgPool,
    timeout: Duration,
    lock: Duration,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    pool.begin_with(sqlx::AssertSqlSafe(format!(
        "BEGIN READ ONLY; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}",
        millis(timeout),
        millis(lock)
    )))
    .await
}

/// Starts a read-write transaction for a chunk's write, bounded as
/// [`begin_read`] bounds a read.
pub async fn begin_write(
    pool: &PgPool,
    timeout: Duration,
    lock: Duration,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    pool.begin_with(sqlx::AssertSqlSafe(format!(
        "BEGIN; {}",
        write_settings(timeout, lock)
    )))
    .await
}

/// The `SET LOCAL`s of a write transaction: its bounds, no JIT, and a plan
/// made for each statement's own arguments.
/// - A chunk's write costs more than `jit_above_cost` (10,000 rows looked
///   up by key), and compiling it took 9 to 13 ms of a 50 ms statement,
///   every chunk, for a plan that runs once.
/// - A prepared statement's generic plan, which PostgreSQL switches to
///   after five executions, knows neither how many rows the arrays hold
///   (it assumes 100) nor how wide a key range is: it looks every key up,
///   where a plan for the chunk's own arrays and range reads the range
///   once (see `write::Parts::fast`). Planning takes under 0.5 ms.
fn write_settings(timeout: Duration, lock: Duration) -> String {
    format!(
        "SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}; SET LOCAL jit = off; \
         SET LOCAL plan_cache_mode = force_custom_plan",
        millis(timeout),
        millis(lock)
    )
}

/// The gentle limiter's latency probe on a database refill writes to:
/// `read`, and a transaction id, so that the read-only transaction's
/// COMMIT writes a commit record. That record queues for the WAL
/// insertion locks and buffers behind a chunk's WAL, as the application's
/// commits do; a read alone misses that contention. It writes no data.
pub fn committing(read: &str) -> String {
    format!("SELECT ({read}), txid_current()")
}

/// The functions `condition` (a `where` on `table`) calls that PostgreSQL
/// marks volatile, directly or behind an operator, by their signatures.
/// Read from the dependencies of a temporary view of the condition, made
/// and dropped inside a transaction that is rolled back: the condition is
/// parsed, never run.
pub async fn volatile_functions(
    pool: &PgPool,
    timeouts: &Timeouts,
    table: &str,
    condition: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = begin_write(pool, timeouts.read, timeouts.lock).await?;
    let view = format!(
        "CREATE TEMPORARY VIEW \"__refill_where\" AS SELECT 1 AS x FROM {table} WHERE ({condition})"
    );
    sqlx::query(built(view)).execute(&mut *tx).await?;
    let names = sqlx::query_scalar::<_, String>(
        "SELECT DISTINCT CAST(CAST(p.oid AS regprocedure) AS text) FROM pg_depend AS d \
         JOIN pg_rewrite AS r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
         LEFT JOIN pg_operator AS o ON d.refclassid = 'pg_operator'::regclass AND o.oid = d.refobjid \
         JOIN pg_proc AS p ON p.oid = CASE WHEN d.refclassid = 'pg_proc'::regclass THEN d.refobjid \
         ELSE o.oprcode END \
         WHERE r.ev_class = 'pg_temp.\"__refill_where\"'::regclass AND p.provolatile = 'v' ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    Ok(names)
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
pub async fn table(
    conn: &mut sqlx::PgConnection,
    table: &TableRef,
) -> Result<Option<TableInfo>, SourceError> {
    let query_error = SourceError::catalog(table);
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table.quoted())
        .fetch_one(&mut *conn)
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
    .fetch_all(&mut *conn)
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
                type_name,
                not_null: r.get(3),
                unique: r.get(4),
                collation: None,
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
pub(super) fn column_expr(alias: &str, c: &ColumnInfo) -> String {
    read_expr(&format!("{alias}.{}", quote(&c.name)), c)
}

/// The expression reading `col`, a value of column `c`'s type, so that it
/// decodes as the Rust type of `c`'s kind.
pub(crate) fn read_expr(col: &str, c: &ColumnInfo) -> String {
    match &c.kind {
        ColumnKind::Integer => format!("{col}::int8"),
        ColumnKind::Float => format!("{col}::float8"),
        ColumnKind::Boolean | ColumnKind::Bytes | ColumnKind::Any => col.to_string(),
        ColumnKind::Timestamp if c.type_name == "timestamp" => {
            format!("({col} AT TIME ZONE 'UTC')")
        }
        ColumnKind::Timestamp => col.to_string(),
        ColumnKind::Text | ColumnKind::Json | ColumnKind::TextForm(_) => format!("{col}::text"),
    }
}

/// How PostgreSQL spells refill's queries. It has no guard token: a
/// conditional write compares each column with the value read, through the
/// same expression the read used, so the comparison is exact and nothing is
/// hashed.
pub const DIALECT: Dialect = Dialect {
    quote,
    param: dollar,
    as_text: cast_text,
    key_cast,
    key_expr,
    column_expr,
    token: None,
    keys_filter,
    same_value,
    double: "DOUBLE PRECISION",
};

/// `read COLLATE "C" IS NOT DISTINCT FROM expected` for text forms, so
/// that the comparison is byte for byte.
fn same_value(read: &str, c: &ColumnInfo, expected: &str) -> String {
    let exact = match c.kind {
        ColumnKind::Text | ColumnKind::TextForm(_) | ColumnKind::Json => " COLLATE \"C\"",
        _ => "",
    };
    format!("{read}{exact} IS NOT DISTINCT FROM {expected}")
}

/// `key = ANY($n::type[])`: one array parameter holds every key.
fn keys_filter(key: &ColumnInfo, first: usize, _count: usize) -> String {
    let element = match key.key_type() {
        Some(KeyType::Integer) => "int8",
        _ => &key.sql_type,
    };
    format!("{} = ANY(${first}::{element}[])", quote(&key.name))
}

/// The cast that makes a bound key compare the way the key column sorts:
/// a text key of type `citext` must be compared as `citext`, not `text`.
pub(super) fn key_cast(key: &ColumnInfo) -> String {
    match key.key_type() {
        Some(KeyType::Text) => format!("::{}", key.sql_type),
        _ => String::new(),
    }
}

/// The select-list expression reading a key column.
pub(super) fn key_expr(alias: &str, c: &ColumnInfo) -> String {
    match c.key_type() {
        Some(KeyType::Integer) => format!("{alias}.{}::int8", quote(&c.name)),
        _ => format!("{alias}.{}::text", quote(&c.name)),
    }
}

/// Decodes column `i` as the Rust type of its kind.
pub(crate) fn decode(row: &PgRow, i: usize, c: &ColumnInfo) -> Result<Value, String> {
    if c.kind == ColumnKind::Timestamp {
        let raw = row.try_get_raw(i).map_err(|e| crate::db::describe(&e))?;
        return timestamp_of(&raw);
    }
    typed(row, i, c).map_err(|e| crate::db::describe(&e))
}

/// Seconds from the Unix epoch to PostgreSQL's, 2000-01-01 UTC.
const POSTGRES_EPOCH: i64 = 946_684_800;

/// A timestamp's value, decoded exactly rather than by sqlx's chrono
/// decoder (which panics on `infinity` and on years past chrono's range):
/// PostgreSQL sends microseconds since its epoch, and `i64::MAX` and
/// `i64::MIN` for `infinity` and `-infinity`. Those, and years past
/// ±262,000, have no [`Value::Timestamp`]; they are refused with a message
/// that says how to leave them out.
fn timestamp_of(raw: &sqlx::postgres::PgValueRef<'_>) -> Result<Value, String> {
    use sqlx::ValueRef as _;
    use sqlx::postgres::PgValueFormat;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let unrepresentable = |what: &str| {
        format!(
            "the value is {what}, which a transform's timestamp cannot hold; \
             leave such rows out with [source] where (for example `isfinite(column)`)"
        )
    };
    let micros = match raw.format() {
        PgValueFormat::Binary => {
            let bytes = raw.as_bytes().map_err(|e| e.to_string())?;
            let bytes: [u8; 8] = bytes
                .try_into()
                .map_err(|_| format!("a timestamp of {} bytes, not 8", bytes.len()))?;
            i64::from_be_bytes(bytes)
        }
        PgValueFormat::Text => {
            let text = raw.as_str().map_err(|e| e.to_string())?;
            return match text {
                "infinity" | "-infinity" => Err(unrepresentable(text)),
                _ => value::parse_timestamp_text(text)
                    .map(value::timestamp)
                    .ok_or_else(|| unrepresentable(&format!("{text:?}"))),
            };
        }
    };
    match micros {
        i64::MAX => return Err(unrepresentable("infinity")),
        i64::MIN => return Err(unrepresentable("-infinity")),
        _ => {}
    }
    let seconds = POSTGRES_EPOCH + micros.div_euclid(1_000_000);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a remainder in [0, 1,000,000) times 1,000"
    )]
    let nanos = (micros.rem_euclid(1_000_000) * 1_000) as u32;
    DateTime::<Utc>::from_timestamp(seconds, nanos)
        .map(value::timestamp)
        .ok_or_else(|| {
            unrepresentable(&format!(
                "{seconds} s from 1970, past the years a timestamp can carry (±262,000)"
            ))
        })
}

fn typed(row: &PgRow, i: usize, c: &ColumnInfo) -> Result<Value, sqlx::Error> {
    if let Some(value) = crate::backend::decode_common(row, i, &c.kind)? {
        return Ok(value);
    }
    Ok(match &c.kind {
        ColumnKind::Integer => row
            .try_get::<Option<i64>, _>(i)?
            .map_or(Value::Null, Value::Integer),
        ColumnKind::Boolean => row
            .try_get::<Option<bool>, _>(i)?
            .map_or(Value::Null, Value::Boolean),
        // A timestamp: decode_common read the other kinds.
        _ => timestamp_of(&row.try_get_raw(i)?).map_err(|m| sqlx::Error::Decode(m.into()))?,
    })
}
