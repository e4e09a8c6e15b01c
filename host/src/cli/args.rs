//! Raw command-line arguments, parsed by clap. Nothing here does work.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Run data backfills safely: chunked, resumable, with sandboxed
/// WebAssembly transforms.
#[derive(Debug, Parser)]
#[command(name = "refill", version, about, long_about = None, propagate_version = true)]
pub struct Args {
    /// More log output (-v: debug, -vv: trace). `REFILL_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log lines as text, or as one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a spec would do: rows in scope, chunks, the transform and
    /// what it may touch. Writes nothing.
    Plan {
        /// The spec file.
        spec: PathBuf,
    },
    /// Run a spec. Without --execute this is a dry run: every chunk is
    /// read and transformed, nothing is written to the target.
    Run {
        /// The spec file.
        spec: PathBuf,
        /// Write to the target. Needs the component pinned in the spec.
        #[arg(long)]
        execute: bool,
        /// Stop after this many rows (a canary); run again to go on.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Abandon the spec's unfinished run and start over.
        #[arg(long)]
        restart: bool,
        /// Stop taking chunks after this long (such as 30m or 2h); run
        /// again to go on.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        max_runtime: Option<Duration>,
        /// Stop after the chunk that reaches this key; run again to go on.
        #[arg(long, value_name = "KEY")]
        until_key: Option<String>,
        /// Serve Prometheus metrics on this address (such as 127.0.0.1:9187;
        /// port 0 picks one and prints it).
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<SocketAddr>,
        /// Run the spec's transform over the rows of this JSON-lines file
        /// instead of the database, and print each outcome (see `refill
        /// try`). Touches no database and no state store.
        #[arg(long, value_name = "ROWS.jsonl", conflicts_with_all = ["execute", "limit", "restart", "max_runtime", "until_key", "metrics_addr"])]
        input: Option<PathBuf>,
        /// With --input: print one JSON object per row.
        #[arg(long, requires = "input")]
        json: bool,
        /// Plan the run for distributed workers and exit: `--workers 0`
        /// records every chunk in the (PostgreSQL) state store, prints the
        /// run's id, and leaves the work to `refill worker` processes.
        #[arg(long, value_name = "0", requires = "execute", conflicts_with_all = ["limit", "until_key", "max_runtime", "metrics_addr"])]
        workers: Option<u32>,
    },
    /// Join a run planned with `refill run SPEC --execute --workers 0` and
    /// work on its chunks until all are done. Start as many as you like, on
    /// any host: they claim chunks under leases in the PostgreSQL state
    /// store, and take over the chunks of a worker that dies.
    Worker {
        /// The PostgreSQL state store holding the run.
        #[arg(long, value_name = "URL", env = "REFILL_STATE")]
        state: String,
        /// The run to join (an id or a unique prefix); by default the most
        /// recent running run planned for workers.
        #[arg(long, value_name = "RUN")]
        run: Option<String>,
        /// The source database url, when the spec's url holds a password
        /// (refill does not store passwords).
        #[arg(long, value_name = "URL", env = "REFILL_SOURCE_URL")]
        source_url: Option<String>,
        /// How long a claimed chunk stays this worker's without a renewal;
        /// a dead worker's chunks are taken over after this long.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        lease: Duration,
        /// Stop taking chunks after this long (such as 30m).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        max_runtime: Option<Duration>,
        /// Serve Prometheus metrics on this address.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<SocketAddr>,
    },
    /// Run a component over rows from a JSON-lines file and print each
    /// outcome: develop and test a transform with no database at all. Each
    /// line is an object with the row's `key` and one field per input
    /// column the transform declares.
    Try {
        /// The component file.
        component: PathBuf,
        /// The rows, one JSON object per line.
        #[arg(long, value_name = "ROWS.jsonl")]
        input: PathBuf,
        /// A configuration parameter, as `[transform] config` would give it.
        #[arg(long = "config", value_name = "NAME=VALUE", value_parser = name_value)]
        config: Vec<(String, String)>,
        /// A lookup table from a CSV or JSON-lines file, as `[[lookup]]`
        /// would declare it (key and value are the first two CSV columns,
        /// or the `key` and `value` fields).
        #[arg(long = "lookup", value_name = "NAME=FILE", value_parser = name_value)]
        lookup: Vec<(String, String)>,
        /// What the guest's clock reads (RFC 3339); default: now.
        #[arg(long, value_name = "TIME")]
        clock: Option<String>,
        /// Fuel per row.
        #[arg(long, value_name = "UNITS")]
        fuel_per_row: Option<u64>,
        /// Memory limit per instance, in MiB.
        #[arg(long, value_name = "MiB")]
        memory_mb: Option<u32>,
        /// Rows per call into the component.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        batch_rows: usize,
        /// Print one JSON object per row.
        #[arg(long)]
        json: bool,
        /// Compare each row's outcome with the line of this file at the
        /// same position (one JSON object per row, as `--json` prints
        /// them; error text compared exactly) and exit 1 on a difference.
        #[arg(long, value_name = "EXPECTED.jsonl")]
        expect: Option<PathBuf>,
    },
    /// Ask every process working on a run to stop taking chunks and wait
    /// (within a second), holding no transaction open.
    Pause {
        /// A run id, a unique prefix of one, or a spec file (its newest
        /// execute run).
        run: String,
        #[command(flatten)]
        at: RunAt,
    },
    /// Let a paused run go on.
    Resume {
        /// A run id, a unique prefix of one, or a spec file (its newest
        /// execute run).
        run: String,
        #[command(flatten)]
        at: RunAt,
    },
    /// Ask every process working on a run to finish or leave its chunk and
    /// exit; the run is marked aborted, and the next `refill run` of the
    /// spec resumes it.
    Abort {
        /// A run id, a unique prefix of one, or a spec file (its newest
        /// execute run).
        run: String,
        #[command(flatten)]
        at: RunAt,
    },
    /// Show recent runs, or one run in detail.
    Status {
        /// A run id, or a unique prefix of one.
        run: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The state store to read.
        #[arg(
            long,
            value_name = "URL",
            conflicts_with = "spec",
            env = "REFILL_STATE"
        )]
        state: Option<String>,
        /// Read the state store this spec uses.
        #[arg(long, value_name = "SPEC")]
        spec: Option<PathBuf>,
    },
    /// Run a run's dead-lettered rows again, for example after fixing the
    /// transform. Without --execute nothing is written.
    Retry {
        /// A run id, a unique prefix of one, or a spec file (its newest
        /// execute run).
        run: String,
        /// Write to the target. Needs the component pinned in the spec.
        #[arg(long)]
        execute: bool,
        /// Serve Prometheus metrics on this address while the retry works.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<SocketAddr>,
        #[command(flatten)]
        at: RunAt,
    },
    /// Recompute the transform over a run's rows (or, with only --spec,
    /// over the spec's scope) and compare with what the target holds.
    /// Writes nothing; exits 1 if any row differs.
    Verify {
        /// A run id, or a unique prefix of one.
        run: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: RunAt,
    },
    /// Everything about a run: what ran, chunks, failures, retries,
    /// verifications and rollbacks.
    Report {
        /// A run id, a unique prefix of one, or a spec file (its newest
        /// execute run).
        run: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: RunAt,
    },
    /// Put back the values a run overwrote, where nobody changed the row
    /// since. Without --execute nothing is written.
    Rollback {
        /// A run id, a unique prefix of one, or a spec file (its newest
        /// execute run).
        run: String,
        /// Write to the target.
        #[arg(long)]
        execute: bool,
        /// Serve Prometheus metrics on this address while the rollback
        /// works.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<SocketAddr>,
        #[command(flatten)]
        at: RunAt,
    },
    /// Describe a component: digest, size, imports, exports, what it says
    /// about itself, and whether refill would run it.
    Inspect {
        /// The component file.
        component: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make a transform project in a new folder NAME, in Rust, Python,
    /// JavaScript or C: the WIT, a minimal transform that passes its own test,
    /// `rows.jsonl` and `expected.jsonl` for `refill try --expect`, and a
    /// README with the build commands. Needs nothing from refill's
    /// repository (a Rust project carries the SDK).
    New {
        /// The language.
        #[arg(long, value_enum)]
        lang: refill::scaffold::Lang,
        /// The project's name and folder (lowercase letters, digits, dashes).
        name: String,
    },
    /// Build the transform project in DIR (default: the current folder)
    /// into `dist/<name>.wasm`, print its sha256, and write
    /// `dist/<name>.provenance.json` beside it: the source's digest, each
    /// tool's version, the output's digest. Rust (cargo), Python
    /// (componentize-py), JavaScript (componentize-js) and C (clang-16 with
    /// wasi-libc and wit-bindgen); a missing tool is named with the command
    /// that installs it.
    Build {
        /// The project's folder, as `refill new` made it.
        dir: Option<PathBuf>,
        /// Rebuild, write nothing, and compare with this sha256 (a spec's
        /// pin): exit 0 when the source builds to it, 1 when not, saying
        /// whether the toolchain or the source differs from the provenance
        /// recorded with the pin.
        #[arg(long, value_name = "SHA256")]
        check: Option<String>,
        /// The provenance recorded with the pin (default:
        /// `dist/<name>.provenance.json` in the project).
        #[arg(long, value_name = "FILE", requires = "check")]
        provenance: Option<PathBuf>,
    },
    /// Print the WIT of the world a transform implements
    /// (`refill:transform/transformer`), as this refill was built with it:
    /// save it as `wit/transform.wit` in a transform's own repository.
    Wit,
}

/// Where a run is recorded, and the spec it ran.
#[derive(Debug, clap::Args)]
pub struct RunAt {
    /// The spec (default: the file the run recorded), whose state store
    /// holds the run.
    #[arg(long, value_name = "SPEC")]
    pub spec: Option<PathBuf>,
    /// The state store, when no spec is given.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "spec",
        env = "REFILL_STATE"
    )]
    pub state: Option<String>,
}

fn name_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// Parses the process arguments; exits with usage help on errors (code 2).
pub fn parse() -> Args {
    Args::parse()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn every_command_and_flag_is_in_the_reference() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/commands.md"),
        )
        .expect("docs/commands.md");
        let mentions = |flag: &str| {
            doc.match_indices(flag).any(|(at, _)| {
                !doc[at + flag.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            })
        };
        let top = Args::command();
        let mut missing = Vec::new();
        for arg in top.get_arguments() {
            if let Some(long) = arg.get_long()
                && !mentions(&format!("--{long}"))
            {
                missing.push(format!("refill --{long}"));
            }
        }
        for command in top.get_subcommands() {
            let name = command.get_name();
            if command.is_hide_set() {
                continue;
            }
            if !mentions(&format!("`refill {name}")) {
                missing.push(format!("refill {name}"));
            }
            for arg in command.get_arguments() {
                if arg.is_hide_set() || arg.is_global_set() {
                    continue;
                }
                if let Some(long) = arg.get_long()
                    && !mentions(&format!("--{long}"))
                {
                    missing.push(format!("refill {name} --{long}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "commands and flags with no entry in docs/commands.md: {missing:?}"
        );
    }
}
