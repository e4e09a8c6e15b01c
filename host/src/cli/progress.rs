//! Progress display: a bar with rows/s and ETA on a terminal, a plain log
//! line every few seconds otherwise. Log lines written while the bar is on
//! screen go above it.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use refill::ops::run::{Phase, Progress};

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
            let mut tick = 0_u32;
            while !stop.load(Ordering::Relaxed) {
                let total = progress.total_rows.load(Ordering::Relaxed);
                let done = progress.done_rows.load(Ordering::Relaxed);
                bar.set_length(total.max(done));
                bar.set_position(done);
                if tick.is_multiple_of(5) {
                    progress.sample();
                }
                tick = tick.wrapping_add(1);
                let (rate, eta) = pace(&progress);
                let failed = progress.failed_rows.load(Ordering::Relaxed);
                let failed = if failed > 0 {
                    format!("  {failed} failed")
                } else {
                    String::new()
                };
                let status = progress.status();
                let doing = match (status.phase, status.reason) {
                    (Phase::Running, _) => String::new(),
                    (phase, Some(reason)) => format!("  {}: {reason}", phase.as_str()),
                    (phase, None) => format!("  {}", phase.as_str()),
                };
                if total == 0 && done == 0 {
                    bar.set_message(format!("planning…{doing}"));
                } else {
                    bar.set_message(format!("{rate} rows/s  ETA {eta}{failed}{doing}"));
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
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut seconds = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                progress.sample();
                seconds += 1;
                if !seconds.is_multiple_of(5) {
                    continue;
                }
                let (rate, eta) = pace(&progress);
                let status = progress.status();
                tracing::info!(
                    done = progress.done_rows.load(Ordering::Relaxed),
                    total = progress.total_rows.load(Ordering::Relaxed),
                    failed = progress.failed_rows.load(Ordering::Relaxed),
                    rows_per_sec = %rate,
                    eta = %eta,
                    state = status.phase.as_str(),
                    reason = status.reason.as_deref().unwrap_or(""),
                    chunk_rows = progress.chunk_rows.load(Ordering::Relaxed),
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

/// The recent rate and the ETA at it, for display.
fn pace(progress: &Progress) -> (String, String) {
    let rate = progress.rate().map_or_else(
        || "-".to_string(),
        |r| crate::cli::show::n(r.round() as u64),
    );
    let eta = match progress.status().phase {
        Phase::Paused => "paused".to_string(),
        _ => progress.eta().map_or_else(|| "-".to_string(), format_eta),
    };
    (rate, eta)
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
