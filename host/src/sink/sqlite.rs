//! SQLite writes: consumes a chunk's updates and applies them with one
//! prepared `UPDATE` per row inside a single transaction per chunk.

use sqlx::SqlitePool;

use super::{SinkError, Update};
use crate::chunk::Key;
use crate::source::{Layout, quote};
use crate::value::{self, Value};

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

fn bind(query: Query<'_>, value: Value) -> Result<Query<'_>, String> {
    Ok(match value {
        Value::Null => query.bind(Option::<i64>::None),
        Value::Boolean(b) => query.bind(b),
        Value::Integer(i) => query.bind(i),
        Value::Float(f) => query.bind(f),
        Value::Text(s) | Value::Json(s) => query.bind(s),
        Value::Bytes(b) => query.bind(b),
        Value::Timestamp(t) => {
            query.bind(value::timestamp_text(&t).ok_or("timestamp out of range")?)
        }
    })
}

/// Writes a chunk's updates in one transaction.
pub async fn write(
    pool: &SqlitePool,
    layout: &Layout,
    updates: Vec<Update>,
) -> Result<u64, SinkError> {
    let n = updates.len();
    let write_error = |error| SinkError::Write {
        table: layout.target.quoted(),
        rows: n,
        error,
    };
    let sets: Vec<String> = layout
        .outputs
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ${}", quote(&c.name), i + 1))
        .collect();
    let sql = format!(
        "UPDATE {} SET {} WHERE {} = ${}",
        layout.target.quoted(),
        sets.join(", "),
        quote(&layout.target_key.name),
        layout.outputs.len() + 1
    );
    let sql: std::sync::Arc<str> = sql.into();
    let mut tx = pool.begin().await.map_err(write_error)?;
    let mut changed = 0;
    for update in updates {
        let key_text = update.key.to_string();
        let mut query = sqlx::query(crate::source::built(sql.clone()));
        for (value, column) in update.values.into_iter().zip(&layout.outputs) {
            query = bind(query, value).map_err(|message| SinkError::Encode {
                table: layout.target.quoted(),
                column: column.name.clone(),
                key: key_text.clone(),
                message,
            })?;
        }
        query = match update.key {
            Key::Int(i) => query.bind(i),
            Key::Text(s) => query.bind(s),
        };
        changed += query
            .execute(&mut *tx)
            .await
            .map_err(write_error)?
            .rows_affected();
    }
    tx.commit().await.map_err(write_error)?;
    Ok(changed)
}
