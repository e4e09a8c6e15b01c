//! Distributed runs: consumes a spec and a PostgreSQL state store, and
//! produces either a run planned for workers (`refill run --execute
//! --workers 0`: every chunk recorded unclaimed, with the spec's text and
//! the component's bytes stored beside the run) or one worker's share of
//! such a run (`refill worker`): the worker rebuilds the spec and the
//! transform from the store, checks the component against the run's
//! digest, then claims chunks under leases until every chunk is done.
//! Workers hold no state of their own: any of them may die at any time,
//! and the chunks it held are taken over once their leases expire.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{Instrument, info, info_span, warn};

use super::pipeline::{self, Ended, Feed, Purpose};
use super::{
    Progress, RunError, RunOptions, context, guest_env, load_pinned_transform, new_run,
    new_session, record_lookups, refuse_changed_lookups, reopen, resumable, session_outcome,
    with_lock,
};
use crate::chunk::Chunk;
use crate::db::DbUrl;
use crate::plan;
use crate::source::Database;
use crate::spec::Spec;
use crate::state::{
    ChunkStatus, Counts, Mode, RunRecord, RunStatus, SessionKind, SessionOutcome, StateError,
    StateStore, Workers,
};
use crate::throttle::{ControlSource, Stop, Throttle, signals::Signals};
use crate::transform::{self, Runner};

/// What planning a run for workers produced.
#[derive(Clone, Debug, Serialize)]
pub struct Planned {
    /// The run.
    pub run: RunRecord,
    /// Its chunks.
    pub chunks: u64,
    /// Whether the run was planned before (this call changed nothing).
    pub existing: bool,
    /// Whether the spec's url holds a password that was not stored, so
    /// that workers need `--source-url`.
    pub needs_source_url: bool,
}

/// Plans a run for distributed workers: records it with every chunk
/// unclaimed, and stores the spec's text and the component, so that
/// `refill worker` processes on any host can do the work. An unfinished
/// run of the spec planned for workers is returned as is.
pub async fn plan(spec: &Spec, options: &RunOptions) -> Result<Planned, RunError> {
    if options.limit.is_some() || options.until_key.is_some() || options.max_runtime.is_some() {
        return Err(RunError::Usage(
            "--workers 0 plans the whole run: --limit, --until-key and --max-runtime apply to `refill worker` processes (--max-runtime) or single-process runs".into(),
        ));
    }
    let (runner, bytes) = load_pinned_transform(spec)?;
    let state = StateStore::open(&spec.state_url).await?.workers()?;
    let db = Database::for_spec(spec, 2, false).await?;
    let plan = plan::build(spec, &db, &runner).await?;
    let session = new_session(SessionKind::Run);
    with_lock(&state, spec.name(), &session, async {
        let (text, needs_source_url) = spec.text_for_workers();
        if let Some(run) = resumable(&state, spec, &runner, options, true).await? {
            let chunks = state.chunk_count(&run.run_id).await?;
            if chunks == 0 && run.rows_in_scope > 0 {
                // Its planning died before its chunks were recorded.
                state
                    .set_run_status(
                        &run.run_id,
                        RunStatus::Abandoned,
                        Some("its planning did not finish; planned again"),
                    )
                    .await?;
                warn!(run = %run.run_id, "Abandoned a run whose planning did not finish; planning again.");
            } else {
                // Planning again is the answer to an abort or a failure: the
                // run goes on (a pause stands).
                reopen(&state, &run).await?;
                let run = state.find_run(&run.run_id).await?.unwrap_or(run);
                return Ok(Planned {
                    run,
                    chunks,
                    existing: true,
                    needs_source_url,
                });
            }
        }
        let mut run = new_run(spec, &runner, &plan, Mode::Execute);
        run.workers = true;
        // Not `running` until its chunks are recorded: no worker joins a
        // run half planned, and a plan that dies is planned again.
        run.status = RunStatus::Incomplete;
        run.message = Some("being planned for workers".into());
        // The rows a chunk gets: the spec's, capped by the rate limit.
        let chunk_rows = Throttle::new(spec, Arc::new(Progress::default()), None).chunk_rows();
        run.chunk_rows = chunk_rows;
        let bounds = match &plan.scope.high_watermark {
            Some(hwm) => db.chunk_bounds(&plan.layout, hwm, chunk_rows).await?,
            None => Vec::new(),
        };
        let mut lo = None;
        let chunks: Vec<Chunk> = bounds
            .into_iter()
            .zip(1..)
            .map(|(hi, id)| Chunk {
                id,
                lo: lo.replace(hi.clone()),
                hi,
            })
            .collect();
        state.create_run(&run).await?;
        state
            .set_worker_spec(&run.run_id, &text, spec.concurrency())
            .await?;
        record_lookups(&state, &run, &plan.lookups).await?;
        state.store_component(runner.digest(), &bytes).await?;
        state.plan_chunks(&run.run_id, &chunks).await?;
        let (status, message) = if chunks.is_empty() {
            (RunStatus::Done, Some("nothing in scope"))
        } else {
            (RunStatus::Running, None)
        };
        state.set_run_status(&run.run_id, status, message).await?;
        let run = state.find_run(&run.run_id).await?.unwrap_or(run);
        Ok(Planned {
            run,
            chunks: chunks.len() as u64,
            existing: false,
            needs_source_url,
        })
    })
    .await
}

/// What a worker is told.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The state store holding the run.
    pub state: DbUrl,
    /// The run to join (an id or a unique prefix); the most recent running
    /// run planned for workers if not given.
    pub run: Option<String>,
    /// The source url, for a spec whose url has a password refill did not
    /// store.
    pub source_url: Option<String>,
    /// How long a claim holds without being renewed.
    pub lease: Duration,
    /// Stop taking chunks after this long.
    pub max_runtime: Option<Duration>,
}

/// How a worker ended.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerReport {
    /// The run, as recorded at the end.
    pub run: RunRecord,
    /// This worker's session.
    pub session_id: String,
    /// Chunks this worker finished.
    pub chunks: u64,
    /// Counts of this worker.
    pub session: Counts,
    /// Counts of the whole run.
    pub totals: Counts,
    /// Wall time of this worker.
    pub elapsed: Duration,
    /// How it ended: `done` (every chunk of the run is done), `left` (the
    /// run was ended elsewhere), or why it stopped.
    pub outcome: String,
    /// The stop request it obeyed, if any.
    pub stop: Option<Stop>,
}

fn no_run(url: &DbUrl, what: &str) -> RunError {
    RunError::Usage(format!(
        "{what} in the state store {url}; plan one with `refill run SPEC --execute --workers 0`"
    ))
}

/// Whether a url as stored for workers had its password masked.
fn masked(url: &str) -> bool {
    url.contains(":***@") || url.contains("password=***")
}

/// Finds the run to join.
async fn joined(state: &Workers, options: &WorkerOptions) -> Result<RunRecord, RunError> {
    let url = &options.state;
    let id = match &options.run {
        Some(id) => id.clone(),
        None => state
            .latest_worker_run()
            .await?
            .ok_or_else(|| no_run(url, "no running run planned for workers"))?,
    };
    let run = state
        .find_run(&id)
        .await?
        .ok_or_else(|| no_run(url, &format!("no run `{id}`")))?;
    if !run.workers {
        return Err(RunError::Usage(format!(
            "run {} of \"{}\" was not planned for workers; plan one with `refill run SPEC --execute --workers 0`",
            run.run_id, run.name
        )));
    }
    Ok(run)
}

/// Rebuilds the run's spec from its stored text, at its original path
/// (relative paths in it resolve there), with `--source-url` if given.
async fn stored_spec(
    state: &Workers,
    run: &RunRecord,
    source_url: Option<&str>,
) -> Result<Spec, RunError> {
    let text = state
        .worker_spec(&run.run_id)
        .await?
        .ok_or_else(|| StateError::Corrupt(format!("run {} has no stored spec", run.run_id)))?;
    let mut spec = Spec::parse(Path::new(&run.spec_path), text)?;
    if let Some(url) = source_url {
        let base = spec.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        spec.source_url =
            DbUrl::parse(url, &base).map_err(|e| RunError::Usage(format!("--source-url: {e}")))?;
    } else if masked(spec.source_url.expose()) {
        return Err(RunError::Usage(format!(
            "the spec's source url {} has a password, which refill does not store: give the worker the url with --source-url (or REFILL_SOURCE_URL), or write it as env:VAR in the spec",
            spec.source_url
        )));
    }
    let t = &spec.file.throttle;
    for (name, url) in [("replica_url", &t.replica_url), ("probe_url", &t.probe_url)] {
        if let Some(url) = url.as_deref().filter(|u| masked(u)) {
            return Err(RunError::Usage(format!(
                "[throttle] {name} {url} has a password, which refill does not store: write it as env:VAR in the spec so that each worker reads it from its environment, and plan the run again"
            )));
        }
    }
    Ok(spec)
}

/// The component of `run`, from the state store, checked against the run's
/// digest. Its compiled form is cached by digest like any component's.
async fn stored_component(
    state: &Workers,
    run: &RunRecord,
    spec: &mut Spec,
) -> Result<Runner, RunError> {
    let digest = &run.component_digest;
    let bytes = state.component(digest).await?.ok_or_else(|| {
        StateError::Corrupt(format!(
            "the component {digest} of run {} is not in the state store",
            run.run_id
        ))
    })?;
    // Where it came from, for messages: it has no file here.
    spec.component = PathBuf::from(format!("refill_components/{digest}"));
    let compiled = transform::Compiled::from_bytes(&spec.component, &bytes, Some(digest))?;
    Ok(Runner::new(compiled, super::limits(spec))?)
}

/// Joins a run planned for workers and works on its chunks until every one
/// is done, the run is ended elsewhere, or this worker is told to stop.
pub async fn work(
    options: &WorkerOptions,
    progress: Arc<Progress>,
) -> Result<WorkerReport, RunError> {
    let started = Instant::now();
    let state = StateStore::open_existing(&options.state)
        .await?
        .ok_or_else(|| no_run(&options.state, "no refill tables"))?
        .workers()?;
    let run = joined(&state, options).await?;
    let mut spec = stored_spec(&state, &run, options.source_url.as_deref()).await?;
    let runner = Arc::new(stored_component(&state, &run, &mut spec).await?);
    let concurrency = spec.concurrency();
    let db = Database::for_spec(&spec, concurrency + 2, true).await?;
    let layout = plan::resolve(&spec, &db, runner.info()).await?;
    let lookups = plan::load_and_check(&spec, &db, &runner).await?;
    refuse_changed_lookups(&state, &run, &lookups).await?;
    let env = guest_env(Some(&state), spec.name(), runner.digest()).await?;

    let mut session = new_session(SessionKind::Run);
    session.run_id = run.run_id.clone();
    state.start_session(&session).await?;
    info!(run = %run.run_id, session = %session.session_id, "Joined the run.");
    let beat = keep_alive(&state, &run.run_id, &session.session_id, options.lease);

    let chunks = state.chunks(&run).await?;
    let done = chunks.iter().filter(|c| c.status == ChunkStatus::Done);
    let done_rows: u64 = done.clone().map(|c| c.counts.rows).sum();
    progress.set_run(&run.run_id, &run.name);
    progress
        .total_rows
        .store(run.rows_in_scope.max(done_rows), Ordering::Relaxed);
    progress.start_at(done_rows);
    progress
        .failed_rows
        .store(done.map(|c| c.counts.failed).sum(), Ordering::Relaxed);

    super::see_health(&spec, &db).await?;
    let signals = Signals::of(&spec, &db)?;
    let mut throttle = Throttle::new(&spec, progress.clone(), options.max_runtime);
    throttle.share_pace(state.clone(), &run.run_id);
    let throttle = Arc::new(throttle);
    let watching = throttle.watch(
        signals,
        Some(ControlSource {
            state: StateStore::clone(&state),
            run_id: run.run_id.clone(),
            session_id: session.session_id.clone(),
        }),
    );
    let ctx = Arc::new(context(
        &spec,
        Purpose::Run {
            execute: true,
            session_id: session.session_id.clone(),
        },
        &run.run_id,
        db,
        Some(StateStore::clone(&state)),
        layout,
        runner,
        plan::setup(&spec, env, lookups),
        progress,
        throttle,
    ));
    let feed = Feed::Claims {
        workers: state.clone(),
        lease: options.lease,
        poll: (options.lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(1)),
    };
    let span = info_span!("worker", run = %run.run_id, session = %session.session_id);
    let outcome = pipeline::execute(ctx.clone(), feed, concurrency)
        .instrument(span)
        .await;
    drop(watching);
    beat.abort();

    let (ended, stop, outcome) = conclude(&state, &run.run_id, outcome).await?;
    state.end_session(&session.session_id, outcome).await?;
    let ended = ended?;
    let (totals, _) = state.totals(&run.run_id).await?;
    let run = state.find_run(&run.run_id).await?.unwrap_or(run);
    let samples = Arc::into_inner(ctx)
        .map(|c| c.samples.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default();
    Ok(WorkerReport {
        run,
        session_id: session.session_id,
        chunks: samples.chunks,
        session: samples.session,
        totals,
        elapsed: started.elapsed(),
        outcome: ended,
        stop,
    })
}

/// What a worker's pipeline ending means: the sentence for its report (or
/// the error that ended it), the stop that ended it, and its session's
/// outcome. A worker that sees every chunk done marks the run done; an
/// abort or a failure of the run itself is recorded on the run.
async fn conclude(
    state: &StateStore,
    run_id: &str,
    outcome: Result<Ended, RunError>,
) -> Result<(Result<String, RunError>, Option<Stop>, SessionOutcome), RunError> {
    let mut stop = None;
    let mut left = false;
    let ended = match outcome {
        Ok(Ended::Done | Ended::Limit) => {
            // Every chunk is done: whichever worker sees it first says so.
            if state.find_run(run_id).await?.map(|r| r.status) == Some(RunStatus::Running) {
                state.set_run_status(run_id, RunStatus::Done, None).await?;
            }
            Ok("done".to_string())
        }
        Ok(Ended::Left { status, message }) => {
            left = true;
            Ok(match message {
                Some(message) => format!("left: the run is {status}: {message}"),
                None => format!("left: the run is {status}"),
            })
        }
        Ok(Ended::Stopped(why)) => {
            if let Stop::Aborted { .. } = &why {
                let message =
                    format!("{why}; `refill run --execute --workers 0` on the spec resumes it");
                state
                    .set_run_status(run_id, RunStatus::Aborted, Some(&message))
                    .await?;
            }
            let outcome = why.to_string();
            stop = Some(why);
            Ok(outcome)
        }
        Err(error) => {
            // A failure of the run itself stops every worker; any other
            // leaves the run to the others, which take this worker's
            // chunks over.
            if matches!(
                error,
                RunError::ErrorBudget(_) | RunError::TooManyTraps { .. }
            ) {
                state
                    .set_run_status(run_id, RunStatus::Failed, Some(&error.to_string()))
                    .await?;
            }
            Err(error)
        }
    };
    // The session's outcome in a word (the report has the sentence).
    let outcome = match left {
        true => SessionOutcome::Left,
        false => session_outcome(ended.is_err(), stop.as_ref()),
    };
    Ok((ended, stop, outcome))
}

/// Keeps this worker's session alive and renews its leases, a third of a
/// lease apart, until the returned task is aborted.
fn keep_alive(
    state: &Workers,
    run_id: &str,
    session_id: &str,
    lease: Duration,
) -> tokio::task::JoinHandle<()> {
    let state = state.clone();
    let (run_id, session_id) = (run_id.to_string(), session_id.to_string());
    let every = (lease / 3).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(error) = state.renew_leases(&run_id, &session_id, lease).await {
                warn!(%error, "Could not renew this worker's leases; another worker takes its chunks over if this goes on.");
            }
            if let Err(error) = state.heartbeat(&session_id).await {
                warn!(%error, "Could not record a heartbeat.");
            }
        }
    })
}
