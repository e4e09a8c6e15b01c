//! The pipeline: consumes a spec and the run options; produces a run. It
//! loads and pins the transform, plans, finds the unfinished run to resume
//! (or records a new one), then reads chunks in key order, transforms them
//! and, with `--execute`, writes and checkpoints them. Reading the next
//! chunk overlaps with transforming and writing earlier ones; `[chunk]
//! concurrency` chunks are in flight at once, each in its own worker with
//! its own transform instance. Returns a [`RunReport`].

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::chunk::{Chunk, Key};
use crate::plan::{self, Plan, PlanError};
use crate::sink::{self, SinkError, Update};
use crate::source::{ChunkRows, Database, Layout, SourceError};
use crate::spec::Spec;
use crate::state::{
    ChunkStatus, Counts, Mode, RunRecord, RunStatus, SessionRecord, StateError, StateStore,
    Timings, now, parse_time,
};
use crate::transform::bindings::refill::transform::host::Level;
use crate::transform::{self, Instance, Limits, Runner, TransformError};
use crate::value::{self, Outcome, Param, Value};

/// How many trapped batches in a row stop a run: a transform that traps on
/// everything would otherwise burn its fuel on every batch of the table.
const MAX_CONSECUTIVE_TRAPS: u32 = 3;
/// Diffs kept for the report.
const SAMPLE_DIFFS: usize = 10;
/// Error messages shown in the report.
const SAMPLE_GROUPS: usize = 10;
/// Distinct error messages counted; the rest are counted together.
const MAX_ERROR_GROUPS: usize = 1_000;
/// The group past `MAX_ERROR_GROUPS`.
const OTHER_ERRORS: &str = "(other messages)";
/// Example keys kept per error message.
const GROUP_KEYS: usize = 3;
/// How often a session says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A session silent for this long is taken for dead.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the command line asked for.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Write to the target (otherwise a dry run).
    pub execute: bool,
    /// Stop after this many rows (a canary).
    pub limit: Option<u64>,
    /// Abandon an unfinished run of this spec and start over.
    pub restart: bool,
}

/// Errors that stop a run before or while it works.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The spec could not be planned.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The transform could not be loaded.
    #[error(transparent)]
    Transform(#[from] TransformError),
    /// The source could not be reached.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// `--execute` without a pin.
    #[error(
        "--execute needs the component pinned: review it, then add `sha256 = \"{digest}\"` to [transform] in {spec}"
    )]
    PinRequired {
        /// The spec file.
        spec: String,
        /// The component's digest now.
        digest: String,
    },
    /// The component file cannot be read.
    #[error("cannot read component {path}: {source}")]
    Component {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An unfinished run of the spec exists and cannot be resumed as is.
    #[error(
        "run {run_id} of \"{name}\" is unfinished ({status}, started {started_at} by {who}) and cannot be resumed: {reason}. Run again with --restart to abandon it and start over"
    )]
    ResumeRefused {
        /// The unfinished run.
        run_id: String,
        /// The spec's name.
        name: String,
        /// Its status.
        status: RunStatus,
        /// When it started.
        started_at: String,
        /// Who started it.
        who: String,
        /// What changed.
        reason: String,
    },
    /// Another process is writing the same backfill.
    #[error(
        "\"{name}\" is being written by pid {pid} on {host} (last heartbeat {heartbeat_at}); wait for it to finish or stop it first"
    )]
    Busy {
        /// The backfill.
        name: String,
        /// The other process.
        pid: u32,
        /// Its machine.
        host: String,
        /// Its last heartbeat.
        heartbeat_at: String,
    },
    /// Reading a chunk failed.
    #[error("{chunk}: {source}")]
    Read {
        /// The chunk.
        chunk: String,
        /// Why.
        #[source]
        source: SourceError,
    },
    /// Writing a chunk failed.
    #[error("{chunk}: {source}")]
    Write {
        /// The chunk.
        chunk: String,
        /// Why.
        #[source]
        source: SinkError,
    },
    /// Checkpointing a chunk failed.
    #[error("{chunk}: {source}")]
    Checkpoint {
        /// The chunk.
        chunk: String,
        /// Why.
        #[source]
        source: StateError,
    },
    /// A bug in refill itself.
    #[error("internal error: {0}")]
    Internal(String),
    /// The transform trapped on several batches in a row.
    #[error(
        "{chunk}: the transform trapped on {MAX_CONSECUTIVE_TRAPS} batches in a row, stopping; the last trap: {source}"
    )]
    TooManyTraps {
        /// The chunk of the last trap.
        chunk: String,
        /// The last trap.
        #[source]
        source: TransformError,
    },
}

/// Live counters of a run, for progress displays. Rows count from the start
/// of the run, including chunks done by earlier sessions.
#[derive(Debug, Default)]
pub struct Progress {
    /// Rows the run covers.
    pub total_rows: AtomicU64,
    /// Rows processed.
    pub done_rows: AtomicU64,
    /// Rows with per-row errors.
    pub failed_rows: AtomicU64,
    /// Chunks finished.
    pub chunks_done: AtomicU64,
}

/// A before → after sample for the report.
#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    /// The row's key.
    pub key: Key,
    /// The chunk it was in.
    pub chunk: u64,
    /// Input column names and values.
    pub inputs: Vec<(String, String)>,
    /// Output column, value before, value after.
    pub changes: Vec<(String, String, String)>,
}

/// Rows that failed with the same message.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ErrorGroup {
    /// How many rows.
    pub count: u64,
    /// A few of them, from the lowest chunks.
    pub examples: Vec<Example>,
}

/// A row that failed.
#[derive(Clone, Debug, Serialize)]
pub struct Example {
    /// The chunk it was in.
    pub chunk: u64,
    /// Its key.
    pub key: Key,
}

/// How a run ended.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The run, as recorded at the end.
    pub run: RunRecord,
    /// Whether this session resumed an earlier one.
    pub resumed: bool,
    /// Chunks this session finished.
    pub chunks: u64,
    /// Counts of this session.
    pub session: Counts,
    /// Counts of the whole run.
    pub totals: Counts,
    /// Wall time of this session.
    pub elapsed: Duration,
    /// Before → after samples.
    pub diffs: Vec<Diff>,
    /// Failed rows by message, most frequent first.
    pub error_groups: Vec<(String, ErrorGroup)>,
    /// Batches that failed as a whole (trap or broken contract), naming
    /// their chunk and keys.
    pub batch_failures: Vec<String>,
    /// Why the run stopped early, if it did.
    pub failure: Option<String>,
    /// Things the plan warned about.
    pub warnings: Vec<String>,
}

/// The limits a spec asks for.
pub fn limits(spec: &Spec) -> Limits {
    let t = &spec.file.transform;
    Limits {
        fuel: t.fuel,
        memory_bytes: usize::try_from(u64::from(t.memory_mb) << 20).unwrap_or(usize::MAX),
        timeout: Duration::from_millis(t.timeout_ms),
    }
}

/// Loads the spec's component, refusing it if the pin does not match. With
/// `require_pin`, a missing pin is refused too.
pub fn load_transform(spec: &Spec, require_pin: bool) -> Result<Runner, RunError> {
    let pin = spec.file.transform.sha256.as_deref();
    if require_pin && pin.is_none() {
        let bytes = std::fs::read(&spec.component).map_err(|source| RunError::Component {
            path: spec.component.display().to_string(),
            source,
        })?;
        return Err(RunError::PinRequired {
            spec: spec.path.display().to_string(),
            digest: transform::digest(&bytes),
        });
    }
    Ok(Runner::load(&spec.component, pin, limits(spec))?)
}

/// A short random id part.
fn random_hex(digits: usize) -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())[..digits].to_string()
}

/// The user running this process.
pub fn user_name() -> String {
    whoami::username().unwrap_or_else(|_| "unknown".into())
}

/// The machine running this process.
pub fn host_name() -> String {
    whoami::hostname().unwrap_or_else(|_| "unknown".into())
}

/// Whether process `pid` on this machine is alive (and not a zombie).
fn pid_alive(pid: u32) -> Option<bool> {
    let proc = std::path::Path::new("/proc");
    if !proc.exists() {
        return None;
    }
    match std::fs::read_to_string(proc.join(pid.to_string()).join("stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => Some(
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        ),
        Err(_) => Some(false),
    }
}

/// Whether the process behind a session or lock is still working: its
/// heartbeat is recent and, on this machine, its process exists.
fn alive(process: &SessionRecord) -> bool {
    let fresh = parse_time(&process.heartbeat_at)
        .is_some_and(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default() < SESSION_TIMEOUT);
    fresh && (process.host_name != host_name() || pid_alive(process.pid).unwrap_or(true))
}

/// Marks the sessions of `run` that never ended as lost. Only called with
/// the backfill's lock held, so none of them is still working.
async fn end_lost_sessions(state: &StateStore, run: &RunRecord) -> Result<(), RunError> {
    for s in state.sessions(&run.run_id).await? {
        if s.ended_at.is_none() {
            state.end_session(&s.session_id, "lost").await?;
        }
    }
    Ok(())
}

/// Finds the unfinished run this spec resumes, or says why it cannot.
async fn resumable(
    state: &StateStore,
    spec: &Spec,
    runner: &Runner,
    options: &RunOptions,
) -> Result<Option<RunRecord>, RunError> {
    let Some(previous) = state.latest_execute_run(spec.name()).await? else {
        return Ok(None);
    };
    if !previous.status.resumable() {
        return Ok(None);
    }
    end_lost_sessions(state, &previous).await?;
    if options.restart {
        let note = format!("abandoned by --restart at {}", now());
        state
            .set_run_status(&previous.run_id, RunStatus::Abandoned, Some(&note))
            .await?;
        warn!(run = %previous.run_id, "Abandoned the unfinished run; starting over.");
        return Ok(None);
    }
    let reason = if previous.component_digest != runner.digest() {
        Some(format!(
            "it ran component sha256 {}, the spec now runs {}; resuming would mix the outputs of two transforms",
            previous.component_digest,
            runner.digest()
        ))
    } else if previous.work_hash != spec.work_hash() {
        Some(
            "the spec changed since it started (source, scope, target or transform config differ)"
                .to_string(),
        )
    } else {
        None
    };
    match reason {
        Some(reason) => Err(RunError::ResumeRefused {
            run_id: previous.run_id,
            name: previous.name,
            status: previous.status,
            started_at: previous.started_at,
            who: format!("{}@{}", previous.user_name, previous.host_name),
            reason,
        }),
        None => Ok(Some(previous)),
    }
}

fn new_run(spec: &Spec, runner: &Runner, plan: &Plan, mode: Mode) -> RunRecord {
    let started = chrono::Utc::now();
    RunRecord {
        run_id: format!("{}-{}", started.format("%Y%m%d-%H%M%S"), random_hex(4)),
        name: spec.name().to_string(),
        mode,
        status: RunStatus::Running,
        work_hash: spec.work_hash(),
        spec: spec.audit_json(),
        spec_path: spec
            .path
            .canonicalize()
            .unwrap_or_else(|_| spec.path.clone())
            .display()
            .to_string(),
        component_digest: runner.digest().to_string(),
        transform_name: runner.info().name.clone(),
        transform_version: runner.info().version.clone(),
        host_version: crate::HOST_VERSION.to_string(),
        user_name: user_name(),
        host_name: host_name(),
        source_url: spec.source_url.masked(),
        source_table: plan.layout.source.quoted(),
        target_table: plan.layout.target.quoted(),
        key_type: plan.layout.key_type,
        first_key: plan.scope.first.clone(),
        high_watermark: plan.scope.high_watermark.clone(),
        rows_in_scope: plan.scope.rows,
        chunk_rows: u64::from(spec.file.chunk.rows),
        started_at: now(),
        finished_at: None,
        message: None,
    }
}

/// Everything the workers share.
struct Context {
    mode: Mode,
    run_id: String,
    db: Database,
    state: StateStore,
    layout: Layout,
    runner: Arc<Runner>,
    params: Arc<Vec<Param>>,
    batch_rows: usize,
    progress: Arc<Progress>,
    stop: AtomicBool,
    consecutive_traps: AtomicU32,
    samples: Mutex<Samples>,
}

#[derive(Default)]
struct Samples {
    diffs: Vec<Diff>,
    groups: BTreeMap<String, ErrorGroup>,
    batch_failures: Vec<(u64, String)>,
    session: Counts,
    chunks: u64,
}

impl Samples {
    /// Adds a chunk's samples, keeping those of the lowest chunks so the
    /// report does not depend on which worker finished first.
    fn merge(&mut self, diffs: Vec<Diff>, groups: BTreeMap<String, ErrorGroup>) {
        self.diffs.extend(diffs);
        self.diffs.sort_by_key(|d| d.chunk);
        self.diffs.truncate(SAMPLE_DIFFS);
        for (message, group) in groups {
            let distinct = self.groups.len();
            let slot = match self.groups.get_mut(&message) {
                Some(slot) => slot,
                None if distinct < MAX_ERROR_GROUPS => self.groups.entry(message).or_default(),
                None => self.groups.entry(OTHER_ERRORS.to_string()).or_default(),
            };
            slot.count += group.count;
            slot.examples.extend(group.examples);
            slot.examples.sort_by_key(|e| e.chunk);
            slot.examples.truncate(GROUP_KEYS);
        }
    }

    /// The error groups, most frequent first.
    fn top_groups(&self) -> Vec<(String, ErrorGroup)> {
        let mut groups: Vec<(String, ErrorGroup)> = self
            .groups
            .iter()
            .map(|(m, g)| (m.clone(), g.clone()))
            .collect();
        groups.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
        groups.truncate(SAMPLE_GROUPS);
        groups
    }
}

/// A chunk read and recorded, on its way to a worker.
struct Work {
    chunk: Chunk,
    rows: ChunkRows,
    read_ms: u64,
}

/// Runs a spec: a dry run, or with `options.execute` a real one, resuming
/// the spec's unfinished run if there is one.
pub async fn run(
    spec: &Spec,
    options: &RunOptions,
    progress: Arc<Progress>,
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let runner = Arc::new(load_transform(spec, options.execute)?);
    let concurrency = spec.file.chunk.concurrency;
    let db = Database::connect(&spec.source_url, concurrency + 2).await?;
    let plan = plan::build(spec, &db, &runner).await?;
    let state = StateStore::open(&spec.state_url).await?;
    let session = SessionRecord {
        session_id: format!("s{}", random_hex(12)),
        run_id: String::new(),
        pid: std::process::id(),
        host_name: host_name(),
        user_name: user_name(),
        started_at: now(),
        heartbeat_at: now(),
        ended_at: None,
        outcome: None,
    };
    let prepared = Prepared {
        started,
        runner,
        db,
        plan,
        state: state.clone(),
    };
    if !options.execute {
        return run_session(spec, options, progress, prepared, session).await;
    }
    // One writer per backfill: the lock is taken before deciding what to
    // resume, and given back however the run ends (a crash leaves it to a
    // holder that the next run sees is gone).
    if let Some(holder) = state
        .acquire_lock(spec.name(), &session, |h| !alive(h))
        .await?
    {
        return Err(RunError::Busy {
            name: spec.name().to_string(),
            pid: holder.pid,
            host: holder.host_name,
            heartbeat_at: holder.heartbeat_at,
        });
    }
    let session_id = session.session_id.clone();
    let result = run_session(spec, options, progress, prepared, session).await;
    if let Err(error) = state.release_lock(spec.name(), &session_id).await {
        warn!(%error, "Could not release the backfill's lock; the next run takes it over.");
    }
    result
}

/// What `run` checked and connected before a session starts.
struct Prepared {
    started: Instant,
    runner: Arc<Runner>,
    db: Database,
    plan: Plan,
    state: StateStore,
}

async fn run_session(
    spec: &Spec,
    options: &RunOptions,
    progress: Arc<Progress>,
    prepared: Prepared,
    mut session: SessionRecord,
) -> Result<RunReport, RunError> {
    let Prepared {
        started,
        runner,
        db,
        plan,
        state,
    } = prepared;
    let mode = if options.execute {
        Mode::Execute
    } else {
        Mode::DryRun
    };
    let previous = if options.execute {
        resumable(&state, spec, &runner, options).await?
    } else {
        None
    };
    let resumed = previous.is_some();
    let run = match previous {
        Some(run) => {
            state
                .set_run_status(&run.run_id, RunStatus::Running, None)
                .await?;
            run
        }
        None => {
            let run = new_run(spec, &runner, &plan, mode);
            state.create_run(&run).await?;
            run
        }
    };

    session.run_id = run.run_id.clone();
    state.start_session(&session).await?;
    let heartbeat = {
        let state = state.clone();
        let id = session.session_id.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                if let Err(error) = state.heartbeat(&id).await {
                    warn!(%error, "Could not record a heartbeat.");
                }
            }
        })
    };

    let ctx = Arc::new(Context {
        mode: run.mode,
        run_id: run.run_id.clone(),
        db,
        state: state.clone(),
        layout: plan.layout.clone(),
        runner,
        params: Arc::new(plan::params(spec)),
        batch_rows: usize::try_from(spec.file.transform.batch_rows).unwrap_or(1000),
        progress,
        stop: AtomicBool::new(false),
        consecutive_traps: AtomicU32::new(0),
        samples: Mutex::new(Samples::default()),
    });
    let span = info_span!("run", run = %run.run_id);
    let outcome = work(spec, options, &run, &session.session_id, ctx.clone())
        .instrument(span)
        .await;
    heartbeat.abort();

    let (status, failure) = match outcome {
        Ok(true) => (RunStatus::Done, None),
        Ok(false) => (RunStatus::Incomplete, None),
        Err(error) => (RunStatus::Failed, Some(error.to_string())),
    };
    let message = match (status, &failure) {
        (RunStatus::Incomplete, _) => Some(format!(
            "stopped after --limit {}",
            options.limit.unwrap_or(0)
        )),
        (_, Some(f)) => Some(f.clone()),
        _ => None,
    };
    state
        .set_run_status(&run.run_id, status, message.as_deref())
        .await?;
    state
        .end_session(&session.session_id, status.as_str())
        .await?;
    let (totals, _) = state.totals(&run.run_id).await?;
    let mut warnings = plan.warnings;
    if status == RunStatus::Done && totals.rows != run.rows_in_scope {
        warnings.push(format!(
            "the run read {} rows, but {} were in scope when it started: rows were deleted, \
             added below the high-watermark, or moved in or out of the scope meanwhile",
            totals.rows, run.rows_in_scope
        ));
    }
    let run = state.find_run(&run.run_id).await?.unwrap_or(run);
    // The workers and the reader are done: this is the last reference.
    let samples = Arc::into_inner(ctx)
        .map(|c| c.samples.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default();
    Ok(RunReport {
        run,
        resumed,
        chunks: samples.chunks,
        session: samples.session,
        totals,
        elapsed: started.elapsed(),
        error_groups: samples.top_groups(),
        batch_failures: samples.batch_failures.into_iter().map(|(_, m)| m).collect(),
        diffs: samples.diffs,
        failure,
        warnings,
    })
}

/// Reads, transforms and writes the run's remaining chunks. Returns whether
/// the scope was read to its end.
async fn work(
    spec: &Spec,
    options: &RunOptions,
    run: &RunRecord,
    session_id: &str,
    ctx: Arc<Context>,
) -> Result<bool, RunError> {
    let chunks = ctx.state.chunks(run).await?;
    let done_rows: u64 = chunks
        .iter()
        .filter(|c| c.status == ChunkStatus::Done)
        .map(|c| c.counts.rows)
        .sum();
    let done_failed: u64 = chunks
        .iter()
        .filter(|c| c.status == ChunkStatus::Done)
        .map(|c| c.counts.failed)
        .sum();
    let pending: Vec<Chunk> = chunks
        .iter()
        .filter(|c| c.status == ChunkStatus::Pending)
        .map(|c| c.chunk())
        .collect();
    let last = chunks.last().map(|c| (c.chunk_id, c.hi.clone()));
    let target_rows = match options.limit {
        Some(limit) => (done_rows + limit).min(run.rows_in_scope.max(done_rows)),
        None => run.rows_in_scope.max(done_rows),
    };
    let progress = &ctx.progress;
    progress.total_rows.store(target_rows, Ordering::Relaxed);
    progress.done_rows.store(done_rows, Ordering::Relaxed);
    progress.failed_rows.store(done_failed, Ordering::Relaxed);
    if !pending.is_empty() {
        info!(
            chunks = pending.len(),
            "Redoing chunks that were in flight when the last session stopped."
        );
    }

    let (tx, rx) = mpsc::channel::<Work>(1);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..spec.file.chunk.concurrency {
        let ctx = ctx.clone();
        let rx = rx.clone();
        workers.push(tokio::spawn(
            async move { worker(ctx, rx).await }.in_current_span(),
        ));
    }
    drop(rx);

    let reader = Reader {
        ctx: ctx.clone(),
        session_id: session_id.to_string(),
        chunk_rows: u64::from(spec.file.chunk.rows),
        high_watermark: run.high_watermark.clone(),
        remaining: options.limit,
    };
    let read_result = reader.read_all(pending, last, tx).await;

    // A worker's error is the cause; the reader then only saw the stop.
    let mut worker_error = None;
    for handle in workers {
        let result = handle
            .await
            .unwrap_or_else(|join| Err(RunError::Internal(format!("a worker panicked: {join}"))));
        if let Err(e) = result {
            worker_error.get_or_insert(e);
        }
    }
    match (read_result, worker_error) {
        (_, Some(e)) | (Err(e), None) => Err(e),
        (Ok(exhausted), None) => Ok(exhausted),
    }
}

struct Reader {
    ctx: Arc<Context>,
    session_id: String,
    chunk_rows: u64,
    high_watermark: Option<Key>,
    remaining: Option<u64>,
}

impl Reader {
    /// Reads the chunks left in flight by an earlier session, then new
    /// chunks from the cursor to the high-watermark. Returns whether the
    /// scope was read to its end.
    async fn read_all(
        mut self,
        pending: Vec<Chunk>,
        last: Option<(u64, Key)>,
        tx: mpsc::Sender<Work>,
    ) -> Result<bool, RunError> {
        for chunk in pending {
            if self.stopped() || self.remaining == Some(0) {
                return Ok(false);
            }
            let started = Instant::now();
            let rows = self
                .ctx
                .db
                .read(&self.ctx.layout, chunk.lo.as_ref(), &chunk.hi, None)
                .await
                .map_err(|source| RunError::Read {
                    chunk: chunk.to_string(),
                    source,
                })?;
            if !self.hand_on(chunk, rows, started, &tx).await? {
                return Ok(false);
            }
        }
        let Some(high_watermark) = self.high_watermark.clone() else {
            return Ok(true);
        };
        let (mut next_id, mut cursor) = match last {
            Some((id, hi)) => (id + 1, Some(hi)),
            None => (1, None),
        };
        loop {
            if self.stopped() {
                return Ok(false);
            }
            let want = self
                .remaining
                .map_or(self.chunk_rows, |r| r.min(self.chunk_rows));
            if want == 0 {
                return Ok(false);
            }
            let started = Instant::now();
            let rows = self
                .ctx
                .db
                .read(
                    &self.ctx.layout,
                    cursor.as_ref(),
                    &high_watermark,
                    Some(want),
                )
                .await
                .map_err(|source| {
                    let chunk = Chunk {
                        id: next_id,
                        lo: cursor.clone(),
                        hi: high_watermark.clone(),
                    };
                    RunError::Read {
                        chunk: chunk.to_string(),
                        source,
                    }
                })?;
            let Some(hi) = rows.keys.last().cloned() else {
                return Ok(true);
            };
            let short = (rows.len() as u64) < want;
            let chunk = Chunk {
                id: next_id,
                lo: cursor.take(),
                hi: hi.clone(),
            };
            next_id += 1;
            cursor = Some(hi);
            if !self.hand_on(chunk, rows, started, &tx).await? {
                return Ok(false);
            }
            if short {
                return Ok(true);
            }
        }
    }

    fn stopped(&self) -> bool {
        self.ctx.stop.load(Ordering::Relaxed)
    }

    /// Records the chunk as started and sends it to a worker. Returns false
    /// if no worker is left to take it.
    async fn hand_on(
        &mut self,
        chunk: Chunk,
        rows: ChunkRows,
        started: Instant,
        tx: &mpsc::Sender<Work>,
    ) -> Result<bool, RunError> {
        let read_ms = millis(started.elapsed());
        self.ctx
            .state
            .chunk_started(&self.ctx.run_id, &chunk, &self.session_id)
            .await
            .map_err(|source| RunError::Checkpoint {
                chunk: chunk.to_string(),
                source,
            })?;
        if let Some(r) = self.remaining.as_mut() {
            *r = r.saturating_sub(rows.len() as u64);
        }
        debug!(chunk = chunk.id, rows = rows.len(), read_ms, "Chunk read.");
        Ok(tx
            .send(Work {
                chunk,
                rows,
                read_ms,
            })
            .await
            .is_ok())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn worker(
    ctx: Arc<Context>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Work>>>,
) -> Result<(), RunError> {
    let mut instance: Option<Instance> = None;
    loop {
        let next = rx.lock().await.recv().await;
        let Some(work) = next else { return Ok(()) };
        if ctx.stop.load(Ordering::Relaxed) {
            // Leave the chunk pending: a later run redoes it.
            return Ok(());
        }
        let span = info_span!("chunk", chunk = work.chunk.id);
        let result = process(&ctx, &mut instance, work).instrument(span).await;
        if let Err(e) = result {
            ctx.stop.store(true, Ordering::Relaxed);
            error!(error = %e, "Stopping the run.");
            return Err(e);
        }
    }
}

/// What transforming a chunk produced.
struct Transformed {
    outcomes: Vec<Outcome>,
    batch_error: Option<String>,
    too_many_traps: Option<TransformError>,
}

async fn process(
    ctx: &Arc<Context>,
    instance: &mut Option<Instance>,
    work: Work,
) -> Result<(), RunError> {
    let Work {
        chunk,
        rows,
        read_ms,
    } = work;
    let started = Instant::now();
    let (returned, rows, transformed) = {
        let ctx = ctx.clone();
        let mut taken = instance.take();
        let span = tracing::Span::current();
        let chunk = chunk.clone();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let result = transform_chunk(&ctx, &chunk, &mut taken, &rows);
            (taken, rows, result)
        })
        .await
        .map_err(|e| RunError::Internal(format!("a transform thread panicked: {e}")))?
    };
    *instance = returned;
    let transformed = transformed?;
    if let Some(source) = transformed.too_many_traps {
        return Err(RunError::TooManyTraps {
            chunk: chunk.to_string(),
            source,
        });
    }
    let transform_ms = millis(started.elapsed());

    let mut evaluated = evaluate(&ctx.layout, &chunk, &rows, transformed.outcomes);
    let started = Instant::now();
    if ctx.mode == Mode::Execute {
        let written = sink::write(&ctx.db, &ctx.layout, &evaluated.updates)
            .await
            .map_err(|source| RunError::Write {
                chunk: chunk.to_string(),
                source,
            })?;
        let expected = (evaluated.updates.len() - written.rejected.len()) as u64;
        evaluated.refused(chunk.id, written.rejected);
        if written.changed < expected {
            let vanished = expected - written.changed;
            warn!(
                vanished,
                "Rows were deleted from the target while their chunk was processed; counted as skipped."
            );
            evaluated.counts.updated -= vanished;
            evaluated.counts.skipped += vanished;
        }
    }
    let counts = evaluated.counts;
    let timings = Timings {
        read_ms,
        transform_ms,
        write_ms: millis(started.elapsed()),
    };
    ctx.state
        .chunk_done(
            &ctx.run_id,
            chunk.id,
            &counts,
            &timings,
            transformed.batch_error.as_deref(),
        )
        .await
        .map_err(|source| RunError::Checkpoint {
            chunk: chunk.to_string(),
            source,
        })?;

    let p = &ctx.progress;
    p.done_rows.fetch_add(counts.rows, Ordering::Relaxed);
    p.failed_rows.fetch_add(counts.failed, Ordering::Relaxed);
    p.chunks_done.fetch_add(1, Ordering::Relaxed);
    {
        let mut samples = ctx.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.merge(evaluated.diffs, evaluated.groups);
        if let Some(message) = transformed.batch_error {
            samples.batch_failures.push((chunk.id, message));
            samples.batch_failures.sort_by_key(|(id, _)| *id);
            samples.batch_failures.truncate(SAMPLE_GROUPS);
        }
        samples.session.add(&counts);
        samples.chunks += 1;
    }
    debug!(
        rows = counts.rows,
        updated = counts.updated,
        unchanged = counts.unchanged,
        skipped = counts.skipped,
        failed = counts.failed,
        read_ms = timings.read_ms,
        transform_ms = timings.transform_ms,
        write_ms = timings.write_ms,
        "Chunk done."
    );
    Ok(())
}

/// Runs the chunk's rows through the transform batch by batch. A batch that
/// traps or breaks the contract fails all its rows; the instance is then
/// replaced for the next batch.
fn transform_chunk(
    ctx: &Context,
    chunk: &Chunk,
    instance: &mut Option<Instance>,
    rows: &ChunkRows,
) -> Result<Transformed, RunError> {
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut batch_error = None;
    for (b, batch) in rows.rows.chunks(ctx.batch_rows.max(1)).enumerate() {
        let live = match instance {
            Some(i) => i,
            None => instance.insert(ctx.runner.instance(&ctx.params)?),
        };
        match live.transform(batch) {
            Ok(output) => {
                ctx.consecutive_traps.store(0, Ordering::Relaxed);
                for line in &output.logs {
                    guest_log(line.level, &line.message);
                }
                if output.dropped_logs > 0 {
                    warn!(
                        dropped = output.dropped_logs,
                        "The transform logged too much; lines were dropped."
                    );
                }
                outcomes.extend(output.outcomes);
            }
            Err(e @ (TransformError::Trap { .. } | TransformError::Contract(_))) => {
                *instance = None;
                let first = &rows.keys[b * ctx.batch_rows];
                let last = &rows.keys[b * ctx.batch_rows + batch.len() - 1];
                let message = format!("{chunk}, batch of keys {first} to {last}: {e}");
                error!(batch_rows = batch.len(), "{message}");
                outcomes.extend(batch.iter().map(|_| Outcome::Error(e.to_string())));
                batch_error.get_or_insert(message);
                if matches!(e, TransformError::Trap { .. })
                    && ctx.consecutive_traps.fetch_add(1, Ordering::Relaxed) + 1
                        >= MAX_CONSECUTIVE_TRAPS
                {
                    return Ok(Transformed {
                        outcomes,
                        batch_error,
                        too_many_traps: Some(e),
                    });
                }
            }
            Err(other) => return Err(other.into()),
        }
    }
    Ok(Transformed {
        outcomes,
        batch_error,
        too_many_traps: None,
    })
}

fn guest_log(level: Level, message: &str) {
    match level {
        Level::Debug => debug!(target: "refill::guest", "{message}"),
        Level::Info => info!(target: "refill::guest", "{message}"),
        Level::Warn => warn!(target: "refill::guest", "{message}"),
        Level::Error => error!(target: "refill::guest", "{message}"),
    }
}

/// A chunk's outcomes, checked: what to write, the counts, and samples for
/// the report.
#[derive(Default)]
struct Evaluated {
    updates: Vec<Update>,
    counts: Counts,
    diffs: Vec<Diff>,
    groups: BTreeMap<String, ErrorGroup>,
}

impl Evaluated {
    fn fail(&mut self, chunk: u64, key: &Key, message: String) {
        self.counts.failed += 1;
        let group = self.groups.entry(message).or_default();
        group.count += 1;
        if group.examples.len() < GROUP_KEYS {
            group.examples.push(Example {
                chunk,
                key: key.clone(),
            });
        }
    }

    /// Moves the rows whose values the database refused from updated to
    /// failed.
    fn refused(&mut self, chunk: u64, rejected: Vec<(Key, String)>) {
        for (key, reason) in rejected {
            self.counts.updated -= 1;
            self.diffs.retain(|d| d.key != key);
            self.fail(chunk, &key, reason);
        }
    }
}

/// Turns outcomes into the updates to write, the chunk's counts and
/// samples.
fn evaluate(layout: &Layout, chunk: &Chunk, rows: &ChunkRows, outcomes: Vec<Outcome>) -> Evaluated {
    let mut out = Evaluated {
        counts: Counts {
            rows: rows.len() as u64,
            ..Counts::default()
        },
        ..Evaluated::default()
    };
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let key = &rows.keys[i];
        let result = match outcome {
            Outcome::Skip => {
                out.counts.skipped += 1;
                continue;
            }
            Outcome::Error(message) => Err(message),
            Outcome::Update(values) => {
                check_update(layout, key, values, rows.current[i].as_deref())
            }
        };
        match result {
            Err(message) => out.fail(chunk.id, key, message),
            Ok(None) => out.counts.unchanged += 1,
            Ok(Some(values)) => {
                out.counts.updated += 1;
                if out.diffs.len() < SAMPLE_DIFFS {
                    let before = rows.current[i].as_deref().unwrap_or(&[]);
                    out.diffs.push(diff(
                        layout,
                        chunk.id,
                        key,
                        &rows.rows[i].values,
                        before,
                        &values,
                    ));
                }
                out.updates.push(Update {
                    key: key.clone(),
                    values,
                });
            }
        }
    }
    out
}

/// Checks an `update` outcome against the output columns. Returns the
/// coerced values if they change the row, `None` if the row already holds
/// them, or why the row fails.
fn check_update(
    layout: &Layout,
    key: &Key,
    values: Vec<Value>,
    current: Option<&[Value]>,
) -> Result<Option<Vec<Value>>, String> {
    if values.len() != layout.outputs.len() {
        let names: Vec<&str> = layout.outputs.iter().map(|c| c.name.as_str()).collect();
        return Err(format!(
            "the transform returned {} values for {} output column{} ({})",
            values.len(),
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        ));
    }
    let Some(current) = current else {
        return Err(format!(
            "no row with key {key} in the target table {}",
            layout.target
        ));
    };
    let mut coerced = Vec::with_capacity(values.len());
    for (value, column) in values.into_iter().zip(&layout.outputs) {
        let v = column
            .kind
            .coerce(value)
            .map_err(|e| format!("output column \"{}\": {e}", column.name))?;
        if v == Value::Null && column.not_null {
            return Err(format!(
                "output column \"{}\" is NOT NULL, but the transform returned NULL",
                column.name
            ));
        }
        coerced.push(v);
    }
    let unchanged = coerced
        .iter()
        .zip(current)
        .all(|(new, old)| value::same(old, new));
    Ok((!unchanged).then_some(coerced))
}

fn diff(
    layout: &Layout,
    chunk: u64,
    key: &Key,
    inputs: &[Value],
    before: &[Value],
    after: &[Value],
) -> Diff {
    Diff {
        key: key.clone(),
        chunk,
        inputs: layout
            .inputs
            .iter()
            .zip(inputs)
            .map(|(c, v)| (c.name.clone(), value::Short(v).to_string()))
            .collect(),
        changes: layout
            .outputs
            .iter()
            .zip(before.iter().zip(after))
            .filter(|(_, (b, a))| !value::same(b, a))
            .map(|(c, (b, a))| {
                (
                    c.name.clone(),
                    value::Short(b).to_string(),
                    value::Short(a).to_string(),
                )
            })
            .collect(),
    }
}
