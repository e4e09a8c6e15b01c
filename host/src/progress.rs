//! Live progress: consumes what the pipeline and the throttle report as
//! they go; produces the counters, the throttle's phase and reason, the
//! recent rate and the ETA that the progress line, `refill status` and the
//! metrics endpoint show.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Serialize;

/// What a run is doing about its pace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Taking chunks.
    Running,
    /// Waiting on a limit or a health signal.
    Throttled,
    /// Paused on request (`refill pause`), and no chunk is being written.
    Paused,
    /// Paused on request, while the chunks already taken finish.
    Pausing,
    /// Finishing the chunks in flight, then stopping.
    Stopping,
}

impl Phase {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Throttled => "throttled",
            Phase::Paused => "paused",
            Phase::Pausing => "pausing",
            Phase::Stopping => "stopping",
        }
    }

    /// The phase of a stored name.
    pub fn parse(s: &str) -> Option<Phase> {
        [
            Phase::Running,
            Phase::Throttled,
            Phase::Paused,
            Phase::Pausing,
            Phase::Stopping,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The phase and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    /// What the run is doing.
    pub phase: Phase,
    /// What holds it, in one word from a fixed set (`rate`, `probe`,
    /// `replica-lag`, `write-latency`, `gentle`, a health indicator such as
    /// `vacuum`, `window`, `paused`, `state-store`, `starting`, `stop`): a
    /// metrics label.
    pub cause: Option<&'static str>,
    /// Why it waits or stops, in full.
    pub reason: Option<String>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            phase: Phase::Running,
            cause: None,
            reason: None,
        }
    }
}

/// Live counters of a run. Rows count from the start of the run, including
/// chunks done by earlier sessions.
#[derive(Debug)]
pub struct Progress {
    /// Rows the run covers.
    pub total_rows: AtomicU64,
    /// Rows processed.
    pub done_rows: AtomicU64,
    /// Rows with per-row errors.
    pub failed_rows: AtomicU64,
    /// Chunks finished.
    pub chunks_done: AtomicU64,
    /// Rows written (this session).
    pub updated_rows: AtomicU64,
    /// Rows already right (this session).
    pub unchanged_rows: AtomicU64,
    /// Rows skipped (this session).
    pub skipped_rows: AtomicU64,
    /// Rows redone after a concurrent change (this session).
    pub conflicts: AtomicU64,
    /// Rows another transaction held locked, deferred (this session).
    pub busy_rows: AtomicU64,
    /// Rows deferred now, waiting for their next try.
    pub deferred_rows: AtomicU64,
    /// Rows of the next chunk.
    pub chunk_rows: AtomicU64,
    /// Set by Ctrl-C: stop taking chunks, finish those in flight.
    pub interrupted: AtomicBool,
    /// Chunks a worker is transforming or writing now.
    pub in_flight: AtomicU64,
    /// Chunk durations (read, transform and write), in seconds.
    pub chunk_seconds: Histogram,
    status: Mutex<Status>,
    recent: Mutex<RecentRate>,
    run: Mutex<(String, String)>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            total_rows: AtomicU64::new(0),
            done_rows: AtomicU64::new(0),
            failed_rows: AtomicU64::new(0),
            chunks_done: AtomicU64::new(0),
            updated_rows: AtomicU64::new(0),
            unchanged_rows: AtomicU64::new(0),
            skipped_rows: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            busy_rows: AtomicU64::new(0),
            deferred_rows: AtomicU64::new(0),
            chunk_rows: AtomicU64::new(0),
            interrupted: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            chunk_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            status: Mutex::new(Status::default()),
            recent: Mutex::new(RecentRate::default()),
            run: Mutex::new((String::new(), String::new())),
        }
    }
}

impl Progress {
    /// Names the run these counters are about (its id and spec name).
    pub fn set_run(&self, run_id: &str, name: &str) {
        *self.run.lock().unwrap_or_else(|e| e.into_inner()) = (run_id.into(), name.into());
    }

    /// The run's id and spec name, once known.
    pub fn run(&self) -> (String, String) {
        self.run.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current phase and reason. A pause is `pausing` until the chunks
    /// already taken are written.
    pub fn status(&self) -> Status {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if status.phase == Phase::Paused && self.in_flight.load(Ordering::Relaxed) > 0 {
            status.phase = Phase::Pausing;
        }
        status
    }

    /// Sets how many rows earlier sessions did: the starting point, which
    /// the recent rate must not take for speed.
    pub fn start_at(&self, done_rows: u64) {
        self.done_rows.store(done_rows, Ordering::Relaxed);
        *self.recent.lock().unwrap_or_else(|e| e.into_inner()) = RecentRate::default();
    }

    /// Sets the phase and reason; returns whether they changed.
    pub fn set_status(&self, status: Status) -> bool {
        let mut slot = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *slot != status;
        *slot = status;
        changed
    }

    /// Records how many rows are done now, for the recent rate.
    pub fn sample(&self) {
        let done = self.done_rows.load(Ordering::Relaxed);
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(Instant::now(), done);
    }

    /// Rows per second over the last samples (see [`RecentRate`]).
    pub fn rate(&self) -> Option<f64> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).rate()
    }

    /// The time the remaining rows take at the recent rate.
    pub fn eta(&self) -> Option<Duration> {
        let left = self
            .total_rows
            .load(Ordering::Relaxed)
            .saturating_sub(self.done_rows.load(Ordering::Relaxed));
        if left == 0 {
            return Some(Duration::ZERO);
        }
        let rate = self.rate()?;
        (rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / rate))
    }
}

/// The rate over a sliding window of samples: rows per second over the
/// last [`RecentRate::SPAN`], not since the start, so an ETA follows
/// throttling, pauses and chunk sizes as they change. A resumed run's first
/// count (rows done by earlier sessions) is not mistaken for speed, since
/// only differences between samples count.
#[derive(Debug, Default)]
pub struct RecentRate {
    samples: VecDeque<(Instant, u64)>,
}

impl RecentRate {
    /// How far back the rate looks.
    pub const SPAN: Duration = Duration::from_secs(10);

    /// Adds a sample: `done` rows at `now`.
    pub fn observe(&mut self, now: Instant, done: u64) {
        self.samples.push_back((now, done));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > Self::SPAN)
        {
            self.samples.pop_front();
        }
    }

    /// Rows per second between the oldest and the newest sample, once they
    /// are half a second apart.
    pub fn rate(&self) -> Option<f64> {
        let (&(t0, d0), &(t1, d1)) = (self.samples.front()?, self.samples.back()?);
        let secs = t1.duration_since(t0).as_secs_f64();
        (secs >= 0.5).then(|| d1.saturating_sub(d0) as f64 / secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_follows_the_recent_window() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut r = RecentRate::default();
        // A resumed run starts at 50,000 rows: not speed.
        r.observe(at(0), 50_000);
        assert_eq!(r.rate(), None);
        for s in 1..=20 {
            r.observe(at(s), 50_000 + 1_000 * s);
        }
        assert_eq!(r.rate(), Some(1_000.0));
        // Paused: the rate falls to zero within the window.
        for s in 21..=31 {
            r.observe(at(s), 70_000);
        }
        assert_eq!(r.rate(), Some(0.0));

        let p = Progress::default();
        p.total_rows.store(100, Ordering::Relaxed);
        p.done_rows.store(100, Ordering::Relaxed);
        assert_eq!(p.eta(), Some(Duration::ZERO));
    }
}
