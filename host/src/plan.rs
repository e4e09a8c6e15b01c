//! Planning: consumes a spec, the source database's catalog and a loaded
//! transform; produces a [`Plan`]: the resolved [`Layout`] (every table and
//! column checked to exist and to fit the types the transform declares),
//! the transform's configuration accepted, the rows in scope and the number
//! of chunks. Planning reads the catalog and counts rows; it writes nothing.

use std::sync::Arc;

use crate::chunk::chunk_count;
use crate::lookup::{self, LookupError, Lookups};
use crate::source::{ColumnInfo, Database, Layout, Scope, SourceError, TableInfo, TableRef};
use crate::spec::{Spec, SpecError};
use crate::transform::wasi::GuestEnv;
use crate::transform::{Runner, Setup, TransformError};
use crate::value::{Column, Info, Param, value_type_name};

/// Why a spec cannot be planned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The spec does not fit the database or the transform.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The database could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The transform could not be set up.
    #[error(transparent)]
    Transform(#[from] TransformError),
    /// A lookup table could not be loaded.
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

/// What a run of a spec would do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What is read and written.
    pub layout: Layout,
    /// The rows in scope now.
    pub scope: Scope,
    /// Chunks the scope splits into.
    pub chunks: u64,
    /// Things a reviewer should know.
    pub warnings: Vec<String>,
    /// The spec's lookup tables, loaded.
    pub lookups: Arc<Lookups>,
}

/// The spec's `[transform] config` as the component receives it.
pub fn params(spec: &Spec) -> Vec<Param> {
    spec.file
        .transform
        .config
        .iter()
        .map(|(name, value)| Param {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

/// Refuses a `where` that calls a function that may write, unless the spec
/// opts in: under `--execute` the condition runs inside the writing
/// statement too, where read-only mode cannot stop it, and a function that
/// writes only outside read-only transactions would pass every dry run.
/// Returns why the check could not be made, if it could not.
async fn refuse_volatile(
    spec: &Spec,
    db: &Database,
    table: &TableRef,
    condition: &str,
) -> Result<Option<String>, PlanError> {
    let found = match db.volatile_functions(table, condition).await {
        Ok(found) => found,
        // The check needs a temporary view on PostgreSQL (the TEMPORARY
        // privilege); without it the read-only transactions still hold.
        Err(error) => return Ok(Some(crate::db::describe(&error))),
    };
    if found.is_empty() {
        return Ok(None);
    }
    Err(spec
        .error_at(
            &["source", "where"],
            format!(
                "the condition calls {}, which the database marks as volatile (not deterministic): \
                 such a function may write, and under --execute the condition also runs inside \
                 refill's writing statement, where read-only mode cannot stop it. Use a stable or \
                 immutable function, or, if it only reads, set allow_volatile_where = true in [source]",
                found.join(", ")
            ),
        )
        .into())
}

/// Runs the spec's probe once, read-only: a probe that tries to write is
/// refused (exit 2); one that fails otherwise is a warning, since a run
/// pauses while its probe cannot be measured.
async fn check_probe(spec: &Spec, db: &Database) -> Result<Option<String>, PlanError> {
    let t = &spec.file.throttle;
    let (Some(sql), Some(_)) = (&t.probe, t.probe_max) else {
        return Ok(None);
    };
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let other;
    let on = match &t.probe_url {
        Some(url) => {
            let dir = spec.path.parent().unwrap_or(std::path::Path::new("."));
            let url = crate::db::DbUrl::parse(url, dir)
                .map_err(|e| spec.error_at(&["throttle", "probe_url"], e.to_string()))?;
            other = match Database::connect(&url, 1).await {
                Ok(db) => db,
                Err(e) => {
                    return Ok(Some(format!(
                        "the probe's database cannot be reached now: {e}"
                    )));
                }
            };
            &other
        }
        None => db,
    };
    match on.number(sql).await {
        Ok(_) => Ok(None),
        Err(e) if crate::backend::writes_refused(&e) => Err(spec
            .error_at(
                &["throttle", "probe"],
                format!(
                    "the probe tried to write ({}); refill runs probes read-only, so nothing was written: make it a query that only reads",
                    crate::db::describe(&e)
                ),
            )
            .into()),
        Err(e) => Ok(Some(format!(
            "the probe fails now ({}); a run pauses while it cannot be measured",
            crate::db::describe(&e)
        ))),
    }
}

/// Checks that the role can see what each health indicator on needs. One
/// the spec set itself fails closed, and blind it would hold a run back for
/// good: that is refused (exit 2), naming the key that turns it off. One on
/// by default judges what the role sees, with a warning. A check that
/// cannot be made now is a warning too.
pub(crate) async fn check_health(spec: &Spec, db: &Database) -> Result<Option<String>, PlanError> {
    let signals = crate::throttle::signals::Signals::of(spec, db)?;
    let Some(health) = signals.health() else {
        return Ok(None);
    };
    match health.blind_spots().await {
        Ok(blind) => {
            if let Some(b) = blind.iter().find(|b| b.strict) {
                return Err(spec
                    .error_at(&["throttle", "health", b.key], b.why.clone())
                    .into());
            }
            let lines: Vec<String> = blind
                .into_iter()
                .map(|b| format!("[throttle.health] {}: {}", b.key, b.why))
                .collect();
            Ok((!lines.is_empty()).then(|| lines.join("; ")))
        }
        Err(why) => Ok(Some(format!(
            "cannot check what the health indicators may see now ({why}); a run pauses while one cannot be measured"
        ))),
    }
}

/// Checks the spec against the database and the transform and counts the
/// rows in scope.
pub async fn build(spec: &Spec, db: &Database, runner: &Runner) -> Result<Plan, PlanError> {
    let layout = resolve(spec, db, runner.info()).await?;
    let lookups = load_and_check(spec, db, runner).await?;
    let probe = check_probe(spec, db).await?;
    let health = check_health(spec, db).await?;
    let scope = db.scope(&layout).await?;
    if scope.null_keys > 0 {
        let key = &layout.key.name;
        let quoted = (db.dialect().quote)(key);
        return Err(spec
            .error_at(
                &["source", "key"],
                format!(
                    "{} row{} in scope {} a NULL in key column \"{key}\": refill reads, writes and checkpoints rows by their key, so it cannot process {}; give {} a key, or leave {} out of scope with [source] where = \"{quoted} IS NOT NULL\" (added to your condition with AND)",
                    scope.null_keys,
                    if scope.null_keys == 1 { "" } else { "s" },
                    if scope.null_keys == 1 { "has" } else { "have" },
                    if scope.null_keys == 1 { "it" } else { "them" },
                    if scope.null_keys == 1 { "it" } else { "them" },
                    if scope.null_keys == 1 { "it" } else { "them" },
                ),
            )
            .into());
    }
    let chunks = chunk_count(scope.rows, spec.file.chunk.rows);
    let mut warnings = Vec::new();
    warnings.extend(probe);
    warnings.extend(health);
    if spec.file.transform.sha256.is_none() {
        warnings.push(format!(
            "the component is not pinned: add `sha256 = \"{}\"` to [transform] after reviewing it (required for --execute)",
            runner.digest()
        ));
    }
    if layout.same_table() {
        for output in &layout.outputs {
            if layout.inputs.iter().any(|i| i.name == output.name) {
                warnings.push(format!(
                    "column \"{}\" is both read and written: the transform must give the same result when run on its own output, \
                     because a chunk interrupted between its write and its checkpoint is processed again",
                    output.name
                ));
            }
        }
    }
    if !layout.key.not_null {
        warnings.push(format!(
            "key column \"{}\" allows NULL: none is in scope now, but a row given a NULL key during the run is not processed",
            layout.key.name
        ));
    }
    Ok(Plan {
        layout,
        scope,
        chunks,
        warnings,
        lookups,
    })
}

/// What a spec's instances are set up with: its configuration, the guest
/// environment `env`, and its loaded lookup tables.
pub fn setup(spec: &Spec, env: GuestEnv, lookups: Arc<Lookups>) -> Setup {
    Setup {
        params: params(spec),
        env,
        lookups,
    }
}

/// Loads the spec's lookup tables (running their queries on `db`) and
/// checks the configuration with them: both happen before any row is read.
pub async fn load_and_check(
    spec: &Spec,
    db: &Database,
    runner: &Runner,
) -> Result<Arc<Lookups>, PlanError> {
    let lookups = Arc::new(lookup::load(spec, Some(db)).await?);
    check_config(spec, runner, &lookups)?;
    Ok(lookups)
}

/// Hands the spec's configuration to a fresh instance of the transform, so
/// that a configuration it refuses stops everything before any row is read.
pub fn check_config(spec: &Spec, runner: &Runner, lookups: &Arc<Lookups>) -> Result<(), PlanError> {
    let env = GuestEnv::current(&[spec.name(), runner.digest()]);
    match runner.instance(&setup(spec, env, lookups.clone())) {
        Ok(_) => Ok(()),
        Err(TransformError::Config { error, .. }) => Err(spec
            .error_at(
                &["transform", "config"],
                format!("{} refuses it: {error}", runner.info().name),
            )
            .into()),
        Err(other) => Err(other.into()),
    }
}

/// Resolves the spec's tables and columns against the catalog, checking
/// them against what the transform declares.
// Longer than 100 lines: the checks of one spec against the catalog, each with its own error, in the order a reader fixes them.
pub async fn resolve(spec: &Spec, db: &Database, info: &Info) -> Result<Layout, PlanError> {
    let f = &spec.file;
    if !db.capabilities().schemas {
        for (at, schema) in [
            (["source", "schema"], f.source.schema.as_deref()),
            (["target", "schema"], f.target.schema.as_deref()),
        ] {
            if schema.is_some_and(|s| s != "main") {
                return Err(spec
                    .error_at(
                        &at,
                        format!(
                            "a {} database has no schemas; leave `schema` out",
                            db.backend()
                        ),
                    )
                    .into());
            }
        }
    }
    let source_ref = TableRef {
        schema: f.source.schema.clone(),
        name: f.source.table.clone(),
    };
    let source = db.table(&source_ref).await?.ok_or_else(|| {
        spec.error_at(
            &["source", "table"],
            format!("table {source_ref} not found in {}", spec.source_url),
        )
    })?;
    let key = key_column(spec, &source, &f.source.key, &["source", "key"])?;
    let key_type = key.key_type().ok_or_else(|| {
        spec.error_at(
            &["source", "key"],
            format!(
                "column \"{}\" has type {}; refill keys must be integer or text columns",
                key.name, key.sql_type
            ),
        )
    })?;
    if let Some(why) = db.refuses_key(&key.sql_type) {
        return Err(spec
            .error_at(&["source", "key"], format!("column \"{}\" {why}", key.name))
            .into());
    }
    let inputs = columns(
        spec,
        &source,
        &f.source.columns,
        &info.inputs,
        &info.name,
        Direction::Read,
    )?;

    let target_ref = TableRef {
        schema: spec.target_schema().map(str::to_string),
        name: spec.target_table().to_string(),
    };
    let target = if target_ref == source_ref {
        source.clone()
    } else {
        db.table(&target_ref).await?.ok_or_else(|| {
            spec.error_at(
                &["target", "table"],
                format!("table {target_ref} not found in {}", spec.source_url),
            )
        })?
    };
    let target_key = key_column(spec, &target, spec.target_key(), &["target", "key"])?;
    if target_key.key_type() != Some(key_type) {
        return Err(spec
            .error_at(
                &["target", "key"],
                format!(
                    "column \"{}\" has type {}, but the source key is {key_type}",
                    target_key.name, target_key.sql_type
                ),
            )
            .into());
    }
    let outputs = columns(
        spec,
        &target,
        &f.target.columns,
        &info.outputs,
        &info.name,
        Direction::Write,
    )?;

    if let Some((c, at)) = inputs
        .iter()
        .map(|c| (c, ["source", "columns"]))
        .chain(outputs.iter().map(|c| (c, ["target", "columns"])))
        .find(|(c, _)| db.unsupported(&c.type_name))
    {
        return Err(spec
            .error_at(
                &at,
                format!(
                    "column \"{}\" has type {}, which refill cannot read or write on {} (no exact text form); backfill a column of another type, or convert it in SQL",
                    c.name, c.sql_type, db.backend()
                ),
            )
            .into());
    }
    if let Some(condition) = &f.source.scope {
        // Before the condition is first run: MySQL/MariaDB evaluate a
        // constant call at once, even under LIMIT 0.
        let unchecked = match f.source.allow_volatile_where {
            false => refuse_volatile(spec, db, &source_ref, condition).await?,
            true => None,
        };
        db.check_scope(&source_ref, condition).await.map_err(|e| {
            let message = match crate::backend::writes_refused(&e) {
                true => format!(
                    "the condition tried to write ({}); refill runs its reads read-only, so nothing was written",
                    crate::db::describe(&e)
                ),
                false => format!(
                    "the condition does not work on {source_ref}: {}",
                    crate::db::describe(&e)
                ),
            };
            spec.error_at(&["source", "where"], message)
        })?;
        // A condition that does not work is reported as such above; one
        // that works but could not be checked is worth a warning.
        if let Some(error) = unchecked {
            tracing::warn!(%error, "Could not check the functions [source] where calls.");
        }
    }
    Ok(Layout {
        source: source_ref,
        key,
        key_type,
        inputs,
        scope: f.source.scope.clone(),
        target: target_ref,
        target_key,
        outputs,
    })
}

fn key_column(
    spec: &Spec,
    table: &TableInfo,
    name: &str,
    at: &[&str],
) -> Result<ColumnInfo, SpecError> {
    let column = table.column(name).ok_or_else(|| {
        spec.error_at(
            at,
            format!(
                "column \"{name}\" not found in {} (it has: {})",
                table.table,
                table.column_names()
            ),
        )
    })?;
    if !column.unique {
        return Err(spec.error_at(
            at,
            format!("column \"{name}\" is neither the primary key nor a unique column of {}; chunks need a unique key", table.table),
        ));
    }
    Ok(column.clone())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

fn columns(
    spec: &Spec,
    table: &TableInfo,
    names: &[String],
    declared: &[Column],
    transform: &str,
    direction: Direction,
) -> Result<Vec<ColumnInfo>, SpecError> {
    let (at, verb, noun): (&[&str], _, _) = match direction {
        Direction::Read => (&["source", "columns"], "reads", "input"),
        Direction::Write => (&["target", "columns"], "writes", "output"),
    };
    if names.len() != declared.len() {
        let wanted: Vec<&str> = declared.iter().map(|c| c.name.as_str()).collect();
        return Err(spec.error_at(
            at,
            format!(
                "the transform {transform} {verb} {} column{} ({}), the spec lists {}",
                declared.len(),
                if declared.len() == 1 { "" } else { "s" },
                wanted.join(", "),
                names.len()
            ),
        ));
    }
    names
        .iter()
        .zip(declared)
        .enumerate()
        .map(|(i, (name, want))| {
            let column = table.column(name).ok_or_else(|| {
                spec.error_at(at, format!("column \"{name}\" not found in {} (it has: {})", table.table, table.column_names()))
            })?;
            let fits = match direction {
                Direction::Read => column.kind.feeds(want.type_),
                Direction::Write => column.kind.takes(want.type_),
            };
            if !fits {
                return Err(spec.error_at(
                    at,
                    format!(
                        "column \"{name}\" has type {}, but {transform} {verb} {noun} {} (\"{}\") as {}",
                        column.sql_type,
                        i + 1,
                        want.name,
                        value_type_name(want.type_)
                    ),
                ));
            }
            Ok(column.clone())
        })
        .collect()
}
