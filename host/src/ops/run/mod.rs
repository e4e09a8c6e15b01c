//! Runs: consumes a spec and the run options; produces a run. It loads and
//! pins the transform, plans, takes the backfill's lock, finds the
//! unfinished run to resume (or records a new one), then feeds the
//! [`pipeline`] its chunks: those left in flight by an earlier session, then
//! new ones in key order up to the high-watermark. Returns a [`RunReport`].

pub(crate) mod pipeline;
pub mod worker;

pub use crate::metrics::serve as serve_metrics;
pub use crate::progress::{Phase, Progress, RecentRate, Status};
pub use crate::throttle::Stop;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{Instrument, info, info_span, warn};

use self::pipeline::{Context, Ended, Feed, MAX_TRAPPED_BATCHES, Purpose, Samples};
use crate::backoff;
use crate::chunk::{Chunk, Key};
use crate::lookup::Lookups;
use crate::plan::{self, Plan, PlanError};
use crate::sink::SinkError;
use crate::source::{Database, Layout, SourceError};
use crate::spec::Spec;
use crate::state::LookupRecord;
use crate::state::{
    ChunkStatus, ControlAction, Counts, Mode, RunRecord, RunStatus, SessionKind, SessionOutcome,
    SessionRecord, StateError, StateStore, now, parse_time,
};
use crate::throttle::{ControlSource, Throttle, Watching, signals::Signals};
use crate::transform::wasi::GuestEnv;
use crate::transform::{self, Limits, Runner, Setup, TransformError};

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
    /// Stop taking chunks after this long (the run stays resumable).
    pub max_runtime: Option<Duration>,
    /// Stop after the chunk holding this key (the run stays resumable).
    pub until_key: Option<String>,
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
    /// The spec does not describe the run's data.
    #[error("{0}")]
    WrongSpec(String),
    /// The spec's throttle cannot work as written.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// A command-line option cannot be used as given.
    #[error("{0}")]
    Usage(String),
    /// Stopped on request before the end (Ctrl-C, `refill abort`,
    /// `--max-runtime`).
    #[error("{0}")]
    Stopped(Stop),
    /// More rows failed than the spec's `[errors]` budget allows.
    #[error(
        "error budget exceeded: {0}; the run stopped and can be resumed after a fix (see `refill report`)"
    )]
    ErrorBudget(String),
    /// Every row of several batches in a row trapped or broke the
    /// interface contract.
    #[error(
        "{chunk}: the transform {} on every row of {MAX_TRAPPED_BATCHES} batches in a row, stopping; the last failure: {source}",
        if matches!(source, TransformError::Contract(_)) { "broke its contract" } else { "trapped" }
    )]
    TooManyTraps {
        /// The chunk of the last trap.
        chunk: String,
        /// The last trap or broken contract.
        #[source]
        source: TransformError,
    },
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
    /// Why the run stopped early, if it did.
    pub failure: Option<String>,
    /// Why it stopped before its end on request, if it did (abort,
    /// Ctrl-C, `--max-runtime`).
    pub stop: Option<Stop>,
    /// Things the plan warned about.
    pub warnings: Vec<String>,
}

/// The limits a spec asks for.
pub fn limits(spec: &Spec) -> Limits {
    let t = &spec.file.transform;
    Limits {
        fuel_per_row: t.fuel_per_row,
        memory_bytes: usize::try_from(u64::from(t.memory_mb) << 20).unwrap_or(usize::MAX),
        timeout: Duration::from_millis(t.timeout_ms),
        component_bytes: u64::from(t.max_component_mb) << 20,
    }
}

/// Loads the spec's component, refusing it if the pin does not match. With
/// `require_pin`, a missing pin is refused too.
pub fn load_transform(spec: &Spec, require_pin: bool) -> Result<Runner, RunError> {
    let pin = spec.file.transform.sha256.as_deref();
    if require_pin && pin.is_none() {
        return Err(pin_required(spec, &component_bytes(spec)?));
    }
    Ok(Runner::load(&spec.component, pin, limits(spec))?)
}

/// As [`load_transform`] with the pin required, also returning the
/// component's bytes: the very bytes checked against the pin, read once.
pub(crate) fn load_pinned_transform(spec: &Spec) -> Result<(Runner, Vec<u8>), RunError> {
    let bytes = component_bytes(spec)?;
    let Some(pin) = spec.file.transform.sha256.as_deref() else {
        return Err(pin_required(spec, &bytes));
    };
    let compiled = transform::Compiled::from_bytes(&spec.component, &bytes, Some(pin))?;
    Ok((Runner::new(compiled, limits(spec))?, bytes))
}

/// The bytes of the spec's component file.
fn component_bytes(spec: &Spec) -> Result<Vec<u8>, RunError> {
    Ok(transform::Compiled::read_bytes(
        &spec.component,
        limits(spec).component_bytes,
    )?)
}

/// `--execute` refused for a spec without a pin, naming the digest to pin.
fn pin_required(spec: &Spec, bytes: &[u8]) -> RunError {
    RunError::PinRequired {
        spec: spec.path.display().to_string(),
        digest: transform::digest(bytes),
    }
}

/// The clock and seed of a backfill's guests, for the component `digest`
/// it ran (or runs). The clock reads the start of the first run (dry or
/// not) of the spec's name with that component, so that dry runs, the run
/// that executes, its resumptions, and the retries and verifications of
/// its rows all see the same time and seed. Without a state store, or
/// before any run, it reads the current time.
pub async fn guest_env(
    state: Option<&StateStore>,
    name: &str,
    digest: &str,
) -> Result<GuestEnv, RunError> {
    let first = match state {
        Some(state) => state.first_started(name, digest).await?,
        None => None,
    };
    let identity = [name, digest];
    Ok(match first.as_deref().and_then(parse_time) {
        Some(t) => GuestEnv::at(t, &identity),
        None => GuestEnv::current(&identity),
    })
}

/// Refuses to resume `run` if the lookup tables it started with changed
/// since.
async fn refuse_changed_lookups(
    state: &StateStore,
    run: &RunRecord,
    lookups: &Lookups,
) -> Result<(), RunError> {
    let tables = lookups.digests();
    for earlier in state.records::<LookupRecord>(&run.run_id).await? {
        if earlier.tables != tables {
            let changed: Vec<String> = earlier
                .tables
                .iter()
                .filter(|t| !tables.contains(t))
                .map(|t| format!("\"{}\" (sha256 {} then)", t.name, t.sha256))
                .collect();
            return Err(RunError::ResumeRefused {
                run_id: run.run_id.clone(),
                name: run.name.clone(),
                status: run.status,
                started_at: run.started_at.clone(),
                who: format!("{}@{}", run.user_name, run.host_name),
                reason: format!(
                    "its lookup tables changed since it started: {}; resuming would mix two mappings",
                    changed.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// Records the lookup tables a new run reads, if it reads any.
async fn record_lookups(
    state: &StateStore,
    run: &RunRecord,
    lookups: &Lookups,
) -> Result<(), RunError> {
    let tables = lookups.digests();
    if tables.is_empty() {
        return Ok(());
    }
    state
        .record(&LookupRecord {
            record_id: format!("{}.lookup", run.run_id),
            run_id: run.run_id.clone(),
            started_at: now(),
            tables,
        })
        .await?;
    Ok(())
}

/// A short random id part.
pub(crate) fn random_hex(digits: usize) -> String {
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
pub(crate) fn alive(process: &SessionRecord) -> bool {
    let fresh = parse_time(&process.heartbeat_at)
        .is_some_and(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default() < SESSION_TIMEOUT);
    fresh && (process.host_name != host_name() || pid_alive(process.pid).unwrap_or(true))
}

/// Marks the sessions of `run` that never ended as lost. Only called with
/// the backfill's lock held, so none of them is still working, except the
/// workers of a run planned for them: of those, only the ones that are
/// gone.
pub(crate) async fn end_lost_sessions(state: &StateStore, run: &RunRecord) -> Result<(), RunError> {
    for s in state.sessions(&run.run_id).await? {
        if s.ended_at.is_none() && (!run.workers || !alive(&s)) {
            state
                .end_session(&s.session_id, SessionOutcome::Lost)
                .await?;
        }
    }
    Ok(())
}

/// Sets an unfinished run going again: running it again is the answer to
/// an abort or a failure; a pause stands.
async fn reopen(state: &StateStore, run: &RunRecord) -> Result<(), RunError> {
    state
        .set_run_status(&run.run_id, RunStatus::Running, None)
        .await?;
    clear_abort(state, &run.run_id).await
}

/// Takes back an abort standing on a run, which stopped the process that
/// worked on it: starting the work again (a run, a retry, a rollback) is
/// the answer to it. A pause stands: the new process waits for `refill
/// resume`.
pub(crate) async fn clear_abort(state: &StateStore, run_id: &str) -> Result<(), RunError> {
    if state
        .control(run_id)
        .await?
        .is_some_and(|c| c.action == ControlAction::Abort)
    {
        state.set_control(run_id, None, "").await?;
    }
    Ok(())
}

/// Finds the unfinished run this spec resumes, or says why it cannot.
async fn resumable(
    state: &StateStore,
    spec: &Spec,
    runner: &Runner,
    options: &RunOptions,
    workers: bool,
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
    let reason = if previous.workers && !workers {
        Some(format!(
            "it is planned for distributed workers: join it with `refill worker --state {} --run {}`",
            state.url(),
            previous.run_id
        ))
    } else if !previous.workers && workers {
        Some("it runs in a single process: finish it with `refill run --execute` first".to_string())
    } else if previous.component_digest != runner.digest() {
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
        data_hash: spec.data_hash(),
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
        workers: false,
    }
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
    let concurrency = spec.concurrency();
    let db = Database::for_spec(spec, concurrency + 2, options.execute).await?;
    let plan = plan::build(spec, &db, &runner).await?;
    let state = StateStore::open(&spec.state_url).await?;
    let session = new_session(SessionKind::Run);
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
    let lock_session = session.clone();
    with_lock(
        &state,
        spec.name(),
        &lock_session,
        run_session(spec, options, progress, prepared, session),
    )
    .await
}

/// A session record for this process, doing `kind` of work, not yet tied
/// to a run.
pub(crate) fn new_session(kind: SessionKind) -> SessionRecord {
    SessionRecord {
        session_id: format!("s{}", random_hex(12)),
        run_id: String::new(),
        kind,
        pid: std::process::id(),
        host_name: host_name(),
        user_name: user_name(),
        started_at: now(),
        heartbeat_at: now(),
        ended_at: None,
        outcome: None,
        state: None,
        reason: None,
    }
}

/// Keeps a session (and the lock it holds, if any) marked alive until the
/// returned task is aborted.
fn heartbeat(state: &StateStore, session_id: &str) -> tokio::task::JoinHandle<()> {
    let state = state.clone();
    let id = session_id.to_string();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            if let Err(error) = state.heartbeat(&id).await {
                warn!(%error, "Could not record a heartbeat.");
            }
        }
    })
}

/// Runs `work` holding the write lock of the backfill `name`: one writer
/// per backfill. The lock is taken before `work` decides anything, kept
/// alive by a heartbeat, and given back however `work` ends; a crash leaves
/// it to a holder that the next process sees is gone.
pub(crate) async fn with_lock<T>(
    state: &StateStore,
    name: &str,
    session: &SessionRecord,
    work: impl std::future::Future<Output = Result<T, RunError>>,
) -> Result<T, RunError> {
    if let Some(holder) = state.acquire_lock(name, session, |h| !alive(h)).await? {
        return Err(RunError::Busy {
            name: name.to_string(),
            pid: holder.pid,
            host: holder.host_name,
            heartbeat_at: holder.heartbeat_at,
        });
    }
    let heartbeat = heartbeat(state, &session.session_id);
    let result = work.await;
    heartbeat.abort();
    if let Err(error) = state.release_lock(name, &session.session_id).await {
        warn!(%error, "Could not release the backfill's lock; the next process takes it over.");
    }
    result
}

/// The pipeline context for a spec.
#[expect(
    clippy::too_many_arguments,
    reason = "each purpose passes its own parts; one constructor keeps the settings in one place"
)]
pub(crate) fn context(
    spec: &Spec,
    purpose: Purpose,
    run_id: &str,
    db: Database,
    state: Option<StateStore>,
    layout: Layout,
    runner: Arc<Runner>,
    setup: Setup,
    progress: Arc<Progress>,
    throttle: Arc<Throttle>,
) -> Context {
    let t = &spec.file.transform;
    Context {
        purpose,
        run_id: run_id.to_string(),
        layout,
        runner,
        setup: Arc::new(setup),
        batch_rows: usize::try_from(t.batch_rows).unwrap_or(1000),
        batch_bytes: t.batch_bytes,
        chunk_bytes: spec.file.chunk.max_bytes,
        row_bytes: std::sync::atomic::AtomicU64::new(0),
        policy: policy(spec),
        conflict_attempts: spec.file.retry.conflict_attempts,
        conditional: spec.file.target.conditional,
        budget: spec.file.errors.clone(),
        progress,
        stop: AtomicBool::new(false),
        trapped_batches: AtomicU32::new(0),
        samples: Mutex::new(Samples::default()),
        chunk_finished: tokio::sync::Notify::new(),
        atomic: atomic_pool(spec, &db, state.as_ref()),
        db,
        state,
        throttle,
        abandoned: Mutex::new(None),
        deferred: Mutex::new(Vec::new()),
        in_flight: std::sync::atomic::AtomicU64::new(0),
        max_lock_wait: spec.file.timeouts.max_lock_wait,
    }
}

/// The target's pool when the state store is the same PostgreSQL database
/// (the same url): a chunk's writes and its checkpoint then commit in one
/// transaction.
fn atomic_pool(
    spec: &Spec,
    db: &Database,
    state: Option<&StateStore>,
) -> Option<crate::backend::Atomic> {
    state
        .filter(|state| *state.url() == spec.source_url)
        .and_then(|_| db.pools().atomic())
}

/// The spec's throttle, watching its signals and (with `control`) the
/// run's control requests until the returned [`Watching`] is dropped.
pub(crate) fn start_throttle(
    spec: &Spec,
    db: &Database,
    progress: Arc<Progress>,
    max_runtime: Option<Duration>,
    control: Option<ControlSource>,
) -> Result<(Arc<Throttle>, Watching), RunError> {
    let signals = Signals::of(spec, db)?;
    let throttle = Arc::new(Throttle::new(spec, progress, max_runtime));
    let watching = throttle.watch(signals, control);
    Ok((throttle, watching))
}

/// The controller of a process working on `run`: the spec's throttle
/// (rate, chunk sizes, windows, health signals, Ctrl-C through `progress`,
/// `max_runtime`), with `session` the run's control too. The session is
/// recorded on the run first, so that `refill status` lists it and `refill
/// pause`, `resume` and `abort` reach it; the monitor reports its phase
/// there. Without a session (a retry or rollback that does not write),
/// nothing is recorded and only the signals are watched. Runs, retries and
/// rollbacks all go through here; workers share their pace first (see
/// [`worker`]).
pub(crate) async fn steer(
    spec: &Spec,
    db: &Database,
    state: &StateStore,
    run: &RunRecord,
    session: Option<&SessionRecord>,
    progress: &Arc<Progress>,
    max_runtime: Option<Duration>,
) -> Result<(Arc<Throttle>, Watching), RunError> {
    progress.set_run(&run.run_id, &run.name);
    let control = match session {
        Some(session) => {
            let session = SessionRecord {
                run_id: run.run_id.clone(),
                ..session.clone()
            };
            state.start_session(&session).await?;
            Some(ControlSource {
                state: state.clone(),
                run_id: run.run_id.clone(),
                session_id: session.session_id,
            })
        }
        None => None,
    };
    see_health(spec, db).await?;
    start_throttle(spec, db, progress.clone(), max_runtime, control)
}

/// Starts a command that follows a run and writes to it (retry,
/// rollback): with `execute`, it answers an abort that stopped an earlier
/// one and ends the sessions of processes killed before they could end
/// them (this one holds the run's lock); then it is steered like a run.
pub(crate) async fn take_over(
    spec: &Spec,
    db: &Database,
    state: &StateStore,
    run: &RunRecord,
    session: Option<&SessionRecord>,
    progress: &Arc<Progress>,
    execute: bool,
) -> Result<(Arc<Throttle>, Watching), RunError> {
    if execute {
        clear_abort(state, &run.run_id).await?;
        end_lost_sessions(state, run).await?;
    }
    steer(spec, db, state, run, session, progress, None).await
}

/// Refuses `spec` for `run` when the run read or wrote other tables or
/// columns than it describes; `what` says what to do instead ("retry it").
pub(crate) fn same_data(spec: &Spec, run: &RunRecord, what: &str) -> Result<(), RunError> {
    if run.data_hash == spec.data_hash() {
        return Ok(());
    }
    Err(RunError::WrongSpec(format!(
        "run {} read and wrote other tables or columns than {} describes; {what} with the spec it ran",
        run.run_id,
        spec.path.display()
    )))
}

/// Refuses a health indicator the role cannot see, as `plan` does: a
/// retry, a rollback or a worker may connect as another role than the
/// plan did. A default one it cannot see is logged.
pub(crate) async fn see_health(spec: &Spec, db: &Database) -> Result<(), RunError> {
    if let Some(warning) = crate::plan::check_health(spec, db).await? {
        tracing::warn!(%warning, "A health indicator is partly blind.");
    }
    Ok(())
}

/// How a session ended, in the word recorded with it: `done`, `failed`, or
/// why it stopped on request (`aborted`, `interrupted`, `max-runtime`).
pub(crate) fn session_outcome(failed: bool, stop: Option<&Stop>) -> SessionOutcome {
    match (failed, stop) {
        (true, _) => SessionOutcome::Failed,
        (false, Some(Stop::Aborted { .. })) => SessionOutcome::Aborted,
        (false, Some(Stop::Interrupted)) => SessionOutcome::Interrupted,
        (false, Some(Stop::MaxRuntime(_))) => SessionOutcome::MaxRuntime,
        (false, Some(Stop::Critical { .. })) => SessionOutcome::Critical,
        (false, None) => SessionOutcome::Done,
    }
}

/// The retry policy a spec asks for.
pub fn policy(spec: &Spec) -> backoff::Policy {
    backoff::Policy {
        attempts: spec.file.retry.attempts,
        max_delay: Duration::from_millis(spec.file.retry.max_delay_ms),
        ..backoff::Policy::default()
    }
}

/// What `run` checked and connected before a session starts.
struct Prepared {
    started: Instant,
    runner: Arc<Runner>,
    db: Database,
    plan: Plan,
    state: StateStore,
}

/// The chunks an earlier session left in flight, to redo first; counts
/// the rows earlier sessions finished in `progress`, and the rows this
/// session is to reach (all in scope, or `limit` more).
fn pick_up(
    progress: &Progress,
    run: &RunRecord,
    chunks: &[crate::state::ChunkRecord],
    limit: Option<u64>,
) -> Vec<Chunk> {
    let done = chunks.iter().filter(|c| c.status == ChunkStatus::Done);
    let done_rows: u64 = done.clone().map(|c| c.counts.rows).sum();
    let done_failed: u64 = done.map(|c| c.counts.failed).sum();
    let pending: Vec<Chunk> = chunks
        .iter()
        .filter(|c| c.status == ChunkStatus::Pending)
        .map(|c| c.chunk())
        .collect();
    if !pending.is_empty() {
        info!(
            chunks = pending.len(),
            "Redoing chunks that were in flight when the last session stopped."
        );
    }
    let scope_rows = run.rows_in_scope.max(done_rows);
    let target_rows = limit.map_or(scope_rows, |limit| (done_rows + limit).min(scope_rows));
    progress.total_rows.store(target_rows, Ordering::Relaxed);
    progress.start_at(done_rows);
    progress.failed_rows.store(done_failed, Ordering::Relaxed);
    pending
}

/// Where a session with `--until-key` stops reading: the last key in
/// scope at or before it, as the session's high-watermark, and the key
/// asked for when that stops it before the run's end.
async fn until_key(
    db: &Database,
    plan: &Plan,
    run: &RunRecord,
    until_key: Option<&str>,
) -> Result<(Option<Key>, Option<Key>), RunError> {
    let mut high_watermark = run.high_watermark.clone();
    let mut until = None;
    if let (Some(text), Some(hwm)) = (until_key, &run.high_watermark) {
        let key = Key::decode(text, run.key_type).ok_or_else(|| {
            RunError::Usage(format!(
                "--until-key {text:?} is not an {} key",
                run.key_type
            ))
        })?;
        let bound = db
            .last_key_within(&plan.layout, &key, hwm)
            .await
            .map_err(|source| RunError::Read {
                chunk: "--until-key".into(),
                source,
            })?;
        if bound.as_ref() != Some(hwm) {
            high_watermark = bound;
            until = Some(key);
        }
    }
    Ok((high_watermark, until))
}

/// How a session's pipeline ended, as the run's status, its message, the
/// failure to report and the stop that ended it.
#[expect(clippy::type_complexity, reason = "four parts of one ending")]
fn ending(
    outcome: Result<Ended, RunError>,
    until: Option<&Key>,
    limit: Option<u64>,
) -> Result<(RunStatus, Option<String>, Option<String>, Option<Stop>), RunError> {
    let mut stop = None;
    let (status, message, failure) = match outcome {
        Ok(Ended::Done) => match until {
            None => (RunStatus::Done, None, None),
            Some(key) => (
                RunStatus::Incomplete,
                Some(format!("stopped at --until-key {key}")),
                None,
            ),
        },
        Ok(Ended::Limit) => (
            RunStatus::Incomplete,
            Some(format!("stopped after --limit {}", limit.unwrap_or(0))),
            None,
        ),
        Ok(Ended::Stopped(why)) => {
            let status = match why {
                Stop::Aborted { .. } => RunStatus::Aborted,
                Stop::Interrupted | Stop::MaxRuntime(_) | Stop::Critical { .. } => {
                    RunStatus::Incomplete
                }
            };
            let message = format!("{why}; the next `refill run` resumes it");
            stop = Some(why);
            (status, Some(message), None)
        }
        // Only workers' feeds end this way.
        Ok(Ended::Left { status, .. }) => {
            return Err(RunError::Internal(format!(
                "the run's status changed to {status} under its own process"
            )));
        }
        Err(error) => (
            RunStatus::Failed,
            Some(error.to_string()),
            Some(error.to_string()),
        ),
    };
    Ok((status, message, failure, stop))
}

// Longer than 100 lines: the steps of a session in order (open or resume the run, steer, run the pipeline, record how it ended), each a call.
async fn run_session(
    spec: &Spec,
    options: &RunOptions,
    progress: Arc<Progress>,
    prepared: Prepared,
    session: SessionRecord,
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
        resumable(&state, spec, &runner, options, false).await?
    } else {
        None
    };
    let resumed = previous.is_some();
    let run = match previous {
        Some(run) => {
            // Refused before the run is touched: it stays as it was.
            refuse_changed_lookups(&state, &run, &plan.lookups).await?;
            reopen(&state, &run).await?;
            run
        }
        None => {
            let run = new_run(spec, &runner, &plan, mode);
            state.create_run(&run).await?;
            record_lookups(&state, &run, &plan.lookups).await?;
            run
        }
    };

    let env = guest_env(Some(&state), spec.name(), runner.digest()).await?;
    let chunks = state.chunks(&run).await?;
    let pending = pick_up(&progress, &run, &chunks, options.limit);
    let (high_watermark, until) = until_key(&db, &plan, &run, options.until_key.as_deref()).await?;
    let feed = Feed::Ranges {
        known: pending,
        next: Some(
            chunks
                .last()
                .map_or((1, None), |c| (c.chunk_id + 1, Some(c.hi.clone()))),
        ),
        high_watermark,
        limit: options.limit,
    };
    let (throttle, watching) = steer(
        spec,
        &db,
        &state,
        &run,
        Some(&session),
        &progress,
        options.max_runtime,
    )
    .await?;
    // A locked (execute) session's heartbeat is kept by `with_lock`.
    let dry_heartbeat = (!options.execute).then(|| heartbeat(&state, &session.session_id));
    let ctx = Arc::new(context(
        spec,
        Purpose::Run {
            execute: options.execute,
            session_id: session.session_id.clone(),
        },
        &run.run_id,
        db,
        Some(state.clone()),
        plan.layout.clone(),
        runner,
        plan::setup(spec, env, plan.lookups.clone()),
        progress,
        throttle,
    ));
    let span = info_span!("run", run = %run.run_id);
    let outcome = pipeline::execute(ctx.clone(), feed, spec.concurrency())
        .instrument(span)
        .await;
    drop(watching);
    if let Some(beat) = dry_heartbeat {
        beat.abort();
    }

    let (status, message, failure, stop) = ending(outcome, until.as_ref(), options.limit)?;
    state
        .set_run_status(&run.run_id, status, message.as_deref())
        .await?;
    state
        .end_session(&session.session_id, status.into())
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
        diffs: samples.diffs,
        failure,
        stop,
        warnings,
    })
}
