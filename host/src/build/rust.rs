//! Rust transforms: consumes a cargo workspace and the packages to build,
//! produces their core modules for wasm32 and, wrapped, their components.
//!
//! rustup's `wasm32-unknown-unknown` target is used when it is installed;
//! otherwise Debian's second toolchain (rustc-web, cargo-web, rust-web-src,
//! lld-16) builds std itself with `-Zbuild-std`. The two give different
//! bytes for the same source, which is why the provenance records which one
//! ran. Paths are remapped so that the folder a project is built in, and
//! the cargo home, never reach a panic message, and so the digest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BuildError, Tool, tool_version};

/// The target every Rust transform is compiled for.
pub const TARGET: &str = "wasm32-unknown-unknown";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_STD_SRC: &str = "/usr/lib/rustlib/src/rust/library/Cargo.lock";
const WASM_LD: &str = "/usr/lib/llvm-16/bin/wasm-ld";
/// The version of wit-component that wraps the core module; a test checks
/// it against host/Cargo.toml.
pub const WIT_COMPONENT: &str = "0.262";
/// What the project's folder is called in paths inside the component.
const REMAPPED_SOURCE: &str = "/build";

/// How this machine compiles Rust for wasm32.
#[derive(Clone, Debug)]
pub struct Toolchain {
    kind: Kind,
    cargo: PathBuf,
    rustc: PathBuf,
    /// `rustc -vV`'s release line and commit, as recorded.
    rustc_version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// rustup, with the target installed.
    Rustup,
    /// Debian's rustc-web with std built from rust-web-src.
    DebianBuildStd,
}

impl Toolchain {
    /// Finds a toolchain, or says exactly what to install.
    pub fn detect() -> Result<Toolchain, BuildError> {
        let rustup_has_target = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == TARGET)
            })
            .unwrap_or(false);
        let (kind, cargo, rustc) = if rustup_has_target {
            (Kind::Rustup, PathBuf::from("cargo"), PathBuf::from("rustc"))
        } else {
            let missing: Vec<&str> = [DEBIAN_CARGO, DEBIAN_RUSTC, DEBIAN_STD_SRC, WASM_LD]
                .into_iter()
                .filter(|p| !Path::new(p).exists())
                .collect();
            if !missing.is_empty() {
                return Err(BuildError::Toolchain {
                    what: format!(
                        "a Rust compiler for {TARGET}: rustup has no {TARGET} target, and Debian's \
                         second toolchain is incomplete ({} missing)",
                        missing.join(", ")
                    ),
                    install: format!(
                        "rustup target add {TARGET}   # or, on Debian 12: sudo apt-get install \
                         rustc-web cargo-web rust-web-src lld-16"
                    ),
                });
            }
            (
                Kind::DebianBuildStd,
                PathBuf::from(DEBIAN_CARGO),
                PathBuf::from(DEBIAN_RUSTC),
            )
        };
        let verbose = tool_version(&rustc, &["-vV"])?;
        let field = |name: &str| {
            verbose
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or("unknown")
                .to_string()
        };
        let rustc_version = format!("{} ({})", field("release:"), field("commit-hash:"));
        Ok(Toolchain {
            kind,
            cargo,
            rustc,
            rustc_version,
        })
    }

    /// The tools, as the provenance records them.
    pub fn versions(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("rustc".to_string(), self.rustc_version.clone()),
            (
                "std".to_string(),
                match self.kind {
                    Kind::Rustup => format!("rustup's {TARGET} target"),
                    Kind::DebianBuildStd => "Debian's rust-web-src, with -Zbuild-std".to_string(),
                },
            ),
            ("wit-component".to_string(), WIT_COMPONENT.to_string()),
        ])
    }

    /// Compiles `packages` of the workspace at `workspace` with `profile`
    /// into `target_dir`; returns each one's core module, in order.
    /// `locked` passes `--locked` (the workspace has a Cargo.lock to keep).
    pub fn compile(
        &self,
        workspace: &Path,
        packages: &[(String, String)],
        profile: &str,
        target_dir: &Path,
        locked: bool,
    ) -> Result<Vec<PathBuf>, BuildError> {
        let mut cmd = Command::new(&self.cargo);
        cmd.current_dir(workspace)
            .args(["build", "--profile", profile, "--target", TARGET])
            .env("CARGO_TARGET_DIR", target_dir)
            // Takes precedence over RUSTFLAGS and a project's
            // `build.rustflags`, so no flag the provenance does not know of
            // reaches rustc.
            .env("CARGO_ENCODED_RUSTFLAGS", remap_flags(workspace));
        if locked {
            cmd.arg("--locked");
        }
        for (package, _) in packages {
            cmd.args(["-p", package]);
        }
        if self.kind == Kind::DebianBuildStd {
            cmd.arg("-Zbuild-std=std,panic_abort")
                .env("RUSTC", &self.rustc)
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", WASM_LD)
                .env_remove("RUSTDOC");
        }
        let tool = Tool {
            name: "cargo".to_string(),
            path: self.cargo.clone(),
            version: String::new(),
        };
        super::run_tool(&tool, &mut cmd, false)?;
        let profile_dir = match profile {
            "dev" => "debug",
            other => other,
        };
        Ok(packages
            .iter()
            .map(|(_, lib)| {
                target_dir
                    .join(TARGET)
                    .join(profile_dir)
                    .join(format!("{lib}.wasm"))
            })
            .collect())
    }
}

/// `--remap-path-prefix` for the workspace and the cargo home, in
/// `CARGO_ENCODED_RUSTFLAGS` form.
fn remap_flags(workspace: &Path) -> String {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    let workspace = workspace
        .canonicalize()
        .unwrap_or_else(|_| workspace.to_path_buf());
    [
        format!(
            "--remap-path-prefix={}={REMAPPED_SOURCE}",
            workspace.display()
        ),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
    ]
    .join("\x1f")
}

/// The package and library names of the crate whose manifest is
/// `manifest`: (package, library file stem).
pub fn names(manifest: &Path) -> Result<(String, String), BuildError> {
    let text = std::fs::read_to_string(manifest).map_err(|source| BuildError::Io {
        path: manifest.to_path_buf(),
        source,
    })?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| BuildError::Manifest {
        path: manifest.to_path_buf(),
        message: e.message().to_string(),
    })?;
    let package = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str)
        .ok_or_else(|| BuildError::Manifest {
            path: manifest.to_path_buf(),
            message: "no [package] name: `refill build` builds one crate, not a workspace".into(),
        })?;
    let lib = doc.get("lib");
    let kinds = lib
        .and_then(|l| l.get("crate-type"))
        .and_then(toml::Value::as_array);
    if !kinds.is_some_and(|k| k.iter().any(|t| t.as_str() == Some("cdylib"))) {
        return Err(BuildError::Manifest {
            path: manifest.to_path_buf(),
            message: "[lib] crate-type has no \"cdylib\", so cargo makes no wasm module: add \
                      `crate-type = [\"cdylib\", \"rlib\"]` under [lib]"
                .into(),
        });
    }
    let stem = lib
        .and_then(|l| l.get("name"))
        .and_then(toml::Value::as_str)
        .unwrap_or(package)
        .replace('-', "_");
    Ok((package.to_string(), stem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_wit_component_version_is_the_one_linked() {
        let manifest = include_str!("../../Cargo.toml");
        assert!(
            manifest.contains(&format!("wit-component = \"{WIT_COMPONENT}\"")),
            "host/Cargo.toml asks for another wit-component; update WIT_COMPONENT"
        );
    }

    #[test]
    fn a_crate_without_a_cdylib_is_explained() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let manifest = dir.path().join("Cargo.toml");
        std::fs::write(&manifest, "[package]\nname = \"my-fix\"\n").expect("write");
        let error = names(&manifest).expect_err("no cdylib");
        assert!(error.to_string().contains("crate-type"), "{error}");
        std::fs::write(
            &manifest,
            "[package]\nname = \"my-fix\"\n[lib]\ncrate-type = [\"cdylib\"]\n",
        )
        .expect("write");
        assert_eq!(
            names(&manifest).expect("names"),
            ("my-fix".to_string(), "my_fix".to_string())
        );
    }
}
