//! The command line: turns parsed arguments into library calls, prints what
//! they return, and maps the result to an exit code: 0 all good, 1 the run
//! finished with failed rows, 2 could not run (or stopped on an error), 3
//! aborted on request, 130 interrupted by Ctrl-C.

pub mod args;
mod progress;
mod show;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use refill::db::DbUrl;
use refill::ops::control::ControlAction;
use refill::ops::locate::{self, Found, Located, Where};
use refill::ops::run::worker::WorkerOptions;
use refill::ops::run::{self, Progress, RunOptions, Stop};
use refill::ops::status;
use refill::ops::tryout::{self, Limits, Tryout};
use refill::spec::Spec;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing_subscriber::EnvFilter;

use self::args::{Args, Command, LogFormat};

/// Exit code: the run finished with rows that failed.
const FAILED_ROWS: u8 = 1;
/// Exit code: the command could not run, or stopped on an error.
const COULD_NOT_RUN: u8 = 2;
/// Exit code: stopped by `refill abort` (resumable).
const ABORTED: u8 = 3;
/// Exit code: stopped by a health indicator over its critical threshold
/// (resumable).
const CRITICAL: u8 = 4;
/// Exit code: stopped by Ctrl-C (resumable).
const INTERRUPTED: u8 = 130;

/// Runs the command line and returns its exit code.
pub fn run(args: Args) -> ExitCode {
    init_logging(args.verbose, args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("refill: cannot start the async runtime: {e}");
            return ExitCode::from(COULD_NOT_RUN);
        }
    };
    match runtime.block_on(dispatch(args.command)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            say(Level::Error, &format!("error: {}", one_line(&error)));
            let code = match error.downcast_ref::<run::RunError>() {
                Some(run::RunError::Stopped(Stop::Interrupted)) => INTERRUPTED,
                Some(run::RunError::Stopped(Stop::Aborted { .. })) => ABORTED,
                Some(run::RunError::Stopped(Stop::Critical { .. })) => CRITICAL,
                _ => COULD_NOT_RUN,
            };
            ExitCode::from(code)
        }
    }
}

/// The error and its causes on one line, without repeating a cause that the
/// message already quotes.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text.replace('\n', " ")
}

/// Whether logs are JSON lines.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How important a message to the user is.
enum Level {
    Info,
    Warn,
    Error,
}

/// Tells the user something on stderr: a `refill: …` line, or with
/// `--log-format json` a JSON log line, so that stderr stays one format.
fn say(level: Level, message: &str) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        match level {
            Level::Info => tracing::info!("{message}"),
            Level::Warn => tracing::warn!("{message}"),
            Level::Error => tracing::error!("{message}"),
        }
    } else {
        eprintln!("refill: {message}");
    }
}

fn init_logging(verbose: u8, format: LogFormat) {
    JSON_LOGS.store(
        format == LogFormat::Json,
        std::sync::atomic::Ordering::Relaxed,
    );
    let default = match verbose {
        0 if progress::interactive() => "refill=warn",
        0 => "refill=info",
        1 => "refill=debug",
        _ => "refill=trace,info",
    };
    let filter = EnvFilter::try_from_env("REFILL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| progress::LogWriter);
    match format {
        LogFormat::Text => logs.with_ansi(progress::interactive()).init(),
        // One object per line, with the span fields (run, chunk) in it.
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
}

// Longer than 100 lines: one arm per command, each a call with its arguments.
async fn dispatch(command: Command) -> Result<u8> {
    match command {
        Command::Plan { spec } => plan_command(&spec).await,
        Command::Run {
            spec,
            input: Some(input),
            json,
            ..
        } => run_input_command(&spec, &input, json).await,
        Command::Try {
            component,
            input,
            config,
            lookup,
            clock,
            fuel_per_row,
            memory_mb,
            batch_rows,
            json,
            expect,
        } => {
            let mut limits = Limits::default();
            if let Some(fuel) = fuel_per_row {
                limits.fuel_per_row = fuel;
            }
            if let Some(mb) = memory_mb {
                limits.memory_bytes = (mb as usize) << 20;
            }
            let tryout = Tryout::of_component(tryout::Component {
                path: &component,
                config,
                lookups: &lookup,
                clock: clock.as_deref(),
                limits,
            })?;
            print_tried(&tryout, &input, batch_rows, json, expect.as_deref())
        }
        Command::Run {
            spec,
            restart,
            input: None,
            workers: Some(workers),
            ..
        } => plan_workers_command(&spec, workers, restart).await,
        Command::Worker {
            state,
            run,
            source_url,
            lease,
            max_runtime,
            metrics_addr,
        } => {
            worker_command(
                WorkerOptions {
                    state: DbUrl::parse(&state, Path::new("."))?,
                    run,
                    source_url,
                    lease,
                    max_runtime,
                },
                metrics_addr,
            )
            .await
        }
        Command::Run {
            spec,
            execute,
            limit,
            restart,
            max_runtime,
            until_key,
            metrics_addr,
            input: None,
            json: _,
            workers: None,
        } => {
            run_command(
                &spec,
                RunOptions {
                    execute,
                    limit,
                    restart,
                    max_runtime,
                    until_key,
                },
                metrics_addr,
            )
            .await
        }
        Command::Pause { run, at } => control_command(&run, Some(ControlAction::Pause), &at).await,
        Command::Resume { run, at } => control_command(&run, None, &at).await,
        Command::Abort { run, at } => control_command(&run, Some(ControlAction::Abort), &at).await,
        Command::Status {
            run,
            json,
            state,
            spec,
        } => status_command(run.as_deref(), json, state.as_deref(), spec.as_deref()).await,
        Command::Inspect { component, json } => inspect_command(&component, json),
        Command::New { lang, name } => {
            let dir = std::path::PathBuf::from(&name);
            let files = refill::scaffold::create(lang, &name, &dir)?;
            println!("Created {} ({} files):", dir.display(), files.len());
            for file in &files {
                println!("  {}", file.display());
            }
            println!(
                "Next: cd {name} and follow README.md (build, then `refill try --input rows.jsonl --expect expected.jsonl`)."
            );
            Ok(0)
        }
        Command::Build {
            dir,
            check,
            provenance,
        } => build_command(dir.as_deref(), check.as_deref(), provenance.as_deref()),
        Command::Wit => {
            print!("{}", refill::ops::inspect::WIT);
            Ok(0)
        }
        Command::Retry {
            run,
            execute,
            metrics_addr,
            at,
        } => retry_command(&run, execute, metrics_addr, &at).await,
        Command::Verify { run, json, at } => verify_command(run.as_deref(), json, &at).await,
        Command::Report { run, json, at } => report_command(&run, json, &at).await,
        Command::Rollback {
            run,
            execute,
            metrics_addr,
            at,
        } => rollback_command(&run, execute, metrics_addr, &at).await,
    }
}

/// `refill build`: builds, or with `--check` rebuilds and compares.
fn build_command(dir: Option<&Path>, pin: Option<&str>, recorded: Option<&Path>) -> Result<u8> {
    use refill::build::{self, Check, Project, Provenance};
    let project = Project::discover(dir.unwrap_or(Path::new(".")))?;
    let exe = std::env::current_exe().context("finding the refill binary")?;
    let here = std::env::current_dir().unwrap_or_default();
    let shown = |path: &Path| match path.strip_prefix(&here) {
        Ok(relative) if relative.as_os_str().is_empty() => ".".to_string(),
        Ok(relative) => relative.display().to_string(),
        Err(_) => path.display().to_string(),
    };
    let Some(pin) = pin else {
        let out = project.component_path();
        say(
            Level::Info,
            &format!("building {} ({})", project.name, project.language),
        );
        let built = build::build(&project, &out, &exe)?;
        println!(
            "{}  {}  ({} bytes)",
            built.provenance.output_sha256,
            shown(&out),
            built.provenance.output_bytes
        );
        println!("provenance: {}", shown(&Provenance::path_for(&out)));
        match build::write_typings(&project) {
            Ok(Some(typings)) => println!("type stubs: {}", shown(&typings)),
            Ok(None) => {}
            Err(error) => say(
                Level::Warn,
                &format!("the component is built, but its type stubs are not: {error}"),
            ),
        }
        if let Some(why) = &built.provenance.not_reproducible_because {
            say(
                Level::Warn,
                &format!("not reproducible: {why}; the provenance says so"),
            );
        }
        return Ok(0);
    };
    let pin = build::parse_pin(pin)
        .with_context(|| format!("--check {pin:?} is not a sha256 (64 hexadecimal digits)"))?;
    let recorded_path = recorded
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Provenance::path_for(&project.component_path()));
    let recorded = Provenance::read(&recorded_path)?;
    let scratch = tempfile::tempdir().context("making a folder for the rebuild")?;
    let out = scratch.path().join(format!("{}.wasm", project.name));
    let built = build::build(&project, &out, &exe)?;
    let rebuilt = &built.provenance;
    match build::check(&pin, rebuilt, recorded.as_ref()) {
        Check::Matches => {
            println!(
                "matches: {} builds to {pin} (source {})",
                shown(&project.dir),
                rebuilt.source_sha256
            );
            return Ok(0);
        }
        Check::ToolchainDiffers(differences) => {
            println!(
                "toolchain differs: this machine builds {} to {}, not {pin}, and the pin was built with other tools:",
                project.name, rebuilt.output_sha256
            );
            for difference in differences {
                println!("  {difference}");
            }
            println!("Install the recorded versions and check again.");
        }
        Check::SourceDiffers { recorded } => println!(
            "source differs: the pin was built from source {recorded}, this folder is {}; it builds to {}, not {pin}",
            rebuilt.source_sha256, rebuilt.output_sha256
        ),
        Check::DigestDiffers => {
            println!(
                "digest differs: {} builds to {}, not {pin}",
                shown(&project.dir),
                rebuilt.output_sha256
            );
            if recorded.is_none() {
                println!(
                    "  (no provenance at {}, so whether the toolchain differs cannot be told)",
                    shown(&recorded_path)
                );
            }
        }
    }
    if let Some(why) = &rebuilt.not_reproducible_because {
        println!(
            "  note: {} builds are not reproducible: {why}",
            rebuilt.language
        );
    }
    Ok(1)
}

async fn plan_command(path: &Path) -> Result<u8> {
    let spec = Spec::load(path)?;
    let preview = refill::ops::preview::preview(&spec).await?;
    show::plan(&mut stdout(), &spec, &preview)?;
    Ok(0)
}

/// `refill run SPEC --input ROWS`: the spec's transform, configuration,
/// limits and file lookups over rows from a file.
async fn run_input_command(path: &Path, input: &Path, json: bool) -> Result<u8> {
    let spec = Spec::load(path)?;
    let tryout = Tryout::of_spec(&spec).await?;
    let batch = usize::try_from(spec.file.transform.batch_rows).unwrap_or(1000);
    print_tried(&tryout, input, batch, json, None)
}

/// Runs the rows of `input` and prints each outcome, then a summary; exit
/// code 1 if any row failed.
fn print_tried(
    tryout: &Tryout,
    input: &Path,
    batch_rows: usize,
    json: bool,
    expect: Option<&Path>,
) -> Result<u8> {
    let expected = expect.map(tryout::read_expected).transpose()?;
    let mut got = Vec::new();
    let (name, version, digest) = tryout.describe();
    let totals = tryout.rows(input, batch_rows, |tried, logs| {
        for line in logs {
            say(Level::Info, &format!("[{name}] {line}"));
        }
        let doc = &tried.doc;
        if expected.is_some() {
            got.push(doc.clone());
        }
        if json {
            println!("{doc}");
        } else {
            let key = &doc["key"];
            match doc["outcome"].as_str().unwrap_or("") {
                "update" => println!("{key}  update  {}", doc["values"]),
                "skip" => println!("{key}  skip"),
                other => println!(
                    "{key}  {}  {}",
                    other.to_uppercase(),
                    doc["error"].as_str().unwrap_or("")
                ),
            }
        }
    })?;
    eprintln!(
        "{} rows: {} to update, {} skipped, {} failed ({name} {version}, sha256 {digest})",
        totals.rows, totals.updated, totals.skipped, totals.failed,
    );
    if let (Some(expected), Some(path)) = (expected, expect) {
        let differences = tryout::compare(&expected, &got);
        for difference in &differences {
            eprintln!("{}: {difference}", path.display());
        }
        if differences.is_empty() {
            eprintln!("{}: all {} rows as expected", path.display(), got.len());
            return Ok(0);
        }
        eprintln!(
            "{}: {} of {} rows differ",
            path.display(),
            differences.len(),
            expected.len().max(got.len())
        );
        return Ok(FAILED_ROWS);
    }
    Ok(if totals.failed > 0 { FAILED_ROWS } else { 0 })
}

async fn run_command(
    path: &Path,
    options: RunOptions,
    metrics_addr: Option<SocketAddr>,
) -> Result<u8> {
    let spec = Spec::load(path)?;
    let progress = Arc::new(Progress::default());
    let _metrics = serve_metrics(metrics_addr, &progress).await?;
    let _interrupts = on_ctrl_c(progress.clone(), &RUN_INTERRUPTED)?;
    let display = progress::start(progress.clone());
    let result = run::run(&spec, &options, progress).await;
    display.finish().await;
    let report = result?;
    show::report(&mut stdout(), &spec, &report)?;
    Ok(match &report.stop {
        _ if report.failure.is_some() => COULD_NOT_RUN,
        Some(Stop::Interrupted) => INTERRUPTED,
        Some(Stop::Aborted { .. }) => ABORTED,
        Some(Stop::Critical { .. }) => CRITICAL,
        _ if report.totals.failed > 0 => FAILED_ROWS,
        _ => 0,
    })
}

/// `refill run SPEC --execute --workers 0`: plans the run for workers,
/// prints its id and how to start them, and exits.
async fn plan_workers_command(path: &Path, workers: u32, restart: bool) -> Result<u8> {
    if workers != 0 {
        anyhow::bail!(
            "--workers {workers}: only --workers 0 is supported (plan, then start `refill worker` processes yourself, on any hosts)"
        );
    }
    let spec = Spec::load(path)?;
    let options = RunOptions {
        execute: true,
        restart,
        ..RunOptions::default()
    };
    let planned = refill::ops::run::worker::plan(&spec, &options).await?;
    show::planned(&mut stdout(), &spec, &planned)?;
    Ok(0)
}

/// `refill worker`: joins a run planned for workers and works on it.
async fn worker_command(options: WorkerOptions, metrics_addr: Option<SocketAddr>) -> Result<u8> {
    let progress = Arc::new(Progress::default());
    let _metrics = serve_metrics(metrics_addr, &progress).await?;
    let _interrupts = on_ctrl_c(progress.clone(), &RUN_INTERRUPTED)?;
    let display = progress::start(progress.clone());
    let result = refill::ops::run::worker::work(&options, progress).await;
    display.finish().await;
    let report = result?;
    show::worker(&mut stdout(), &report)?;
    Ok(match &report.stop {
        Some(Stop::Interrupted) => INTERRUPTED,
        Some(Stop::Aborted { .. }) => ABORTED,
        Some(Stop::Critical { .. }) => CRITICAL,
        _ => 0,
    })
}

/// Serves `progress` as Prometheus metrics on `addr`, if given, until the
/// returned guard is dropped.
async fn serve_metrics(
    addr: Option<SocketAddr>,
    progress: &Arc<Progress>,
) -> Result<Option<AbortOnDrop>> {
    let Some(addr) = addr else { return Ok(None) };
    let (bound, task) = run::serve_metrics(addr, progress.clone())
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    say(
        Level::Info,
        &format!("serving metrics on http://{bound}/metrics"),
    );
    Ok(Some(AbortOnDrop(task)))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What Ctrl-C tells the user: once, then twice.
struct Interrupted {
    once: &'static str,
    twice: &'static str,
}

const RUN_INTERRUPTED: Interrupted = Interrupted {
    once: "stopping after the chunks in flight (Ctrl-C again to stop now; the run stays resumable)",
    twice: "stopping now; the chunks in flight are redone by the next run",
};
const RETRY_INTERRUPTED: Interrupted = Interrupted {
    once: "stopping after the chunks in flight (Ctrl-C again to stop now; run the retry again to go on)",
    twice: "stopping now; the next retry runs again the rows this one did not resolve",
};
const ROLLBACK_INTERRUPTED: Interrupted = Interrupted {
    once: "stopping after the rows being written (Ctrl-C again to stop now; run the rollback again to finish it)",
    twice: "stopping now; the next rollback puts back what this one did not",
};
const VERIFY_INTERRUPTED: Interrupted = Interrupted {
    once: "stopping after the chunks in flight (Ctrl-C again to stop now)",
    twice: "stopping now",
};

/// Ctrl-C once: stop taking chunks, finish those in flight, exit
/// resumably. Twice: exit now; the chunks in flight are not checkpointed
/// and the next run (retry, rollback) redoes them.
///
/// The listener is made here, before the command's work starts, so that
/// SIGINT is caught from then on. Two SIGINTs that both arrive before the
/// first is taken in count as one, as signals do: the second press of a
/// quick double tap may only stop after the chunks in flight.
fn on_ctrl_c(progress: Arc<Progress>, say_what: &'static Interrupted) -> Result<AbortOnDrop> {
    let interrupts = signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?;
    Ok(AbortOnDrop(tokio::spawn(async move {
        let acknowledge = async { say(Level::Warn, say_what.once) };
        if interrupted_twice(interrupts, &progress, acknowledge).await {
            say(Level::Warn, say_what.twice);
            std::process::exit(i32::from(INTERRUPTED));
        }
    })))
}

/// Waits for a first SIGINT on `interrupts`, marks `progress` interrupted
/// and runs `acknowledge`, then waits for a second; true once it comes.
/// Both waits are on the one listener: one made afresh for the second wait
/// (`tokio::signal::ctrl_c()` again) would miss a Ctrl-C pressed while the
/// first was being acknowledged, and the run would go on to finish its
/// chunks in flight.
async fn interrupted_twice(
    mut interrupts: Signal,
    progress: &Progress,
    acknowledge: impl Future<Output = ()>,
) -> bool {
    if interrupts.recv().await.is_none() {
        return false;
    }
    progress
        .interrupted
        .store(true, std::sync::atomic::Ordering::Relaxed);
    acknowledge.await;
    interrupts.recv().await.is_some()
}

/// `refill pause`, `resume` (`action` is `None`) and `abort`: records the
/// request, waits a little for the processes working on the run to carry it
/// out, and says what they do.
async fn control_command(id: &str, action: Option<ControlAction>, at: &args::RunAt) -> Result<u8> {
    let Located {
        store, run: record, ..
    } = locate::locate(id, &at.into()).await?;
    let who = format!("{}@{}", run::user_name(), run::host_name());
    let steered = refill::ops::control::steer(&store, record, action, &who).await?;
    show::steered(&mut stdout(), &steered)?;
    Ok(0)
}

async fn status_command(
    run: Option<&str>,
    json: bool,
    state: Option<&str>,
    spec: Option<&Path>,
) -> Result<u8> {
    let url = locate::state_url(state, spec.map(Spec::load).transpose()?.as_ref())?;
    let store = locate::open_state(&url).await?;
    match run {
        None => {
            let lines = status::recent(&store, 20).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&lines)?);
            } else {
                show::run_list(&mut stdout(), &url, &lines)?;
            }
        }
        Some(id) => {
            let record = status::find(&store, id).await?;
            let detail = status::detail(&store, record).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                show::run_detail(&mut stdout(), &detail)?;
            }
        }
    }
    Ok(0)
}

/// Standard output, locked, for a printer.
fn stdout() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

impl From<&args::RunAt> for Where {
    fn from(at: &args::RunAt) -> Where {
        Where {
            spec: at.spec.clone(),
            state: at.state.clone(),
        }
    }
}

async fn retry_command(
    id: &str,
    execute: bool,
    metrics_addr: Option<SocketAddr>,
    at: &args::RunAt,
) -> Result<u8> {
    let Located { spec, store, run } = locate::locate(id, &at.into()).await?;
    let progress = Arc::new(Progress::default());
    let _metrics = serve_metrics(metrics_addr, &progress).await?;
    let _interrupts = on_ctrl_c(progress.clone(), &RETRY_INTERRUPTED)?;
    let display = progress::start(progress.clone());
    let result = refill::ops::retry::retry(&spec, &store, &run, execute, progress).await;
    display.finish().await;
    if let Err(run::RunError::Stopped(stop)) = &result {
        say(
            Level::Warn,
            &format!(
                "the retry stopped: {stop}. Run it again to go on with the rows it did not resolve"
            ),
        );
        return Ok(match stop {
            Stop::Aborted { .. } => ABORTED,
            Stop::Critical { .. } => CRITICAL,
            _ => INTERRUPTED,
        });
    }
    let report = result?;
    show::retry(&mut stdout(), &report)?;
    Ok(if report.record.failed > 0 {
        FAILED_ROWS
    } else {
        0
    })
}

async fn verify_command(id: Option<&str>, json: bool, at: &args::RunAt) -> Result<u8> {
    let progress = Arc::new(Progress::default());
    let _interrupts = on_ctrl_c(progress.clone(), &VERIFY_INTERRUPTED)?;
    let record = match id {
        Some(id) => {
            let Located { spec, store, run } = locate::locate(id, &at.into()).await?;
            let display = progress::start(progress.clone());
            let result = refill::ops::verify::verify(&spec, Some((&run, &store)), progress).await;
            display.finish().await;
            result?
        }
        None => {
            let Some(path) = &at.spec else {
                bail!(
                    "give a run to verify, or --spec SPEC to verify the spec's scope as it is now"
                );
            };
            let spec = Spec::load(path)?;
            let display = progress::start(progress.clone());
            let result = refill::ops::verify::verify(&spec, None, progress).await;
            display.finish().await;
            result?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        show::verification(&mut stdout(), &record)?;
    }
    Ok(if record.passed { 0 } else { FAILED_ROWS })
}

async fn report_command(id: &str, json: bool, at: &args::RunAt) -> Result<u8> {
    let Found { store, run, .. } = locate::find(id, &at.into()).await?;
    let report = refill::ops::report::report(&store, run).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        show::report_full(&mut stdout(), &report)?;
    }
    Ok(0)
}

async fn rollback_command(
    id: &str,
    execute: bool,
    metrics_addr: Option<SocketAddr>,
    at: &args::RunAt,
) -> Result<u8> {
    let Located { spec, store, run } = locate::locate(id, &at.into()).await?;
    let progress = Arc::new(Progress::default());
    let _metrics = serve_metrics(metrics_addr, &progress).await?;
    let _interrupts = on_ctrl_c(progress.clone(), &ROLLBACK_INTERRUPTED)?;
    let display = progress::start(progress.clone());
    let result = refill::ops::rollback::rollback(&spec, &store, &run, execute, progress).await;
    display.finish().await;
    let report = result?;
    let record = &report.record;
    show::rollback(&mut stdout(), record)?;
    if let Some(stop) = &report.stop {
        say(
            Level::Warn,
            &format!(
                "the rollback stopped: {stop}. Run it again to finish; rows it already restored count as unchanged"
            ),
        );
        return Ok(match stop {
            Stop::Aborted { .. } => ABORTED,
            Stop::Critical { .. } => CRITICAL,
            _ => INTERRUPTED,
        });
    }
    if let Some(message) = &record.message {
        anyhow::bail!(
            "the rollback stopped: {message}. Run it again to finish; rows it already restored count as unchanged"
        );
    }
    Ok(if record.changed_since > 0 {
        FAILED_ROWS
    } else {
        0
    })
}

fn inspect_command(path: &Path, json: bool) -> Result<u8> {
    let inspection = refill::ops::inspect::inspect(path)?;
    show::inspect(&mut stdout(), &inspection, json)?;
    Ok(if inspection.verdict.is_none() {
        0
    } else {
        COULD_NOT_RUN
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second Ctrl-C that arrives while the first is being acknowledged,
    /// and has already been taken in by the runtime when the wait for it
    /// starts, still stops the command.
    #[tokio::test]
    async fn a_second_ctrl_c_during_the_acknowledgement_is_not_lost() {
        let interrupts = signal(SignalKind::interrupt()).expect("listen");
        let progress = Progress::default();
        let acknowledge = async {
            // A listener made now sees only the second.
            let mut seen = signal(SignalKind::interrupt()).expect("listen");
            raise_sigint();
            seen.recv().await.expect("the runtime took the second in");
        };
        let watch = interrupted_twice(interrupts, &progress, acknowledge);
        raise_sigint();
        let twice = tokio::time::timeout(std::time::Duration::from_secs(30), watch).await;
        assert_eq!(twice, Ok(true), "the second Ctrl-C was lost");
        assert!(
            progress
                .interrupted
                .load(std::sync::atomic::Ordering::Relaxed)
        );
    }

    fn raise_sigint() {
        #[expect(unsafe_code, reason = "raise has no safe std API")]
        // SAFETY: raise only sends this process a signal, which the
        // listeners made above catch.
        let sent = unsafe { libc::raise(libc::SIGINT) };
        assert_eq!(sent, 0, "raise SIGINT");
    }
}
