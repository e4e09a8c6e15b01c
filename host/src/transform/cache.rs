//! The compiled-component cache: consumes a component's bytes and digest,
//! produces a compiled [`Component`], from disk when this host and engine
//! compiled it before. Entries are keyed by the component's sha256 and the
//! engine's compatibility hash, written to a temporary file and renamed into
//! place, so concurrent processes never see a half-written entry.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::{env, fs};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components are kept: `$REFILL_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/refill`, else `~/.cache/refill`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = env::var_os("REFILL_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = env::var_os("XDG_CACHE_HOME") {
        return Some(Path::new(&dir).join("refill"));
    }
    env::var_os("HOME").map(|home| Path::new(&home).join(".cache/refill"))
}

/// Whether a component came from the cache or was compiled now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Loaded from a cache entry.
    Cached,
    /// Compiled now (and stored, if the cache is writable).
    Compiled,
}

/// The cache file for a component with this digest under this engine.
fn entry(dir: &Path, engine: &Engine, digest: &str) -> PathBuf {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    crate::HOST_VERSION.hash(&mut h);
    dir.join("components")
        .join(format!("{digest}-{:016x}.cwasm", h.finish()))
}

/// Compiles `bytes` (whose sha256 is `digest`), or loads the compiled form
/// from the cache. Cache problems are logged and never fatal: the component
/// is compiled instead.
pub fn load(engine: &Engine, bytes: &[u8], digest: &str) -> wasmtime::Result<(Component, Origin)> {
    let Some(dir) = cache_dir() else {
        return Ok((Component::new(engine, bytes)?, Origin::Compiled));
    };
    let path = entry(&dir, engine, digest);
    if path.exists() {
        // SAFETY: the file was written by `store` below through
        // `Engine::precompile_component` for an engine with the same
        // compatibility hash (it is part of the file name), into the
        // user's own cache directory, and renamed into place only when
        // complete. Wasmtime still checks the header and refuses files
        // from an incompatible engine, which we then recompile.
        #[expect(
            unsafe_code,
            reason = "loading our own precompiled artifacts is the point of the cache"
        )]
        let loaded = unsafe { Component::deserialize_file(engine, &path) };
        match loaded {
            Ok(component) => return Ok((component, Origin::Cached)),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "Ignoring an unusable cache entry.")
            }
        }
    }
    let compiled = engine.precompile_component(bytes)?;
    if let Err(error) = store(&path, &compiled) {
        tracing::warn!(path = %path.display(), %error, "Could not write the component cache.");
    }
    // SAFETY: `compiled` was produced just now by this engine.
    #[expect(
        unsafe_code,
        reason = "the bytes come from precompile_component on this engine"
    )]
    let component = unsafe { Component::deserialize(engine, &compiled)? };
    Ok((component, Origin::Compiled))
}

fn store(path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    fs::write(&tmp, compiled)?;
    fs::rename(&tmp, path)
}
