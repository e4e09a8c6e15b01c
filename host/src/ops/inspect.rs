//! `refill inspect`: consumes a component file and produces what a
//! reviewer needs to judge it: its digest, what it imports, grouped by what
//! each import gives it, what it exports, which tools built it, and whether
//! refill would run it.

use std::path::Path;
use std::time::Instant;

pub use crate::transform::cache::Origin;
pub use crate::transform::inspect::Producer;
pub use crate::transform::wasi::Capability;
pub use crate::transform::{ALLOWED_IMPORTS, WIT};
use crate::transform::{Compiled, Limits, Runner, TRANSFORM_EXPORT, TransformError, wasi};
use crate::value::Info;

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

/// Reads, compiles and asks the component at `path`. A component refill
/// would refuse to run is an inspection with a verdict; only one that
/// cannot be read or compiled at all is an error.
pub fn inspect(path: &Path) -> Result<Inspection, TransformError> {
    let started = Instant::now();
    let bytes = Compiled::read_bytes(path, Limits::default().component_bytes)?;
    let compiled = Compiled::from_bytes(path, &bytes, None)?;
    let mut inspection = Inspection {
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
        producers: crate::transform::inspect::producers(&bytes),
    };
    match Runner::new(compiled, Limits::default()) {
        Ok(runner) => inspection.info = Some(runner.info().clone()),
        Err(e) => inspection.verdict = Some(e.to_string()),
    }
    Ok(inspection)
}

/// The imports by what they give the component, in policy order.
pub fn capabilities<S: AsRef<str>>(imports: &[S]) -> Vec<(Capability, Vec<&str>)> {
    let mut groups: Vec<(Capability, Vec<&str>)> = Vec::new();
    for import in imports {
        let import = import.as_ref();
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
pub fn world(exports: &[String]) -> &'static str {
    if exports.iter().any(|e| e == TRANSFORM_EXPORT) {
        "refill:transform/transformer@0.2.0"
    } else {
        "unknown (it does not export refill:transform/transform@0.2.0)"
    }
}
