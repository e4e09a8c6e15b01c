//! Before-images: for every row a run changes, the values its target
//! columns held before and the values the run wrote, kept per chunk so that
//! `refill rollback` can restore them, and only where nobody changed the
//! row since.

use std::collections::HashMap;

use sqlx::Row as _;

use super::{StateError, StateStore, now, q, to_i64, to_u64};
use crate::backend::store_sql;
use crate::chunk::{Key, KeyType};
use crate::value::{self, Value};

/// One row's values before and after a run wrote it.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// The row's key.
    pub key: Key,
    /// The target columns' values before the write.
    pub before: Vec<Value>,
    /// The values written.
    pub after: Vec<Value>,
}

/// One row's values before and after a run wrote it, borrowed from the
/// chunk being written: what [`StateStore::save_images`] records.
#[derive(Clone, Copy, Debug)]
pub struct ImageRef<'a> {
    /// The row's key.
    pub key: &'a Key,
    /// The target columns' values before the write.
    pub before: &'a [Value],
    /// The values written.
    pub after: &'a [Value],
}

fn encode(images: &[ImageRef<'_>]) -> String {
    let mut out = String::with_capacity(images.len() * 48);
    let values = |out: &mut String, values: &[Value]| {
        out.push('[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            value::write_json(out, v);
        }
        out.push(']');
    };
    out.push('[');
    for (n, image) in images.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push('[');
        out.push_str(&serde_json::to_string(image.key).unwrap_or_default());
        out.push(',');
        values(&mut out, image.before);
        out.push(',');
        values(&mut out, image.after);
        out.push(']');
    }
    out.push(']');
    out
}

fn decode(text: &str, key_type: KeyType) -> Option<Vec<Image>> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(text).ok()?;
    let values = |v: &serde_json::Value| -> Option<Vec<Value>> {
        v.as_array()?.iter().map(value::from_json).collect()
    };
    rows.iter()
        .map(|row| {
            let key = match (&row[0], key_type) {
                (serde_json::Value::Number(n), KeyType::Integer) => Key::Int(n.as_i64()?),
                (serde_json::Value::String(s), KeyType::Text) => Key::Text(s.clone()),
                _ => return None,
            };
            Some(Image {
                key,
                before: values(&row[1])?,
                after: values(&row[2])?,
            })
        })
        .collect()
}

impl StateStore {
    /// Records the before-images of a chunk's write. Called before the
    /// write, so a crash never leaves written rows without an image.
    pub async fn save_images(
        &self,
        run_id: &str,
        chunk_id: u64,
        images: &[ImageRef<'_>],
    ) -> Result<(), StateError> {
        if images.is_empty() {
            return Ok(());
        }
        let next: i64 = sqlx::query_scalar(
            self.sql(store_sql!["SELECT CAST(COALESCE(max(seq), 0) + 1 AS " bigint ") FROM refill_images WHERE run_id = " ? " AND chunk_id = " ?]),
        )
        .bind(run_id)
        .bind(to_i64(chunk_id))
        .fetch_one(&self.pool)
        .await
        .map_err(q("recording before-images"))?;
        sqlx::query(
            self.sql(store_sql!["INSERT INTO refill_images (run_id, chunk_id, seq, rows_count, data, created_at) VALUES (" ? ", " ? ", " ? ", " ? ", " ? ", " ? ")"]),
        )
        .bind(run_id)
        .bind(to_i64(chunk_id))
        .bind(next)
        .bind(to_i64(images.len() as u64))
        .bind(encode(images))
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(q("recording before-images"))?;
        Ok(())
    }

    /// The chunks of a run that have before-images, in order, each with
    /// the rows its images hold (a row written twice, by a chunk redone
    /// after a crash, counts twice).
    pub async fn image_chunks(&self, run_id: &str) -> Result<Vec<(u64, u64)>, StateError> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(self.sql(
            store_sql!["SELECT chunk_id, CAST(sum(rows_count) AS " bigint ") FROM refill_images WHERE run_id = " ? " \
             GROUP BY chunk_id ORDER BY chunk_id"],
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading before-images"))?;
        Ok(rows
            .into_iter()
            .map(|(chunk, rows)| (to_u64(chunk), to_u64(rows)))
            .collect())
    }

    /// A chunk's before-images, one per key. Where a row was imaged more
    /// than once, the latest image wins (a conflict redone after the
    /// application changed the row: its before-value is what the row held
    /// just before refill's effective write), unless its before-value is
    /// the earlier image's after-value: then refill wrote that value
    /// itself, and the earlier before-value is the row's original.
    pub async fn images(
        &self,
        run_id: &str,
        chunk_id: u64,
        key_type: KeyType,
    ) -> Result<Vec<Image>, StateError> {
        let rows = sqlx::query(self.sql(
            store_sql!["SELECT data FROM refill_images WHERE run_id = " ? " AND chunk_id = " ? " ORDER BY seq"],
        ))
        .bind(run_id)
        .bind(to_i64(chunk_id))
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading before-images"))?;
        let mut batches = Vec::with_capacity(rows.len());
        for row in rows {
            let text: String = row.try_get("data").map_err(q("reading before-images"))?;
            batches.push(decode(&text, key_type).ok_or_else(|| {
                StateError::Corrupt(format!("unreadable before-image of chunk {chunk_id}"))
            })?);
        }
        Ok(merge(batches.into_iter().flatten()))
    }
}

/// One image per key, in the order keys were first imaged (see
/// [`StateStore::images`]).
fn merge(images: impl Iterator<Item = Image>) -> Vec<Image> {
    let mut merged: Vec<Image> = Vec::new();
    let mut index: HashMap<Key, usize> = HashMap::new();
    for image in images {
        match index.get(&image.key) {
            // The row held what refill wrote earlier: its value before
            // refill is the earlier image's.
            Some(&i) if same_values(&image.before, &merged[i].after) => {
                merged[i].after = image.after;
            }
            Some(&i) => merged[i] = image,
            None => {
                index.insert(image.key.clone(), merged.len());
                merged.push(image);
            }
        }
    }
    merged
}

/// Whether two rows of values are the same, floats by bits.
fn same_values(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| crate::value::same(x, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_round_trip() {
        let images = [
            Image {
                key: Key::Int(7),
                before: vec![Value::Null],
                after: vec![Value::Text("a".into())],
            },
            Image {
                key: Key::Int(-1),
                before: vec![Value::Float(f64::NAN)],
                after: vec![Value::Float(1.0)],
            },
        ];
        let refs: Vec<ImageRef> = images
            .iter()
            .map(|i| ImageRef {
                key: &i.key,
                before: &i.before,
                after: &i.after,
            })
            .collect();
        let back = decode(&encode(&refs), KeyType::Integer).expect("decodes");
        assert_eq!(back.len(), 2);
        assert_eq!(back[0], images[0]);
        assert!(matches!(back[1].before[0], Value::Float(f) if f.is_nan()));
        assert!(
            decode(&encode(&refs), KeyType::Text).is_none(),
            "key types are checked"
        );
    }

    #[test]
    fn merged_images_keep_the_value_before_refill() {
        let text = |s: &str| vec![Value::Text(s.into())];
        let image = |key, before: &str, after: &str| Image {
            key: Key::Int(key),
            before: text(before),
            after: text(after),
        };
        let merged = merge(
            [
                image(1, "a", "x"),
                image(2, "b", "y"),
                // The application changed row 1 before refill's write: the
                // redo's before-value is what the row held.
                image(1, "app", "x2"),
                // Refill wrote row 2, then wrote it again.
                image(2, "y", "z"),
            ]
            .into_iter(),
        );
        assert_eq!(merged, vec![image(1, "app", "x2"), image(2, "b", "z")]);
    }
}
