//! SQLite writes: consumes a chunk's updates and applies them in one
//! transaction per chunk, as `UPDATE … FROM (VALUES …)` statements of up to
//! a thousand rows each.

use sqlx::{Row as _, SqlitePool};

use super::read::DIALECT;
use crate::chunk::{Key, KeyType};
use crate::sink::{Expected, Guard, SinkError, Update, guard_sql};
use crate::source::{Layout, quote};
use crate::value::{self, Value};

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

fn bind<'q>(query: Query<'q>, value: &'q Value) -> Result<Query<'q>, String> {
    Ok(match value {
        Value::Null => query.bind(Option::<i64>::None),
        Value::Boolean(b) => query.bind(*b),
        Value::Integer(i) => query.bind(*i),
        Value::Float(f) => query.bind(*f),
        Value::Text(s) | Value::Json(s) => query.bind(s.as_str()),
        Value::Bytes(b) => query.bind(b.as_slice()),
        Value::Timestamp(t) => {
            query.bind(value::timestamp_text(t).ok_or("timestamp out of range")?)
        }
    })
}

/// Rows per statement: SQLite allows 32,766 parameters, and shorter
/// statements are cheaper to prepare.
const ROWS_PER_STATEMENT: usize = 1_000;

/// `UPDATE target SET c = v.columnN, … FROM (VALUES ($1, $2, …), …) AS v
/// WHERE target.key = v.column1 [AND guard]` for `rows` rows: each tuple
/// holds the key, the guard token (unless `guard` is [`Guard::None`]), then
/// one value per output column.
pub fn update_sql(layout: &Layout, rows: usize, guard: Guard) -> String {
    let guarded = guard != Guard::None;
    let first_value = if guarded { 3 } else { 2 };
    let width = first_value - 1 + layout.outputs.len();
    let sets: Vec<String> = layout
        .outputs
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = v.column{}", quote(&c.name), i + first_value))
        .collect();
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", params.join(", "))
        })
        .collect();
    let target = layout.target.quoted();
    let key = quote(&layout.target_key.name);
    let expected = Expected {
        token: "v.column2",
        value: &|_| String::new(),
    };
    let guard = guard_sql(layout, &DIALECT, guard, &target, "v.column1", &expected);
    // The keys of the rows written come back: the rows a guard stopped are
    // the others.
    format!(
        "UPDATE {target} SET {} FROM (VALUES {}) AS v WHERE {target}.{key} = v.column1{guard} RETURNING {target}.{key}",
        sets.join(", "),
        tuples.join(", "),
    )
}

/// Writes a chunk's updates in one transaction, a thousand rows per
/// statement.
pub async fn write(
    pool: &SqlitePool,
    layout: &Layout,
    updates: &[Update],
    guard: Guard,
) -> Result<Vec<Key>, SinkError> {
    let n = updates.len();
    let write_error = |error| SinkError::Write {
        table: layout.target.quoted(),
        rows: n,
        error,
    };
    let mut tx = pool.begin().await.map_err(write_error)?;
    let mut written = Vec::with_capacity(n);
    for batch in updates.chunks(ROWS_PER_STATEMENT) {
        let mut query = sqlx::query(crate::source::built(update_sql(layout, batch.len(), guard)));
        for update in batch {
            query = match &update.key {
                Key::Int(i) => query.bind(*i),
                Key::Text(s) => query.bind(s.as_str()),
            };
            if guard != Guard::None {
                query = query.bind(update.token.as_deref());
            }
            for (value, column) in update.values.iter().zip(&layout.outputs) {
                query = bind(query, value)
                    .map_err(|message| SinkError::encode(layout, column, &update.key, message))?;
            }
        }
        for row in query.fetch_all(&mut *tx).await.map_err(write_error)? {
            written.push(match layout.key_type {
                KeyType::Integer => Key::Int(row.try_get(0).map_err(write_error)?),
                KeyType::Text => Key::Text(row.try_get(0).map_err(write_error)?),
            });
        }
    }
    tx.commit().await.map_err(write_error)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::KeyType;
    use crate::source::{ColumnInfo, TableRef};
    use crate::value::ColumnKind;

    fn column(name: &str) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            sql_type: "TEXT".into(),
            type_name: "TEXT".into(),
            kind: ColumnKind::Text,
            not_null: false,
            unique: false,
            collation: None,
        }
    }

    #[test]
    fn update_sql_joins_a_values_list_on_the_key() {
        let table = TableRef {
            schema: None,
            name: "quotes".into(),
        };
        let layout = Layout {
            source: table.clone(),
            key: column("id"),
            key_type: KeyType::Integer,
            inputs: vec![],
            scope: None,
            target: table,
            target_key: column("id"),
            outputs: vec![column("a"), column("b")],
        };
        assert_eq!(
            update_sql(&layout, 2, Guard::None),
            "UPDATE \"quotes\" SET \"a\" = v.column2, \"b\" = v.column3 \
             FROM (VALUES ($1, $2, $3), ($4, $5, $6)) AS v WHERE \"quotes\".\"id\" = v.column1 \
             RETURNING \"quotes\".\"id\""
        );
    }
}
