//! Printing: turns plans, run reports, run records and component
//! inspections into text (or JSON) on standard output.

use std::io::{self, Write};
use std::time::Duration;

use refill::db::DbUrl;
use refill::ops::control::ControlAction;
use refill::ops::control::Steered;
use refill::ops::inspect::{ALLOWED_IMPORTS, Capability, Inspection, Origin, capabilities, world};
use refill::ops::preview::{ColumnInfo, Preview, SignalsNow};
use refill::ops::rollback::RollbackRecord;
use refill::ops::run::{ErrorGroup, RunReport};
use refill::ops::status::{
    ChunkRecord, ChunkStatus, ChunkSummary, Counts, Mode, RunStatus, SessionKind, SessionRecord,
    parse_time,
};
use refill::ops::status::{Detail, RunLine};
use refill::ops::verify::VerificationRecord;
use refill::spec::Spec;
use refill::value::value_type_name;

/// `writeln!` to the printer's writer, handing a write error up.
macro_rules! out {
    ($out:expr) => {
        writeln!($out)?
    };
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*)?
    };
}

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
// Longer than 100 lines: a printer: one block per section of the plan, in the order printed.
pub fn plan(out: &mut dyn Write, spec: &Spec, preview: &Preview) -> io::Result<()> {
    let Preview {
        plan,
        component,
        pace,
        previous,
        previous_chunks,
        signals,
    } = preview;
    let l = &plan.layout;
    let f = &spec.file;
    let info = &component.info;
    let names = |cs: &[ColumnInfo]| {
        cs.iter()
            .map(|c| format!("{} ({})", c.name, c.sql_type))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out!(
        out,
        "Plan for \"{}\" ({})",
        spec.name(),
        spec.path.display()
    );
    out!(
        out,
        "  source     {} table {}, key {} ({})",
        spec.source_url,
        l.source,
        l.key.name,
        l.key_type
    );
    out!(
        out,
        "  scope      {}",
        f.source.scope.as_deref().unwrap_or("every row")
    );
    out!(out, "  reads      {}", names(&l.inputs));
    out!(out, "  writes     {} in {}", names(&l.outputs), l.target);
    match (&plan.scope.first, &plan.scope.high_watermark) {
        (Some(first), Some(last)) => out!(
            out,
            "  rows       {} in scope, keys {first} to {last}; rows added later above {last} are left to the application",
            n(plan.scope.rows)
        ),
        _ => out!(out, "  rows       none in scope"),
    }
    let c = &f.chunk;
    if c.chunk_time.is_zero() {
        out!(
            out,
            "  chunks     {} of up to {} rows, {} in flight",
            n(plan.chunks),
            n(u64::from(c.rows)),
            spec.concurrency()
        );
    } else {
        out!(
            out,
            "  chunks     {} rows first, then sized to take {} each ({} to {} rows), {} in flight",
            n(u64::from(c.rows.clamp(c.min_rows, c.max_rows))),
            humantime::format_duration(c.chunk_time),
            n(u64::from(c.min_rows)),
            n(u64::from(c.max_rows)),
            spec.concurrency()
        );
    }
    for line in pace {
        out!(out, "  throttle   {line}");
    }
    out!(
        out,
        "  transform  {} {}: {}",
        info.name,
        info.version,
        info.description
    );
    out!(
        out,
        "             reads {}; writes {}",
        columns(&info.inputs),
        columns(&info.outputs)
    );
    out!(
        out,
        "  component  {} ({} bytes)",
        component.path.display(),
        n(component.size as u64)
    );
    let pin = match &f.transform.sha256 {
        Some(_) => "pinned, matches",
        None => "NOT PINNED",
    };
    out!(out, "             sha256 {} ({pin})", component.digest);
    for (k, (cap, list)) in capabilities(&component.imports).into_iter().enumerate() {
        out!(
            out,
            "             {} {}: {}",
            if k == 0 { "imports" } else { "       " },
            cap.label(),
            list.join(", ")
        );
    }
    for t in plan.lookups.digests() {
        out!(
            out,
            "  lookup     \"{}\" from {}: {} keys, sha256 {}",
            t.name,
            t.source,
            n(t.rows),
            t.sha256
        );
    }
    let limits = component.limits;
    out!(
        out,
        "  limits     {} fuel per row, batches of up to {} rows and {} ms; {} MiB memory per instance",
        n(limits.fuel_per_row),
        n(u64::from(f.transform.batch_rows)),
        limits.timeout.as_millis(),
        limits.memory_bytes >> 20
    );
    out!(out, "  state      {}", spec.state_url);
    match (previous, previous_chunks) {
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
            out!(
                out,
                "  resume     run {} ({}): {} chunks and {} rows done; `refill run --execute` goes on from there",
                run.run_id,
                run.status,
                n(done as u64),
                n(rows)
            );
        }
        (Some(run), _) => out!(
            out,
            "  last run   {} ({}, {})",
            run.run_id,
            run.status,
            run.started_at
        ),
        _ => out!(out, "  last run   none"),
    }
    for w in &plan.warnings {
        out!(out, "warning: {w}");
    }
    match signals {
        SignalsNow::None => {}
        SignalsNow::Under => out!(out, "  signals    under their thresholds now"),
        SignalsNow::Over(reason) => out!(out, "  signals    {reason} (a run would wait)"),
    }
    Ok(())
}

/// Prints how a run went.
/// What `refill run --execute --workers 0` planned.
pub fn planned(
    out: &mut dyn Write,
    spec: &Spec,
    p: &refill::ops::run::worker::Planned,
) -> io::Result<()> {
    let run = &p.run;
    let verb = if p.existing {
        "is already planned"
    } else {
        "planned"
    };
    out!(
        out,
        "Run {} of \"{}\" {verb} for workers: {} rows in {} chunks of up to {} rows.",
        run.run_id,
        run.name,
        n(run.rows_in_scope),
        n(p.chunks),
        n(run.chunk_rows)
    );
    out!(
        out,
        "  transform  {} {}, sha256 {} (stored with the run)",
        run.transform_name,
        run.transform_version,
        run.component_digest
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
    out!(out, "Start workers, on any hosts, with:");
    out!(
        out,
        "  refill worker --state {state} --run {}{source}",
        run.run_id
    );
    out!(
        out,
        "and follow the run with: refill status --state {state} {}",
        run.run_id
    );
    if state.starts_with('"') {
        out!(
            out,
            "where $STATE_URL is the state store's url: {} (password not shown).",
            spec.state_url
        );
    }
    if p.needs_source_url {
        out!(
            out,
            "The spec's source url holds a password, which refill did not store: give it to each worker with --source-url or REFILL_SOURCE_URL, or write the url as env:VAR."
        );
    }
    Ok(())
}

/// How a worker ended.
pub fn worker(out: &mut dyn Write, r: &refill::ops::run::worker::WorkerReport) -> io::Result<()> {
    let s = &r.session;
    out!(
        out,
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
    out!(
        out,
        "  this worker  {} updated, {} already right, {} skipped, {} failed",
        n(s.updated),
        n(s.unchanged),
        n(s.skipped),
        n(s.failed)
    );
    let t = &r.totals;
    out!(
        out,
        "  the run      {}: {} of {} rows; {} updated, {} failed",
        r.run.status,
        n(t.rows),
        n(r.run.rows_in_scope),
        n(t.updated),
        n(t.failed)
    );
    Ok(())
}

// Longer than 100 lines: a printer: one block per section, in the order printed.
pub fn report(out: &mut dyn Write, spec: &Spec, r: &RunReport) -> io::Result<()> {
    let run = &r.run;
    let s = &r.session;
    let verb = match run.mode {
        Mode::DryRun => "Dry run",
        Mode::Execute => "Run",
    };
    let resumed = if r.resumed { " (resumed)" } else { "" };
    out!(
        out,
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
    out!(out, "  {update_word:<13} {:>12}", n(s.updated));
    out!(out, "  {unchanged_word:<13} {:>12}", n(s.unchanged));
    out!(out, "  {:<13} {:>12}", "skipped", n(s.skipped));
    out!(out, "  {error_word:<13} {:>12}", n(s.failed));
    if s.conflicts > 0 || s.retries > 0 {
        out!(
            out,
            "  ({} rows changed by others meanwhile were read and transformed again; {} database operations were retried)",
            n(s.conflicts),
            n(s.retries)
        );
    }
    if let Some(line) = locked(s) {
        out!(out, "  ({line})");
    }
    if r.resumed || run.mode == Mode::Execute {
        let t = &r.totals;
        out!(
            out,
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
        out!(out, "Sample changes (before → after):");
        for d in &r.diffs {
            let inputs: Vec<String> = d.inputs.iter().map(|(c, v)| format!("{c}={v}")).collect();
            let changes: Vec<String> = d
                .changes
                .iter()
                .map(|(c, b, a)| format!("{c}: {b} → {a}"))
                .collect();
            out!(
                out,
                "  key {}  {}  {}",
                d.key,
                inputs.join(" "),
                changes.join(", ")
            );
        }
    }
    if !r.error_groups.is_empty() {
        out!(out, "Failed rows by error ({} in all):", n(s.failed));
        error_groups(out, &r.error_groups, s.failed)?;
    }
    for w in &r.warnings {
        out!(out, "warning: {w}");
    }
    if let Some(failure) = &r.failure {
        out!(out, "The run stopped: {failure}");
        match run.mode {
            Mode::Execute => out!(
                out,
                "Fix the cause and run the same command again: it resumes, and finished chunks are not redone."
            ),
            Mode::DryRun => out!(out, "Fix the cause and run it again."),
        }
    } else if run.mode == Mode::DryRun {
        out!(
            out,
            "Nothing was written. To write: refill run {} --execute",
            spec.path.display()
        );
    } else if let Some(stop) = &r.stop {
        out!(
            out,
            "Stopped: {stop}. The same command resumes the run; finished chunks are not redone."
        );
    } else if run.status == RunStatus::Incomplete {
        out!(
            out,
            "Stopped after the canary; run again without --limit to go on."
        );
    }
    Ok(())
}

/// The most frequent errors of `failed` rows, and how many rows the
/// groups shown leave out.
fn error_groups(
    out: &mut dyn Write,
    groups: &[(String, ErrorGroup)],
    failed: u64,
) -> io::Result<()> {
    for (message, group) in groups {
        out!(
            out,
            "  {:>8} × {message}  ({})",
            n(group.count),
            examples(group)
        );
    }
    let shown: u64 = groups.iter().map(|(_, g)| g.count).sum();
    if failed > shown {
        out!(
            out,
            "  … and {} more failed row{} with other errors",
            n(failed - shown),
            if failed - shown == 1 { "" } else { "s" }
        );
    }
    Ok(())
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
    let more = match group.count.saturating_sub(group.examples.len() as u64) {
        0 => String::new(),
        left => format!(", … and {} more", n(left)),
    };
    format!("{}{more}", text.join("; "))
}

/// Prints a list of runs.
pub fn run_list(out: &mut dyn Write, url: &DbUrl, runs: &[RunLine]) -> io::Result<()> {
    if runs.is_empty() {
        out!(out, "No runs recorded in {url}.");
        return Ok(());
    }
    out!(
        out,
        "{:<22} {:<24} {:<8} {:<11} {:>21} {:>8}  {:<24} BY",
        "RUN",
        "NAME",
        "MODE",
        "STATUS",
        "ROWS",
        "FAILED",
        "STARTED"
    );
    for line in runs {
        let (run, totals, live) = (&line.run, &line.totals, &line.live);
        let mode = match run.mode {
            Mode::DryRun => "dry-run",
            Mode::Execute => "execute",
        };
        out!(
            out,
            "{:<22} {:<24} {:<8} {:<11} {:>21} {:>8}  {:<24} {}@{}",
            run.run_id,
            run.name,
            mode,
            live.state,
            format!("{}/{}", n(totals.rows), n(run.rows_in_scope)),
            n(line.unresolved),
            run.started_at,
            run.user_name,
            run.host_name
        );
    }
    Ok(())
}

/// `, 250 of them made right by a retry since` after a failed count, when
/// retries resolved some of those rows.
fn resolved(failed: u64, unresolved: u64) -> String {
    match failed.saturating_sub(unresolved) {
        0 => String::new(),
        r if unresolved == 0 => format!(" (all {} made right by a retry since)", n(r)),
        r => format!(
            " ({} made right by a retry since; {} still failing)",
            n(r),
            n(unresolved)
        ),
    }
}

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

/// Prints one run in detail.
// Longer than 100 lines: a printer: one line per field, in the order printed.
pub fn run_detail(out: &mut dyn Write, d: &Detail) -> io::Result<()> {
    let Detail {
        run,
        totals,
        unresolved,
        chunks,
        sessions,
        live,
    } = d;
    let mode = match (run.mode, run.workers) {
        (Mode::DryRun, _) => "dry run",
        (Mode::Execute, false) => "execute",
        (Mode::Execute, true) => "execute by distributed workers",
    };
    out!(
        out,
        "Run {} of \"{}\": {mode}, {}",
        run.run_id,
        run.name,
        live.state
    );
    if let Some(reason) = &live.reason
        && Some(reason) != run.message.as_ref()
    {
        out!(out, "  why        {reason}");
    }
    if let (Some(rate), Some(eta)) = (live.rows_per_sec, live.eta_seconds) {
        out!(
            out,
            "  pace       {} rows/s over the last minute; ETA {}",
            n(rate.round() as u64),
            humantime::format_duration(std::time::Duration::from_secs(eta))
        );
    }
    if let Some(message) = &run.message {
        out!(out, "  message    {message}");
    }
    out!(
        out,
        "  spec       {} (work hash {})",
        run.spec_path,
        &run.work_hash[..12.min(run.work_hash.len())]
    );
    out!(
        out,
        "  transform  {} {}, sha256 {}",
        run.transform_name,
        run.transform_version,
        run.component_digest
    );
    out!(
        out,
        "  source     {} table {} → {}",
        run.source_url,
        run.source_table,
        run.target_table
    );
    let range = match (&run.first_key, &run.high_watermark) {
        (Some(a), Some(b)) => format!("keys {a} to {b}"),
        _ => "no keys".into(),
    };
    out!(
        out,
        "  scope      {} rows, {range}, first chunk {} rows",
        n(run.rows_in_scope),
        n(run.chunk_rows)
    );
    let summary = ChunkSummary::of(chunks);
    let waiting = match summary.planned {
        0 => String::new(),
        planned => format!(", {planned} waiting for a worker"),
    };
    out!(
        out,
        "  progress   {} rows ({}); chunks: {} done, {} in flight or interrupted{waiting}",
        n(totals.rows),
        percent(totals.rows, run.rows_in_scope),
        summary.done,
        summary.pending
    );
    out!(
        out,
        "  counts     {} updated, {} already right, {} skipped, {} failed{}",
        n(totals.updated),
        n(totals.unchanged),
        n(totals.skipped),
        n(totals.failed),
        resolved(totals.failed, *unresolved)
    );
    if let Some(line) = locked(totals) {
        out!(out, "  locks      {line}");
    }
    out!(
        out,
        "  started    {} by {}@{} (refill {})",
        run.started_at,
        run.user_name,
        run.host_name,
        run.host_version
    );
    if let Some(f) = &run.finished_at {
        out!(out, "  finished   {f}");
    }
    for s in sessions {
        out!(
            out,
            "  session    {} pid {} on {}, {} → {} ({}); {}",
            s.session_id,
            s.pid,
            s.host_name,
            s.started_at,
            s.ended_at.as_deref().unwrap_or("…"),
            session_state(s),
            session_work(s, chunks)
        );
    }
    troubled_chunks(out, &run.run_id, chunks)
}

/// How a session ended, or what it is doing and when it was last heard of.
fn session_state(s: &SessionRecord) -> String {
    match (&s.outcome, parse_time(&s.heartbeat_at)) {
        (Some(outcome), _) => outcome.to_string(),
        (None, Some(beat)) => {
            let silent = (chrono::Utc::now() - beat).num_seconds().max(0);
            if silent.unsigned_abs() < refill::ops::run::SESSION_TIMEOUT.as_secs() {
                let doing = match (&s.state, &s.reason) {
                    (Some(state), Some(reason)) => format!("{state}: {reason}"),
                    (Some(state), None) => state.to_string(),
                    _ => "working".to_string(),
                };
                format!("{doing}, heartbeat {silent}s ago")
            } else {
                format!("silent for {silent}s: the process is probably gone; the next run resumes")
            }
        }
        (None, None) => "working".to_string(),
    }
}

/// What a session worked on: a run's, its chunks; a retry or a rollback
/// works on the run's rows, not its chunks.
fn session_work(s: &SessionRecord, chunks: &[ChunkRecord]) -> String {
    match s.kind {
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
    }
}

/// The first chunks with failed rows or errors, and how many more there are.
fn troubled_chunks(out: &mut dyn Write, run_id: &str, chunks: &[ChunkRecord]) -> io::Result<()> {
    const TROUBLED_SHOWN: usize = 10;
    let troubled: Vec<&ChunkRecord> = chunks
        .iter()
        .filter(|c| c.error.is_some() || c.counts.failed > 0)
        .collect();
    for c in troubled.iter().take(TROUBLED_SHOWN) {
        out!(
            out,
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
    if troubled.len() > TROUBLED_SHOWN {
        out!(
            out,
            "  … and {} more chunks with failed rows or errors (`refill report {run_id}` lists every chunk)",
            n((troubled.len() - TROUBLED_SHOWN) as u64),
        );
    }
    Ok(())
}

/// Prints an inspection.
// Longer than 100 lines: a printer: one block per section, in the order printed.
pub fn inspect(out: &mut dyn Write, i: &Inspection, json: bool) -> anyhow::Result<()> {
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
        out!(out, "{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    out!(out, "component  {}", i.path);
    out!(out, "sha256     {}", i.digest);
    out!(out, "size       {} bytes", n(i.size as u64));
    out!(
        out,
        "loaded     {:.1} ms ({})",
        i.load_ms,
        match i.origin {
            Origin::Cached => "compiled form from the cache",
            Origin::Compiled => "compiled now, cached for next time",
            Origin::Uncached => "compiled now; no usable cache",
        }
    );
    if let Some(info) = &i.info {
        out!(
            out,
            "transform  {} {}: {}",
            info.name,
            info.version,
            info.description
        );
        out!(out, "inputs     {}", columns(&info.inputs));
        out!(out, "outputs    {}", columns(&info.outputs));
    }
    out!(out, "world      {}", world(&i.exports));
    if i.imports.is_empty() {
        out!(out, "imports    none");
    }
    for (k, (cap, list)) in capabilities(&i.imports).into_iter().enumerate() {
        out!(
            out,
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
            out!(out, "             {import}{refused}");
        }
    }
    for (k, export) in i.exports.iter().enumerate() {
        out!(
            out,
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
        out!(
            out,
            "{}  {}: {}",
            if k == 0 { "built by " } else { "         " },
            p.field,
            values.join(", ")
        );
    }
    match &i.verdict {
        None => out!(
            out,
            "verdict    allowed: it can reach nothing but the refill host ({}) and WASI linked inertly (no files, no sockets, fixed clock, seeded random)",
            ALLOWED_IMPORTS.join(", ")
        ),
        Some(why) => out!(out, "verdict    REFUSED: {why}"),
    }
    Ok(())
}

/// Keys, comma-separated, the first `max` of them, and how many of the
/// `total` they stand for the list leaves out (a record may keep fewer keys
/// than it counts).
fn keys(keys: &[refill::chunk::Key], total: u64, max: usize) -> String {
    let mut text: Vec<String> = keys.iter().take(max).map(ToString::to_string).collect();
    let left = total.max(keys.len() as u64) - text.len() as u64;
    if left > 0 {
        text.push(format!("… and {} more", n(left)));
    }
    text.join(", ")
}

/// Prints how a retry of dead letters went.
pub fn retry(out: &mut dyn Write, r: &refill::ops::retry::RetryReport) -> io::Result<()> {
    let rec = &r.record;
    let verb = if rec.execute { "Retry" } else { "Dry retry" };
    out!(
        out,
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
    out!(
        out,
        "  {resolve:<15} {:>10}  ({} updated, {} already right, {} skipped)",
        n(rec.resolved),
        n(c.updated),
        n(c.unchanged),
        n(rec.skipped)
    );
    out!(out, "  {:<15} {:>10}", "still failing", n(rec.failed));
    out!(
        out,
        "  {:<15} {:>10}  (deleted or no longer in scope)",
        "gone",
        n(rec.gone)
    );
    if c.conflicts > 0 || c.retries > 0 {
        out!(
            out,
            "  ({} conflicts redone, {} database retries)",
            n(c.conflicts),
            n(c.retries)
        );
    }
    if c.busy > 0 {
        out!(
            out,
            "  {:<15} {:>10}  (held locked by another transaction, not waited for; they keep their dead letters for the next retry)",
            "locked",
            n(c.busy)
        );
    }
    if !r.error_groups.is_empty() {
        out!(out, "Still failing, by error:");
        error_groups(out, &r.error_groups, rec.failed)?;
    }
    if !rec.execute {
        out!(out, "Nothing was written. To write: add --execute.");
    }
    Ok(())
}

/// Prints a verification.
pub fn verification(out: &mut dyn Write, v: &VerificationRecord) -> io::Result<()> {
    let what = match &v.run_id {
        Some(run) => format!("run {run}"),
        None => "the spec's scope".to_string(),
    };
    let verdict = if v.passed {
        "everything matches"
    } else {
        "DIFFERENCES FOUND"
    };
    out!(
        out,
        "Verification of {what} with component sha256 {}: {verdict}.",
        v.component_digest
    );
    out!(
        out,
        "  {:<18} {:>10}  in {} chunks",
        "rows checked",
        n(v.rows),
        n(v.chunks)
    );
    out!(out, "  {:<18} {:>10}", "matching", n(v.matching));
    out!(
        out,
        "  {:<18} {:>10}  in {} chunks",
        "differing",
        n(v.differing),
        n(v.differing_chunks)
    );
    out!(out, "  {:<18} {:>10}", "skipped", n(v.skipped));
    out!(
        out,
        "  {:<18} {:>10}  (the run's dead letters, reported apart)",
        "dead-lettered",
        n(v.dead_lettered)
    );
    out!(
        out,
        "  {:<18} {:>10}  (failed, but not dead letters)",
        "failed",
        n(v.failed)
    );
    if !v.differing_keys.is_empty() {
        out!(
            out,
            "Keys whose target differs from what the transform computes: {}",
            keys(&v.differing_keys, v.differing, 50)
        );
    }
    if !v.differences.is_empty() {
        out!(
            out,
            "First differing rows (what the target holds → what the transform computes):"
        );
        for d in &v.differences {
            out!(
                out,
                "  key {}  {}: {} → {}",
                d.key,
                d.column,
                d.actual,
                d.expected
            );
        }
    }
    if !v.failed_keys.is_empty() {
        out!(
            out,
            "Keys that fail (in the transform, or on a value refill cannot read) and are not dead letters: {}",
            keys(&v.failed_keys, v.failed, 50)
        );
    }
    Ok(())
}

/// Prints a rollback.
pub fn rollback(out: &mut dyn Write, r: &RollbackRecord) -> io::Result<()> {
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
    out!(out, "{verb} {} of run {}{so_far}:", r.rollback_id, r.run_id);
    let restore = if r.execute {
        "restored"
    } else {
        "would restore"
    };
    out!(out, "  {restore:<17} {:>10}", n(r.restored));
    out!(
        out,
        "  {:<17} {:>10}  (already held their previous values)",
        "unchanged",
        n(r.already_previous)
    );
    out!(out, "  {:<17} {:>10}  (deleted since)", "gone", n(r.gone));
    out!(
        out,
        "  {:<17} {:>10}  (changed since the run wrote them; left alone)",
        "changed since",
        n(r.changed_since)
    );
    if !r.changed_keys.is_empty() {
        out!(
            out,
            "Rows changed since the run, left alone: {}",
            keys(&r.changed_keys, r.changed_since, 50)
        );
    }
    if r.locked > 0 {
        out!(
            out,
            "  {:<17} {:>10}  (held locked by another transaction past max_lock_wait; run the rollback again)",
            "locked",
            n(r.locked)
        );
        out!(
            out,
            "Rows still locked: {}",
            keys(&r.locked_keys, r.locked, 50)
        );
    }
    if !r.execute {
        out!(out, "Nothing was written. To write: add --execute.");
    }
    Ok(())
}

/// Prints everything known about a run.
// Longer than 100 lines: a printer: one block per section of the report, in the order printed.
pub fn report_full(out: &mut dyn Write, r: &refill::ops::report::Report) -> io::Result<()> {
    let run = &r.run;
    out!(
        out,
        "Report of run {} of \"{}\" ({:?}, {})",
        run.run_id,
        run.name,
        run.mode,
        run.status
    );
    out!(out, "What ran");
    out!(
        out,
        "  spec           {} (work hash {}, data hash {})",
        run.spec_path,
        run.work_hash,
        run.data_hash
    );
    out!(
        out,
        "  component      {} {}, sha256 {}",
        run.transform_name,
        run.transform_version,
        run.component_digest
    );
    out!(out, "  refill         {}", run.host_version);
    out!(out, "  by             {}@{}", run.user_name, run.host_name);
    out!(out, "  started        {}", run.started_at);
    out!(
        out,
        "  finished       {}",
        run.finished_at.as_deref().unwrap_or("-")
    );
    if let Some(message) = &run.message {
        out!(out, "  message        {message}");
    }
    out!(
        out,
        "  source         {} {} → {}",
        run.source_url,
        run.source_table,
        run.target_table
    );
    let t = &r.totals;
    out!(out, "Rows");
    out!(
        out,
        "  {} of {} in scope: {} updated, {} already right, {} skipped, {} failed",
        n(t.rows),
        n(run.rows_in_scope),
        n(t.updated),
        n(t.unchanged),
        n(t.skipped),
        n(t.failed)
    );
    out!(
        out,
        "  {} rows changed by others meanwhile (redone), {} database operations retried",
        n(t.conflicts),
        n(t.retries)
    );
    if let Some(line) = locked(t) {
        out!(out, "  {line}");
    }
    out!(out, "Chunks ({})", r.chunks.len());
    out!(
        out,
        "  {:>6} {:>8} {:>8} {:>6} {:>8} {:>9} {:>10} {:>10}",
        "chunk",
        "rows",
        "updated",
        "failed",
        "read ms",
        "xform ms",
        "write ms",
        "rows/s"
    );
    for line in &r.chunks {
        let c = &line.chunk;
        out!(
            out,
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
    out!(
        out,
        "Failures: {} dead letters, {} unresolved",
        n(r.dead_letters),
        n(r.unresolved)
    );
    for f in &r.failures {
        out!(
            out,
            "  {:>8} × [{}] {}  (keys {})",
            n(f.rows),
            f.kind.map_or("unknown kind", |k| k.as_str()),
            f.error,
            f.keys.join(", ")
        );
    }
    out!(out, "Retries ({})", r.retries.len());
    for x in &r.retries {
        out!(
            out,
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
    out!(out, "Verifications ({})", r.verifications.len());
    for v in &r.verifications {
        out!(
            out,
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
    out!(out, "Rollbacks ({})", r.rollbacks.len());
    for b in &r.rollbacks {
        out!(
            out,
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
            out!(out, "    {message}");
        }
    }
    Ok(())
}

/// Prints what `refill pause`, `resume` or `abort` did.
pub fn steered(out: &mut dyn Write, s: &Steered) -> io::Result<()> {
    let id = &s.run.run_id;
    let n = s.live.sessions.len();
    let processes = |n: usize| {
        if n == 1 {
            "1 process".to_string()
        } else {
            format!("{n} processes")
        }
    };
    let resume = capitalized(&s.resume_hint);
    match s.action {
        Some(ControlAction::Pause) if n == 0 => out!(
            out,
            "Run {id} is paused; no process is working on it now. A `refill run` of it waits until `refill resume {id}`."
        ),
        Some(ControlAction::Pause) => out!(
            out,
            "Run {id} is {}: {} took no new chunk and hold no transaction. `refill resume {id}` goes on.",
            s.live.state,
            processes(n)
        ),
        Some(ControlAction::Abort) if s.aborted_idle => out!(
            out,
            "Run {id} is aborted; no process was working on it. {resume}."
        ),
        Some(ControlAction::Abort) if n == 0 => out!(
            out,
            "Run {id} is aborted: {} finished or left the chunks in hand and exited. {resume}.",
            processes(s.working_before)
        ),
        Some(ControlAction::Abort) => out!(
            out,
            "Run {id} is aborting: {} still finishing the chunks in hand. {resume}.",
            processes(n)
        ),
        None => out!(out, "Run {id} goes on ({} working on it).", processes(n)),
    }
    Ok(())
}

/// `text` with its first letter in upper case.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use refill::chunk::{Key, KeyType};
    use refill::ops::preview::{Component, Limits};
    use refill::ops::run::{Diff, Example};
    use refill::ops::status::{LiveState, live};
    use refill::plan::Plan;
    use refill::progress::Phase;
    use refill::source::{Layout, Scope, TableRef};
    use refill::state::RunRecord;
    use refill::state::{
        Control, ControlAction, Difference, RollbackRecord, SessionOutcome, SessionRecord, Timings,
        VerificationRecord, now,
    };
    use refill::value::{Column, ColumnKind, Info, ValueType};

    use super::*;

    const SPEC: &str = r#"
name = "quote-status-v2"
[source]
url = "sqlite://demo.db"
table = "quotes"
key = "id"
columns = ["status"]
[chunk]
rows = 500
[transform]
component = "remap.wasm"
sha256 = "f0d6e7b4a9c3b7a09eb04560290728ec6c68aba7a25faaf2553425c6e988b3dd"
[target]
columns = ["status_v2"]
"#;

    fn spec() -> Spec {
        Spec::parse(Path::new("/specs/q.toml"), SPEC.to_string()).expect("spec")
    }

    /// What a printer wrote.
    fn printed(print: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        print(&mut out).expect("printing to memory");
        String::from_utf8(out).expect("UTF-8")
    }

    fn run(mode: Mode, status: RunStatus) -> RunRecord {
        RunRecord {
            run_id: "20261203-101500-ab12".into(),
            name: "quote-status-v2".into(),
            mode,
            status,
            work_hash: "0123456789abcdef".into(),
            data_hash: "fedcba9876543210".into(),
            spec: serde_json::json!({}),
            spec_path: "/specs/q.toml".into(),
            component_digest: "f0d6e7b4".into(),
            transform_name: "remap".into(),
            transform_version: "1.0.0".into(),
            host_version: "0.1.0".into(),
            user_name: "ana".into(),
            host_name: "box".into(),
            source_url: "sqlite://demo.db".into(),
            source_table: "\"quotes\"".into(),
            target_table: "\"quotes\"".into(),
            key_type: KeyType::Integer,
            first_key: Some(Key::Int(1)),
            high_watermark: Some(Key::Int(3000)),
            rows_in_scope: 3000,
            chunk_rows: 1000,
            started_at: "2026-12-03T10:15:00.000Z".into(),
            finished_at: Some("2026-12-03T10:15:09.000Z".into()),
            message: None,
            workers: false,
        }
    }

    fn chunk(id: u64, failed: u64) -> ChunkRecord {
        ChunkRecord {
            chunk_id: id,
            lo: (id > 1).then(|| Key::Int((id as i64 - 1) * 1000)),
            hi: Key::Int(id as i64 * 1000),
            status: ChunkStatus::Done,
            attempts: 1,
            session_id: "s1".into(),
            counts: Counts {
                rows: 1000,
                updated: 1000 - failed,
                failed,
                ..Counts::default()
            },
            timings: Timings {
                read_ms: 10,
                transform_ms: 10,
                write_ms: 80,
            },
            started_at: now(),
            finished_at: Some(now()),
            error: None,
        }
    }

    fn session(outcome: Option<SessionOutcome>, state: Option<Phase>) -> SessionRecord {
        SessionRecord {
            session_id: "s1".into(),
            run_id: "20261203-101500-ab12".into(),
            kind: SessionKind::Run,
            pid: 4242,
            host_name: "box".into(),
            user_name: "ana".into(),
            started_at: now(),
            heartbeat_at: now(),
            ended_at: outcome.map(|_| now()),
            outcome,
            state,
            reason: state.map(|_| "rows_per_sec 2,000".to_string()),
        }
    }

    fn column(name: &str) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            sql_type: "TEXT".into(),
            type_name: "TEXT".into(),
            kind: ColumnKind::Text,
            not_null: false,
            unique: false,
            collation: None,
        }
    }

    fn group(count: u64, keys: &[i64]) -> ErrorGroup {
        ErrorGroup {
            count,
            examples: keys
                .iter()
                .map(|k| Example {
                    chunk: 1,
                    key: Key::Int(*k),
                })
                .collect(),
        }
    }

    #[test]
    fn the_plan_names_scope_chunks_pin_and_the_run_it_would_resume() {
        let spec = spec();
        let table = TableRef {
            schema: None,
            name: "quotes".into(),
        };
        let plan = Plan {
            layout: Layout {
                source: table.clone(),
                key: column("id"),
                key_type: KeyType::Integer,
                inputs: vec![column("status")],
                scope: None,
                target: table,
                target_key: column("id"),
                outputs: vec![column("status_v2")],
            },
            scope: Scope {
                rows: 3000,
                null_keys: 0,
                first: Some(Key::Int(1)),
                high_watermark: Some(Key::Int(3000)),
            },
            chunks: 6,
            warnings: vec!["the target has no index on status_v2".into()],
            lookups: Arc::default(),
        };
        let info = Info {
            name: "remap".into(),
            version: "1.0.0".into(),
            description: "maps one value to another".into(),
            inputs: vec![Column {
                name: "value".into(),
                type_: ValueType::Text,
            }],
            outputs: vec![Column {
                name: "mapped".into(),
                type_: ValueType::Text,
            }],
        };
        let imports = vec!["refill:transform/host@0.2.0".to_string()];
        let component = Component {
            path: "/specs/remap.wasm".into(),
            size: 123_456,
            digest: "f0d6e7b4a9c3b7a09eb04560290728ec6c68aba7a25faaf2553425c6e988b3dd".into(),
            info,
            imports,
            limits: Limits::default(),
        };
        let mut preview = Preview {
            plan,
            component,
            pace: refill::ops::preview::pace(&spec),
            previous: Some(run(Mode::Execute, RunStatus::Incomplete)),
            previous_chunks: Some(vec![chunk(1, 0), chunk(2, 0)]),
            signals: SignalsNow::None,
        };
        let text = printed(|out| super::plan(out, &spec, &preview));
        assert!(
            text.starts_with("Plan for \"quote-status-v2\" (/specs/q.toml)\n"),
            "{text}"
        );
        assert!(
            text.contains("  rows       3,000 in scope, keys 1 to 3000;"),
            "{text}"
        );
        assert!(
            text.contains("  chunks     500 rows first, then sized to take 500ms each"),
            "{text}"
        );
        assert!(!text.contains("NOT ALLOWED"), "{text}");
        assert!(text.contains("(123,456 bytes)"), "{text}");
        assert!(text.contains("(pinned, matches)"), "{text}");
        assert!(
            text.contains(
                "  resume     run 20261203-101500-ab12 (incomplete): 2 chunks and 2,000 rows done"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("warning: the target has no index on status_v2\n"),
            "{text}"
        );
        preview.signals = SignalsNow::Over("replica lag 9s > 5s".into());
        let text = printed(|out| super::plan(out, &spec, &preview));
        assert!(
            text.ends_with("  signals    replica lag 9s > 5s (a run would wait)\n"),
            "{text}"
        );
    }

    #[test]
    fn a_dry_run_summary_says_would_and_what_its_error_groups_leave_out() {
        let mut record = run(Mode::DryRun, RunStatus::Done);
        record.rows_in_scope = 3000;
        let report = RunReport {
            run: record,
            resumed: false,
            chunks: 3,
            session: Counts {
                rows: 3000,
                failed: 3000,
                ..Counts::default()
            },
            totals: Counts::default(),
            elapsed: Duration::from_secs(2),
            diffs: vec![Diff {
                key: Key::Int(7),
                chunk: 1,
                inputs: vec![("status".into(), "'open'".into())],
                changes: vec![("status_v2".into(), "NULL".into(), "'active'".into())],
            }],
            error_groups: vec![
                ("boom".into(), group(2000, &[1, 2, 3])),
                ("bang".into(), group(760, &[4])),
            ],
            failure: None,
            stop: None,
            warnings: vec![],
        };
        let text = printed(|out| super::report(out, &spec(), &report));
        assert!(text.contains("  would update             0\n"), "{text}");
        assert!(text.contains("  would fail           3,000\n"), "{text}");
        assert!(
            text.contains("  key 7  status='open'  status_v2: NULL → 'active'"),
            "{text}"
        );
        assert!(
            text.contains("     2,000 × boom  (chunk 1: keys 1, 2, 3, … and 1,997 more)"),
            "{text}"
        );
        assert!(
            text.contains("       760 × bang  (chunk 1: key 4, … and 759 more)"),
            "{text}"
        );
        assert!(
            text.contains("  … and 240 more failed rows with other errors\n"),
            "{text}"
        );
        assert!(
            text.contains("Nothing was written. To write: refill run /specs/q.toml --execute"),
            "{text}"
        );
        // A run whose groups cover every failed row says nothing more.
        let mut whole = report.clone();
        whole.session.failed = 2760;
        let text = printed(|out| super::report(out, &spec(), &whole));
        assert!(!text.contains("more failed row"), "{text}");
    }

    #[test]
    fn the_status_list_counts_dead_letters_a_retry_has_not_resolved() {
        let record = run(Mode::Execute, RunStatus::Done);
        let chunks = [chunk(1, 300), chunk(2, 0), chunk(3, 0)];
        let totals = Counts {
            rows: 3000,
            updated: 2700,
            failed: 300,
            ..Counts::default()
        };
        let line = |unresolved| RunLine {
            run: record.clone(),
            totals,
            chunks_done: 3,
            unresolved,
            live: live(&record, None, &[], &chunks),
        };
        let url = DbUrl::parse("sqlite://state.db", Path::new("/specs")).expect("url");
        let text = printed(|out| run_list(out, &url, &[line(0)]));
        let row = text.lines().nth(1).expect("a row");
        assert!(
            row.starts_with("20261203-101500-ab12   quote-status-v2"),
            "{text}"
        );
        assert!(
            row.contains(" done        "),
            "the status is padded: {text}"
        );
        assert!(row.contains("3,000/3,000        0  "), "{text}");
        let text = printed(|out| run_list(out, &url, &[line(120)]));
        assert!(text.contains("3,000/3,000      120  "), "{text}");
    }

    #[test]
    fn the_status_detail_tells_resolved_failures_sessions_and_troubled_chunks() {
        let mut record = run(Mode::Execute, RunStatus::Running);
        record.rows_in_scope = 12_000;
        let mut chunks: Vec<ChunkRecord> = (1..=12).map(|id| chunk(id, 1)).collect();
        chunks[11].status = ChunkStatus::Pending;
        let totals = Counts {
            rows: 12_000,
            updated: 11_988,
            failed: 12,
            ..Counts::default()
        };
        let sessions = vec![
            session(Some(SessionOutcome::Interrupted), None),
            session(None, Some(Phase::Throttled)),
        ];
        let detail = Detail {
            live: live(&record, None, &sessions, &chunks),
            run: record,
            totals,
            unresolved: 2,
            chunks,
            sessions,
        };
        let text = printed(|out| run_detail(out, &detail));
        assert!(
            text.starts_with(
                "Run 20261203-101500-ab12 of \"quote-status-v2\": execute, throttled\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("11 done, 1 in flight or interrupted"),
            "{text}"
        );
        assert!(
            text.contains("12 failed (10 made right by a retry since; 2 still failing)"),
            "{text}"
        );
        assert!(
            text.contains("(interrupted); 11 chunks done, chunk 12 in flight"),
            "{text}"
        );
        assert!(text.contains("  progress   12,000 rows (100.0%)"), "{text}");
        assert!(
            text.contains("(throttled: rows_per_sec 2,000, heartbeat 0s ago)"),
            "{text}"
        );
        assert!(
            text.contains("  … and 2 more chunks with failed rows or errors"),
            "{text}"
        );
        let mut fixed = detail.clone();
        fixed.unresolved = 0;
        let text = printed(|out| run_detail(out, &fixed));
        assert!(
            text.contains("12 failed (all 12 made right by a retry since)"),
            "{text}"
        );
    }

    #[test]
    fn a_pause_with_nobody_working_reads_paused_and_a_live_pause_reads_pausing_until_all_paused() {
        let record = run(Mode::Execute, RunStatus::Running);
        let pause = Control {
            action: ControlAction::Pause,
            by: "ana@box".into(),
            at: now(),
        };
        let idle = live(&record, Some(pause.clone()), &[], &[]);
        assert_eq!(idle.state, LiveState::Paused);
        let working = [session(None, Some(Phase::Running))];
        let pausing = live(&record, Some(pause.clone()), &working, &[]);
        assert_eq!(pausing.state, LiveState::Working(Phase::Pausing));
        assert!(pausing.state.pausing_or_paused() && !pausing.state.paused());
        let paused = [session(None, Some(Phase::Paused))];
        assert!(live(&record, Some(pause), &paused, &[]).state.paused());
        assert_eq!(
            live(&record, None, &[], &[]).state,
            LiveState::Idle(RunStatus::Running)
        );
    }

    #[test]
    fn a_verification_shows_expected_against_actual_and_how_many_keys_it_leaves_out() {
        let v = VerificationRecord {
            run_id: Some("20261203-101500-ab12".into()),
            component_digest: "f0d6e7b4".into(),
            rows: 3000,
            matching: 2900,
            differing: 100,
            chunks: 3,
            differing_chunks: 1,
            differing_keys: (1..=60).map(Key::Int).collect(),
            differences: vec![Difference {
                key: Key::Int(1),
                column: "status_v2".into(),
                actual: "'closed'".into(),
                expected: "'closed_won'".into(),
            }],
            ..VerificationRecord::default()
        };
        let text = printed(|out| verification(out, &v));
        assert!(text.contains("DIFFERENCES FOUND"), "{text}");
        assert!(
            text.contains("  key 1  status_v2: 'closed' → 'closed_won'"),
            "{text}"
        );
        assert!(text.contains(", 50, … and 50 more\n"), "{text}");
    }

    #[test]
    fn a_dry_rollback_says_would_and_the_full_report_lists_every_part() {
        let r = RollbackRecord {
            rollback_id: "rb1".into(),
            run_id: "20261203-101500-ab12".into(),
            execute: false,
            restored: 993,
            ..RollbackRecord::default()
        };
        let text = printed(|out| rollback(out, &r));
        assert!(
            text.starts_with("Dry rollback rb1 of run 20261203-101500-ab12:\n"),
            "{text}"
        );
        assert!(text.contains("  would restore            993\n"), "{text}");
        assert!(
            text.ends_with("Nothing was written. To write: add --execute.\n"),
            "{text}"
        );

        let report = refill::ops::report::Report {
            run: run(Mode::Execute, RunStatus::Done),
            totals: Counts {
                rows: 3000,
                updated: 2990,
                failed: 10,
                ..Counts::default()
            },
            chunks: vec![refill::ops::report::ChunkLine {
                chunk: chunk(1, 10),
                rows_per_sec: 10_000.0,
            }],
            sessions: vec![],
            dead_letters: 10,
            unresolved: 4,
            failures: vec![refill::ops::report::FailureGroup {
                kind: Some(refill::state::FailureKind::Error),
                error: "unknown status".into(),
                rows: 4,
                keys: vec!["17".into(), "25".into()],
            }],
            retries: vec![],
            verifications: vec![],
            rollbacks: vec![r],
        };
        let text = printed(|out| report_full(out, &report));
        assert!(
            text.contains("  3,000 of 3,000 in scope: 2,990 updated"),
            "{text}"
        );
        assert!(
            text.contains("Failures: 10 dead letters, 4 unresolved"),
            "{text}"
        );
        assert!(
            text.contains("         4 × [error] unknown status  (keys 17, 25)"),
            "{text}"
        );
        assert!(text.contains("  rb1 dry run: 993 restored"), "{text}");
    }

    #[test]
    fn pause_resume_and_abort_say_what_the_processes_did() {
        let record = run(Mode::Execute, RunStatus::Running);
        let pause = Control {
            action: ControlAction::Pause,
            by: "ana@box".into(),
            at: now(),
        };
        let working = [session(None, Some(Phase::Paused))];
        let steered = |action, live, working_before, aborted_idle| Steered {
            action,
            run: record.clone(),
            by: "ana@box".into(),
            working_before,
            live,
            resume_hint: "the next `refill run` of its spec resumes it".into(),
            aborted_idle,
        };
        let paused = steered(
            Some(ControlAction::Pause),
            live(&record, Some(pause), &working, &[]),
            1,
            false,
        );
        assert_eq!(
            printed(|out| super::steered(out, &paused)),
            "Run 20261203-101500-ab12 is paused: 1 process took no new chunk and hold no transaction. `refill resume 20261203-101500-ab12` goes on.\n"
        );
        let idle = steered(
            Some(ControlAction::Abort),
            live(&record, None, &[], &[]),
            0,
            true,
        );
        assert_eq!(
            printed(|out| super::steered(out, &idle)),
            "Run 20261203-101500-ab12 is aborted; no process was working on it. The next `refill run` of its spec resumes it.\n"
        );
        let resumed = steered(None, live(&record, None, &working, &[]), 1, false);
        assert_eq!(
            printed(|out| super::steered(out, &resumed)),
            "Run 20261203-101500-ab12 goes on (1 process working on it).\n"
        );
    }
}
