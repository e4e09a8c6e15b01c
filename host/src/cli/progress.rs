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
                "{spinner} {elapsed_precise} [{wide_bar}] {human_pos}/{human_len} rows  {per_sec}  ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        *BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut positioned = false;
            while !stop.load(Ordering::Relaxed) {
                let total = progress.total_rows.load(Ordering::Relaxed);
                let done = progress.done_rows.load(Ordering::Relaxed);
                bar.set_length(total.max(done));
                if !positioned && total > 0 {
                    // A resumed run starts part-way: that is not speed.
                    bar.set_position(progress.resumed_rows.load(Ordering::Relaxed));
                    bar.reset_eta();
                    positioned = true;
                }
                bar.set_position(done);
                let failed = progress.failed_rows.load(Ordering::Relaxed);
                if failed > 0 {
                    bar.set_message(format!("{failed} failed"));
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
            let mut last = (Instant::now(), 0u64);
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let total = progress.total_rows.load(Ordering::Relaxed);
                let done = progress.done_rows.load(Ordering::Relaxed);
                let rate = rate(done.saturating_sub(last.1), last.0.elapsed());
                last = (Instant::now(), done);
                let eta = if rate > 0.0 {
                    format!("{:.0}s", total.saturating_sub(done) as f64 / rate)
                } else {
                    "?".into()
                };
                tracing::info!(
                    done,
                    total,
                    failed = progress.failed_rows.load(Ordering::Relaxed),
                    rows_per_sec = rate.round(),
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

fn rate(rows: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 { rows as f64 / secs } else { 0.0 }
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
