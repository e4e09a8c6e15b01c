//! The default limiter, `[throttle] mode = "gentle"`: consumes latency
//! samples of a cheap probe of the target (taken by the monitor 25 times
//! a second, first before the run's first chunk, for the baseline) and
//! each chunk's write; produces how many chunks may be in flight, how long
//! to wait before the next one, and a share of the chunk size, so that the
//! database's latency, as the application sees it, stays within
//! `latency_tolerance` of its baseline.
//!
//! The probe is an indexed point read of the target table; on PostgreSQL,
//! in a run that writes, it also commits a transaction id, so that it
//! waits for the WAL as the application's commits do (a read alone misses
//! the WAL contention that a write-heavy application feels first).
//!
//! What the limiter judges is the tail, not the median: the application
//! is hurt by the transactions that overlap a chunk's write, and those are
//! a minority while the run pauses between chunks. So it compares the 85th
//! percentile of the last [`WINDOW`] samples (two seconds, taken whether a
//! chunk is in flight or not) with the same percentile of the baseline's
//! [`BASELINE_SAMPLES`] (two seconds too).
//!
//! The adaptation is AIMD, as in Netflix's concurrency-limits, decided
//! once per window: over the tolerance, it backs off multiplicatively
//! (fewer chunks in flight, a doubled pause, smaller chunks); comfortably
//! under it, it speeds up by one step. The pause is a ratio of the last
//! chunk's time, as gh-ost's `--nice-ratio` is: a duty cycle, whatever the
//! chunk size. A chunk whose write per row takes much longer than the
//! fastest seen at its size or smaller counts as congestion too. Other
//! throttle keys (rate, windows, signals) only cap it further.
//!
//! The latency the run is judged against follows the database while the
//! run is quiet (no chunk for a second): a load of the application's own
//! that raises latency for everyone raises it too, so the limiter judges
//! what the run adds, not what others do; it never goes below the
//! baseline.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Samples of the probe judged at once: two seconds of them.
pub const WINDOW: usize = 50;
/// Samples the baseline is taken from: two seconds of them too (its tail
/// is what every window is judged against, and a tail measured from a
/// few samples is mostly noise).
pub const BASELINE_SAMPLES: usize = 50;
/// The quantile of a window that is judged.
const TAIL: f64 = 0.85;

/// The percentile the limiter judges, as messages name it.
pub fn tail_percent() -> u32 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a quantile in (0, 1)"
    )]
    let percent = (TAIL * 100.0).round() as u32;
    percent
}
/// The longest pause the limiter asks for between chunks.
pub const MAX_PAUSE: Duration = Duration::from_secs(5);
/// The pause, as a ratio of the last chunk's time, when it first backs
/// off.
const FIRST_NICE: f64 = 0.25;
/// The largest pause ratio: one chunk's time in twenty is the run's.
const MAX_NICE: f64 = 19.0;
/// The pause ratio it starts with: half the time.
const START_NICE: f64 = 1.0;
/// The smallest share of the chunk size it asks for (smaller chunks cost
/// more per row, and so load the database more for the same work).
const MIN_SHARE: f64 = 1.0 / 8.0;
/// Below this share of the tolerance, the limiter speeds up.
const HEADROOM: f64 = 0.8;
/// Latency under this is noise, whatever the baseline (a point read on a
/// quiet loopback takes a fraction of a millisecond).
const FLOOR: Duration = Duration::from_micros(300);
/// Weight of a quiet sample in the moving reference.
const AMBIENT_WEIGHT: f64 = 0.2;

/// The limiter's state.
#[derive(Clone, Debug)]
pub struct Gentle {
    tolerance: f64,
    most: u32,
    baseline: Vec<Duration>,
    /// The moving reference, in seconds: the baseline, then following
    /// quiet samples (never below the baseline).
    ambient: Option<f64>,
    recent: VecDeque<Duration>,
    /// Chunks allowed in flight.
    concurrency: u32,
    /// The pause before the next chunk, as a ratio of the last chunk's
    /// time.
    nice: f64,
    /// The last chunk's time.
    last_chunk: Duration,
    /// Share of the chunk size.
    share: f64,
    /// The fastest write per row seen, in seconds, by chunk size (the
    /// power of two at or below its rows).
    fastest_write: BTreeMap<u32, f64>,
    /// Why it holds back now, if it does.
    reason: Option<String>,
}

/// What the limiter allows now.
#[derive(Clone, Debug, PartialEq)]
pub struct Allowance {
    /// Chunks in flight at most.
    pub concurrency: u32,
    /// The pause before the next chunk.
    pub pause: Duration,
    /// Share of the chunk size, in (0, 1].
    pub share: f64,
    /// Why it is slower than flat out, if it is.
    pub reason: Option<String>,
}

impl Gentle {
    /// A limiter keeping latency within `tolerance` times its baseline,
    /// with at most `most` chunks in flight. It starts slow (one chunk in
    /// flight, small chunks, a pause as long as each chunk) and speeds up
    /// while latency allows.
    pub fn new(tolerance: f64, most: u32) -> Gentle {
        Gentle {
            tolerance: tolerance.max(1.0),
            most: most.max(1),
            baseline: Vec::new(),
            ambient: None,
            recent: VecDeque::new(),
            concurrency: 1,
            nice: START_NICE,
            last_chunk: Duration::ZERO,
            share: 0.25,
            fastest_write: BTreeMap::new(),
            reason: None,
        }
    }

    /// Whether the baseline is measured (the run may start).
    pub fn ready(&self) -> bool {
        self.baseline.len() >= BASELINE_SAMPLES
    }

    /// Takes `baseline` as the baseline, in place of one measured here: the
    /// run's, measured by the first of its workers before its first chunk.
    pub fn adopt(&mut self, baseline: Duration) {
        self.baseline = vec![baseline; BASELINE_SAMPLES];
    }

    /// The baseline: the probe's tail percentile before the run started.
    pub fn baseline(&self) -> Option<Duration> {
        self.ready().then(|| percentile(&self.baseline, TAIL))
    }

    /// The latency the run is judged against now.
    pub fn reference(&self) -> Option<Duration> {
        let base = self.baseline()?.max(FLOOR);
        Some(
            self.ambient
                .map_or(base, |a| Duration::from_secs_f64(a).max(base)),
        )
    }

    /// Takes in a probe's latency; `quiet` if no chunk of the run was in
    /// flight while it ran, nor for a while before.
    pub fn sample(&mut self, latency: Duration, quiet: bool) {
        if !self.ready() {
            self.baseline.push(latency);
            return;
        }
        if quiet {
            let base = self.reference().unwrap_or(FLOOR).as_secs_f64();
            let a = self.ambient.unwrap_or(base);
            self.ambient =
                Some(AMBIENT_WEIGHT * latency.as_secs_f64() + (1.0 - AMBIENT_WEIGHT) * a);
        }
        self.recent.push_back(latency);
        if self.recent.len() < WINDOW {
            return;
        }
        let now = percentile(self.recent.make_contiguous(), TAIL);
        let base = self.reference().unwrap_or(FLOOR);
        let ratio = now.as_secs_f64() / base.as_secs_f64();
        tracing::debug!(
            tail_ms = now.as_secs_f64() * 1e3,
            reference_ms = base.as_secs_f64() * 1e3,
            ratio,
            nice = self.nice,
            share = self.share,
            concurrency = self.concurrency,
            "The gentle limiter judges a window of its probe."
        );
        if ratio > self.tolerance {
            self.back_off(format!(
                "the database's latency probe takes {:.1} ms ({}th percentile of its last {WINDOW}), \
                 over {:.1}× the {:.1} ms it takes without the run",
                now.as_secs_f64() * 1e3,
                tail_percent(),
                self.tolerance,
                base.as_secs_f64() * 1e3
            ));
        } else if ratio < self.tolerance * HEADROOM {
            self.speed_up();
        } else {
            // Neither: slide the window on by one sample.
            self.recent.pop_front();
            return;
        }
        // Each window is judged on its own.
        self.recent.clear();
    }

    /// Takes in a finished chunk: `rows` written in `write`, the chunk
    /// taking `elapsed` in all.
    pub fn wrote(&mut self, rows: u64, write: Duration, elapsed: Duration) {
        self.last_chunk = elapsed;
        if rows < 50 || write.is_zero() {
            return;
        }
        let per_row = write.as_secs_f64() / rows as f64;
        let size = rows.ilog2();
        let fastest = self
            .fastest_write
            .range(..=size)
            .map(|(_, f)| *f)
            .fold(per_row, f64::min);
        let entry = self.fastest_write.entry(size).or_insert(per_row);
        *entry = entry.min(per_row);
        // Writes slow down with size (WAL, index pages); twice the
        // tolerance leaves room for that.
        tracing::debug!(
            rows,
            per_row_us = per_row * 1e6,
            fastest_us = fastest * 1e6,
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            "The gentle limiter judges a chunk's write."
        );
        if per_row > fastest * self.tolerance * 2.0 {
            self.back_off(format!(
                "refill's writes take {:.0} µs a row, over {:.1}× the fastest seen at this chunk size or less ({:.0} µs)",
                per_row * 1e6,
                self.tolerance * 2.0,
                fastest * 1e6
            ));
        }
    }

    fn back_off(&mut self, reason: String) {
        self.concurrency = (self.concurrency / 2).max(1);
        self.nice = (self.nice * 2.0).clamp(FIRST_NICE, MAX_NICE);
        self.share = (self.share / 2.0).max(MIN_SHARE);
        self.reason = Some(reason);
    }

    fn speed_up(&mut self) {
        if self.nice > 0.0 {
            self.nice -= self.nice / 4.0 + 0.05;
            if self.nice < 0.05 {
                self.nice = 0.0;
            }
        } else if self.share < 1.0 {
            self.share = (self.share + 1.0 / 8.0).min(1.0);
        } else if self.concurrency < self.most {
            self.concurrency += 1;
        }
        if self.nice == 0.0 && self.share >= 1.0 && self.concurrency >= self.most {
            self.reason = None;
        }
    }

    /// What it allows now.
    pub fn allowance(&self) -> Allowance {
        let reason = self.reason.clone().or_else(|| {
            (self.nice > 0.0 || self.share < 1.0 || self.concurrency < self.most)
                .then(|| "starting gently, speeding up while the database's latency allows".into())
        });
        Allowance {
            concurrency: self.concurrency,
            pause: self.last_chunk.mul_f64(self.nice).min(MAX_PAUSE),
            share: self.share,
            reason,
        }
    }
}

/// The `p` quantile of `samples` (nearest rank).
fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank within a short window"
    )]
    let rank = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(rank).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn measured(tolerance: f64) -> Gentle {
        let mut g = Gentle::new(tolerance, 4);
        for _ in 0..BASELINE_SAMPLES {
            assert!(!g.ready());
            g.sample(ms(1), true);
        }
        assert!(g.ready());
        assert_eq!(g.baseline(), Some(ms(1)));
        g
    }

    /// Enough windows near the baseline to speed up all the way.
    fn sped_up(tolerance: f64) -> Gentle {
        let mut g = measured(tolerance);
        for _ in 0..20 * WINDOW {
            g.sample(ms(1), false);
        }
        g
    }

    #[test]
    fn starts_gently_and_speeds_up_one_step_a_window_while_latency_stays_near_its_baseline() {
        let mut g = measured(1.5);
        g.wrote(1000, ms(40), ms(100));
        let start = g.allowance();
        assert_eq!(start.concurrency, 1);
        assert_eq!(start.pause, ms(100), "a pause as long as the chunk");
        assert!(start.share < 1.0 && start.reason.is_some());
        // Judged once a window: one window less than that changes nothing.
        for _ in 0..WINDOW - 1 {
            g.sample(ms(1), false);
        }
        assert_eq!(g.allowance(), start);
        g.sample(ms(1), false);
        assert!(g.allowance().pause < start.pause);
        let mut g = sped_up(1.5);
        g.wrote(1000, ms(40), ms(100));
        let a = g.allowance();
        assert_eq!(a.concurrency, 4);
        assert_eq!(a.share, 1.0);
        assert_eq!(a.pause, Duration::ZERO);
        assert_eq!(a.reason, None);
    }

    #[test]
    fn backs_off_multiplicatively_on_the_tail_and_says_why() {
        let mut g = sped_up(1.5);
        g.wrote(1000, ms(40), ms(100));
        // A quarter of the window slow: the 85th percentile is.
        for i in 0..WINDOW {
            g.sample(if i % 4 == 0 { ms(5) } else { ms(1) }, false);
        }
        let a = g.allowance();
        assert_eq!(a.concurrency, 2);
        assert_eq!(a.pause, ms(25), "a quarter of the chunk's time");
        assert_eq!(a.share, 0.5);
        let reason = a.reason.expect("a reason");
        assert!(
            reason.contains("over 1.5× the 1.0 ms it takes without the run"),
            "{reason}"
        );
        // Still high: the pause ratio doubles, up to its bound.
        for _ in 0..20 * WINDOW {
            g.sample(ms(5), false);
        }
        let a = g.allowance();
        assert_eq!(a.concurrency, 1);
        assert_eq!(a.pause, ms(1900), "one chunk's time in twenty");
        assert_eq!(a.share, MIN_SHARE);
        // Long chunks: the pause has a bound of its own.
        g.wrote(1000, ms(400), Duration::from_secs(1));
        assert_eq!(g.allowance().pause, MAX_PAUSE);
    }

    #[test]
    fn a_few_slow_samples_are_not_congestion() {
        let mut g = sped_up(1.5);
        for i in 0..10 * WINDOW {
            g.sample(if i % 10 == 0 { ms(5) } else { ms(1) }, false);
        }
        assert_eq!(g.allowance().reason, None);
    }

    #[test]
    fn slow_writes_count_as_congestion_against_chunks_no_bigger() {
        let mut g = sped_up(1.5);
        g.wrote(1000, ms(10), ms(20));
        assert_eq!(g.allowance().pause, Duration::ZERO);
        // A smaller chunk costs more a row: not congestion.
        g.wrote(100, ms(5), ms(10));
        assert_eq!(g.allowance().reason, None);
        g.wrote(1000, ms(40), ms(80));
        let a = g.allowance();
        assert_eq!(a.pause, ms(20));
        assert!(a.reason.expect("why").contains("refill's writes take"));
        // Small writes are not judged.
        g.wrote(10, ms(1000), ms(80));
        assert_eq!(g.allowance().pause, ms(20));
    }

    #[test]
    fn a_load_of_others_raises_the_reference_but_not_below_the_baseline() {
        let mut g = sped_up(1.5);
        // The application's own load: 4 ms for everyone, the run quiet.
        for _ in 0..50 {
            g.sample(ms(4), true);
        }
        let reference = g.reference().expect("measured");
        assert!(reference > ms(3), "{reference:?}");
        // The run adds little on top: no back-off.
        for _ in 0..50 {
            g.sample(ms(5), false);
        }
        assert_eq!(g.allowance().reason, None);
        // Quiet again: the reference comes down, never below the baseline.
        for _ in 0..200 {
            g.sample(Duration::from_micros(100), true);
        }
        assert_eq!(g.reference(), Some(ms(1)));
    }

    #[test]
    fn sub_millisecond_noise_is_not_congestion() {
        let mut g = Gentle::new(1.5, 2);
        for _ in 0..BASELINE_SAMPLES {
            g.sample(Duration::from_micros(50), true);
        }
        for _ in 0..20 * WINDOW {
            g.sample(Duration::from_micros(200), false);
        }
        assert_eq!(g.allowance().reason, None);
    }
}
