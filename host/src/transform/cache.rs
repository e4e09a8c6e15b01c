//! The compiled-component cache: consumes a component's bytes and digest,
//! produces a compiled [`Component`], from disk when this host and engine
//! compiled it before. Entries are keyed by the component's sha256 and the
//! engine's compatibility hash, written to a temporary file and renamed into
//! place, so concurrent processes never see a half-written entry.
//!
//! A cache entry is native code that runs in place of the pinned component,
//! so the cache is only used when this user owns it and nobody else can
//! write to it; otherwise the component is compiled from its (pinned) bytes
//! every time.

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
    /// Compiled now and stored for next time.
    Compiled,
    /// Compiled now; there is no usable cache.
    Uncached,
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
    load_in(cache_dir().as_deref(), engine, bytes, digest)
}

/// [`load`] with the cache in `dir` (none: compile every time).
fn load_in(
    dir: Option<&Path>,
    engine: &Engine,
    bytes: &[u8],
    digest: &str,
) -> wasmtime::Result<(Component, Origin)> {
    let Some(dir) = dir else {
        return Ok((Component::new(engine, bytes)?, Origin::Uncached));
    };
    let path = entry(dir, engine, digest);
    if let Err(why) = prepare(dir) {
        tracing::warn!(dir = %dir.display(), "Not using the component cache: {why}.");
        return Ok((Component::new(engine, bytes)?, Origin::Uncached));
    }
    if path.exists() {
        match owned_by_us(&path) {
            Err(why) => tracing::warn!(path = %path.display(), "Not using a cache entry: {why}."),
            Ok(()) => {
                // SAFETY: the file was written by `store` below through
                // `Engine::precompile_component` for an engine with the same
                // compatibility hash (it is part of the file name), renamed
                // into place only when complete, in a folder and as a file
                // that only this user can write (checked above). Wasmtime
                // still checks the header and refuses files from an
                // incompatible engine, which we then recompile.
                #[expect(
                    unsafe_code,
                    reason = "loading our own precompiled artifacts is the point of the cache"
                )]
                let loaded = unsafe { Component::deserialize_file(engine, &path) };
                match loaded {
                    Ok(component) => return Ok((component, Origin::Cached)),
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "Ignoring an unusable cache entry.");
                    }
                }
            }
        }
    }
    tracing::info!(
        digest,
        bytes = bytes.len(),
        "Compiling the component (first use on this machine; cached for next time)."
    );
    let compiled = engine.precompile_component(bytes)?;
    let origin = match store(&path, &compiled) {
        Ok(()) => Origin::Compiled,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "Could not write the component cache.");
            Origin::Uncached
        }
    };
    // SAFETY: `compiled` was produced just now by this engine.
    #[expect(
        unsafe_code,
        reason = "the bytes come from precompile_component on this engine"
    )]
    let component = unsafe { Component::deserialize(engine, &compiled)? };
    Ok((component, origin))
}

/// Creates the cache folders (readable by this user only) and checks that
/// nobody else could have written into them.
fn prepare(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    let components = dir.join("components");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&components)
        .map_err(|e| format!("cannot create it: {e}"))?;
    owned_by_us(dir)?;
    owned_by_us(&components)
}

/// Fails if `path` belongs to another user or others may write to it.
fn owned_by_us(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).map_err(|e| e.to_string())?;
    let me = fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| e.to_string())?;
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to this user",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by other users (mode {:o})",
            path.display(),
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

fn store(path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    // Unique per process and per call, so that two writers (processes or
    // threads) never share a temporary file: each renames a whole one.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&tmp, compiled)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_loads_share_one_whole_entry() {
        let engine = crate::transform::engine().expect("engine");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist/remap.wasm");
        let bytes = fs::read(&path).expect("remap.wasm: run `make plugins`");
        let digest = crate::transform::digest(&bytes);
        let dir = tempfile::tempdir().expect("tempdir");
        let origins: Vec<Origin> = std::thread::scope(|s| {
            let loaders: Vec<_> = (0..4)
                .map(|_| s.spawn(|| load_in(Some(dir.path()), engine, &bytes, &digest)))
                .collect();
            loaders
                .into_iter()
                .map(|l| l.join().expect("thread").expect("loads").1)
                .collect()
        });
        assert!(
            origins.iter().all(|o| *o != Origin::Uncached),
            "{origins:?}"
        );
        let entries: Vec<_> = fs::read_dir(dir.path().join("components"))
            .expect("entries")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            entries.len(),
            1,
            "one entry, no temporary file left: {entries:?}"
        );
        let (_, origin) = load_in(Some(dir.path()), engine, &bytes, &digest).expect("loads");
        assert_eq!(origin, Origin::Cached);
        // Another digest is another entry: a changed component is never
        // taken for the cached one.
        let (_, origin) =
            load_in(Some(dir.path()), engine, &bytes, &"0".repeat(64)).expect("loads");
        assert_eq!(origin, Origin::Compiled);
    }
}
