//! `refill report`: consumes a run's records in the state store; produces a
//! [`Report`]: what ran (spec hash, component digest, host version, who,
//! when), each chunk's rows, durations and throughput, the failed rows
//! grouped by error with example keys, conflicts and retries, and what was
//! done to the run since (retries of its dead letters, verifications,
//! rollbacks).

use serde::Serialize;

use crate::state::{
    ChunkRecord, Counts, RetryRecord, RollbackRecord, RunRecord, SessionRecord, StateError,
    StateStore, VerificationRecord,
};

/// Failed rows sharing an error.
#[derive(Clone, Debug, Serialize)]
pub struct FailureGroup {
    /// What kind of failure (`None`: recorded by an older refill).
    pub kind: Option<crate::state::FailureKind>,
    /// The error.
    pub error: String,
    /// How many rows (unresolved).
    pub rows: u64,
    /// A few of their keys.
    pub keys: Vec<String>,
}

/// A chunk's line in the report.
#[derive(Clone, Debug, Serialize)]
pub struct ChunkLine {
    /// The chunk's record.
    #[serde(flatten)]
    pub chunk: ChunkRecord,
    /// Rows per second over its read, transform and write time.
    pub rows_per_sec: f64,
}

/// Everything known about a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The run.
    pub run: RunRecord,
    /// Its counts, summed over finished chunks.
    pub totals: Counts,
    /// Its chunks.
    pub chunks: Vec<ChunkLine>,
    /// The processes that worked on it.
    pub sessions: Vec<SessionRecord>,
    /// Dead letters in all, and how many are still unresolved.
    pub dead_letters: u64,
    /// Dead letters no retry has resolved.
    pub unresolved: u64,
    /// The unresolved ones by error, most frequent first.
    pub failures: Vec<FailureGroup>,
    /// Retries of its dead letters.
    pub retries: Vec<RetryRecord>,
    /// Verifications of it.
    pub verifications: Vec<VerificationRecord>,
    /// Rollbacks of it.
    pub rollbacks: Vec<RollbackRecord>,
}

/// Gathers the report of `run`.
pub async fn report(state: &StateStore, run: RunRecord) -> Result<Report, StateError> {
    let (totals, _) = state.totals(&run.run_id).await?;
    let chunks = state
        .chunks(&run)
        .await?
        .into_iter()
        .map(|chunk| {
            let t = &chunk.timings;
            let ms = t.read_ms + t.transform_ms + t.write_ms;
            let rows_per_sec = if ms == 0 {
                0.0
            } else {
                chunk.counts.rows as f64 * 1000.0 / ms as f64
            };
            ChunkLine {
                chunk,
                rows_per_sec,
            }
        })
        .collect();
    let all = state.dead_letters(&run.run_id, run.key_type, false).await?;
    let unresolved = all.iter().filter(|d| d.resolved_at.is_none()).count() as u64;
    let failures = state
        .dead_letter_groups(&run.run_id, 20)
        .await?
        .into_iter()
        .map(|g| FailureGroup {
            kind: g.kind,
            error: g.error,
            rows: g.rows,
            keys: g.keys,
        })
        .collect();
    Ok(Report {
        totals,
        chunks,
        sessions: state.sessions(&run.run_id).await?,
        dead_letters: all.len() as u64,
        unresolved,
        failures,
        retries: state.records(&run.run_id).await?,
        verifications: state.records(&run.run_id).await?,
        rollbacks: state.records(&run.run_id).await?,
        run,
    })
}
