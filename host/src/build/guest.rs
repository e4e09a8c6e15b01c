//! Python and JavaScript transforms: consumes a folder with a
//! `plugin.toml`, produces its component with componentize-py or
//! componentize-js.
//!
//! ```toml
//! [plugin]
//! name = "remap-py"          # the component's name
//! language = "python"        # or "javascript", or "c"
//! entry = "app.py"           # the module that exports the transform (C:
//!                            # the main file; every .c file is compiled)
//! # JavaScript only: componentize-js features to leave out
//! # (default: ["http", "fetch-event"], so that no wasi:http is imported).
//! disable = ["http", "fetch-event"]
//! ```
//!
//! The tools are found through `REFILL_COMPONENTIZE_PY` and
//! `REFILL_COMPONENTIZE_JS`, then (JavaScript) the project's
//! `node_modules/.bin`, then `PATH`. componentize-js takes its memory
//! snapshot with refill's own [`super::snapshot`], under fixed clocks and
//! randomness; componentize-py takes its snapshot inside its own process,
//! so that process runs with refill's preload library (`host/shim`), which
//! fixes its clocks, randomness and file metadata. Both outputs are
//! reproducible.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BuildError, Language, Tool};

/// The WIT world every transform targets.
pub const WORLD: &str = "transformer";
/// The componentize-py refill is tested with (plugins/requirements-guests.txt).
pub const COMPONENTIZE_PY: &str = "0.25.1";
/// The componentize-js refill is tested with (plugins/js-toolchain).
pub const COMPONENTIZE_JS: &str = "0.23.0";
/// The preview2-shim componentize-js imports at build time (plugins/js-toolchain).
pub const PREVIEW2_SHIM: &str = "0.25.0";
/// What a JavaScript plugin leaves out unless its `plugin.toml` says.
const JS_DISABLE_DEFAULT: [&str; 2] = ["http", "fetch-event"];

/// A transform described by a `plugin.toml`.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The component's name.
    pub name: String,
    /// Python or JavaScript.
    pub language: Language,
    /// The entry file, relative to the folder.
    pub entry: String,
    /// componentize-js features left out (JavaScript only).
    pub disable: Vec<String>,
}

/// Reads `dir/plugin.toml`; `None` when there is none.
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>, BuildError> {
    let path = dir.join("plugin.toml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    parse_manifest(dir, &text)
        .map(Some)
        .map_err(|message| BuildError::Manifest { path, message })
}

fn parse_manifest(dir: &Path, text: &str) -> Result<Manifest, String> {
    let doc: toml::Table = toml::from_str(text).map_err(|e| e.message().to_string())?;
    if let Some(key) = doc.keys().find(|k| *k != "plugin") {
        return Err(format!(
            "unknown section or key `{key}` (everything goes under [plugin])"
        ));
    }
    let plugin = doc
        .get("plugin")
        .and_then(toml::Value::as_table)
        .ok_or("no [plugin] table")?;
    if let Some(key) = plugin
        .keys()
        .find(|k| !["name", "language", "entry", "disable"].contains(&k.as_str()))
    {
        return Err(format!("unknown key `plugin.{key}`"));
    }
    let string = |key: &str| {
        plugin
            .get(key)
            .and_then(toml::Value::as_str)
            .ok_or_else(|| format!("`plugin.{key}` is missing or not a string"))
    };
    let name = string("name")?;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "`plugin.name` {name:?} must be lowercase letters, digits and dashes"
        ));
    }
    let language = match string("language")? {
        "python" => Language::Python,
        "javascript" => Language::JavaScript,
        "c" => Language::C,
        other => {
            return Err(format!(
                "`plugin.language` {other:?} is not \"python\", \"javascript\" or \"c\""
            ));
        }
    };
    let entry = string("entry")?;
    if !dir.join(entry).is_file() {
        return Err(format!(
            "`plugin.entry` {entry:?} is not a file in {}",
            dir.display()
        ));
    }
    if language == Language::C && !entry.ends_with(".c") {
        return Err(format!(
            "`plugin.entry` {entry:?} must be a C file (every .c file of the folder is compiled)"
        ));
    }
    if language == Language::Python {
        let module = entry.strip_suffix(".py").unwrap_or_default();
        if module.is_empty()
            || !module
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!(
                "`plugin.entry` {entry:?} must be a Python module file in the plugin's folder, \
                 such as \"app.py\""
            ));
        }
    }
    let disable = match plugin.get("disable") {
        None if language == Language::JavaScript => {
            JS_DISABLE_DEFAULT.iter().map(|f| f.to_string()).collect()
        }
        None => Vec::new(),
        Some(_) if language != Language::JavaScript => {
            return Err("`plugin.disable` is for JavaScript plugins only".into());
        }
        Some(value) => value
            .as_array()
            .and_then(|list| {
                list.iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .ok_or("`plugin.disable` must be a list of strings")?,
    };
    Ok(Manifest {
        name: name.to_string(),
        language,
        entry: entry.to_string(),
        disable,
    })
}

/// Finds the tool that builds `language` for the project in `dir`, or says
/// how to install it.
pub fn find_tool(language: Language, dir: &Path) -> Result<Tool, BuildError> {
    let (var, name, install) = match language {
        Language::Python => (
            "REFILL_COMPONENTIZE_PY",
            "componentize-py",
            format!("pip install componentize-py=={COMPONENTIZE_PY}"),
        ),
        Language::JavaScript => (
            "REFILL_COMPONENTIZE_JS",
            "componentize-js",
            format!(
                "npm install --save-dev @bytecodealliance/componentize-js@{COMPONENTIZE_JS} \
                 @bytecodealliance/preview2-shim@{PREVIEW2_SHIM} (in the project's folder; \
                 componentize-js imports the shim without depending on it, and needs Node.js: \
                 sudo apt-get install nodejs npm)"
            ),
        ),
        Language::Rust | Language::C => unreachable!("built by cargo or clang"),
    };
    let path = match std::env::var_os(var).filter(|p| !p.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(BuildError::Toolchain {
                    what: format!(
                        "{name}: {var} names {}, which is not a file",
                        path.display()
                    ),
                    install,
                });
            }
            path
        }
        None => {
            let local = dir.join("node_modules/.bin").join(name);
            if language == Language::JavaScript && local.is_file() {
                local
            } else {
                super::on_path(name).ok_or_else(|| BuildError::Toolchain {
                    what: format!("{name}, which builds {language} transforms (not on PATH, and {var} is not set)"),
                    install,
                })?
            }
        }
    };
    let version = super::tool_version(&path, &["--version"])?;
    Ok(Tool {
        name: name.to_string(),
        path,
        version: version.trim().to_string(),
    })
}

/// Whether a Python build is reproducible on this platform: the preload
/// library that fixes what componentize-py sees exists only for x86-64
/// Linux. `None` when it is, else why not.
pub fn python_not_reproducible() -> Option<&'static str> {
    refill_build_shim::SHIM.is_empty().then_some(
        "componentize-py takes its snapshot of the interpreter inside its own process, and the \
         library that fixes the clocks, randomness and file metadata that process sees exists \
         for x86-64 Linux only",
    )
}

/// Builds the transform in `dir` against the WIT in `wit` into `out`.
/// `snapshot_exe` is a binary that runs [`super::snapshot::main`] when its
/// first argument is [`super::snapshot::ARG`]; componentize-js runs it in
/// place of wizer.
///
/// Python is built from a copy of the source in a scratch folder (so that
/// no `__pycache__` of an earlier build is read), with an empty
/// virtualenv, and with refill's preload library (`host/shim`) in
/// componentize-py's process.
pub fn build(
    tool: &Tool,
    manifest: &Manifest,
    dir: &Path,
    wit: &Path,
    out: &Path,
    snapshot_exe: &Path,
) -> Result<(), BuildError> {
    let scratch = super::scratch()?;
    // Relative paths only: the tools run in the project's folder, so that no
    // absolute path (the WIT's, the entry's) reaches the component.
    let mut workdir = dir.to_path_buf();
    let mut wit = wit.strip_prefix(dir).unwrap_or(wit).to_path_buf();
    let mut cmd = Command::new(&tool.path);
    match manifest.language {
        Language::Python => {
            workdir = scratch.path().join("src");
            copy_source(dir, &workdir)?;
            if wit.is_absolute() {
                // A WIT outside the project (refill's own plugins): copied too.
                copy_source(&wit, &scratch.path().join("wit"))?;
                wit = PathBuf::from("../wit");
            }
            let module = manifest.entry.trim_end_matches(".py");
            // An empty virtualenv: without one, componentize-py adds the
            // site-packages of whatever `python3` is on PATH.
            let venv = scratch.path().join("venv");
            std::fs::create_dir_all(&venv).map_err(BuildError::io(&venv))?;
            cmd.arg("-d")
                .arg(&wit)
                .args(["-w", WORLD, "componentize", "-p", "."])
                .arg(module)
                .arg("-o")
                .arg(out)
                .env("VIRTUAL_ENV", &venv);
            if python_not_reproducible().is_none() {
                let shim = scratch.path().join("librefill_build_shim.so");
                std::fs::write(&shim, refill_build_shim::SHIM).map_err(BuildError::io(&shim))?;
                cmd.env("LD_PRELOAD", &shim).env("REFILL_BUILD_SHIM", "1");
            }
        }
        Language::JavaScript => {
            let shim = super::snapshot::write_shim(scratch.path(), snapshot_exe)?;
            cmd.arg(&manifest.entry)
                .arg("--wit")
                .arg(&wit)
                .args(["-n", WORLD]);
            if !manifest.disable.is_empty() {
                cmd.arg("-d").args(&manifest.disable);
            }
            cmd.arg("--wizer-bin").arg(&shim).arg("-o").arg(out);
        }
        Language::Rust | Language::C => unreachable!("built by cargo or clang"),
    }
    cmd.current_dir(&workdir).env("TMPDIR", scratch.path());
    super::run_tool(tool, &mut cmd, true)
}

/// Copies the source files of `from` (see
/// [`super::provenance::source_files`]) into the new folder `to`.
fn copy_source(from: &Path, to: &Path) -> Result<(), BuildError> {
    for (relative, path) in super::provenance::source_files(from)? {
        let copy = to.join(&relative);
        if let Some(parent) = copy.parent() {
            std::fs::create_dir_all(parent).map_err(BuildError::io(parent))?;
        }
        std::fs::copy(&path, &copy).map_err(BuildError::io(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, String> {
        parse_manifest(Path::new(env!("CARGO_MANIFEST_DIR")), text)
    }

    #[test]
    fn manifests_are_read_strictly() {
        let js =
            parse("[plugin]\nname = \"x-js\"\nlanguage = \"javascript\"\nentry = \"Cargo.toml\"")
                .expect("valid");
        assert_eq!(js.language, Language::JavaScript);
        assert_eq!(js.disable, ["http", "fetch-event"]);
        let open = parse(
            "[plugin]\nname = \"x\"\nlanguage = \"javascript\"\nentry = \"Cargo.toml\"\ndisable = []",
        )
        .expect("valid");
        assert!(open.disable.is_empty());
        let c = parse("[plugin]\nname = \"x-c\"\nlanguage = \"c\"\nentry = \"shim/shim.c\"")
            .expect("valid");
        assert_eq!(c.language, Language::C);
        for bad in [
            "[plugin]\nname = \"x\"\nlanguage = \"c\"\nentry = \"Cargo.toml\"",
            "[plugin]\nname = \"x\"\nlanguage = \"ruby\"\nentry = \"Cargo.toml\"",
            "[plugin]\nname = \"X\"\nlanguage = \"javascript\"\nentry = \"Cargo.toml\"",
            "[plugin]\nname = \"x\"\nlanguage = \"javascript\"\nentry = \"nope.js\"",
            "[plugin]\nname = \"x\"\nlanguage = \"python\"\nentry = \"Cargo.toml\"",
            "[plugin]\nname = \"x\"\nlanguage = \"javascript\"\nentry = \"Cargo.toml\"\nentri = 1",
            "[plugin]\nname = \"x\"\nlanguage = \"javascript\"\nentry = \"Cargo.toml\"\n[other]",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn the_recommended_versions_are_the_pinned_ones() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let py = std::fs::read_to_string(root.join("plugins/requirements-guests.txt"))
            .expect("requirements");
        assert!(
            py.contains(&format!("componentize-py=={COMPONENTIZE_PY}")),
            "{py}"
        );
        let js = std::fs::read_to_string(root.join("plugins/js-toolchain/package.json"))
            .expect("package.json");
        assert!(
            js.contains(&format!(
                "\"@bytecodealliance/componentize-js\": \"{COMPONENTIZE_JS}\""
            )),
            "{js}"
        );
        assert!(
            js.contains(&format!(
                "\"@bytecodealliance/preview2-shim\": \"{PREVIEW2_SHIM}\""
            )),
            "{js}"
        );
    }
}
