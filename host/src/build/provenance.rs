//! What a component was built from: consumes a project folder and the
//! toolchain that built it, produces the provenance file written next to
//! the component (`<name>.provenance.json`) and the digest of the source.
//!
//! The file holds no time and no absolute path, so a reproducible build
//! writes the same provenance wherever and whenever it runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::BuildError;

/// Bumped when a field changes meaning.
pub const FORMAT: u32 = 1;

/// Folders that a build writes or a tool leaves behind, never part of the
/// source (`typings/` holds the Python type stubs the scaffold's README
/// tells to generate there).
const NOT_SOURCE: [&str; 5] = ["target", "dist", "node_modules", "__pycache__", "typings"];

/// The provenance of one component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// [`FORMAT`].
    pub format: u32,
    /// The component's name.
    pub name: String,
    /// `rust`, `python`, `javascript` or `c`.
    pub language: String,
    /// The sha256 of the source (see [`source_digest`]).
    pub source_sha256: String,
    /// How many files the source has.
    pub source_files: usize,
    /// Each tool that took part, with its version.
    pub toolchain: BTreeMap<String, String>,
    /// The component's sha256: what a spec pins.
    pub output_sha256: String,
    /// Its size.
    pub output_bytes: u64,
    /// Whether building the same source with the same toolchain in another
    /// folder gives the same bytes.
    pub reproducible: bool,
    /// Why not, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_reproducible_because: Option<String>,
}

impl Provenance {
    /// The file next to `component`: `dist/x.wasm` → `dist/x.provenance.json`.
    pub fn path_for(component: &Path) -> PathBuf {
        component.with_extension("provenance.json")
    }

    /// Reads a provenance file; `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<Provenance>, BuildError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(BuildError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| BuildError::Provenance {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
    }

    /// Writes it as pretty JSON, with a final newline.
    pub fn write(&self, path: &Path) -> Result<(), BuildError> {
        let mut text = serde_json::to_string_pretty(self).map_err(|e| BuildError::Provenance {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        text.push('\n');
        super::write_atomically(path, text.as_bytes())
    }

    /// The tools whose versions differ between `self` (what a pin was built
    /// with) and `other` (this machine), as "tool: recorded → here".
    pub fn toolchain_differences(&self, other: &Provenance) -> Vec<String> {
        let mut tools: Vec<&String> = self
            .toolchain
            .keys()
            .chain(other.toolchain.keys())
            .collect();
        tools.sort();
        tools.dedup();
        tools
            .into_iter()
            .filter_map(|tool| {
                let then = self.toolchain.get(tool);
                let now = other.toolchain.get(tool);
                (then != now).then(|| {
                    format!(
                        "{tool}: {} → {}",
                        then.map_or("(none)", String::as_str),
                        now.map_or("(none)", String::as_str)
                    )
                })
            })
            .collect()
    }
}

/// The source files of a project: every file under `dir` except dot files
/// and folders, build outputs (`target/`, `dist/`, `*.wasm`) and what tools
/// leave behind (`node_modules/`, `__pycache__/`, `typings/`), as
/// (`/`-separated relative path, path), sorted by the relative path.
pub fn source_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, BuildError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|source| BuildError::Io {
            path: folder.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| BuildError::Io {
                path: folder.clone(),
                source,
            })?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".wasm") {
                continue;
            }
            let kind = entry.file_type().map_err(|source| BuildError::Io {
                path: path.clone(),
                source,
            })?;
            if kind.is_dir() {
                if !NOT_SOURCE.contains(&name.as_str()) {
                    pending.push(path);
                }
            } else if kind.is_file() {
                files.push(path);
            }
        }
    }
    let mut listed: Vec<(String, PathBuf)> = files
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(dir).unwrap_or(&path);
            let shown = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            (shown, path)
        })
        .collect();
    listed.sort();
    Ok(listed)
}

/// The digest of a project's [`source_files`]: the sha256 of one
/// `<sha256>  <path>` line per file. Returns it with the number of files.
pub fn source_digest(dir: &Path) -> Result<(String, usize), BuildError> {
    let listed = source_files(dir)?;
    let mut listing = String::new();
    for (shown, path) in &listed {
        let bytes = std::fs::read(path).map_err(|source| BuildError::Io {
            path: path.clone(),
            source,
        })?;
        let _ = writeln!(listing, "{}  {shown}", hex::encode(Sha256::digest(&bytes)));
    }
    Ok((
        hex::encode(Sha256::digest(listing.as_bytes())),
        listed.len(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_digest_ignores_outputs_and_follows_every_source_byte() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let root = dir.path();
        std::fs::create_dir_all(root.join("src")).expect("src");
        std::fs::write(root.join("src/lib.rs"), "fn main() {}").expect("lib.rs");
        std::fs::write(root.join("Cargo.toml"), "[package]").expect("Cargo.toml");
        let (first, files) = source_digest(root).expect("digest");
        assert_eq!(files, 2);

        for output in ["target/x/y.rlib", "dist/a.provenance.json", ".git/HEAD"] {
            let path = root.join(output);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, "noise").expect("write");
        }
        std::fs::write(root.join("a.wasm"), "noise").expect("a.wasm");
        assert_eq!(source_digest(root).expect("digest"), (first.clone(), 2));

        std::fs::write(root.join("src/lib.rs"), "fn main() { }").expect("lib.rs");
        let (changed, _) = source_digest(root).expect("digest");
        assert_ne!(changed, first, "a changed byte must change the digest");

        // The same files in another folder give the same digest.
        let other = tempfile::tempdir().expect("another folder");
        std::fs::create_dir_all(other.path().join("src")).expect("src");
        std::fs::write(other.path().join("src/lib.rs"), "fn main() { }").expect("lib.rs");
        std::fs::write(other.path().join("Cargo.toml"), "[package]").expect("Cargo.toml");
        assert_eq!(source_digest(other.path()).expect("digest").0, changed);
    }

    #[test]
    fn toolchain_differences_name_each_tool_that_changed() {
        let recorded = Provenance {
            format: FORMAT,
            name: "x".into(),
            language: "rust".into(),
            source_sha256: "s".into(),
            source_files: 1,
            toolchain: BTreeMap::from([
                ("rustc".to_string(), "1.95.0".to_string()),
                ("wit-component".to_string(), "0.262".to_string()),
            ]),
            output_sha256: "o".into(),
            output_bytes: 1,
            reproducible: true,
            not_reproducible_because: None,
        };
        let mut here = recorded.clone();
        assert!(recorded.toolchain_differences(&here).is_empty());
        here.toolchain.insert("rustc".into(), "1.96.0".into());
        assert_eq!(
            recorded.toolchain_differences(&here),
            ["rustc: 1.95.0 → 1.96.0"]
        );
    }
}
