//! `refill try` and `refill run SPEC --input`: consumes a transform (a
//! spec's, or a component file with its configuration, lookups, clock and
//! limits) and a JSON-lines file of rows, and produces each row's outcome
//! as JSON, the guest's log lines, and the counts. Nothing is read from or
//! written to a database.

use std::path::Path;
use std::sync::Arc;

use super::run::{self, RunError};
use crate::local::{self, LocalError};
pub use crate::local::{compare, read_expected};
use crate::lookup::{self, LookupError, Lookups};
use crate::spec::Spec;
pub use crate::transform::Limits;
use crate::transform::wasi::GuestEnv;
use crate::transform::{Runner, Setup, TransformError};
use crate::value::{Outcome, Param};

/// Why rows could not be tried.
#[derive(Debug, thiserror::Error)]
pub enum TryError {
    /// The spec's transform or lookups could not be loaded.
    #[error(transparent)]
    Run(Box<RunError>),
    /// The component could not be loaded or run.
    #[error(transparent)]
    Transform(#[from] TransformError),
    /// A lookup file could not be read.
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// The rows could not be read, or the transform could not run.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// `--clock` is not a time.
    #[error("--clock {0:?} is not an RFC 3339 time")]
    Clock(String),
}

impl From<RunError> for TryError {
    fn from(error: RunError) -> TryError {
        TryError::Run(Box::new(error))
    }
}

/// A component file and what it runs with, as `refill try` takes them.
#[derive(Debug)]
pub struct Component<'a> {
    /// The file.
    pub path: &'a Path,
    /// Its configuration parameters: name, value.
    pub config: Vec<(String, String)>,
    /// Its lookup tables: name, file.
    pub lookups: &'a [(String, String)],
    /// The time its clock shows, RFC 3339; now if `None`.
    pub clock: Option<&'a str>,
    /// Its limits.
    pub limits: Limits,
}

/// A transform ready to try rows.
pub struct Tryout {
    runner: Runner,
    setup: Setup,
}

/// What happened to one row.
#[derive(Debug)]
pub struct TriedRow {
    /// `key`, `outcome` (`update`, `skip`, `error` or `trap`), and
    /// `values` or `error`.
    pub doc: serde_json::Value,
    /// Whether it failed: an error outcome or a trap.
    pub failed: bool,
    /// Whether the transform skipped it.
    pub skipped: bool,
}

/// The counts of a try.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Rows tried.
    pub rows: usize,
    /// Rows the transform would update.
    pub updated: usize,
    /// Rows it skipped.
    pub skipped: usize,
    /// Rows that failed.
    pub failed: usize,
}

impl Tryout {
    /// The transform of `spec`, with its configuration and file lookups.
    pub async fn of_spec(spec: &Spec) -> Result<Tryout, TryError> {
        let runner = run::load_transform(spec, false)?;
        let lookups = Arc::new(lookup::load(spec, None).await?);
        let env = GuestEnv::current(&[spec.name(), runner.digest()]);
        let setup = crate::plan::setup(spec, env, lookups);
        Ok(Tryout { runner, setup })
    }

    /// A component file and what it runs with.
    pub fn of_component(component: Component<'_>) -> Result<Tryout, TryError> {
        let runner = Runner::load(component.path, None, component.limits)?;
        let mut lookups = Lookups::none();
        for (name, file) in component.lookups {
            lookups.load_file(name, Path::new(file))?;
        }
        let identity = [runner.digest()];
        let env = match component.clock {
            Some(text) => GuestEnv::at(
                crate::state::parse_time(text).ok_or_else(|| TryError::Clock(text.to_string()))?,
                &identity,
            ),
            None => GuestEnv::current(&identity),
        };
        let setup = Setup {
            params: component
                .config
                .into_iter()
                .map(|(name, value)| Param { name, value })
                .collect(),
            env,
            lookups: Arc::new(lookups),
        };
        Ok(Tryout { runner, setup })
    }

    /// The transform's name, version and sha256.
    pub fn describe(&self) -> (&str, &str, &str) {
        let info = self.runner.info();
        (&info.name, &info.version, self.runner.digest())
    }

    /// Runs the rows of `input` in batches of `batch_rows`, and calls
    /// `each` with every row's outcome and then the guest's log lines of
    /// its batch (with the first row of the batch), in order. A
    /// configuration the transform refuses fails here, before any row is
    /// read.
    pub fn rows(
        &self,
        input: &Path,
        batch_rows: usize,
        mut each: impl FnMut(&TriedRow, &[String]),
    ) -> Result<Totals, TryError> {
        let instance = self.runner.instance(&self.setup)?;
        let info = self.runner.info().clone();
        let rows = local::read_rows(input, &info)?;
        let mut totals = Totals {
            rows: rows.len(),
            ..Totals::default()
        };
        local::run_rows(
            &self.runner,
            &self.setup,
            instance,
            rows,
            batch_rows,
            |tried, logs| {
                let row = TriedRow {
                    doc: tried.to_json(&info),
                    failed: tried.failed(),
                    skipped: matches!(tried.result, Ok(Outcome::Skip)),
                };
                if row.failed {
                    totals.failed += 1;
                } else if row.skipped {
                    totals.skipped += 1;
                } else {
                    totals.updated += 1;
                }
                let logs: Vec<String> = logs.iter().map(|l| l.message.clone()).collect();
                each(&row, &logs);
            },
        )?;
        Ok(totals)
    }
}
