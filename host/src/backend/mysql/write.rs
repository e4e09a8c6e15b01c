//! MySQL/MariaDB writes: consumes a chunk's updates and produces them in
//! the target, in a transaction that tells which rows it wrote: first a
//! `SELECT … FOR UPDATE SKIP LOCKED` of the chunk's keys, then one
//! `UPDATE JSON_TABLE(?, …) AS u STRAIGHT_JOIN target ON target.key = u.k
//! [AND guard] SET col = u.v0, …` of the rows it locked, the rows sent as
//! one JSON document (or, for columns JSON does not carry exactly, `UPDATE
//! target JOIN (SELECT ? AS k, ? AS v0 … UNION ALL SELECT ?, ? …) AS u …`).
//!
//! MySQL has no `UPDATE … RETURNING` (MariaDB has it only for `INSERT` and
//! `DELETE`), so the keys written are known this way: the session counts
//! matched rows (the client's `FOUND_ROWS` flag, which sqlx sets), and when
//! the update matched every row, as it does unless the application changed
//! or deleted rows meanwhile, every key was written: two statements, plus
//! `BEGIN` and `COMMIT`. Otherwise that transaction is rolled back and a
//! second one first selects the rows the guard lets through `FOR UPDATE`
//! (locking them, so that nobody changes them before the update), then
//! updates exactly those: two statements, only for chunks with conflicts.

use chrono::NaiveDateTime;
use sqlx::{MySqlPool, Row as _};

use super::read::{DIALECT, key_match, quote};
use crate::chunk::{Key, KeyType};
use crate::sink::{Expected, Guard, SinkError, Update, guard_sql, guarded};
use crate::source::{ColumnInfo, Layout};
use crate::value::{self, ColumnKind, Value};

type Query<'q> = sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>;

/// The most placeholders a MySQL statement may hold.
const MAX_PARAMS: usize = 65_535;

/// The names of the update rows' columns; unusual, so that they cannot
/// capture a name in the spec's `where`.
const KEY_NAME: &str = "`__refill_k`";

fn value_name(i: usize) -> String {
    format!("`__refill_v{i}`")
}

fn expected_name(i: usize) -> String {
    format!("`__refill_e{i}`")
}

/// Binds `value`, a value of a column of kind `kind`; a NULL is bound with
/// the column's type, so that the union's column keeps the type of its
/// values.
fn bind<'q>(query: Query<'q>, kind: &ColumnKind, value: Value) -> Result<Query<'q>, String> {
    Ok(match value {
        Value::Null => match kind {
            ColumnKind::Integer => query.bind(Option::<i64>::None),
            ColumnKind::Float => query.bind(Option::<f64>::None),
            ColumnKind::Boolean => query.bind(Option::<bool>::None),
            ColumnKind::Bytes => query.bind(Option::<Vec<u8>>::None),
            ColumnKind::Timestamp => query.bind(Option::<NaiveDateTime>::None),
            _ => query.bind(Option::<String>::None),
        },
        Value::Boolean(b) => query.bind(b),
        Value::Integer(i) => query.bind(i),
        Value::Float(f) => query.bind(f),
        Value::Text(s) | Value::Json(s) => query.bind(s),
        Value::Bytes(b) => query.bind(b),
        Value::Timestamp(t) => query.bind(
            value::to_datetime(&t)
                .ok_or("timestamp out of range")?
                .naive_utc(),
        ),
    })
}

/// The derived table of `rows` update rows: the key, one value per output
/// column, then (with a guard) one expected value per guarded column.
fn rows_sql(outputs: usize, guarded: usize, rows: usize) -> String {
    let width = 1 + outputs + guarded;
    let mut names = vec![KEY_NAME.to_string()];
    names.extend((0..outputs).map(value_name));
    names.extend((0..guarded).map(expected_name));
    let first: Vec<String> = names.iter().map(|n| format!("? AS {n}")).collect();
    let mut sql = format!("SELECT {}", first.join(", "));
    let rest = format!(" UNION ALL SELECT {}", vec!["?"; width].join(", "));
    for _ in 1..rows {
        sql.push_str(&rest);
    }
    sql
}

/// The join of the target `t` with the update rows `u`: the key, then the
/// guard. With `values`, the rows carry the new values too; a statement
/// that only locks or selects rows is sent their keys and, for the guard,
/// the values expected.
fn join_sql(layout: &Layout, guard: Guard, rows: usize, values: bool) -> String {
    let outputs = if values { layout.outputs.len() } else { 0 };
    let rows = rows_sql(outputs, guarded(layout, guard).len(), rows);
    join_on(layout, guard, &format!("({rows})"), false)
}

/// The join of the target with `rows`, a table of update rows: the key,
/// then the guard. With `rows_first`, `rows STRAIGHT_JOIN target`, which
/// MySQL and MariaDB run in that order; else `target JOIN rows`.
fn join_on(layout: &Layout, guard: Guard, rows: &str, rows_first: bool) -> String {
    let target = DIALECT.table(&layout.target);
    let u_key = format!("u.{KEY_NAME}");
    let key_expr = key_match(&u_key, &layout.target_key);
    let value = |i: usize| format!("u.{}", expected_name(i));
    let expected = Expected {
        token: "NULL",
        value: &value,
    };
    // The guard's subquery on a separate source compares its key the way
    // that key compares.
    let source_key = key_match(&u_key, &layout.key);
    let guard = guard_sql(layout, &DIALECT, guard, &target, &source_key, &expected);
    let tables = match rows_first {
        true => format!("{rows} AS u STRAIGHT_JOIN {target}"),
        false => format!("{target} JOIN {rows} AS u"),
    };
    format!(
        "{tables} ON {target}.{} = {key_expr}{guard}",
        quote(&layout.target_key.name),
    )
}

/// `UPDATE target JOIN (…) AS u ON … SET col = u.v0, …` for `rows` rows.
/// No alias for the target: the spec's `where`, which the guard repeats,
/// may name the table.
pub fn update_sql(layout: &Layout, guard: Guard, rows: usize) -> String {
    set_sql(layout, &join_sql(layout, guard, rows, true))
}

/// `UPDATE JSON_TABLE(?, …) AS u STRAIGHT_JOIN target ON … SET col = u.v0,
/// …`: the update rows come as one JSON array of arrays (see
/// [`json_rows`]). `STRAIGHT_JOIN` keeps the rows sent first, each finding
/// its target row by key: with the target first, the update would scan it,
/// locking (and waiting for) rows it does not write.
pub fn update_json_sql(layout: &Layout, guard: Guard) -> String {
    let guarded = guarded(layout, guard);
    let key_type = match layout.key_type {
        KeyType::Integer => "BIGINT",
        KeyType::Text => "LONGTEXT",
    };
    let mut columns = vec![format!("{KEY_NAME} {key_type} PATH '$[0]'")];
    let names = (0..layout.outputs.len())
        .map(value_name)
        .zip(&layout.outputs)
        .chain((0..guarded.len()).map(expected_name).zip(guarded));
    for (i, (name, c)) in names.enumerate() {
        let sql_type = match c.kind {
            ColumnKind::Integer => "BIGINT",
            _ => "LONGTEXT",
        };
        columns.push(format!("{name} {sql_type} PATH '$[{}]'", i + 1));
    }
    let rows = format!("JSON_TABLE(?, '$[*]' COLUMNS ({}))", columns.join(", "));
    set_sql(layout, &join_on(layout, guard, &rows, true))
}

/// `UPDATE join SET col = u.v0, …`.
fn set_sql(layout: &Layout, join: &str) -> String {
    let target = DIALECT.table(&layout.target);
    let sets: Vec<String> = layout
        .outputs
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{target}.{} = u.{}", quote(&c.name), value_name(i)))
        .collect();
    format!("UPDATE {join} SET {}", sets.join(", "))
}

/// Whether a column of kind `kind` goes through [`json_rows`]: integers
/// (as JSON numbers, into `BIGINT`) and text in any form (as JSON strings,
/// into `LONGTEXT`, which the assignment converts as it converts a bound
/// string). Floats, booleans, bytes and timestamps are bound one by one.
fn in_json(kind: &ColumnKind) -> bool {
    matches!(
        kind,
        ColumnKind::Integer | ColumnKind::Text | ColumnKind::Json | ColumnKind::TextForm(_)
    )
}

/// The update rows as the JSON array [`update_json_sql`] reads:
/// `[[key, v0, …, e0, …], …]`. `None` when a column or a value does not
/// go through JSON exactly (see [`in_json`]): a value whose variant is not
/// its column's kind, a row without its expected values. Such rows are
/// bound one by one, as before, so that nothing is converted silently
/// (`JSON_TABLE` turns a string in a `BIGINT` column into 0, with only a
/// warning).
fn json_rows(layout: &Layout, guard: Guard, updates: &[&Update]) -> Option<String> {
    use std::io::Write as _;
    let guarded = guarded(layout, guard);
    if !layout
        .outputs
        .iter()
        .chain(guarded)
        .all(|c| in_json(&c.kind))
    {
        return None;
    }
    let mut doc = Vec::with_capacity(64 * updates.len());
    doc.push(b'[');
    for (i, update) in updates.iter().enumerate() {
        if i > 0 {
            doc.push(b',');
        }
        doc.push(b'[');
        // The key column is typed by the layout's key type: a key of the
        // other type would be converted (a string into `BIGINT`: 0).
        match (&update.key, layout.key_type) {
            (Key::Int(k), KeyType::Integer) => write!(doc, "{k}").ok()?,
            (Key::Text(k), KeyType::Text) => serde_json::to_writer(&mut doc, k).ok()?,
            _ => return None,
        }
        let expected: &[Value] = match guard {
            Guard::None => &[],
            _ if update.expected.len() != guarded.len() => return None,
            _ => &update.expected,
        };
        let columns = layout.outputs.iter().chain(guarded);
        for (value, column) in update.values.iter().chain(expected).zip(columns) {
            doc.push(b',');
            match (value, &column.kind) {
                (Value::Null, _) => doc.extend_from_slice(b"null"),
                (Value::Integer(n), ColumnKind::Integer) => write!(doc, "{n}").ok()?,
                (Value::Text(s) | Value::Json(s), kind) if *kind != ColumnKind::Integer => {
                    serde_json::to_writer(&mut doc, s).ok()?;
                }
                _ => return None,
            }
        }
        doc.push(b']');
    }
    doc.push(b']');
    // Escapes can make a string six times longer (`\u0001`): a document
    // past what a statement may carry goes as bound values instead.
    if doc.len() as u64 > 3 * STATEMENT_BYTES {
        return None;
    }
    String::from_utf8(doc).ok()
}

/// The keys, as sent, of the rows the update would write now, locking
/// them; with `skip`, the rows another transaction holds are left out
/// rather than waited for.
///
/// The rows are found by key from the rows sent (the session has
/// `derived_with_keys=off`, so the optimizer cannot turn the join around),
/// and only those are locked. A plain `key IN (?, …)` would be cheaper, but
/// MariaDB may run it as a scan of the index, which locks every row it
/// passes under REPEATABLE READ: on a 3,000-row table, a 1,000-key chunk
/// locked the whole table, and the other worker's rows came back "held by
/// another transaction".
pub fn select_sql(layout: &Layout, guard: Guard, rows: usize, skip: bool) -> String {
    format!(
        "SELECT u.{KEY_NAME} FROM {} FOR UPDATE{}",
        join_sql(layout, guard, rows, false),
        if skip { " SKIP LOCKED" } else { "" }
    )
}

/// Bytes of values one UPDATE statement carries at most: well under
/// MariaDB's default `max_allowed_packet` (16 MiB), which a statement must
/// fit whole. A row larger than this goes in a statement of its own.
const STATEMENT_BYTES: u64 = 4 << 20;

/// `updates` cut into statements of at most `per_statement` rows and,
/// past the first row of each, [`STATEMENT_BYTES`] of values.
fn statements<'a, 'u>(updates: &'a [&'u Update], per_statement: usize) -> Vec<&'a [&'u Update]> {
    let size = |u: &Update| -> u64 {
        u.values
            .iter()
            .chain(&u.expected)
            .map(crate::source::value_bytes)
            .sum()
    };
    let mut out = Vec::new();
    let mut start = 0;
    while start < updates.len() {
        let mut end = start + 1;
        let mut bytes = size(updates[start]);
        while end < updates.len() && end - start < per_statement {
            let next = size(updates[end]);
            if bytes + next > STATEMENT_BYTES {
                break;
            }
            bytes += next;
            end += 1;
        }
        out.push(&updates[start..end]);
        start = end;
    }
    out
}

/// Rows per statement: as many as fit under the placeholder limit.
fn rows_per_statement(layout: &Layout, guard: Guard) -> usize {
    let width = 1 + layout.outputs.len() + guarded(layout, guard).len();
    (MAX_PARAMS / width).max(1)
}

/// Binds the update rows in the order [`rows_sql`] names them; without
/// `values`, their keys and expected values only (see [`join_sql`]).
fn bind_rows<'q>(
    mut query: Query<'q>,
    layout: &Layout,
    guard: Guard,
    updates: &[&Update],
    values: bool,
) -> Result<Query<'q>, SinkError> {
    let guarded_columns = guarded(layout, guard);
    let encode_error = |column: &ColumnInfo, key: &Key, message: String| {
        SinkError::encode(layout, column, key, message)
    };
    for &update in updates {
        query = match &update.key {
            Key::Int(i) => query.bind(*i),
            Key::Text(s) => query.bind(s.clone()),
        };
        for (value, column) in update.values.iter().zip(&layout.outputs).filter(|_| values) {
            query = bind(query, &column.kind, value.clone())
                .map_err(|m| encode_error(column, &update.key, m))?;
        }
        if guard == Guard::None {
            continue;
        }
        if update.expected.len() != guarded_columns.len() {
            return Err(encode_error(
                &guarded_columns[0],
                &update.key,
                "no expected values to guard on".into(),
            ));
        }
        for (value, column) in update.expected.iter().zip(guarded_columns) {
            query = bind(query, &column.kind, value.clone())
                .map_err(|m| encode_error(column, &update.key, m))?;
        }
    }
    Ok(query)
}

/// Locks, skipping rows another transaction holds, then selects `updates`'
/// keys with `guard`; returns the keys, as sent, of the rows the query
/// returns.
async fn select_keys(
    tx: &mut sqlx::MySqlConnection,
    layout: &Layout,
    guard: Guard,
    updates: &[&Update],
    skip: bool,
) -> Result<std::collections::HashSet<Key>, SinkError> {
    let write_error = |error| SinkError::Write {
        table: layout.target.quoted(),
        rows: updates.len(),
        error,
    };
    let mut keys = std::collections::HashSet::new();
    for batch in updates.chunks(rows_per_statement(layout, guard)) {
        let sql = select_sql(layout, guard, batch.len(), skip);
        let query = bind_rows(
            sqlx::query(crate::source::built(sql)),
            layout,
            guard,
            batch,
            false,
        )?;
        for row in query.fetch_all(&mut *tx).await.map_err(write_error)? {
            keys.insert(match layout.key_type {
                KeyType::Integer => Key::Int(row.try_get(0).map_err(write_error)?),
                KeyType::Text => Key::Text(row.try_get(0).map_err(write_error)?),
            });
        }
    }
    Ok(keys)
}

/// Writes a chunk's updates; returns the keys of the rows written and of
/// the rows another transaction held locked.
///
/// The rows are first locked with `FOR UPDATE SKIP LOCKED` (MariaDB 10.6+,
/// MySQL 8), so the write never waits behind the application's row locks;
/// the session's `innodb_lock_wait_timeout` of a second bounds what that
/// cannot cover. The update then joins only the rows locked: when it
/// matches them all (nobody changed them since they were read), that is
/// one more statement; otherwise the rows the guard lets through are
/// selected among those locked, and exactly those are updated.
pub async fn write(
    pool: &MySqlPool,
    layout: &Layout,
    updates: &[Update],
    guard: Guard,
) -> Result<(Vec<Key>, Vec<Key>), SinkError> {
    let mut conn = pool.acquire().await.map_err(|error| SinkError::Write {
        table: layout.target.quoted(),
        rows: updates.len(),
        error,
    })?;
    let result = write_on(&mut conn, layout, updates, guard).await;
    if result.is_err() {
        // A failed write's transaction ends now, not when the connection
        // is next used: the split halves of a refused write must not find
        // its row locks (and defer their own rows as locked).
        if let Err(e) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
            tracing::debug!(error = %crate::db::describe(&e), "Could not roll a failed write back.");
        }
    }
    result
}

async fn write_on(
    conn: &mut sqlx::MySqlConnection,
    layout: &Layout,
    updates: &[Update],
    guard: Guard,
) -> Result<(Vec<Key>, Vec<Key>), SinkError> {
    use sqlx::Connection as _;
    let updates: Vec<&Update> = updates.iter().collect();
    let n = updates.len();
    let write_error = |error| SinkError::Write {
        table: layout.target.quoted(),
        rows: n,
        error,
    };
    let per_statement = rows_per_statement(layout, guard);
    let mut tx = conn.begin().await.map_err(write_error)?;
    let locked = select_keys(&mut tx, layout, Guard::None, &updates, true).await?;
    let (mine, others): (Vec<&Update>, Vec<&Update>) =
        updates.into_iter().partition(|u| locked.contains(&u.key));
    // Rows not locked are held by someone else, or gone: a plain read
    // (which takes no lock) tells which.
    let busy: Vec<Key> = if others.is_empty() {
        Vec::new()
    } else {
        let present = select_present(&mut tx, layout, &others).await?;
        others
            .into_iter()
            .map(|u| u.key.clone())
            .filter(|k| present.contains(k))
            .collect()
    };
    let mut matched = 0;
    for batch in statements(&mine, per_statement) {
        matched += update(&mut tx, layout, guard, batch).await?;
    }
    if matched == mine.len() as u64 {
        tx.commit().await.map_err(write_error)?;
        return Ok((mine.into_iter().map(|u| u.key.clone()).collect(), busy));
    }
    tx.rollback().await.map_err(write_error)?;

    // Some rows were changed or deleted meanwhile: lock the rows again,
    // find those the guard lets through, then write exactly those.
    let mut tx = conn.begin().await.map_err(write_error)?;
    let through = select_keys(&mut tx, layout, guard, &mine, true).await?;
    let written: Vec<&Update> = mine
        .into_iter()
        .filter(|u| through.contains(&u.key))
        .collect();
    for batch in statements(&written, per_statement) {
        update(&mut tx, layout, guard, batch).await?;
    }
    tx.commit().await.map_err(write_error)?;
    Ok((written.into_iter().map(|u| u.key.clone()).collect(), busy))
}

/// Updates the rows of `batch`, in one statement: the rows as one JSON
/// document when they go through JSON exactly ([`json_rows`]), else one
/// placeholder per value. Returns the rows matched.
///
/// A `JSON_TABLE` of 10,000 rows costs MariaDB about a fifth less than the
/// union of as many `SELECT ?, ?, ?` (one select to plan and run per row),
/// and the host builds one string rather than binding 30,000 values.
async fn update(
    tx: &mut sqlx::MySqlConnection,
    layout: &Layout,
    guard: Guard,
    batch: &[&Update],
) -> Result<u64, SinkError> {
    let query = match json_rows(layout, guard, batch) {
        Some(doc) => sqlx::query(crate::source::built(update_json_sql(layout, guard))).bind(doc),
        None => bind_rows(
            sqlx::query(crate::source::built(update_sql(layout, guard, batch.len()))),
            layout,
            guard,
            batch,
            true,
        )?,
    };
    let done = query
        .execute(&mut *tx)
        .await
        .map_err(|error| SinkError::Write {
            table: layout.target.quoted(),
            rows: batch.len(),
            error,
        })?;
    Ok(done.rows_affected())
}

/// The keys of `updates` whose target rows exist, read without locking.
async fn select_present(
    tx: &mut sqlx::MySqlConnection,
    layout: &Layout,
    updates: &[&Update],
) -> Result<std::collections::HashSet<Key>, SinkError> {
    let write_error = |error| SinkError::Write {
        table: layout.target.quoted(),
        rows: updates.len(),
        error,
    };
    let mut keys = std::collections::HashSet::new();
    for batch in updates.chunks(rows_per_statement(layout, Guard::None)) {
        let sql = format!(
            "SELECT u.{KEY_NAME} FROM {}",
            join_sql(layout, Guard::None, batch.len(), false)
        );
        let query = bind_rows(
            sqlx::query(crate::source::built(sql)),
            layout,
            Guard::None,
            batch,
            false,
        )?;
        for row in query.fetch_all(&mut *tx).await.map_err(write_error)? {
            keys.insert(match layout.key_type {
                KeyType::Integer => Key::Int(row.try_get(0).map_err(write_error)?),
                KeyType::Text => Key::Text(row.try_get(0).map_err(write_error)?),
            });
        }
    }
    Ok(keys)
}

/// Whether MySQL stores a value of `c` in another form than the one sent,
/// in a way the host can compute: a `FLOAT` keeps single precision, a
/// `CHAR` is read back without trailing spaces.
pub fn reshapes(c: &ColumnInfo) -> bool {
    (c.kind == ColumnKind::Float && c.type_name == "float")
        || (c.kind == ColumnKind::Text && c.type_name == "char")
}

/// Replaces the values of the output columns that [`reshapes`] with the
/// form MySQL stores them in.
pub fn stored_form(layout: &Layout, rows: &mut [Vec<Value>]) {
    for (i, c) in layout.outputs.iter().enumerate() {
        if !reshapes(c) {
            continue;
        }
        for row in rows.iter_mut() {
            match row.get_mut(i) {
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "a FLOAT column stores single precision"
                )]
                Some(Value::Float(f)) => *f = f64::from(*f as f32),
                Some(Value::Text(text)) => text.truncate(text.trim_end_matches(' ').len()),
                _ => {}
            }
        }
    }
}

/// Whether MySQL error `n` refuses a value (in strict mode) rather than
/// failing: data too long, out of range, incorrect or truncated values,
/// NULL into NOT NULL, duplicate keys, foreign keys, check constraints,
/// invalid JSON.
pub fn refuses_a_value(n: u16) -> bool {
    matches!(
        n,
        1048 // column cannot be null
            | 1062 // duplicate entry
            | 1216 | 1217 | 1451 | 1452 // foreign key
            | 1264 // out of range
            | 1265 // data truncated (an unknown enum label)
            | 1292 // incorrect datetime/date value
            | 1366 // incorrect integer/decimal/string value
            | 1367 // illegal value
            | 1406 // data too long
            | 1644 // SIGNAL from a trigger (a trigger refusing the row)
            | 1690 // value out of range in an expression
            | 3140 // invalid JSON (MySQL)
            | 3819 // check constraint violated (MySQL)
            | 4025 // check constraint failed (MariaDB)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::TableRef;
    use crate::source::testing::column;

    fn layout() -> Layout {
        let table = TableRef {
            schema: Some("app".into()),
            name: "quo`tes".into(),
        };
        crate::source::testing::layout(table.clone(), table, "region = 'eu'")
    }

    #[test]
    fn update_sql_joins_a_union_of_rows_on_the_key() {
        assert_eq!(
            update_sql(&layout(), Guard::None, 2),
            "UPDATE `app`.`quo``tes` JOIN (SELECT ? AS `__refill_k`, ? AS `__refill_v0` \
             UNION ALL SELECT ?, ?) AS u ON `app`.`quo``tes`.`id` = u.`__refill_k` \
             SET `app`.`quo``tes`.`status_v2` = u.`__refill_v0`"
        );
        let sql = update_sql(&layout(), Guard::Inputs, 1);
        assert!(
            sql.contains(
                "(SELECT ? AS `__refill_k`, ? AS `__refill_v0`, ? AS `__refill_e0`) AS u \
                 ON `app`.`quo``tes`.`id` = u.`__refill_k` \
                 AND CAST(CONVERT(`app`.`quo``tes`.`status` USING utf8mb4) AS BINARY) <=> CAST(u.`__refill_e0` AS BINARY) \
                 AND (region = 'eu') SET"
            ),
            "{sql}"
        );
        assert!(
            select_sql(&layout(), Guard::Inputs, 1, false)
                .starts_with("SELECT u.`__refill_k` FROM `app`.`quo``tes` JOIN (")
        );
        assert!(select_sql(&layout(), Guard::Inputs, 1, false).ends_with(" FOR UPDATE"));
        assert!(select_sql(&layout(), Guard::None, 1, true).ends_with(" FOR UPDATE SKIP LOCKED"));
    }

    #[test]
    fn rows_go_as_json_only_where_json_carries_them_exactly() {
        let l = layout();
        let update = |key: i64, value: Value, expected: Value| Update {
            key: Key::Int(key),
            values: vec![value],
            token: None,
            expected: vec![expected],
        };
        let rows = [
            update(1, Value::Text("a\"b\\ é\u{0}😀".into()), Value::Null),
            update(2, Value::Null, Value::Text("open".into())),
        ];
        let rows: Vec<&Update> = rows.iter().collect();
        assert_eq!(
            json_rows(&l, Guard::Inputs, &rows).as_deref(),
            Some(r#"[[1,"a\"b\\ é\u0000😀",null],[2,null,"open"]]"#)
        );
        assert_eq!(
            json_rows(&l, Guard::None, &rows).as_deref(),
            Some(r#"[[1,"a\"b\\ é\u0000😀"],[2,null]]"#)
        );
        let sql = update_json_sql(&l, Guard::Inputs);
        assert!(
            sql.starts_with(
                "UPDATE JSON_TABLE(?, '$[*]' COLUMNS (`__refill_k` BIGINT PATH '$[0]', \
                 `__refill_v0` LONGTEXT PATH '$[1]', `__refill_e0` LONGTEXT PATH '$[2]')) AS u \
                 STRAIGHT_JOIN `app`.`quo``tes` ON `app`.`quo``tes`.`id` = u.`__refill_k` AND "
            ),
            "{sql}"
        );
        assert!(
            sql.ends_with(" SET `app`.`quo``tes`.`status_v2` = u.`__refill_v0`"),
            "{sql}"
        );

        // A value that is not its column's kind, a column JSON does not
        // carry exactly, a row without its expected values: bound instead.
        let odd = [update(1, Value::Integer(7), Value::Null)];
        assert_eq!(
            json_rows(&l, Guard::None, &odd.iter().collect::<Vec<_>>()),
            None
        );
        let mut floats = layout();
        floats.outputs = vec![column("f", ColumnKind::Float)];
        let float = [update(1, Value::Float(0.1), Value::Null)];
        let float: Vec<&Update> = float.iter().collect();
        assert_eq!(json_rows(&floats, Guard::None, &float), None);
        let mut bare = update(1, Value::Null, Value::Null);
        bare.expected.clear();
        assert_eq!(json_rows(&l, Guard::Inputs, &[&bare]), None);
        let mut text_key = update(1, Value::Null, Value::Null);
        text_key.key = Key::Text("1".into());
        assert_eq!(json_rows(&l, Guard::None, &[&text_key]), None);
        let mut counts = layout();
        counts.outputs = vec![column("n", ColumnKind::Integer)];
        let text_in_int = [update(1, Value::Text("3".into()), Value::Null)];
        assert_eq!(
            json_rows(
                &counts,
                Guard::None,
                &text_in_int.iter().collect::<Vec<_>>()
            ),
            None,
            "JSON_TABLE would read a string in a BIGINT column as 0"
        );
        let int = [update(1, Value::Integer(i64::MIN), Value::Null)];
        assert_eq!(
            json_rows(&counts, Guard::None, &int.iter().collect::<Vec<_>>()).as_deref(),
            Some("[[1,-9223372036854775808]]")
        );
    }

    #[test]
    fn a_separate_target_guards_on_the_source_row() {
        let mut l = layout();
        l.target.name = "derived".into();
        let sql = update_sql(&l, Guard::Inputs, 1);
        assert!(
            sql.contains(
                "AND EXISTS (SELECT 1 FROM `app`.`quo``tes` AS s WHERE s.`id` = u.`__refill_k` \
                 AND CAST(CONVERT(s.`status` USING utf8mb4) AS BINARY) <=> CAST(u.`__refill_e0` AS BINARY) AND (region = 'eu'))"
            ),
            "{sql}"
        );
    }

    #[test]
    fn statements_are_cut_by_bytes_as_well_as_rows() {
        let update = |bytes: usize| Update {
            key: Key::Int(1),
            values: vec![Value::Bytes(vec![0; bytes])],
            token: None,
            expected: vec![],
        };
        let small: Vec<Update> = (0..10).map(|_| update(10)).collect();
        let small: Vec<&Update> = small.iter().collect();
        let sizes: Vec<usize> = statements(&small, 4).iter().map(|s| s.len()).collect();
        assert_eq!(sizes, [4, 4, 2]);
        // 3 MiB rows: one per statement; a 9 MiB row alone.
        let big = [
            update(3 << 20),
            update(3 << 20),
            update(9 << 20),
            update(10),
        ];
        let big: Vec<&Update> = big.iter().collect();
        let sizes: Vec<usize> = statements(&big, 100).iter().map(|s| s.len()).collect();
        assert_eq!(sizes, [1, 1, 1, 1]);
        assert!(statements(&[], 10).is_empty());
    }

    #[test]
    fn statements_stay_under_the_placeholder_limit() {
        let l = layout();
        assert_eq!(rows_per_statement(&l, Guard::None), 32_767);
        assert_eq!(rows_per_statement(&l, Guard::Inputs), 21_845);
        assert!(rows_per_statement(&l, Guard::Inputs) * 3 <= MAX_PARAMS);
    }

    #[test]
    fn floats_and_chars_take_their_stored_form() {
        let mut l = layout();
        l.outputs = vec![
            column("f", ColumnKind::Float),
            column("c", ColumnKind::Text),
        ];
        l.outputs[0].type_name = "float".into();
        l.outputs[1].type_name = "char".into();
        let mut rows = vec![vec![Value::Float(0.1), Value::Text("ab  ".into())]];
        stored_form(&l, &mut rows);
        assert_eq!(
            rows[0],
            vec![Value::Float(f64::from(0.1_f32)), Value::Text("ab".into())]
        );
        assert!(refuses_a_value(1265) && refuses_a_value(4025));
        assert!(!refuses_a_value(1213), "a deadlock is retried, not refused");
    }
}
