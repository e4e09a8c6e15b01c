//! `refill retry`: consumes a run's unresolved dead letters and a spec for
//! the same data (its transform may be a fixed version, or configured
//! differently); produces the dead-lettered rows run again through the
//! [`pipeline`](crate::ops::run) by key. Rows that now succeed are written (with
//! `--execute`, conditionally and with before-images, like a run) and their
//! dead letters resolved; rows that fail again keep theirs, with the new
//! error. The retry, with its component digest, is recorded next to the run.
//!
//! It writes like a run and goes through the same controller: the
//! `[throttle]` paces it, and with `--execute` its session is recorded on
//! the run, so `refill status` shows it and `refill pause`, `resume` and
//! `abort` reach it. A retry stopped by an abort or Ctrl-C goes on when
//! run again: the dead letters it resolved are not retried.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{Instrument, info_span};

use crate::chunk::{Chunk, Key};
use crate::ops::run::pipeline::{self, Feed, Purpose, Samples};
use crate::ops::run::{self, Diff, ErrorGroup, Progress, RunError};
use crate::plan;
use crate::source::Database;
use crate::spec::Spec;
use crate::state::{
    ChunkRecord, Counts, DeadLetter, RetryRecord, RunRecord, RunStatus, SessionKind, StateStore,
    now,
};

/// How a retry went.
#[derive(Debug, Serialize)]
pub struct RetryReport {
    /// The retry, as recorded.
    pub record: RetryRecord,
    /// The digest the run (or its last retry) used before.
    pub previous_digests: Vec<String>,
    /// Counts of the rows retried.
    pub counts: Counts,
    /// Before → after samples.
    pub diffs: Vec<Diff>,
    /// Rows failing again, by error.
    pub error_groups: Vec<(String, ErrorGroup)>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Dead letters grouped by the chunk they belong to, in chunk order; a
/// chunk the store no longer lists ends at its last dead key.
fn by_chunk(dead: &[DeadLetter], chunks: &[ChunkRecord]) -> Vec<(Chunk, Vec<Key>)> {
    let ranges: BTreeMap<u64, Chunk> = chunks.iter().map(|c| (c.chunk_id, c.chunk())).collect();
    let mut groups: BTreeMap<u64, Vec<Key>> = BTreeMap::new();
    for d in dead {
        groups.entry(d.chunk_id).or_default().push(d.key.clone());
    }
    groups
        .into_iter()
        .map(|(id, keys)| {
            let chunk = ranges.get(&id).cloned().unwrap_or(Chunk {
                id,
                lo: None,
                hi: keys[keys.len() - 1].clone(),
            });
            (chunk, keys)
        })
        .collect()
}

/// Re-runs the unresolved dead letters of `run` with `spec`'s transform.
/// Writes only with `execute` (which needs the component pinned).
// Longer than 100 lines: the steps of a retry in order (check, connect, feed, steer, run, record), each a call.
pub async fn retry(
    spec: &Spec,
    state: &StateStore,
    run: &RunRecord,
    execute: bool,
    progress: Arc<Progress>,
) -> Result<RetryReport, RunError> {
    let started = Instant::now();
    run::same_data(spec, run, "retry it")?;
    if run.status == RunStatus::RolledBack {
        return Err(RunError::WrongSpec(format!(
            "run {} was rolled back; there is nothing to retry",
            run.run_id
        )));
    }
    let runner = Arc::new(run::load_transform(spec, execute)?);
    let db = Database::for_spec(spec, spec.concurrency() + 2, execute).await?;
    let layout = plan::resolve(spec, &db, runner.info()).await?;
    let lookups = plan::load_and_check(spec, &db, &runner).await?;
    // The clock and seed the run's rows were first computed with.
    let env = run::guest_env(Some(state), spec.name(), &run.component_digest).await?;

    let dead = state.dead_letters(&run.run_id, run.key_type, true).await?;
    let chunks = state.chunks(run).await?;
    let feed = by_chunk(&dead, &chunks);
    let mut previous: Vec<String> = vec![run.component_digest.clone()];
    for r in state.records::<RetryRecord>(&run.run_id).await? {
        if !previous.contains(&r.component_digest) {
            previous.push(r.component_digest);
        }
    }
    let mut record = RetryRecord {
        retry_id: format!("{}.retry-{}", run.run_id, run::random_hex(6)),
        run_id: run.run_id.clone(),
        execute,
        component_digest: runner.digest().to_string(),
        work_hash: spec.work_hash(),
        user_name: run::user_name(),
        host_name: run::host_name(),
        started_at: now(),
        rows: dead.len() as u64,
        lookups: lookups.digests(),
        ..RetryRecord::default()
    };
    progress
        .total_rows
        .store(record.rows, std::sync::atomic::Ordering::Relaxed);
    // Only a retry that writes is steered from elsewhere: a dry one is no
    // process working on the run.
    let session = execute.then(|| run::new_session(SessionKind::Retry));
    let mut samples = Samples::default();
    let work = async {
        let (throttle, watching) =
            run::take_over(spec, &db, state, run, session.as_ref(), &progress, execute).await?;
        // Each chunk's dead letters go in pieces of the controller's chunk
        // size (the rate's share), so that a chunk full of failed rows is
        // written a piece at a time at the pace, not all at once.
        let piece = usize::try_from(throttle.chunk_rows()).unwrap_or(usize::MAX);
        let feed = feed
            .into_iter()
            .flat_map(|(chunk, keys)| {
                keys.chunks(piece.max(1))
                    .map(|part| (chunk.clone(), part.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let ctx = Arc::new(run::context(
            spec,
            Purpose::Retry {
                execute,
                retry_id: record.retry_id.clone(),
            },
            &run.run_id,
            db,
            Some(state.clone()),
            layout,
            runner,
            plan::setup(spec, env, lookups),
            progress.clone(),
            throttle,
        ));
        state.record(&record).await?;
        let span = info_span!("retry", run = %run.run_id);
        let ended = pipeline::execute(ctx.clone(), Feed::Keys(feed), spec.concurrency())
            .instrument(span)
            .await;
        drop(watching);
        samples = Arc::into_inner(ctx)
            .map(|c| c.samples.into_inner().unwrap_or_else(|e| e.into_inner()))
            .unwrap_or_default();
        let ended = match ended {
            Ok(pipeline::Ended::Stopped(stop)) => Err(RunError::Stopped(stop)),
            Ok(_) => Ok(()),
            Err(error) => Err(error),
        };
        if let Some(session) = &session {
            let stop = match &ended {
                Err(RunError::Stopped(stop)) => Some(stop),
                _ => None,
            };
            let failed = ended.is_err() && stop.is_none();
            state
                .end_session(&session.session_id, run::session_outcome(failed, stop))
                .await?;
        }
        ended
    };
    let outcome = match &session {
        Some(session) => run::with_lock(state, spec.name(), session, work).await,
        None => work.await,
    };
    record.finished_at = Some(now());
    record.failed = samples.session.failed;
    record.gone = samples.gone;
    record.skipped = samples.skipped;
    record.resolved = record.rows.saturating_sub(record.failed + record.gone);
    record.message = outcome.as_ref().err().map(ToString::to_string);
    state.record(&record).await?;
    outcome?;
    Ok(RetryReport {
        error_groups: samples.top_groups(),
        record,
        previous_digests: previous,
        counts: samples.session,
        diffs: samples.diffs,
        elapsed: started.elapsed(),
    })
}
