//! Progress display: a bar with rows/s and ETA on a terminal, a plain log
//! line every few seconds otherwise. Log lines written while the bar is on
//! screen go above it.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use refill::run::Progress;

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Writes log output to stderr, above the progress bar when one is shown.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bar = BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bar {
            Some(bar) => bar
                .suspend(|| io::stderr().write_all(buf))
                .map(|()| buf.len()),
            None => io::stderr().write_all(buf).map(|()| buf.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Whether progress goes to a terminal.
pub fn interactive() -> bool {
    io::stderr().is_terminal()
}

/// Shows progress until the returned handle is dropped.
pub fn start(progress: Arc<Progress>) -> Display {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let task = if interactive() {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{wide_bar}] {human_pos}/{human_len} rows  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        *BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut window = Window::default();
            while !stop.load(Ordering::Relaxed) {
                let total = progress.total_rows.load(Ordering::Relaxed);
                let done = progress.done_rows.load(Ordering::Relaxed);
                bar.set_length(total.max(done));
                bar.set_position(done);
                let (rate, eta) = window.observe(done, total);
                let failed = progress.failed_rows.load(Ordering::Relaxed);
                let failed = if failed > 0 {
                    format!("  {failed} failed")
                } else {
                    String::new()
                };
                if total == 0 && done == 0 {
                    bar.set_message("planning…");
                } else {
                    bar.set_message(format!("{rate} rows/s  ETA {eta}{failed}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bar.finish_and_clear();
            *BAR.lock().unwrap_or_else(|e| e.into_inner()) = None;
        })
    } else {
        let stop = stop.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut window = Window::default();
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            window.observe(progress.done_rows.load(Ordering::Relaxed), 0);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let total = progress.total_rows.load(Ordering::Relaxed);
                let done = progress.done_rows.load(Ordering::Relaxed);
                let (rate, eta) = window.observe(done, total);
                tracing::info!(
                    done,
                    total,
                    failed = progress.failed_rows.load(Ordering::Relaxed),
                    rows_per_sec = %rate,
                    eta = %eta,
                    elapsed_s = started.elapsed().as_secs(),
                    "Progress."
                );
            }
        })
    };
    Display {
        stop,
        task: Some(task),
    }
}

/// The recent rate: rows per second over the last ten seconds, and the
/// time the remaining rows take at that rate. A resumed run's first count
/// (rows done by earlier sessions) is not mistaken for speed, since only
/// differences between observations count.
#[derive(Default)]
struct Window {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl Window {
    const SPAN: Duration = Duration::from_secs(10);

    fn observe(&mut self, done: u64, total: u64) -> (String, String) {
        let now = Instant::now();
        self.samples.push_back((now, done));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now - *t > Self::SPAN)
        {
            self.samples.pop_front();
        }
        let Some(&(t0, d0)) = self.samples.front() else {
            return ("-".into(), "-".into());
        };
        let secs = (now - t0).as_secs_f64();
        if secs < 0.5 || done <= d0 {
            return ("-".into(), "-".into());
        }
        let rate = (done - d0) as f64 / secs;
        let eta = Duration::from_secs_f64(total.saturating_sub(done) as f64 / rate);
        (crate::cli::show::n(rate.round() as u64), format_eta(eta))
    }
}

fn format_eta(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// A running progress display.
pub struct Display {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Display {
    /// Stops the display and clears the bar.
    pub async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            if interactive() {
                let _ = task.await;
            } else {
                task.abort();
            }
        }
    }
}
