//! Writing rows: consumes a chunk's updates (a key plus new values already
//! coerced to the target columns' kinds) and produces them in the target
//! table, batched: one `UPDATE … FROM unnest(…)` round trip per chunk on
//! PostgreSQL, one transaction per chunk on SQLite, a locking `SELECT` and
//! one `UPDATE JSON_TABLE(…) … STRAIGHT_JOIN …` per chunk on MySQL/MariaDB
//! (in a transaction). Writes are idempotent:
//! they set columns to values, so writing a chunk twice leaves it as
//! writing it once.

use crate::backend::{AtomicTx, on_backend, refuses_a_value};
use crate::chunk::Key;
use crate::source::{ColumnInfo, Database, Dialect, Layout};
use crate::value::Value;

/// New values for one row of the target.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// The row's key.
    pub key: Key,
    /// One value per output column, coerced to the column's kind.
    pub values: Vec<Value>,
    /// The guard token the row had when it was read (see [`Guard`]), for
    /// backends that guard with tokens.
    pub token: Option<String>,
    /// The values the guarded columns held when the row was read, for
    /// backends that compare values.
    pub expected: Vec<Value>,
}

/// What a write is conditional on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// Nothing: every row with the key is written.
    None,
    /// The source row is still in scope and its input columns still hold
    /// the values whose token the update carries: a row the application
    /// changed since refill read it is not overwritten with a value
    /// computed from its old contents.
    Inputs,
    /// The target columns still hold the values whose token the update
    /// carries (a rollback leaves rows changed since alone).
    Outputs,
}

/// Names refill gives the unnested or listed values in its statements;
/// unusual, so that they cannot capture a name in the spec's `where`.
pub(crate) const KEY_NAME: &str = "\"__refill_k\"";

/// The name of the value an update row expects guarded column `i` to hold.
pub(crate) fn expected_name(i: usize) -> String {
    format!("\"__refill_e{i}\"")
}

/// Where an update row carries what its guarded columns should hold: a
/// token, or one expected value per column.
pub(crate) struct Expected<'a> {
    /// The expression of the row's token (backends with tokens).
    pub token: &'a str,
    /// The expression of the row's expected value for column `i`.
    pub value: &'a dyn Fn(usize) -> String,
}

/// The condition that `columns` of table `t` still hold what the update row
/// expects: their token, where the backend has tokens, else each column,
/// through the same expression a read uses, compared byte for byte with
/// the expected value (see [`Dialect::same_value`]).
fn unchanged_sql(
    dialect: &Dialect,
    t: &str,
    columns: &[ColumnInfo],
    expected: &Expected<'_>,
) -> String {
    match dialect.token {
        Some(token) => format!("{} = {}", token(t, columns), expected.token),
        None => columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (dialect.same_value)(&(dialect.column_expr)(t, c), c, &(expected.value)(i))
            })
            .collect::<Vec<_>>()
            .join(" AND "),
    }
}

/// The condition `guard` adds to an update of the target `t`, whose update
/// row has key `key`.
pub(crate) fn guard_sql(
    layout: &Layout,
    dialect: &Dialect,
    guard: Guard,
    t: &str,
    key: &str,
    expected: &Expected<'_>,
) -> String {
    match guard {
        Guard::None => String::new(),
        Guard::Outputs => format!(
            " AND {}",
            unchanged_sql(dialect, t, &layout.outputs, expected)
        ),
        Guard::Inputs if layout.same_table() => {
            format!(
                " AND {} AND {}",
                unchanged_sql(dialect, t, &layout.inputs, expected),
                layout.scope_sql()
            )
        }
        Guard::Inputs => format!(
            " AND EXISTS (SELECT 1 FROM {} AS s WHERE s.{} = {key} AND {} AND {})",
            dialect.table(&layout.source),
            (dialect.quote)(&layout.key.name),
            unchanged_sql(dialect, "s", &layout.inputs, expected),
            layout.scope_sql(),
        ),
    }
}

/// The columns a guard compares.
pub(crate) fn guarded(layout: &Layout, guard: Guard) -> &[ColumnInfo] {
    match guard {
        Guard::None => &[],
        Guard::Inputs => &layout.inputs,
        Guard::Outputs => &layout.outputs,
    }
}

/// Errors of the sink stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The database refused the write.
    #[error(
        "writing {rows} rows to {table} failed: {}",
        crate::db::describe(error)
    )]
    Write {
        /// The target table, quoted.
        table: String,
        /// How many rows the write held.
        rows: usize,
        /// Why.
        error: sqlx::Error,
    },
    /// The database was connected read-only: refill's read-only commands
    /// have no way to write.
    #[error(
        "refused to write {table}: the database is connected read-only (a dry run writes nothing)"
    )]
    ReadOnly {
        /// The target table, quoted.
        table: String,
    },
    /// A value cannot be sent to the database.
    #[error("cannot write {column} of {table} at key {key}: {message}")]
    Encode {
        /// The target table, quoted.
        table: String,
        /// The column.
        column: String,
        /// The row's key.
        key: String,
        /// Why.
        message: String,
    },
}

impl SinkError {
    /// A value of `column` at `key` that cannot be sent to the target of
    /// `layout`, and why.
    pub(crate) fn encode(layout: &Layout, column: &ColumnInfo, key: &Key, message: String) -> Self {
        SinkError::Encode {
            table: layout.target.quoted(),
            column: column.name.clone(),
            key: key.to_string(),
            message,
        }
    }
}

impl crate::backoff::Transient for SinkError {
    fn is_transient(&self) -> bool {
        matches!(self, SinkError::Write { error, .. } if crate::backend::transient(error))
    }
}

/// What writing a chunk did.
#[derive(Debug, Default, PartialEq)]
pub struct Written {
    /// The keys of the rows written.
    pub written: Vec<Key>,
    /// Rows whose new values the database refused, with its reason; every
    /// other row was written.
    pub rejected: Vec<(Key, String)>,
    /// Rows another transaction held locked: not written, not waited for
    /// (they are tried again later).
    pub busy: Vec<Key>,
}

/// Writes `updates` to the target of `layout`, each row only if `guard`
/// holds (rows it does not hold for are left alone and not counted as
/// changed). When the database refuses a
/// value (a data exception such as an unknown enum label or an integer out
/// of range, or a constraint), the batch is split and the halves retried
/// until the refused rows stand alone: those are returned as rejected and
/// all other rows are written. Any other error fails the whole write.
pub async fn write(
    db: &Database,
    layout: &Layout,
    updates: &[Update],
    guard: Guard,
) -> Result<Written, SinkError> {
    let mut written = Written::default();
    isolate(Dest::Pool(db), layout, updates, guard, &mut written).await?;
    Ok(written)
}

/// As [`write`], inside `tx`, an open transaction on the PostgreSQL
/// target: each statement runs under a savepoint, so that a refused value
/// undoes only its own statement and the rest of the chunk commits (or
/// not) with the transaction.
pub async fn write_in(
    tx: &mut AtomicTx,
    layout: &Layout,
    updates: &[Update],
    guard: Guard,
) -> Result<Written, SinkError> {
    let mut written = Written::default();
    isolate(Dest::Tx(tx), layout, updates, guard, &mut written).await?;
    Ok(written)
}

/// Where a write goes: a pool, or an open PostgreSQL transaction.
enum Dest<'a> {
    Pool(&'a Database),
    Tx(&'a mut AtomicTx),
}

/// Writes `updates`, splitting the batch while the database refuses a
/// value until the refused rows stand alone (see [`write`]).
fn isolate<'a>(
    mut into: Dest<'a>,
    layout: &'a Layout,
    updates: &'a [Update],
    guard: Guard,
    written: &'a mut Written,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send + 'a>> {
    Box::pin(async move {
        if updates.is_empty() {
            return Ok(());
        }
        let attempt = match &mut into {
            Dest::Pool(db) => {
                let t = db.timeouts();
                match db.writes() {
                    true => on_backend!(db.pools(), |B, pool| B::write(
                        pool, t, layout, updates, guard
                    )
                    .await),
                    false => Err(SinkError::ReadOnly {
                        table: layout.target.quoted(),
                    }),
                }
            }
            Dest::Tx(tx) => tx.write_in_savepoint(layout, updates, guard).await,
        };
        match attempt {
            Ok((keys, busy)) => {
                written.written.extend(keys);
                written.busy.extend(busy);
                Ok(())
            }
            // A refused value is split until it stands alone; a statement
            // that ran or waited too long is split so that its halves lock
            // and write fewer rows each (alone, it fails, and is retried).
            Err(SinkError::Write { error, .. })
                if refuses_a_value(&error)
                    || (crate::backend::timed_out(&error) && updates.len() > 1) =>
            {
                if let [update] = updates {
                    let reason = format!(
                        "the database refused the new values: {}",
                        crate::db::describe(&error)
                    );
                    written.rejected.push((update.key.clone(), reason));
                    return Ok(());
                }
                tracing::debug!(
                    table = %layout.target.quoted(),
                    rows = updates.len(),
                    error = %crate::db::describe(&error),
                    "Write refused; splitting it."
                );
                let (first, second) = updates.split_at(updates.len() / 2);
                let into = match into {
                    Dest::Pool(db) => {
                        isolate(Dest::Pool(db), layout, first, guard, written).await?;
                        Dest::Pool(db)
                    }
                    Dest::Tx(tx) => {
                        isolate(Dest::Tx(&mut *tx), layout, first, guard, written).await?;
                        Dest::Tx(tx)
                    }
                };
                isolate(into, layout, second, guard, written).await
            }
            Err(other) => Err(other),
        }
    })
}

/// Who holds the target rows of `keys` locked, as far as the database can
/// tell (see [`Driver::holders`](crate::backend::Driver::holders)); rows it
/// cannot name are left out. A failure to ask is logged and names no one:
/// it must not fail the write.
pub async fn holders(db: &Database, layout: &Layout, keys: &[Key]) -> Vec<(Key, String)> {
    if !db.capabilities().names_lock_holders {
        return Vec::new();
    }
    // A few are enough to name who holds a chunk's rows.
    let keys = &keys[..keys.len().min(100)];
    on_backend!(db.pools(), |B, pool| B::holders(
        pool,
        db.timeouts(),
        layout,
        keys
    )
    .await)
    .unwrap_or_else(|error| {
        tracing::debug!(error = %crate::db::describe(&error), "Could not name who holds locked rows.");
        Vec::new()
    })
}

/// Replaces computed output values with the form the target will store
/// them in (PostgreSQL rounds a numeric to its scale, reorders jsonb keys,
/// keeps microseconds; MySQL rounds a FLOAT), so that comparing them with
/// what a row holds says whether writing would change it. Values the
/// database refuses are left as they are, for the write to refuse and
/// report. `None` when no output column is stored in another form than
/// the one sent.
pub async fn stored_form(
    db: &Database,
    layout: &Layout,
    rows: &[&[Value]],
) -> Result<Option<Vec<Vec<Value>>>, SinkError> {
    on_backend!(db.pools(), |B, pool| B::stored_form(
        pool,
        db.timeouts(),
        layout,
        rows
    )
    .await)
}
