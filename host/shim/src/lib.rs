//! The preload library `refill build` puts into componentize-py's process
//! (see `shim.c` for what it does and `Cargo.toml` for why it is C): its
//! bytes, compiled by `build.rs`, or empty where it cannot work (anything
//! but x86-64 Linux), in which case Python builds are not reproducible.

/// The shared object, empty where unsupported.
pub const SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/librefill_build_shim.so"));
