//! The state store: consumes the events of a run (started, chunk begun,
//! chunk done, session heartbeats, finished) and produces the checkpoints a
//! killed run resumes from and the audit trail `refill status` shows. It
//! lives in SQLite (default: `.refill/state.db` next to the spec),
//! PostgreSQL or MySQL/MariaDB, through sqlx's `Any` driver; each statement
//! is written once with [`store_sql!`] and spelled for its database at
//! compile time.
//!
//! Tables: `refill_runs` (one row per run: who ran what, with which spec
//! and component digest, over which key range), `refill_chunks` (one row per
//! chunk: its key range, status and counts), `refill_sessions` (one row per
//! process that worked on a run, with its heartbeat), `refill_locks` (one
//! row per backfill name being written, so that two processes never write
//! the same backfill at once).

use std::sync::Once;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row as _};

mod audit;
mod control;
mod dead;
mod deferred;
mod images;
mod lease;

pub use audit::{
    AuditRecord, Difference, LookupRecord, RetryRecord, RollbackRecord, VerificationRecord,
};
pub use control::{Control, ControlAction};
pub use dead::{DeadLetter, DeadLetterGroup, FailureKind, Resolution};
pub use deferred::Deferred;
pub use images::{Image, ImageRef};
pub use lease::{Claim, Lease, Workers};

use crate::backend::{AtomicDb, AtomicTx, Sql, Store, store_sql};
use crate::chunk::{Chunk, Key, KeyType};
use crate::db::DbUrl;
use crate::progress::Phase;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Could not open the store.
    #[error("cannot open the state store {url}: {}", crate::db::describe(error))]
    Open {
        /// The masked url.
        url: String,
        /// Why.
        error: sqlx::Error,
    },
    /// A query failed.
    #[error("state store: {what} failed: {}", crate::db::describe(error))]
    Query {
        /// What was being done.
        what: &'static str,
        /// Why.
        error: sqlx::Error,
    },
    /// A run id prefix matches more than one run.
    #[error("run id prefix `{prefix}` matches {} runs: {}{}; give more of it", matches.len() as u64 + more, matches.join("; "), if *more > 0 { format!("; … and {more} more") } else { String::new() })]
    Ambiguous {
        /// The prefix given.
        prefix: String,
        /// The first few runs it matches, newest first: id, name, mode,
        /// status and start.
        matches: Vec<String>,
        /// How many more it matches.
        more: u64,
    },
    /// The store holds something this version cannot read.
    #[error("state store: {0}")]
    Corrupt(String),
    /// The SQLite file of the store was deleted, moved, replaced or
    /// emptied while refill was using it.
    #[error("the state store {} {what} while refill was using it; refill does not recreate the state of a backfill in progress (its checkpoints, dead letters and before-images would be lost): put the file back (from a backup) and resume, or point [state] url at a new store to start over", path.display())]
    Gone {
        /// The file.
        path: std::path::PathBuf,
        /// What happened to it.
        what: &'static str,
    },
}

impl crate::backoff::Transient for StateError {
    fn is_transient(&self) -> bool {
        match self {
            StateError::Open { error, .. } | StateError::Query { error, .. } => {
                crate::backend::transient(error)
            }
            _ => false,
        }
    }
}

/// How a run writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Transforms and counts, writes nothing to the target.
    DryRun,
    /// Writes.
    Execute,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::DryRun => "dry-run",
            Mode::Execute => "execute",
        }
    }
}

/// Where a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// A process is (or was, if it died) working on it.
    Running,
    /// Every chunk up to the high-watermark is done.
    Done,
    /// Stopped on purpose before the end (`--limit`); resumable.
    Incomplete,
    /// Stopped by an error; resumable once the cause is fixed.
    Failed,
    /// Given up with `--restart`; never resumed.
    Abandoned,
    /// Undone by `refill rollback --execute`; never resumed.
    RolledBack,
    /// Stopped by `refill abort`; the next run of the spec resumes it.
    Aborted,
}

impl RunStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Incomplete => "incomplete",
            RunStatus::Failed => "failed",
            RunStatus::Abandoned => "abandoned",
            RunStatus::RolledBack => "rolled-back",
            RunStatus::Aborted => "aborted",
        }
    }

    fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "running" => RunStatus::Running,
            "done" => RunStatus::Done,
            "incomplete" => RunStatus::Incomplete,
            "failed" => RunStatus::Failed,
            "abandoned" => RunStatus::Abandoned,
            "rolled-back" => RunStatus::RolledBack,
            "aborted" => RunStatus::Aborted,
            _ => return None,
        })
    }

    /// Whether a later run of the same spec picks this run up again.
    pub fn resumable(self) -> bool {
        matches!(
            self,
            RunStatus::Running | RunStatus::Incomplete | RunStatus::Failed | RunStatus::Aborted
        )
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One run, as recorded.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    /// Its id.
    pub run_id: String,
    /// The spec's name.
    pub name: String,
    /// Dry run or execute.
    pub mode: Mode,
    /// Where it stands.
    pub status: RunStatus,
    /// The hash of the work the spec describes (see `Spec::work_hash`).
    pub work_hash: String,
    /// The hash of the data the spec touches (see `Spec::data_hash`).
    pub data_hash: String,
    /// The spec, urls masked.
    pub spec: serde_json::Value,
    /// Where the spec file was.
    pub spec_path: String,
    /// The component's sha256.
    pub component_digest: String,
    /// The transform's name.
    pub transform_name: String,
    /// The transform's version.
    pub transform_version: String,
    /// The refill version that started it.
    pub host_version: String,
    /// Who started it.
    pub user_name: String,
    /// On which machine.
    pub host_name: String,
    /// The source url, masked.
    pub source_url: String,
    /// The source table, quoted.
    pub source_table: String,
    /// The target table, quoted.
    pub target_table: String,
    /// The key type.
    pub key_type: KeyType,
    /// The first key in scope when it started.
    pub first_key: Option<Key>,
    /// The last key in scope when it started: the high-watermark.
    pub high_watermark: Option<Key>,
    /// Rows in scope when it started.
    pub rows_in_scope: u64,
    /// Rows per chunk when it started.
    pub chunk_rows: u64,
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// When it stopped, if it did.
    pub finished_at: Option<String>,
    /// Why it stopped, for failed or incomplete runs.
    pub message: Option<String>,
    /// Whether `refill worker` processes do its work (planned with
    /// `--workers 0`) rather than the process that started it.
    pub workers: bool,
}

/// Row counts of a chunk or a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Rows read.
    pub rows: u64,
    /// Rows written with new values.
    pub updated: u64,
    /// Rows whose new values equal what is there (not written).
    pub unchanged: u64,
    /// Rows the transform skipped.
    pub skipped: u64,
    /// Rows that failed (and are dead letters).
    pub failed: u64,
    /// Rows changed by someone else between refill's read and its write,
    /// read and transformed again.
    pub conflicts: u64,
    /// Database operations retried after a transient error.
    pub retries: u64,
    /// Rows another transaction held locked when refill came to write
    /// them: deferred, not waited for, and tried again later in the run
    /// (their outcome is counted when they are settled).
    pub busy: u64,
}

impl Counts {
    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &Counts) {
        self.rows += other.rows;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.skipped += other.skipped;
        self.failed += other.failed;
        self.conflicts += other.conflicts;
        self.retries += other.retries;
        self.busy += other.busy;
    }
}

/// Time spent on a chunk, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    /// Reading it.
    pub read_ms: u64,
    /// Transforming it.
    pub transform_ms: u64,
    /// Writing it and its checkpoint.
    pub write_ms: u64,
}

/// Where a chunk stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChunkStatus {
    /// Planned for workers, not yet claimed by one.
    Planned,
    /// Read and handed on (claimed, for workers); its writes may or may
    /// not have happened.
    Pending,
    /// Written and checkpointed.
    Done,
}

/// One chunk, as recorded.
#[derive(Clone, Debug, Serialize)]
pub struct ChunkRecord {
    /// Its number in the run.
    pub chunk_id: u64,
    /// The last key before it (exclusive).
    pub lo: Option<Key>,
    /// Its last key (inclusive).
    pub hi: Key,
    /// Pending or done.
    pub status: ChunkStatus,
    /// How many times it was started.
    pub attempts: u64,
    /// The session that last worked on it.
    pub session_id: String,
    /// Its counts, once done.
    pub counts: Counts,
    /// Its timings, once done.
    pub timings: Timings,
    /// When it was last started.
    pub started_at: String,
    /// When it was done.
    pub finished_at: Option<String>,
    /// A failure that touched the whole chunk or a batch of it.
    pub error: Option<String>,
}

impl ChunkRecord {
    /// The chunk's key range.
    pub fn chunk(&self) -> Chunk {
        Chunk {
            id: self.chunk_id,
            lo: self.lo.clone(),
            hi: self.hi.clone(),
        }
    }
}

/// What a session does to its run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionKind {
    /// Works on the run's chunks (`refill run`, `refill worker`).
    #[default]
    Run,
    /// Runs the run's dead letters again (`refill retry`).
    Retry,
    /// Puts back what the run overwrote (`refill rollback`).
    Rollback,
}

impl SessionKind {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Run => "run",
            SessionKind::Retry => "retry",
            SessionKind::Rollback => "rollback",
        }
    }

    /// The kind of a stored name; a session of an older version, which
    /// stored none, worked on the run's chunks.
    fn parse(s: Option<&str>) -> Result<SessionKind, StateError> {
        match s {
            None | Some("run") => Ok(SessionKind::Run),
            Some("retry") => Ok(SessionKind::Retry),
            Some("rollback") => Ok(SessionKind::Rollback),
            Some(other) => Err(StateError::Corrupt(format!(
                "unknown session kind `{other}`"
            ))),
        }
    }
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionOutcome {
    /// Its work is done.
    Done,
    /// It stopped on purpose before the end (`--limit`).
    Incomplete,
    /// It stopped on an error.
    Failed,
    /// The run was given up (`--restart`) under it.
    Abandoned,
    /// The run was rolled back under it.
    RolledBack,
    /// `refill abort` stopped it.
    Aborted,
    /// Ctrl-C or a signal stopped it.
    Interrupted,
    /// It ran for its `--max-runtime`.
    MaxRuntime,
    /// A critical health indicator stopped it.
    Critical,
    /// It left the run to the other workers.
    Left,
    /// It never ended: the process died, and a later one found it so.
    Lost,
}

impl SessionOutcome {
    const ALL: [SessionOutcome; 11] = [
        SessionOutcome::Done,
        SessionOutcome::Incomplete,
        SessionOutcome::Failed,
        SessionOutcome::Abandoned,
        SessionOutcome::RolledBack,
        SessionOutcome::Aborted,
        SessionOutcome::Interrupted,
        SessionOutcome::MaxRuntime,
        SessionOutcome::Critical,
        SessionOutcome::Left,
        SessionOutcome::Lost,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionOutcome::Done => "done",
            SessionOutcome::Incomplete => "incomplete",
            SessionOutcome::Failed => "failed",
            SessionOutcome::Abandoned => "abandoned",
            SessionOutcome::RolledBack => "rolled-back",
            SessionOutcome::Aborted => "aborted",
            SessionOutcome::Interrupted => "interrupted",
            SessionOutcome::MaxRuntime => "max-runtime",
            SessionOutcome::Critical => "critical",
            SessionOutcome::Left => "left",
            SessionOutcome::Lost => "lost",
        }
    }

    fn parse(s: &str) -> Option<SessionOutcome> {
        SessionOutcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl From<RunStatus> for SessionOutcome {
    /// How a run's own session ended, from the status it left the run in;
    /// a run still running goes on under other processes.
    fn from(status: RunStatus) -> SessionOutcome {
        match status {
            RunStatus::Running => SessionOutcome::Left,
            RunStatus::Done => SessionOutcome::Done,
            RunStatus::Incomplete => SessionOutcome::Incomplete,
            RunStatus::Failed => SessionOutcome::Failed,
            RunStatus::Abandoned => SessionOutcome::Abandoned,
            RunStatus::RolledBack => SessionOutcome::RolledBack,
            RunStatus::Aborted => SessionOutcome::Aborted,
        }
    }
}

impl std::fmt::Display for SessionOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One process that worked on a run.
#[derive(Clone, Debug, Serialize)]
pub struct SessionRecord {
    /// Its id.
    pub session_id: String,
    /// Its run.
    pub run_id: String,
    /// What it does to the run: its chunks, a retry or a rollback.
    pub kind: SessionKind,
    /// Its process id.
    pub pid: u32,
    /// Its machine.
    pub host_name: String,
    /// Its user.
    pub user_name: String,
    /// When it started.
    pub started_at: String,
    /// Its last sign of life.
    pub heartbeat_at: String,
    /// When it ended, if it did.
    pub ended_at: Option<String>,
    /// How it ended.
    pub outcome: Option<SessionOutcome>,
    /// What it was doing about its pace at its last report.
    pub state: Option<Phase>,
    /// Why it was waiting or stopping.
    pub reason: Option<String>,
}

/// How many of the runs an ambiguous id prefix matches its error names.
const AMBIGUOUS_SHOWN: u32 = 5;

/// The current time as stored: RFC 3339 with milliseconds, UTC, which
/// sorts as text.
pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a stored time.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The version of the tables below; a store written by a newer refill is
/// refused rather than misread. Version 0 is the first release's, which
/// recorded no version.
const SCHEMA_VERSION: i64 = 7;

/// Columns added to tables of an older version: table, column, definition.
/// Opening a store of an older version adds those it lacks.
const ADDED_COLUMNS: &[(&str, &str, Sql)] = &[
    (
        "refill_runs",
        "data_hash",
        store_sql!["VARCHAR(64) NOT NULL DEFAULT ''"],
    ),
    (
        "refill_chunks",
        "conflicts",
        store_sql!["BIGINT NOT NULL DEFAULT 0"],
    ),
    (
        "refill_chunks",
        "retries",
        store_sql!["BIGINT NOT NULL DEFAULT 0"],
    ),
    (
        "refill_chunks",
        "busy",
        store_sql!["BIGINT NOT NULL DEFAULT 0"],
    ),
    (
        "refill_dead_letters",
        "resolution",
        store_sql!["VARCHAR(16)"],
    ),
    ("refill_dead_letters", "kind", store_sql!["VARCHAR(16)"]),
    ("refill_runs", "control", store_sql!["VARCHAR(16)"]),
    ("refill_runs", "control_by", store_sql!["VARCHAR(200)"]),
    ("refill_runs", "control_at", store_sql!["VARCHAR(40)"]),
    ("refill_sessions", "state", store_sql!["VARCHAR(16)"]),
    ("refill_sessions", "reason", store_sql![text]),
    ("refill_sessions", "kind", store_sql!["VARCHAR(16)"]),
    ("refill_runs", "coordination", store_sql!["VARCHAR(16)"]),
    ("refill_runs", "spec_text", store_sql![text]),
    (
        "refill_runs",
        "run_concurrency",
        store_sql!["BIGINT NOT NULL DEFAULT 0"],
    ),
    (
        "refill_runs",
        "pace_at",
        store_sql!["BIGINT NOT NULL DEFAULT 0"],
    ),
    ("refill_runs", "latency_baseline_us", store_sql!["BIGINT"]),
    ("refill_chunks", "lease_until", store_sql!["BIGINT"]),
    ("refill_dead_letters", "trap", store_sql!["VARCHAR(40)"]),
];

const SCHEMA: &[Sql] = &[
    store_sql!["CREATE TABLE IF NOT EXISTS refill_meta (
        name VARCHAR(64) NOT NULL PRIMARY KEY,
        value " text " NOT NULL
    )"],
    store_sql!["CREATE TABLE IF NOT EXISTS refill_dead_letters (
        run_id VARCHAR(64) NOT NULL,
        key_hash VARCHAR(64) NOT NULL,
        row_key " text " NOT NULL,
        chunk_id BIGINT NOT NULL,
        error " text " NOT NULL,
        input_hash VARCHAR(64) NOT NULL,
        component_digest VARCHAR(64) NOT NULL,
        attempts BIGINT NOT NULL,
        first_seen_at VARCHAR(40) NOT NULL,
        last_seen_at VARCHAR(40) NOT NULL,
        resolved_at VARCHAR(40),
        resolved_by VARCHAR(64),
        resolution VARCHAR(16),
        kind VARCHAR(16),
        trap VARCHAR(40),
        PRIMARY KEY (run_id, key_hash)
    )"],
    store_sql!["CREATE " index " refill_dead_letters_by_chunk ON refill_dead_letters (run_id, chunk_id)"],
    store_sql!["CREATE TABLE IF NOT EXISTS refill_deferred (
        run_id VARCHAR(64) NOT NULL,
        key_hash VARCHAR(64) NOT NULL,
        row_key " text " NOT NULL,
        chunk_id BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        holder " text " NOT NULL,
        first_seen_at VARCHAR(40) NOT NULL,
        last_seen_at VARCHAR(40) NOT NULL,
        PRIMARY KEY (run_id, key_hash)
    )"],
    store_sql!["CREATE TABLE IF NOT EXISTS refill_images (
        run_id VARCHAR(64) NOT NULL,
        chunk_id BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        rows_count BIGINT NOT NULL,
        data " text " NOT NULL,
        created_at VARCHAR(40) NOT NULL,
        PRIMARY KEY (run_id, chunk_id, seq)
    )"],
    store_sql!["CREATE TABLE IF NOT EXISTS refill_audit (
        record_id VARCHAR(64) NOT NULL PRIMARY KEY,
        run_id VARCHAR(64),
        kind VARCHAR(16) NOT NULL,
        started_at VARCHAR(40) NOT NULL,
        data " text " NOT NULL
    )"],
    store_sql!["CREATE " index " refill_audit_by_run ON refill_audit (run_id, kind)"],
    store_sql!["CREATE TABLE IF NOT EXISTS refill_runs (
        run_id VARCHAR(64) NOT NULL PRIMARY KEY,
        name VARCHAR(100) NOT NULL,
        mode VARCHAR(16) NOT NULL,
        status VARCHAR(16) NOT NULL,
        work_hash VARCHAR(64) NOT NULL,
        data_hash VARCHAR(64) NOT NULL,
        spec " text " NOT NULL,
        spec_path " text " NOT NULL,
        component_digest VARCHAR(64) NOT NULL,
        transform_name VARCHAR(200) NOT NULL,
        transform_version VARCHAR(100) NOT NULL,
        host_version VARCHAR(32) NOT NULL,
        user_name VARCHAR(200) NOT NULL,
        host_name VARCHAR(200) NOT NULL,
        source_url " text " NOT NULL,
        source_table " text " NOT NULL,
        target_table " text " NOT NULL,
        key_type VARCHAR(16) NOT NULL,
        first_key " text ",
        high_watermark " text ",
        rows_in_scope BIGINT NOT NULL,
        chunk_rows BIGINT NOT NULL,
        started_at VARCHAR(40) NOT NULL,
        finished_at VARCHAR(40),
        message " text ",
        control VARCHAR(16),
        control_by VARCHAR(200),
        control_at VARCHAR(40),
        coordination VARCHAR(16),
        spec_text " text ",
        run_concurrency BIGINT NOT NULL DEFAULT 0,
        pace_at BIGINT NOT NULL DEFAULT 0,
        latency_baseline_us BIGINT
    )"],
    store_sql!["CREATE " index " refill_runs_by_name ON refill_runs (name, started_at)"],
    store_sql!["CREATE TABLE IF NOT EXISTS refill_chunks (
        run_id VARCHAR(64) NOT NULL,
        chunk_id BIGINT NOT NULL,
        lo " text ",
        hi " text " NOT NULL,
        status VARCHAR(16) NOT NULL,
        attempts BIGINT NOT NULL,
        session_id VARCHAR(64) NOT NULL,
        rows_read BIGINT NOT NULL DEFAULT 0,
        updated BIGINT NOT NULL DEFAULT 0,
        unchanged BIGINT NOT NULL DEFAULT 0,
        skipped BIGINT NOT NULL DEFAULT 0,
        failed BIGINT NOT NULL DEFAULT 0,
        conflicts BIGINT NOT NULL DEFAULT 0,
        retries BIGINT NOT NULL DEFAULT 0,
        busy BIGINT NOT NULL DEFAULT 0,
        read_ms BIGINT NOT NULL DEFAULT 0,
        transform_ms BIGINT NOT NULL DEFAULT 0,
        write_ms BIGINT NOT NULL DEFAULT 0,
        started_at VARCHAR(40) NOT NULL,
        finished_at VARCHAR(40),
        error " text ",
        lease_until BIGINT,
        PRIMARY KEY (run_id, chunk_id)
    )"],
    store_sql!["CREATE TABLE IF NOT EXISTS refill_components (
        digest VARCHAR(64) NOT NULL PRIMARY KEY,
        size BIGINT NOT NULL,
        data " text " NOT NULL,
        stored_at VARCHAR(40) NOT NULL
    )"],
    store_sql!["CREATE TABLE IF NOT EXISTS refill_sessions (
        session_id VARCHAR(64) NOT NULL PRIMARY KEY,
        run_id VARCHAR(64) NOT NULL,
        pid BIGINT NOT NULL,
        host_name VARCHAR(200) NOT NULL,
        user_name VARCHAR(200) NOT NULL,
        started_at VARCHAR(40) NOT NULL,
        heartbeat_at VARCHAR(40) NOT NULL,
        ended_at VARCHAR(40),
        outcome VARCHAR(32),
        state VARCHAR(16),
        reason " text ",
        kind VARCHAR(16)
    )"],
    store_sql!["CREATE " index " refill_sessions_by_run ON refill_sessions (run_id)"],
    store_sql![
        "CREATE TABLE IF NOT EXISTS refill_locks (
        name VARCHAR(100) NOT NULL PRIMARY KEY,
        session_id VARCHAR(64) NOT NULL,
        pid BIGINT NOT NULL,
        host_name VARCHAR(200) NOT NULL,
        user_name VARCHAR(200) NOT NULL,
        started_at VARCHAR(40) NOT NULL,
        heartbeat_at VARCHAR(40) NOT NULL
    )"
    ],
];

/// A connection to the state store.
#[derive(Clone, Debug)]
pub struct StateStore {
    pool: AnyPool,
    url: DbUrl,
    /// How its database hosts it.
    dialect: &'static Store,
    /// For SQLite, the store's file and its identity (device, inode) when
    /// it was opened, to notice it being deleted or replaced.
    file: Option<(std::path::PathBuf, (u64, u64))>,
}

/// The device and inode of a file.
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

fn q(what: &'static str) -> impl FnOnce(sqlx::Error) -> StateError {
    move |error| StateError::Query { what, error }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl StateStore {
    /// A statement of this module, as the store's backend spells it.
    fn sql(&self, sql: Sql) -> sqlx::AssertSqlSafe<&'static str> {
        sqlx::AssertSqlSafe(sql.spelled(self.dialect.spelling))
    }

    /// Opens the store, creating it (and, for SQLite, its folder) and its
    /// tables if needed.
    pub async fn open(url: &DbUrl) -> Result<StateStore, StateError> {
        let open_error = |error| StateError::Open {
            url: url.masked(),
            error,
        };
        if let Some(path) = url.sqlite_path()
            && let Some(dir) = path.parent()
        {
            std::fs::create_dir_all(dir).map_err(|e| open_error(sqlx::Error::Io(e)))?;
        }
        let created = StateStore::connect(url, true).await?;
        created.ensure_schema().await?;
        if url.sqlite_path().is_none() {
            return Ok(created);
        }
        // From here on a connection never creates the file: one opened
        // after the file was deleted fails instead of starting an empty
        // store.
        created.pool.close().await;
        StateStore::connect(url, false).await
    }

    /// Fails with [`StateError::Gone`] if the SQLite file of the store is
    /// no longer the one opened: deleted, moved, replaced or emptied. The
    /// connections already open would go on writing to the deleted file,
    /// where nothing can find it again.
    pub fn check_present(&self) -> Result<(), StateError> {
        let Some((path, opened)) = &self.file else {
            return Ok(());
        };
        let gone = |what| {
            // Closing the last connection checkpoints the write-ahead log
            // into the file: into an emptied file, that would rebuild part
            // of a store. The pool is kept open until the process ends, so
            // the file stays as it was found.
            std::mem::forget(self.pool.clone());
            StateError::Gone {
                path: path.clone(),
                what,
            }
        };
        match std::fs::metadata(path) {
            Err(_) => Err(gone("was deleted or moved")),
            Ok(meta) if identity(&meta) != *opened => Err(gone("was replaced by another file")),
            Ok(meta) if meta.len() == 0 => Err(gone("was emptied")),
            Ok(_) => Ok(()),
        }
    }

    /// Creates the tables that are missing and upgrades a store written by
    /// an older refill. A store of this version is left alone: no DDL, so
    /// a role that may only read and write the tables can use it.
    async fn ensure_schema(&self) -> Result<(), StateError> {
        if let Ok(Some(v)) = self.version().await
            && v == SCHEMA_VERSION.to_string()
        {
            return Ok(());
        }
        for ddl in SCHEMA {
            // Two processes creating the same table at once: PostgreSQL
            // refuses the second `CREATE … IF NOT EXISTS` with a unique
            // violation or a duplicate type once the first commits; then
            // it exists.
            let mut attempts = 0;
            loop {
                attempts += 1;
                match sqlx::query(self.sql(*ddl)).execute(&self.pool).await {
                    Ok(_) => break,
                    Err(e) if (self.dialect.raced)(&e) && attempts < 5 => {}
                    Err(e) if (self.dialect.index_exists)(&e) => break,
                    Err(error) => {
                        return Err(StateError::Open {
                            url: self.url.masked(),
                            error,
                        });
                    }
                }
            }
        }
        self.check_version().await
    }

    /// Runs the backend's [`Store::tune`] statements in one transaction,
    /// on a store this process just made and that holds no run, so no
    /// other refill is writing to it; where one fails, none holds and the
    /// store is used as made.
    async fn tune(&self) {
        if self.dialect.tune.is_empty() {
            return;
        }
        let runs: Result<i64, _> = sqlx::query_scalar(self.sql(store_sql![
            "SELECT CAST(count(*) AS " bigint ") FROM refill_runs"
        ]))
        .fetch_one(&self.pool)
        .await;
        if !matches!(runs, Ok(0)) {
            return;
        }
        let tuned = async {
            let mut tx = self.pool.begin().await?;
            for &statement in self.dialect.tune {
                sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(error) = tuned {
            tracing::debug!(
                statements = ?self.dialect.tune,
                error = %crate::db::describe(&error),
                "The state store was left as made."
            );
        }
    }

    /// Adds the columns of [`ADDED_COLUMNS`] a store lacks.
    async fn add_columns(&self) -> Result<(), StateError> {
        for (table, column, definition) in ADDED_COLUMNS {
            if self.has_column(table, column).await {
                continue;
            }
            let definition = definition.spelled(self.dialect.spelling);
            let alter = format!("ALTER TABLE {table} ADD COLUMN {column} {definition}");
            let added = sqlx::query(sqlx::AssertSqlSafe(alter))
                .execute(&self.pool)
                .await;
            // Another refill may have added it meanwhile.
            if let Err(error) = added
                && !self.has_column(table, column).await
            {
                return Err(StateError::Query {
                    what: "upgrading the state store",
                    error,
                });
            }
            tracing::info!(table, column, "Upgraded the state store: added a column.");
        }
        Ok(())
    }

    async fn has_column(&self, table: &str, column: &str) -> bool {
        let probe = format!("SELECT {column} FROM {table} WHERE 1 = 0");
        sqlx::query(sqlx::AssertSqlSafe(probe))
            .fetch_optional(&self.pool)
            .await
            .is_ok()
    }

    /// Opens the store only if it exists (reading commands must not create
    /// one; they do upgrade one written by an older refill). Returns `None`
    /// for a SQLite file that is not there.
    pub async fn open_existing(url: &DbUrl) -> Result<Option<StateStore>, StateError> {
        if let Some(path) = url.sqlite_path()
            && !path.exists()
        {
            return Ok(None);
        }
        let store = StateStore::connect(url, false).await?;
        let exists = crate::backend::store(url.backend()).count_tables;
        let n: i64 = sqlx::query_scalar(exists)
            .fetch_one(&store.pool)
            .await
            .map_err(q("looking for the tables"))?;
        if n == 0 {
            return Ok(None);
        }
        store.ensure_schema().await?;
        Ok(Some(store))
    }

    async fn connect(url: &DbUrl, create: bool) -> Result<StateStore, StateError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let mut raw = url.expose().to_string();
        let dialect = crate::backend::store(url.backend());
        if let Some(mode) = dialect.create.filter(|_| create && !raw.contains("mode=")) {
            raw.push(if raw.contains('?') { '&' } else { '?' });
            raw.push_str(mode);
        }
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    for &setup in dialect.setup {
                        sqlx::Executor::execute(&mut *conn, setup).await?;
                    }
                    Ok(())
                })
            })
            .connect(&raw)
            .await
            .map_err(|error| StateError::Open {
                url: url.masked(),
                error,
            })?;
        let file = match url.sqlite_path() {
            Some(path) => {
                let meta = std::fs::metadata(path).map_err(|e| StateError::Open {
                    url: url.masked(),
                    error: sqlx::Error::Io(e),
                })?;
                Some((path.to_path_buf(), identity(&meta)))
            }
            None => None,
        };
        Ok(StateStore {
            pool,
            url: url.clone(),
            dialect,
            file,
        })
    }

    /// The recorded schema version (fails when there is no `refill_meta`).
    async fn version(&self) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(self.sql(store_sql![
            "SELECT value FROM refill_meta WHERE name = 'schema_version'"
        ]))
        .fetch_optional(&self.pool)
        .await
    }

    /// Upgrades a store of an older version and records this one, or
    /// refuses a store written by a newer refill.
    async fn check_version(&self) -> Result<(), StateError> {
        let found = self
            .version()
            .await
            .map_err(q("reading the schema version"))?;
        let version = match found.as_deref().map(str::parse::<i64>) {
            // A new store, or one from before versions were recorded.
            None => 0,
            Some(Ok(v)) => v,
            Some(Err(_)) => -1,
        };
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if !(0..SCHEMA_VERSION).contains(&version) {
            return Err(StateError::Corrupt(format!(
                "the state store {} has schema version {found:?}, newer than this refill knows ({SCHEMA_VERSION}); use a newer refill",
                self.url
            )));
        }
        self.add_columns().await?;
        let recorded = if found.is_none() {
            sqlx::query(
                self.sql(store_sql!["INSERT INTO refill_meta (name, value) VALUES ('schema_version', " ? ")"]),
            )
            .bind(SCHEMA_VERSION.to_string())
            .execute(&self.pool)
            .await
        } else {
            sqlx::query(self.sql(
                store_sql!["UPDATE refill_meta SET value = " ? " WHERE name = 'schema_version'"],
            ))
            .bind(SCHEMA_VERSION.to_string())
            .execute(&self.pool)
            .await
        };
        match recorded {
            // Another process created the store at the same time, and
            // tunes it.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(()),
            Ok(_) if found.is_none() => {
                self.tune().await;
                Ok(())
            }
            other => other.map(drop).map_err(q("recording the schema version")),
        }
    }

    /// The store's url.
    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    /// Records a new run.
    pub async fn create_run(&self, run: &RunRecord) -> Result<(), StateError> {
        sqlx::query(
            self.sql(store_sql!["INSERT INTO refill_runs (run_id, name, mode, status, work_hash, data_hash, spec, spec_path, component_digest, \
             transform_name, transform_version, host_version, user_name, host_name, source_url, source_table, \
             target_table, key_type, first_key, high_watermark, rows_in_scope, chunk_rows, started_at, finished_at, message, coordination) \
             VALUES (" ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ")"]),
        )
        .bind(&run.run_id)
        .bind(&run.name)
        .bind(run.mode.as_str())
        .bind(run.status.as_str())
        .bind(&run.work_hash)
        .bind(&run.data_hash)
        .bind(run.spec.to_string())
        .bind(&run.spec_path)
        .bind(&run.component_digest)
        .bind(&run.transform_name)
        .bind(&run.transform_version)
        .bind(&run.host_version)
        .bind(&run.user_name)
        .bind(&run.host_name)
        .bind(&run.source_url)
        .bind(&run.source_table)
        .bind(&run.target_table)
        .bind(run.key_type.to_string())
        .bind(run.first_key.as_ref().map(Key::encode))
        .bind(run.high_watermark.as_ref().map(Key::encode))
        .bind(to_i64(run.rows_in_scope))
        .bind(to_i64(run.chunk_rows))
        .bind(&run.started_at)
        .bind(&run.finished_at)
        .bind(&run.message)
        .bind(run.workers.then_some("workers"))
        .execute(&self.pool)
        .await
        .map_err(q("recording a new run"))?;
        Ok(())
    }

    /// Sets a run's status; a status other than running also sets its end
    /// time.
    pub async fn set_run_status(
        &self,
        run_id: &str,
        status: RunStatus,
        message: Option<&str>,
    ) -> Result<(), StateError> {
        let finished = (status != RunStatus::Running).then(now);
        sqlx::query(self.sql(
            store_sql!["UPDATE refill_runs SET status = " ? ", message = " ? ", finished_at = " ? " WHERE run_id = " ?],
        ))
        .bind(status.as_str())
        .bind(message)
        .bind(finished)
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(q("updating a run's status"))?;
        Ok(())
    }

    /// The most recent execute run of the spec called `name`.
    pub async fn latest_execute_run(&self, name: &str) -> Result<Option<RunRecord>, StateError> {
        let row = sqlx::query(self.sql(store_sql!["SELECT * FROM refill_runs WHERE name = " ? " AND mode = 'execute' ORDER BY started_at DESC LIMIT 1"]))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("looking up earlier runs"))?;
        row.map(|r| run_from_row(&r)).transpose()
    }

    /// When the first run (of any mode) of the spec called `name` with the
    /// component `digest` started: the instant its guests' clocks read.
    pub async fn first_started(
        &self,
        name: &str,
        digest: &str,
    ) -> Result<Option<String>, StateError> {
        sqlx::query_scalar(self.sql(
            store_sql!["SELECT MIN(started_at) FROM refill_runs WHERE name = " ? " AND component_digest = " ?],
        ))
        .bind(name)
        .bind(digest)
        .fetch_one(&self.pool)
        .await
        .map_err(q("looking up earlier runs"))
    }

    /// The run whose id is `id`, or the only one whose id starts with it.
    pub async fn find_run(&self, id: &str) -> Result<Option<RunRecord>, StateError> {
        let exact = sqlx::query(self.sql(store_sql!["SELECT * FROM refill_runs WHERE run_id = "?]))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("looking up a run"))?;
        if let Some(row) = exact {
            return run_from_row(&row).map(Some);
        }
        let pattern = format!("{}%", id.replace(['%', '_', '\\'], ""));
        let prefixed = sqlx::query(self.sql(
            store_sql!["SELECT * FROM refill_runs WHERE run_id LIKE " ? " ORDER BY started_at DESC LIMIT " ?],
        ))
        .bind(&pattern)
        .bind(i64::from(AMBIGUOUS_SHOWN) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(q("looking up a run"))?;
        match prefixed.as_slice() {
            [] => Ok(None),
            [one] => run_from_row(one).map(Some),
            _ => {
                let total: i64 =
                    sqlx::query_scalar(self.sql(
                        store_sql!["SELECT CAST(count(*) AS " bigint ") FROM refill_runs WHERE run_id LIKE " ?],
                    ))
                    .bind(&pattern)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(q("looking up a run"))?;
                let matches = prefixed
                    .iter()
                    .take(AMBIGUOUS_SHOWN as usize)
                    .map(|r| {
                        run_from_row(r).map(|run| {
                            format!(
                                "{} (\"{}\", {}, {}, started {})",
                                run.run_id,
                                run.name,
                                run.mode.as_str(),
                                run.status,
                                run.started_at
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Err(StateError::Ambiguous {
                    prefix: id.to_string(),
                    more: to_u64(total).saturating_sub(matches.len() as u64),
                    matches,
                })
            }
        }
    }

    /// The most recent runs, newest first.
    pub async fn recent_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StateError> {
        let rows = sqlx::query(self.sql(store_sql![
            "SELECT * FROM refill_runs ORDER BY started_at DESC LIMIT "?
        ]))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing runs"))?;
        rows.iter().map(run_from_row).collect()
    }

    /// Records that `chunk` was read and handed on by `session_id`.
    pub async fn chunk_started(
        &self,
        run_id: &str,
        chunk: &Chunk,
        session_id: &str,
    ) -> Result<(), StateError> {
        self.check_present()?;
        let at = now();
        let updated = sqlx::query(
            self.sql(store_sql!["UPDATE refill_chunks SET status = 'pending', attempts = attempts + 1, session_id = " ? ", started_at = " ? ", \
             finished_at = NULL, error = NULL WHERE run_id = " ? " AND chunk_id = " ?]),
        )
        .bind(session_id)
        .bind(&at)
        .bind(run_id)
        .bind(to_i64(chunk.id))
        .execute(&self.pool)
        .await
        .map_err(q("checkpointing a chunk's start"))?;
        if updated.rows_affected() > 0 {
            return Ok(());
        }
        let inserted = sqlx::query(
            self.sql(store_sql!["INSERT INTO refill_chunks (run_id, chunk_id, lo, hi, status, attempts, session_id, started_at) \
             VALUES (" ? ", " ? ", " ? ", " ? ", 'pending', 1, " ? ", " ? ")"]),
        )
        .bind(run_id)
        .bind(to_i64(chunk.id))
        .bind(chunk.lo.as_ref().map(Key::encode))
        .bind(chunk.hi.encode())
        .bind(session_id)
        .bind(&at)
        .execute(&self.pool)
        .await;
        match inserted {
            // Inserted meanwhile (a retried insert whose reply was lost).
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(()),
            other => other.map(drop).map_err(q("checkpointing a chunk's start")),
        }
    }

    /// Records that a chunk is written, with the rows that failed in it, in
    /// one transaction: the checkpoint a resumed run skips. With a `lease`
    /// (a worker's claim), the checkpoint is recorded only if the chunk is
    /// still that claim's: returns false, recording nothing, if another
    /// worker took the chunk over meanwhile.
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of one checkpoint, recorded together"
    )]
    pub async fn chunk_done(
        &self,
        run_id: &str,
        chunk_id: u64,
        counts: &Counts,
        timings: &Timings,
        error: Option<&str>,
        dead: &[DeadLetter],
        busy: &[Deferred],
        lease: Option<&Lease>,
    ) -> Result<bool, StateError> {
        self.check_present()?;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("checkpointing a finished chunk"))?;
        let done = checkpoint!(
            &mut *tx,
            self.url.backend(),
            run_id,
            chunk_id,
            counts,
            timings,
            error,
            lease
        )
        .map_err(q("checkpointing a finished chunk"))?;
        if !done {
            tx.rollback()
                .await
                .map_err(q("checkpointing a finished chunk"))?;
            return Ok(false);
        }
        dead::replace::<sqlx::Any>(&mut tx, self.url.backend(), run_id, chunk_id, dead).await?;
        deferred::replace::<sqlx::Any>(&mut tx, self.url.backend(), run_id, chunk_id, busy).await?;
        tx.commit()
            .await
            .map_err(q("checkpointing a finished chunk"))?;
        Ok(true)
    }

    /// Every chunk of a run, in order.
    pub async fn chunks(&self, run: &RunRecord) -> Result<Vec<ChunkRecord>, StateError> {
        let rows =
            sqlx::query(self.sql(
                store_sql!["SELECT * FROM refill_chunks WHERE run_id = " ? " ORDER BY chunk_id"],
            ))
            .bind(&run.run_id)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading a run's chunks"))?;
        rows.iter()
            .map(|r| chunk_from_row(r, run.key_type))
            .collect()
    }

    /// The counts of a run's finished chunks, summed.
    pub async fn totals(&self, run_id: &str) -> Result<(Counts, u64), StateError> {
        // SUM is NUMERIC on PostgreSQL, which the Any driver cannot read.
        let row = sqlx::query(
            self.sql(store_sql!["SELECT CAST(count(*) AS " bigint "), CAST(COALESCE(sum(rows_read), 0) AS " bigint "), \
             CAST(COALESCE(sum(updated), 0) AS " bigint "), CAST(COALESCE(sum(unchanged), 0) AS " bigint "), \
             CAST(COALESCE(sum(skipped), 0) AS " bigint "), CAST(COALESCE(sum(failed), 0) AS " bigint "), \
             CAST(COALESCE(sum(conflicts), 0) AS " bigint "), CAST(COALESCE(sum(retries), 0) AS " bigint "), \
             CAST(COALESCE(sum(busy), 0) AS " bigint ") \
             FROM refill_chunks WHERE run_id = " ? " AND status = 'done'"]),
        )
        .bind(run_id)
        .fetch_one(&self.pool)
        .await
        .map_err(q("summing a run's chunks"))?;
        let get = |i: usize| -> Result<u64, StateError> {
            row.try_get::<i64, _>(i)
                .map(to_u64)
                .map_err(q("reading a run's totals"))
        };
        let counts = Counts {
            rows: get(1)?,
            updated: get(2)?,
            unchanged: get(3)?,
            skipped: get(4)?,
            failed: get(5)?,
            conflicts: get(6)?,
            retries: get(7)?,
            busy: get(8)?,
        };
        Ok((counts, get(0)?))
    }

    /// Takes the write lock of the backfill called `name` for `session`.
    /// The lock is a row keyed by the name, so two processes cannot both
    /// insert it; a holder that `is_dead` says is gone is replaced with a
    /// compare-and-set on its session id. Returns the live holder if the
    /// lock is taken.
    pub async fn acquire_lock(
        &self,
        name: &str,
        session: &SessionRecord,
        is_dead: impl Fn(&SessionRecord) -> bool,
    ) -> Result<Option<SessionRecord>, StateError> {
        for _ in 0..3 {
            let inserted = sqlx::query(
                self.sql(store_sql!["INSERT INTO refill_locks (name, session_id, pid, host_name, user_name, started_at, heartbeat_at) \
                 VALUES (" ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ")"]),
            )
            .bind(name)
            .bind(&session.session_id)
            .bind(i64::from(session.pid))
            .bind(&session.host_name)
            .bind(&session.user_name)
            .bind(&session.started_at)
            .bind(&session.heartbeat_at)
            .execute(&self.pool)
            .await;
            match inserted {
                Ok(_) => return Ok(None),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
                Err(error) => {
                    return Err(StateError::Query {
                        what: "taking the run lock",
                        error,
                    });
                }
            }
            let row =
                sqlx::query(self.sql(store_sql!["SELECT * FROM refill_locks WHERE name = "?]))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(q("reading the run lock"))?;
            let Some(row) = row else { continue };
            let holder = process_from_row(&row)?;
            if !is_dead(&holder) {
                return Ok(Some(holder));
            }
            let taken = sqlx::query(
                self.sql(store_sql!["UPDATE refill_locks SET session_id = " ? ", pid = " ? ", host_name = " ? ", user_name = " ? ", \
                 started_at = " ? ", heartbeat_at = " ? " WHERE name = " ? " AND session_id = " ?]),
            )
            .bind(&session.session_id)
            .bind(i64::from(session.pid))
            .bind(&session.host_name)
            .bind(&session.user_name)
            .bind(&session.started_at)
            .bind(&session.heartbeat_at)
            .bind(name)
            .bind(&holder.session_id)
            .execute(&self.pool)
            .await
            .map_err(q("taking over the run lock"))?;
            if taken.rows_affected() == 1 {
                return Ok(None);
            }
        }
        Err(StateError::Corrupt(format!(
            "the lock of \"{name}\" keeps changing hands; is another process starting it in a loop?"
        )))
    }

    /// Gives the lock back, if `session_id` still holds it.
    pub async fn release_lock(&self, name: &str, session_id: &str) -> Result<(), StateError> {
        sqlx::query(
            self.sql(store_sql!["DELETE FROM refill_locks WHERE name = " ? " AND session_id = " ?]),
        )
        .bind(name)
        .bind(session_id)
        .execute(&self.pool)
        .await
        .map_err(q("releasing the run lock"))?;
        Ok(())
    }

    /// Records a process starting to work on a run.
    pub async fn start_session(&self, session: &SessionRecord) -> Result<(), StateError> {
        sqlx::query(
            self.sql(store_sql!["INSERT INTO refill_sessions (session_id, run_id, pid, host_name, user_name, started_at, heartbeat_at, kind) \
             VALUES (" ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ", " ? ")"]),
        )
        .bind(&session.session_id)
        .bind(&session.run_id)
        .bind(i64::from(session.pid))
        .bind(&session.host_name)
        .bind(&session.user_name)
        .bind(&session.started_at)
        .bind(&session.heartbeat_at)
        .bind(session.kind.as_str())
        .execute(&self.pool)
        .await
        .map_err(q("recording a session"))?;
        Ok(())
    }

    /// Marks a session alive now.
    pub async fn heartbeat(&self, session_id: &str) -> Result<(), StateError> {
        self.check_present()?;
        let at = now();
        for sql in [
            store_sql!["UPDATE refill_sessions SET heartbeat_at = " ? " WHERE session_id = " ?],
            store_sql!["UPDATE refill_locks SET heartbeat_at = " ? " WHERE session_id = " ?],
        ] {
            sqlx::query(self.sql(sql))
                .bind(&at)
                .bind(session_id)
                .execute(&self.pool)
                .await
                .map_err(q("recording a heartbeat"))?;
        }
        Ok(())
    }

    /// Records how a session ended.
    pub async fn end_session(
        &self,
        session_id: &str,
        outcome: SessionOutcome,
    ) -> Result<(), StateError> {
        sqlx::query(
            self.sql(
                store_sql!["UPDATE refill_sessions SET ended_at = " ? ", outcome = " ? " WHERE session_id = " ?],
            ),
        )
        .bind(now())
        .bind(outcome.as_str())
        .bind(session_id)
        .execute(&self.pool)
        .await
        .map_err(q("ending a session"))?;
        Ok(())
    }

    /// The sessions of a run, oldest first.
    pub async fn sessions(&self, run_id: &str) -> Result<Vec<SessionRecord>, StateError> {
        let rows = sqlx::query(self.sql(
            store_sql!["SELECT * FROM refill_sessions WHERE run_id = " ? " ORDER BY started_at"],
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading a run's sessions"))?;
        rows.iter().map(session_from_row).collect()
    }
}

/// The statement marking a chunk done with its counts. With a lease, only
/// the claim that holds the chunk may mark it (the fence that keeps a
/// worker whose lease expired from recording a chunk another one took);
/// the status is left out of the fence, so that a checkpoint retried after
/// its commit went through marks it again rather than failing.
const CHUNK_DONE: Sql = store_sql!["UPDATE refill_chunks SET status = 'done', rows_read = " ? ", updated = " ? ", unchanged = " ? ", skipped = " ? ", \
     failed = " ? ", conflicts = " ? ", retries = " ? ", read_ms = " ? ", transform_ms = " ? ", write_ms = " ? ", \
     finished_at = " ? ", error = " ? ", lease_until = NULL, busy = " ? " WHERE run_id = " ? " AND chunk_id = " ?];
const CHUNK_DONE_FENCED: Sql = store_sql!["UPDATE refill_chunks SET status = 'done', rows_read = " ? ", updated = " ? ", unchanged = " ? ", skipped = " ? ", \
     failed = " ? ", conflicts = " ? ", retries = " ? ", read_ms = " ? ", transform_ms = " ? ", write_ms = " ? ", \
     finished_at = " ? ", error = " ? ", lease_until = NULL, busy = " ? " WHERE run_id = " ? " AND chunk_id = " ? " \
     AND session_id = " ? " AND attempts = " ?];

/// Runs `delete`, a statement that deletes what a checkpoint records for
/// one chunk (bound: the run, the chunk), on a connection of any driver.
async fn delete_of_chunk<DB>(
    conn: &mut DB::Connection,
    backend: crate::db::Backend,
    delete: Sql,
    run_id: &str,
    chunk_id: u64,
) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let delete = delete.spelled(crate::backend::store(backend).spelling);
    sqlx::query::<DB>(sqlx::AssertSqlSafe(delete))
        .bind(run_id.to_string())
        .bind(to_i64(chunk_id))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Runs [`CHUNK_DONE`] (or, with a lease, [`CHUNK_DONE_FENCED`]) on an
/// executor of any driver; evaluates to whether the chunk was marked.
macro_rules! checkpoint {
    ($executor:expr, $backend:expr, $run_id:expr, $chunk_id:expr, $counts:expr, $timings:expr, $error:expr, $lease:expr) => {{
        let lease: Option<&$crate::state::Lease> = $lease;
        let counts: &$crate::state::Counts = $counts;
        let timings: &$crate::state::Timings = $timings;
        let sql = if lease.is_some() {
            CHUNK_DONE_FENCED
        } else {
            CHUNK_DONE
        };
        let sql = sql.spelled($crate::backend::store($backend).spelling);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to_i64(counts.rows))
            .bind(to_i64(counts.updated))
            .bind(to_i64(counts.unchanged))
            .bind(to_i64(counts.skipped))
            .bind(to_i64(counts.failed))
            .bind(to_i64(counts.conflicts))
            .bind(to_i64(counts.retries))
            .bind(to_i64(timings.read_ms))
            .bind(to_i64(timings.transform_ms))
            .bind(to_i64(timings.write_ms))
            .bind(now())
            .bind($error)
            .bind(to_i64(counts.busy))
            .bind($run_id)
            .bind(to_i64($chunk_id));
        if let Some(lease) = lease {
            query = query
                .bind(lease.session_id.clone())
                .bind(to_i64(lease.attempt));
        }
        query
            .execute($executor)
            .await
            .map(|done| done.rows_affected() > 0)
    }};
}
use checkpoint;

/// Records a chunk's dead letters inside `tx`, replacing any recorded for
/// it before: with [`checkpoint_in`], once the fence has passed.
pub async fn dead_letters_in(
    tx: &mut crate::backend::AtomicTx,
    run_id: &str,
    chunk_id: u64,
    dead: &[DeadLetter],
    busy: &[Deferred],
) -> Result<(), StateError> {
    let tx = tx.conn();
    dead::replace::<AtomicDb>(&mut *tx, AtomicTx::BACKEND, run_id, chunk_id, dead).await?;
    deferred::replace::<AtomicDb>(tx, AtomicTx::BACKEND, run_id, chunk_id, busy).await
}

/// Marks a chunk done inside `tx`, an open transaction on the PostgreSQL
/// database that holds both the target and the state store, so that the
/// chunk's writes and its checkpoint commit together or not at all.
/// Returns false, having marked nothing, if `lease` no longer holds the
/// chunk: the caller must then roll its writes back.
pub async fn checkpoint_in(
    tx: &mut crate::backend::AtomicTx,
    run_id: &str,
    chunk_id: u64,
    counts: &Counts,
    timings: &Timings,
    error: Option<&str>,
    lease: Option<&Lease>,
) -> Result<bool, StateError> {
    checkpoint!(
        tx.conn(),
        AtomicTx::BACKEND,
        run_id,
        chunk_id,
        counts,
        timings,
        error,
        lease
    )
    .map_err(q("checkpointing a finished chunk with its writes"))
}

fn get<T>(row: &AnyRow, col: &str) -> Result<T, StateError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(col)
        .map_err(|e| StateError::Corrupt(format!("column {col}: {e}")))
}

fn key_of(text: Option<String>, ty: KeyType) -> Result<Option<Key>, StateError> {
    text.map(|t| {
        Key::decode(&t, ty)
            .ok_or_else(|| StateError::Corrupt(format!("key `{t}` is not a {ty} key")))
    })
    .transpose()
}

fn run_from_row(r: &AnyRow) -> Result<RunRecord, StateError> {
    let key_type = match get::<String>(r, "key_type")?.as_str() {
        "integer" => KeyType::Integer,
        "text" => KeyType::Text,
        other => return Err(StateError::Corrupt(format!("unknown key type `{other}`"))),
    };
    let status: String = get(r, "status")?;
    let spec: String = get(r, "spec")?;
    Ok(RunRecord {
        run_id: get(r, "run_id")?,
        name: get(r, "name")?,
        mode: match get::<String>(r, "mode")?.as_str() {
            "execute" => Mode::Execute,
            "dry-run" => Mode::DryRun,
            other => return Err(StateError::Corrupt(format!("unknown run mode `{other}`"))),
        },
        status: RunStatus::parse(&status)
            .ok_or_else(|| StateError::Corrupt(format!("unknown run status `{status}`")))?,
        work_hash: get(r, "work_hash")?,
        data_hash: get(r, "data_hash")?,
        spec: serde_json::from_str(&spec).unwrap_or(serde_json::Value::String(spec)),
        spec_path: get(r, "spec_path")?,
        component_digest: get(r, "component_digest")?,
        transform_name: get(r, "transform_name")?,
        transform_version: get(r, "transform_version")?,
        host_version: get(r, "host_version")?,
        user_name: get(r, "user_name")?,
        host_name: get(r, "host_name")?,
        source_url: get(r, "source_url")?,
        source_table: get(r, "source_table")?,
        target_table: get(r, "target_table")?,
        key_type,
        first_key: key_of(get(r, "first_key")?, key_type)?,
        high_watermark: key_of(get(r, "high_watermark")?, key_type)?,
        rows_in_scope: to_u64(get(r, "rows_in_scope")?),
        chunk_rows: to_u64(get(r, "chunk_rows")?),
        started_at: get(r, "started_at")?,
        finished_at: get(r, "finished_at")?,
        message: get(r, "message")?,
        workers: get::<Option<String>>(r, "coordination")?.as_deref() == Some("workers"),
    })
}

fn chunk_from_row(r: &AnyRow, key_type: KeyType) -> Result<ChunkRecord, StateError> {
    let hi: String = get(r, "hi")?;
    Ok(ChunkRecord {
        chunk_id: to_u64(get(r, "chunk_id")?),
        lo: key_of(get(r, "lo")?, key_type)?,
        hi: key_of(Some(hi), key_type)?
            .ok_or_else(|| StateError::Corrupt("chunk without an upper key".into()))?,
        status: match get::<String>(r, "status")?.as_str() {
            "done" => ChunkStatus::Done,
            "planned" => ChunkStatus::Planned,
            "pending" => ChunkStatus::Pending,
            other => {
                return Err(StateError::Corrupt(format!(
                    "unknown chunk status `{other}`"
                )));
            }
        },
        attempts: to_u64(get(r, "attempts")?),
        session_id: get(r, "session_id")?,
        counts: Counts {
            rows: to_u64(get(r, "rows_read")?),
            updated: to_u64(get(r, "updated")?),
            unchanged: to_u64(get(r, "unchanged")?),
            skipped: to_u64(get(r, "skipped")?),
            failed: to_u64(get(r, "failed")?),
            conflicts: to_u64(get(r, "conflicts")?),
            busy: to_u64(get(r, "busy")?),
            retries: to_u64(get(r, "retries")?),
        },
        timings: Timings {
            read_ms: to_u64(get(r, "read_ms")?),
            transform_ms: to_u64(get(r, "transform_ms")?),
            write_ms: to_u64(get(r, "write_ms")?),
        },
        started_at: get(r, "started_at")?,
        finished_at: get(r, "finished_at")?,
        error: get(r, "error")?,
    })
}

/// The process columns shared by sessions and locks.
fn process_from_row(r: &AnyRow) -> Result<SessionRecord, StateError> {
    Ok(SessionRecord {
        session_id: get(r, "session_id")?,
        run_id: String::new(),
        kind: SessionKind::Run,
        pid: u32::try_from(get::<i64>(r, "pid")?).unwrap_or(0),
        host_name: get(r, "host_name")?,
        user_name: get(r, "user_name")?,
        started_at: get(r, "started_at")?,
        heartbeat_at: get(r, "heartbeat_at")?,
        ended_at: None,
        outcome: None,
        state: None,
        reason: None,
    })
}

fn session_from_row(r: &AnyRow) -> Result<SessionRecord, StateError> {
    Ok(SessionRecord {
        run_id: get(r, "run_id")?,
        ended_at: get(r, "ended_at")?,
        outcome: get::<Option<String>>(r, "outcome")?
            .map(|o| {
                SessionOutcome::parse(&o)
                    .ok_or_else(|| StateError::Corrupt(format!("unknown session outcome `{o}`")))
            })
            .transpose()?,
        state: get::<Option<String>>(r, "state")?
            .map(|p| {
                Phase::parse(&p)
                    .ok_or_else(|| StateError::Corrupt(format!("unknown session state `{p}`")))
            })
            .transpose()?,
        reason: get(r, "reason")?,
        kind: SessionKind::parse(get::<Option<String>>(r, "kind")?.as_deref())?,
        ..process_from_row(r)?
    })
}

/// How many of a run's chunks stand where, for progress displays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChunkSummary {
    /// Planned for workers, not yet claimed.
    pub planned: u64,
    /// In flight, or left in flight by a process that stopped.
    pub pending: u64,
    /// Written and checkpointed.
    pub done: u64,
}

impl ChunkSummary {
    /// Counts `chunks` by status.
    pub fn of(chunks: &[ChunkRecord]) -> ChunkSummary {
        let mut summary = ChunkSummary::default();
        for c in chunks {
            match c.status {
                ChunkStatus::Done => summary.done += 1,
                ChunkStatus::Pending => summary.pending += 1,
                ChunkStatus::Planned => summary.planned += 1,
            }
        }
        summary
    }
}

/// The url of a fresh, empty schema of the test PostgreSQL, as a state
/// store url.
#[cfg(test)]
pub(crate) async fn fresh_schema(schema: &str) -> DbUrl {
    let base = crate::db::test_postgres_url();
    let admin = sqlx::PgPool::connect(&base).await.expect("connect");
    for sql in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .expect("schema");
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    DbUrl::parse(&url, std::path::Path::new("/")).expect("url")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn processes_creating_a_postgres_store_at_once_all_open_it() {
        for round in 0..4 {
            let url = fresh_schema(&format!("refill_store_race_{round}")).await;
            // As `refill run` and a `refill status` or a worker started
            // together on an empty database do.
            let opened =
                futures_util::future::join_all((0..8).map(|_| StateStore::open(&url))).await;
            for store in opened {
                store.unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
        }
    }

    #[tokio::test]
    async fn a_new_postgres_store_compresses_before_images_with_lz4_where_it_can() {
        let url = fresh_schema("refill_store_tuned").await;
        let store = StateStore::open(&url).await.expect("open");
        let admin = sqlx::PgPool::connect(&crate::db::test_postgres_url())
            .await
            .expect("connect");
        // Whether this server was built with lz4 (PostgreSQL 14 and later):
        // a column declared so is refused otherwise.
        let lz4 = sqlx::query("CREATE TEMPORARY TABLE lz4_probe (d text COMPRESSION lz4)")
            .execute(&admin)
            .await
            .is_ok();
        let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
            .fetch_one(&admin)
            .await
            .expect("the version");
        // Before 14 there is no column compression to look at: the store
        // only has to work as made.
        if version >= 140_000 {
            let method: String = sqlx::query_scalar(
                "SELECT CAST(attcompression AS text) FROM pg_attribute \
                 WHERE attrelid = 'refill_store_tuned.refill_images'::regclass AND attname = 'data'",
            )
            .fetch_one(&admin)
            .await
            .expect("the column");
            assert_eq!(method, if lz4 { "l" } else { "" }, "lz4 available: {lz4}");
        }
        // Images are written and read back through the tuned column.
        let (key, before, after) = (
            Key::Int(3),
            vec![crate::value::Value::Null],
            vec![crate::value::Value::Text("x".into())],
        );
        let refs = [crate::state::images::ImageRef {
            key: &key,
            before: &before,
            after: &after,
        }];
        store.save_images("r", 1, &refs).await.expect("save");
        let back = store.images("r", 1, KeyType::Integer).await.expect("read");
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].after, after);
    }

    fn run(id: &str, status: RunStatus) -> RunRecord {
        RunRecord {
            run_id: id.into(),
            name: "n".into(),
            mode: Mode::Execute,
            status,
            work_hash: "h".into(),
            data_hash: "dh".into(),
            spec: serde_json::json!({"name": "n"}),
            spec_path: "/x.toml".into(),
            component_digest: "d".into(),
            transform_name: "t".into(),
            transform_version: "1".into(),
            host_version: "0".into(),
            user_name: "u".into(),
            host_name: "h".into(),
            source_url: "sqlite://x".into(),
            source_table: "\"t\"".into(),
            target_table: "\"t\"".into(),
            key_type: KeyType::Text,
            first_key: Some(Key::Text("a".into())),
            high_watermark: Some(Key::Text("zz".into())),
            rows_in_scope: 10,
            chunk_rows: 5,
            started_at: now(),
            finished_at: None,
            message: None,
            workers: false,
        }
    }

    #[tokio::test]
    async fn runs_and_chunks_round_trip_through_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = DbUrl::parse("sqlite://sub/state.db", dir.path()).expect("url");
        assert!(
            StateStore::open_existing(&url)
                .await
                .expect("no error")
                .is_none()
        );
        let store = StateStore::open(&url).await.expect("open");
        store
            .create_run(&run("20260101-000000-abcd", RunStatus::Running))
            .await
            .expect("create");
        let found = store
            .latest_execute_run("n")
            .await
            .expect("query")
            .expect("a run");
        assert_eq!(found.high_watermark, Some(Key::Text("zz".into())));
        assert_eq!(
            store
                .find_run("20260101")
                .await
                .expect("query")
                .map(|r| r.run_id),
            Some("20260101-000000-abcd".into())
        );

        let chunk = Chunk {
            id: 1,
            lo: None,
            hi: Key::Text("m".into()),
        };
        store
            .chunk_started(&found.run_id, &chunk, "s1")
            .await
            .expect("start");
        store
            .chunk_started(&found.run_id, &chunk, "s2")
            .await
            .expect("restart");
        let counts = Counts {
            rows: 5,
            updated: 3,
            unchanged: 1,
            skipped: 0,
            failed: 1,
            conflicts: 2,
            retries: 1,
            busy: 0,
        };
        let dead = DeadLetter::new(
            Key::Text("k".into()),
            1,
            FailureKind::Error,
            "boom".into(),
            "h".into(),
            "d",
        );
        // Twice: a checkpoint retried after its commit went through.
        for _ in 0..2 {
            store
                .chunk_done(
                    &found.run_id,
                    1,
                    &counts,
                    &Timings::default(),
                    None,
                    std::slice::from_ref(&dead),
                    &[],
                    None,
                )
                .await
                .expect("done");
        }
        let letters = store
            .dead_letters(&found.run_id, KeyType::Text, true)
            .await
            .expect("dead letters");
        assert_eq!(letters, vec![dead.clone()]);
        let groups = store
            .dead_letter_groups(&found.run_id, 10)
            .await
            .expect("groups");
        assert_eq!(
            groups,
            vec![DeadLetterGroup {
                kind: Some(FailureKind::Error),
                error: "boom".to_string(),
                rows: 1,
                keys: vec!["k".to_string()]
            }]
        );
        store
            .settle_dead_letters(
                &found.run_id,
                &[(dead.key.clone(), Resolution::Skipped)],
                &[],
                "r1",
                "d2",
            )
            .await
            .expect("resolve");
        assert!(
            store
                .dead_letters(&found.run_id, KeyType::Text, true)
                .await
                .expect("dead letters")
                .is_empty()
        );
        let all = store
            .dead_letters(&found.run_id, KeyType::Text, false)
            .await
            .expect("dead letters");
        assert_eq!(
            (
                all[0].resolution,
                all[0].resolved_by.as_deref(),
                all[0].attempts
            ),
            (Some(Resolution::Skipped), Some("r1"), 2)
        );
        let chunks = store.chunks(&found).await.expect("chunks");
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            (chunks[0].attempts, chunks[0].session_id.as_str()),
            (2, "s2")
        );
        assert_eq!(chunks[0].status, ChunkStatus::Done);
        assert_eq!(
            store.totals(&found.run_id).await.expect("totals"),
            (counts, 1)
        );

        store
            .set_run_status(&found.run_id, RunStatus::Done, None)
            .await
            .expect("status");
        let done = store
            .find_run(&found.run_id)
            .await
            .expect("query")
            .expect("run");
        assert_eq!(done.status, RunStatus::Done);
        assert!(done.finished_at.is_some());
        assert!(
            StateStore::open_existing(&url)
                .await
                .expect("no error")
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_store_of_the_first_release_is_upgraded_when_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = DbUrl::parse("sqlite://state.db", dir.path()).expect("url");
        let store = StateStore::open(&url).await.expect("open");
        store
            .create_run(&run("20260101-000000-abcd", RunStatus::Failed))
            .await
            .expect("create");
        // Back to the first release's layout: no versions, no added columns.
        sqlx::query("DROP TABLE refill_meta")
            .execute(&store.pool)
            .await
            .expect("drop");
        for (table, column, _) in ADDED_COLUMNS {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {table} DROP COLUMN {column}"
            )))
            .execute(&store.pool)
            .await
            .expect("drop column");
        }
        // A session of that release: it stored no kind.
        sqlx::query(
            "INSERT INTO refill_sessions (session_id, run_id, pid, host_name, user_name, started_at, heartbeat_at) \
             VALUES ('s-old', '20260101-000000-abcd', 1, 'h', 'u', 't', 't')",
        )
        .execute(&store.pool)
        .await
        .expect("an old session");
        store.pool.close().await;
        assert!(
            StateStore::connect(&url, false)
                .await
                .expect("connect")
                .find_run("20260101")
                .await
                .is_err(),
            "the old layout lacks data_hash"
        );

        // A reading command upgrades it; the old run reads back.
        let store = StateStore::open_existing(&url)
            .await
            .expect("upgraded")
            .expect("exists");
        let found = store
            .find_run("20260101")
            .await
            .expect("query")
            .expect("the run");
        assert_eq!(found.data_hash, "");
        assert_eq!(found.status, RunStatus::Failed);
        let sessions = store.sessions(&found.run_id).await.expect("sessions");
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].kind, SessionKind::Run, "worked on the chunks");
        let chunk = Chunk {
            id: 1,
            lo: None,
            hi: Key::Text("m".into()),
        };
        store
            .chunk_started(&found.run_id, &chunk, "s1")
            .await
            .expect("start");
        let counts = Counts {
            rows: 1,
            conflicts: 1,
            ..Counts::default()
        };
        store
            .chunk_done(
                &found.run_id,
                1,
                &counts,
                &Timings::default(),
                None,
                &[],
                &[],
                None,
            )
            .await
            .expect("a checkpoint with the added columns");
        // Opening again finds nothing to add.
        StateStore::open(&url).await.expect("reopen");

        // A version-1 store lacks the dead letters' resolution.
        sqlx::query("UPDATE refill_meta SET value = '1'")
            .execute(&store.pool)
            .await
            .expect("version 1");
        sqlx::query("ALTER TABLE refill_dead_letters DROP COLUMN resolution")
            .execute(&store.pool)
            .await
            .expect("drop column");
        store.pool.close().await;
        let store = StateStore::open_existing(&url)
            .await
            .expect("upgraded")
            .expect("exists");
        assert!(
            store
                .dead_letters(&found.run_id, KeyType::Text, false)
                .await
                .expect("dead letters read")
                .is_empty()
        );
        assert_eq!(
            store.version().await.expect("version"),
            Some(SCHEMA_VERSION.to_string())
        );
    }

    #[tokio::test]
    async fn an_ambiguous_prefix_names_the_runs_it_matches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = DbUrl::parse("sqlite://state.db", dir.path()).expect("url");
        let store = StateStore::open(&url).await.expect("open");
        for id in [
            "20260101-000000-aaaa",
            "20260101-000000-bbbb",
            "20260101-000000-cccc",
        ] {
            store
                .create_run(&run(id, RunStatus::Done))
                .await
                .expect("create");
        }
        let error = store
            .find_run("20260101")
            .await
            .expect_err("three runs share the prefix");
        let StateError::Ambiguous { matches, more, .. } = &error else {
            panic!("not ambiguous: {error}");
        };
        assert_eq!((matches.len(), *more), (3, 0));
        let text = error.to_string();
        for id in ["aaaa", "bbbb", "cccc"] {
            assert!(
                text.contains(&format!("20260101-000000-{id} (\"n\", execute, done")),
                "{text}"
            );
        }
        assert!(text.contains("matches 3 runs"), "{text}");
        // An exact id is never ambiguous.
        let exact = store.find_run("20260101-000000-bbbb").await.expect("exact");
        assert_eq!(
            exact.map(|r| r.run_id).as_deref(),
            Some("20260101-000000-bbbb")
        );
    }

    #[tokio::test]
    async fn an_unknown_stored_state_is_an_error_not_a_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = DbUrl::parse("sqlite://state.db", dir.path()).expect("url");
        let store = StateStore::open(&url).await.expect("open");
        let record = run("20260101-000000-abcd", RunStatus::Running);
        store.create_run(&record).await.expect("create");
        let chunk = Chunk {
            id: 1,
            lo: None,
            hi: Key::Text("m".into()),
        };
        store
            .chunk_started(&record.run_id, &chunk, "s1")
            .await
            .expect("chunk");
        let session = SessionRecord {
            session_id: "s1".into(),
            run_id: record.run_id.clone(),
            kind: SessionKind::Run,
            pid: 1,
            host_name: "h".into(),
            user_name: "u".into(),
            started_at: now(),
            heartbeat_at: now(),
            ended_at: None,
            outcome: None,
            state: None,
            reason: None,
        };
        store.start_session(&session).await.expect("session");
        store
            .set_session_state("s1", Phase::Throttled, Some("rate"))
            .await
            .expect("state");
        store
            .end_session("s1", SessionOutcome::MaxRuntime)
            .await
            .expect("end");
        let back = store.sessions(&record.run_id).await.expect("sessions");
        assert_eq!(back[0].state, Some(Phase::Throttled));
        assert_eq!(back[0].outcome, Some(SessionOutcome::MaxRuntime));
        let corrupt = |sql: &'static str| {
            let store = &store;
            async move {
                sqlx::query(sql).execute(&store.pool).await.expect("tamper");
            }
        };
        corrupt("UPDATE refill_sessions SET state = 'snoozing'").await;
        let error = store
            .sessions(&record.run_id)
            .await
            .expect_err("unknown state");
        assert!(
            error
                .to_string()
                .contains("unknown session state `snoozing`"),
            "{error}"
        );
        corrupt("UPDATE refill_sessions SET state = NULL, outcome = 'vanished'").await;
        let error = store
            .sessions(&record.run_id)
            .await
            .expect_err("unknown outcome");
        assert!(
            error
                .to_string()
                .contains("unknown session outcome `vanished`"),
            "{error}"
        );
        corrupt("UPDATE refill_sessions SET outcome = NULL, kind = 'sweep'").await;
        let error = store
            .sessions(&record.run_id)
            .await
            .expect_err("unknown kind");
        assert!(
            error.to_string().contains("unknown session kind `sweep`"),
            "{error}"
        );
        corrupt("UPDATE refill_chunks SET status = 'half-done'").await;
        let error = store
            .chunks(&record)
            .await
            .expect_err("unknown chunk status");
        assert!(
            error
                .to_string()
                .contains("unknown chunk status `half-done`"),
            "{error}"
        );
        corrupt("UPDATE refill_runs SET mode = 'maybe'").await;
        let error = store
            .find_run(&record.run_id)
            .await
            .expect_err("unknown mode");
        assert!(
            error.to_string().contains("unknown run mode `maybe`"),
            "{error}"
        );
    }
}
