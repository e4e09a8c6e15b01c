//! The command line: turns parsed arguments into library calls, prints what
//! they return, and maps the result to an exit code: 0 all good, 1 the run
//! finished with failed rows, 2 could not run (or stopped on an error).

pub mod args;
mod progress;
mod show;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use refill::db::DbUrl;
use refill::plan;
use refill::run::{self, Progress, RunOptions};
use refill::source::Database;
use refill::spec::{DEFAULT_STATE_URL, Spec};
use refill::state::{RunRecord, StateStore};
use refill::transform::{Compiled, Limits, Runner};
use tracing_subscriber::EnvFilter;

use self::args::{Args, Command};

/// Exit code: the run finished with rows that failed.
const FAILED_ROWS: u8 = 1;
/// Exit code: the command could not run, or stopped on an error.
const COULD_NOT_RUN: u8 = 2;

/// Runs the command line and returns its exit code.
pub fn run(args: Args) -> ExitCode {
    init_logging(args.verbose);
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
            eprintln!("refill: error: {}", one_line(&error));
            ExitCode::from(COULD_NOT_RUN)
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

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 if progress::interactive() => "refill=warn",
        0 => "refill=info",
        1 => "refill=debug",
        _ => "refill=trace,info",
    };
    let filter = EnvFilter::try_from_env("REFILL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| progress::LogWriter)
        .with_ansi(progress::interactive())
        .init();
}

async fn dispatch(command: Command) -> Result<u8> {
    match command {
        Command::Plan { spec } => plan_command(&spec).await,
        Command::Run {
            spec,
            execute,
            limit,
            restart,
        } => {
            run_command(
                &spec,
                RunOptions {
                    execute,
                    limit,
                    restart,
                },
            )
            .await
        }
        Command::Status {
            run,
            json,
            state,
            spec,
        } => status_command(run.as_deref(), json, state.as_deref(), spec.as_deref()).await,
        Command::Inspect { component, json } => inspect_command(&component, json),
        Command::Retry { run, execute, at } => retry_command(&run, execute, &at).await,
        Command::Verify { run, json, at } => verify_command(run.as_deref(), json, &at).await,
        Command::Report { run, json, at } => report_command(&run, json, &at).await,
        Command::Rollback { run, execute, at } => rollback_command(&run, execute, &at).await,
    }
}

async fn plan_command(path: &Path) -> Result<u8> {
    let spec = Spec::load(path)?;
    let runner = run::load_transform(&spec, false)?;
    let db = Database::connect(&spec.source_url, 2).await?;
    let plan = plan::build(&spec, &db, &runner).await?;
    let state = StateStore::open_existing(&spec.state_url).await?;
    let previous = match &state {
        Some(state) => state.latest_execute_run(spec.name()).await?,
        None => None,
    };
    let previous_chunks = match (&state, &previous) {
        (Some(state), Some(run)) => Some(state.chunks(run).await?),
        _ => None,
    };
    show::plan(
        &spec,
        &plan,
        &runner,
        previous.as_ref(),
        previous_chunks.as_deref(),
    );
    Ok(0)
}

async fn run_command(path: &Path, options: RunOptions) -> Result<u8> {
    let spec = Spec::load(path)?;
    let progress = Arc::new(Progress::default());
    let display = progress::start(progress.clone());
    let result = run::run(&spec, &options, progress).await;
    display.finish().await;
    let report = result?;
    show::report(&spec, &report);
    Ok(if report.failure.is_some() {
        COULD_NOT_RUN
    } else if report.totals.failed > 0 {
        FAILED_ROWS
    } else {
        0
    })
}

async fn status_command(
    run: Option<&str>,
    json: bool,
    state: Option<&str>,
    spec: Option<&Path>,
) -> Result<u8> {
    let url = state_url(state, spec.map(Spec::load).transpose()?.as_ref())?;
    let store = open_state(&url).await?;
    match run {
        None => {
            let runs = store.recent_runs(20).await?;
            let mut rows = Vec::new();
            for r in runs {
                let (totals, done_chunks) = store.totals(&r.run_id).await?;
                rows.push((r, totals, done_chunks));
            }
            if json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(r, t, c)| serde_json::json!({"run": r, "totals": t, "chunks_done": c}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                show::run_list(&url, &rows);
            }
        }
        Some(id) => {
            let record = store
                .find_run(id)
                .await?
                .with_context(|| format!("no run `{id}` in {url}"))?;
            let (totals, _) = store.totals(&record.run_id).await?;
            let chunks = store.chunks(&record).await?;
            let sessions = store.sessions(&record.run_id).await?;
            if json {
                let doc = serde_json::json!({"run": record, "totals": totals, "chunks": chunks, "sessions": sessions});
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                show::run_detail(&record, &totals, &chunks, &sessions);
            }
        }
    }
    Ok(0)
}

/// The state store a command reads: the spec's, `--state`, or the default
/// one in the current folder.
fn state_url(state: Option<&str>, spec: Option<&Spec>) -> Result<DbUrl> {
    Ok(match (state, spec) {
        (_, Some(spec)) => spec.state_url.clone(),
        (Some(url), None) => DbUrl::parse(url, Path::new("."))?,
        (None, None) => DbUrl::parse(DEFAULT_STATE_URL, Path::new("."))?,
    })
}

async fn open_state(url: &DbUrl) -> Result<StateStore> {
    match StateStore::open_existing(url).await? {
        Some(store) => Ok(store),
        None => {
            bail!("no state store at {url}; pass --spec SPEC or --state URL to read another one")
        }
    }
}

/// A recorded run, its state store, and the spec it ran (`--spec`, or the
/// file the run recorded).
async fn locate(id: &str, at: &args::RunAt) -> Result<(Spec, StateStore, RunRecord)> {
    let given = at.spec.as_deref().map(Spec::load).transpose()?;
    let store = open_state(&state_url(at.state.as_deref(), given.as_ref())?).await?;
    let run = store
        .find_run(id)
        .await?
        .with_context(|| format!("no run `{id}` in {}", store.url()))?;
    let spec = match given {
        Some(spec) => spec,
        None => Spec::load(Path::new(&run.spec_path)).with_context(|| {
            format!(
                "run {} recorded its spec at {}; pass --spec SPEC if it moved",
                run.run_id, run.spec_path
            )
        })?,
    };
    Ok((spec, store, run))
}

async fn retry_command(id: &str, execute: bool, at: &args::RunAt) -> Result<u8> {
    let (spec, store, run) = locate(id, at).await?;
    let progress = Arc::new(Progress::default());
    let display = progress::start(progress.clone());
    let result = refill::retry::retry(&spec, &store, &run, execute, progress).await;
    display.finish().await;
    let report = result?;
    show::retry(&report);
    Ok(if report.record.failed > 0 {
        FAILED_ROWS
    } else {
        0
    })
}

async fn verify_command(id: Option<&str>, json: bool, at: &args::RunAt) -> Result<u8> {
    let progress = Arc::new(Progress::default());
    let record = match id {
        Some(id) => {
            let (spec, store, run) = locate(id, at).await?;
            let display = progress::start(progress.clone());
            let result = refill::verify::verify(&spec, Some((&run, &store)), progress).await;
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
            let result = refill::verify::verify(&spec, None, progress).await;
            display.finish().await;
            result?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        show::verification(&record);
    }
    Ok(if record.passed { 0 } else { FAILED_ROWS })
}

async fn report_command(id: &str, json: bool, at: &args::RunAt) -> Result<u8> {
    let given = at.spec.as_deref().map(Spec::load).transpose()?;
    let store = open_state(&state_url(at.state.as_deref(), given.as_ref())?).await?;
    let run = store
        .find_run(id)
        .await?
        .with_context(|| format!("no run `{id}` in {}", store.url()))?;
    let report = refill::report::report(&store, run).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        show::report_full(&report);
    }
    Ok(0)
}

async fn rollback_command(id: &str, execute: bool, at: &args::RunAt) -> Result<u8> {
    let (spec, store, run) = locate(id, at).await?;
    let progress = Arc::new(Progress::default());
    let display = progress::start(progress.clone());
    let result = refill::rollback::rollback(&spec, &store, &run, execute, progress).await;
    display.finish().await;
    let record = result?;
    show::rollback(&record);
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
    let started = Instant::now();
    let compiled = Compiled::read(path, None)?;
    let mut inspection = show::Inspection {
        path: path.display().to_string(),
        digest: compiled.digest().to_string(),
        size: compiled.size(),
        imports: compiled.imports().to_vec(),
        exports: compiled.exports().to_vec(),
        forbidden: compiled.forbidden_imports(),
        origin: compiled.origin(),
        load_ms: started.elapsed().as_secs_f64() * 1000.0,
        info: None,
        verdict: None,
    };
    match Runner::new(compiled, Limits::default()) {
        Ok(runner) => inspection.info = Some(runner.info().clone()),
        Err(e) => inspection.verdict = Some(e.to_string()),
    }
    show::inspect(&inspection, json)?;
    Ok(if inspection.verdict.is_none() {
        0
    } else {
        COULD_NOT_RUN
    })
}
