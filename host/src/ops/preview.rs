//! `refill plan`: consumes a spec and produces what a run of it would do,
//! without writing anything: the plan, the component and its limits, the
//! pace, the run it would resume, and the health signals measured once.

use std::path::PathBuf;

use super::run::{self, RunError};
use crate::plan::{self, Plan};
pub use crate::source::ColumnInfo;
use crate::source::Database;
use crate::spec::Spec;
use crate::state::{ChunkRecord, RunRecord, StateStore};
use crate::throttle::signals::Signals;
pub use crate::transform::Limits;
use crate::transform::Runner;
use crate::value::Info;

/// The component a run would load.
#[derive(Clone, Debug)]
pub struct Component {
    /// Its file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: usize,
    /// Its sha256.
    pub digest: String,
    /// What it says about itself.
    pub info: Info,
    /// What it imports.
    pub imports: Vec<String>,
    /// The limits it runs under.
    pub limits: Limits,
}

impl Component {
    /// The component a runner runs.
    pub fn of(runner: &Runner) -> Component {
        Component {
            path: runner.compiled().path().to_path_buf(),
            size: runner.compiled().size(),
            digest: runner.digest().to_string(),
            info: runner.info().clone(),
            imports: runner.compiled().imports().to_vec(),
            limits: runner.limits(),
        }
    }
}

/// The health signals of the spec, measured once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalsNow {
    /// The spec has none.
    None,
    /// Every one is under its threshold.
    Under,
    /// One is over: why a run would wait.
    Over(String),
}

/// What a run of a spec would do.
#[derive(Debug)]
pub struct Preview {
    /// The plan.
    pub plan: Plan,
    /// The component.
    pub component: Component,
    /// How the run is paced: one line per limit.
    pub pace: Vec<String>,
    /// The spec's newest execute run, if any.
    pub previous: Option<RunRecord>,
    /// Its chunks.
    pub previous_chunks: Option<Vec<ChunkRecord>>,
    /// The health signals now.
    pub signals: SignalsNow,
}

/// How `spec` paces a run, one line per limit, as `plan` shows it.
pub fn pace(spec: &Spec) -> Vec<String> {
    crate::throttle::describe(spec)
}

/// What a run of `spec` would do. Reads only: the state store is not
/// created if it is missing.
pub async fn preview(spec: &Spec) -> Result<Preview, RunError> {
    let runner = run::load_transform(spec, false)?;
    let db = Database::for_spec(spec, 2, false).await?;
    let plan = plan::build(spec, &db, &runner).await?;
    let state = StateStore::open_existing(&spec.state_url).await?;
    let previous = match &state {
        Some(state) => state.latest_execute_run(spec.name()).await?,
        None => None,
    };
    let previous_chunks = match (&state, &previous) {
        (Some(state), Some(run)) => Some(state.chunks(run).await?),
        _ => None,
    };
    // The health signals, measured once, so a broken probe shows here.
    let signals = Signals::of(spec, &db)?;
    let signals = if signals.any() {
        let mut found = signals.check().await;
        // A rate needs two measurements a second apart.
        if found.as_ref().is_some_and(|f| f.warming_up()) {
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            found = signals.check().await;
        }
        match found {
            None => SignalsNow::Under,
            Some(found) => SignalsNow::Over(found.reason),
        }
    } else {
        SignalsNow::None
    };
    Ok(Preview {
        plan,
        component: Component::of(&runner),
        pace: pace(spec),
        previous,
        previous_chunks,
        signals,
    })
}
