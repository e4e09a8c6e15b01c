//! The run's one controller. Consumes the spec's `[chunk]` sizing and
//! `[throttle]` limits, the health signals, the run's live control
//! (`refill pause`, `resume` and `abort` through the state store, Ctrl-C,
//! `--max-runtime`) and each finished chunk's timings; produces, before
//! each chunk, a decision: go with so many rows, wait (saying why, in the
//! progress line, in `refill status` and in the metrics), or stop.
//!
//! The reader asks [`Throttle::admit`] before reading a chunk and
//! [`Throttle::pace`] once it knows its rows; a worker asks
//! [`Throttle::hold`] before it starts a chunk it was handed. The monitor
//! ([`Throttle::watch`]) reads the control and measures the signals every
//! half second, in two tasks so a slow signal never delays a pause or an
//! abort. Nothing waits with a transaction open.

pub mod gentle;
pub mod health;
pub mod signals;
pub mod size;

use std::collections::VecDeque;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::watch;
use tracing::{info, warn};

use self::gentle::Gentle;
use self::signals::{Signals, Windows};
use self::size::Sizer;
use crate::progress::{Phase, Progress, Status};
use crate::spec::Spec;
use crate::state::{Control, ControlAction, StateStore, Workers};

/// How often the monitor checks the signals and the control.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long after its last chunk a run counts as quiet: the latency then
/// is the application's, not the run's.
const QUIET: Duration = Duration::from_secs(1);
/// How often the gentle limiter times its point read, for the baseline
/// and during the run alike (a probe's latency depends on how often it
/// runs: on the bench's machine, probes 100 ms apart took longer than
/// probes 40 ms apart).
const POINT_EVERY: Duration = Duration::from_millis(40);
/// Chunk writes whose mean latency is compared with `max_write_latency`.
const LATENCY_WINDOW: usize = 3;
/// The longest a slow write holds the next chunk back.
const MAX_COOLDOWN: Duration = Duration::from_secs(10);
/// The longest the monitor waits for the state store.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a run stops taking chunks before its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `refill abort`, by whom and when.
    Aborted {
        /// `user@host`.
        by: String,
        /// When.
        at: String,
    },
    /// Ctrl-C.
    Interrupted,
    /// `--max-runtime` ran out.
    MaxRuntime(Duration),
    /// A health indicator went over its critical threshold.
    Critical {
        /// The indicator, such as `active-backends`.
        indicator: &'static str,
        /// What it measured, and the threshold.
        reason: String,
    },
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Aborted { by, at } => write!(f, "aborted by {by} at {at}"),
            Stop::Interrupted => f.write_str("interrupted (Ctrl-C)"),
            Stop::MaxRuntime(d) => write!(
                f,
                "stopped after --max-runtime {}",
                humantime::format_duration(*d)
            ),
            Stop::Critical { reason, .. } => {
                write!(f, "stopped by a critical health indicator: {reason}")
            }
        }
    }
}

impl serde::Serialize for Stop {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// What the monitor saw last.
#[derive(Clone, Debug, Default)]
struct View {
    /// Whether the control was read once (until then nothing starts: a
    /// pause requested before this process started must hold).
    control_read: bool,
    control: Option<Control>,
    /// Why the control could not be read, if it could not.
    control_problem: Option<String>,
    /// Whether the signals were measured once.
    measured: bool,
    /// The first health problem: its cause and the reason.
    problem: Option<(&'static str, String)>,
    /// A health indicator over its critical threshold: the run stops.
    critical: Option<(&'static str, String)>,
}

/// Where the monitor reads the run's control and reports this session.
pub struct ControlSource {
    /// The state store.
    pub state: StateStore,
    /// The run.
    pub run_id: String,
    /// This process's session, to report its phase on.
    pub session_id: String,
}

/// The running monitor; dropping it stops it.
pub struct Watching(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Watching {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The controller. Shared by the reader, the workers and the monitor.
pub struct Throttle {
    /// The limiter, the rate and the burst (one chunk's worth).
    limiter: Option<(DefaultDirectRateLimiter, NonZeroU32, NonZeroU32)>,
    pause_between: Duration,
    windows: Option<Windows>,
    sizer: Mutex<Sizer>,
    view: watch::Sender<View>,
    last_done: Mutex<Option<Instant>>,
    deadline: Option<(Instant, Duration)>,
    progress: Arc<Progress>,
    max_write_latency: Option<Duration>,
    writes: Mutex<VecDeque<Duration>>,
    cooldown: Mutex<Option<(Instant, String)>>,
    /// For distributed workers: the run whose shared pacing clock the
    /// rows-per-second limit is kept on, and the limit.
    shared: Option<(Workers, String, NonZeroU32)>,
    /// The gentle limiter (`mode = "gentle"`, the default).
    gentle: Option<Mutex<Gentle>>,
    /// For distributed workers: where the run's one latency baseline is
    /// kept (the first measured, before the run's first chunk).
    run_baseline: Option<(StateStore, String)>,
    /// Signalled when a worker lets go of a chunk.
    freed: tokio::sync::Notify,
}

impl Throttle {
    /// A controller for `spec`. `max_runtime` stops taking chunks once it
    /// has passed.
    pub fn new(spec: &Spec, progress: Arc<Progress>, max_runtime: Option<Duration>) -> Throttle {
        let c = &spec.file.chunk;
        let t = &spec.file.throttle;
        let mut sizer = Sizer::new(
            u64::from(c.rows),
            c.chunk_time,
            u64::from(c.min_rows),
            u64::from(c.max_rows),
        );
        let limiter = t.max_rows_per_sec.and_then(NonZeroU32::new).map(|rate| {
            // No chunk has more rows than the bucket holds: `chunk_time`'s
            // worth, and at most a second's. The bucket holds one chunk, so
            // the limit holds over any stretch of time, the first second
            // included.
            let per_chunk = f64::from(rate.get()) * chunk_share(c.chunk_time);
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a positive row count no larger than the rate"
            )]
            let per_chunk = per_chunk.clamp(1.0, f64::from(rate.get())) as u32;
            sizer.cap(u64::from(per_chunk));
            let burst = NonZeroU32::new(per_chunk).unwrap_or(rate);
            let quota = Quota::per_second(rate).allow_burst(burst);
            (RateLimiter::direct(quota), rate, burst)
        });
        progress.chunk_rows.store(sizer.rows(), Ordering::Relaxed);
        Throttle {
            limiter,
            pause_between: t.pause_between_chunks,
            windows: Windows::of(spec),
            sizer: Mutex::new(sizer),
            view: watch::Sender::new(View::default()),
            last_done: Mutex::new(None),
            deadline: max_runtime.map(|d| (Instant::now() + d, d)),
            progress,
            max_write_latency: t.max_write_latency,
            writes: Mutex::new(VecDeque::new()),
            cooldown: Mutex::new(None),
            shared: None,
            gentle: (t.mode == crate::spec::ThrottleMode::Gentle)
                .then(|| Mutex::new(Gentle::new(t.latency_tolerance, spec.concurrency()))),
            run_baseline: None,
            freed: tokio::sync::Notify::new(),
        }
    }

    /// What the gentle limiter allows now, if the run is gentle.
    fn allowance(&self) -> Option<gentle::Allowance> {
        self.gentle
            .as_ref()
            .map(|g| g.lock().unwrap_or_else(|e| e.into_inner()).allowance())
    }

    /// Keeps the rows-per-second limit for the run `run_id` as a whole, on
    /// its shared pacing clock in `state`, instead of for this process: for
    /// distributed workers.
    /// The gentle limiter's baseline is the run's too: the first worker's,
    /// taken before the run's first chunk, and every later worker's.
    pub fn share_pace(&mut self, state: Workers, run_id: &str) {
        self.run_baseline = Some((StateStore::clone(&state), run_id.to_string()));
        if let Some((_, rate, _)) = self.limiter.take() {
            self.shared = Some((state, run_id.to_string(), rate));
        }
    }

    /// The rows a chunk gets now.
    pub fn chunk_rows(&self) -> u64 {
        self.sizer.lock().unwrap_or_else(|e| e.into_inner()).rows()
    }

    /// Reserves `rows` on the run's shared pacing clock and waits for their
    /// turn. A store that cannot be reached holds the run back, retrying.
    async fn pace_shared(
        &self,
        state: &Workers,
        run_id: &str,
        rate: NonZeroU32,
        rows: u64,
    ) -> Result<(), Stop> {
        let mut changes = self.view.subscribe();
        let turn = loop {
            if let Some(stop) = self.stopping() {
                return Err(stop);
            }
            match state.reserve_rows(run_id, rows, rate.get()).await {
                Ok(turn) => break turn,
                Err(error) => {
                    warn!(%error, "Could not reserve rows on the run's shared pace; trying again.");
                    wait(&mut changes, CHECK_EVERY).await;
                }
            }
        };
        if turn.is_zero() {
            return Ok(());
        }
        self.wait_for_rate(
            format!("max_rows_per_sec = {rate} for the whole run"),
            tokio::time::sleep(turn),
        )
        .await
    }

    /// Shows the run throttled by its rate (`reason`) until `ready`
    /// completes, checking for a stop whenever the monitor's view changes
    /// (at least every [`CHECK_EVERY`]); then shows it running again,
    /// unless a pause or a stop came meanwhile. Fails with the reason to
    /// stop instead (the wait is cut short).
    async fn wait_for_rate(
        &self,
        reason: String,
        ready: impl std::future::Future<Output = ()>,
    ) -> Result<(), Stop> {
        let waiting = Status {
            phase: Phase::Throttled,
            cause: Some("rate"),
            reason: Some(reason),
        };
        if self.progress.status().phase == Phase::Running {
            self.progress.set_status(waiting.clone());
        }
        let mut changes = self.view.subscribe();
        let mut ready = std::pin::pin!(ready);
        loop {
            if let Some(stop) = self.stopping() {
                return Err(stop);
            }
            tokio::select! {
                () = &mut ready => break,
                () = wait(&mut changes, CHECK_EVERY) => {}
            }
        }
        if self.progress.status() == waiting {
            self.set(Phase::Running, None, None);
        }
        Ok(())
    }

    /// Starts the monitor, two tasks that run until the returned
    /// [`Watching`] is dropped. One reads the run's control every
    /// [`CHECK_EVERY`] (if `control` is given), reports this session's
    /// phase when it changes, and samples the progress for the recent
    /// rate; a slow signal never delays a pause or an abort. The other
    /// measures `signals` every [`CHECK_EVERY`].
    // Longer than 100 lines: the two monitor tasks share their captures; each is one loop, read top to bottom.
    pub fn watch(self: &Arc<Self>, signals: Signals, control: Option<ControlSource>) -> Watching {
        let signals = Arc::new(signals);
        let me = self.clone();
        let points = signals.clone();
        let latency = tokio::spawn(async move {
            let Some(gentle) = &me.gentle else { return };
            if let Some((state, run)) = &me.run_baseline
                && let Ok(Ok(Some(baseline))) =
                    tokio::time::timeout(STORE_TIMEOUT, state.latency_baseline(run)).await
            {
                gentle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .adopt(baseline);
                info!(
                    baseline_ms = baseline.as_secs_f64() * 1e3,
                    "Took the run's latency baseline, measured before its first chunk."
                );
                me.view.send_modify(|_| {});
            }
            let mut tick = tokio::time::interval(POINT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let idle_before = me.progress.in_flight.load(Ordering::Relaxed) == 0;
                let Some(latency) = points.point_read().await else {
                    return;
                };
                // Quiet: no chunk in flight, nor for a while before (its
                // WAL and dirty pages are being written out).
                let quiet = idle_before
                    && me.progress.in_flight.load(Ordering::Relaxed) == 0
                    && me
                        .last_done
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .is_none_or(|t| t.elapsed() >= QUIET);
                let (was_ready, measured) = {
                    let mut g = gentle.lock().unwrap_or_else(|e| e.into_inner());
                    let was = g.ready();
                    g.sample(latency, quiet);
                    (was, if was { None } else { g.baseline() })
                };
                if let Some(mut baseline) = measured {
                    // The first worker's stands for the whole run.
                    if let Some((state, run)) = &me.run_baseline {
                        let offered = tokio::time::timeout(
                            STORE_TIMEOUT,
                            state.offer_latency_baseline(run, baseline),
                        )
                        .await;
                        if let Ok(Ok(standing)) = offered {
                            baseline = standing;
                            gentle
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .adopt(standing);
                        }
                    }
                    info!(
                        baseline_ms = baseline.as_secs_f64() * 1e3,
                        "Measured the database's latency before the first chunk."
                    );
                }
                if !was_ready {
                    // The run may start once the baseline is measured.
                    me.view.send_modify(|_| {});
                }
            }
        });
        let me = self.clone();
        let controls = tokio::spawn(async move {
            let mut reported: Option<Status> = None;
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.progress.sample();
                let Some(c) = &control else {
                    me.view
                        .send_if_modified(|v| !std::mem::replace(&mut v.control_read, true));
                    continue;
                };
                let read = tokio::time::timeout(STORE_TIMEOUT, c.state.control(&c.run_id)).await;
                let (standing, problem) = match read {
                    Ok(Ok(standing)) => (Some(standing), None),
                    Ok(Err(e)) => (
                        None,
                        Some(format!(
                            "cannot read the run's control from the state store: {e}"
                        )),
                    ),
                    Err(_) => (
                        None,
                        Some(format!(
                            "the state store did not answer within {} s",
                            STORE_TIMEOUT.as_secs()
                        )),
                    ),
                };
                me.view.send_modify(|v| {
                    if let Some(standing) = standing {
                        if v.control != standing
                            && let Some(c) = &standing
                        {
                            info!(by = %c.by, "Asked to {} the run.", c.action.as_str());
                        }
                        v.control = standing;
                    }
                    if v.control_problem != problem
                        && let Some(p) = &problem
                    {
                        warn!(reason = %p, "Waiting: the run's control cannot be read.");
                    }
                    v.control_problem = problem;
                    v.control_read = true;
                });
                let status = me.progress.status();
                if reported.as_ref() != Some(&status) {
                    let stored = tokio::time::timeout(
                        STORE_TIMEOUT,
                        c.state.set_session_state(
                            &c.session_id,
                            status.phase,
                            status.reason.as_deref(),
                        ),
                    )
                    .await;
                    if matches!(stored, Ok(Ok(()))) {
                        reported = Some(status);
                    }
                }
            }
        });
        let me = self.clone();
        let health = tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let found = signals.check().await;
                let critical = found
                    .as_ref()
                    .filter(|f| f.critical)
                    .map(|f| (f.indicator, f.reason.clone()));
                let problem = found.map(|f| (f.indicator, f.reason));
                me.view.send_if_modified(|v| {
                    if critical.is_some() && v.critical.is_none() {
                        if let Some((_, reason)) = &critical {
                            warn!(%reason, "Stopping: a health indicator is over its critical threshold.");
                        }
                        v.critical = critical;
                        v.measured = true;
                        return true;
                    }
                    let changed = v.problem != problem || !v.measured;
                    if v.problem != problem {
                        match &problem {
                            Some(("starting", p)) => info!(reason = %p, "Waiting."),
                            Some((_, p)) => {
                                warn!(reason = %p, "Throttled: waiting before the next chunk.");
                            }
                            None if v.measured => {
                                info!("Health signals are back under their thresholds.");
                            }
                            None => {}
                        }
                    }
                    v.problem = problem;
                    v.measured = true;
                    changed
                });
                if !signals.any() {
                    return;
                }
            }
        });
        Watching(vec![controls, health, latency])
    }

    /// Whether the run must stop taking chunks, and why.
    pub fn stopping(&self) -> Option<Stop> {
        if self.progress.interrupted.load(Ordering::Relaxed) {
            return Some(Stop::Interrupted);
        }
        if let Some((at, d)) = self.deadline
            && Instant::now() >= at
        {
            return Some(Stop::MaxRuntime(d));
        }
        let view = self.view.borrow();
        // A run held back by a pause or a window writes nothing: a critical
        // indicator then holds it too, and stops it only once it would go
        // on.
        let held = matches!(
            &view.control,
            Some(Control {
                action: ControlAction::Pause,
                ..
            })
        ) || self
            .windows
            .as_ref()
            .is_some_and(|w| !w.open_at(chrono::Utc::now()));
        if !held && let Some((indicator, reason)) = &view.critical {
            return Some(Stop::Critical {
                indicator,
                reason: reason.clone(),
            });
        }
        match &view.control {
            Some(Control {
                action: ControlAction::Abort,
                by,
                at,
            }) => Some(Stop::Aborted {
                by: by.clone(),
                at: at.clone(),
            }),
            _ => None,
        }
    }

    /// What keeps the next chunk from starting, if anything.
    fn hindrance(&self) -> Option<Status> {
        let view = self.view.borrow().clone();
        let throttled = |cause: &'static str, reason: String| Status {
            phase: Phase::Throttled,
            cause: Some(cause),
            reason: Some(reason),
        };
        if let Some(Control {
            action: ControlAction::Pause,
            by,
            at,
        }) = &view.control
        {
            return Some(Status {
                phase: Phase::Paused,
                cause: Some("paused"),
                reason: Some(format!("paused by {by} at {at}; `refill resume` goes on")),
            });
        }
        if let Some(problem) = view.control_problem {
            return Some(throttled("state-store", problem));
        }
        if !view.control_read || !view.measured {
            return Some(throttled(
                "starting",
                "checking the controls and health signals".into(),
            ));
        }
        if let Some(g) = &self.gentle
            && !g.lock().unwrap_or_else(|e| e.into_inner()).ready()
        {
            return Some(throttled(
                "starting",
                "measuring the database's latency before the first chunk".into(),
            ));
        }
        if let Some(reason) = self
            .windows
            .as_ref()
            .and_then(|w| w.closed(chrono::Utc::now()))
        {
            return Some(throttled("window", reason));
        }
        if let Some((cause, problem)) = view.problem {
            return Some(throttled(cause, problem));
        }
        let cooldown = self.cooldown.lock().unwrap_or_else(|e| e.into_inner());
        match cooldown.as_ref() {
            Some((until, reason)) if Instant::now() < *until => {
                Some(throttled("write-latency", reason.clone()))
            }
            _ => None,
        }
    }

    fn set(&self, phase: Phase, cause: Option<&'static str>, reason: Option<String>) {
        self.progress.set_status(Status {
            phase,
            cause,
            reason,
        });
    }

    /// Waits while something holds the run back; fails with the reason to
    /// stop instead. Returns how long it waited.
    async fn clear(&self) -> Result<Duration, Stop> {
        let started = Instant::now();
        let mut changes = self.view.subscribe();
        loop {
            if let Some(stop) = self.stopping() {
                self.set(Phase::Stopping, Some("stop"), Some(stop.to_string()));
                return Err(stop);
            }
            match self.hindrance() {
                Some(status) => {
                    self.progress.set_status(status);
                    wait(&mut changes, CHECK_EVERY).await;
                }
                None => return Ok(started.elapsed()),
            }
        }
    }

    /// Waits until a chunk may be read, then says how many rows it gets (at
    /// most `most`). Fails with the reason to stop instead.
    pub async fn admit(&self, most: Option<u64>) -> Result<u64, Stop> {
        self.clear().await?;
        self.resume_running();
        let mut rows = self.sizer.lock().unwrap_or_else(|e| e.into_inner()).rows();
        if let Some(a) = self.allowance() {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a share in (0, 1] of a row count"
            )]
            let share = (rows as f64 * a.share).ceil() as u64;
            rows = share.max(rows.min(GENTLE_MIN_ROWS));
        }
        self.progress.chunk_rows.store(rows, Ordering::Relaxed);
        Ok(most.map_or(rows, |m| m.min(rows)))
    }

    /// Shows the run as running again, if it was shown waiting.
    fn resume_running(&self) {
        let now = self.progress.status();
        if matches!(now.phase, Phase::Paused | Phase::Throttled) {
            self.set(Phase::Running, None, None);
        }
    }

    /// Waits until `rows` more rows fit the rows-per-second limit. Fails
    /// with the reason to stop instead (the wait is cut short).
    pub async fn pace(&self, rows: u64) -> Result<(), Stop> {
        if let Some((state, run_id, rate)) = &self.shared {
            return self.pace_shared(state, run_id, *rate, rows).await;
        }
        let Some((limiter, rate, burst)) = &self.limiter else {
            return Ok(());
        };
        let mut left = rows;
        while left > 0 {
            let n = u32::try_from(left.min(u64::from(burst.get()))).unwrap_or(burst.get());
            let Some(cells) = NonZeroU32::new(n) else {
                break;
            };
            if !matches!(limiter.check_n(cells), Ok(Ok(()))) {
                // `cells` never exceeds the burst, so the wait cannot fail;
                // cut short by a stop, it takes nothing.
                let ready = async {
                    let _ = limiter.until_n_ready(cells).await;
                };
                self.wait_for_rate(format!("max_rows_per_sec = {rate}"), ready)
                    .await?;
            }
            left -= u64::from(n);
        }
        Ok(())
    }

    /// Before a worker starts a chunk it was handed: waits while the run is
    /// paused or held back (a signal, a window, a slow write, the pause
    /// between chunks), so nothing of the chunk is written until the run
    /// may go on. Returns how long it waited: a chunk held for a while is
    /// read again before it is transformed. Fails with the reason to stop
    /// instead; the chunk is then left for a later session.
    pub async fn hold(&self) -> Result<Duration, Stop> {
        let started = Instant::now();
        loop {
            self.clear().await?;
            let allowance = self.allowance();
            // The gentle limiter's concurrency: wait for a chunk in flight
            // to finish.
            if let Some(a) = &allowance
                && self.progress.in_flight.load(Ordering::Relaxed) >= u64::from(a.concurrency)
            {
                self.slowed(a);
                let _ = tokio::time::timeout(CHECK_EVERY, self.freed.notified()).await;
                continue;
            }
            let pause = allowance
                .as_ref()
                .map_or(self.pause_between, |a| a.pause.max(self.pause_between));
            let last = *self.last_done.lock().unwrap_or_else(|e| e.into_inner());
            let ready = last.map(|t| t + pause);
            match ready {
                Some(ready) if Instant::now() < ready => {
                    if let Some(a) = &allowance
                        && a.pause > self.pause_between
                    {
                        self.slowed(a);
                    }
                    // Short steps, so that a pause or a stop is heard.
                    tokio::time::sleep((ready - Instant::now()).min(CHECK_EVERY)).await;
                }
                _ => break,
            }
        }
        self.resume_running();
        self.progress.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(started.elapsed())
    }

    /// Shows the run slowed by the gentle limiter, saying why.
    fn slowed(&self, a: &gentle::Allowance) {
        if self.progress.status().phase == Phase::Running {
            self.set(Phase::Throttled, Some("gentle"), a.reason.clone());
        }
    }

    /// Takes in a finished chunk: `rows` in `elapsed`, of which `written`
    /// were written, in `write`. Sizes the next chunks, and slows down while
    /// writes are slower than `max_write_latency`. The gentle limiter judges
    /// the write per row written: a chunk whose rows were already right
    /// writes little, and would make any real write look slow.
    pub fn chunk_done(&self, rows: u64, written: u64, elapsed: Duration, write: Duration) {
        if let Some(g) = &self.gentle {
            g.lock()
                .unwrap_or_else(|e| e.into_inner())
                .wrote(written, write, elapsed);
        }
        *self.last_done.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.progress.chunk_seconds.observe(elapsed.as_secs_f64());
        let mut sizer = self.sizer.lock().unwrap_or_else(|e| e.into_inner());
        sizer.observe(rows, elapsed);
        let Some(max) = self.max_write_latency else {
            self.progress
                .chunk_rows
                .store(sizer.rows(), Ordering::Relaxed);
            return;
        };
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        writes.push_back(write);
        if writes.len() > LATENCY_WINDOW {
            writes.pop_front();
        }
        let mean = writes.iter().sum::<Duration>() / u32::try_from(writes.len()).unwrap_or(1);
        if writes.len() == LATENCY_WINDOW && mean > max {
            // Give the database as long as the writes took, with smaller
            // chunks after.
            let reason = format!(
                "write latency {} ms (mean of the last {LATENCY_WINDOW} chunks) is over max_write_latency {}",
                mean.as_millis(),
                humantime::format_duration(max)
            );
            warn!(%reason, "Slowing down.");
            *self.cooldown.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((Instant::now() + mean.min(MAX_COOLDOWN), reason));
            sizer.shrink();
            writes.clear();
        }
        self.progress
            .chunk_rows
            .store(sizer.rows(), Ordering::Relaxed);
    }

    /// A worker let go of a chunk it held (done, failed or left).
    pub fn released(&self) {
        self.progress.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.freed.notify_waiters();
    }
}

/// The fewest rows the gentle limiter cuts a chunk to.
const GENTLE_MIN_ROWS: u64 = 100;

/// The share of a second a chunk under a rows-per-second limit may take.
fn chunk_share(chunk_time: Duration) -> f64 {
    if chunk_time.is_zero() {
        1.0
    } else {
        chunk_time.as_secs_f64().min(1.0)
    }
}

/// Waits for the monitor's next view, or `most`.
async fn wait(changes: &mut watch::Receiver<View>, most: Duration) {
    let _ = tokio::time::timeout(most, changes.changed()).await;
}

/// The spec's throttle settings, one line each, for `refill plan`.
pub fn describe(spec: &Spec) -> Vec<String> {
    let t = &spec.file.throttle;
    let d = |d: &Duration| humantime::format_duration(*d).to_string();
    let mut lines = Vec::new();
    match t.mode {
        crate::spec::ThrottleMode::Gentle => lines.push(format!(
            "gentle (the default): starts with 1 chunk in flight, small chunks and a pause as long \
             as each chunk, and adapts concurrency (up to {}), chunk size and pauses to keep the \
             {}th percentile of a probe of the target (a point read, which commits when the run \
             writes to PostgreSQL) within {}× its baseline, measured before the first chunk \
             (latency_tolerance); mode = \"unlimited\" runs flat out",
            spec.concurrency(),
            gentle::tail_percent(),
            t.latency_tolerance
        )),
        crate::spec::ThrottleMode::Unlimited => lines.push(
            "unlimited: flat out, no pacing and no latency limiter (lock safety and timeouts stay on)"
                .into(),
        ),
    }
    if let Some(r) = t.max_rows_per_sec {
        lines.push(format!("at most {r} rows/s"));
    }
    if !t.pause_between_chunks.is_zero() {
        lines.push(format!("{} between chunks", d(&t.pause_between_chunks)));
    }
    if !t.windows.is_empty() {
        lines.push(format!(
            "chunks start only within {} ({})",
            t.windows.join(", "),
            t.timezone
        ));
    }
    if t.max_replica_lag.is_none()
        && t.mode == crate::spec::ThrottleMode::Gentle
        && crate::backend::capabilities(spec.source_url.backend()).lag_by_default
    {
        lines.push(format!(
            "pause while a streaming replica in the source's pg_stat_replication is over {} behind (the gentle default; set max_replica_lag to change it)",
            d(&signals::DEFAULT_MAX_LAG)
        ));
    }
    if let Some(max) = &t.max_replica_lag {
        let on = match &t.replica_url {
            Some(_) => "on replica_url".to_string(),
            None => "in the source's pg_stat_replication".to_string(),
        };
        lines.push(format!("pause while replica lag {on} is over {}", d(max)));
    }
    if let Some(max) = &t.max_write_latency {
        lines.push(format!(
            "slow down while chunk writes take over {} (mean of {LATENCY_WINDOW})",
            d(max)
        ));
    }
    if let (Some(probe), Some(max)) = (&t.probe, t.probe_max) {
        lines.push(format!("pause while `{probe}` returns more than {max}"));
    }
    let health = health::Thresholds::of(&t.health, t.mode, spec.source_url.backend());
    for line in health.describe() {
        lines.push(format!("health: {line}"));
    }
    let x = &spec.file.timeouts;
    lines.push(format!(
        "statements end after {} (reads), {} (writes), {} (plan-time scans); no lock is waited for over {}; \
         rows another transaction holds are deferred, not waited for, and dead letters after {} ([timeouts])",
        d(&x.read),
        d(&x.write),
        d(&x.scan),
        d(&x.lock),
        d(&x.max_lock_wait)
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(throttle: &str) -> Spec {
        let text = format!(
            "name = \"t\"\n[source]\nurl = \"sqlite://x.db\"\ntable = \"t\"\nkey = \"id\"\ncolumns = [\"a\"]\n\
             [chunk]\nrows = 1000\n[transform]\ncomponent = \"x.wasm\"\n[target]\ncolumns = [\"b\"]\n\
             [throttle]\n{throttle}\n"
        );
        Spec::parse(std::path::Path::new("/tmp/t.toml"), text).expect("a spec")
    }

    fn checked(throttle: &Throttle, control: Option<ControlAction>) {
        throttle.view.send_replace(View {
            control_read: true,
            measured: true,
            control: control.map(|action| Control {
                action,
                by: "ann@host".into(),
                at: "now".into(),
            }),
            ..View::default()
        });
    }

    #[tokio::test]
    async fn slow_writes_hold_the_next_chunk_and_shrink_it() {
        let progress = Arc::new(Progress::default());
        let t = Throttle::new(
            &spec("mode = \"unlimited\"\nmax_write_latency = \"50ms\""),
            progress.clone(),
            None,
        );
        checked(&t, None);
        assert_eq!(t.admit(None).await, Ok(1000));
        for _ in 0..LATENCY_WINDOW {
            t.chunk_done(
                1000,
                1000,
                Duration::from_millis(500),
                Duration::from_millis(200),
            );
        }
        let held = t.hindrance().expect("held back");
        assert_eq!(held.phase, Phase::Throttled);
        assert!(
            held.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("write latency 200 ms")),
            "{held:?}"
        );
        // After the cooldown, a smaller chunk.
        assert_eq!(t.admit(None).await, Ok(500));
        assert_eq!(progress.status().phase, Phase::Running);
    }

    #[tokio::test]
    async fn a_pause_holds_until_an_abort_stops() {
        let progress = Arc::new(Progress::default());
        let t = Arc::new(Throttle::new(&spec(""), progress.clone(), None));
        checked(&t, Some(ControlAction::Pause));
        let waiting = tokio::time::timeout(Duration::from_millis(200), t.hold()).await;
        assert!(waiting.is_err(), "a paused worker waits");
        assert_eq!(progress.status().phase, Phase::Paused);
        let held = {
            let t = t.clone();
            tokio::spawn(async move { t.admit(None).await })
        };
        checked(&t, Some(ControlAction::Abort));
        let stopped = held.await.expect("join");
        assert_eq!(
            stopped,
            Err(Stop::Aborted {
                by: "ann@host".into(),
                at: "now".into()
            })
        );
        assert_eq!(progress.status().phase, Phase::Stopping);
        progress.interrupted.store(true, Ordering::Relaxed);
        assert_eq!(t.hold().await, Err(Stop::Interrupted));
    }

    #[tokio::test]
    async fn a_gentle_run_starts_after_its_baseline_small_and_one_chunk_at_a_time() {
        let progress = Arc::new(Progress::default());
        let t = Arc::new(Throttle::new(
            &spec("concurrency = 2"),
            progress.clone(),
            None,
        ));
        checked(&t, None);
        let early = tokio::time::timeout(Duration::from_millis(100), t.admit(None)).await;
        assert!(early.is_err(), "waits for the latency baseline");
        assert_eq!(
            progress.status().reason.as_deref(),
            Some("measuring the database's latency before the first chunk")
        );
        let gentle = t.gentle.as_ref().expect("gentle by default");
        for _ in 0..gentle::BASELINE_SAMPLES {
            gentle
                .lock()
                .expect("lock")
                .sample(Duration::from_millis(1), false);
        }
        // A quarter of the chunk size, and one chunk in flight.
        assert_eq!(t.admit(None).await, Ok(250));
        assert!(t.hold().await.is_ok());
        let second = tokio::time::timeout(Duration::from_millis(100), t.hold()).await;
        assert!(second.is_err(), "a second chunk waits for the first");
        assert_eq!(progress.status().cause, Some("gentle"));
        t.released();
        // Latency near its baseline: it speeds up to the whole chunk size.
        for _ in 0..20 * gentle::WINDOW {
            gentle
                .lock()
                .expect("lock")
                .sample(Duration::from_millis(1), false);
        }
        assert_eq!(t.admit(None).await, Ok(1000));
        let unlimited = Throttle::new(&spec("mode = \"unlimited\""), progress, None);
        assert!(unlimited.gentle.is_none());
        assert!(
            describe(&spec(""))
                .iter()
                .any(|l| l.starts_with("gentle (the default)"))
        );
    }

    #[test]
    fn a_chunk_that_wrote_nothing_does_not_set_the_pace_of_writes() {
        let progress = Arc::new(Progress::default());
        let t = Throttle::new(&spec(""), progress, None);
        let gentle = t.gentle.as_ref().expect("gentle by default");
        gentle.lock().expect("lock").adopt(Duration::from_millis(1));
        // 1,000 rows already right: a write of a few microseconds.
        t.chunk_done(1000, 0, Duration::from_millis(5), Duration::from_micros(40));
        t.chunk_done(
            1000,
            1000,
            Duration::from_millis(50),
            Duration::from_millis(30),
        );
        t.chunk_done(
            1000,
            1000,
            Duration::from_millis(50),
            Duration::from_millis(35),
        );
        let reason = gentle.lock().expect("lock").allowance().reason;
        assert!(
            !reason
                .as_deref()
                .unwrap_or_default()
                .contains("writes take"),
            "{reason:?}"
        );
    }

    #[tokio::test]
    async fn nothing_starts_before_the_first_check_or_after_max_runtime() {
        let progress = Arc::new(Progress::default());
        let t = Throttle::new(
            &spec("mode = \"unlimited\""),
            progress.clone(),
            Some(Duration::from_millis(300)),
        );
        let before = tokio::time::timeout(Duration::from_millis(100), t.admit(None)).await;
        assert!(before.is_err(), "waits for the monitor's first check");
        checked(&t, None);
        assert_eq!(t.admit(Some(10)).await, Ok(10));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            t.admit(None).await,
            Err(Stop::MaxRuntime(Duration::from_millis(300)))
        );
    }
}
