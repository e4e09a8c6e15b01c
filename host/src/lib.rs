//! refill re-processes existing database rows so that their derived values
//! become right, safely.
//!
//! The modules follow the data flow: a [`spec`] says what to do; the
//! [`source`] reads rows from the database in key-ordered [`chunk`]s; the
//! [`transform`] runs the sandboxed WebAssembly component over them; the
//! [`sink`] writes the results back; [`state`] keeps checkpoints, dead
//! letters, before-images and the audit trail; [`backoff`] retries what a
//! database hiccup breaks; [`throttle`] paces the work and [`progress`]
//! counts it. [`plan`] checks a spec against the database, and [`ops`]
//! holds the commands that work on a run: run it, work on it as a worker,
//! retry its dead letters, verify, report, roll back and show its status.
//! [`scaffold`] and [`build`] serve the teams that write transforms. The
//! `refill` binary is a thin command line over this library.

pub mod backoff;
pub mod build;
pub mod chunk;
pub mod clip;
pub mod db;
pub mod local;
pub mod lookup;
pub mod metrics;
pub mod ops;
pub mod plan;
pub mod progress;
pub mod scaffold;
pub mod sink;
pub mod source;
pub mod spec;
pub mod state;
pub mod throttle;
pub mod transform;
pub mod value;

/// The version of this host, recorded with every run.
pub const HOST_VERSION: &str = env!("CARGO_PKG_VERSION");
