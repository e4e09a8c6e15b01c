//! `refill build`: consumes a transform project (a Rust crate, or a folder
//! with a `plugin.toml` for Python and JavaScript), produces its component,
//! its sha256 and a provenance file next to it; `--check` rebuilds and says
//! whether a pin matches the source. `make plugins` builds refill's own
//! plugins with the same code.
//!
//! - [`rust`] compiles a crate for wasm32 and wraps the core module;
//! - [`guest`] runs componentize-py (with refill's preload library,
//!   `host/shim`, in its process) or componentize-js;
//! - [`snapshot`] takes componentize-js's memory snapshot deterministically;
//! - [`provenance`] records what a component was built from.

pub mod c;
pub mod guest;
pub mod provenance;
pub mod rust;
pub mod snapshot;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub use self::guest::WORLD;
pub use self::provenance::Provenance;

/// The first eight bytes of a component (a core module has version 1).
const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\x00\x01\x00";
/// How much of a failing tool's output an error keeps (its end).
const TOOL_OUTPUT_KEPT: usize = 16 * 1024;

/// The language of a transform, and so the tools that build it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    /// cargo and wit-component.
    Rust,
    /// componentize-py.
    Python,
    /// componentize-js, with refill's snapshot.
    JavaScript,
    /// clang-16 with wasi-libc, wit-bindgen's C generator, wit-component.
    C,
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Language::Rust => "rust",
            Language::Python => "python",
            Language::JavaScript => "javascript",
            Language::C => "c",
        })
    }
}

/// Why a build could not be done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The folder holds no project refill can build.
    #[error(
        "{} holds no transform project: refill build looks for a Cargo.toml (Rust) or a \
         plugin.toml (Python, JavaScript), as `refill new` writes them",
        .0.display()
    )]
    NoProject(PathBuf),
    /// A manifest is wrong.
    #[error("{}: {message}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tool is missing.
    #[error("refill build needs {what}; install it with: {install}")]
    Toolchain {
        /// The tool, and why it was not found.
        what: String,
        /// The command that installs it.
        install: String,
    },
    /// A tool ran and failed.
    #[error("{tool} failed ({status}){}", tail(output))]
    ToolFailed {
        /// The tool.
        tool: String,
        /// How it ended.
        status: String,
        /// The end of what it printed.
        output: String,
    },
    /// A core module could not be wrapped into a component.
    #[error("cannot turn {} into a component: {message}", path.display())]
    Wrap {
        /// The core module.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The tool wrote something that is not a component.
    #[error("{} is not a WebAssembly component", .0.display())]
    NotComponent(PathBuf),
    /// A provenance file cannot be read or written.
    #[error("provenance {}: {message}", path.display())]
    Provenance {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// What makes an I/O error on `path` a [`BuildError::Io`], for `map_err`.
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    }
}

fn tail(output: &str) -> String {
    if output.trim().is_empty() {
        String::new()
    } else {
        format!(":\n{}", output.trim_end())
    }
}

/// A tool found on this machine.
#[derive(Clone, Debug)]
pub struct Tool {
    /// What it is called.
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
    /// What `--version` printed.
    pub version: String,
}

/// A project `refill build` can build.
#[derive(Clone, Debug)]
pub struct Project {
    /// The component's name (the crate's package, or `plugin.name`).
    pub name: String,
    /// The project's folder, absolute.
    pub dir: PathBuf,
    /// The language.
    pub language: Language,
    /// Python and JavaScript: the `plugin.toml`.
    manifest: Option<guest::Manifest>,
    /// Rust: the library's file stem.
    lib: String,
    /// The WIT folder, when it is not the project's own `wit/`.
    wit: Option<PathBuf>,
}

impl Project {
    /// Finds the project in `dir`.
    pub fn discover(dir: &Path) -> Result<Project, BuildError> {
        let dir = dir.canonicalize().map_err(|source| BuildError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if let Some(manifest) = guest::read_manifest(&dir)? {
            return Ok(Project {
                name: manifest.name.clone(),
                language: manifest.language,
                lib: String::new(),
                manifest: Some(manifest),
                dir,
                wit: None,
            });
        }
        let cargo = dir.join("Cargo.toml");
        if cargo.is_file() {
            let (package, lib) = rust::names(&cargo)?;
            return Ok(Project {
                name: package,
                dir,
                language: Language::Rust,
                manifest: None,
                lib,
                wit: None,
            });
        }
        Err(BuildError::NoProject(dir))
    }

    /// Where `refill build` writes the component: `dist/<name>.wasm`.
    pub fn component_path(&self) -> PathBuf {
        self.dir.join("dist").join(format!("{}.wasm", self.name))
    }

    /// Builds against the WIT in `wit` rather than the project's own
    /// `wit/` (refill's plugins share the repository's).
    pub fn with_wit(mut self, wit: PathBuf) -> Project {
        self.wit = Some(wit);
        self
    }

    /// The WIT the project is built against: its own `wit/` folder.
    fn wit(&self) -> Result<PathBuf, BuildError> {
        if let Some(wit) = &self.wit {
            return Ok(wit.clone());
        }
        let wit = self.dir.join("wit");
        if wit.is_dir() {
            Ok(wit)
        } else {
            Err(BuildError::Manifest {
                path: self.dir.clone(),
                message: "no wit/ folder: save the interface with `mkdir wit && refill wit > wit/transform.wit`"
                    .into(),
            })
        }
    }
}

/// A built component.
#[derive(Debug)]
pub struct Built {
    /// Its bytes.
    pub component: Vec<u8>,
    /// What it was built from.
    pub provenance: Provenance,
}

/// Builds `project` into `out` (written only when the build succeeds) and
/// its provenance next to it. `snapshot_exe` runs [`snapshot::main`] when
/// given [`snapshot::ARG`] (the `refill` binary does).
pub fn build(project: &Project, out: &Path, snapshot_exe: &Path) -> Result<Built, BuildError> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|source| BuildError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let partial = out.with_extension("wasm.partial");
    let (component, toolchain, not_reproducible) = match project.language {
        Language::Rust => {
            let toolchain = rust::Toolchain::detect()?;
            let modules = toolchain.compile(
                &project.dir,
                &[(project.name.clone(), project.lib.clone())],
                "release",
                &project.dir.join("target"),
                project.dir.join("Cargo.lock").is_file(),
            )?;
            let module = read(&modules[0])?;
            let component = componentize(&module, &modules[0])?;
            (component, toolchain.versions(), None)
        }
        Language::C => {
            let toolchain = c::Toolchain::detect()?;
            let scratch = scratch()?;
            let wit = project.wit()?;
            let wit = wit.strip_prefix(&project.dir).unwrap_or(&wit);
            let module = toolchain.compile(&project.dir, wit, scratch.path())?;
            let component = componentize(&module, &project.dir)?;
            (component, toolchain.versions(), None)
        }
        Language::Python | Language::JavaScript => {
            let manifest = project
                .manifest
                .as_ref()
                .ok_or_else(|| BuildError::Manifest {
                    path: project.dir.join("plugin.toml"),
                    message: "missing".into(),
                })?;
            let tool = guest::find_tool(project.language, &project.dir)?;
            let _ = std::fs::remove_file(&partial);
            guest::build(
                &tool,
                manifest,
                &project.dir,
                &project.wit()?,
                &partial,
                snapshot_exe,
            )?;
            let component = read(&partial)?;
            let _ = std::fs::remove_file(&partial);
            let mut toolchain = BTreeMap::from([(tool.name.clone(), tool.version.clone())]);
            let not_reproducible = match project.language {
                Language::JavaScript => {
                    let node = on_path("node")
                        .map(|node| tool_version(&node, &["--version"]))
                        .transpose()?
                        .unwrap_or_else(|| "not found".into());
                    toolchain.insert("node".into(), node.trim().to_string());
                    toolchain.insert(
                        "snapshot".into(),
                        format!("refill {} (wasmtime-wizer 48)", crate::HOST_VERSION),
                    );
                    None
                }
                _ => guest::python_not_reproducible().map(str::to_string),
            };
            (component, toolchain, not_reproducible)
        }
    };
    if !component.starts_with(&COMPONENT_HEADER) {
        return Err(BuildError::NotComponent(out.to_path_buf()));
    }
    let (source_sha256, source_files) = provenance::source_digest(&project.dir)?;
    let provenance = Provenance {
        format: provenance::FORMAT,
        name: project.name.clone(),
        language: project.language.to_string(),
        source_sha256,
        source_files,
        toolchain,
        output_sha256: hex::encode(Sha256::digest(&component)),
        output_bytes: component.len() as u64,
        reproducible: not_reproducible.is_none(),
        not_reproducible_because: not_reproducible,
    };
    write_atomically(out, &component)?;
    provenance.write(&Provenance::path_for(out))?;
    Ok(Built {
        component,
        provenance,
    })
}

/// Writes the project's type stubs into its `typings/` folder (which is not
/// part of the source): componentize-py's Python bindings, or
/// wit-bindgen's `transformer.h` for C. They serve editors and the
/// project's native unit tests. Returns the folder, or `None` for a
/// language whose toolchain offers none (Rust has the SDK's types).
pub fn write_typings(project: &Project) -> Result<Option<PathBuf>, BuildError> {
    let typings = project.dir.join("typings");
    let wit = project.wit()?;
    let wit = wit.strip_prefix(&project.dir).unwrap_or(&wit).to_path_buf();
    let (tool, mut cmd) = match project.language {
        Language::Python => {
            let tool = guest::find_tool(Language::Python, &project.dir)?;
            let mut cmd = Command::new(&tool.path);
            cmd.arg("-d")
                .arg(&wit)
                .args(["-w", WORLD, "bindings", "typings"]);
            (tool, cmd)
        }
        Language::C => {
            let tool = c::Toolchain::detect()?.wit_bindgen();
            let mut cmd = Command::new(&tool.path);
            cmd.arg("c")
                .arg(&wit)
                .args(["--world", WORLD, "--out-dir", "typings"]);
            (tool, cmd)
        }
        Language::Rust | Language::JavaScript => return Ok(None),
    };
    if typings.is_dir() {
        std::fs::remove_dir_all(&typings).map_err(|source| BuildError::Io {
            path: typings.clone(),
            source,
        })?;
    }
    cmd.current_dir(&project.dir);
    run_tool(&tool, &mut cmd, true)?;
    Ok(Some(typings))
}

/// What `refill build --check` found.
#[derive(Debug)]
pub enum Check {
    /// The source builds to the pinned component.
    Matches,
    /// It does not, and the pin was built with other tools.
    ToolchainDiffers(Vec<String>),
    /// It does not, and the recorded source is another one.
    SourceDiffers {
        /// The source the pin was built from.
        recorded: String,
    },
    /// It does not, with the same tools and source (or nothing recorded
    /// to compare with).
    DigestDiffers,
}

/// Compares a rebuild with the pin and with the provenance recorded when
/// the pin was built (if any).
pub fn check(pin: &str, rebuilt: &Provenance, recorded: Option<&Provenance>) -> Check {
    if rebuilt.output_sha256.eq_ignore_ascii_case(pin) {
        return Check::Matches;
    }
    let Some(recorded) = recorded.filter(|r| r.output_sha256.eq_ignore_ascii_case(pin)) else {
        return Check::DigestDiffers;
    };
    let differences = recorded.toolchain_differences(rebuilt);
    if !differences.is_empty() {
        return Check::ToolchainDiffers(differences);
    }
    if recorded.source_sha256 != rebuilt.source_sha256 {
        return Check::SourceDiffers {
            recorded: recorded.source_sha256.clone(),
        };
    }
    Check::DigestDiffers
}

/// Accepts a 64-hex sha256, optionally written `sha256:…`.
pub fn parse_pin(text: &str) -> Option<String> {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// Wraps a core module (with its embedded component type, as wit-bindgen
/// writes it for Rust and C) into a component, with WASI preview 1's
/// reactor adapter when the module imports WASI (as `printf` makes a C
/// module do).
pub fn componentize(module: &[u8], shown: &Path) -> Result<Vec<u8>, BuildError> {
    let wrap = |e: anyhow::Error| BuildError::Wrap {
        path: shown.to_path_buf(),
        message: format!("{e:#}"),
    };
    let mut encoder = wit_component::ComponentEncoder::default();
    encoder.module(module).map_err(wrap)?;
    if c::imports_wasi(module) {
        encoder
            .adapter(
                "wasi_snapshot_preview1",
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
            .map_err(wrap)?;
    }
    encoder.validate(true).encode().map_err(wrap)
}

/// A scratch folder for one build, removed when dropped.
fn scratch() -> Result<tempfile::TempDir, BuildError> {
    tempfile::Builder::new()
        .prefix("refill-build-")
        .tempdir()
        .map_err(|source| BuildError::Io {
            path: std::env::temp_dir(),
            source,
        })
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` through a temporary file, so that a reader
/// never sees half a component.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| BuildError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// The first `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// What `tool ARGS` prints.
fn tool_version(tool: &Path, args: &[&str]) -> Result<String, BuildError> {
    let output = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| BuildError::ToolFailed {
            tool: tool.display().to_string(),
            status: format!("could not start: {e}"),
            output: String::new(),
        })?;
    if !output.status.success() {
        return Err(BuildError::ToolFailed {
            tool: format!("{} {}", tool.display(), args.join(" ")),
            status: output.status.to_string(),
            output: kept(&output.stderr),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a tool; with `capture`, its output is shown only when it fails.
fn run_tool(tool: &Tool, cmd: &mut Command, capture: bool) -> Result<(), BuildError> {
    let started = |e: std::io::Error| BuildError::ToolFailed {
        tool: tool.path.display().to_string(),
        status: format!("could not start: {e}"),
        output: String::new(),
    };
    if !capture {
        let status = cmd.status().map_err(started)?;
        return if status.success() {
            Ok(())
        } else {
            Err(BuildError::ToolFailed {
                tool: tool.name.clone(),
                status: status.to_string(),
                output: String::new(),
            })
        };
    }
    let output = cmd.output().map_err(started)?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = output.stdout;
    text.extend_from_slice(&output.stderr);
    Err(BuildError::ToolFailed {
        tool: tool.name.clone(),
        status: output.status.to_string(),
        output: kept(&text),
    })
}

/// The end of a tool's output, at most [`TOOL_OUTPUT_KEPT`] bytes.
fn kept(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(TOOL_OUTPUT_KEPT);
    let text = String::from_utf8_lossy(&bytes[start..]);
    if start > 0 {
        format!("… ({start} bytes before)\n{text}")
    } else {
        text.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provenance(output: &str, source: &str, rustc: &str) -> Provenance {
        Provenance {
            format: provenance::FORMAT,
            name: "x".into(),
            language: "rust".into(),
            source_sha256: source.into(),
            source_files: 1,
            toolchain: BTreeMap::from([("rustc".to_string(), rustc.to_string())]),
            output_sha256: output.into(),
            output_bytes: 1,
            reproducible: true,
            not_reproducible_because: None,
        }
    }

    #[test]
    fn a_check_tells_a_toolchain_difference_from_a_source_difference() {
        let pin = "a".repeat(64);
        let recorded = provenance(&pin, "src1", "1.95.0");
        assert!(matches!(
            check(&pin, &provenance(&pin, "src1", "1.95.0"), Some(&recorded)),
            Check::Matches
        ));
        let other = "b".repeat(64);
        assert!(matches!(
            check(&pin, &provenance(&other, "src1", "1.96.0"), Some(&recorded)),
            Check::ToolchainDiffers(d) if d == ["rustc: 1.95.0 → 1.96.0"]
        ));
        assert!(matches!(
            check(&pin, &provenance(&other, "src2", "1.95.0"), Some(&recorded)),
            Check::SourceDiffers { recorded } if recorded == "src1"
        ));
        assert!(matches!(
            check(&pin, &provenance(&other, "src1", "1.95.0"), Some(&recorded)),
            Check::DigestDiffers
        ));
        // A provenance recorded for another component says nothing.
        assert!(matches!(
            check(&other, &provenance(&pin, "src1", "1.96.0"), Some(&recorded)),
            Check::DigestDiffers
        ));
        assert!(matches!(
            check(&pin, &provenance(&other, "src1", "1.95.0"), None),
            Check::DigestDiffers
        ));
    }

    #[test]
    fn pins_are_read_with_or_without_their_prefix() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_pin(&hex), Some("ab".repeat(32)));
        assert_eq!(
            parse_pin(&format!("sha256:{}", "ab".repeat(32))),
            Some("ab".repeat(32))
        );
        assert_eq!(parse_pin("abc"), None);
        assert_eq!(parse_pin(&"g".repeat(64)), None);
    }

    #[test]
    fn a_failing_tool_s_output_is_kept_from_its_end_and_bounded() {
        let long = "x".repeat(TOOL_OUTPUT_KEPT + 100) + "the real error";
        let text = kept(long.as_bytes());
        assert!(text.ends_with("the real error"));
        assert!(
            text.starts_with("… (114 bytes before)\n"),
            "{}",
            &text[..40]
        );
        assert!(text.len() < TOOL_OUTPUT_KEPT + 40);
    }
}
