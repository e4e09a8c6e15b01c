//! A run's status: consumes the state store's records of a run (its
//! control, sessions, chunks and dead letters); produces what the run is
//! doing now ([`Live`]) and the lines `refill status` prints ([`RunLine`],
//! [`Detail`]).

use serde::{Serialize, Serializer};

use super::run::alive;
use crate::progress::Phase;
use crate::spec::Spec;
/// The records the commands return, as the state store keeps them.
pub use crate::state::{
    ChunkRecord, ChunkStatus, ChunkSummary, Counts, Mode, RunRecord, RunStatus, SessionKind,
    SessionRecord, parse_time,
};
use crate::state::{Control, ControlAction, StateError, StateStore};

/// What a run is doing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveState {
    /// Processes work on it; the phase is the least busy of theirs
    /// (stopping, then paused, then throttled, then running), or pausing
    /// while a pause stands and some still finish their chunks.
    Working(Phase),
    /// An abort stands and processes still finish their chunks.
    Aborting,
    /// A pause stands and no process works on it.
    Paused,
    /// No process works on it: where the run stands.
    Idle(RunStatus),
}

impl LiveState {
    /// The name shown.
    pub fn as_str(self) -> &'static str {
        match self {
            LiveState::Working(phase) => phase.as_str(),
            LiveState::Aborting => "aborting",
            LiveState::Paused => "paused",
            LiveState::Idle(status) => status.as_str(),
        }
    }

    /// Whether nothing is taking chunks because a pause stands: every
    /// process working on it has paused, or none works on it.
    pub fn paused(self) -> bool {
        matches!(self, LiveState::Paused | LiveState::Working(Phase::Paused))
    }

    /// Whether a pause stands or is being carried out.
    pub fn pausing_or_paused(self) -> bool {
        self.paused() || self == LiveState::Working(Phase::Pausing)
    }
}

impl std::fmt::Display for LiveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for LiveState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What a run is doing now, as seen from the state store.
#[derive(Clone, Debug, Serialize)]
pub struct Live {
    /// What it is doing.
    pub state: LiveState,
    /// Why, where there is a reason.
    pub reason: Option<String>,
    /// The request standing on the run.
    pub control: Option<Control>,
    /// The processes working on it (alive, not ended).
    pub sessions: Vec<SessionRecord>,
    /// Rows per second over the chunks finished in the last minute.
    pub rows_per_sec: Option<f64>,
    /// The time the rows left take at that rate.
    pub eta_seconds: Option<u64>,
}

/// What `run` is doing now: its control, its live sessions' phases, and a
/// rate and ETA from its recently finished chunks. A process that died
/// counts for nothing, so a run is never stuck "pausing".
pub fn live(
    run: &RunRecord,
    control: Option<Control>,
    sessions: &[SessionRecord],
    chunks: &[ChunkRecord],
) -> Live {
    let working: Vec<SessionRecord> = sessions
        .iter()
        .filter(|s| s.ended_at.is_none() && alive(s))
        .cloned()
        .collect();
    let phases: Vec<Phase> = working
        .iter()
        .map(|s| s.state.unwrap_or(Phase::Running))
        .collect();
    let reason = || working.iter().find_map(|s| s.reason.clone());
    let (state, reason) = match (&control, working.is_empty()) {
        (Some(c), true) if c.action == ControlAction::Pause => (
            LiveState::Paused,
            Some(format!(
                "paused by {} at {}; no process is working on it",
                c.by, c.at
            )),
        ),
        (Some(c), false) if c.action == ControlAction::Pause => {
            let all = phases
                .iter()
                .all(|p| matches!(p, Phase::Paused | Phase::Stopping));
            let phase = if all { Phase::Paused } else { Phase::Pausing };
            (
                LiveState::Working(phase),
                Some(format!("paused by {} at {}", c.by, c.at)),
            )
        }
        (Some(c), false) if c.action == ControlAction::Abort => (
            LiveState::Aborting,
            Some(format!("aborted by {} at {}", c.by, c.at)),
        ),
        (_, false) => {
            let phase = [Phase::Stopping, Phase::Paused, Phase::Throttled]
                .into_iter()
                .find(|p| phases.contains(p))
                .unwrap_or(Phase::Running);
            (LiveState::Working(phase), reason())
        }
        (_, true) => (LiveState::Idle(run.status), run.message.clone()),
    };
    let (rows_per_sec, eta_seconds) = pace(run, chunks, !working.is_empty());
    Live {
        state,
        reason,
        control,
        sessions: working,
        rows_per_sec,
        eta_seconds,
    }
}

/// The rate over the chunks finished in the last minute, while processes
/// work on the run, and the time the rows left take at it.
fn pace(run: &RunRecord, chunks: &[ChunkRecord], working: bool) -> (Option<f64>, Option<u64>) {
    let now = chrono::Utc::now();
    let recent: Vec<_> = chunks
        .iter()
        .filter(|c| c.status == ChunkStatus::Done)
        .filter_map(|c| {
            let done = parse_time(c.finished_at.as_deref()?)?;
            ((now - done).num_seconds() < 60).then_some((parse_time(&c.started_at)?, c.counts.rows))
        })
        .collect();
    let rows_per_sec = recent.iter().map(|(t, _)| *t).min().and_then(|first| {
        let secs = (now - first).to_std().ok()?.as_secs_f64();
        (secs >= 1.0 && working).then(|| recent.iter().map(|(_, n)| *n).sum::<u64>() as f64 / secs)
    });
    let done: u64 = chunks
        .iter()
        .filter(|c| c.status == ChunkStatus::Done)
        .map(|c| c.counts.rows)
        .sum();
    let left = run.rows_in_scope.saturating_sub(done);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a positive number of seconds"
    )]
    let eta_seconds = rows_per_sec
        .filter(|r| *r > 0.0)
        .map(|r| (left as f64 / r).round() as u64);
    (rows_per_sec, eta_seconds)
}

/// What a run is doing now, from the store; the rate and ETA only when
/// `chunks` are given.
pub async fn live_of(
    store: &StateStore,
    run: &RunRecord,
    chunks: Option<&[ChunkRecord]>,
) -> Result<Live, StateError> {
    let control = store.control(&run.run_id).await?;
    // Any run may have a process on it: a run's own, a retry of its dead
    // letters, a rollback.
    let sessions = store.sessions(&run.run_id).await?;
    Ok(live(run, control, &sessions, chunks.unwrap_or(&[])))
}

/// One run in the list `refill status` prints.
#[derive(Clone, Debug, Serialize)]
pub struct RunLine {
    /// The run.
    pub run: RunRecord,
    /// Its chunks' counts.
    pub totals: Counts,
    /// Its chunks done.
    pub chunks_done: u64,
    /// Its rows that failed and that no retry has made right since.
    pub unresolved: u64,
    /// What it is doing now.
    pub live: Live,
}

/// The most recent `limit` runs of a store, newest first.
pub async fn recent(store: &StateStore, limit: u32) -> Result<Vec<RunLine>, StateError> {
    let mut lines = Vec::new();
    for run in store.recent_runs(limit).await? {
        let (totals, chunks_done) = store.totals(&run.run_id).await?;
        let unresolved = store.unresolved_count(&run.run_id).await?;
        let live = live_of(store, &run, None).await?;
        lines.push(RunLine {
            run,
            totals,
            chunks_done,
            unresolved,
            live,
        });
    }
    Ok(lines)
}

/// One run in detail, as `refill status RUN` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Detail {
    /// The run.
    pub run: RunRecord,
    /// Its chunks' counts.
    pub totals: Counts,
    /// Its rows that failed and that no retry has made right since.
    pub unresolved: u64,
    /// Its chunks.
    pub chunks: Vec<ChunkRecord>,
    /// Every process that worked on it.
    pub sessions: Vec<SessionRecord>,
    /// What it is doing now.
    pub live: Live,
}

/// Gathers the detail of `run`.
pub async fn detail(store: &StateStore, run: RunRecord) -> Result<Detail, StateError> {
    let (totals, _) = store.totals(&run.run_id).await?;
    let unresolved = store.unresolved_count(&run.run_id).await?;
    let chunks = store.chunks(&run).await?;
    let sessions = store.sessions(&run.run_id).await?;
    let control = store.control(&run.run_id).await?;
    let live = live(&run, control, &sessions, &chunks);
    Ok(Detail {
        run,
        totals,
        unresolved,
        chunks,
        sessions,
        live,
    })
}

/// Why the run a command names cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// The store could not be read (or the prefix is ambiguous).
    #[error(transparent)]
    State(#[from] StateError),
    /// No run has that id or starts with it.
    #[error(
        "no run `{id}` in {store}; `refill status` with the same --state or --spec lists the runs it holds"
    )]
    NoSuchRun {
        /// The id or prefix given.
        id: String,
        /// The store, masked.
        store: String,
    },
    /// The spec has never run with `--execute` against this store.
    #[error(
        "spec \"{name}\" ({path}) has no execute run in {store}; `refill run {path} --execute` makes one, and a dry run is named by its id"
    )]
    NoRunOfSpec {
        /// The spec's name.
        name: String,
        /// Its file.
        path: String,
        /// The store, masked.
        store: String,
    },
    /// The spec's newest run ran another file with the same name.
    #[error(
        "the newest execute run of spec \"{name}\", {run_id}, ran the spec at {recorded}, not {given}: two spec files share the name; give the run id"
    )]
    OtherSpec {
        /// The spec's name.
        name: String,
        /// That run.
        run_id: String,
        /// The file it ran.
        recorded: String,
        /// The file given.
        given: String,
    },
}

/// The run whose id is `id`, or the only one whose id starts with it.
pub async fn find(store: &StateStore, id: &str) -> Result<RunRecord, FindError> {
    store
        .find_run(id)
        .await?
        .ok_or_else(|| FindError::NoSuchRun {
            id: id.to_string(),
            store: store.url().to_string(),
        })
}

/// The newest execute run of `spec`: what `refill verify SPEC`, `retry
/// SPEC`, `rollback SPEC` and `report SPEC` work on. Refused when that run
/// ran another file that has the same name.
pub async fn newest_of(store: &StateStore, spec: &Spec) -> Result<RunRecord, FindError> {
    let given = spec
        .path
        .canonicalize()
        .unwrap_or_else(|_| spec.path.clone())
        .display()
        .to_string();
    let Some(run) = store.latest_execute_run(spec.name()).await? else {
        return Err(FindError::NoRunOfSpec {
            name: spec.name().to_string(),
            path: spec.path.display().to_string(),
            store: store.url().to_string(),
        });
    };
    if run.spec_path != given {
        return Err(FindError::OtherSpec {
            name: spec.name().to_string(),
            run_id: run.run_id,
            recorded: run.spec_path,
            given,
        });
    }
    Ok(run)
}
