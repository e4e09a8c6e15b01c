//! MySQL/MariaDB writes: consumes a chunk's updates and sends them as one
//! statement, `UPDATE target JOIN (SELECT ? AS k, ? AS v0 … UNION ALL
//! SELECT ?, ? …) AS u ON target.key = u.k [AND guard] SET col = u.v0, …`,
//! in a transaction that tells which rows it wrote.
//!
//! MySQL has no `UPDATE … RETURNING` (MariaDB has it only for `INSERT` and
//! `DELETE`), so the keys written are known this way: the session counts
//! matched rows (the client's `FOUND_ROWS` flag, which sqlx sets), and when
//! the update matched every row, as it does unless the application changed
//! or deleted rows meanwhile, every key was written: one statement, plus
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
    let guarded = guarded(layout, guard).len();
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
    format!(
        "{target} JOIN ({}) AS u ON {target}.{} = {key_expr}{guard}",
        rows_sql(if values { layout.outputs.len() } else { 0 }, guarded, rows),
        quote(&layout.target_key.name),
    )
}

/// `UPDATE target JOIN (…) AS u ON … SET col = u.v0, …` for `rows` rows.
/// No alias for the target: the spec's `where`, which the guard repeats,
/// may name the table.
pub fn update_sql(layout: &Layout, guard: Guard, rows: usize) -> String {
    let target = DIALECT.table(&layout.target);
    let sets: Vec<String> = layout
        .outputs
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{target}.{} = u.{}", quote(&c.name), value_name(i)))
        .collect();
    format!(
        "UPDATE {} SET {}",
        join_sql(layout, guard, rows, true),
        sets.join(", ")
    )
}

/// The keys, as sent, of the rows the update would write now, locking
/// them; with `skip`, the rows another transaction holds are left out
/// rather than waited for.
///
/// Unguarded, on integer keys, a plain `key IN (?, …)`: it is sent nothing
/// but the keys, and an integer reads back as it was sent. On the bench's
/// 10,000-row chunks it costs half the join of a union of rows.
pub fn select_sql(layout: &Layout, guard: Guard, rows: usize, skip: bool) -> String {
    let lock = if skip { " SKIP LOCKED" } else { "" };
    if keys_listed(layout, guard) {
        let key = quote(&layout.target_key.name);
        let mut list = "?, ".repeat(rows);
        list.truncate(list.len().saturating_sub(2));
        return format!(
            "SELECT CAST({key} AS SIGNED) FROM {} WHERE {key} IN ({list}) FOR UPDATE{lock}",
            DIALECT.table(&layout.target),
        );
    }
    format!(
        "SELECT u.{KEY_NAME} FROM {} FOR UPDATE{lock}",
        join_sql(layout, guard, rows, false),
    )
}

/// Whether [`select_sql`] lists the keys rather than joining rows: for an
/// unguarded selection by integer keys.
fn keys_listed(layout: &Layout, guard: Guard) -> bool {
    guard == Guard::None
        && layout.key_type == KeyType::Integer
        && layout.target_key.key_type() == Some(KeyType::Integer)
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
        let sql = update_sql(layout, guard, batch.len());
        let query = bind_rows(
            sqlx::query(crate::source::built(sql)),
            layout,
            guard,
            batch,
            true,
        )?;
        let done = query.execute(&mut *tx).await.map_err(write_error)?;
        matched += done.rows_affected();
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
        let sql = update_sql(layout, guard, batch.len());
        let query = bind_rows(
            sqlx::query(crate::source::built(sql)),
            layout,
            guard,
            batch,
            true,
        )?;
        query.execute(&mut *tx).await.map_err(write_error)?;
    }
    tx.commit().await.map_err(write_error)?;
    Ok((written.into_iter().map(|u| u.key.clone()).collect(), busy))
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
