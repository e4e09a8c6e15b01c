//! Adaptive chunk sizes: consumes each finished chunk's rows and time;
//! produces the rows of the next chunk, so that a chunk takes about the
//! target time at the recent rate, within `[min_rows, max_rows]`.

use std::time::Duration;

/// Weight of the newest chunk in the moving average of rows per second.
const WEIGHT: f64 = 0.4;
/// The most a chunk grows over the previous size, so that one fast chunk
/// (rows already right, say) does not make the next one huge.
const GROWTH: f64 = 2.0;

/// Chooses chunk sizes.
#[derive(Clone, Debug)]
pub struct Sizer {
    /// The time a chunk aims at; zero keeps every chunk at `rows`.
    target: Duration,
    min: u64,
    max: u64,
    /// The size of the next chunk.
    rows: u64,
    /// Moving average of rows per second.
    rate: Option<f64>,
}

impl Sizer {
    /// A sizer starting at `rows` (clamped to the bounds when adapting).
    pub fn new(rows: u64, target: Duration, min: u64, max: u64) -> Sizer {
        let (min, max) = (min.max(1), max.max(min.max(1)));
        let rows = if target.is_zero() {
            rows.max(1)
        } else {
            rows.clamp(min, max)
        };
        Sizer {
            target,
            min,
            max,
            rows,
            rate: None,
        }
    }

    /// Whether sizes follow the rate.
    pub fn adapts(&self) -> bool {
        !self.target.is_zero()
    }

    /// Rows of the next chunk.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The moving average of rows per second, once a chunk is done.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// Lowers the most a chunk may have (a rows-per-second limit caps it),
    /// and the fewest if they were more.
    pub fn cap(&mut self, most: u64) {
        let most = most.max(1);
        self.min = self.min.min(most);
        self.max = self.max.min(most);
        self.rows = self.rows.clamp(self.min, self.max);
    }

    /// Takes in a finished chunk: `rows` in `elapsed`.
    pub fn observe(&mut self, rows: u64, elapsed: Duration) {
        if !self.adapts() || rows == 0 || elapsed.is_zero() {
            return;
        }
        let rate = rows as f64 / elapsed.as_secs_f64();
        let rate = match self.rate {
            Some(old) => WEIGHT * rate + (1.0 - WEIGHT) * old,
            None => rate,
        };
        self.rate = Some(rate);
        let wanted = rate * self.target.as_secs_f64();
        let grown = (self.rows as f64 * GROWTH).max(self.min as f64);
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive row count, clamped to the bounds right after"
        )]
        let next = wanted.min(grown).round() as u64;
        self.rows = next.clamp(self.min, self.max);
    }

    /// Halves the next chunk (the database is struggling).
    pub fn shrink(&mut self) {
        if self.adapts() {
            self.rows = (self.rows / 2).max(self.min);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_size_never_moves() {
        let mut s = Sizer::new(1000, Duration::ZERO, 100, 100_000);
        s.observe(1000, Duration::from_secs(10));
        s.shrink();
        assert_eq!(s.rows(), 1000);
        assert!(!s.adapts());
    }

    #[test]
    fn sizes_move_toward_the_target_time() {
        let target = Duration::from_millis(500);
        // A slow transform: 1,000 rows/s wants 500-row chunks.
        let mut s = Sizer::new(10_000, target, 10, 100_000);
        let mut sizes = Vec::new();
        for _ in 0..6 {
            let rows = s.rows();
            s.observe(rows, Duration::from_secs_f64(rows as f64 / 1000.0));
            sizes.push(s.rows());
        }
        assert_eq!(sizes.last(), Some(&500), "{sizes:?}");
        // Fast again, 100,000 rows/s: sizes grow, at most doubling.
        let mut last = s.rows();
        for _ in 0..10 {
            let rows = s.rows();
            s.observe(rows, Duration::from_secs_f64(rows as f64 / 100_000.0));
            assert!(s.rows() <= last * 2, "grows at most twofold");
            last = s.rows();
        }
        assert!((49_000..=50_000).contains(&s.rows()), "{}", s.rows());
    }

    #[test]
    fn bounds_and_caps_hold() {
        let mut s = Sizer::new(5, Duration::from_millis(500), 100, 2_000);
        assert_eq!(s.rows(), 100, "the first size is clamped");
        s.observe(100, Duration::from_millis(1));
        s.observe(200, Duration::from_millis(1));
        s.observe(400, Duration::from_millis(1));
        s.observe(800, Duration::from_millis(1));
        s.observe(1600, Duration::from_millis(1));
        assert_eq!(s.rows(), 2_000);
        s.cap(700);
        assert_eq!(s.rows(), 700);
        s.shrink();
        assert_eq!(s.rows(), 350);
        for _ in 0..30 {
            s.observe(s.rows(), Duration::from_secs(100));
        }
        assert_eq!(s.rows(), 100, "never below min_rows");
    }
}
