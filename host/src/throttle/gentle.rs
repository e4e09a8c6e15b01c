//! The default limiter, `[throttle] mode = "gentle"`: consumes latency
//! samples of a cheap indexed point read on the target table (taken by the
//! monitor a few times a second, first before the run's first chunk, for
//! the baseline) and each chunk's write time per row; produces how many
//! chunks may be in flight, how long to wait before the next one, and a
//! share of the chunk size, so that the database's latency, as the
//! application sees it, stays within `latency_tolerance` of its baseline.
//!
//! The adaptation is AIMD, as in Netflix's concurrency-limits: while the
//! recent latency is over the tolerance, the limiter backs off
//! multiplicatively (fewer chunks in flight, a doubled pause, smaller
//! chunks); while it is comfortably under it, it speeds up additively. A
//! point read alone misses the WAL-flush contention a write-heavy
//! application feels, so a chunk whose write per row takes much longer
//! than the fastest seen counts as congestion too. Other throttle keys
//! (rate, windows, signals) only cap it further.
//!
//! The latency the run is judged against follows the database while the
//! run is idle (no chunk in flight, between pauses): a load of the
//! application's own that raises latency for everyone raises it too, so
//! the limiter judges what the run adds, not what others do; it never
//! goes below the baseline.

use std::collections::VecDeque;
use std::time::Duration;

/// Samples of the point read kept for the recent latency.
const WINDOW: usize = 8;
/// Samples the baseline is taken from.
const BASELINE_SAMPLES: usize = 10;
/// The longest pause the limiter asks for between chunks.
pub const MAX_PAUSE: Duration = Duration::from_secs(5);
/// The pause added when it first backs off.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// The smallest share of the chunk size it asks for.
const MIN_SHARE: f64 = 1.0 / 32.0;
/// Below this share of the tolerance, the limiter speeds up.
const HEADROOM: f64 = 0.8;
/// Latency under this is noise, whatever the baseline (a point read on a
/// quiet loopback takes a fraction of a millisecond).
const FLOOR: Duration = Duration::from_micros(300);
/// Weight of an idle sample in the moving reference.
const AMBIENT_WEIGHT: f64 = 0.2;

/// The limiter's state.
#[derive(Clone, Debug)]
pub struct Gentle {
    tolerance: f64,
    most: u32,
    baseline: Vec<Duration>,
    /// The moving reference, in seconds: the baseline, then following idle
    /// samples (never below the baseline).
    ambient: Option<f64>,
    recent: VecDeque<Duration>,
    /// Chunks allowed in flight.
    concurrency: u32,
    /// Pause before the next chunk.
    pause: Duration,
    /// Share of the chunk size.
    share: f64,
    /// The fastest write per row seen, in seconds.
    fastest_write: Option<f64>,
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
    /// flight, small chunks) and speeds up while latency allows.
    pub fn new(tolerance: f64, most: u32) -> Gentle {
        Gentle {
            tolerance: tolerance.max(1.0),
            most: most.max(1),
            baseline: Vec::new(),
            ambient: None,
            recent: VecDeque::new(),
            concurrency: 1,
            pause: Duration::ZERO,
            share: 0.25,
            fastest_write: None,
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

    /// The baseline: the median point read before the run started.
    pub fn baseline(&self) -> Option<Duration> {
        self.ready().then(|| median(&self.baseline))
    }

    /// The latency the run is judged against now.
    pub fn reference(&self) -> Option<Duration> {
        let base = self.baseline()?.max(FLOOR);
        Some(
            self.ambient
                .map_or(base, |a| Duration::from_secs_f64(a).max(base)),
        )
    }

    /// Takes in a point read's latency; `idle` if no chunk of the run was
    /// in flight while it ran.
    pub fn sample(&mut self, latency: Duration, idle: bool) {
        if !self.ready() {
            self.baseline.push(latency);
            return;
        }
        if idle {
            let base = self.reference().unwrap_or(FLOOR).as_secs_f64();
            let a = self.ambient.unwrap_or(base);
            self.ambient =
                Some(AMBIENT_WEIGHT * latency.as_secs_f64() + (1.0 - AMBIENT_WEIGHT) * a);
            return;
        }
        self.recent.push_back(latency);
        if self.recent.len() > WINDOW {
            self.recent.pop_front();
        }
        if self.recent.len() >= WINDOW / 2 {
            let now = median(self.recent.make_contiguous());
            let base = self.reference().unwrap_or(FLOOR);
            let ratio = now.as_secs_f64() / base.as_secs_f64();
            if ratio > self.tolerance {
                self.back_off(format!(
                    "the target's point read takes {:.1} ms, over {:.1}× the {:.1} ms it takes without the run",
                    now.as_secs_f64() * 1e3,
                    self.tolerance,
                    base.as_secs_f64() * 1e3
                ));
                // Judge the next window on its own.
                self.recent.clear();
            } else if ratio < self.tolerance * HEADROOM {
                self.speed_up();
            }
        }
    }

    /// Takes in a chunk's write: `rows` written in `write`.
    pub fn wrote(&mut self, rows: u64, write: Duration) {
        if rows < 50 || write.is_zero() {
            return;
        }
        let per_row = write.as_secs_f64() / rows as f64;
        let fastest = self.fastest_write.map_or(per_row, |f| f.min(per_row));
        self.fastest_write = Some(fastest);
        // Writes slow down with size (WAL, index pages); twice the
        // tolerance leaves room for that.
        if per_row > fastest * self.tolerance * 2.0 {
            self.back_off(format!(
                "refill's writes take {:.0} µs a row, over {:.1}× the fastest seen ({:.0} µs)",
                per_row * 1e6,
                self.tolerance * 2.0,
                fastest * 1e6
            ));
        }
    }

    fn back_off(&mut self, reason: String) {
        self.concurrency = (self.concurrency / 2).max(1);
        self.pause = (self.pause * 2).max(FIRST_PAUSE).min(MAX_PAUSE);
        self.share = (self.share / 2.0).max(MIN_SHARE);
        self.reason = Some(reason);
    }

    fn speed_up(&mut self) {
        if self.pause > Duration::ZERO {
            self.pause = self
                .pause
                .saturating_sub(self.pause / 4 + Duration::from_millis(2));
        } else if self.share < 1.0 {
            self.share = (self.share + 1.0 / 16.0).min(1.0);
        } else if self.concurrency < self.most {
            self.concurrency += 1;
        }
        if self.pause.is_zero() && self.share >= 1.0 && self.concurrency >= self.most {
            self.reason = None;
        }
    }

    /// What it allows now.
    pub fn allowance(&self) -> Allowance {
        let reason = self.reason.clone().or_else(|| {
            (self.pause > Duration::ZERO || self.share < 1.0 || self.concurrency < self.most)
                .then(|| "starting gently, speeding up while the database's latency allows".into())
        });
        Allowance {
            concurrency: self.concurrency,
            pause: self.pause,
            share: self.share,
            reason,
        }
    }
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
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

    #[test]
    fn speeds_up_while_latency_stays_near_its_baseline() {
        let mut g = measured(1.5);
        let start = g.allowance();
        assert_eq!(start.concurrency, 1);
        assert!(start.share < 1.0 && start.reason.is_some());
        for _ in 0..200 {
            g.sample(ms(1), false);
        }
        let a = g.allowance();
        assert_eq!(a.concurrency, 4);
        assert_eq!(a.share, 1.0);
        assert_eq!(a.pause, Duration::ZERO);
        assert_eq!(a.reason, None);
    }

    #[test]
    fn backs_off_multiplicatively_when_latency_rises_and_says_why() {
        let mut g = measured(1.5);
        for _ in 0..200 {
            g.sample(ms(1), false);
        }
        for _ in 0..WINDOW / 2 {
            g.sample(ms(5), false);
        }
        let a = g.allowance();
        assert_eq!(a.concurrency, 2);
        assert_eq!(a.pause, FIRST_PAUSE);
        assert_eq!(a.share, 0.5);
        let reason = a.reason.expect("a reason");
        assert!(
            reason.contains("over 1.5× the 1.0 ms it takes without the run"),
            "{reason}"
        );
        // Still high: the pause doubles, up to its bound.
        for _ in 0..100 {
            g.sample(ms(5), false);
        }
        let a = g.allowance();
        assert_eq!(a.concurrency, 1);
        assert_eq!(a.pause, MAX_PAUSE);
        assert_eq!(a.share, MIN_SHARE);
    }

    #[test]
    fn slow_writes_count_as_congestion() {
        let mut g = measured(1.5);
        for _ in 0..200 {
            g.sample(ms(1), false);
        }
        g.wrote(1000, ms(10));
        assert_eq!(g.allowance().pause, Duration::ZERO);
        g.wrote(1000, ms(40));
        let a = g.allowance();
        assert_eq!(a.pause, FIRST_PAUSE);
        assert!(a.reason.expect("why").contains("refill's writes take"));
        // Small writes are not judged.
        g.wrote(10, ms(1000));
        assert_eq!(g.allowance().pause, FIRST_PAUSE);
    }

    #[test]
    fn a_load_of_others_raises_the_reference_but_not_below_the_baseline() {
        let mut g = measured(1.5);
        // The application's own load: 4 ms for everyone, the run idle.
        for _ in 0..50 {
            g.sample(ms(4), true);
        }
        let reference = g.reference().expect("measured");
        assert!(reference > ms(3), "{reference:?}");
        // The run adds little on top: no back-off.
        for _ in 0..50 {
            g.sample(ms(5), false);
        }
        assert_eq!(g.allowance().pause, Duration::ZERO);
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
        for _ in 0..100 {
            g.sample(Duration::from_micros(200), false);
        }
        assert_eq!(g.allowance().reason, None);
    }
}
