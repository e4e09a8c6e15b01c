//! Printing: turns plans, run reports, run records and component
//! inspections into text (or JSON) on standard output.

use std::time::Duration;

use refill::db::DbUrl;
use refill::plan::Plan;
use refill::run::{ErrorGroup, RunReport};
use refill::spec::Spec;
use refill::state::{
    ChunkRecord, ChunkStatus, Counts, Mode, RunRecord, RunStatus, SessionKind, SessionRecord,
    chunk_summary, parse_time,
};
use refill::transform::cache::Origin;
use refill::transform::inspect::Producer;
use refill::transform::wasi::{self, Capability};
use refill::transform::{ALLOWED_IMPORTS, Runner, TRANSFORM_EXPORT};
use refill::value::{Info, value_type_name};

/// `1234567` as `1,234,567`.
pub fn n(x: u64) -> String {
    let digits = x.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn per_sec(rows: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{} rows/s", n((rows as f64 / secs).round() as u64))
}

fn columns(info: &[refill::value::Column]) -> String {
    info.iter()
        .map(|c| format!("{} ({})", c.name, value_type_name(c.type_)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "100%".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// Prints what a run of the spec would do.
pub fn plan(
    spec: &Spec,
    plan: &Plan,
    runner: &Runner,
    previous: Option<&RunRecord>,
    chunks: Option<&[ChunkRecord]>,
) {
    let l = &plan.layout;
    let f = &spec.file;
    let info = runner.info();
    let names = |cs: &[refill::source::ColumnInfo]| {
        cs.iter()
            .map(|c| format!("{} ({})", c.name, c.sql_type))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("Plan for \"{}\" ({})", spec.name(), spec.path.display());
    println!(
        "  source     {} table {}, key {} ({})",
        spec.source_url, l.source, l.key.name, l.key_type
    );
    println!(
        "  scope      {}",
        f.source.scope.as_deref().unwrap_or("every row")
    );
    println!("  reads      {}", names(&l.inputs));
    println!("  writes     {} in {}", names(&l.outputs), l.target);
    match (&plan.scope.first, &plan.scope.high_watermark) {
        (Some(first), Some(last)) => println!(
            "  rows       {} in scope, keys {first} to {last}; rows added later above {last} are left to the application",
            n(plan.scope.rows)
        ),
        _ => println!("  rows       none in scope"),
    }
    let c = &f.chunk;
    if c.chunk_time.is_zero() {
        println!(
            "  chunks     {} of up to {} rows, {} in flight",
            n(plan.chunks),
            n(u64::from(c.rows)),
            spec.concurrency()
        );
    } else {
        println!(
            "  chunks     {} rows first, then sized to take {} each ({} to {} rows), {} in flight",
            n(u64::from(c.rows.clamp(c.min_rows, c.max_rows))),
            humantime::format_duration(c.chunk_time),
            n(u64::from(c.min_rows)),
            n(u64::from(c.max_rows)),
            spec.concurrency()
        );
    }
    for line in refill::throttle::describe(spec) {
        println!("  throttle   {line}");
    }
    println!(
        "  transform  {} {}: {}",
        info.name, info.version, info.description
    );
    println!(
        "             reads {}; writes {}",
        columns(&info.inputs),
        columns(&info.outputs)
    );
    println!(
        "  component  {} ({} bytes)",
        runner.compiled().path().display(),
        n(runner.compiled().size() as u64)
    );
    let pin = match &f.transform.sha256 {
        Some(_) => "pinned, matches",
        None => "NOT PINNED",
    };
    println!("             sha256 {} ({pin})", runner.digest());
    for (k, (cap, list)) in capabilities(runner.compiled().imports())
        .into_iter()
        .enumerate()
    {
        println!(
            "             {} {}: {}",
            if k == 0 { "imports" } else { "       " },
            cap.label(),
            list.join(", ")
        );
    }
    for t in plan.lookups.digests() {
        println!(
            "  lookup     \"{}\" from {}: {} keys, sha256 {}",
            t.name,
            t.source,
            n(t.rows),
            t.sha256
        );
    }
    let limits = runner.limits();
    println!(
        "  limits     {} fuel per row, batches of up to {} rows and {} ms; {} MiB memory per instance",
        n(limits.fuel_per_row),
        n(u64::from(f.transform.batch_rows)),
        limits.timeout.as_millis(),
        limits.memory_bytes >> 20
    );
    println!("  state      {}", spec.state_url);
    match (previous, chunks) {
        (Some(run), Some(chunks)) if run.status.resumable() => {
            let done = chunks
                .iter()
                .filter(|c| c.status == ChunkStatus::Done)
                .count();
            let rows: u64 = chunks
                .iter()
                .filter(|c| c.status == ChunkStatus::Done)
                .map(|c| c.counts.rows)
                .sum();
            println!(
                "  resume     run {} ({}): {} chunks and {} rows done; `refill run --execute` goes on from there",
                run.run_id,
                run.status,
                n(done as u64),
                n(rows)
            );
        }
        (Some(run), _) => println!(
            "  last run   {} ({}, {})",
            run.run_id, run.status, run.started_at
        ),
        _ => println!("  last run   none"),
    }
    for w in &plan.warnings {
        println!("warning: {w}");
    }
}

/// Prints how a run went.
/// What `refill run --execute --workers 0` planned.
pub fn planned(spec: &Spec, p: &refill::run::worker::Planned) {
    let run = &p.run;
    let verb = if p.existing {
        "is already planned"
    } else {
        "planned"
    };
    println!(
        "Run {} of \"{}\" {verb} for workers: {} rows in {} chunks of up to {} rows.",
        run.run_id,
        run.name,
        n(run.rows_in_scope),
        n(p.chunks),
        n(run.chunk_rows)
    );
    println!(
        "  transform  {} {}, sha256 {} (stored with the run)",
        run.transform_name, run.transform_version, run.component_digest
    );
    let source = if p.needs_source_url {
        " --source-url URL"
    } else {
        ""
    };
    // The url as the spec writes it when that is `env:VAR` (each host reads
    // it); never a password.
    let raw = &spec.file.state.url;
    let state = if raw.starts_with("env:") {
        raw.clone()
    } else if spec.state_url.masked() != spec.state_url.expose() {
        "\"$STATE_URL\"".to_string()
    } else {
        spec.state_url.to_string()
    };
    println!("Start workers, on any hosts, with:");
    println!(
        "  refill worker --state {state} --run {}{source}",
        run.run_id
    );
    println!(
        "and follow the run with: refill status --state {state} {}",
        run.run_id
    );
    if state.starts_with('"') {
        println!(
            "where $STATE_URL is the state store's url: {} (password not shown).",
            spec.state_url
        );
    }
    if p.needs_source_url {
        println!(
            "The spec's source url holds a password, which refill did not store: give it to each worker with --source-url or REFILL_SOURCE_URL, or write the url as env:VAR."
        );
    }
}

/// How a worker ended.
pub fn worker(r: &refill::run::worker::WorkerReport) {
    let s = &r.session;
    println!(
        "Worker {} on run {} of \"{}\": {}; {} rows in {} chunks, {:.1} s ({}).",
        r.session_id,
        r.run.run_id,
        r.run.name,
        r.outcome,
        n(s.rows),
        n(r.chunks),
        r.elapsed.as_secs_f64(),
        per_sec(s.rows, r.elapsed)
    );
    println!(
        "  this worker  {} updated, {} already right, {} skipped, {} failed",
        n(s.updated),
        n(s.unchanged),
        n(s.skipped),
        n(s.failed)
    );
    let t = &r.totals;
    println!(
        "  the run      {}: {} of {} rows; {} updated, {} failed",
        r.run.status,
        n(t.rows),
        n(r.run.rows_in_scope),
        n(t.updated),
        n(t.failed)
    );
}

pub fn report(spec: &Spec, r: &RunReport) {
    let run = &r.run;
    let s = &r.session;
    let verb = match run.mode {
        Mode::DryRun => "Dry run",
        Mode::Execute => "Run",
    };
    let resumed = if r.resumed { " (resumed)" } else { "" };
    println!(
        "{verb} {}{resumed} of \"{}\": {}, {} rows in {} chunks, {:.1} s ({}).",
        run.run_id,
        run.name,
        run.status,
        n(s.rows),
        n(r.chunks),
        r.elapsed.as_secs_f64(),
        per_sec(s.rows, r.elapsed)
    );
    let (update_word, unchanged_word, error_word) = match run.mode {
        Mode::DryRun => ("would update", "already right", "would fail"),
        Mode::Execute => ("updated", "already right", "failed"),
    };
    println!("  {update_word:<13} {:>12}", n(s.updated));
    println!("  {unchanged_word:<13} {:>12}", n(s.unchanged));
    println!("  {:<13} {:>12}", "skipped", n(s.skipped));
    println!("  {error_word:<13} {:>12}", n(s.failed));
    if s.conflicts > 0 || s.retries > 0 {
        println!(
            "  ({} rows changed by others meanwhile were read and transformed again; {} database operations were retried)",
            n(s.conflicts),
            n(s.retries)
        );
    }
    if let Some(line) = locked(s) {
        println!("  ({line})");
    }
    if r.resumed || run.mode == Mode::Execute {
        let t = &r.totals;
        println!(
            "  run total: {} of {} rows in scope: {} updated, {} already right, {} skipped, {} failed",
            n(t.rows),
            n(run.rows_in_scope),
            n(t.updated),
            n(t.unchanged),
            n(t.skipped),
            n(t.failed)
        );
    }
    if !r.diffs.is_empty() {
        println!("Sample changes (before → after):");
        for d in &r.diffs {
            let inputs: Vec<String> = d.inputs.iter().map(|(c, v)| format!("{c}={v}")).collect();
            let changes: Vec<String> = d
                .changes
                .iter()
                .map(|(c, b, a)| format!("{c}: {b} → {a}"))
                .collect();
            println!(
                "  key {}  {}  {}",
                d.key,
                inputs.join(" "),
                changes.join(", ")
            );
        }
    }
    if !r.error_groups.is_empty() {
        println!("Failed rows by error ({} in all):", n(s.failed));
        for (message, group) in &r.error_groups {
            println!("  {:>8} × {message}  ({})", n(group.count), examples(group));
        }
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    if let Some(failure) = &r.failure {
        println!("The run stopped: {failure}");
        match run.mode {
            Mode::Execute => println!(
                "Fix the cause and run the same command again: it resumes, and finished chunks are not redone."
            ),
            Mode::DryRun => println!("Fix the cause and run it again."),
        }
    } else if run.mode == Mode::DryRun {
        println!(
            "Nothing was written. To write: refill run {} --execute",
            spec.path.display()
        );
    } else if let Some(stop) = &r.stop {
        println!(
            "Stopped: {stop}. The same command resumes the run; finished chunks are not redone."
        );
    } else if run.status == RunStatus::Incomplete {
        println!("Stopped after the canary; run again without --limit to go on.");
    }
}

/// `chunk 1: keys 17, 25; chunk 2: key 2001, …`
fn examples(group: &ErrorGroup) -> String {
    let mut parts: Vec<(u64, Vec<String>)> = Vec::new();
    for e in &group.examples {
        match parts.last_mut() {
            Some((chunk, keys)) if *chunk == e.chunk => keys.push(e.key.to_string()),
            _ => parts.push((e.chunk, vec![e.key.to_string()])),
        }
    }
    let text: Vec<String> = parts
        .iter()
        .map(|(chunk, keys)| {
            format!(
                "chunk {chunk}: key{} {}",
                if keys.len() > 1 { "s" } else { "" },
                keys.join(", ")
            )
        })
        .collect();
    let more = if group.count > group.examples.len() as u64 {
        ", …"
    } else {
        ""
    };
    format!("{}{more}", text.join("; "))
}

/// Prints a list of runs.
pub fn run_list(url: &DbUrl, runs: &[(RunRecord, Counts, u64, refill::run::Live)]) {
    if runs.is_empty() {
        println!("No runs recorded in {url}.");
        return;
    }
    println!(
        "{:<22} {:<24} {:<8} {:<11} {:>21} {:>8}  {:<24} BY",
        "RUN", "NAME", "MODE", "STATUS", "ROWS", "FAILED", "STARTED"
    );
    for (run, totals, _, live) in runs {
        let mode = match run.mode {
            Mode::DryRun => "dry-run",
            Mode::Execute => "execute",
        };
        println!(
            "{:<22} {:<24} {:<8} {:<11} {:>21} {:>8}  {:<24} {}@{}",
            run.run_id,
            run.name,
            mode,
            live.state,
            format!("{}/{}", n(totals.rows), n(run.rows_in_scope)),
            n(totals.failed),
            run.started_at,
            run.user_name,
            run.host_name
        );
    }
}

/// Prints one run in detail.
/// What another transaction's row locks did to these counts, if anything:
/// rows deferred rather than waited for, and how many wait still (the rows
/// read that have no outcome yet).
fn locked(c: &Counts) -> Option<String> {
    if c.busy == 0 {
        return None;
    }
    let settled = c.updated + c.unchanged + c.skipped + c.failed;
    let waiting = c.rows.saturating_sub(settled);
    Some(format!(
        "{} locked by another transaction when refill came to write {} (deferred, not waited for){}",
        n(c.busy),
        if c.busy == 1 { "it" } else { "them" },
        match waiting {
            0 => "; none waits any more".to_string(),
            w => format!("; {} still deferred", n(w)),
        }
    ))
}

pub fn run_detail(
    run: &RunRecord,
    totals: &Counts,
    chunks: &[ChunkRecord],
    sessions: &[SessionRecord],
    live: &refill::run::Live,
) {
    let mode = match (run.mode, run.workers) {
        (Mode::DryRun, _) => "dry run",
        (Mode::Execute, false) => "execute",
        (Mode::Execute, true) => "execute by distributed workers",
    };
    println!(
        "Run {} of \"{}\": {mode}, {}",
        run.run_id, run.name, live.state
    );
    if let Some(reason) = &live.reason
        && Some(reason) != run.message.as_ref()
    {
        println!("  why        {reason}");
    }
    if let (Some(rate), Some(eta)) = (live.rows_per_sec, live.eta_seconds) {
        println!(
            "  pace       {} rows/s over the last minute; ETA {}",
            n(rate.round() as u64),
            humantime::format_duration(std::time::Duration::from_secs(eta))
        );
    }
    if let Some(message) = &run.message {
        println!("  message    {message}");
    }
    println!(
        "  spec       {} (work hash {})",
        run.spec_path,
        &run.work_hash[..12.min(run.work_hash.len())]
    );
    println!(
        "  transform  {} {}, sha256 {}",
        run.transform_name, run.transform_version, run.component_digest
    );
    println!(
        "  source     {} table {} → {}",
        run.source_url, run.source_table, run.target_table
    );
    let range = match (&run.first_key, &run.high_watermark) {
        (Some(a), Some(b)) => format!("keys {a} to {b}"),
        _ => "no keys".into(),
    };
    println!(
        "  scope      {} rows, {range}, first chunk {} rows",
        n(run.rows_in_scope),
        n(run.chunk_rows)
    );
    let summary = chunk_summary(chunks);
    let waiting = match summary.get("planned") {
        Some(planned) => format!(", {planned} waiting for a worker"),
        None => String::new(),
    };
    println!(
        "  progress   {} rows ({}); chunks: {} done, {} in flight or interrupted{waiting}",
        n(totals.rows),
        percent(totals.rows, run.rows_in_scope),
        summary.get("done").copied().unwrap_or(0),
        summary.get("pending").copied().unwrap_or(0)
    );
    println!(
        "  counts     {} updated, {} already right, {} skipped, {} failed",
        n(totals.updated),
        n(totals.unchanged),
        n(totals.skipped),
        n(totals.failed)
    );
    if let Some(line) = locked(totals) {
        println!("  locks      {line}");
    }
    println!(
        "  started    {} by {}@{} (refill {})",
        run.started_at, run.user_name, run.host_name, run.host_version
    );
    if let Some(f) = &run.finished_at {
        println!("  finished   {f}");
    }
    for s in sessions {
        let state = match (&s.outcome, parse_time(&s.heartbeat_at)) {
            (Some(outcome), _) => outcome.clone(),
            (None, Some(beat)) => {
                let silent = (chrono::Utc::now() - beat).num_seconds().max(0);
                if silent.unsigned_abs() < refill::run::SESSION_TIMEOUT.as_secs() {
                    let doing = match (&s.state, &s.reason) {
                        (Some(state), Some(reason)) => format!("{state}: {reason}"),
                        (Some(state), None) => state.clone(),
                        _ => "working".to_string(),
                    };
                    format!("{doing}, heartbeat {silent}s ago")
                } else {
                    format!(
                        "silent for {silent}s: the process is probably gone; the next run resumes"
                    )
                }
            }
            (None, None) => "working".to_string(),
        };
        // A retry or a rollback works on the run's rows, not its chunks.
        let work = match s.kind {
            SessionKind::Run => {
                let mine = chunks.iter().filter(|c| c.session_id == s.session_id);
                let done = mine
                    .clone()
                    .filter(|c| c.status == ChunkStatus::Done)
                    .count();
                let held: Vec<String> = mine
                    .filter(|c| c.status == ChunkStatus::Pending)
                    .map(|c| c.chunk_id.to_string())
                    .collect();
                let held = match held.len() {
                    0 => String::new(),
                    1 => format!(", chunk {} in flight", held[0]),
                    _ => format!(", chunks {} in flight", held.join(", ")),
                };
                format!(
                    "{done} chunk{} done{held}",
                    if done == 1 { "" } else { "s" }
                )
            }
            SessionKind::Retry => "a retry of the run's dead letters".to_string(),
            SessionKind::Rollback => "a rollback of the run".to_string(),
        };
        println!(
            "  session    {} pid {} on {}, {} → {} ({state}); {work}",
            s.session_id,
            s.pid,
            s.host_name,
            s.started_at,
            s.ended_at.as_deref().unwrap_or("…"),
        );
    }
    let troubled: Vec<&ChunkRecord> = chunks
        .iter()
        .filter(|c| c.error.is_some() || c.counts.failed > 0)
        .collect();
    for c in troubled.iter().take(10) {
        println!(
            "  chunk {:<5} {} failed of {}{}",
            c.chunk_id,
            n(c.counts.failed),
            n(c.counts.rows),
            c.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
}

/// What `refill inspect` found.
#[derive(Debug)]
pub struct Inspection {
    /// The file.
    pub path: String,
    /// Its sha256.
    pub digest: String,
    /// Its size in bytes.
    pub size: usize,
    /// Everything it imports.
    pub imports: Vec<String>,
    /// Everything it exports.
    pub exports: Vec<String>,
    /// The imports outside the policy.
    pub forbidden: Vec<String>,
    /// Where the compiled form came from.
    pub origin: Origin,
    /// Time to read and compile (or load) it.
    pub load_ms: f64,
    /// What it says about itself, if it could be asked.
    pub info: Option<Info>,
    /// Why refill would refuse it, if it would.
    pub verdict: Option<String>,
    /// Its producers sections: the languages and tools that built it.
    pub producers: Vec<Producer>,
}

/// The imports by what they give the component, in policy order.
fn capabilities(imports: &[String]) -> Vec<(Capability, Vec<&str>)> {
    let mut groups: Vec<(Capability, Vec<&str>)> = Vec::new();
    for import in imports {
        let cap = wasi::capability(import);
        match groups.iter_mut().find(|(c, _)| *c == cap) {
            Some((_, list)) => list.push(import),
            None => groups.push((cap, vec![import])),
        }
    }
    groups.sort_by_key(|(c, _)| *c);
    groups
}

/// The world a component implements, judged by its exports.
fn world(exports: &[String]) -> &'static str {
    if exports.iter().any(|e| e == TRANSFORM_EXPORT) {
        "refill:transform/transformer@0.2.0"
    } else {
        "unknown (it does not export refill:transform/transform@0.2.0)"
    }
}

/// Prints an inspection.
pub fn inspect(i: &Inspection, json: bool) -> anyhow::Result<()> {
    if json {
        let info = i.info.as_ref().map(|info| {
            serde_json::json!({
                "name": info.name,
                "version": info.version,
                "description": info.description,
                "inputs": info.inputs.iter().map(|c| serde_json::json!({"name": c.name, "type": value_type_name(c.type_)})).collect::<Vec<_>>(),
                "outputs": info.outputs.iter().map(|c| serde_json::json!({"name": c.name, "type": value_type_name(c.type_)})).collect::<Vec<_>>(),
            })
        });
        let groups: serde_json::Map<String, serde_json::Value> = capabilities(&i.imports)
            .into_iter()
            .map(|(cap, list)| (format!("{cap:?}").to_lowercase(), serde_json::json!(list)))
            .collect();
        let producers: serde_json::Map<String, serde_json::Value> = i
            .producers
            .iter()
            .map(|p| {
                (
                    p.field.clone(),
                    serde_json::json!(
                        p.values
                            .iter()
                            .map(|(n, v)| serde_json::json!({"name": n, "version": v}))
                            .collect::<Vec<_>>()
                    ),
                )
            })
            .collect();
        let doc = serde_json::json!({
            "path": i.path, "sha256": i.digest, "size": i.size, "world": world(&i.exports), "imports": i.imports,
            "capabilities": groups, "exports": i.exports, "producers": producers,
            "forbidden_imports": i.forbidden, "cached": i.origin == Origin::Cached, "load_ms": i.load_ms, "transform": info,
            "allowed": i.verdict.is_none(), "refused_because": i.verdict,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("component  {}", i.path);
    println!("sha256     {}", i.digest);
    println!("size       {} bytes", n(i.size as u64));
    println!(
        "loaded     {:.1} ms ({})",
        i.load_ms,
        match i.origin {
            Origin::Cached => "compiled form from the cache",
            Origin::Compiled => "compiled now, cached for next time",
            Origin::Uncached => "compiled now; no usable cache",
        }
    );
    if let Some(info) = &i.info {
        println!(
            "transform  {} {}: {}",
            info.name, info.version, info.description
        );
        println!("inputs     {}", columns(&info.inputs));
        println!("outputs    {}", columns(&info.outputs));
    }
    println!("world      {}", world(&i.exports));
    if i.imports.is_empty() {
        println!("imports    none");
    }
    for (k, (cap, list)) in capabilities(&i.imports).into_iter().enumerate() {
        println!(
            "{}  {}",
            if k == 0 { "imports  " } else { "         " },
            cap.label()
        );
        for import in list {
            let refused = if cap == Capability::Refused {
                "  (NOT ALLOWED)"
            } else {
                ""
            };
            println!("             {import}{refused}");
        }
    }
    for (k, export) in i.exports.iter().enumerate() {
        println!(
            "{}  {export}",
            if k == 0 { "exports  " } else { "         " }
        );
    }
    for (k, p) in i.producers.iter().enumerate() {
        let values: Vec<String> = p
            .values
            .iter()
            .map(|(name, version)| format!("{name} {version}").trim().to_string())
            .collect();
        println!(
            "{}  {}: {}",
            if k == 0 { "built by " } else { "         " },
            p.field,
            values.join(", ")
        );
    }
    match &i.verdict {
        None => println!(
            "verdict    allowed: it can reach nothing but the refill host ({}) and WASI linked inertly (no files, no sockets, fixed clock, seeded random)",
            ALLOWED_IMPORTS.join(", ")
        ),
        Some(why) => println!("verdict    REFUSED: {why}"),
    }
    Ok(())
}

/// Keys, comma-separated, the first `max` of them.
fn keys(keys: &[refill::chunk::Key], max: usize) -> String {
    let mut text: Vec<String> = keys.iter().take(max).map(ToString::to_string).collect();
    if keys.len() > max {
        text.push(format!("… ({} more)", keys.len() - max));
    }
    text.join(", ")
}

/// Prints how a retry of dead letters went.
pub fn retry(r: &refill::retry::RetryReport) {
    let rec = &r.record;
    let verb = if rec.execute { "Retry" } else { "Dry retry" };
    println!(
        "{verb} {} of run {}: {} dead-lettered rows with component sha256 {} (the run used {}), {:.1} s.",
        rec.retry_id,
        rec.run_id,
        n(rec.rows),
        rec.component_digest,
        r.previous_digests.join(", then "),
        r.elapsed.as_secs_f64()
    );
    let c = &r.counts;
    let resolve = if rec.execute {
        "resolved"
    } else {
        "would resolve"
    };
    println!(
        "  {resolve:<15} {:>10}  ({} updated, {} already right, {} skipped)",
        n(rec.resolved),
        n(c.updated),
        n(c.unchanged),
        n(rec.skipped)
    );
    println!("  {:<15} {:>10}", "still failing", n(rec.failed));
    println!(
        "  {:<15} {:>10}  (deleted or no longer in scope)",
        "gone",
        n(rec.gone)
    );
    if c.conflicts > 0 || c.retries > 0 {
        println!(
            "  ({} conflicts redone, {} database retries)",
            n(c.conflicts),
            n(c.retries)
        );
    }
    if c.busy > 0 {
        println!(
            "  {:<15} {:>10}  (held locked by another transaction, not waited for; they keep their dead letters for the next retry)",
            "locked",
            n(c.busy)
        );
    }
    if !r.error_groups.is_empty() {
        println!("Still failing, by error:");
        for (message, group) in &r.error_groups {
            println!("  {:>8} × {message}  ({})", n(group.count), examples(group));
        }
    }
    if !rec.execute {
        println!("Nothing was written. To write: add --execute.");
    }
}

/// Prints a verification.
pub fn verification(v: &refill::state::VerificationRecord) {
    let what = match &v.run_id {
        Some(run) => format!("run {run}"),
        None => "the spec's scope".to_string(),
    };
    let verdict = if v.passed {
        "everything matches"
    } else {
        "DIFFERENCES FOUND"
    };
    println!(
        "Verification of {what} with component sha256 {}: {verdict}.",
        v.component_digest
    );
    println!(
        "  {:<18} {:>10}  in {} chunks",
        "rows checked",
        n(v.rows),
        n(v.chunks)
    );
    println!("  {:<18} {:>10}", "matching", n(v.matching));
    println!(
        "  {:<18} {:>10}  in {} chunks",
        "differing",
        n(v.differing),
        n(v.differing_chunks)
    );
    println!("  {:<18} {:>10}", "skipped", n(v.skipped));
    println!(
        "  {:<18} {:>10}  (the run's dead letters, reported apart)",
        "dead-lettered",
        n(v.dead_lettered)
    );
    println!(
        "  {:<18} {:>10}  (failed, but not dead letters)",
        "failed",
        n(v.failed)
    );
    if !v.differing_keys.is_empty() {
        println!(
            "Keys whose target differs from what the transform computes: {}",
            keys(&v.differing_keys, 50)
        );
    }
    if !v.failed_keys.is_empty() {
        println!(
            "Keys that fail (in the transform, or on a value refill cannot read) and are not dead letters: {}",
            keys(&v.failed_keys, 50)
        );
    }
}

/// Prints a rollback.
pub fn rollback(r: &refill::state::RollbackRecord) {
    let verb = if r.execute {
        "Rollback"
    } else {
        "Dry rollback"
    };
    let so_far = if r.message.is_some() {
        " (stopped; so far)"
    } else {
        ""
    };
    println!("{verb} {} of run {}{so_far}:", r.rollback_id, r.run_id);
    let restore = if r.execute {
        "restored"
    } else {
        "would restore"
    };
    println!("  {restore:<17} {:>10}", n(r.restored));
    println!(
        "  {:<17} {:>10}  (already held their previous values)",
        "unchanged",
        n(r.already_previous)
    );
    println!("  {:<17} {:>10}  (deleted since)", "gone", n(r.gone));
    println!(
        "  {:<17} {:>10}  (changed since the run wrote them; left alone)",
        "changed since",
        n(r.changed_since)
    );
    if !r.changed_keys.is_empty() {
        println!(
            "Rows changed since the run, left alone: {}",
            keys(&r.changed_keys, 50)
        );
    }
    if r.locked > 0 {
        println!(
            "  {:<17} {:>10}  (held locked by another transaction past max_lock_wait; run the rollback again)",
            "locked",
            n(r.locked)
        );
        println!("Rows still locked: {}", keys(&r.locked_keys, 50));
    }
    if !r.execute {
        println!("Nothing was written. To write: add --execute.");
    }
}

/// Prints everything known about a run.
pub fn report_full(r: &refill::report::Report) {
    let run = &r.run;
    println!(
        "Report of run {} of \"{}\" ({:?}, {})",
        run.run_id, run.name, run.mode, run.status
    );
    println!("What ran");
    println!(
        "  spec           {} (work hash {}, data hash {})",
        run.spec_path, run.work_hash, run.data_hash
    );
    println!(
        "  component      {} {}, sha256 {}",
        run.transform_name, run.transform_version, run.component_digest
    );
    println!("  refill         {}", run.host_version);
    println!("  by             {}@{}", run.user_name, run.host_name);
    println!("  started        {}", run.started_at);
    println!(
        "  finished       {}",
        run.finished_at.as_deref().unwrap_or("-")
    );
    if let Some(message) = &run.message {
        println!("  message        {message}");
    }
    println!(
        "  source         {} {} → {}",
        run.source_url, run.source_table, run.target_table
    );
    let t = &r.totals;
    println!("Rows");
    println!(
        "  {} of {} in scope: {} updated, {} already right, {} skipped, {} failed",
        n(t.rows),
        n(run.rows_in_scope),
        n(t.updated),
        n(t.unchanged),
        n(t.skipped),
        n(t.failed)
    );
    println!(
        "  {} rows changed by others meanwhile (redone), {} database operations retried",
        n(t.conflicts),
        n(t.retries)
    );
    if let Some(line) = locked(t) {
        println!("  {line}");
    }
    println!("Chunks ({})", r.chunks.len());
    println!(
        "  {:>6} {:>8} {:>8} {:>6} {:>8} {:>9} {:>10} {:>10}",
        "chunk", "rows", "updated", "failed", "read ms", "xform ms", "write ms", "rows/s"
    );
    for line in &r.chunks {
        let c = &line.chunk;
        println!(
            "  {:>6} {:>8} {:>8} {:>6} {:>8} {:>9} {:>10} {:>10}{}",
            c.chunk_id,
            n(c.counts.rows),
            n(c.counts.updated),
            n(c.counts.failed),
            n(c.timings.read_ms),
            n(c.timings.transform_ms),
            n(c.timings.write_ms),
            n(line.rows_per_sec.round() as u64),
            if c.status == ChunkStatus::Pending {
                "  (unfinished)"
            } else {
                ""
            }
        );
    }
    println!(
        "Failures: {} dead letters, {} unresolved",
        n(r.dead_letters),
        n(r.unresolved)
    );
    for f in &r.failures {
        println!(
            "  {:>8} × [{}] {}  (keys {})",
            n(f.rows),
            f.kind.map_or("unknown kind", |k| k.as_str()),
            f.error,
            f.keys.join(", ")
        );
    }
    println!("Retries ({})", r.retries.len());
    for x in &r.retries {
        println!(
            "  {} {} by {}@{}: component {}; {} rows, {} resolved, {} still failing, {} gone{}",
            x.retry_id,
            if x.execute { "executed" } else { "dry run" },
            x.user_name,
            x.host_name,
            x.component_digest,
            n(x.rows),
            n(x.resolved),
            n(x.failed),
            n(x.gone),
            x.message
                .as_ref()
                .map(|m| format!("; stopped: {m}"))
                .unwrap_or_default()
        );
    }
    println!("Verifications ({})", r.verifications.len());
    for v in &r.verifications {
        println!(
            "  {} at {}: {}; {} rows, {} differing, {} dead-lettered, {} failed",
            v.verification_id,
            v.started_at,
            if v.passed { "passed" } else { "FAILED" },
            n(v.rows),
            n(v.differing),
            n(v.dead_lettered),
            n(v.failed)
        );
    }
    println!("Rollbacks ({})", r.rollbacks.len());
    for b in &r.rollbacks {
        println!(
            "  {} {}: {} restored, {} changed since (left alone), {} gone{}",
            b.rollback_id,
            if b.execute { "executed" } else { "dry run" },
            n(b.restored),
            n(b.changed_since),
            n(b.gone),
            if b.finished_at.is_none() {
                " (unfinished: still running, or killed; run the rollback again to finish it)"
            } else {
                ""
            }
        );
        if let Some(message) = &b.message {
            println!("    {message}");
        }
    }
}
