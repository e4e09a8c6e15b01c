//! The chunk pipeline shared by runs, retries and verifications: consumes a
//! [`Feed`] of chunks (key ranges, or lists of keys), produces for each the
//! transform's outcomes, checked against the target columns, and then, by
//! [`Purpose`]: guarded writes with before-images and conflict handling,
//! checkpoints with dead letters, dead-letter resolutions, or comparisons.
//!
//! One reader feeds `concurrency` workers through a one-chunk queue, so the
//! next chunk is read while earlier ones are transformed and written. Each
//! worker owns a transform instance. Transient database errors are retried
//! with backoff; a batch that traps is split until the rows that cause the
//! trap stand alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::{Diff, ErrorGroup, Example, Progress, RunError};
use crate::backoff::{self, Policy};
use crate::chunk::{Chunk, Key};
use crate::sink::{self, Guard, Update, Written};
use crate::source::{ChunkRows, Database, Layout};
use crate::spec::ErrorsSpec;
use crate::state::{
    Claim, Counts, DeadLetter, Deferred, FailureKind, ImageRef, Lease, Resolution, RunStatus,
    StateStore, Timings, Workers,
};
use crate::throttle::{Stop, Throttle};
use crate::transform::bindings::refill::transform::host::Level;
use crate::transform::{Instance, Isolated, Runner, Setup, TransformError, Trapped, run_isolating};
use crate::value::{self, Outcome, Row, Value};

/// How many top-level batches in a row may fail entirely by trapping before
/// the run stops: a transform that traps on every row would otherwise
/// isolate, row by row, the whole table.
pub(crate) const MAX_TRAPPED_BATCHES: u32 = 3;
/// Diffs kept for the report.
const SAMPLE_DIFFS: usize = 10;
/// Error messages shown in the report.
pub(crate) const SAMPLE_GROUPS: usize = 10;
/// Distinct error messages counted; the rest are counted together.
const MAX_ERROR_GROUPS: usize = 1_000;
/// The group past `MAX_ERROR_GROUPS`.
const OTHER_ERRORS: &str = "(other messages)";
/// Example keys kept per error message.
const GROUP_KEYS: usize = 3;
/// Keys a verification lists.
const LISTED_KEYS: usize = 1_000;
/// Rows read before the error rate counts.
const RATE_FLOOR: u64 = 1_000;

/// What the pipeline is for.
pub(crate) enum Purpose {
    /// A run: transforms every chunk and checkpoints it with its dead
    /// letters; with `execute`, writes first.
    Run {
        /// Write to the target.
        execute: bool,
        /// The session recording chunks as they start.
        session_id: String,
    },
    /// A retry of a run's dead letters: resolves those that now succeed.
    Retry {
        /// Write to the target.
        execute: bool,
        /// The retry's id, recorded on the dead letters it resolves.
        retry_id: String,
    },
    /// A verification: recomputes and compares, writes nothing.
    Verify {
        /// The run's unresolved dead letters, reported apart.
        dead: HashSet<Key>,
    },
}

impl Purpose {
    fn writes(&self) -> bool {
        matches!(
            self,
            Purpose::Run { execute: true, .. } | Purpose::Retry { execute: true, .. }
        )
    }
}

/// Everything the workers share.
pub(crate) struct Context {
    /// What the chunks are for.
    pub purpose: Purpose,
    /// The run the chunks belong to (empty for a verification of a spec).
    pub run_id: String,
    /// The source and target database.
    pub db: Database,
    /// The state store, if there is one.
    pub state: Option<StateStore>,
    /// What is read and written.
    pub layout: Layout,
    /// The transform.
    pub runner: Arc<Runner>,
    /// Its configuration, clock and seed, and lookup tables.
    pub setup: Arc<Setup>,
    /// Rows per call into the transform.
    pub batch_rows: usize,
    /// Bytes of input values per call into the transform.
    pub batch_bytes: u64,
    /// Bytes of values a chunk read may hold (`[chunk] max_bytes`).
    pub chunk_bytes: u64,
    /// The bytes per row of the latest chunk read, 0 before the first:
    /// what sizes the next read's row limit to its byte bound.
    pub row_bytes: AtomicU64,
    /// Patience with transient database errors.
    pub policy: Policy,
    /// Attempts at rows that keep changing meanwhile.
    pub conflict_attempts: u32,
    /// Whether writes are conditional on the inputs being unchanged.
    pub conditional: bool,
    /// The error budget (runs only).
    pub budget: ErrorsSpec,
    /// Live counters.
    pub progress: Arc<Progress>,
    /// Set to stop reading and taking chunks.
    pub stop: AtomicBool,
    /// Top-level batches in a row that failed entirely by trapping.
    pub trapped_batches: AtomicU32,
    /// Samples and tallies for the report.
    pub samples: Mutex<Samples>,
    /// The pace, the pauses and the stops.
    pub throttle: Arc<Throttle>,
    /// Why a worker left a chunk it was handed, if one did.
    pub abandoned: Mutex<Option<Stop>>,
    /// Signalled whenever a worker finishes a chunk: a reader whose claim
    /// found the run at its concurrency, or every chunk left held, asks
    /// again at once.
    pub chunk_finished: tokio::sync::Notify,
    /// When the state store is the target's PostgreSQL database: its pool,
    /// on which a run's chunk writes and checkpoint commit in one
    /// transaction.
    pub atomic: Option<crate::backend::Atomic>,
    /// Rows another transaction held locked, waiting for their next try.
    pub deferred: Mutex<Vec<Pending>>,
    /// Chunks handed to workers and not finished yet.
    pub in_flight: AtomicU64,
    /// How long a locked row is tried again before it becomes a dead
    /// letter.
    pub max_lock_wait: std::time::Duration,
}

/// A deferred row waiting for its next try.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    /// The row, as recorded.
    pub row: Deferred,
    /// Its chunk.
    pub chunk: Chunk,
    /// When it was first found locked, on this process's clock.
    pub since: Instant,
    /// When to try it again.
    pub due: Instant,
}

/// The wait before trying a locked row again after `attempts` tries:
/// doubling from a quarter second up to 5 s, with jitter, so that a row
/// the application holds briefly is written soon and one held for long
/// costs a read every few seconds.
pub(crate) fn lock_backoff(attempts: u64) -> std::time::Duration {
    let base = 250_u64.saturating_mul(1 << attempts.min(5)).min(5_000);
    std::time::Duration::from_millis(base / 2 + fastrand::u64(0..=base / 2))
}

impl Context {
    /// Queues rows found locked for another try.
    fn defer(&self, chunk: &Chunk, rows: Vec<(Deferred, Instant)>) {
        if rows.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut queue = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        for (row, since) in rows {
            let due = now + lock_backoff(row.attempts);
            queue.push(Pending {
                row,
                chunk: chunk.clone(),
                since,
                due,
            });
        }
    }

    /// Takes the deferred rows due now, grouped by chunk; and when the
    /// next one is due, if any wait.
    fn take_due(&self) -> (Vec<(Chunk, Vec<Pending>)>, Option<Instant>) {
        let now = Instant::now();
        let mut queue = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        let (due, later): (Vec<Pending>, Vec<Pending>) =
            queue.drain(..).partition(|p| p.due <= now);
        let next = later.iter().map(|p| p.due).min();
        *queue = later;
        let mut groups: BTreeMap<u64, (Chunk, Vec<Pending>)> = BTreeMap::new();
        for p in due {
            groups
                .entry(p.chunk.id)
                .or_insert_with(|| (p.chunk.clone(), Vec::new()))
                .1
                .push(p);
        }
        (groups.into_values().collect(), next)
    }
}

/// How a feed ended without an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Read to its end, every chunk done.
    Done,
    /// `--limit` reached.
    Limit,
    /// Stopped on request (abort, Ctrl-C, `--max-runtime`); chunks in
    /// flight were finished or left for a later session.
    Stopped(Stop),
    /// A worker's run was ended elsewhere (aborted, abandoned, failed):
    /// its status, and why when this worker's claim ended it.
    Left {
        /// Where the run stands.
        status: RunStatus,
        /// Why.
        message: Option<String>,
    },
}

impl Context {
    fn state(&self) -> Result<&StateStore, RunError> {
        self.state
            .as_ref()
            .ok_or_else(|| RunError::Internal("this purpose needs a state store".into()))
    }
}

/// Samples and tallies gathered across chunks.
#[derive(Default)]
pub(crate) struct Samples {
    /// Before → after samples, from the lowest chunks.
    pub diffs: Vec<Diff>,
    /// Failed rows by message.
    pub groups: BTreeMap<String, ErrorGroup>,
    /// Counts of this session.
    pub session: Counts,
    /// Chunks finished by this session.
    pub chunks: u64,
    /// Verification: chunks whose checksums differed.
    pub differing_chunks: u64,
    /// Verification: the keys that differ, with their chunk.
    pub differing_keys: Vec<(u64, Key)>,
    /// Verification: failed rows that are dead letters.
    pub dead_lettered: u64,
    /// Verification: failed keys that are not dead letters, with their
    /// chunk.
    pub failed_keys: Vec<(u64, Key)>,
    /// Retry: rows no longer in scope.
    pub gone: u64,
    /// Retry: rows the transform skipped.
    pub skipped: u64,
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
    pub fn top_groups(&self) -> Vec<(String, ErrorGroup)> {
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

/// Where the chunks come from.
pub(crate) enum Feed {
    /// Key ranges: `known` chunks first (re-read by their exact range),
    /// then, if `next` is set, new keyset chunks after its cursor up to
    /// `high_watermark`, numbered from its id.
    Ranges {
        /// Chunks with known ranges.
        known: Vec<Chunk>,
        /// The next chunk's id and the key it starts after.
        next: Option<(u64, Option<Key>)>,
        /// The last key to read.
        high_watermark: Option<Key>,
        /// Stop after this many rows.
        limit: Option<u64>,
    },
    /// Lists of keys, each with the chunk they belong to.
    Keys(Vec<(Chunk, Vec<Key>)>),
    /// Chunks claimed one at a time from a run planned for workers, each
    /// under a lease of this length.
    Claims {
        /// The store that hands out the claims.
        workers: Workers,
        /// How long a claim holds without renewal.
        lease: std::time::Duration,
        /// How long to wait before asking again when nothing is free.
        poll: std::time::Duration,
    },
}

/// A chunk read, on its way to a worker.
struct Work {
    chunk: Chunk,
    rows: ChunkRows,
    read_ms: u64,
    retries: u64,
    /// For key lists: the keys asked for (some may be gone).
    asked: Vec<Key>,
    /// For claimed chunks: the claim.
    lease: Option<Lease>,
    /// For deferred rows tried again: the rows, as `asked`.
    retrying: Vec<Pending>,
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs the feed through `concurrency` workers. Returns how it ended.
pub(crate) async fn execute(
    ctx: Arc<Context>,
    feed: Feed,
    concurrency: u32,
) -> Result<Ended, RunError> {
    let (tx, rx) = mpsc::channel::<Work>(1);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let ctx = ctx.clone();
        let rx = rx.clone();
        workers.push(tokio::spawn(
            async move { worker(ctx, rx).await }.in_current_span(),
        ));
    }
    drop(rx);
    let read_result = read_all(&ctx, feed, tx).await;
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
    let abandoned = ctx
        .abandoned
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    match (read_result, worker_error, abandoned) {
        (_, Some(e), _) | (Err(e), None, _) => Err(e),
        // Read to the end, but a worker left its chunk: not done.
        (Ok(Ended::Done | Ended::Limit), None, Some(stop)) => Ok(Ended::Stopped(stop)),
        (Ok(ended), None, _) => Ok(ended),
    }
}

/// Reads the feed's chunks in order, each when the throttle admits it,
/// and hands them on. Returns how the feed ended (an error in a worker
/// ends it too: the caller reports that error).
async fn read_all(
    ctx: &Arc<Context>,
    feed: Feed,
    tx: mpsc::Sender<Work>,
) -> Result<Ended, RunError> {
    // Workers retry only the rows they deferred themselves: another live
    // worker may be retrying the rest.
    if matches!(ctx.purpose, Purpose::Run { execute: true, .. })
        && !matches!(feed, Feed::Claims { .. })
    {
        load_deferred(ctx).await?;
    }
    let ended = read_feed(ctx, feed, &tx).await?;
    match ended {
        Ended::Done if !ctx.stop.load(Ordering::Relaxed) => drain_deferred(ctx, &tx).await,
        other => Ok(other),
    }
}

/// Queues the deferred rows a run recorded in an earlier session (or
/// another worker left), to be tried again now.
async fn load_deferred(ctx: &Arc<Context>) -> Result<(), RunError> {
    let state = ctx.state()?;
    let checkpoint = |source| RunError::Checkpoint {
        chunk: format!("run {}", ctx.run_id),
        source,
    };
    let stored = state
        .deferred(&ctx.run_id, ctx.layout.key_type)
        .await
        .map_err(checkpoint)?;
    if stored.is_empty() {
        return Ok(());
    }
    let chunks: HashMap<u64, Chunk> = match state.find_run(&ctx.run_id).await.map_err(checkpoint)? {
        Some(run) => state
            .chunks(&run)
            .await
            .map_err(checkpoint)?
            .iter()
            .filter(|c| c.status == crate::state::ChunkStatus::Done)
            .map(|c| (c.chunk_id, c.chunk()))
            .collect(),
        None => HashMap::new(),
    };
    let now = Instant::now();
    let mut queue = ctx.deferred.lock().unwrap_or_else(|e| e.into_inner());
    for row in stored {
        // A chunk not done is redone whole, its deferred rows with it.
        let Some(chunk) = chunks.get(&row.chunk_id) else {
            continue;
        };
        let held = crate::state::parse_time(&row.first_seen_at)
            .and_then(|t| (chrono::Utc::now() - t).to_std().ok())
            .unwrap_or_default();
        queue.push(Pending {
            chunk: chunk.clone(),
            since: now.checked_sub(held).unwrap_or(now),
            due: now,
            row,
        });
    }
    info!(
        rows = queue.len(),
        "Trying again the rows an earlier session found locked."
    );
    Ok(())
}

/// Hands on the deferred rows that are due, read again by key. Returns
/// false if no worker is left to take them.
async fn offer_deferred(ctx: &Arc<Context>, tx: &mpsc::Sender<Work>) -> Result<bool, RunError> {
    let (groups, _) = ctx.take_due();
    for (chunk, retrying) in groups {
        let keys: Vec<Key> = retrying.iter().map(|p| p.row.key.clone()).collect();
        let started = Instant::now();
        let counter = AtomicU64::new(0);
        let tokens = ctx.conditional;
        let rows = backoff::retry(&ctx.policy, "reading locked rows again", &counter, || {
            ctx.db.read_keys(&ctx.layout, &keys, tokens)
        })
        .await
        .map_err(|source| RunError::Read {
            chunk: chunk.to_string(),
            source,
        })?;
        let work = Work {
            chunk,
            rows,
            read_ms: millis(started.elapsed()),
            retries: counter.into_inner(),
            asked: keys,
            lease: None,
            retrying,
        };
        if !send(ctx, tx, work).await {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Once the feed is read: tries the deferred rows again, as they come
/// due, until none is left and no chunk in flight can defer more.
async fn drain_deferred(ctx: &Arc<Context>, tx: &mpsc::Sender<Work>) -> Result<Ended, RunError> {
    loop {
        if ctx.stop.load(Ordering::Relaxed) {
            return Ok(Ended::Done);
        }
        if let Err(stop) = ctx.throttle.admit(None).await {
            return Ok(Ended::Stopped(stop));
        }
        if !offer_deferred(ctx, tx).await? {
            return Ok(Ended::Done);
        }
        let (_, next) = {
            let queue = ctx.deferred.lock().unwrap_or_else(|e| e.into_inner());
            (queue.len(), queue.iter().map(|p| p.due).min())
        };
        let in_flight = ctx.in_flight.load(Ordering::SeqCst);
        match next {
            None if in_flight == 0 => return Ok(Ended::Done),
            None => ctx.chunk_finished.notified().await,
            Some(due) => {
                tokio::select! {
                    () = ctx.chunk_finished.notified() => {}
                    () = tokio::time::sleep_until(due.into()) => {}
                }
            }
        }
    }
}

/// Sends work to the workers, counting it in flight. Returns false if no
/// worker is left to take it.
async fn send(ctx: &Context, tx: &mpsc::Sender<Work>, work: Work) -> bool {
    ctx.in_flight.fetch_add(1, Ordering::SeqCst);
    if tx.send(work).await.is_err() {
        ctx.in_flight.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    true
}

/// Reads the feed's chunks in order (see [`read_all`]).
async fn read_feed(
    ctx: &Arc<Context>,
    feed: Feed,
    tx: &mpsc::Sender<Work>,
) -> Result<Ended, RunError> {
    let tokens = ctx.purpose.writes() && ctx.conditional;
    match feed {
        Feed::Claims {
            workers,
            lease,
            poll,
        } => read_claims(ctx, &workers, lease, poll, tokens, tx).await,
        Feed::Keys(groups) => read_key_groups(ctx, groups, tokens, tx).await,
        Feed::Ranges {
            known,
            next,
            high_watermark,
            limit,
        } => read_ranges(ctx, known, next, high_watermark, limit, tokens, tx).await,
    }
}

/// Claims chunks from the shared store and reads each, until none is left
/// (a worker's feed).
async fn read_claims(
    ctx: &Arc<Context>,
    state: &Workers,
    lease: std::time::Duration,
    poll: std::time::Duration,
    tokens: bool,
    tx: &mpsc::Sender<Work>,
) -> Result<Ended, RunError> {
    let failed = || ctx.stop.load(Ordering::Relaxed);
    let throttle = &ctx.throttle;
    let session_id = match &ctx.purpose {
        Purpose::Run { session_id, .. } => session_id.as_str(),
        _ => return Err(RunError::Internal("only runs claim chunks".into())),
    };
    let mut limit = None;
    let mut ahead = None;
    loop {
        if failed() {
            return Ok(Ended::Done);
        }
        if !offer_deferred(ctx, tx).await? {
            return Ok(Ended::Done);
        }
        if let Err(stop) = throttle.admit(None).await {
            return Ok(Ended::Stopped(stop));
        }
        let counter = AtomicU64::new(0);
        let prefer = ahead.as_ref().map(|a: &ReadAhead| a.chunk.id);
        let claim = backoff::retry(&ctx.policy, "claiming a chunk", &counter, || {
            state.claim(&ctx.run_id, ctx.layout.key_type, session_id, lease, prefer)
        })
        .await
        .map_err(|source| RunError::Checkpoint {
            chunk: format!("run {}", ctx.run_id),
            source,
        })?;
        let lease = match claim {
            Claim::Got(lease) => lease,
            Claim::Finished => return Ok(Ended::Done),
            Claim::Stopped { status, message } => {
                return Ok(Ended::Left { status, message });
            }
            // The run is at its concurrency: this process's own
            // chunks are most likely what holds it there, so ask
            // again as soon as one of them is done (or after a
            // short while, for the other workers' chunks). Meanwhile
            // the chunk likely to come next is read, as a single
            // process reads its next chunk while the others are
            // written. Rows read ahead that grew stale are read
            // again.
            Claim::Busy => {
                if ahead.as_ref().is_none_or(|a| !a.fresh()) {
                    ahead = read_ahead(ctx, state, tokens).await;
                }
                tokio::select! {
                    () = ctx.chunk_finished.notified() => {}
                    () = tokio::time::sleep(poll.min(BUSY_POLL)) => {}
                }
                continue;
            }
            // Every chunk left is held: polling the shared store is
            // the only way to learn that a lease expired. When this
            // process holds some of them, the run may end with its
            // own last chunk: ask again as soon as one is done.
            Claim::Waiting => {
                tokio::select! {
                    () = ctx.chunk_finished.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                }
                continue;
            }
        };
        let chunk = lease.chunk.clone();
        // Rows read ahead count only for the chunk they were read for, not
        // taken over (such a chunk is read as the worker before left it),
        // and only while fresh, as rows held before a pause are.
        let ahead = ahead
            .take()
            .filter(|a| a.chunk == chunk && lease.taken_from.is_none() && a.fresh());
        match &lease.taken_from {
            Some(from) => info!(
                chunk = chunk.id,
                attempt = lease.attempt,
                from = %from,
                "Took over a chunk whose lease expired."
            ),
            None => debug!(
                chunk = chunk.id,
                read_ahead = ahead.is_some(),
                "Claimed a chunk."
            ),
        }
        if let Some(end) = pass_on(
            ctx,
            chunk,
            tokens,
            counter,
            &mut limit,
            Some(lease),
            ahead,
            tx,
        )
        .await?
        {
            return Ok(end);
        }
    }
}

/// A chunk of a run planned for workers, read before it was claimed.
struct ReadAhead {
    chunk: Chunk,
    rows: ChunkRows,
    /// When its read began: what its rows are as of.
    started: Instant,
    read_ms: u64,
}

impl ReadAhead {
    /// Whether its rows are recent enough to be handed on: read within
    /// [`REREAD_AFTER`].
    fn fresh(&self) -> bool {
        self.started.elapsed() <= REREAD_AFTER
    }
}

/// Reads the chunk the next claim most likely hands out (the lowest
/// unclaimed, which that claim then prefers), without claiming it. Nothing
/// is written on the strength of it: the rows are handed on only if the
/// claim then gives this worker that very chunk, and, like any chunk's
/// rows, written (with `conditional = true`) only where the guard finds
/// them unchanged. Several waiting workers may read the same chunk; all
/// but the one that claims it drop their rows. A failure only loses the
/// head start; the chunk is read again once claimed.
async fn read_ahead(ctx: &Context, state: &Workers, tokens: bool) -> Option<ReadAhead> {
    let chunk = match state.next_unclaimed(&ctx.run_id, ctx.layout.key_type).await {
        Ok(chunk) => chunk?,
        Err(error) => {
            debug!(%error, "Could not look at the next chunk; it is read once claimed.");
            return None;
        }
    };
    let started = Instant::now();
    match ctx
        .db
        .read(&ctx.layout, chunk.lo.as_ref(), &chunk.hi, None, tokens)
        .await
    {
        Ok(rows) => Some(ReadAhead {
            chunk,
            rows,
            started,
            read_ms: millis(started.elapsed()),
        }),
        Err(error) => {
            debug!(chunk = chunk.id, %error, "Could not read the next chunk ahead; it is read once claimed.");
            None
        }
    }
}

/// Reads rows by key, a group per chunk (a retry's or a verify's feed of
/// dead letters).
async fn read_key_groups(
    ctx: &Arc<Context>,
    groups: Vec<(Chunk, Vec<Key>)>,
    tokens: bool,
    tx: &mpsc::Sender<Work>,
) -> Result<Ended, RunError> {
    let failed = || ctx.stop.load(Ordering::Relaxed);
    let throttle = &ctx.throttle;
    for (chunk, keys) in groups {
        if failed() {
            return Ok(Ended::Done);
        }
        if let Err(stop) = throttle.admit(None).await {
            return Ok(Ended::Stopped(stop));
        }
        let started = Instant::now();
        let counter = AtomicU64::new(0);
        let rows = backoff::retry(&ctx.policy, "reading rows by key", &counter, || {
            ctx.db.read_keys(&ctx.layout, &keys, tokens)
        })
        .await
        .map_err(|source| RunError::Read {
            chunk: chunk.to_string(),
            source,
        })?;
        let read_ms = millis(started.elapsed());
        if let Err(stop) = throttle.pace(rows.len() as u64).await {
            return Ok(Ended::Stopped(stop));
        }
        let work = Work {
            chunk,
            rows,
            read_ms,
            retries: counter.into_inner(),
            asked: keys,
            lease: None,
            retrying: Vec::new(),
        };
        if !send(ctx, tx, work).await {
            return Ok(Ended::Done);
        }
    }
    Ok(Ended::Done)
}

/// Reads the chunks known from an earlier session, then new chunks in key
/// order from `next` up to the high-watermark, each as large as the
/// throttle admits.
async fn read_ranges(
    ctx: &Arc<Context>,
    known: Vec<Chunk>,
    next: Option<(u64, Option<Key>)>,
    high_watermark: Option<Key>,
    mut limit: Option<u64>,
    tokens: bool,
    tx: &mpsc::Sender<Work>,
) -> Result<Ended, RunError> {
    let failed = || ctx.stop.load(Ordering::Relaxed);
    let throttle = &ctx.throttle;
    for chunk in known {
        if failed() {
            return Ok(Ended::Done);
        }
        if limit == Some(0) {
            return Ok(Ended::Limit);
        }
        if let Err(stop) = throttle.admit(None).await {
            return Ok(Ended::Stopped(stop));
        }
        let counter = AtomicU64::new(0);
        if let Some(end) = pass_on(ctx, chunk, tokens, counter, &mut limit, None, None, tx).await? {
            return Ok(end);
        }
    }
    let (Some((mut next_id, mut cursor)), Some(high_watermark)) = (next, high_watermark) else {
        return Ok(Ended::Done);
    };
    loop {
        if failed() {
            return Ok(Ended::Done);
        }
        if limit == Some(0) {
            return Ok(Ended::Limit);
        }
        if !offer_deferred(ctx, tx).await? {
            return Ok(Ended::Done);
        }
        let want = match throttle.admit(limit).await {
            Ok(want) => want,
            Err(stop) => return Ok(Ended::Stopped(stop)),
        };
        let started = Instant::now();
        let counter = AtomicU64::new(0);
        let rows = backoff::retry(&ctx.policy, "reading a chunk", &counter, || {
            read_bounded(ctx, cursor.as_ref(), &high_watermark, want, tokens)
        })
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
            return Ok(Ended::Done);
        };
        // The range ends here unless the read stopped at a bound.
        let short = !rows.cut;
        let chunk = Chunk {
            id: next_id,
            lo: cursor.take(),
            hi: hi.clone(),
        };
        next_id += 1;
        cursor = Some(hi);
        if let Err(stop) = throttle.pace(rows.len() as u64).await {
            return Ok(Ended::Stopped(stop));
        }
        if !hand_on(
            ctx,
            chunk,
            rows,
            millis(started.elapsed()),
            counter.into_inner(),
            &mut limit,
            None,
            tx,
        )
        .await?
        {
            return Ok(Ended::Done);
        }
        if short {
            return Ok(Ended::Done);
        }
    }
}

/// Rows read to learn a table's row size when nothing is known of it yet.
const SAMPLE_ROWS: u64 = 16;

/// Reads the next chunk after `lo`: at most `want` rows and, roughly,
/// [`Context::chunk_bytes`] bytes of values. The row limit sent to the
/// database is sized from the bytes per row of the previous read (the
/// first read samples [`SAMPLE_ROWS`] rows first), so that the database
/// does not send rows beyond the bound only for refill to drop them; a
/// read that meets larger rows than expected still stops at the bound.
/// The result is [`cut`](ChunkRows::cut) when rows may remain in the range.
async fn read_bounded(
    ctx: &Context,
    lo: Option<&Key>,
    hi: &Key,
    want: u64,
    tokens: bool,
) -> Result<ChunkRows, crate::source::SourceError> {
    let max = ctx.chunk_bytes;
    let fit = |rows: u64, per_row: u64, room: u64| rows.min((room / per_row.max(1)).max(1));
    let (db, layout) = (&ctx.db, &ctx.layout);
    let mut rows = match ctx.row_bytes.load(Ordering::Relaxed) {
        0 => {
            let first = want.min(SAMPLE_ROWS);
            let mut rows = db.read_within(layout, lo, hi, first, tokens, max).await?;
            if rows.len() as u64 == first && !rows.cut && first < want {
                let per_row = (rows.bytes / first).max(1);
                let room = max.saturating_sub(rows.bytes).max(1);
                let limit = fit(want - first, per_row, room);
                let last = rows.keys.last().cloned();
                let rest = db
                    .read_within(layout, last.as_ref(), hi, limit, tokens, room)
                    .await?;
                let more = rest.cut || rest.len() as u64 == limit;
                rows.extend(rest);
                rows.cut = more;
            } else {
                rows.cut = rows.cut || rows.len() as u64 == first;
            }
            rows
        }
        per_row => {
            let limit = fit(want, per_row, max);
            let mut rows = db.read_within(layout, lo, hi, limit, tokens, max).await?;
            rows.cut = rows.cut || rows.len() as u64 == limit;
            rows
        }
    };
    if !rows.is_empty() {
        ctx.row_bytes
            .store((rows.bytes / rows.len() as u64).max(1), Ordering::Relaxed);
    }
    if rows.len() as u64 == want {
        // Full: the range goes on, as it always did at `want` rows.
        rows.cut = true;
    }
    Ok(rows)
}

/// Reads a chunk of known range (or takes the rows `ahead` read of it),
/// waits for its rows' turn, and hands it on (see [`hand_on`]). Returns
/// how the feed ends if it must end here; a claimed chunk that cannot
/// start is given back. `retries` counts the chunk's transient errors so
/// far.
#[expect(
    clippy::too_many_arguments,
    reason = "a chunk, how to read it or what was read of it, and where it goes"
)]
async fn pass_on(
    ctx: &Arc<Context>,
    chunk: Chunk,
    tokens: bool,
    retries: AtomicU64,
    limit: &mut Option<u64>,
    lease: Option<Lease>,
    ahead: Option<ReadAhead>,
    tx: &mpsc::Sender<Work>,
) -> Result<Option<Ended>, RunError> {
    let (rows, read_ms) = match ahead {
        Some(ahead) => (ahead.rows, ahead.read_ms),
        None => {
            let started = Instant::now();
            let rows = read_range(ctx, &chunk, tokens, &retries).await?;
            (rows, millis(started.elapsed()))
        }
    };
    if let Err(stop) = ctx.throttle.pace(rows.len() as u64).await {
        if let (Some(lease), Some(state)) = (&lease, &ctx.state) {
            give_back(ctx, state, lease).await;
        }
        return Ok(Some(Ended::Stopped(stop)));
    }
    let retries = retries.into_inner();
    let handed = hand_on(ctx, chunk, rows, read_ms, retries, limit, lease, tx).await?;
    Ok((!handed).then_some(Ended::Done))
}

/// Reads a chunk of known range by its exact bounds, retrying transient
/// errors (counted in `retries`).
async fn read_range(
    ctx: &Context,
    chunk: &Chunk,
    tokens: bool,
    retries: &AtomicU64,
) -> Result<ChunkRows, RunError> {
    backoff::retry(&ctx.policy, "reading a chunk", retries, || {
        ctx.db
            .read(&ctx.layout, chunk.lo.as_ref(), &chunk.hi, None, tokens)
    })
    .await
    .map_err(|source| RunError::Read {
        chunk: chunk.to_string(),
        source,
    })
}

/// Gives a claim back on the way out, so that another worker need not wait
/// for its lease to expire; a failure only delays the takeover.
async fn give_back(ctx: &Context, state: &StateStore, lease: &Lease) {
    // A lease comes only from a store that coordinates workers.
    let given = match state.workers() {
        Ok(workers) => workers.release_lease(&ctx.run_id, lease).await,
        Err(error) => Err(error),
    };
    if let Err(error) = given {
        warn!(chunk = lease.chunk.id, %error, "Could not give a claimed chunk back; it is taken over when its lease expires.");
    }
}

/// Records a range chunk as started (for runs) and sends it to a worker.
/// Returns false if no worker is left to take it.
#[expect(
    clippy::too_many_arguments,
    reason = "a chunk read, with what it took and where it goes"
)]
async fn hand_on(
    ctx: &Arc<Context>,
    chunk: Chunk,
    rows: ChunkRows,
    read_ms: u64,
    mut retries: u64,
    limit: &mut Option<u64>,
    lease: Option<Lease>,
    tx: &mpsc::Sender<Work>,
) -> Result<bool, RunError> {
    // A claimed chunk was recorded as started by its claim.
    if let (Purpose::Run { session_id, .. }, None) = (&ctx.purpose, &lease) {
        let counter = AtomicU64::new(0);
        let state = ctx.state()?;
        backoff::retry(
            &ctx.policy,
            "checkpointing a chunk's start",
            &counter,
            || state.chunk_started(&ctx.run_id, &chunk, session_id),
        )
        .await
        .map_err(|source| RunError::Checkpoint {
            chunk: chunk.to_string(),
            source,
        })?;
        retries += counter.into_inner();
    }
    if let Some(r) = limit.as_mut() {
        *r = r.saturating_sub(rows.len() as u64);
    }
    debug!(chunk = chunk.id, rows = rows.len(), read_ms, "Chunk read.");
    let work = Work {
        chunk,
        rows,
        read_ms,
        retries,
        asked: Vec::new(),
        lease,
        retrying: Vec::new(),
    };
    Ok(send(ctx, tx, work).await)
}

async fn worker(
    ctx: Arc<Context>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Work>>>,
) -> Result<(), RunError> {
    let mut instance: Option<Instance> = None;
    loop {
        let next = rx.lock().await.recv().await;
        let Some(work) = next else { return Ok(()) };
        // However the chunk ends (done, failed, left, or a panic), it is no
        // longer in flight, and a reader waiting for that hears it.
        let _flight = Flight(&ctx);
        if ctx.stop.load(Ordering::Relaxed) {
            // Leave the chunk unfinished: a later run redoes it.
            return Ok(());
        }
        let held = match ctx.throttle.hold().await {
            Ok(held) => held,
            Err(stop) => {
                debug!(chunk = work.chunk.id, %stop, "Leaving a chunk for a later session.");
                if let (Some(lease), Some(state)) = (&work.lease, &ctx.state) {
                    give_back(&ctx, state, lease).await;
                }
                ctx.abandoned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(stop);
                return Ok(());
            }
        };
        let span = info_span!("chunk", chunk = work.chunk.id);
        let result = async {
            // Rows read before a long wait are read again: what they hold
            // now is what gets transformed and guarded.
            let work = if held > REREAD_AFTER {
                reread(&ctx, work).await?
            } else {
                work
            };
            process(&ctx, &mut instance, work).await
        }
        .instrument(span)
        .await;
        ctx.throttle.released();
        if let Err(e) = result {
            ctx.stop.store(true, Ordering::Relaxed);
            error!(error = %e, "Stopping.");
            return Err(e);
        }
    }
}

/// A chunk a worker holds: dropped when the worker is done with it, or
/// unwinds.
struct Flight<'a>(&'a Context);

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop.store(true, Ordering::Relaxed);
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.chunk_finished.notify_one();
    }
}

/// How long a reader whose claim found the run at its concurrency waits
/// at most before asking again.
const BUSY_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// A chunk held back longer than this before its turn is read again; rows
/// a worker read ahead are handed on only within this of their read.
const REREAD_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads a chunk's rows again: a range by its exact bounds, a key list by
/// its keys.
async fn reread(ctx: &Arc<Context>, work: Work) -> Result<Work, RunError> {
    let tokens = ctx.purpose.writes() && ctx.conditional;
    let started = Instant::now();
    let counter = AtomicU64::new(0);
    let chunk = &work.chunk;
    let rows = backoff::retry(&ctx.policy, "reading a chunk again", &counter, || async {
        if work.asked.is_empty() {
            ctx.db
                .read(&ctx.layout, chunk.lo.as_ref(), &chunk.hi, None, tokens)
                .await
        } else {
            ctx.db.read_keys(&ctx.layout, &work.asked, tokens).await
        }
    })
    .await
    .map_err(|source| RunError::Read {
        chunk: chunk.to_string(),
        source,
    })?;
    debug!(rows = rows.len(), "Read the chunk again after waiting.");
    Ok(Work {
        rows,
        read_ms: work.read_ms + millis(started.elapsed()),
        retries: work.retries + counter.into_inner(),
        ..work
    })
}

/// Runs rows through the transform on a blocking thread, batch by batch,
/// isolating the rows that trap. Returns one result per row.
async fn transform(
    ctx: &Arc<Context>,
    chunk: &Chunk,
    instance: &mut Option<Instance>,
    rows: ChunkRows,
) -> Result<(ChunkRows, Vec<Result<Outcome, TransformError>>), RunError> {
    let (returned, rows, results) = {
        let ctx = ctx.clone();
        let mut taken = instance.take();
        let span = tracing::Span::current();
        let chunk = chunk.clone();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let results = if rows.unreadable.iter().all(Option::is_none) {
                transform_rows(&ctx, &chunk, &mut taken, &rows.rows)
            } else {
                // The rows that could not be read fail with why; the
                // others go through the transform.
                let readable: Vec<Row> = rows
                    .rows
                    .iter()
                    .zip(&rows.unreadable)
                    .filter(|(_, why)| why.is_none())
                    .map(|(row, _)| row.clone())
                    .collect();
                transform_rows(&ctx, &chunk, &mut taken, &readable).map(|results| {
                    let mut results = results.into_iter();
                    rows.unreadable
                        .iter()
                        .map(|why| match why {
                            Some(why) => Ok(Outcome::Error(why.clone())),
                            None => results.next().unwrap_or_else(|| {
                                Err(TransformError::Contract(
                                    "fewer results than readable rows".into(),
                                ))
                            }),
                        })
                        .collect()
                })
            };
            (taken, rows, results)
        })
        .await
        .map_err(|e| RunError::Internal(format!("a transform thread panicked: {e}")))?
    };
    *instance = returned;
    Ok((rows, results?))
}

/// The rows' input size in bytes, roughly.
fn size(row: &Row) -> u64 {
    row.values
        .iter()
        .map(|v| match v {
            Value::Text(s) | Value::Json(s) => s.len() as u64,
            Value::Bytes(b) => b.len() as u64,
            _ => 8,
        })
        .sum()
}

fn transform_rows(
    ctx: &Context,
    chunk: &Chunk,
    instance: &mut Option<Instance>,
    rows: &[Row],
) -> Result<Vec<Result<Outcome, TransformError>>, RunError> {
    let mut results = Vec::with_capacity(rows.len());
    let mut start = 0;
    while start < rows.len() {
        // A batch ends at `batch_rows` rows or `batch_bytes` bytes; a huge
        // row travels alone.
        let mut end = start;
        let mut bytes = 0;
        while end < rows.len()
            && end - start < ctx.batch_rows
            && (end == start || bytes + size(&rows[end]) <= ctx.batch_bytes)
        {
            bytes += size(&rows[end]);
            end += 1;
        }
        let batch = &rows[start..end];
        let mut out = Isolated::default();
        run_isolating(&ctx.runner, &ctx.setup, instance, batch, &mut out)?;
        for line in &out.logs {
            guest_log(line.level, &line.message);
        }
        // What a guest said before it trapped on a row (a Python
        // traceback, say), whole, for whoever asks for debug output.
        for result in &out.results {
            if let Err(TransformError::Trap { logs, .. }) = result {
                for line in logs {
                    debug!(target: "refill::guest", trapped = true, "{line}");
                }
            }
        }
        if out.dropped_logs > 0 {
            warn!(
                dropped = out.dropped_logs,
                "The transform logged too much: lines before its last one were dropped."
            );
        }
        let trapped = out
            .results
            .iter()
            .filter(|r| matches!(r, Err(TransformError::Trap { .. })))
            .count();
        let broken = out
            .results
            .iter()
            .filter(|r| matches!(r, Err(TransformError::Contract(_))))
            .count();
        if trapped > 0 {
            warn!(
                rows = trapped,
                traps = out.traps,
                "The transform trapped; the rows that caused it were isolated."
            );
        }
        // A batch that failed whole, row by row, says the transform is
        // broken rather than the rows: several in a row stop the run.
        if trapped + broken == batch.len() {
            if ctx.trapped_batches.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_TRAPPED_BATCHES {
                let source = out
                    .results
                    .into_iter()
                    .find_map(Result::err)
                    .unwrap_or(TransformError::Contract("every row trapped".into()));
                return Err(RunError::TooManyTraps {
                    chunk: chunk.to_string(),
                    source,
                });
            }
        } else {
            ctx.trapped_batches.store(0, Ordering::Relaxed);
        }
        results.extend(out.results);
        start = end;
    }
    Ok(results)
}

fn guest_log(level: Level, message: &str) {
    match level {
        Level::Debug => debug!(target: "refill::guest", "{message}"),
        Level::Info => info!(target: "refill::guest", "{message}"),
        Level::Warn => warn!(target: "refill::guest", "{message}"),
        Level::Error => error!(target: "refill::guest", "{message}"),
    }
}

/// A chunk's outcomes, checked: what to write, the counts, the failures and
/// samples for the report.
#[derive(Clone, Default)]
struct Evaluated {
    updates: Vec<Update>,
    /// The row of `ChunkRows` each update came from.
    sources: Vec<usize>,
    counts: Counts,
    diffs: Vec<Diff>,
    groups: BTreeMap<String, ErrorGroup>,
    dead: Vec<DeadLetter>,
    /// The rows the transform skipped.
    skipped_keys: Vec<Key>,
    /// The rows deleted or out of scope by the time they were written.
    gone_keys: Vec<Key>,
    /// The rows another transaction held locked when they were written.
    busy_keys: Vec<Key>,
    /// Those rows, as recorded with the chunk's checkpoint.
    deferred: Vec<Deferred>,
    /// Checksums of the computed and the current values of rows with an
    /// `update` outcome, for verification.
    expected: Sha256,
    actual: Sha256,
}

impl Evaluated {
    fn fail(
        &mut self,
        chunk: u64,
        key: &Key,
        kind: FailureKind,
        message: String,
        inputs: &[Value],
        digest: &str,
    ) {
        self.counts.failed += 1;
        let group = self.groups.entry(message.clone()).or_default();
        group.count += 1;
        if group.examples.len() < GROUP_KEYS {
            group.examples.push(Example {
                chunk,
                key: key.clone(),
            });
        }
        self.dead.push(DeadLetter::new(
            key.clone(),
            chunk,
            kind,
            message,
            value::fingerprint(inputs),
            digest,
        ));
    }

    /// Adds the evaluation of rows redone after a conflict (their rows were
    /// already counted once).
    fn absorb(&mut self, redo: Evaluated) {
        self.counts.updated += redo.counts.updated;
        self.counts.unchanged += redo.counts.unchanged;
        self.counts.skipped += redo.counts.skipped;
        self.counts.failed += redo.counts.failed;
        for (message, group) in redo.groups {
            let slot = self.groups.entry(message).or_default();
            slot.count += group.count;
            slot.examples.extend(group.examples);
            slot.examples.truncate(GROUP_KEYS);
        }
        self.dead.extend(redo.dead);
        self.skipped_keys.extend(redo.skipped_keys);
        self.gone_keys.extend(redo.gone_keys);
        self.busy_keys.extend(redo.busy_keys);
        self.diffs.extend(redo.diffs);
        self.diffs.truncate(SAMPLE_DIFFS);
    }
}

/// A row's outcome, checked against the output columns.
enum Checked {
    Skip,
    Fail(FailureKind, String),
    /// The transform trapped on the row, run on its own.
    Trap(Trapped, String),
    /// The new values, coerced to the output columns' kinds.
    Values(Vec<Value>),
}

/// Checks outcomes against the output columns, then puts the new values in
/// the form the target stores them in, and turns them into the updates to
/// write, the chunk's counts, failures and samples.
async fn assess(
    ctx: &Context,
    chunk: &Chunk,
    rows: &ChunkRows,
    results: Vec<Result<Outcome, TransformError>>,
    checksums: bool,
) -> Result<Evaluated, RunError> {
    let mut checked: Vec<Checked> = results
        .into_iter()
        .enumerate()
        .map(|(i, result)| match result {
            Ok(Outcome::Skip) => Checked::Skip,
            Ok(Outcome::Error(message)) if rows.unreadable[i].is_some() => {
                Checked::Fail(FailureKind::Unreadable, message)
            }
            Ok(Outcome::Error(message)) => Checked::Fail(FailureKind::Error, message),
            Err(error) => {
                let message = format!("{error} (the row was run on its own)");
                match error.trapped() {
                    Some(trap) => Checked::Trap(trap, message),
                    None => Checked::Fail(FailureKind::Contract, message),
                }
            }
            Ok(Outcome::Update(values)) => {
                match check_update(
                    &ctx.layout,
                    &rows.keys[i],
                    values,
                    rows.current[i].is_some(),
                ) {
                    Ok(values) => Checked::Values(values),
                    Err(message) => Checked::Fail(FailureKind::Output, message),
                }
            }
        })
        .collect();
    let computed: Vec<&[Value]> = checked
        .iter()
        .filter_map(|c| match c {
            Checked::Values(v) => Some(v.as_slice()),
            _ => None,
        })
        .collect();
    let retries = AtomicU64::new(0);
    let stored = backoff::retry(
        &ctx.policy,
        "checking how values are stored",
        &retries,
        || sink::stored_form(&ctx.db, &ctx.layout, &computed),
    )
    .await
    .map_err(|source| RunError::Write {
        chunk: chunk.to_string(),
        source,
    })?;
    if let Some(stored) = stored {
        let slots = checked.iter_mut().filter_map(|c| match c {
            Checked::Values(v) => Some(v),
            _ => None,
        });
        for (slot, values) in slots.zip(stored) {
            *slot = values;
        }
    }
    let guarded = ctx.purpose.writes() && ctx.conditional;
    let digest = ctx.runner.digest();
    let mut evaluated = evaluate(
        &ctx.layout,
        chunk,
        rows,
        checked,
        digest,
        checksums,
        guarded,
    );
    evaluated.counts.retries += retries.into_inner();
    Ok(evaluated)
}

/// Turns checked outcomes into the updates to write, the chunk's counts,
/// failures and samples.
fn evaluate(
    layout: &Layout,
    chunk: &Chunk,
    rows: &ChunkRows,
    checked: Vec<Checked>,
    digest: &str,
    checksums: bool,
    guarded: bool,
) -> Evaluated {
    let mut out = Evaluated {
        counts: Counts {
            rows: rows.len() as u64,
            ..Counts::default()
        },
        ..Evaluated::default()
    };
    for (i, checked) in checked.into_iter().enumerate() {
        let key = &rows.keys[i];
        let inputs = &rows.rows[i].values;
        let values = match checked {
            Checked::Skip => {
                out.counts.skipped += 1;
                out.skipped_keys.push(key.clone());
                continue;
            }
            Checked::Fail(kind, message) => {
                out.fail(chunk.id, key, kind, message, inputs, digest);
                continue;
            }
            Checked::Trap(trap, message) => {
                out.fail(chunk.id, key, FailureKind::Trap, message, inputs, digest);
                if let Some(last) = out.dead.last_mut() {
                    last.trap = Some(trap);
                }
                continue;
            }
            Checked::Values(values) => values,
        };
        let current = rows.current[i].as_deref().unwrap_or(&[]);
        if checksums {
            checksum(&mut out.expected, key, &values);
            checksum(&mut out.actual, key, current);
        }
        let unchanged = values
            .iter()
            .zip(current)
            .all(|(new, old)| value::same(old, new));
        if unchanged {
            out.counts.unchanged += 1;
            continue;
        }
        out.counts.updated += 1;
        if out.diffs.len() < SAMPLE_DIFFS {
            out.diffs
                .push(diff(layout, chunk.id, key, inputs, current, &values));
        }
        let expected = if guarded { inputs.clone() } else { Vec::new() };
        out.updates.push(Update {
            key: key.clone(),
            values,
            token: rows.tokens[i].clone(),
            expected,
        });
        out.sources.push(i);
    }
    out
}

/// Feeds a row into a chunk checksum.
fn checksum(hash: &mut Sha256, key: &Key, values: &[Value]) {
    let mut row = serde_json::to_string(key).unwrap_or_default();
    for v in values {
        row.push(',');
        value::write_json(&mut row, v);
    }
    hash.update(row.as_bytes());
    hash.update(b"\n");
}

/// Checks an `update` outcome against the output columns and the target
/// row (`present`). Returns the values coerced to the columns' kinds, or
/// why the row fails.
fn check_update(
    layout: &Layout,
    key: &Key,
    values: Vec<Value>,
    present: bool,
) -> Result<Vec<Value>, String> {
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
    if !present {
        return Err(format!(
            "no row with key {key} in the target table {}",
            layout.target
        ));
    }
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
    Ok(coerced)
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

async fn process(
    ctx: &Arc<Context>,
    instance: &mut Option<Instance>,
    work: Work,
) -> Result<(), RunError> {
    let Work {
        chunk,
        rows,
        read_ms,
        retries,
        asked,
        lease,
        retrying,
    } = work;
    let started = Instant::now();
    let (rows, results) = transform(ctx, &chunk, instance, rows).await?;
    let transform_ms = millis(started.elapsed());
    let verifying = matches!(ctx.purpose, Purpose::Verify { .. });
    let mut evaluated = assess(ctx, &chunk, &rows, results, verifying).await?;
    evaluated.counts.retries += retries;

    let started = Instant::now();
    // A run's writes and checkpoint commit together when the state store
    // is the target's database.
    let atomic = match (&ctx.atomic, &ctx.purpose) {
        (Some(pool), Purpose::Run { execute: true, .. }) if retrying.is_empty() => Some(pool),
        _ => None,
    };
    let mut timings = Timings {
        read_ms,
        transform_ms,
        write_ms: 0,
    };
    let mut marked = None;
    if let Some(pool) = atomic {
        let (done, t) = write_atomically(
            ctx,
            pool,
            &chunk,
            instance,
            &rows,
            &mut evaluated,
            timings,
            lease.as_ref(),
        )
        .await?;
        marked = Some(done);
        timings = t;
    } else if ctx.purpose.writes() {
        write_guarded(ctx, &chunk, instance, &rows, &mut evaluated, None).await?;
        timings.write_ms = millis(started.elapsed());
    }
    if !retrying.is_empty() {
        return settle(ctx, &chunk, &rows, &asked, retrying, evaluated).await;
    }
    if marked.is_none() && !evaluated.busy_keys.is_empty() {
        evaluated.deferred = deferrals(ctx, chunk.id, &evaluated.busy_keys).await;
    }
    let counts = evaluated.counts;
    let verdict = match &ctx.purpose {
        Purpose::Run { .. } => {
            let marked =
                checkpoint(ctx, &chunk, &evaluated, &timings, marked, lease.as_ref()).await?;
            if !marked {
                warn!(
                    chunk = chunk.id,
                    "Another worker took this chunk over after this worker's lease expired; its result is theirs{}.",
                    if atomic.is_some() {
                        " and this worker's writes were rolled back"
                    } else {
                        " (this worker's writes set the same values)"
                    }
                );
                return Ok(());
            }
            let since = Instant::now();
            ctx.defer(
                &chunk,
                evaluated
                    .deferred
                    .iter()
                    .map(|d| (d.clone(), since))
                    .collect(),
            );
            None
        }
        Purpose::Retry { execute, retry_id } => Some(
            resolve_dead_letters(ctx, &chunk, &rows, &asked, &evaluated, *execute, retry_id)
                .await?,
        ),
        Purpose::Verify { dead } => {
            compare(ctx, &chunk, &evaluated, dead);
            None
        }
    };

    record(ctx, &counts, &timings, evaluated, verdict);
    if matches!(ctx.purpose, Purpose::Run { .. }) {
        check_run_budget(ctx, &chunk, lease.is_some()).await?;
    }
    Ok(())
}

/// Checkpoints a run's chunk with its dead letters and deferred rows
/// (unless the chunk's transaction did, `marked`); returns whether the
/// checkpoint held (false: another worker holds the chunk now).
async fn checkpoint(
    ctx: &Arc<Context>,
    chunk: &Chunk,
    evaluated: &Evaluated,
    timings: &Timings,
    marked: Option<bool>,
    lease: Option<&Lease>,
) -> Result<bool, RunError> {
    let counts = evaluated.counts;
    let state = ctx.state()?;
    let busy = &evaluated.deferred;
    let note = trap_note(&evaluated.dead);
    let dead = &evaluated.dead;
    let counter = AtomicU64::new(0);
    match marked {
        Some(marked) => Ok(marked),
        None => backoff::retry(
            &ctx.policy,
            "checkpointing a finished chunk",
            &counter,
            || {
                state.chunk_done(
                    &ctx.run_id,
                    chunk.id,
                    &counts,
                    timings,
                    note.as_deref(),
                    dead,
                    busy,
                    lease,
                )
            },
        )
        .await
        .map_err(|source| RunError::Checkpoint {
            chunk: chunk.to_string(),
            source,
        }),
    }
}

/// Resolves a retried chunk's dead letters: the rows that now transform
/// and write (or are gone, or skipped) are settled, with `execute`;
/// returns how many were gone and how many skipped.
async fn resolve_dead_letters(
    ctx: &Arc<Context>,
    chunk: &Chunk,
    rows: &ChunkRows,
    asked: &[Key],
    evaluated: &Evaluated,
    execute: bool,
    retry_id: &str,
) -> Result<(u64, u64), RunError> {
    let digest = ctx.runner.digest().to_string();
    let present: HashSet<&Key> = rows.keys.iter().collect();
    let failed: HashSet<&Key> = evaluated.dead.iter().map(|d| &d.key).collect();
    let skipped: HashSet<&Key> = evaluated.skipped_keys.iter().collect();
    let gone_now: HashSet<&Key> = evaluated.gone_keys.iter().collect();
    // A row another transaction holds keeps its dead letter: the
    // next retry writes it.
    let busy: HashSet<&Key> = evaluated.busy_keys.iter().collect();
    let resolved: Vec<(Key, Resolution)> = asked
        .iter()
        .filter(|k| !failed.contains(k) && !busy.contains(k))
        .map(|k| {
            let how = if !present.contains(k) || gone_now.contains(k) {
                Resolution::Gone
            } else if skipped.contains(k) {
                Resolution::Skipped
            } else {
                Resolution::Fixed
            };
            (k.clone(), how)
        })
        .collect();
    if execute {
        let state = ctx.state()?;
        let (resolved, dead) = (&resolved, &evaluated.dead);
        let counter = AtomicU64::new(0);
        backoff::retry(&ctx.policy, "settling dead letters", &counter, || {
            state.settle_dead_letters(&ctx.run_id, resolved, dead, retry_id, &digest)
        })
        .await
        .map_err(|source| RunError::Checkpoint {
            chunk: chunk.to_string(),
            source,
        })?;
    }
    let count = |how| resolved.iter().filter(|(_, r)| *r == how).count() as u64;
    Ok((count(Resolution::Gone), count(Resolution::Skipped)))
}

/// Samples what verifying a chunk found: differing keys, and failed rows
/// that are not dead letters of the run.
fn compare(ctx: &Context, chunk: &Chunk, evaluated: &Evaluated, dead: &HashSet<Key>) {
    let mut samples = ctx.samples.lock().unwrap_or_else(|e| e.into_inner());
    let differs = evaluated.expected.clone().finalize() != evaluated.actual.clone().finalize();
    if differs {
        samples.differing_chunks += 1;
        for update in &evaluated.updates {
            if samples.differing_keys.len() < LISTED_KEYS {
                samples.differing_keys.push((chunk.id, update.key.clone()));
            }
        }
    }
    for d in &evaluated.dead {
        if dead.contains(&d.key) {
            samples.dead_lettered += 1;
        } else if samples.failed_keys.len() < LISTED_KEYS {
            samples.failed_keys.push((chunk.id, d.key.clone()));
        }
    }
}

/// Counts a finished chunk in the progress, the throttle and the samples.
fn record(
    ctx: &Context,
    counts: &Counts,
    timings: &Timings,
    evaluated: Evaluated,
    verdict: Option<(u64, u64)>,
) {
    let p = &ctx.progress;
    p.done_rows.fetch_add(counts.rows, Ordering::Relaxed);
    p.failed_rows.fetch_add(counts.failed, Ordering::Relaxed);
    p.updated_rows.fetch_add(counts.updated, Ordering::Relaxed);
    p.unchanged_rows
        .fetch_add(counts.unchanged, Ordering::Relaxed);
    p.skipped_rows.fetch_add(counts.skipped, Ordering::Relaxed);
    p.conflicts.fetch_add(counts.conflicts, Ordering::Relaxed);
    p.busy_rows.fetch_add(counts.busy, Ordering::Relaxed);
    p.chunks_done.fetch_add(1, Ordering::Relaxed);
    ctx.throttle.chunk_done(
        counts.rows,
        counts.updated,
        std::time::Duration::from_millis(timings.read_ms + timings.transform_ms + timings.write_ms),
        std::time::Duration::from_millis(timings.write_ms),
    );
    {
        let mut samples = ctx.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.merge(evaluated.diffs, evaluated.groups);
        samples.session.add(counts);
        samples.chunks += 1;
        if let Some((gone, skipped)) = verdict {
            samples.gone += gone;
            samples.skipped += skipped;
        }
    }
    if ctx.purpose.writes() {
        debug!(
            rows = counts.rows,
            updated = counts.updated,
            unchanged = counts.unchanged,
            skipped = counts.skipped,
            failed = counts.failed,
            conflicts = counts.conflicts,
            retries = counts.retries,
            read_ms = timings.read_ms,
            transform_ms = timings.transform_ms,
            write_ms = timings.write_ms,
            "Chunk done."
        );
    } else {
        debug!(
            rows = counts.rows,
            would_update = counts.updated,
            unchanged = counts.unchanged,
            skipped = counts.skipped,
            would_fail = counts.failed,
            read_ms = timings.read_ms,
            transform_ms = timings.transform_ms,
            "Chunk evaluated (nothing written)."
        );
    }
}

/// Stops the run when its failed rows are over the spec's budget; a
/// worker (`workers`) counts every worker's rows.
async fn check_run_budget(
    ctx: &Arc<Context>,
    chunk: &Chunk,
    workers: bool,
) -> Result<(), RunError> {
    let budget = &ctx.budget;
    let (failed, read) = match (workers, &ctx.state) {
        // Workers share the run's budget: count every worker's rows.
        (true, Some(state)) if budget.max_errors.is_some() || budget.max_error_rate.is_some() => {
            let counter = AtomicU64::new(0);
            let (totals, _) =
                backoff::retry(&ctx.policy, "summing the run's rows", &counter, || {
                    state.totals(&ctx.run_id)
                })
                .await
                .map_err(|source| RunError::Checkpoint {
                    chunk: chunk.to_string(),
                    source,
                })?;
            (totals.failed, totals.rows)
        }
        _ => (
            ctx.progress.failed_rows.load(Ordering::Relaxed),
            ctx.progress.done_rows.load(Ordering::Relaxed),
        ),
    };
    check_budget(ctx, failed, read)
}

/// The note a chunk's checkpoint carries when a row trapped the transform.
fn trap_note(dead: &[DeadLetter]) -> Option<String> {
    dead.iter()
        .find(|d| d.trap.is_some())
        .map(|d| format!("key {}: {}", d.key, d.error))
}

/// Whether a chunk's error is one that trying the chunk again may get past.
fn transient(error: &RunError) -> bool {
    use crate::backoff::Transient as _;
    match error {
        RunError::Write { source, .. } => source.is_transient(),
        RunError::Read { source, .. } => source.is_transient(),
        RunError::Checkpoint { source, .. } => source.is_transient(),
        _ => false,
    }
}

/// A run's chunk whose checkpoint commits with its writes: the guarded
/// writes, the fenced checkpoint and the dead letters in one transaction on
/// the target's database. A transient error (a deadlock, a lost connection)
/// rolls all of it back and the chunk's writes are tried again from the
/// start. Returns whether the checkpoint was recorded (false: another
/// worker holds the chunk now, and everything was rolled back) and the
/// chunk's timings.
#[expect(
    clippy::too_many_arguments,
    reason = "the chunk, what was computed for it, and its claim"
)]
async fn write_atomically(
    ctx: &Arc<Context>,
    pool: &crate::backend::Atomic,
    chunk: &Chunk,
    instance: &mut Option<Instance>,
    rows: &ChunkRows,
    evaluated: &mut Evaluated,
    timings: Timings,
    lease: Option<&Lease>,
) -> Result<(bool, Timings), RunError> {
    // What a retried transaction starts again from; the first attempt
    // takes the chunk's own.
    let original = evaluated.clone();
    let mut first = Some(std::mem::take(evaluated));
    let checkpoint_error = |source| RunError::Checkpoint {
        chunk: chunk.to_string(),
        source,
    };
    let mut retries = 0;
    loop {
        let started = Instant::now();
        let mut current = first.take().unwrap_or_else(|| original.clone());
        current.counts.retries += retries;
        let attempt = async {
            let t = ctx.db.timeouts();
            let mut tx = pool.begin(t.write, t.lock).await.map_err(|error| {
                checkpoint_error(crate::state::StateError::Query {
                    what: "starting a chunk's transaction",
                    error,
                })
            })?;
            if ctx.purpose.writes() {
                write_guarded(ctx, chunk, instance, rows, &mut current, Some(&mut tx)).await?;
            }
            let timings = Timings {
                write_ms: millis(started.elapsed()),
                ..timings
            };
            let note = trap_note(&current.dead);
            let marked = crate::state::checkpoint_in(
                &mut tx,
                &ctx.run_id,
                chunk.id,
                &current.counts,
                &timings,
                note.as_deref(),
                lease,
            )
            .await
            .map_err(checkpoint_error)?;
            let end = if marked {
                current.deferred = deferrals(ctx, chunk.id, &current.busy_keys).await;
                crate::state::dead_letters_in(
                    &mut tx,
                    &ctx.run_id,
                    chunk.id,
                    &current.dead,
                    &current.deferred,
                )
                .await
                .map_err(checkpoint_error)?;
                tx.commit().await
            } else {
                tx.rollback().await
            };
            end.map_err(|error| {
                checkpoint_error(crate::state::StateError::Query {
                    what: "committing a chunk's writes with its checkpoint",
                    error,
                })
            })?;
            Ok::<_, RunError>((marked, timings))
        }
        .await;
        match attempt {
            Ok(done) => {
                *evaluated = current;
                return Ok(done);
            }
            Err(error) if transient(&error) && retries + 1 < u64::from(ctx.policy.attempts) => {
                retries += 1;
                let delay = ctx.policy.delay(u32::try_from(retries).unwrap_or(u32::MAX));
                warn!(
                    chunk = chunk.id,
                    retry = retries,
                    %error,
                    "The chunk's transaction failed; it was rolled back and is tried again."
                );
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Rows held locked, as recorded with a chunk's checkpoint, each with its
/// holder where the database can name it.
async fn deferrals(ctx: &Context, chunk_id: u64, keys: &[Key]) -> Vec<Deferred> {
    if keys.is_empty() {
        return Vec::new();
    }
    let mut holders: HashMap<Key, String> = sink::holders(&ctx.db, &ctx.layout, keys)
        .await
        .into_iter()
        .collect();
    keys.iter()
        .map(|k| {
            let holder = holders
                .remove(k)
                .unwrap_or_else(|| "another transaction".to_string());
            Deferred::new(k.clone(), chunk_id, holder)
        })
        .collect()
}

/// Records what trying deferred rows again did: rows written (or gone,
/// skipped, failed) leave the deferred list, with their outcome added to
/// their chunk's counts; rows still locked wait for another try, or, held
/// longer than `max_lock_wait`, become dead letters saying so.
async fn settle(
    ctx: &Arc<Context>,
    chunk: &Chunk,
    rows: &ChunkRows,
    asked: &[Key],
    retrying: Vec<Pending>,
    evaluated: Evaluated,
) -> Result<(), RunError> {
    let state = ctx.state()?;
    let mut counts = evaluated.counts;
    let present: HashSet<&Key> = rows.keys.iter().collect();
    // Rows deleted or out of scope before they were read again.
    counts.skipped += asked.iter().filter(|k| !present.contains(k)).count() as u64;
    counts.rows = 0;
    counts.busy = 0;
    let busy: HashSet<&Key> = evaluated.busy_keys.iter().collect();
    let mut holders: HashMap<Key, String> = if busy.is_empty() {
        HashMap::new()
    } else {
        sink::holders(&ctx.db, &ctx.layout, &evaluated.busy_keys)
            .await
            .into_iter()
            .collect()
    };
    let mut dead = evaluated.dead.clone();
    let mut settled = Vec::new();
    let mut still = Vec::new();
    let digest = ctx.runner.digest().to_string();
    for mut p in retrying {
        if !busy.contains(&p.row.key) {
            if !dead.iter().any(|d| d.key == p.row.key) {
                settled.push(p.row.key.clone());
            }
            continue;
        }
        if let Some(holder) = holders.remove(&p.row.key) {
            p.row.holder = holder;
        }
        if p.since.elapsed() >= ctx.max_lock_wait {
            let inputs = rows
                .keys
                .iter()
                .position(|k| *k == p.row.key)
                .map(|i| rows.rows[i].values.clone())
                .unwrap_or_default();
            counts.failed += 1;
            dead.push(DeadLetter::new(
                p.row.key.clone(),
                chunk.id,
                FailureKind::Locked,
                format!(
                    "the row was locked by another transaction for more than {} ({}); refill does not wait for the application's locks: run `refill retry` once it is released",
                    humantime::format_duration(ctx.max_lock_wait),
                    p.row.holder
                ),
                value::fingerprint(&inputs),
                &digest,
            ));
            continue;
        }
        p.row.attempts += 1;
        p.row.last_seen_at = crate::state::now();
        p.due = Instant::now() + lock_backoff(p.row.attempts);
        still.push(p);
    }
    let still_rows: Vec<Deferred> = still.iter().map(|p| p.row.clone()).collect();
    let counter = AtomicU64::new(0);
    backoff::retry(&ctx.policy, "settling deferred rows", &counter, || {
        state.settle_deferred(&ctx.run_id, chunk.id, &counts, &settled, &still_rows, &dead)
    })
    .await
    .map_err(|source| RunError::Checkpoint {
        chunk: chunk.to_string(),
        source,
    })?;
    ctx.deferred
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(still);
    let p = &ctx.progress;
    p.failed_rows.fetch_add(counts.failed, Ordering::Relaxed);
    p.updated_rows.fetch_add(counts.updated, Ordering::Relaxed);
    p.unchanged_rows
        .fetch_add(counts.unchanged, Ordering::Relaxed);
    p.skipped_rows.fetch_add(counts.skipped, Ordering::Relaxed);
    p.conflicts.fetch_add(counts.conflicts, Ordering::Relaxed);
    {
        let mut samples = ctx.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.merge(evaluated.diffs, evaluated.groups);
        samples.session.add(&counts);
    }
    debug!(
        chunk = chunk.id,
        settled = settled.len(),
        still_locked = still_rows.len(),
        dead = dead.len(),
        "Deferred rows tried again."
    );
    Ok(())
}

/// Fails once `failed` of `rows` read exceed the spec's `[errors]` budget.
fn check_budget(ctx: &Context, failed: u64, rows: u64) -> Result<(), RunError> {
    let over = match (ctx.budget.max_errors, ctx.budget.max_error_rate) {
        (Some(max), _) if failed > max => Some(format!(
            "{failed} rows failed, more than [errors] max_errors = {max}"
        )),
        (_, Some(rate)) if rows >= RATE_FLOOR && failed as f64 > rate * rows as f64 => {
            Some(format!(
                "{failed} of {rows} rows failed ({:.2}%), more than [errors] max_error_rate = {rate}",
                100.0 * failed as f64 / rows as f64
            ))
        }
        _ => None,
    };
    match over {
        Some(reason) => Err(RunError::ErrorBudget(reason)),
        None => Ok(()),
    }
}

/// Counts what a write did: rows someone else holds locked are deferred,
/// rows the database refused fail. Returns the keys neither written nor
/// refused: the guard stopped them (or the row is gone), and only they
/// are read again.
fn account(
    chunk: &Chunk,
    evaluated: &mut Evaluated,
    written: Written,
    pending: &[Update],
    sources: &[usize],
    rows_now: &ChunkRows,
    digest: &str,
) -> Vec<Key> {
    // Every row written, in the order sent (a chunk no one else touched):
    // nothing to look up, which would hash each key twice.
    if written.rejected.is_empty()
        && written.busy.is_empty()
        && written.written.iter().eq(pending.iter().map(|u| &u.key))
    {
        return Vec::new();
    }
    let rejected: HashMap<Key, String> = written.rejected.into_iter().collect();
    // Rows someone else holds locked were not waited for: they are
    // deferred, and tried again later in the run.
    let busy: HashSet<Key> = written.busy.iter().cloned().collect();
    if !busy.is_empty() {
        evaluated.counts.updated -= busy.len() as u64;
        evaluated.counts.busy += busy.len() as u64;
        evaluated.diffs.retain(|d| !busy.contains(&d.key));
        evaluated.busy_keys.extend(written.busy);
    }
    for (update, &i) in pending.iter().zip(sources) {
        if let Some(reason) = rejected.get(&update.key) {
            evaluated.counts.updated -= 1;
            evaluated.diffs.retain(|d| d.key != update.key);
            evaluated.fail(
                chunk.id,
                &update.key,
                FailureKind::Refused,
                reason.clone(),
                &rows_now.rows[i].values,
                digest,
            );
        }
    }
    let done: HashSet<&Key> = written.written.iter().collect();
    pending
        .iter()
        .filter(|u| {
            !rejected.contains_key(&u.key) && !done.contains(&u.key) && !busy.contains(&u.key)
        })
        .map(|u| u.key.clone())
        .collect()
}

/// Reads the rows of `keys` again, after the guard stopped their write.
/// Rows no longer there, no longer in scope, or (with a separate target)
/// whose target row was deleted are counted skipped; the others changed
/// since they were read (or changed and changed back), and are returned
/// to be transformed again from what they hold now.
async fn read_again(
    ctx: &Arc<Context>,
    chunk: &Chunk,
    keys: &[Key],
    evaluated: &mut Evaluated,
    retries: &AtomicU64,
) -> Result<ChunkRows, RunError> {
    let reread = backoff::retry(&ctx.policy, "reading rows again", retries, || {
        ctx.db.read_keys(&ctx.layout, keys, ctx.conditional)
    })
    .await
    .map_err(|source| RunError::Read {
        chunk: chunk.to_string(),
        source,
    })?;
    // Rows no longer there, no longer in scope, or (with a separate
    // target) whose target row was deleted are skipped; the others
    // changed since they were read (or changed and changed back): they
    // are transformed again from what they hold now.
    let kept: Vec<usize> = (0..reread.len())
        .filter(|&i| reread.current[i].is_some())
        .collect();
    let redo_rows = reread.select(&kept);
    let present: HashSet<&Key> = redo_rows.keys.iter().collect();
    let gone: Vec<Key> = keys
        .iter()
        .filter(|k| !present.contains(k))
        .cloned()
        .collect();
    evaluated.counts.updated -= gone.len() as u64;
    evaluated.counts.skipped += gone.len() as u64;
    let stale: HashSet<&Key> = keys.iter().collect();
    evaluated.diffs.retain(|d| !stale.contains(&d.key));
    evaluated.gone_keys.extend(gone);
    Ok(redo_rows)
}

/// Writes a chunk's updates conditionally on their inputs being unchanged,
/// with before-images first. Rows the application changed meanwhile are
/// read, transformed and written again, up to `conflict_attempts` times;
/// rows that left the scope or were deleted are skipped; rows the database
/// refuses fail. Updates `evaluated`'s counts and failures.
async fn write_guarded(
    ctx: &Arc<Context>,
    chunk: &Chunk,
    instance: &mut Option<Instance>,
    rows: &ChunkRows,
    evaluated: &mut Evaluated,
    mut atomic: Option<&mut crate::backend::AtomicTx>,
) -> Result<(), RunError> {
    let state = ctx.state()?;
    let digest = ctx.runner.digest().to_string();
    let retries = AtomicU64::new(0);
    let mut pending = std::mem::take(&mut evaluated.updates);
    let mut sources = std::mem::take(&mut evaluated.sources);
    let mut from: ChunkRows = ChunkRows::default();
    let mut first = true;
    for attempt in 1..=ctx.conflict_attempts {
        if pending.is_empty() {
            break;
        }
        let rows_now = if first { rows } else { &from };
        let images: Vec<ImageRef> = pending
            .iter()
            .zip(&sources)
            .map(|(u, &i)| ImageRef {
                key: &u.key,
                before: rows_now.current[i].as_deref().unwrap_or_default(),
                after: &u.values,
            })
            .collect();
        backoff::retry(&ctx.policy, "recording before-images", &retries, || {
            state.save_images(&ctx.run_id, chunk.id, &images)
        })
        .await
        .map_err(|source| RunError::Checkpoint {
            chunk: chunk.to_string(),
            source,
        })?;
        let guard = if ctx.conditional {
            Guard::Inputs
        } else {
            Guard::None
        };
        let written = match atomic.as_deref_mut() {
            // Inside the chunk's transaction a failed statement is rolled
            // back to its savepoint; a lost connection loses the whole
            // transaction, so it is not retried here: the chunk is.
            Some(tx) => sink::write_in(tx, &ctx.layout, &pending, guard).await,
            None => {
                backoff::retry(&ctx.policy, "writing a chunk", &retries, || {
                    sink::write(&ctx.db, &ctx.layout, &pending, guard)
                })
                .await
            }
        }
        .map_err(|source| RunError::Write {
            chunk: chunk.to_string(),
            source,
        })?;

        let keys = account(
            chunk, evaluated, written, &pending, &sources, rows_now, &digest,
        );
        if keys.is_empty() {
            break;
        }
        let redo_rows = read_again(ctx, chunk, &keys, evaluated, &retries).await?;
        if redo_rows.is_empty() {
            break;
        }
        evaluated.counts.updated -= redo_rows.len() as u64;
        evaluated.counts.conflicts += redo_rows.len() as u64;
        if attempt == ctx.conflict_attempts {
            let reason = format!(
                "the row changed between refill's read and its write on each of {} attempts",
                ctx.conflict_attempts
            );
            for i in 0..redo_rows.len() {
                evaluated.fail(
                    chunk.id,
                    &redo_rows.keys[i],
                    FailureKind::Conflict,
                    reason.clone(),
                    &redo_rows.rows[i].values,
                    &digest,
                );
            }
            break;
        }
        debug!(
            rows = redo_rows.len(),
            attempt, "Rows changed meanwhile; transforming them again."
        );
        let (redo_rows, results) = transform(ctx, chunk, instance, redo_rows).await?;
        let mut redo = assess(ctx, chunk, &redo_rows, results, false).await?;
        redo.counts.rows = 0;
        pending = std::mem::take(&mut redo.updates);
        sources = std::mem::take(&mut redo.sources);
        evaluated.absorb(redo);
        from = redo_rows;
        first = false;
    }
    evaluated.counts.retries += retries.into_inner();
    Ok(())
}
