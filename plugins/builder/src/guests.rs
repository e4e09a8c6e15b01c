//! Plugins written in Python or JavaScript.
//!
//! Such a plugin is a folder with a `plugin.toml`:
//!
//! ```toml
//! [plugin]
//! name = "remap-py"          # the component is plugins/dist/remap-py.wasm
//! language = "python"        # or "javascript"
//! entry = "app.py"           # the module that exports the transform
//! # JavaScript only: componentize-js features to leave out
//! # (default: ["http", "fetch-event"], so that no wasi:http is imported).
//! disable = ["http", "fetch-event"]
//! ```
//!
//! componentize-py and componentize-js build them. Their paths come from
//! `REFILL_COMPONENTIZE_PY` and `REFILL_COMPONENTIZE_JS`, which the Makefile
//! sets after `make toolchain` has installed both. A build takes 10–20 s and
//! its output is not byte-reproducible (the tools snapshot a heap seeded
//! with fresh randomness), so each output is kept under
//! `target/guest/components/` with a stamp of everything it was built from:
//! while the sources, `wit/` and the tool's version stay the same, the
//! previous output, and so its digest, is reused.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use std::{env, fs};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

/// The WIT world every plugin targets, in `wit/`.
const WORLD: &str = "transformer";
/// Bumped when the way a plugin is built changes, so that old stamps miss.
const STAMP_FORMAT: &str = "refill guest stamp 1";
/// What a JavaScript plugin leaves out unless its `plugin.toml` says.
const JS_DISABLE_DEFAULT: [&str; 2] = ["http", "fetch-event"];
/// The first eight bytes of a component (a core module has version 1).
const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\x00\x01\x00";

/// The language of a plugin, and so the tool that builds it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Language {
    Python,
    JavaScript,
}

impl Language {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "python" => Some(Language::Python),
            "javascript" => Some(Language::JavaScript),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
        }
    }

    /// The environment variable naming the tool, and the tool's name.
    fn tool(self) -> (&'static str, &'static str) {
        match self {
            Language::Python => ("REFILL_COMPONENTIZE_PY", "componentize-py"),
            Language::JavaScript => ("REFILL_COMPONENTIZE_JS", "componentize-js"),
        }
    }
}

/// A plugin described by a `plugin.toml`.
#[derive(Debug)]
pub struct Guest {
    pub name: String,
    pub language: Language,
    /// The plugin's folder.
    pub dir: PathBuf,
    /// The entry file, relative to `dir`.
    pub entry: String,
    /// componentize-js features left out (JavaScript only).
    pub disable: Vec<String>,
}

/// Reads `dir/plugin.toml`, if there is one.
pub fn read_manifest(dir: &Path) -> Result<Option<Guest>> {
    let path = dir.join("plugin.toml");
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(None);
    };
    parse_manifest(dir, &text)
        .map(Some)
        .with_context(|| format!("in {}", path.display()))
}

fn parse_manifest(dir: &Path, text: &str) -> Result<Guest> {
    let doc: toml::Table = toml::from_str(text)?;
    if let Some(key) = doc.keys().find(|k| *k != "plugin") {
        bail!("unknown section or key `{key}` (everything goes under [plugin])");
    }
    let plugin = doc
        .get("plugin")
        .and_then(toml::Value::as_table)
        .context("no [plugin] table")?;
    if let Some(key) = plugin
        .keys()
        .find(|k| !["name", "language", "entry", "disable"].contains(&k.as_str()))
    {
        bail!("unknown key `plugin.{key}`");
    }
    let string = |key: &str| {
        plugin
            .get(key)
            .and_then(toml::Value::as_str)
            .with_context(|| format!("`plugin.{key}` is missing or not a string"))
    };
    let name = string("name")?;
    ensure!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "`plugin.name` {name:?} must be lowercase letters, digits and dashes"
    );
    let language = string("language")?;
    let language = Language::parse(language).with_context(|| {
        format!("`plugin.language` {language:?} is neither \"python\" nor \"javascript\"")
    })?;
    let entry = string("entry")?;
    ensure!(
        dir.join(entry).is_file(),
        "`plugin.entry` {entry:?} is not a file in {}",
        dir.display()
    );
    if language == Language::Python {
        let module = entry.strip_suffix(".py").unwrap_or_default();
        ensure!(
            !module.is_empty()
                && module
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "`plugin.entry` {entry:?} must be a Python module file in the plugin's folder, \
             such as \"app.py\""
        );
    }
    let disable = match plugin.get("disable") {
        None if language == Language::JavaScript => {
            JS_DISABLE_DEFAULT.iter().map(|f| f.to_string()).collect()
        }
        None => Vec::new(),
        Some(_) if language != Language::JavaScript => {
            bail!("`plugin.disable` is for JavaScript plugins only")
        }
        Some(value) => value
            .as_array()
            .and_then(|list| {
                list.iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .context("`plugin.disable` must be a list of strings")?,
    };
    Ok(Guest {
        name: name.to_string(),
        language,
        dir: dir.to_path_buf(),
        entry: entry.to_string(),
        disable,
    })
}

/// A tool found through its environment variable, with its version.
struct Tool {
    path: PathBuf,
    version: String,
}

impl Tool {
    fn find(language: Language) -> Result<Tool> {
        let (var, name) = language.tool();
        let path = match env::var_os(var) {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => bail!(
                "{var} is not set, so {name} cannot be found to build the {} plugins: \
                 run `make plugins`, which sets it after `make toolchain` has installed {name}",
                language.as_str()
            ),
        };
        ensure!(
            path.is_file(),
            "{var} names {}, which does not exist: run `make toolchain` to install {name}",
            path.display()
        );
        let output = Command::new(&path)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", path.display()))?;
        ensure!(
            output.status.success(),
            "{} --version failed ({}): {}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
        Ok(Tool { path, version })
    }
}

/// Builds each plugin, or reuses its previous output when nothing it is
/// built from has changed, and returns the components in the same order.
pub fn build(root: &Path, out_dir: &Path, guests: &[Guest]) -> Result<Vec<Vec<u8>>> {
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut python = None;
    let mut javascript = None;
    let mut components = Vec::new();
    for guest in guests {
        let slot = match guest.language {
            Language::Python => &mut python,
            Language::JavaScript => &mut javascript,
        };
        let tool = match slot {
            Some(tool) => tool,
            None => slot.insert(Tool::find(guest.language)?),
        };
        components.push(build_one(root, out_dir, tool, guest)?);
    }
    Ok(components)
}

fn build_one(root: &Path, out_dir: &Path, tool: &Tool, guest: &Guest) -> Result<Vec<u8>> {
    let output = out_dir.join(format!("{}.wasm", guest.name));
    let stamp_path = out_dir.join(format!("{}.stamp", guest.name));
    let stamp = stamp(root, tool, guest)?;
    if fs::read_to_string(&stamp_path).is_ok_and(|previous| previous == stamp)
        && let Ok(component) = fs::read(&output)
    {
        println!(
            "{}: unchanged, reusing {}",
            guest.name,
            shown(root, &output)
        );
        return Ok(component);
    }

    // No stamp while the output is being replaced: an interrupted build
    // must not look finished.
    let _ = fs::remove_file(&stamp_path);
    let partial = output.with_extension("wasm.partial");
    let _ = fs::remove_file(&partial);
    let wit = root.join("wit");
    let mut cmd = Command::new(&tool.path);
    match guest.language {
        Language::Python => {
            let module = guest.entry.trim_end_matches(".py");
            cmd.arg("-d")
                .arg(&wit)
                .args(["-w", WORLD, "componentize", "-p"])
                .arg(&guest.dir)
                .arg(module)
                .arg("-o")
                .arg(&partial)
                // Only the plugin's own folder goes into the component, not
                // whatever virtualenv the caller has activated.
                .env_remove("VIRTUAL_ENV");
        }
        Language::JavaScript => {
            cmd.arg(guest.dir.join(&guest.entry))
                .arg("--wit")
                .arg(&wit)
                .args(["-n", WORLD]);
            if !guest.disable.is_empty() {
                cmd.arg("-d").args(&guest.disable);
            }
            cmd.arg("-o").arg(&partial);
        }
    }
    cmd.current_dir(&guest.dir);
    println!(
        "{}: building {} with {} ({})",
        guest.name,
        shown(root, &guest.dir.join(&guest.entry)),
        tool.path.file_name().unwrap_or_default().to_string_lossy(),
        tool.version
    );
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("running {}", tool.path.display()))?;
    ensure!(
        status.success(),
        "{} failed to build {} ({status})",
        tool.path.display(),
        guest.name
    );
    let component = fs::read(&partial).with_context(|| format!("reading {}", partial.display()))?;
    ensure!(
        component.starts_with(&COMPONENT_HEADER),
        "{} is not a WebAssembly component",
        partial.display()
    );
    fs::rename(&partial, &output).with_context(|| format!("renaming to {}", output.display()))?;
    fs::write(&stamp_path, &stamp).with_context(|| format!("writing {}", stamp_path.display()))?;
    println!(
        "{}: built in {:.1} s",
        guest.name,
        started.elapsed().as_secs_f64()
    );
    Ok(component)
}

/// Everything a plugin's component is built from, one line each: how it is
/// built, the tool's version, and the sha256 of every file in the plugin's
/// folder and in `wit/`. Kept as text so that a stale stamp can be read.
fn stamp(root: &Path, tool: &Tool, guest: &Guest) -> Result<String> {
    let mut text = String::new();
    writeln!(text, "{STAMP_FORMAT}")?;
    writeln!(text, "language {}", guest.language.as_str())?;
    writeln!(text, "tool {}", tool.version)?;
    writeln!(text, "world {WORLD}")?;
    writeln!(text, "entry {}", guest.entry)?;
    writeln!(text, "disable {}", guest.disable.join(" "))?;
    // The pins of the tools and of what they pull in (a lockfile bump of a
    // dependency of componentize-js changes the output without changing
    // its version).
    for pin in [
        "plugins/requirements-guests.txt",
        "plugins/js-toolchain/package-lock.json",
    ] {
        let path = root.join(pin);
        if let Ok(bytes) = fs::read(&path) {
            writeln!(text, "pin {} {pin}", hex::encode(Sha256::digest(&bytes)))?;
        }
    }
    for (label, dir) in [("source", &guest.dir), ("wit", &root.join("wit"))] {
        for file in files_under(dir)? {
            let bytes = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let relative = file.strip_prefix(dir).unwrap_or(&file);
            let digest = hex::encode(Sha256::digest(&bytes));
            writeln!(text, "{label} {digest} {}", relative.display())?;
        }
    }
    Ok(text)
}

/// The files under `dir`, sorted, leaving out what the tools or editors
/// leave behind (`__pycache__`, `node_modules`, dot files).
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with('.') || name == "__pycache__" || name == "node_modules" {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn shown(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Guest> {
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
        for bad in [
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
}
