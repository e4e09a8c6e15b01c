//! Finding what a command works on: consumes the run it names (a run id,
//! a prefix of one, or a spec file) and where to look (`--spec`,
//! `--state`), and produces the state store, the run and the spec.

use std::path::{Path, PathBuf};

use super::status::{self, FindError};
use crate::db::{DbUrl, UrlError};
use crate::spec::{DEFAULT_STATE_URL, Spec, SpecError};
use crate::state::{RunRecord, StateError, StateStore};

/// Where a command looks for the run it names.
#[derive(Clone, Debug, Default)]
pub struct Where {
    /// A spec, whose state store holds the run (and which the command
    /// runs, instead of the file the run recorded).
    pub spec: Option<PathBuf>,
    /// A state store's url, when no spec is given.
    pub state: Option<String>,
}

/// Why a command's run or state store cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// No such run, or an ambiguous prefix.
    #[error(transparent)]
    Find(#[from] FindError),
    /// The store could not be read.
    #[error(transparent)]
    State(#[from] StateError),
    /// A spec could not be loaded.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// `--state` is not a url.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// There is no store where the command looked.
    #[error("no state store at {url}; pass --spec SPEC or --state URL to read another one")]
    NoStore {
        /// The store's url, masked.
        url: String,
    },
    /// The run was named by a spec file, and `--spec` names another.
    #[error("{id} is a spec file and --spec gives another: name the run by one of them")]
    TwoSpecs {
        /// The spec file naming the run.
        id: String,
    },
    /// The spec the run recorded cannot be loaded.
    #[error("run {run_id} recorded its spec at {path}; pass --spec SPEC if it moved")]
    SpecMoved {
        /// The run.
        run_id: String,
        /// The file it recorded.
        path: String,
        /// Why it cannot be loaded.
        #[source]
        source: SpecError,
    },
}

/// The state store a command reads: the spec's, `state`, or the default
/// one in the current folder.
pub fn state_url(state: Option<&str>, spec: Option<&Spec>) -> Result<DbUrl, LocateError> {
    Ok(match (state, spec) {
        (_, Some(spec)) => spec.state_url.clone(),
        (Some(url), None) => DbUrl::parse(url, Path::new("."))?,
        (None, None) => DbUrl::parse(DEFAULT_STATE_URL, Path::new("."))?,
    })
}

/// Opens the store at `url`, which must exist: a reading command never
/// creates one.
pub async fn open_state(url: &DbUrl) -> Result<StateStore, LocateError> {
    StateStore::open_existing(url)
        .await?
        .ok_or_else(|| LocateError::NoStore {
            url: url.to_string(),
        })
}

/// A run a command names, its state store, and the spec given with it, if
/// any.
#[derive(Debug)]
pub struct Found {
    /// The spec given: the file naming the run, or `--spec`.
    pub spec: Option<Spec>,
    /// The store holding the run.
    pub store: StateStore,
    /// The run.
    pub run: RunRecord,
}

/// The run `id` names: a run id (or a prefix of one) or a spec file, which
/// names its newest execute run in its own state store.
pub async fn find(id: &str, at: &Where) -> Result<Found, LocateError> {
    let as_spec = Path::new(id);
    if id.ends_with(".toml") || as_spec.is_file() {
        if at.spec.is_some() {
            return Err(LocateError::TwoSpecs { id: id.to_string() });
        }
        let spec = Spec::load(as_spec)?;
        let store = open_state(&state_url(at.state.as_deref(), Some(&spec))?).await?;
        let run = status::newest_of(&store, &spec).await?;
        return Ok(Found {
            spec: Some(spec),
            store,
            run,
        });
    }
    let spec = at.spec.as_deref().map(Spec::load).transpose()?;
    let store = open_state(&state_url(at.state.as_deref(), spec.as_ref())?).await?;
    let run = status::find(&store, id).await?;
    Ok(Found { spec, store, run })
}

/// A recorded run, its state store, and the spec it runs with: the one
/// given, or else the file the run recorded.
#[derive(Debug)]
pub struct Located {
    /// The spec.
    pub spec: Spec,
    /// The store holding the run.
    pub store: StateStore,
    /// The run.
    pub run: RunRecord,
}

/// The run `id` names, as [`find`] finds it, with the spec it runs with.
pub async fn locate(id: &str, at: &Where) -> Result<Located, LocateError> {
    let Found { spec, store, run } = find(id, at).await?;
    let spec = match spec {
        Some(spec) => spec,
        None => Spec::load(Path::new(&run.spec_path)).map_err(|source| LocateError::SpecMoved {
            run_id: run.run_id.clone(),
            path: run.spec_path.clone(),
            source,
        })?,
    };
    Ok(Located { spec, store, run })
}
