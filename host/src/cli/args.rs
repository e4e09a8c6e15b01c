//! Raw command-line arguments, parsed by clap. Nothing here does work.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Run data backfills safely: chunked, resumable, with sandboxed
/// WebAssembly transforms.
#[derive(Debug, Parser)]
#[command(name = "refill", version, about, long_about = None, propagate_version = true)]
pub struct Args {
    /// More log output (-v: debug, -vv: trace). `REFILL_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
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
        /// A run id, or a unique prefix of one.
        run: String,
        /// Write to the target. Needs the component pinned in the spec.
        #[arg(long)]
        execute: bool,
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
        /// A run id, or a unique prefix of one.
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
        /// A run id, or a unique prefix of one.
        run: String,
        /// Write to the target.
        #[arg(long)]
        execute: bool,
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

/// Parses the process arguments; exits with usage help on errors (code 2).
pub fn parse() -> Args {
    Args::parse()
}
