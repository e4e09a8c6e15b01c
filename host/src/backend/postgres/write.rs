//! PostgreSQL writes: consumes a chunk's updates and sends them as typed
//! arrays, one per column, to `UPDATE target SET … FROM unnest($1::…[], …)
//! WHERE key = …`.
//!
//! A chunk's write is one statement when no other transaction has touched
//! its rows, and two when one has:
//! - The fast statement updates only the rows whose `xmax` is 0: rows no
//!   transaction has locked, updated or deleted since they were written.
//!   Such a row is locked by the update itself, with no wait, so this
//!   costs what a hand-written `UPDATE … FROM unnest` costs, or less: a
//!   chunk whose integer keys fill their range densely also bounds the
//!   key by that range, which the planner reads once rather than probing
//!   the key's index per row. It returns
//!   nothing but which rows it did not write, and only when there are any.
//! - The rest (a row someone holds or held a lock on, a row the guard
//!   stops, a row gone) goes to the skip-locked statement: it locks what it
//!   can at once (`FOR NO KEY UPDATE … SKIP LOCKED`) and updates exactly
//!   those rows.
//!
//! A lock taken in the instant between the fast statement reading a row's
//! `xmax` and updating it is the one wait left; the transaction's
//! `lock_timeout` bounds it, and a write that times out is split and tried
//! again, when the row's `xmax` sends it to the skip-locked statement.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row as _};

use super::read::DIALECT;
use crate::backend::refuses_a_value;
use crate::chunk::{Key, KeyType};
use crate::sink::{
    Expected, Guard, KEY_NAME, SinkError, Update, expected_name, guard_sql, guarded,
};
use crate::source::{ColumnInfo, Layout, Timeouts, quote};
use crate::value::{self, ColumnKind, Value};

/// One column of the batch, as a typed array; text and bytes are borrowed
/// from the chunk's updates, never copied before they are sent.
enum Array<'a> {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Bytes(Vec<Option<&'a [u8]>>),
    Text(Vec<Option<&'a str>>),
    Time(Vec<Option<DateTime<Utc>>>),
}

impl<'a> Array<'a> {
    fn for_kind(kind: &ColumnKind, n: usize) -> Array<'a> {
        match kind {
            ColumnKind::Integer => Array::Int(Vec::with_capacity(n)),
            ColumnKind::Float => Array::Float(Vec::with_capacity(n)),
            ColumnKind::Boolean => Array::Bool(Vec::with_capacity(n)),
            ColumnKind::Bytes => Array::Bytes(Vec::with_capacity(n)),
            ColumnKind::Timestamp => Array::Time(Vec::with_capacity(n)),
            ColumnKind::Text | ColumnKind::Json | ColumnKind::TextForm(_) | ColumnKind::Any => {
                Array::Text(Vec::with_capacity(n))
            }
        }
    }

    fn sql_type(&self) -> &'static str {
        match self {
            Array::Int(_) => "int8[]",
            Array::Float(_) => "float8[]",
            Array::Bool(_) => "bool[]",
            Array::Bytes(_) => "bytea[]",
            Array::Text(_) => "text[]",
            Array::Time(_) => "timestamptz[]",
        }
    }

    /// Appends `value`, which the pipeline already coerced to this column's
    /// kind; a mismatch is reported, never written.
    fn push(&mut self, value: &'a Value) -> Result<(), String> {
        match (self, value) {
            (Array::Int(a), Value::Null) => a.push(None),
            (Array::Float(a), Value::Null) => a.push(None),
            (Array::Bool(a), Value::Null) => a.push(None),
            (Array::Bytes(a), Value::Null) => a.push(None),
            (Array::Text(a), Value::Null) => a.push(None),
            (Array::Time(a), Value::Null) => a.push(None),
            (Array::Int(a), Value::Integer(i)) => a.push(Some(*i)),
            (Array::Float(a), Value::Float(f)) => a.push(Some(*f)),
            (Array::Bool(a), Value::Boolean(b)) => a.push(Some(*b)),
            (Array::Bytes(a), Value::Bytes(b)) => a.push(Some(b)),
            (Array::Text(a), Value::Text(s) | Value::Json(s)) => a.push(Some(s)),
            (Array::Time(a), Value::Timestamp(t)) => {
                a.push(Some(value::to_datetime(t).ok_or("timestamp out of range")?));
            }
            (_, v) => return Err(format!("unexpected {} value", value::type_name(v))),
        }
        Ok(())
    }

    /// Binds the array without giving it up: a chunk's arrays are sent to
    /// the fast statement, and the rows it left picked from them.
    fn bind_ref<'q>(&'q self, q: Query<'q>) -> Query<'q> {
        match self {
            Array::Int(a) => q.bind(a.as_slice()),
            Array::Float(a) => q.bind(a.as_slice()),
            Array::Bool(a) => q.bind(a.as_slice()),
            Array::Bytes(a) => q.bind(a.as_slice()),
            Array::Text(a) => q.bind(a.as_slice()),
            Array::Time(a) => q.bind(a.as_slice()),
        }
    }

    /// The elements at `rows`, in their order.
    fn pick(&self, rows: &[usize]) -> Array<'a> {
        match self {
            Array::Int(a) => Array::Int(picked(a, rows)),
            Array::Float(a) => Array::Float(picked(a, rows)),
            Array::Bool(a) => Array::Bool(picked(a, rows)),
            Array::Bytes(a) => Array::Bytes(picked(a, rows)),
            Array::Text(a) => Array::Text(picked(a, rows)),
            Array::Time(a) => Array::Time(picked(a, rows)),
        }
    }
}

/// The elements of `a` at `rows`, in their order.
fn picked<T: Clone>(a: &[T], rows: &[usize]) -> Vec<T> {
    rows.iter().filter_map(|&i| a.get(i).cloned()).collect()
}

/// The SQL type of an array of keys of type `key_type`.
fn key_array(key_type: KeyType) -> &'static str {
    match key_type {
        KeyType::Integer => "int8[]",
        KeyType::Text => "text[]",
    }
}

/// How many keys the range between a batch's smallest and largest integer
/// key may span, per key in the batch, for the write to scan that range
/// ([`Keys::dense_range`]). The table then holds at most this many rows in
/// the range per row written, so a scan of it is bounded whatever the
/// scope, the statistics or the planner's estimate.
const DENSE_SPAN: i128 = 4;

/// A query with PostgreSQL arguments.
type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// A chunk's keys, as the array they are sent in.
enum Keys<'a> {
    Int(Vec<i64>),
    Text(Vec<&'a str>),
}

impl Keys<'_> {
    fn key(&self, i: usize) -> Option<Key> {
        match self {
            Keys::Int(k) => k.get(i).map(|&k| Key::Int(k)),
            Keys::Text(k) => k.get(i).map(|k| Key::Text((*k).to_string())),
        }
    }

    /// The smallest and the largest of integer keys, when the keys fill
    /// at least a [`DENSE_SPAN`]th of the range between them: the table holds no
    /// more rows in that range than [`DENSE_SPAN`] times the keys' number, so
    /// a write may find its rows by scanning the range (see
    /// [`Parts::fast`]).
    fn dense_range(&self) -> Option<(i64, i64)> {
        let Keys::Int(keys) = self else { return None };
        let lo = *keys.iter().min()?;
        let hi = *keys.iter().max()?;
        let span = i128::from(hi) - i128::from(lo) + 1;
        let count = i128::try_from(keys.len()).ok()?;
        (span <= count.saturating_mul(DENSE_SPAN)).then_some((lo, hi))
    }

    fn to_keys(&self) -> Vec<Key> {
        match self {
            Keys::Int(k) => k.iter().map(|&k| Key::Int(k)).collect(),
            Keys::Text(k) => k.iter().map(|k| Key::Text((*k).to_string())).collect(),
        }
    }
}

/// A chunk's updates as typed arrays: the keys, one array per output
/// column, and (when guarded) one per guarded column with the value it
/// should still hold.
struct Batch<'a> {
    keys: Keys<'a>,
    values: Vec<Array<'a>>,
    expected: Vec<Array<'a>>,
}

impl<'a> Batch<'a> {
    /// Takes `updates` apart into arrays; a value that does not fit its
    /// column's kind is reported with its key, never written.
    fn of(layout: &Layout, updates: &'a [Update], guard: Guard) -> Result<Batch<'a>, SinkError> {
        let n = updates.len();
        let mut keys = match layout.key_type {
            KeyType::Integer => Keys::Int(Vec::with_capacity(n)),
            KeyType::Text => Keys::Text(Vec::with_capacity(n)),
        };
        let mut values: Vec<Array> = layout
            .outputs
            .iter()
            .map(|c| Array::for_kind(&c.kind, n))
            .collect();
        let guarded_columns = guarded(layout, guard);
        let mut expected: Vec<Array> = guarded_columns
            .iter()
            .map(|c| Array::for_kind(&c.kind, n))
            .collect();
        let encode_error = |column: &ColumnInfo, key: &Key, message: String| {
            SinkError::encode(layout, column, key, message)
        };
        for update in updates {
            for ((array, value), column) in
                values.iter_mut().zip(&update.values).zip(&layout.outputs)
            {
                array
                    .push(value)
                    .map_err(|m| encode_error(column, &update.key, m))?;
            }
            if guard != Guard::None {
                if update.expected.len() != guarded_columns.len() {
                    return Err(encode_error(
                        &guarded_columns[0],
                        &update.key,
                        "no expected values to guard on".into(),
                    ));
                }
                for ((array, value), column) in expected
                    .iter_mut()
                    .zip(&update.expected)
                    .zip(guarded_columns)
                {
                    array
                        .push(value)
                        .map_err(|m| encode_error(column, &update.key, m))?;
                }
            }
            match (&mut keys, &update.key) {
                (Keys::Int(k), Key::Int(i)) => k.push(*i),
                (Keys::Text(k), Key::Text(s)) => k.push(s),
                (_, key) => {
                    return Err(encode_error(
                        &layout.target_key,
                        key,
                        "the key is not of the key column's type".into(),
                    ));
                }
            }
        }
        Ok(Batch {
            keys,
            values,
            expected,
        })
    }

    /// The rows at `rows`, in their order.
    fn pick(&self, rows: &[usize]) -> Batch<'a> {
        let keys = match &self.keys {
            Keys::Int(k) => Keys::Int(picked(k, rows)),
            Keys::Text(k) => Keys::Text(picked(k, rows)),
        };
        Batch {
            keys,
            values: self.values.iter().map(|a| a.pick(rows)).collect(),
            expected: self.expected.iter().map(|a| a.pick(rows)).collect(),
        }
    }

    /// The SQL types of the value arrays and of the guarded arrays.
    fn types(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        (
            self.values.iter().map(Array::sql_type).collect(),
            self.expected.iter().map(Array::sql_type).collect(),
        )
    }

    /// Binds the arrays in the order the statements number them.
    fn bind_ref<'q>(&'q self, query: Query<'q>) -> Query<'q> {
        let query = match &self.keys {
            Keys::Int(k) => query.bind(k.as_slice()),
            Keys::Text(k) => query.bind(k.as_slice()),
        };
        self.values
            .iter()
            .chain(&self.expected)
            .fold(query, |q, a| a.bind_ref(q))
    }
}

/// The expression assigning unnested column `v` to target column `c`.
fn assign(c: &ColumnInfo, v: &str) -> String {
    match &c.kind {
        ColumnKind::Json => format!("{v}::{}", c.sql_type),
        ColumnKind::TextForm(sql_type) => format!("{v}::{sql_type}"),
        ColumnKind::Timestamp if c.type_name == "timestamp" => {
            format!("({v} AT TIME ZONE 'UTC')")
        }
        _ => v.to_string(),
    }
}

/// The name of the unnested rows' ordinal in the fast statement.
const ORDINAL: &str = "\"__refill_o\"";

/// What the fast and the skip-locked statement share: the unnested
/// arrays, the assignments and the guard's condition.
pub struct Parts {
    /// `unnest($1::…, …)`.
    unnest: String,
    /// The names of the unnested columns.
    names: Vec<String>,
    /// `col = v.…, …`.
    sets: String,
    /// The target, quoted, with no alias: the spec's `where`, which the
    /// guard repeats, may name the table.
    target: String,
    /// The target's key column, quoted.
    key_name: String,
    /// ` AND …`, or nothing.
    guard: String,
    /// The SQL type of the key array, `$1`.
    key_array: String,
    /// How many arrays are bound: a key range's bounds follow them.
    arrays: usize,
}

impl Parts {
    /// The parts of the statements for `layout`, whose arrays are bound in
    /// order: keys (of SQL type `key_array`), one per output column
    /// (`arrays`), then, unless `guard` is [`Guard::None`], one per guarded
    /// column with the value it should still hold (`guarded`).
    pub fn of(
        layout: &Layout,
        key_array: &str,
        arrays: &[&str],
        guarded: &[&str],
        guard: Guard,
    ) -> Parts {
        let sets: Vec<String> = layout
            .outputs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                format!(
                    "{} = {}",
                    quote(&c.name),
                    assign(c, &format!("v.\"__refill_v{i}\""))
                )
            })
            .collect();
        let mut types = vec![key_array];
        let mut names = vec![KEY_NAME.to_string()];
        types.extend(arrays.iter().copied());
        names.extend((0..arrays.len()).map(|i| format!("\"__refill_v{i}\"")));
        if guard != Guard::None {
            types.extend(guarded.iter().copied());
            names.extend((0..guarded.len()).map(expected_name));
        }
        let params: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("${}::{t}", i + 1))
            .collect();
        let target = layout.target.quoted();
        let value = |i: usize| format!("v.{}", expected_name(i));
        let expected = Expected {
            token: "NULL",
            value: &value,
        };
        let guard = guard_sql(
            layout,
            &DIALECT,
            guard,
            &target,
            &format!("v.{KEY_NAME}"),
            &expected,
        );
        Parts {
            unnest: format!("unnest({})", params.join(", ")),
            names,
            sets: sets.join(", "),
            target,
            key_name: quote(&layout.target_key.name),
            guard,
            key_array: key_array.to_string(),
            arrays: types.len(),
        }
    }

    /// The fast statement: updates the rows of the batch whose `xmax` is
    /// 0, which no transaction has locked, updated or deleted since they
    /// were written, so that the update takes their locks with no wait.
    /// Returns one row: NULL when every row was written, else the
    /// ordinals (from 1) of the rows written, perhaps none (`array_agg` of
    /// no rows is NULL too, hence the `COALESCE`).
    ///
    /// With `range`, the target's key is also bounded by two more
    /// parameters, the batch's smallest and largest key, bound after the
    /// arrays: the planner may then read the range once (one index scan,
    /// hashed) rather than look up every key (a descent of the index per
    /// row). On 10,000-row chunks that is a fifth of the statement's time.
    /// Only for a batch that fills its range densely
    /// ([`Keys::dense_range`]), so that the range holds few other rows.
    pub fn fast(&self, range: bool) -> String {
        let Parts {
            unnest,
            names,
            sets,
            target,
            key_name,
            guard,
            key_array,
            arrays,
        } = self;
        let range = match range {
            true => format!(
                " AND {target}.{key_name} BETWEEN ${}::int8 AND ${}::int8",
                arrays + 1,
                arrays + 2
            ),
            false => String::new(),
        };
        // `OR v.key IS NULL` (never true: keys are not null) keeps the
        // test of `xmax` a condition of the join: alone, the planner would
        // estimate that it keeps 1 row in 200 of the table, and scan all
        // of it into a hash rather than look the chunk's keys up.
        format!(
            "WITH v AS (SELECT * FROM {unnest} WITH ORDINALITY AS n({names}, {ORDINAL})), \
             u AS (UPDATE {target} SET {sets} FROM v WHERE {target}.{key_name} = v.{KEY_NAME}{range} \
             AND ({target}.xmax = '0'::xid OR v.{KEY_NAME} IS NULL){guard} RETURNING v.{ORDINAL}) \
             SELECT CASE WHEN count(*) < cardinality($1::{key_array}) THEN COALESCE(array_agg({ORDINAL}), '{{}}') END FROM u",
            names = names.join(", "),
        )
    }

    /// The skip-locked statement.
    pub fn skip_locked(&self) -> String {
        let (unnest, sets, target, key_name) =
            (&self.unnest, &self.sets, &self.target, &self.key_name);
        // The update is driven by the rows locked, each found by its key:
        // the planner takes `unnest` for 10 rows, and a semi-join of the
        // update against the locked keys (`IN (SELECT … FROM l)`) became a
        // nested loop over a chunk squared (10,000 rows: 50 million
        // comparisons, 10 s).
        //
        // The rows are locked first, skipping those another transaction
        // holds (`NO KEY UPDATE`: plain `FOR UPDATE` would also skip rows
        // that a foreign-key insert only key-shares), and only the rows
        // locked are updated: the write never waits for the application's
        // row locks, nor holds its other rows while it would. The keys
        // come back as they were sent (a key that compares equal may be
        // spelled otherwise in the table): those written, flagged false,
        // and those held by someone else, flagged true; the rows a guard
        // stopped, or gone, are the others.
        let key = format!("{target}.{key_name}");
        format!(
            "WITH v AS (SELECT * FROM {unnest} AS n({names})), \
             l AS (SELECT v.* FROM {target} AS \"__refill_t\" JOIN v ON \"__refill_t\".{key_name} = v.{KEY_NAME} \
             FOR NO KEY UPDATE OF \"__refill_t\" SKIP LOCKED), \
             u AS (UPDATE {target} SET {sets} FROM l AS v WHERE {key} = v.{KEY_NAME}{guard} RETURNING v.{KEY_NAME}) \
             SELECT {KEY_NAME}, false FROM u UNION ALL SELECT v.{KEY_NAME}, true FROM v \
             WHERE NOT EXISTS (SELECT 1 FROM l WHERE l.{KEY_NAME} = v.{KEY_NAME}) \
             AND EXISTS (SELECT 1 FROM {target} AS \"__refill_b\" WHERE \"__refill_b\".{key_name} = v.{KEY_NAME})",
            names = self.names.join(", "),
            guard = self.guard,
        )
    }
}

/// Writes a chunk's updates in one statement, in a transaction whose
/// statements are bounded by `timeouts`. Returns the keys written and the
/// keys another transaction held locked.
pub async fn write_bounded(
    pool: &PgPool,
    timeouts: &Timeouts,
    layout: &Layout,
    updates: &[Update],
    guard: Guard,
) -> Result<(Vec<Key>, Vec<Key>), SinkError> {
    let n = updates.len();
    let failed = |error| SinkError::Write {
        table: layout.target.quoted(),
        rows: n,
        error,
    };
    let mut tx = super::read::begin_write(pool, timeouts.write, timeouts.lock)
        .await
        .map_err(failed)?;
    match write(&mut tx, layout, updates, guard).await {
        Ok(done) => {
            tx.commit().await.map_err(failed)?;
            Ok(done)
        }
        Err(error) => {
            // Ended now, not when the connection is next used: the split
            // halves of a refused write must not find its row locks.
            if let Err(e) = tx.rollback().await {
                tracing::debug!(error = %crate::db::describe(&e), "Could not roll a failed write back.");
            }
            Err(error)
        }
    }
}

/// Writes a chunk's updates: the fast statement, then the skip-locked one
/// for the rows it left (see the module's doc). Returns the keys written
/// and the keys another transaction held locked.
pub async fn write(
    conn: &mut sqlx::PgConnection,
    layout: &Layout,
    updates: &[Update],
    guard: Guard,
) -> Result<(Vec<Key>, Vec<Key>), SinkError> {
    let n = updates.len();
    let failed = |error| SinkError::Write {
        table: layout.target.quoted(),
        rows: n,
        error,
    };
    let batch = Batch::of(layout, updates, guard)?;
    let (types, guarded_types) = batch.types();
    let key_array = key_array(layout.key_type);
    let statements = Parts::of(layout, key_array, &types, &guarded_types, guard);
    let range = batch
        .keys
        .dense_range()
        .filter(|_| layout.target_key.kind == ColumnKind::Integer);
    let fast = batch.bind_ref(sqlx::query(crate::source::built(
        statements.fast(range.is_some()),
    )));
    let fast = match range {
        Some((lo, hi)) => fast.bind(lo).bind(hi),
        None => fast,
    };
    let written: Option<Vec<i64>> = fast
        .fetch_one(&mut *conn)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(failed)?;
    let Some(ordinals) = written else {
        return Ok((batch.keys.to_keys(), Vec::new()));
    };
    let mut done = vec![false; n];
    for o in ordinals {
        let index = o.checked_sub(1).and_then(|i| usize::try_from(i).ok());
        if let Some(slot) = index.and_then(|i| done.get_mut(i)) {
            *slot = true;
        }
    }
    let mut written: Vec<Key> = Vec::with_capacity(n);
    let mut rest = Vec::new();
    for (i, &done) in done.iter().enumerate() {
        match done {
            true => written.extend(batch.keys.key(i)),
            false => rest.push(i),
        }
    }
    let rest = batch.pick(&rest);
    let rows = rest
        .bind_ref(sqlx::query(crate::source::built(statements.skip_locked())))
        .fetch_all(&mut *conn)
        .await
        .map_err(failed)?;
    let mut busy = Vec::new();
    for row in &rows {
        let key = match layout.key_type {
            KeyType::Integer => row.try_get::<i64, _>(0).map(Key::Int),
            KeyType::Text => row.try_get::<String, _>(0).map(Key::Text),
        };
        let held = row.try_get::<bool, _>(1);
        let (key, held) = key.and_then(|k| held.map(|h| (k, h))).map_err(failed)?;
        if held {
            busy.push(key);
        } else {
            written.push(key);
        }
    }
    Ok((written, busy))
}

/// Who holds each of `keys`' rows of the target locked, as far as the
/// server can tell: under `SKIP LOCKED` nothing waits, so
/// `pg_blocking_pids` is empty, but a row's `xmax` is the transaction id
/// of the one transaction that locked or changed it, which
/// `pg_stat_activity.backend_xid` names. Several lockers (a multixact)
/// match no backend, and are described as such.
pub async fn holders(
    pool: &PgPool,
    timeouts: &Timeouts,
    layout: &Layout,
    keys: &[Key],
) -> Result<Vec<(Key, String)>, sqlx::Error> {
    let target = layout.target.quoted();
    let key = quote(&layout.target_key.name);
    let key_array = key_array(layout.key_type);
    let sql = format!(
        "SELECT CAST(t.{key} AS TEXT), a.pid, a.state, a.usename, a.application_name, \
         left(a.query, 200), CAST(extract(epoch FROM now() - a.xact_start) AS float8) \
         FROM {target} AS t LEFT JOIN pg_stat_activity AS a ON a.backend_xid = t.xmax \
         WHERE t.{key} = ANY($1::{key_array})"
    );
    let mut tx = super::read::begin_read(pool, timeouts.read, timeouts.lock).await?;
    let query = sqlx::query(crate::source::built(sql));
    let query = match layout.key_type {
        KeyType::Integer => query.bind(
            keys.iter()
                .filter_map(|k| if let Key::Int(i) = k { Some(*i) } else { None })
                .collect::<Vec<_>>(),
        ),
        KeyType::Text => query.bind(
            keys.iter()
                .filter_map(|k| {
                    if let Key::Text(s) = k {
                        Some(s.clone())
                    } else {
                        None
                    }
                })
                .collect::<Vec<_>>(),
        ),
    };
    let rows = query.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let mut out = Vec::new();
    for row in rows {
        let Some(text) = row.try_get::<Option<String>, _>(0)? else {
            continue;
        };
        let Some(key) = Key::decode(&text, layout.key_type) else {
            continue;
        };
        let pid: Option<i32> = row.try_get(1)?;
        let holder = match pid {
            None => "a transaction the server does not name (several lockers, or one that ended)"
                .to_string(),
            Some(pid) => {
                let state: Option<String> = row.try_get(2)?;
                let user: Option<String> = row.try_get(3)?;
                let app: Option<String> = row.try_get(4)?;
                let query: Option<String> = row.try_get(5)?;
                let age: Option<f64> = row.try_get(6)?;
                format!(
                    "pid {pid}{}{}, {}{}, last query `{}`",
                    user.map(|u| format!(" ({u}"))
                        .map_or(String::new(), |u| u + ")"),
                    app.filter(|a| !a.is_empty())
                        .map(|a| format!(" application `{a}`"))
                        .unwrap_or_default(),
                    state.unwrap_or_else(|| "unknown state".into()),
                    age.map(|s| format!(" for {s:.0} s")).unwrap_or_default(),
                    query
                        .unwrap_or_default()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            }
        };
        out.push((key, holder));
    }
    Ok(out)
}

/// Whether PostgreSQL may store a value of column `c` in another form than
/// the one sent: through a cast to another type (numeric scale, uuid case,
/// date styles), as jsonb (key order, spacing), as float4 (precision), or
/// as a timestamp (microseconds, declared precision).
pub fn reshapes(c: &ColumnInfo) -> bool {
    cast_reshapes(c) || pads(c)
}

/// Whether a value of `c` is reshaped by the cast to its type.
fn cast_reshapes(c: &ColumnInfo) -> bool {
    match &c.kind {
        ColumnKind::TextForm(_) | ColumnKind::Timestamp => true,
        ColumnKind::Json => c.type_name == "jsonb",
        ColumnKind::Float => c.type_name == "float4",
        _ => false,
    }
}

/// Whether `c` is `char(n)`: stored padded with spaces, read back (as
/// text) without trailing spaces. An explicit cast would truncate a value
/// that is too long where the write refuses it, so this one is reshaped in
/// the host.
fn pads(c: &ColumnInfo) -> bool {
    c.kind == ColumnKind::Text && c.type_name == "bpchar"
}

/// The statement returning, row by row, unnested values as `columns` would
/// store them, read back the way a read reads them.
pub fn stored_form_sql(columns: &[&ColumnInfo], arrays: &[&str]) -> String {
    let exprs: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let stored = format!(
                "CAST({} AS {})",
                assign(c, &format!("n.\"__refill_v{i}\"")),
                c.sql_type
            );
            super::read::read_expr(&stored, c)
        })
        .collect();
    let params: Vec<String> = arrays
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}", i + 1))
        .collect();
    let names: Vec<String> = (0..arrays.len())
        .map(|i| format!("\"__refill_v{i}\""))
        .collect();
    format!(
        "SELECT {} FROM unnest({}) WITH ORDINALITY AS n({}, \"__refill_o\") ORDER BY \"__refill_o\"",
        exprs.join(", "),
        params.join(", "),
        names.join(", ")
    )
}

/// Replaces each value of the output columns that [`reshapes`] with the
/// form the target would store it in, in one round trip.
pub async fn stored_form(
    pool: &PgPool,
    t: &Timeouts,
    layout: &Layout,
    rows: &mut [Vec<Value>],
) -> Result<(), SinkError> {
    for (i, _) in layout.outputs.iter().enumerate().filter(|(_, c)| pads(c)) {
        for row in rows.iter_mut() {
            if let Some(Value::Text(text)) = row.get_mut(i) {
                text.truncate(text.trim_end_matches(' ').len());
            }
        }
    }
    let reshaped: Vec<usize> = (0..layout.outputs.len())
        .filter(|&i| cast_reshapes(&layout.outputs[i]))
        .collect();
    if reshaped.is_empty() || rows.is_empty() {
        return Ok(());
    }
    let columns: Vec<&ColumnInfo> = reshaped.iter().map(|&i| &layout.outputs[i]).collect();
    let encode_error = |column: &ColumnInfo, row: usize, message: String| SinkError::Encode {
        table: layout.target.quoted(),
        column: column.name.clone(),
        key: format!("(row {} of the batch)", row + 1),
        message,
    };
    let null = Value::Null;
    let mut arrays: Vec<Array> = columns
        .iter()
        .map(|c| Array::for_kind(&c.kind, rows.len()))
        .collect();
    for (r, row) in rows.iter().enumerate() {
        for ((array, &i), column) in arrays.iter_mut().zip(&reshaped).zip(&columns) {
            let value = row.get(i).unwrap_or(&null);
            array.push(value).map_err(|m| encode_error(column, r, m))?;
        }
    }
    let types: Vec<&str> = arrays.iter().map(Array::sql_type).collect();
    let sql = stored_form_sql(&columns, &types);
    let query = arrays
        .iter()
        .fold(sqlx::query(crate::source::built(sql)), |q, array| {
            array.bind_ref(q)
        });
    let failed = |error| SinkError::Write {
        table: layout.target.quoted(),
        rows: rows.len(),
        error,
    };
    let mut tx = super::read::begin_read(pool, t.read, t.lock)
        .await
        .map_err(failed)?;
    let fetched = query.fetch_all(&mut *tx).await.map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    for (r, (row, stored)) in rows.iter_mut().zip(&fetched).enumerate() {
        for (j, (&i, column)) in reshaped.iter().zip(&columns).enumerate() {
            let value =
                super::read::decode(stored, j, column).map_err(|m| encode_error(column, r, m))?;
            if let Some(slot) = row.get_mut(i) {
                *slot = value;
            }
        }
    }
    Ok(())
}

/// Replaces `rows` with the form PostgreSQL stores them in, splitting the
/// batch while it refuses a value, as the write does.
pub(super) fn reshape<'a>(
    pool: &'a PgPool,
    timeouts: &'a Timeouts,
    layout: &'a Layout,
    rows: &'a mut [Vec<Value>],
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send + 'a>> {
    Box::pin(async move {
        let refused = match stored_form(pool, timeouts, layout, rows).await {
            Err(SinkError::Write { error, .. }) if refuses_a_value(&error) => true,
            // A value that cannot be sent or read back (a timestamp out of
            // range) is left for the write to report too.
            Err(SinkError::Encode { .. }) => true,
            other => return other,
        };
        if refused && rows.len() > 1 {
            let (first, second) = rows.split_at_mut(rows.len() / 2);
            reshape(pool, timeouts, layout, first).await?;
            reshape(pool, timeouts, layout, second).await?;
        }
        Ok(())
    })
}

/// One PostgreSQL write statement under a savepoint of `tx`.
pub(crate) async fn in_savepoint(
    tx: &mut sqlx::PgConnection,
    layout: &Layout,
    updates: &[Update],
    guard: Guard,
) -> Result<(Vec<Key>, Vec<Key>), SinkError> {
    let failed = |error| SinkError::Write {
        table: layout.target.quoted(),
        rows: updates.len(),
        error,
    };
    let mut savepoint = sqlx::Connection::begin(&mut *tx).await.map_err(failed)?;
    match crate::backend::postgres::write::write(&mut savepoint, layout, updates, guard).await {
        Ok(keys) => {
            savepoint.commit().await.map_err(failed)?;
            Ok(keys)
        }
        Err(e) => {
            // The write's own error is the one to report; a rollback that
            // fails too leaves the transaction to fail at its commit.
            if let Err(error) = savepoint.rollback().await {
                tracing::warn!(error = %crate::db::describe(&error), "Could not roll a refused write back to its savepoint.");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::KeyType;
    use crate::source::TableRef;

    fn column(name: &str, sql_type: &str, type_name: &str, kind: ColumnKind) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            sql_type: sql_type.into(),
            type_name: type_name.into(),
            kind,
            not_null: false,
            unique: false,
            collation: None,
        }
    }

    #[test]
    fn the_statements_unnest_one_typed_array_per_column() {
        let table = TableRef {
            schema: Some("app".into()),
            name: "quotes".into(),
        };
        let layout = Layout {
            source: table.clone(),
            key: column("id", "bigint", "int8", ColumnKind::Integer),
            key_type: KeyType::Integer,
            inputs: vec![],
            scope: None,
            target: table,
            target_key: column("id", "bigint", "int8", ColumnKind::Integer),
            outputs: vec![
                column("status_v2", "text", "text", ColumnKind::Text),
                column("doc", "jsonb", "jsonb", ColumnKind::Json),
                column(
                    "at",
                    "timestamp(3) without time zone",
                    "timestamp",
                    ColumnKind::Timestamp,
                ),
                column(
                    "amount",
                    "numeric(10,2)",
                    "numeric",
                    ColumnKind::TextForm("numeric(10,2)".into()),
                ),
            ],
        };
        let arrays = ["text[]", "text[]", "timestamptz[]", "text[]"];
        assert_eq!(
            Parts::of(&layout, "int8[]", &arrays, &[], Guard::None).skip_locked(),
            "WITH v AS (SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::timestamptz[], $5::text[]) \
             AS n(\"__refill_k\", \"__refill_v0\", \"__refill_v1\", \"__refill_v2\", \"__refill_v3\")), \
             l AS (SELECT v.* FROM \"app\".\"quotes\" AS \"__refill_t\" \
             JOIN v ON \"__refill_t\".\"id\" = v.\"__refill_k\" FOR NO KEY UPDATE OF \"__refill_t\" SKIP LOCKED), \
             u AS (UPDATE \"app\".\"quotes\" SET \"status_v2\" = v.\"__refill_v0\", \"doc\" = v.\"__refill_v1\"::jsonb, \
             \"at\" = (v.\"__refill_v2\" AT TIME ZONE 'UTC'), \"amount\" = v.\"__refill_v3\"::numeric(10,2) \
             FROM l AS v WHERE \"app\".\"quotes\".\"id\" = v.\"__refill_k\" \
             RETURNING v.\"__refill_k\") \
             SELECT \"__refill_k\", false FROM u UNION ALL SELECT v.\"__refill_k\", true FROM v \
             WHERE NOT EXISTS (SELECT 1 FROM l WHERE l.\"__refill_k\" = v.\"__refill_k\") \
             AND EXISTS (SELECT 1 FROM \"app\".\"quotes\" AS \"__refill_b\" WHERE \"__refill_b\".\"id\" = v.\"__refill_k\")"
        );
        assert_eq!(
            Parts::of(&layout, "int8[]", &arrays, &[], Guard::None).fast(false),
            "WITH v AS (SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::timestamptz[], $5::text[]) \
             WITH ORDINALITY AS n(\"__refill_k\", \"__refill_v0\", \"__refill_v1\", \"__refill_v2\", \"__refill_v3\", \"__refill_o\")), \
             u AS (UPDATE \"app\".\"quotes\" SET \"status_v2\" = v.\"__refill_v0\", \"doc\" = v.\"__refill_v1\"::jsonb, \
             \"at\" = (v.\"__refill_v2\" AT TIME ZONE 'UTC'), \"amount\" = v.\"__refill_v3\"::numeric(10,2) \
             FROM v WHERE \"app\".\"quotes\".\"id\" = v.\"__refill_k\" \
             AND (\"app\".\"quotes\".xmax = '0'::xid OR v.\"__refill_k\" IS NULL) RETURNING v.\"__refill_o\") \
             SELECT CASE WHEN count(*) < cardinality($1::int8[]) THEN COALESCE(array_agg(\"__refill_o\"), '{}') END FROM u"
        );
        let mut guarded = layout.clone();
        guarded.inputs = vec![column("status", "text", "text", ColumnKind::Text)];
        guarded.scope = Some("region = 'eu'".into());
        let sql = Parts::of(&guarded, "int8[]", &arrays, &["text[]"], Guard::Inputs).skip_locked();
        assert!(sql.contains("$5::text[], $6::text[]) AS n("), "{sql}");
        assert!(
            sql.contains(
                "WHERE \"app\".\"quotes\".\"id\" = v.\"__refill_k\" \
                 AND \"app\".\"quotes\".\"status\"::text COLLATE \"C\" IS NOT DISTINCT FROM v.\"__refill_e0\" AND (region = 'eu') \
                 RETURNING v.\"__refill_k\")"
            ),
            "{sql}"
        );
    }

    #[test]
    fn a_range_is_scanned_only_for_keys_that_fill_a_quarter_of_it() {
        assert_eq!(Keys::Int(vec![5, 1, 3]).dense_range(), Some((1, 5)));
        assert_eq!(Keys::Int(vec![1, 12]).dense_range(), None);
        assert_eq!(Keys::Int(vec![1, 8]).dense_range(), Some((1, 8)));
        assert_eq!(Keys::Int(vec![i64::MIN, i64::MAX]).dense_range(), None);
        assert_eq!(Keys::Int(vec![]).dense_range(), None);
        assert_eq!(Keys::Text(vec!["a", "b"]).dense_range(), None);
        let table = TableRef {
            schema: None,
            name: "t".into(),
        };
        let layout = crate::source::testing::layout(table.clone(), table, "true");
        let parts = Parts::of(&layout, "int8[]", &["text[]"], &[], Guard::None);
        assert!(
            parts.fast(true).contains(
                "\"t\".\"id\" = v.\"__refill_k\" AND \"t\".\"id\" BETWEEN $3::int8 AND $4::int8 AND"
            ),
            "{}",
            parts.fast(true)
        );
        assert!(!parts.fast(false).contains("BETWEEN"));
    }

    /// A text column of `quotes` as the catalog describes it.
    fn text(name: &str) -> ColumnInfo {
        column(name, "text", "text", ColumnKind::Text)
    }

    #[tokio::test]
    async fn the_fast_statement_leaves_to_the_skip_locked_one_every_row_a_transaction_touched() {
        use sqlx::Connection as _;
        let url = crate::state::fresh_schema("refill_fast_write").await;
        let pool = PgPool::connect(url.expose()).await.expect("connect");
        let run = |sql: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::raw_sql(sql).execute(&pool).await.expect(sql);
            }
        };
        run("CREATE TABLE quotes (id bigint PRIMARY KEY, status text, status_v2 text)").await;
        run("INSERT INTO quotes SELECT g, 'open', NULL FROM generate_series(1, 8) g").await;
        // Row 3 was locked by a transaction that has ended: its xmax names
        // that transaction, and no one holds it.
        run("BEGIN; SELECT * FROM quotes WHERE id = 3 FOR UPDATE; COMMIT").await;
        let marked: bool = sqlx::query_scalar(
            "SELECT xmax <> '0'::xid FROM refill_fast_write.quotes WHERE id = 3",
        )
        .fetch_one(&pool)
        .await
        .expect("xmax");
        assert!(marked, "an ended lock leaves its transaction in xmax");
        // Row 4 changed since it was read; row 5 is gone.
        run("UPDATE quotes SET status = 'won' WHERE id = 4").await;
        run("DELETE FROM quotes WHERE id = 5").await;
        // Row 2 is held, for the whole write, by another session.
        let mut holder = sqlx::PgConnection::connect(url.expose())
            .await
            .expect("connect");
        sqlx::raw_sql("BEGIN; SELECT * FROM quotes WHERE id = 2 FOR UPDATE")
            .execute(&mut holder)
            .await
            .expect("lock row 2");

        let table = TableRef {
            schema: Some("refill_fast_write".into()),
            name: "quotes".into(),
        };
        let key = column("id", "bigint", "int8", ColumnKind::Integer);
        let layout = Layout {
            source: table.clone(),
            key: key.clone(),
            key_type: KeyType::Integer,
            inputs: vec![text("status")],
            scope: Some("status IS NOT NULL".into()),
            target: table,
            target_key: key,
            outputs: vec![text("status_v2")],
        };
        let update = |id: i64| Update {
            key: Key::Int(id),
            values: vec![Value::Text(format!("active {id}"))],
            token: None,
            expected: vec![Value::Text("open".into())],
        };
        let timeouts = Timeouts::default();
        let (mut written, busy) = write_bounded(
            &pool,
            &timeouts,
            &layout,
            &(1..=7).map(update).collect::<Vec<_>>(),
            Guard::Inputs,
        )
        .await
        .expect("write");
        written.sort_by_key(|k| k.to_string());
        assert_eq!(
            written,
            [1, 3, 6, 7].map(Key::Int),
            "rows 1, 6 and 7 in the fast statement, row 3 in the skip-locked one"
        );
        assert_eq!(busy, [Key::Int(2)]);
        // A batch of only the held row: the fast statement writes nothing.
        let (written, busy) = write_bounded(&pool, &timeouts, &layout, &[update(2)], Guard::Inputs)
            .await
            .expect("write row 2 alone");
        assert_eq!((written, busy), (vec![], vec![Key::Int(2)]));
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut holder)
            .await
            .expect("release row 2");
        let now: Vec<(i64, Option<String>)> =
            sqlx::query_as("SELECT id, status_v2 FROM refill_fast_write.quotes ORDER BY id")
                .fetch_all(&pool)
                .await
                .expect("read back");
        let expect = |id: i64, v: Option<&str>| (id, v.map(str::to_string));
        assert_eq!(
            now,
            [
                expect(1, Some("active 1")),
                expect(2, None),
                expect(3, Some("active 3")),
                expect(4, None),
                expect(6, Some("active 6")),
                expect(7, Some("active 7")),
                expect(8, None),
            ]
        );

        // A chunk no transaction touched is written whole by the fast
        // statement, which then sends back no ordinals at all.
        let (written, busy) = write_bounded(&pool, &timeouts, &layout, &[update(8)], Guard::None)
            .await
            .expect("write row 8");
        assert_eq!((written, busy), (vec![Key::Int(8)], vec![]));
    }
}
