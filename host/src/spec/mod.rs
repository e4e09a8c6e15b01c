//! The spec file: consumes a TOML document (what to read, which component
//! to run with which configuration, what to write, where to keep state) and
//! produces a validated [`Spec`] with urls and paths resolved. Unknown keys
//! are refused; every error names the file, line and column.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use crate::db::{DbUrl, UrlError};

/// Default rows of the first chunk (and of every chunk when chunk sizes
/// do not adapt).
pub const DEFAULT_CHUNK_ROWS: u32 = 10_000;
/// Default time each chunk aims at.
pub const DEFAULT_CHUNK_TIME: Duration = Duration::from_millis(500);
/// Default fewest rows of an adaptive chunk.
pub const DEFAULT_MIN_ROWS: u32 = 100;
/// Default most rows of an adaptive chunk.
pub const DEFAULT_MAX_ROWS: u32 = 100_000;
/// Default cap on the bytes of values one chunk read holds.
pub const DEFAULT_CHUNK_MAX_BYTES: u64 = 64 << 20;
/// Default number of chunks in flight.
pub const DEFAULT_CONCURRENCY: u32 = 2;
/// Default rows per call into the transform.
pub const DEFAULT_BATCH_ROWS: u32 = 1_000;
/// Default fuel (roughly, wasm instructions) per row; a batch gets this
/// times its rows.
pub const DEFAULT_FUEL_PER_ROW: u64 = 10_000_000;
/// Default memory limit of a transform instance, in MiB.
pub const DEFAULT_MEMORY_MB: u32 = 256;
/// Default largest component file, in MiB (an interpreter's component,
/// as componentize-py builds, takes about 20).
pub const DEFAULT_COMPONENT_MB: u32 = 256;
/// Default wall-clock limit per batch, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default cap on the bytes of input values in one batch.
pub const DEFAULT_BATCH_BYTES: u64 = 16 << 20;
/// Default attempts at a database operation that fails transiently.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 10;
/// Default longest delay between two attempts, in milliseconds.
pub const DEFAULT_RETRY_MAX_DELAY_MS: u64 = 5_000;
/// Default attempts at a row that keeps being changed meanwhile.
pub const DEFAULT_CONFLICT_ATTEMPTS: u32 = 3;
/// Default state store, relative to the spec file.
pub const DEFAULT_STATE_URL: &str = "sqlite://.refill/state.db";

/// A spec as written in the file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    /// The name of the backfill; runs of the same name resume each other.
    #[serde(deserialize_with = "name")]
    pub name: String,
    /// Where rows come from.
    pub source: SourceSpec,
    /// How the key space is split.
    #[serde(default)]
    pub chunk: ChunkSpec,
    /// The component to run.
    pub transform: TransformSpec,
    /// Where results go.
    pub target: TargetSpec,
    /// Where checkpoints and the audit trail live.
    #[serde(default)]
    pub state: StateSpec,
    /// How many failed rows a run tolerates.
    #[serde(default)]
    pub errors: ErrorsSpec,
    /// How database errors and concurrent changes are retried.
    #[serde(default)]
    pub retry: RetrySpec,
    /// How hard the run may push the database, and when it must wait.
    #[serde(default)]
    pub throttle: ThrottleSpec,
    /// `[timeouts]`: how long statements may run and wait for locks.
    #[serde(default)]
    pub timeouts: TimeoutsSpec,
    /// Read-only tables the transform may look keys up in.
    #[serde(default)]
    pub lookup: Vec<LookupSpec>,
}

/// `[[lookup]]`: a read-only key → value table, loaded once before any row
/// is read, that the transform reads through the host's `lookup` import.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LookupSpec {
    /// The name the transform asks for.
    #[serde(deserialize_with = "name")]
    pub name: String,
    /// A CSV file with a header, or a JSON-lines file (`.jsonl`,
    /// `.ndjson`), relative to the spec.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A query on the source database whose first column is the key and
    /// second the value; run once, at plan time.
    #[serde(default)]
    pub query: Option<String>,
    /// The file's key column or field (default: the first CSV column, or
    /// the `key` field).
    #[serde(default)]
    pub key: Option<String>,
    /// The file's value column or field (default: the second CSV column,
    /// or the `value` field).
    #[serde(default)]
    pub value: Option<String>,
}

/// `[throttle]`: limits on the run's pace, and the health signals that slow
/// it down or pause it. Every signal fails closed: one that cannot be
/// measured pauses the run and says why.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleSpec {
    /// `gentle` (the default): adapt the pace to keep the database's
    /// latency near what it was before the run; `unlimited`: run flat out
    /// (lock safety and timeouts stay on).
    #[serde(default)]
    pub mode: ThrottleMode,
    /// In `gentle` mode, how far the target's point-read latency may rise
    /// over its baseline (taken before the first chunk) before the run
    /// backs off: 1.5 keeps it within half again of what it was.
    #[serde(default = "default_latency_tolerance")]
    pub latency_tolerance: f64,
    /// Rows per second the run as a whole may not exceed.
    #[serde(default, deserialize_with = "opt_positive")]
    pub max_rows_per_sec: Option<u32>,
    /// Chunks in flight at once (also accepted as `[chunk] concurrency`).
    #[serde(default, deserialize_with = "opt_concurrency")]
    pub concurrency: Option<u32>,
    /// A pause before each chunk after the first.
    #[serde(default, with = "duration")]
    pub pause_between_chunks: Duration,
    /// Times of day chunks may start, as `"HH:MM-HH:MM"` in `timezone`
    /// (a window may cross midnight). Empty: any time.
    #[serde(default, deserialize_with = "windows")]
    pub windows: Vec<String>,
    /// The IANA time zone of `windows`, such as `"Europe/Paris"`.
    #[serde(default = "default_timezone", deserialize_with = "timezone")]
    pub timezone: String,
    /// Pause while a replica replays more than this far behind.
    #[serde(default, with = "opt_duration")]
    pub max_replica_lag: Option<Duration>,
    /// The replica to measure lag on (PostgreSQL); without it, the lag
    /// the source reports in `pg_stat_replication`.
    #[serde(default)]
    pub replica_url: Option<String>,
    /// Slow down while the mean time of the last chunks' writes exceeds
    /// this.
    #[serde(default, with = "opt_duration")]
    pub max_write_latency: Option<Duration>,
    /// A query returning one number, run every half second; the run pauses
    /// while it exceeds `probe_max`.
    #[serde(default, deserialize_with = "opt_nonempty")]
    pub probe: Option<String>,
    /// The highest value of `probe` at which the run goes on.
    #[serde(default)]
    pub probe_max: Option<f64>,
    /// Where to run `probe`; defaults to the source database.
    #[serde(default)]
    pub probe_url: Option<String>,
    /// `[throttle.health]`: the database's built-in health indicators.
    #[serde(default)]
    pub health: HealthSpec,
}

/// `[throttle.health]`: built-in health indicators, each measured every
/// half second and fail-closed. A `max_*` threshold pauses the run while it
/// is exceeded; a `critical_*` one stops it (exit 4; the next `refill run`
/// resumes it). A key left out takes its default in `gentle` mode and is
/// off in `unlimited` mode; 0 (or `false`) turns an indicator off.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// `false`: no built-in indicator, whatever the other keys say.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// PostgreSQL: pause while a VACUUM (autovacuum or manual) works on the
    /// target table (`pg_stat_progress_vacuum`).
    #[serde(default)]
    pub vacuum: Option<bool>,
    /// PostgreSQL: WAL generated, in MB per second over the last seconds.
    #[serde(default)]
    pub max_wal_rate: Option<f64>,
    /// PostgreSQL: the WAL rate that stops the run.
    #[serde(default)]
    pub critical_wal_rate: Option<f64>,
    /// PostgreSQL, with `archive_mode` on: pause while the archiver fails
    /// (`pg_stat_archiver`).
    #[serde(default)]
    pub archiver: Option<bool>,
    /// PostgreSQL, with `archive_mode` on: WAL segments waiting to be
    /// archived over which the run pauses.
    #[serde(default)]
    pub max_archive_pending: Option<u64>,
    /// PostgreSQL: MB of WAL a replication slot holds back.
    #[serde(default)]
    pub max_slot_retained_wal: Option<f64>,
    /// PostgreSQL: the retained WAL, in MB, that stops the run.
    #[serde(default)]
    pub critical_slot_retained_wal: Option<f64>,
    /// PostgreSQL: client backends running a statement
    /// (`pg_stat_activity`), as pt-osc's `Threads_running`.
    #[serde(default)]
    pub max_active_backends: Option<u64>,
    /// PostgreSQL: the active backends that stop the run.
    #[serde(default)]
    pub critical_active_backends: Option<u64>,
    /// MySQL/MariaDB: `Threads_running`.
    #[serde(default)]
    pub max_threads_running: Option<u64>,
    /// MySQL/MariaDB: the `Threads_running` that stops the run.
    #[serde(default)]
    pub critical_threads_running: Option<u64>,
    /// MySQL/MariaDB: the InnoDB history list length (undo not yet purged).
    #[serde(default)]
    pub max_history_length: Option<u64>,
    /// MySQL/MariaDB: the history list length that stops the run.
    #[serde(default)]
    pub critical_history_length: Option<u64>,
}

fn default_latency_tolerance() -> f64 {
    1.5
}

/// How a run paces itself when nothing else limits it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThrottleMode {
    /// Adapt concurrency, chunk size and pauses to keep the database's
    /// latency, as the application sees it, near its baseline.
    #[default]
    Gentle,
    /// Run flat out: no pacing and no limiter (never at the cost of lock
    /// safety, the timeouts or any guarantee).
    Unlimited,
}

impl Default for ThrottleSpec {
    fn default() -> Self {
        ThrottleSpec {
            mode: ThrottleMode::Gentle,
            latency_tolerance: default_latency_tolerance(),
            max_rows_per_sec: None,
            concurrency: None,
            pause_between_chunks: Duration::ZERO,
            windows: Vec::new(),
            timezone: default_timezone(),
            max_replica_lag: None,
            replica_url: None,
            max_write_latency: None,
            probe: None,
            probe_max: None,
            probe_url: None,
            health: HealthSpec::default(),
        }
    }
}

/// `[timeouts]`: how long refill's statements may run, by kind, how long
/// any of them waits for a lock, and how long a row another transaction
/// holds is tried again before it becomes a dead letter.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// A read of a chunk, of rows by key or of the catalog; a probe; a
    /// lookup query.
    #[serde(default = "default_read_timeout", with = "duration")]
    pub read: Duration,
    /// A scan of the whole scope at plan time (the count, chunk bounds).
    #[serde(default = "default_scan_timeout", with = "duration")]
    pub scan: Duration,
    /// A chunk's write (a write that times out is split and retried).
    #[serde(default = "default_write_timeout", with = "duration")]
    pub write: Duration,
    /// The longest any statement waits for a lock (MySQL/MariaDB: whole
    /// seconds, at least 1).
    #[serde(default = "default_lock_timeout", with = "duration")]
    pub lock: Duration,
    /// How long a row another transaction holds locked is deferred and
    /// tried again before it becomes a dead letter saying so.
    #[serde(default = "default_max_lock_wait", with = "duration")]
    pub max_lock_wait: Duration,
}

fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_scan_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_lock_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_max_lock_wait() -> Duration {
    Duration::from_secs(60)
}

impl Default for TimeoutsSpec {
    fn default() -> Self {
        TimeoutsSpec {
            read: default_read_timeout(),
            scan: default_scan_timeout(),
            write: default_write_timeout(),
            lock: default_lock_timeout(),
            max_lock_wait: default_max_lock_wait(),
        }
    }
}

impl TimeoutsSpec {
    /// The statement bounds a database connection applies.
    pub fn statements(&self) -> crate::source::Timeouts {
        crate::source::Timeouts {
            read: self.read,
            scan: self.scan,
            write: self.write,
            lock: self.lock,
        }
    }
}

/// `[errors]`: the error budget. A run that exceeds it stops, resumably.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsSpec {
    /// Stop once more than this many rows have failed.
    #[serde(default)]
    pub max_errors: Option<u64>,
    /// Stop once more than this fraction of the rows read have failed
    /// (checked from the first thousand rows on).
    #[serde(default, deserialize_with = "rate")]
    pub max_error_rate: Option<f64>,
}

/// `[retry]`: patience with the database and with concurrent writers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts at a database operation that fails transiently (lost
    /// connection, restart, deadlock, serialization failure, lock timeout,
    /// too many connections), the first included.
    #[serde(default = "default_retry_attempts", deserialize_with = "positive")]
    pub attempts: u32,
    /// The longest delay between two attempts, in milliseconds.
    #[serde(default = "default_retry_max_delay_ms", deserialize_with = "positive")]
    pub max_delay_ms: u64,
    /// Attempts at a row whose inputs keep changing between refill's read
    /// and its write; after the last it is a dead letter.
    #[serde(default = "default_conflict_attempts", deserialize_with = "positive")]
    pub conflict_attempts: u32,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            max_delay_ms: DEFAULT_RETRY_MAX_DELAY_MS,
            conflict_attempts: DEFAULT_CONFLICT_ATTEMPTS,
        }
    }
}

/// `[source]`: the table to read.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// `sqlite:PATH`, `postgres://…`, or `env:VAR`.
    pub url: String,
    /// PostgreSQL schema; the search path decides when absent.
    #[serde(default, deserialize_with = "opt_ident")]
    pub schema: Option<String>,
    /// The table.
    #[serde(deserialize_with = "ident")]
    pub table: String,
    /// The primary key column: integer or text, unique, not null.
    #[serde(deserialize_with = "ident")]
    pub key: String,
    /// The columns the transform reads, in the order it declares its inputs.
    #[serde(deserialize_with = "idents")]
    pub columns: Vec<String>,
    /// An SQL condition limiting the rows in scope. It is SQL, pasted into
    /// the queries as written: review it like code.
    #[serde(default, rename = "where", deserialize_with = "opt_nonempty")]
    pub scope: Option<String>,
    /// Accept a `where` that calls a function the database marks as
    /// volatile (PostgreSQL) or not deterministic (MySQL/MariaDB): such a
    /// function may write, and under `--execute` the condition also runs
    /// inside refill's writing statement, where read-only mode cannot stop
    /// it. Set it only for a function you know reads.
    #[serde(default)]
    pub allow_volatile_where: bool,
}

/// `[chunk]`: how the key space is split and how much runs at once.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkSpec {
    /// Rows of the first chunk; of every chunk when `chunk_time` is 0.
    #[serde(default = "default_rows", deserialize_with = "chunk_rows")]
    pub rows: u32,
    /// Chunks in flight at once (each transformed and written by its own
    /// worker while the next chunk is read). Also `[throttle] concurrency`.
    #[serde(default, deserialize_with = "opt_concurrency")]
    pub concurrency: Option<u32>,
    /// The time each chunk aims at (read, transform and write): chunk
    /// sizes follow the recent rows per second to meet it. 0 keeps every
    /// chunk at `rows`.
    #[serde(default = "default_chunk_time", with = "duration")]
    pub chunk_time: Duration,
    /// The fewest rows an adaptive chunk has.
    #[serde(default = "default_min_rows", deserialize_with = "chunk_rows")]
    pub min_rows: u32,
    /// The most rows an adaptive chunk has.
    #[serde(default = "default_max_rows", deserialize_with = "chunk_rows")]
    pub max_rows: u32,
    /// The most bytes of values a chunk read holds: a read stops at the
    /// row that reaches it, and the next chunk starts after that row.
    #[serde(default = "default_chunk_max_bytes", deserialize_with = "positive")]
    pub max_bytes: u64,
}

impl Default for ChunkSpec {
    fn default() -> Self {
        ChunkSpec {
            rows: DEFAULT_CHUNK_ROWS,
            concurrency: None,
            chunk_time: DEFAULT_CHUNK_TIME,
            min_rows: DEFAULT_MIN_ROWS,
            max_rows: DEFAULT_MAX_ROWS,
            max_bytes: DEFAULT_CHUNK_MAX_BYTES,
        }
    }
}

/// `[transform]`: the component, its pin, its configuration and its limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// Path of the component, relative to the spec file.
    pub component: PathBuf,
    /// The component's expected sha256, in hex. Required for `--execute`.
    #[serde(default, deserialize_with = "sha256")]
    pub sha256: Option<String>,
    /// Parameters handed to the component's `configure`.
    #[serde(default, deserialize_with = "config")]
    pub config: BTreeMap<String, String>,
    /// Rows per call into the component.
    #[serde(default = "default_batch_rows", deserialize_with = "positive")]
    pub batch_rows: u32,
    /// Bytes of input values per call into the component: a batch ends
    /// early when its rows' values reach this size (a huge value travels
    /// alone).
    #[serde(default = "default_batch_bytes", deserialize_with = "positive")]
    pub batch_bytes: u64,
    /// Fuel per row, about one unit per wasm instruction; a batch gets this
    /// times its rows.
    #[serde(default = "default_fuel_per_row", deserialize_with = "positive")]
    pub fuel_per_row: u64,
    /// Memory limit per component instance, in MiB.
    #[serde(default = "default_memory_mb", deserialize_with = "positive")]
    pub memory_mb: u32,
    /// Wall-clock limit per batch, in milliseconds.
    #[serde(default = "default_timeout_ms", deserialize_with = "positive")]
    pub timeout_ms: u64,
    /// The largest component file accepted, in MiB: a larger one (or one
    /// that is not a regular file) is refused before it is read.
    #[serde(default = "default_component_mb", deserialize_with = "positive")]
    pub max_component_mb: u32,
}

/// `[target]`: where the transform's outputs are written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Schema of the target table; defaults to the source's.
    #[serde(default, deserialize_with = "opt_ident")]
    pub schema: Option<String>,
    /// The table written; defaults to the source table.
    #[serde(default, deserialize_with = "opt_ident")]
    pub table: Option<String>,
    /// The column of the target table matching the source key; defaults to
    /// the source key's name.
    #[serde(default, deserialize_with = "opt_ident")]
    pub key: Option<String>,
    /// The columns written, in the order the transform declares its outputs.
    #[serde(deserialize_with = "idents")]
    pub columns: Vec<String>,
    /// Write a row only if its inputs still hold what the transform saw
    /// and it is still in scope. Turn it off only when nothing else writes
    /// the source rows during the run: it saves the guard's cost.
    #[serde(default = "yes")]
    pub conditional: bool,
}

/// `[state]`: the state store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// `sqlite:PATH` (default `.refill/state.db` next to the spec) or
    /// `postgres://…`.
    #[serde(default = "default_state_url")]
    pub url: String,
}

impl Default for StateSpec {
    fn default() -> Self {
        StateSpec {
            url: default_state_url(),
        }
    }
}

/// A spec loaded from a file: validated, with urls and paths resolved.
#[derive(Debug, Clone)]
pub struct Spec {
    /// What the file says.
    pub file: SpecFile,
    /// The file it came from.
    pub path: PathBuf,
    /// The file's text, for locating keys in later errors.
    text: String,
    /// The source database.
    pub source_url: DbUrl,
    /// The state store.
    pub state_url: DbUrl,
    /// The component file.
    pub component: PathBuf,
}

/// A problem with a spec, located in its file when possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// `file:line:col`, or just the file.
    pub location: String,
    /// What is wrong, in one line.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

impl std::error::Error for SpecError {}

impl Spec {
    /// Reads and validates the spec at `path`.
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            location: path.display().to_string(),
            message: format!("cannot read the spec: {e}"),
        })?;
        Spec::parse(path, text)
    }

    /// Validates `text` as the spec found at `path`.
    pub fn parse(path: &Path, text: String) -> Result<Spec, SpecError> {
        let file: SpecFile = toml::from_str(&text).map_err(|e| {
            let location = match e.span() {
                Some(span) => position(path, &text, span.start),
                None => path.display().to_string(),
            };
            SpecError {
                location,
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let mut spec = Spec {
            source_url: DbUrl::parse("sqlite::memory:", &dir).expect("a constant url parses"),
            state_url: DbUrl::parse("sqlite::memory:", &dir).expect("a constant url parses"),
            component: {
                let path = dir.join(&file.transform.component);
                path.canonicalize().unwrap_or(path)
            },
            file,
            path: path.to_path_buf(),
            text,
        };
        let url_error = |spec: &Spec, at: &[&str], e: UrlError| spec.error_at(at, e.to_string());
        spec.source_url = DbUrl::parse(&spec.file.source.url, &dir)
            .map_err(|e| url_error(&spec, &["source", "url"], e))?;
        spec.state_url = DbUrl::parse(&spec.file.state.url, &dir)
            .map_err(|e| url_error(&spec, &["state", "url"], e))?;
        spec.validate()?;
        Ok(spec)
    }

    // Longer than 100 lines: a list of independent checks, each returning the error of one key.
    fn validate(&self) -> Result<(), SpecError> {
        let f = &self.file;
        if let Some(dup) = first_duplicate(&f.source.columns) {
            return Err(self.error_at(
                &["source", "columns"],
                format!("column \"{dup}\" is listed twice"),
            ));
        }
        if let Some(dup) = first_duplicate(&f.target.columns) {
            return Err(self.error_at(
                &["target", "columns"],
                format!("column \"{dup}\" is listed twice"),
            ));
        }
        if let (Some(a), Some(b)) = (f.chunk.concurrency, f.throttle.concurrency)
            && a != b
        {
            return Err(self.error_at(
                &["throttle", "concurrency"],
                format!("[chunk] concurrency says {a}: set it in one place"),
            ));
        }
        if f.chunk.min_rows > f.chunk.max_rows {
            return Err(self.error_at(
                &["chunk", "min_rows"],
                format!(
                    "min_rows ({}) is above max_rows ({})",
                    f.chunk.min_rows, f.chunk.max_rows
                ),
            ));
        }
        let t = &f.throttle;
        if t.probe.is_some() != t.probe_max.is_some() {
            let at = if t.probe.is_some() {
                "probe"
            } else {
                "probe_max"
            };
            return Err(self.error_at(
                &["throttle", at],
                "set both probe (the query) and probe_max (its highest acceptable value)",
            ));
        }
        if t.probe_url.is_some() && t.probe.is_none() {
            return Err(self.error_at(&["throttle", "probe_url"], "probe_url without a probe"));
        }
        let h = &t.health;
        for (key, value) in [
            ("max_wal_rate", h.max_wal_rate),
            ("critical_wal_rate", h.critical_wal_rate),
            ("max_slot_retained_wal", h.max_slot_retained_wal),
            ("critical_slot_retained_wal", h.critical_slot_retained_wal),
        ] {
            if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(self.error_at(
                    &["throttle", "health", key],
                    "must be a number of MB, 0 or more (0 turns it off)",
                ));
            }
        }
        #[expect(clippy::cast_precision_loss, reason = "counts compared as numbers")]
        let count = |v: Option<u64>| v.map(|v| v as f64);
        for (max_key, max, critical) in [
            ("max_wal_rate", h.max_wal_rate, h.critical_wal_rate),
            (
                "max_slot_retained_wal",
                h.max_slot_retained_wal,
                h.critical_slot_retained_wal,
            ),
            (
                "max_active_backends",
                count(h.max_active_backends),
                count(h.critical_active_backends),
            ),
            (
                "max_threads_running",
                count(h.max_threads_running),
                count(h.critical_threads_running),
            ),
            (
                "max_history_length",
                count(h.max_history_length),
                count(h.critical_history_length),
            ),
        ] {
            if let (Some(m), Some(c)) = (max, critical)
                && m > 0.0
                && c > 0.0
                && c < m
            {
                return Err(self.error_at(
                    &["throttle", "health", max_key],
                    format!(
                        "{max_key} ({m}) is above critical_{} ({c}): the run would stop before it paused",
                        max_key.trim_start_matches("max_")
                    ),
                ));
            }
        }
        if t.replica_url.is_some() && t.max_replica_lag.is_none() {
            return Err(self.error_at(
                &["throttle", "replica_url"],
                "replica_url without max_replica_lag: say how much lag is too much",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, l) in f.lookup.iter().enumerate() {
            let index = i.to_string();
            let err = |key: &str, message: String| self.error_at(&["lookup", &index, key], message);
            if !names.insert(l.name.as_str()) {
                return Err(err(
                    "name",
                    format!("lookup table \"{}\" is declared twice", l.name),
                ));
            }
            match (&l.file, &l.query) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        "query",
                        format!("lookup table \"{}\": set file or query, not both", l.name),
                    ));
                }
                (None, None) => {
                    return Err(err(
                        "name",
                        format!(
                            "lookup table \"{}\": set file (CSV or JSON lines) or query",
                            l.name
                        ),
                    ));
                }
                (None, Some(_)) if l.key.is_some() || l.value.is_some() => {
                    let at = if l.key.is_some() { "key" } else { "value" };
                    return Err(err(
                        at,
                        format!(
                            "lookup table \"{}\": key and value name a file's columns; a query's first column is the key and its second the value",
                            l.name
                        ),
                    ));
                }
                _ => {}
            }
        }
        let target_key = f.target.key.as_deref().unwrap_or(&f.source.key);
        if f.target.columns.iter().any(|c| c == target_key) {
            return Err(self.error_at(
                &["target", "columns"],
                format!("the key column \"{target_key}\" cannot be written"),
            ));
        }
        Ok(())
    }

    /// Chunks in flight at once.
    pub fn concurrency(&self) -> u32 {
        self.file
            .throttle
            .concurrency
            .or(self.file.chunk.concurrency)
            .unwrap_or(DEFAULT_CONCURRENCY)
    }

    /// The name of the backfill.
    pub fn name(&self) -> &str {
        &self.file.name
    }

    /// The target table's name (the source table unless `[target] table`).
    pub fn target_table(&self) -> &str {
        self.file
            .target
            .table
            .as_deref()
            .unwrap_or(&self.file.source.table)
    }

    /// The target table's schema.
    pub fn target_schema(&self) -> Option<&str> {
        self.file
            .target
            .schema
            .as_deref()
            .or(self.file.source.schema.as_deref())
    }

    /// The target table's key column.
    pub fn target_key(&self) -> &str {
        self.file
            .target
            .key
            .as_deref()
            .unwrap_or(&self.file.source.key)
    }

    /// Whether the target is the source table itself.
    pub fn writes_source_table(&self) -> bool {
        self.target_table() == self.file.source.table
            && self.target_schema() == self.file.source.schema.as_deref()
            && self.target_key() == self.file.source.key
    }

    /// The hash of the data this spec touches: the source (url without
    /// password, table, key, columns, scope) and the target. A retry or a
    /// rollback of a run needs a spec with the same data hash; its
    /// transform may differ.
    pub fn data_hash(&self) -> String {
        hex::encode(Sha256::digest(self.data_identity().to_string().as_bytes()))
    }

    fn data_identity(&self) -> serde_json::Value {
        let f = &self.file;
        serde_json::json!({
            "name": f.name,
            "source": {
                "url": self.source_url.masked(),
                "schema": f.source.schema,
                "table": f.source.table,
                "key": f.source.key,
                "columns": f.source.columns,
                "where": f.source.scope,
            },
            "target": {
                "schema": self.target_schema(),
                "table": self.target_table(),
                "key": self.target_key(),
                "columns": f.target.columns,
            },
        })
    }

    /// The hash that identifies the work this spec describes: its
    /// [`data_hash`](Spec::data_hash) parts and the transform's
    /// configuration. Changing any of these while a run is unfinished means
    /// its finished chunks were computed differently, so a resume is
    /// refused. Chunk sizes, concurrency, limits and retry settings are
    /// left out: they change how the work is done, not what it is.
    pub fn work_hash(&self) -> String {
        let mut identity = serde_json::json!({
            "data": self.data_identity(),
            "config": self.file.transform.config,
        });
        // Only when there are lookups, so that a spec without them hashes
        // as it did before lookups existed and its unfinished runs resume.
        if !self.file.lookup.is_empty() {
            identity["lookup"] = serde_json::json!(self.file.lookup);
        }
        hex::encode(Sha256::digest(identity.to_string().as_bytes()))
    }

    /// The spec's text as stored for distributed workers, which rebuild the
    /// spec from it: the file as written, except that a url written out
    /// with a password has the password masked (workers are then given the
    /// url with `--source-url`; an `env:VAR` url is read from the worker's
    /// own environment). Returns the text and whether a password was
    /// masked.
    pub fn text_for_workers(&self) -> (String, bool) {
        let mut text = self.text.clone();
        let mut masked = false;
        let t = &self.file.throttle;
        let urls = [
            Some(&self.file.source.url),
            Some(&self.file.state.url),
            t.replica_url.as_ref(),
            t.probe_url.as_ref(),
        ];
        for raw in urls.into_iter().flatten() {
            let hidden = crate::db::mask(raw);
            if hidden != *raw {
                text = text.replace(raw.as_str(), &hidden);
                masked = true;
            }
        }
        (text, masked)
    }

    /// The spec as recorded in the audit trail: what the file says, with
    /// the source and state urls masked.
    pub fn audit_json(&self) -> serde_json::Value {
        let mut file = self.file.clone();
        file.source.url = self.source_url.masked();
        file.state.url = self.state_url.masked();
        serde_json::to_value(file).unwrap_or(serde_json::Value::Null)
    }

    /// An error about the value at `at` (a path of keys such as
    /// `["source", "columns"]`), located at that key's line and column when
    /// the file has it.
    pub fn error_at(&self, at: &[&str], message: impl Into<String>) -> SpecError {
        let location = match locate(&self.text, at) {
            Some(offset) => position(&self.path, &self.text, offset),
            None => self.path.display().to_string(),
        };
        let section = match at {
            [] => String::new(),
            [key] => format!("`{key}`: "),
            [table @ .., key] => format!("[{}] {key}: ", table.join(".")),
        };
        SpecError {
            location,
            message: format!("{section}{}", message.into()),
        }
    }
}

/// Byte offset of the value at `at` in `text`.
fn locate(text: &str, at: &[&str]) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut span = None;
    let mut keys = at.iter().peekable();
    while let Some(key) = keys.next() {
        let (_, mut value) = table.iter().find(|(k, _)| k.get_ref() == key)?;
        span = Some(value.span().start);
        // An array of tables (`[[lookup]]`) is stepped into by index.
        if let (DeValue::Array(items), Some(index)) = (
            value.get_ref(),
            keys.peek().and_then(|k| k.parse::<usize>().ok()),
        ) {
            keys.next();
            value = items.get(index)?;
            span = Some(value.span().start);
        }
        if keys.peek().is_some() {
            match value.get_ref() {
                DeValue::Table(t) => table = t,
                _ => return span,
            }
        }
    }
    span
}

/// `file:line:col` of byte `offset` in `text`, both counted from 1.
fn position(path: &Path, text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    format!("{}:{line}:{col}", path.display())
}

fn first_duplicate(items: &[String]) -> Option<&str> {
    items
        .iter()
        .enumerate()
        .find(|(i, c)| items[..*i].contains(c))
        .map(|(_, c)| c.as_str())
}

fn default_rows() -> u32 {
    DEFAULT_CHUNK_ROWS
}
fn default_chunk_time() -> Duration {
    DEFAULT_CHUNK_TIME
}
fn default_min_rows() -> u32 {
    DEFAULT_MIN_ROWS
}
fn default_max_rows() -> u32 {
    DEFAULT_MAX_ROWS
}
fn default_timezone() -> String {
    "UTC".to_string()
}
fn default_batch_rows() -> u32 {
    DEFAULT_BATCH_ROWS
}
fn yes() -> bool {
    true
}
fn default_chunk_max_bytes() -> u64 {
    DEFAULT_CHUNK_MAX_BYTES
}
fn default_batch_bytes() -> u64 {
    DEFAULT_BATCH_BYTES
}
fn default_retry_attempts() -> u32 {
    DEFAULT_RETRY_ATTEMPTS
}
fn default_retry_max_delay_ms() -> u64 {
    DEFAULT_RETRY_MAX_DELAY_MS
}
fn default_conflict_attempts() -> u32 {
    DEFAULT_CONFLICT_ATTEMPTS
}
fn default_fuel_per_row() -> u64 {
    DEFAULT_FUEL_PER_ROW
}
fn default_memory_mb() -> u32 {
    DEFAULT_MEMORY_MB
}
fn default_component_mb() -> u32 {
    DEFAULT_COMPONENT_MB
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_state_url() -> String {
    DEFAULT_STATE_URL.to_string()
}

// The validators below run inside deserialization, so toml reports their
// errors at the offending value's line and column.

fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let ok = !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "name {s:?} must be 1 to 100 letters, digits, `-`, `_` or `.`"
        )))
    }
}

fn check_ident<E: serde::de::Error>(s: String) -> Result<String, E> {
    if s.is_empty() {
        Err(E::custom("an identifier cannot be empty"))
    } else if s.contains('\0') {
        Err(E::custom("an identifier cannot contain a NUL character"))
    } else {
        Ok(s)
    }
}

fn ident<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    check_ident(String::deserialize(d)?)
}

fn opt_ident<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(check_ident(String::deserialize(d)?)?))
}

fn idents<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    if list.is_empty() {
        return Err(serde::de::Error::custom("list at least one column"));
    }
    list.into_iter().map(check_ident).collect()
}

fn opt_nonempty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        Err(serde::de::Error::custom(
            "the condition is empty; leave `where` out to take every row",
        ))
    } else {
        Ok(Some(s))
    }
}

fn within<'de, D: Deserializer<'de>>(
    d: D,
    what: &str,
    min: u32,
    max: u32,
) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(serde::de::Error::custom(format!(
            "{what} must be between {min} and {max}, not {n}"
        )))
    }
}

fn chunk_rows<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    within(d, "rows", 1, 1_000_000)
}

fn opt_concurrency<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    within(d, "concurrency", 1, 64).map(Some)
}

fn opt_positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    positive(d).map(Some)
}

/// A time of day as minutes after midnight, from `HH:MM`.
fn minutes(text: &str) -> Option<u32> {
    let (h, m) = text.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && text.trim().len() == 5).then_some(h * 60 + m)
}

/// An allowed window `HH:MM-HH:MM` as minutes after midnight, start and
/// end; the end may be earlier than the start (the window crosses
/// midnight), `24:00` is not needed: `22:00-00:00` ends at midnight.
pub fn parse_window(text: &str) -> Option<(u32, u32)> {
    let (start, end) = text.split_once('-')?;
    let (start, end) = (minutes(start)?, minutes(end)?);
    (start != end).then_some((start, end))
}

fn windows<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    for w in &list {
        if parse_window(w).is_none() {
            return Err(serde::de::Error::custom(format!(
                "window {w:?} is not HH:MM-HH:MM (such as \"01:00-06:00\"; start and end differ)"
            )));
        }
    }
    Ok(list)
}

fn timezone<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    match name.parse::<chrono_tz::Tz>() {
        Ok(_) => Ok(name),
        Err(_) => Err(serde::de::Error::custom(format!(
            "{name:?} is not an IANA time zone (such as \"UTC\" or \"Europe/Paris\")"
        ))),
    }
}

/// Durations: `"500ms"`, `"2s"`, `"1m 30s"`, or a number of milliseconds.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Millis(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Written::deserialize(d)? {
            Written::Millis(ms) => Ok(Duration::from_millis(ms)),
            Written::Text(t) if t.trim() == "0" => Ok(Duration::ZERO),
            Written::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
                serde::de::Error::custom(format!(
                    "{t:?} is not a duration ({e}); write it as \"500ms\", \"2s\" or \"1m\""
                ))
            }),
        }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// Optional durations, written as [`duration`]s.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

fn positive<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + PartialEq + From<u8>,
{
    let n = T::deserialize(d)?;
    if n == T::from(0) {
        Err(serde::de::Error::custom("must be at least 1"))
    } else {
        Ok(n)
    }
}

fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let r = f64::deserialize(d)?;
    if (0.0..=1.0).contains(&r) {
        Ok(Some(r))
    } else {
        Err(serde::de::Error::custom(format!(
            "a rate is between 0 and 1, not {r}"
        )))
    }
}

fn sha256<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    let hex = s.strip_prefix("sha256:").unwrap_or(&s).to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(Some(hex))
    } else {
        Err(serde::de::Error::custom(format!(
            "{s:?} is not a sha256 digest (64 hex digits)"
        )))
    }
}

fn config<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let table = BTreeMap::<String, toml::Value>::deserialize(d)?;
    table
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Datetime(t) => t.to_string(),
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    return Err(serde::de::Error::custom(format!(
                        "config `{k}` must be a string, number or boolean"
                    )));
                }
            };
            Ok((k, text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The keys of a serialized spec, as `section.key` (`key` at the top,
    /// `throttle.health.vacuum` nested, the first element of an array of
    /// tables for `lookup.name`); `config`'s own keys are the transform's.
    fn keys_of(value: &serde_json::Value, section: &str, out: &mut BTreeSet<String>) {
        let serde_json::Value::Object(map) = value else {
            return;
        };
        for (key, v) in map {
            let path = if section.is_empty() {
                key.clone()
            } else {
                format!("{section}.{key}")
            };
            match v {
                serde_json::Value::Object(_) if key != "config" => keys_of(v, &path, out),
                serde_json::Value::Array(items)
                    if items.first().is_some_and(serde_json::Value::is_object) =>
                {
                    keys_of(&items[0], &path, out);
                }
                _ => {
                    out.insert(path);
                }
            }
        }
    }

    /// The keys the annotated example of `docs/spec.md` documents, commented
    /// out or not, as `section.key`.
    fn documented_keys(doc: &str) -> BTreeSet<String> {
        let start = doc
            .find("```toml")
            .expect("docs/spec.md has a TOML example");
        let end = start + doc[start..].find("\n```\n").expect("the example ends");
        let mut section = String::new();
        let mut keys = BTreeSet::new();
        for line in doc[start..end].lines().skip(1) {
            let line = line.trim();
            let code = line.split(" #").next().unwrap_or("").trim();
            if code.starts_with('[') {
                section = code.trim_matches(['[', ']']).to_string();
                continue;
            }
            let code = code.trim_start_matches('#').trim();
            if let Some((key, _)) = code.split_once('=') {
                let key = key.trim();
                if !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    keys.insert(if section.is_empty() {
                        key.to_string()
                    } else {
                        format!("{section}.{key}")
                    });
                }
            }
        }
        keys
    }

    #[test]
    fn every_spec_key_is_in_the_reference() {
        let text = format!(
            "{GOOD}\n[[lookup]]\nname = \"a\"\nfile = \"a.csv\"\n\n[[lookup]]\nname = \"b\"\nquery = \"SELECT 1, 2\"\n"
        );
        let spec = parse(&text).expect("valid spec");
        let mut code = BTreeSet::new();
        keys_of(
            &serde_json::to_value(&spec.file).expect("serializable"),
            "",
            &mut code,
        );
        let doc =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/spec.md"))
                .expect("docs/spec.md");
        let documented = documented_keys(&doc);
        let missing: Vec<&String> = code.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "spec keys with no entry in docs/spec.md's example: {missing:?}"
        );
        let stale: Vec<&String> = documented.difference(&code).collect();
        assert!(
            stale.is_empty(),
            "docs/spec.md documents keys the spec does not have: {stale:?}"
        );
    }

    const GOOD: &str = r#"
name = "quote-status-v2"
[source]
url = "sqlite://demo.db"
table = "quotes"
key = "id"
columns = ["status"]
where = "created_at < '2024-01-01'"
[chunk]
rows = 500
[transform]
component = "../plugins/dist/remap.wasm"
sha256 = "F0D6E7B4A9C3B7A09EB04560290728EC6C68ABA7A25FAAF2553425C6E988B3DD"
config = { map = "open=active,won=closed_won", retries = 3 }
[target]
columns = ["status_v2"]
"#;

    fn parse(text: &str) -> Result<Spec, SpecError> {
        Spec::parse(Path::new("/specs/q.toml"), text.to_string())
    }

    #[test]
    fn parses_a_full_spec_with_defaults() {
        let spec = parse(GOOD).expect("valid spec");
        assert_eq!(spec.name(), "quote-status-v2");
        assert_eq!(spec.file.chunk.rows, 500);
        assert_eq!(spec.concurrency(), DEFAULT_CONCURRENCY);
        assert_eq!(spec.file.transform.batch_rows, DEFAULT_BATCH_ROWS);
        assert_eq!(spec.file.transform.config["retries"], "3");
        assert_eq!(
            spec.file.transform.sha256.as_deref(),
            Some("f0d6e7b4a9c3b7a09eb04560290728ec6c68aba7a25faaf2553425c6e988b3dd")
        );
        assert_eq!(
            spec.component,
            Path::new("/specs/../plugins/dist/remap.wasm")
        );
        assert_eq!(
            spec.source_url.sqlite_path(),
            Some(Path::new("/specs/demo.db"))
        );
        assert_eq!(
            spec.state_url.sqlite_path(),
            Some(Path::new("/specs/.refill/state.db"))
        );
        assert_eq!(spec.target_table(), "quotes");
        assert!(spec.writes_source_table());
    }

    #[test]
    fn unknown_keys_are_refused_with_line_and_column() {
        let err = parse(&GOOD.replace("table = \"quotes\"", "tabel = \"quotes\"")).unwrap_err();
        assert_eq!(err.location, "/specs/q.toml:5:1");
        assert!(
            err.message.starts_with("unknown field `tabel`"),
            "{}",
            err.message
        );
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn wrong_types_and_bad_values_are_located() {
        let err = parse(&GOOD.replace("rows = 500", "rows = \"many\"")).unwrap_err();
        assert_eq!(err.location, "/specs/q.toml:10:8");
        assert!(err.message.contains("invalid type"), "{}", err.message);
        let err = parse(&GOOD.replace("[target]", "fuel_per_row = 0\n[target]")).unwrap_err();
        assert_eq!(err.message, "must be at least 1");
        let err = parse(&GOOD.replace("rows = 500", "rows = 0")).unwrap_err();
        assert!(
            err.message.contains("between 1 and 1000000"),
            "{}",
            err.message
        );
        let err = parse(&GOOD.replace("sha256 = \"F0", "sha256 = \"Z0")).unwrap_err();
        assert!(
            err.message.contains("not a sha256 digest"),
            "{}",
            err.message
        );
        assert_eq!(err.location, "/specs/q.toml:13:10");
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let err = parse(&GOOD.replace("[\"status_v2\"]", "[\"id\"]")).unwrap_err();
        assert_eq!(err.location, "/specs/q.toml:16:11");
        assert_eq!(
            err.message,
            "[target] columns: the key column \"id\" cannot be written"
        );
        let err = parse(&GOOD.replace("[\"status\"]", "[\"a\", \"a\"]")).unwrap_err();
        assert!(err.message.contains("\"a\" is listed twice"));
    }

    #[test]
    fn lookup_errors_point_at_the_table() {
        let two = "\n[[lookup]]\nname = \"plans\"\nfile = \"a.csv\"\n\n[[lookup]]\nname = \"plans\"\nquery = \"SELECT 1, 2\"\n";
        let text = format!("{GOOD}{two}");
        let err = parse(&text).unwrap_err();
        // The second table's name.
        let second = text.rfind("name = \"plans\"").expect("there");
        let line = text[..second].matches('\n').count() + 1;
        assert_eq!(err.location, format!("/specs/q.toml:{line}:8"));
        assert!(
            err.message.contains("\"plans\" is declared twice"),
            "{}",
            err.message
        );
        let both = "\n[[lookup]]\nname = \"p\"\nfile = \"a.csv\"\nquery = \"SELECT 1, 2\"\n";
        let err = parse(&format!("{GOOD}{both}")).unwrap_err();
        assert!(
            err.message.contains("set file or query, not both"),
            "{}",
            err.message
        );
        let keyed = "\n[[lookup]]\nname = \"p\"\nquery = \"SELECT 1, 2\"\nkey = \"k\"\n";
        let err = parse(&format!("{GOOD}{keyed}")).unwrap_err();
        assert!(
            err.message.contains("key and value name a file's columns"),
            "{}",
            err.message
        );
    }

    #[test]
    fn missing_sections_and_env_urls_are_reported() {
        let err = parse("name = \"x\"\n").unwrap_err();
        assert!(
            err.message.contains("missing field `source`"),
            "{}",
            err.message
        );
        let err =
            parse(&GOOD.replace("sqlite://demo.db", "env:REFILL_SURELY_UNSET_VAR")).unwrap_err();
        assert_eq!(err.location, "/specs/q.toml:4:7");
        assert!(err.message.contains("REFILL_SURELY_UNSET_VAR is not set"));
    }

    #[test]
    fn work_hash_ignores_operational_settings_only() {
        let a = parse(GOOD).expect("valid").work_hash();
        let b = parse(&GOOD.replace("rows = 500", "rows = 800"))
            .expect("valid")
            .work_hash();
        let c = parse(&GOOD.replace("won=closed_won", "won=won"))
            .expect("valid")
            .work_hash();
        let d = parse(&GOOD.replace("< '2024-01-01'", "< '2025-01-01'"))
            .expect("valid")
            .work_hash();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        let data = |t: &str| parse(t).expect("valid").data_hash();
        assert_eq!(
            data(GOOD),
            data(&GOOD.replace("won=closed_won", "won=won")),
            "config is not data"
        );
        assert_ne!(
            data(GOOD),
            data(&GOOD.replace("< '2024-01-01'", "< '2025-01-01'"))
        );
    }

    #[test]
    fn throttle_settings_parse_and_bad_ones_are_located() {
        let spec = parse(&format!(
            "{GOOD}[throttle]\nmax_rows_per_sec = 2000\npause_between_chunks = \"1m 30s\"\n\
             windows = [\"22:00-02:00\"]\ntimezone = \"Europe/Paris\"\nmax_write_latency = 250\n\
             probe = \"SELECT 1\"\nprobe_max = 0.5\nconcurrency = 3\n"
        ))
        .expect("valid");
        let t = &spec.file.throttle;
        assert_eq!(t.max_rows_per_sec, Some(2000));
        assert_eq!(t.pause_between_chunks, Duration::from_secs(90));
        assert_eq!(t.max_write_latency, Some(Duration::from_millis(250)));
        assert_eq!(spec.concurrency(), 3);
        assert_eq!(spec.file.chunk.chunk_time, DEFAULT_CHUNK_TIME);
        assert_eq!(parse_window("22:00-02:00"), Some((22 * 60, 2 * 60)));
        assert_eq!(parse_window("1:00-6:00"), None, "HH:MM");
        assert_eq!(parse_window("06:00-06:00"), None, "empty");

        let bad = |extra: &str| parse(&format!("{GOOD}{extra}")).unwrap_err();
        let err = bad("[throttle]\nwindows = [\"25:00-06:00\"]\n");
        assert_eq!(err.location, "/specs/q.toml:18:11");
        assert!(
            err.message.contains("is not HH:MM-HH:MM"),
            "{}",
            err.message
        );
        let err = bad("[throttle]\ntimezone = \"Mars/Olympus\"\n");
        assert!(
            err.message.contains("not an IANA time zone"),
            "{}",
            err.message
        );
        let err = bad("[throttle]\npause_between_chunks = \"soon\"\n");
        assert!(err.message.contains("is not a duration"), "{}", err.message);
        let err = bad("[throttle]\nprobe = \"SELECT 1\"\n");
        assert!(err.message.contains("set both probe"), "{}", err.message);
        let err = bad("[throttle]\nreplica_url = \"postgres://r/db\"\n");
        assert!(
            err.message.contains("without max_replica_lag"),
            "{}",
            err.message
        );
        let err = parse(&format!(
            "{}[throttle]\nconcurrency = 4\n",
            GOOD.replace("rows = 500", "rows = 500\nconcurrency = 2")
        ))
        .unwrap_err();
        assert!(
            err.message.contains("set it in one place"),
            "{}",
            err.message
        );
        let err = parse(&GOOD.replace("rows = 500", "rows = 500\nmin_rows = 900\nmax_rows = 800"))
            .unwrap_err();
        assert!(
            err.message
                .contains("min_rows (900) is above max_rows (800)"),
            "{}",
            err.message
        );
    }
}
