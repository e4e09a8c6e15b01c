//! `refill rollback`: consumes a run's before-images and the spec it ran;
//! produces, chunk by chunk, the target rows put back to the values they
//! held before the run wrote them. A row is restored only if it still holds
//! what the run wrote, checked again by the write itself (a guard on the
//! target columns' token); a row changed since is left alone and named.
//! Without `--execute` it only counts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::{info, warn};

use crate::backoff;
use crate::chunk::Key;
use crate::plan;
use crate::run::{self, Progress, RunError};
use crate::sink::{self, Guard, Update};
use crate::source::Database;
use crate::spec::Spec;
use crate::state::{RollbackRecord, RunRecord, RunStatus, StateStore, now};
use crate::value;

/// Keys a rollback lists.
const LISTED_KEYS: usize = 1_000;

/// Restores what `run` changed (with `execute`), or counts what would be.
/// Once restoring began, an error stops the rollback but is returned in
/// the record's `message`, with the counts so far: running the rollback
/// again finishes it (rows already restored count as unchanged). An error
/// before (another process holds the lock) is returned as such.
pub async fn rollback(
    spec: &Spec,
    state: &StateStore,
    run: &RunRecord,
    execute: bool,
    progress: Arc<Progress>,
) -> Result<RollbackRecord, RunError> {
    if run.data_hash != spec.data_hash() {
        return Err(RunError::WrongSpec(format!(
            "run {} read and wrote other tables or columns than {} describes; roll it back with the spec it ran",
            run.run_id,
            spec.path.display()
        )));
    }
    let runner = run::load_transform(spec, false)?;
    let db = Database::for_spec(spec, 2, execute).await?;
    let layout = plan::resolve(spec, &db, runner.info()).await?;
    let policy = run::policy(spec);
    let mut record = RollbackRecord {
        rollback_id: format!("{}.rollback-{}", run.run_id, run::random_hex(6)),
        run_id: run.run_id.clone(),
        execute,
        user_name: run::user_name(),
        host_name: run::host_name(),
        started_at: now(),
        ..RollbackRecord::default()
    };
    let chunks = state.image_chunks(&run.run_id).await?;
    // Whether restoring began: an error before it is returned as such.
    let begun = AtomicBool::new(false);
    let work = async {
        state.record(&record).await?;
        if execute {
            // From here on the run must not resume: it would write again
            // what is being put back.
            let note = format!(
                "being rolled back by {} since {}; if that stopped, run the rollback again",
                record.rollback_id, record.started_at
            );
            state
                .set_run_status(&run.run_id, RunStatus::RolledBack, Some(&note))
                .await?;
        }
        begun.store(true, Ordering::Relaxed);
        let retries = AtomicU64::new(0);
        for chunk in chunks {
            let images = state.images(&run.run_id, chunk, run.key_type).await?;
            progress
                .total_rows
                .fetch_add(images.len() as u64, Ordering::Relaxed);
            let keys: Vec<Key> = images.iter().map(|i| i.key.clone()).collect();
            let current = backoff::retry(&policy, "reading target rows", &retries, || {
                db.read_targets(&layout, &keys)
            })
            .await
            .map_err(|source| RunError::Read {
                chunk: format!("chunk {chunk}"),
                source,
            })?;
            let current: HashMap<&Key, _> = current.iter().map(|r| (&r.key, r)).collect();
            let mut restore = Vec::new();
            for image in &images {
                let Some(now) = current.get(&image.key) else {
                    record.gone += 1;
                    continue;
                };
                let holds = |values: &[value::Value]| {
                    values
                        .iter()
                        .zip(&now.values)
                        .all(|(a, b)| value::same(a, b))
                };
                if holds(&image.after) {
                    restore.push(Update {
                        key: image.key.clone(),
                        values: image.before.clone(),
                        token: now.token.clone(),
                        expected: now.values.clone(),
                    });
                } else if holds(&image.before) {
                    record.already_previous += 1;
                } else {
                    changed(&mut record, &image.key);
                }
            }
            if execute && !restore.is_empty() {
                let written = backoff::retry(&policy, "restoring a chunk", &retries, || {
                    sink::write(&db, &layout, &restore, Guard::Outputs)
                })
                .await
                .map_err(|source| RunError::Write {
                    chunk: format!("chunk {chunk}"),
                    source,
                })?;
                for (key, reason) in &written.rejected {
                    warn!(%key, %reason, "The database refused a previous value; the row was left alone.");
                    changed(&mut record, key);
                }
                record.restored += written.written.len() as u64;
                // The guard stopped the others: they changed between the read
                // above and the write.
                let done: HashSet<&Key> = written.written.iter().collect();
                let refused: HashSet<&Key> = written.rejected.iter().map(|(k, _)| k).collect();
                for update in &restore {
                    if !done.contains(&update.key) && !refused.contains(&update.key) {
                        changed(&mut record, &update.key);
                    }
                }
            } else {
                record.restored += restore.len() as u64;
            }
            progress
                .done_rows
                .fetch_add(images.len() as u64, Ordering::Relaxed);
            info!(
                chunk,
                restored = record.restored,
                changed_since = record.changed_since,
                "Chunk rolled back."
            );
        }
        Ok::<(), RunError>(())
    };
    let outcome = if execute {
        run::with_lock(state, spec.name(), &run::new_session(), work).await
    } else {
        work.await
    };
    record.finished_at = Some(now());
    record.message = outcome.as_ref().err().map(ToString::to_string);
    state.record(&record).await?;
    if let Err(error) = outcome
        && !begun.load(Ordering::Relaxed)
    {
        return Err(error);
    }
    if execute && record.message.is_none() {
        let note = format!("rolled back by {} at {}", record.rollback_id, now());
        state
            .set_run_status(&run.run_id, RunStatus::RolledBack, Some(&note))
            .await?;
    }
    Ok(record)
}

fn changed(record: &mut RollbackRecord, key: &Key) {
    record.changed_since += 1;
    if record.changed_keys.len() < LISTED_KEYS {
        record.changed_keys.push(key.clone());
    }
}
