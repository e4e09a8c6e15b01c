//! refill re-processes existing database rows so that their derived values
//! become right, safely.
//!
//! The modules follow the data flow: a [`spec`] says what to do; the
//! [`source`] reads rows from the database in key-ordered [`chunk`]s; the
//! [`transform`] runs the sandboxed WebAssembly component over them; the
//! [`sink`] writes the results back; [`state`] keeps checkpoints, dead
//! letters, before-images and the audit trail; [`backoff`] retries what a
//! database hiccup breaks; [`plan`] and [`run`] wire them together. After a
//! run, [`retry`] re-runs its dead letters, [`verify`] recomputes and
//! compares, [`report`] tells what happened and [`rollback`] undoes it.
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
pub mod plan;
pub mod report;
pub mod retry;
pub mod rollback;
pub mod run;
pub mod scaffold;
pub mod sink;
pub mod source;
pub mod spec;
pub mod state;
pub mod throttle;
pub mod transform;
pub mod value;
pub mod verify;

/// The version of this host, recorded with every run.
pub const HOST_VERSION: &str = env!("CARGO_PKG_VERSION");
