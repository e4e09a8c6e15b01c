//! C transforms: consumes a folder with a `plugin.toml` (`language = "c"`)
//! and its `.c` files, produces the component, with no SDK: wit-bindgen's C
//! generator writes the bindings from the project's `wit/`, Debian's
//! clang-16 compiles every `.c` file of the folder with wasi-libc as a
//! reactor, and [`super::componentize`] wraps the module (with WASI preview
//! 1's reactor adapter when the module imports WASI, as `printf` makes it).
//!
//! Paths are mapped (`-ffile-prefix-map`) so that neither the project's
//! folder nor the scratch folder reaches `__FILE__` in an `assert`, and so
//! the digest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BuildError, Tool, WORLD};

/// The wit-bindgen refill is tested with (the Makefile installs it).
pub const WIT_BINDGEN: &str = "0.63.0";
/// What Debian calls the packages of the C toolchain.
const DEBIAN_PACKAGES: &str = "clang-16 wasi-libc libclang-rt-16-dev-wasm32";
/// wasi-libc and compiler-rt, where Debian puts them.
const WASI_LIBC: &str = "/usr/lib/wasm32-wasi/libc.a";
const COMPILER_RT: &str = "/usr/lib/llvm-16/lib/clang/16/lib/wasi/libclang_rt.builtins-wasm32.a";

/// The C compiler and the bindings generator.
pub struct Toolchain {
    clang: Tool,
    wit_bindgen: Tool,
}

impl Toolchain {
    /// Finds both, or says how to install what is missing.
    pub fn detect() -> Result<Toolchain, BuildError> {
        let apt = format!("sudo apt-get install {DEBIAN_PACKAGES}");
        let clang_path = match std::env::var_os("REFILL_CLANG").filter(|p| !p.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => super::on_path("clang-16").ok_or_else(|| BuildError::Toolchain {
                what: "clang-16, which compiles C transforms (not on PATH, and REFILL_CLANG is not set)"
                    .into(),
                install: apt.clone(),
            })?,
        };
        for (file, what) in [
            (WASI_LIBC, "wasi-libc"),
            (COMPILER_RT, "compiler-rt for wasm32"),
        ] {
            if !Path::new(file).is_file() {
                return Err(BuildError::Toolchain {
                    what: format!("{what} ({file} is missing)"),
                    install: apt,
                });
            }
        }
        let install = format!("cargo install --locked wit-bindgen-cli@{WIT_BINDGEN}");
        let bindgen_path = match std::env::var_os("REFILL_WIT_BINDGEN").filter(|p| !p.is_empty()) {
            Some(path) if Path::new(&path).is_file() => PathBuf::from(path),
            Some(path) => {
                return Err(BuildError::Toolchain {
                    what: format!(
                        "wit-bindgen: REFILL_WIT_BINDGEN names {}, which is not a file",
                        Path::new(&path).display()
                    ),
                    install,
                });
            }
            None => super::on_path("wit-bindgen").ok_or_else(|| BuildError::Toolchain {
                what: "wit-bindgen, whose C generator writes the bindings (not on PATH, and \
                       REFILL_WIT_BINDGEN is not set)"
                    .into(),
                install,
            })?,
        };
        let first_line = |text: String| text.lines().next().unwrap_or("").trim().to_string();
        Ok(Toolchain {
            clang: Tool {
                name: "clang".into(),
                version: first_line(super::tool_version(&clang_path, &["--version"])?),
                path: clang_path,
            },
            wit_bindgen: Tool {
                name: "wit-bindgen".into(),
                version: first_line(super::tool_version(&bindgen_path, &["--version"])?),
                path: bindgen_path,
            },
        })
    }

    /// The bindings generator.
    pub fn wit_bindgen(&self) -> Tool {
        self.wit_bindgen.clone()
    }

    /// The tools, as the provenance records them.
    pub fn versions(&self) -> BTreeMap<String, String> {
        let mut versions = BTreeMap::from([
            ("clang".to_string(), self.clang.version.clone()),
            ("wit-bindgen".to_string(), self.wit_bindgen.version.clone()),
            (
                "wit-component".to_string(),
                super::rust::WIT_COMPONENT.to_string(),
            ),
        ]);
        let wasi_libc = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", "wasi-libc"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        versions.insert(
            "wasi-libc".to_string(),
            wasi_libc.unwrap_or_else(|| "unknown".into()),
        );
        versions
    }

    /// Compiles the project in `dir` against `wit`, in `scratch`; returns
    /// the core module.
    pub fn compile(&self, dir: &Path, wit: &Path, scratch: &Path) -> Result<Vec<u8>, BuildError> {
        let bindings = scratch.join("bindings");
        let mut generate = Command::new(&self.wit_bindgen.path);
        generate
            .arg("c")
            .arg(wit)
            .args(["--world", WORLD, "--out-dir"])
            .arg(&bindings)
            .current_dir(dir);
        super::run_tool(&self.wit_bindgen, &mut generate, true)?;

        let mut sources: Vec<String> = std::fs::read_dir(dir)
            .map_err(|source| BuildError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".c") && !name.starts_with('.'))
            .collect();
        sources.sort();
        let core = scratch.join("core.wasm");
        let mut compile = Command::new(&self.clang.path);
        compile
            .args([
                "--target=wasm32-wasi",
                "-mexec-model=reactor",
                "-O2",
                "-g0",
                "-Wall",
            ])
            .arg(format!("-ffile-prefix-map={}=/src", dir.display()))
            .arg(format!("-ffile-prefix-map={}=/build", scratch.display()))
            .arg("-I")
            .arg(&bindings)
            .args(&sources)
            .arg(bindings.join(format!("{WORLD}.c")))
            .arg(bindings.join(format!("{WORLD}_component_type.o")))
            .arg("-o")
            .arg(&core)
            .current_dir(dir);
        super::run_tool(&self.clang, &mut compile, true)?;
        std::fs::read(&core).map_err(|source| BuildError::Io { path: core, source })
    }
}

/// Whether a core module imports WASI preview 1 (and so needs the adapter).
pub fn imports_wasi(module: &[u8]) -> bool {
    wasmparser::Parser::new(0)
        .parse_all(module)
        .filter_map(Result::ok)
        .any(|payload| match payload {
            wasmparser::Payload::ImportSection(imports) => imports
                .into_imports()
                .filter_map(Result::ok)
                .any(|import| import.module == "wasi_snapshot_preview1"),
            _ => false,
        })
}
