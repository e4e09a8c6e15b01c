//! `refill rollback`: consumes a run's before-images and the spec it ran;
//! produces, chunk by chunk, the target rows put back to the values they
//! held before the run wrote them. A row is restored only if it still holds
//! what the run wrote, checked again by the write itself (a guard on the
//! target columns' token); a row changed since is left alone and named.
//! Without `--execute` it only counts.
//!
//! It writes to production like a run, so it goes through the same
//! controller ([`Throttle`]): each piece of a chunk is admitted (windows,
//! health signals, a pause), cut to the chunk size the controller gives
//! (the rate's share, adaptive sizes), paced on the rows-per-second limit
//! and held between chunks; with `--execute` its session is recorded on
//! the run, so `refill status` shows it and `refill pause`, `resume` and
//! `abort` reach it. A rollback stopped by an abort or Ctrl-C finishes
//! when run again: rows already put back count as unchanged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use tracing::{info, warn};

use crate::backoff::{self, Policy};
use crate::chunk::Key;
use crate::ops::run::{self, Progress, RunError};
use crate::plan;
use crate::sink::{self, Guard, Update};
use crate::source::{Database, Layout};
use crate::spec::Spec;
pub use crate::state::RollbackRecord;
use crate::state::{Image, RunRecord, RunStatus, SessionKind, StateStore, now};
use crate::throttle::{Stop, Throttle};
use crate::value;

/// Keys a rollback lists.
const LISTED_KEYS: usize = 1_000;

/// How a rollback went.
#[derive(Debug)]
pub struct RollbackReport {
    /// The rollback, as recorded.
    pub record: RollbackRecord,
    /// Why it stopped before its end on request (`refill abort`, Ctrl-C),
    /// if it did; running it again finishes it.
    pub stop: Option<Stop>,
}

/// Restores what `run` changed (with `execute`), or counts what would be.
/// Once restoring began, an error or a stop ends the rollback but is
/// returned in the record's `message`, with the counts so far: running the
/// rollback again finishes it (rows already restored count as unchanged).
/// An error before (another process holds the lock) is returned as such.
pub async fn rollback(
    spec: &Spec,
    state: &StateStore,
    run: &RunRecord,
    execute: bool,
    progress: Arc<Progress>,
) -> Result<RollbackReport, RunError> {
    run::same_data(spec, run, "roll it back")?;
    let runner = run::load_transform(spec, false)?;
    // One connection reads and writes; the health signals get their own.
    let db = Database::for_spec(spec, 3, execute).await?;
    let layout = plan::resolve(spec, &db, runner.info()).await?;
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
    progress
        .total_rows
        .store(chunks.iter().map(|(_, rows)| rows).sum(), Ordering::Relaxed);
    // Only a rollback that writes is steered from elsewhere: one that
    // counts is no process working on the run.
    let session = execute.then(|| run::new_session(SessionKind::Rollback));
    // Whether restoring began: an error before it is returned as such.
    let begun = AtomicBool::new(false);
    let work = async {
        let (throttle, watching) =
            run::take_over(spec, &db, state, run, session.as_ref(), &progress, execute).await?;
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
        let restorer = Restorer {
            db: &db,
            layout: &layout,
            policy: run::policy(spec),
            state,
            run,
            throttle: &throttle,
            progress: &progress,
            execute,
            retries: AtomicU64::new(0),
            busy: std::sync::Mutex::new(Vec::new()),
            max_lock_wait: spec.file.timeouts.max_lock_wait,
        };
        let ended = restorer.all(&chunks, &mut record).await;
        drop(watching);
        if let Some(session) = &session {
            let stop = ended.as_ref().ok().and_then(Option::as_ref);
            let outcome = run::session_outcome(ended.is_err(), stop);
            state.end_session(&session.session_id, outcome).await?;
        }
        ended
    };
    let outcome = match &session {
        Some(session) => run::with_lock(state, spec.name(), session, work).await,
        None => work.await,
    };
    record.finished_at = Some(now());
    record.message = match &outcome {
        Err(error) => Some(error.to_string()),
        Ok(Some(stop)) => Some(format!("{stop}; run the rollback again to finish it")),
        Ok(None) if record.locked > 0 => Some(format!(
            "{} rows were held locked by another transaction for more than {}; run the rollback again to put them back",
            record.locked,
            humantime::format_duration(spec.file.timeouts.max_lock_wait)
        )),
        Ok(None) => None,
    };
    state.record(&record).await?;
    let stop = match outcome {
        Err(error) if !begun.load(Ordering::Relaxed) => return Err(error),
        Err(_) => None,
        Ok(stop) => stop,
    };
    if execute && record.message.is_none() {
        let note = format!("rolled back by {} at {}", record.rollback_id, now());
        state
            .set_run_status(&run.run_id, RunStatus::RolledBack, Some(&note))
            .await?;
    }
    Ok(RollbackReport { record, stop })
}

/// What putting rows back needs, for one rollback.
struct Restorer<'a> {
    db: &'a Database,
    layout: &'a Layout,
    policy: Policy,
    state: &'a StateStore,
    run: &'a RunRecord,
    throttle: &'a Throttle,
    progress: &'a Progress,
    execute: bool,
    /// Transient database errors retried so far.
    retries: AtomicU64,
    /// Rows another transaction held locked: their chunk, image, when
    /// first found locked, and when to try again.
    busy: std::sync::Mutex<Vec<Locked>>,
    /// How long a locked row is tried again.
    max_lock_wait: std::time::Duration,
}

/// A row a rollback found locked, waiting for another try.
struct Locked {
    chunk: u64,
    image: Image,
    since: Instant,
    attempts: u32,
    due: Instant,
}

impl Restorer<'_> {
    /// Puts back every chunk's rows (`chunks`: id and stored rows), in
    /// pieces the controller admits one at a time. Returns why it stopped
    /// on request, if it did; the pieces not yet begun are left for the
    /// next rollback.
    async fn all(
        &self,
        chunks: &[(u64, u64)],
        record: &mut RollbackRecord,
    ) -> Result<Option<Stop>, RunError> {
        for &(chunk, stored) in chunks {
            let images = self
                .state
                .images(&self.run.run_id, chunk, self.run.key_type)
                .await?;
            // A row written twice (a chunk redone after a crash) is one
            // row to put back.
            let twice = stored.saturating_sub(images.len() as u64);
            self.progress.total_rows.fetch_sub(twice, Ordering::Relaxed);
            let mut rest = images.as_slice();
            while !rest.is_empty() {
                let rows = match self.throttle.admit(None).await {
                    Ok(rows) => rows,
                    Err(stop) => return Ok(Some(stop)),
                };
                let n = usize::try_from(rows).unwrap_or(usize::MAX);
                let (piece, after) = rest.split_at(n.clamp(1, rest.len()));
                if let Err(stop) = self.throttle.pace(piece.len() as u64).await {
                    return Ok(Some(stop));
                }
                // Held (a pause, a signal, the pause between chunks) before
                // the target rows are read: what is compared is what they
                // hold when they are written.
                if let Err(stop) = self.throttle.hold().await {
                    return Ok(Some(stop));
                }
                let done = self.piece(chunk, piece, record).await;
                self.throttle.released();
                done?;
                // What is back is on record as it goes: a rollback killed
                // midway still reports what it restored.
                self.state.record(record).await?;
                rest = after;
            }
        }
        self.locked_rows(record).await
    }

    /// Tries the rows found locked again, as they come due, until each is
    /// put back (or left, changed since) or has been held longer than
    /// `max_lock_wait`: those are counted as locked, for the next rollback.
    async fn locked_rows(&self, record: &mut RollbackRecord) -> Result<Option<Stop>, RunError> {
        loop {
            let (due, next) = {
                let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let (due, later): (Vec<Locked>, Vec<Locked>) =
                    busy.drain(..).partition(|l| l.due <= now);
                let next = later.iter().map(|l| l.due).min();
                *busy = later;
                (due, next)
            };
            if due.is_empty() {
                match next {
                    None => return Ok(None),
                    Some(at) => {
                        tokio::time::sleep_until(at.into()).await;
                        continue;
                    }
                }
            }
            if let Err(stop) = self.throttle.admit(None).await {
                self.busy
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(due);
                return Ok(Some(stop));
            }
            let mut by_chunk: std::collections::BTreeMap<u64, Vec<Locked>> = Default::default();
            for l in due {
                by_chunk.entry(l.chunk).or_default().push(l);
            }
            for (chunk, rows) in by_chunk {
                let (expired, retry): (Vec<Locked>, Vec<Locked>) = rows
                    .into_iter()
                    .partition(|l| l.since.elapsed() >= self.max_lock_wait);
                for l in expired {
                    warn!(chunk, key = %l.image.key, "A row stayed locked by another transaction past max_lock_wait; it was not put back.");
                    record.locked += 1;
                    if record.locked_keys.len() < LISTED_KEYS {
                        record.locked_keys.push(l.image.key.clone());
                    }
                }
                if retry.is_empty() {
                    continue;
                }
                let images: Vec<Image> = retry.iter().map(|l| l.image.clone()).collect();
                let before: HashMap<Key, (Instant, u32)> = retry
                    .iter()
                    .map(|l| (l.image.key.clone(), (l.since, l.attempts)))
                    .collect();
                if let Err(stop) = self.throttle.hold().await {
                    return Ok(Some(stop));
                }
                let done = self.piece(chunk, &images, record).await;
                self.throttle.released();
                done?;
                // Rows still locked keep their first time and count a try.
                let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
                for l in busy.iter_mut().filter(|l| l.chunk == chunk) {
                    if let Some(&(since, attempts)) = before.get(&l.image.key) {
                        l.since = since;
                        l.attempts = attempts + 1;
                        l.due = Instant::now() + lock_backoff(l.attempts);
                    }
                }
            }
        }
    }

    /// Reads the rows of `images` (of `chunk`) as they are now and puts
    /// back those that still hold what the run wrote.
    // Longer than 100 lines: one piece is one transaction: read, compare, write, count; split, its steps would pass the transaction around.
    async fn piece(
        &self,
        chunk: u64,
        images: &[Image],
        record: &mut RollbackRecord,
    ) -> Result<(), RunError> {
        let started = Instant::now();
        let counted = (
            record.restored,
            record.already_previous,
            record.gone,
            record.changed_since,
        );
        let keys: Vec<Key> = images.iter().map(|i| i.key.clone()).collect();
        let current = backoff::retry(&self.policy, "reading target rows", &self.retries, || {
            self.db.read_targets(self.layout, &keys)
        })
        .await
        .map_err(|source| RunError::Read {
            chunk: format!("chunk {chunk}"),
            source,
        })?;
        let current: HashMap<&Key, _> = current.iter().map(|r| (&r.key, r)).collect();
        let mut restore = Vec::new();
        for image in images {
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
                changed(record, &image.key);
            }
        }
        let writing = Instant::now();
        let mut deferred = 0;
        if self.execute && !restore.is_empty() {
            let written = backoff::retry(&self.policy, "restoring a chunk", &self.retries, || {
                sink::write(self.db, self.layout, &restore, Guard::Outputs)
            })
            .await
            .map_err(|source| RunError::Write {
                chunk: format!("chunk {chunk}"),
                source,
            })?;
            for (key, reason) in &written.rejected {
                warn!(%key, %reason, "The database refused a previous value; the row was left alone.");
                changed(record, key);
            }
            record.restored += written.written.len() as u64;
            // Rows another transaction holds are not waited for: they are
            // tried again at the end.
            let busy: HashSet<&Key> = written.busy.iter().collect();
            deferred = busy.len() as u64;
            if !busy.is_empty() {
                let now = Instant::now();
                let mut locked = self.busy.lock().unwrap_or_else(|e| e.into_inner());
                for image in images.iter().filter(|i| busy.contains(&i.key)) {
                    locked.push(Locked {
                        chunk,
                        image: image.clone(),
                        since: now,
                        attempts: 1,
                        due: now + lock_backoff(1),
                    });
                }
            }
            // The guard stopped the others: they changed between the read
            // above and the write.
            let done: HashSet<&Key> = written.written.iter().collect();
            let refused: HashSet<&Key> = written.rejected.iter().map(|(k, _)| k).collect();
            for update in &restore {
                if !done.contains(&update.key)
                    && !refused.contains(&update.key)
                    && !busy.contains(&update.key)
                {
                    changed(record, &update.key);
                }
            }
        } else {
            record.restored += restore.len() as u64;
        }
        let write = writing.elapsed();
        // The progress line and the metrics: restored rows count as
        // updated, rows already back as unchanged, rows gone as skipped,
        // rows changed since (left alone) as failed.
        let p = self.progress;
        let add = |counter: &AtomicU64, now: u64, before: u64| {
            counter.fetch_add(now - before, Ordering::Relaxed);
        };
        add(&p.updated_rows, record.restored, counted.0);
        add(&p.unchanged_rows, record.already_previous, counted.1);
        add(&p.skipped_rows, record.gone, counted.2);
        add(&p.failed_rows, record.changed_since, counted.3);
        // Rows deferred are counted done once they are settled.
        p.done_rows
            .fetch_add(images.len() as u64 - deferred, Ordering::Relaxed);
        p.chunks_done.fetch_add(1, Ordering::Relaxed);
        self.throttle.chunk_done(
            images.len() as u64,
            record.restored - counted.0,
            started.elapsed(),
            write,
        );
        if self.execute {
            info!(
                chunk,
                rows = images.len(),
                restored = record.restored,
                changed_since = record.changed_since,
                "Rolled back rows of a chunk."
            );
        } else {
            info!(
                chunk,
                rows = images.len(),
                would_restore = record.restored,
                changed_since = record.changed_since,
                "Would roll back rows of a chunk (dry run: nothing written)."
            );
        }
        Ok(())
    }
}

/// The wait before trying a locked row again, as a run waits (see
/// `run::pipeline`).
fn lock_backoff(attempts: u32) -> std::time::Duration {
    crate::ops::run::pipeline::lock_backoff(u64::from(attempts))
}

fn changed(record: &mut RollbackRecord, key: &Key) {
    record.changed_since += 1;
    if record.changed_keys.len() < LISTED_KEYS {
        record.changed_keys.push(key.clone());
    }
}
