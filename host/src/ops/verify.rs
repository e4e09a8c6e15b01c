//! `refill verify`: consumes a spec (and, optionally, a run of it); produces
//! a [`VerificationRecord`]: every row in scope re-read, the transform
//! recomputed with the run's component and configuration, and the result
//! compared with what the target holds, chunk by chunk (checksums of the
//! computed and the current values first, the rows of a chunk only where
//! they differ). It writes nothing to the data. With a run it checks the
//! run's finished chunks, reports the run's dead letters apart, and records
//! the verification in the state store; with only a spec (a backfill done
//! by someone else's script) it checks the whole current scope.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{Instrument, info_span};

use crate::chunk::Key;
use crate::ops::run::pipeline::{self, Feed, Purpose};
use crate::ops::run::{self, Progress, RunError};
use crate::plan::{self, Plan};
use crate::source::Database;
use crate::spec::Spec;
use crate::state::{ChunkStatus, RetryRecord, RunRecord, StateStore, now};
pub use crate::state::{Difference, VerificationRecord};
use crate::transform::Runner;

/// Refuses to verify `run` with another component or configuration than
/// the ones its rows were computed with: its own, or a retry's.
async fn same_computation(
    spec: &Spec,
    runner: &Runner,
    run: &RunRecord,
    state: &StateStore,
) -> Result<(), RunError> {
    // The run's rows were computed by its component and configuration,
    // or by a retry's.
    let mut computed = vec![(run.component_digest.clone(), run.work_hash.clone())];
    computed.extend(
        state
            .records::<RetryRecord>(&run.run_id)
            .await?
            .into_iter()
            .filter(|r| r.execute)
            .map(|r| (r.component_digest, r.work_hash)),
    );
    let now = (runner.digest().to_string(), spec.work_hash());
    if !computed.contains(&now) {
        let used: Vec<String> = computed
            .iter()
            .map(|(digest, work)| format!("component sha256 {digest} with work hash {work}"))
            .collect();
        return Err(RunError::WrongSpec(format!(
            "run {} was computed with {}, but {} now describes component sha256 {} with work hash {} (the transform's config is part of it); verify with the component and spec the run used",
            run.run_id,
            used.join(" or "),
            spec.path.display(),
            now.0,
            now.1
        )));
    }
    Ok(())
}

/// What verifying reads: a run's finished chunks and its unresolved dead
/// letters (reported apart), or without a run the whole scope.
async fn feed(
    run: Option<(&RunRecord, &StateStore)>,
    plan: &Plan,
    progress: &Progress,
) -> Result<(Feed, HashSet<Key>), RunError> {
    Ok(match run {
        Some((run, state)) => {
            let chunks = state.chunks(run).await?;
            let known = chunks
                .iter()
                .filter(|c| c.status == ChunkStatus::Done)
                .map(|c| c.chunk())
                .collect();
            let dead = state
                .dead_letters(&run.run_id, run.key_type, true)
                .await?
                .into_iter()
                .map(|d| d.key)
                .collect();
            let rows = chunks
                .iter()
                .filter(|c| c.status == ChunkStatus::Done)
                .map(|c| c.counts.rows)
                .sum();
            progress.total_rows.store(rows, Ordering::Relaxed);
            let feed = Feed::Ranges {
                known,
                next: None,
                high_watermark: None,
                limit: None,
            };
            (feed, dead)
        }
        None => {
            progress
                .total_rows
                .store(plan.scope.rows, Ordering::Relaxed);
            let feed = Feed::Ranges {
                known: Vec::new(),
                next: Some((1, None)),
                high_watermark: plan.scope.high_watermark.clone(),
                limit: None,
            };
            (feed, HashSet::new())
        }
    })
}

/// Verifies `spec`'s target, against `run` if given.
pub async fn verify(
    spec: &Spec,
    run: Option<(&RunRecord, &StateStore)>,
    progress: Arc<Progress>,
) -> Result<VerificationRecord, RunError> {
    let runner = Arc::new(run::load_transform(spec, false)?);
    if let Some((run, state)) = run {
        run::same_data(spec, run, "verify it")?;
        same_computation(spec, &runner, run, state).await?;
    }
    let db = Database::for_spec(spec, spec.concurrency() + 2, false).await?;
    let plan = plan::build(spec, &db, &runner).await?;
    // Recompute with the clock and seed the run's guests had.
    let env = match run {
        // The clock and seed of the run's first computation, even when a
        // retry's component is verifying it.
        Some((run, state)) => {
            run::guest_env(Some(state), spec.name(), &run.component_digest).await?
        }
        None => {
            let state = StateStore::open_existing(&spec.state_url).await?;
            run::guest_env(state.as_ref(), spec.name(), runner.digest()).await?
        }
    };

    let (feed, dead) = feed(run, &plan, &progress).await?;
    let mut record = VerificationRecord {
        verification_id: format!(
            "verify-{}-{}",
            chrono::Utc::now().format("%Y%m%d-%H%M%S"),
            run::random_hex(6)
        ),
        run_id: run.map(|(r, _)| r.run_id.clone()),
        component_digest: runner.digest().to_string(),
        user_name: run::user_name(),
        host_name: run::host_name(),
        started_at: now(),
        lookups: plan.lookups.digests(),
        ..VerificationRecord::default()
    };
    let (throttle, watching) = run::start_throttle(spec, &db, progress.clone(), None, None)?;
    let ctx = Arc::new(run::context(
        spec,
        Purpose::Verify { dead },
        record.run_id.as_deref().unwrap_or(""),
        db,
        None,
        plan.layout,
        runner,
        plan::setup(spec, env, plan.lookups.clone()),
        progress,
        throttle,
    ));
    let span = info_span!("verify", run = record.run_id.as_deref().unwrap_or("-"));
    let ended = pipeline::execute(ctx.clone(), feed, spec.concurrency())
        .instrument(span)
        .await?;
    drop(watching);
    if let pipeline::Ended::Stopped(stop) = ended {
        return Err(RunError::Stopped(stop));
    }
    let samples = Arc::into_inner(ctx)
        .map(|c| c.samples.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default();
    let counts = samples.session;
    record.finished_at = Some(now());
    record.rows = counts.rows;
    record.matching = counts.unchanged;
    record.differing = counts.updated;
    record.skipped = counts.skipped;
    record.dead_lettered = samples.dead_lettered;
    record.failed = counts.failed - samples.dead_lettered;
    record.chunks = samples.chunks;
    record.differing_chunks = samples.differing_chunks;
    // In key order: chunks finish in any order, rows within one in order.
    let in_order = |mut keys: Vec<(u64, crate::chunk::Key)>| {
        keys.sort_by_key(|(chunk, _)| *chunk);
        keys.into_iter().map(|(_, key)| key).collect()
    };
    record.differing_keys = in_order(samples.differing_keys);
    // The diffs are those of the lowest chunks, in order.
    record.differences = samples
        .diffs
        .iter()
        .flat_map(|d| {
            d.changes
                .iter()
                .map(|(column, actual, expected)| Difference {
                    key: d.key.clone(),
                    column: column.clone(),
                    actual: actual.clone(),
                    expected: expected.clone(),
                })
        })
        .collect();
    record.failed_keys = in_order(samples.failed_keys);
    record.passed = record.differing == 0 && record.failed == 0;
    if let Some((_, state)) = run {
        state.record(&record).await?;
    }
    Ok(record)
}
