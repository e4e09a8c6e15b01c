//! The plugins written in Python, JavaScript or C: folders with a
//! `plugin.toml` (its format is [`refill::build::guest`]'s), built by
//! [`refill::build::build`] against the repository's `wit/`.
//!
//! A build takes 5–15 s, so each output is kept under
//! `target/guest/components/` with a stamp of everything it was built from:
//! while the sources, `wit/`, the tool's version and its pins stay the
//! same, the previous output is reused. (The builds are reproducible, so
//! this only saves time.)

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;
use std::{env, fs};

use anyhow::{Context, Result};
use refill::build::{self, Language, Project, guest};
use sha2::{Digest, Sha256};

/// Bumped when the way a plugin is built changes, so that old stamps miss.
const STAMP_FORMAT: &str = "refill guest stamp 3";

/// A plugin with a `plugin.toml`.
#[derive(Debug)]
pub struct Guest {
    pub name: String,
    project: Project,
}

/// Reads `dir/plugin.toml`, if there is one.
pub fn read_manifest(dir: &Path) -> Result<Option<Guest>> {
    if !dir.join("plugin.toml").is_file() {
        return Ok(None);
    }
    let project = Project::discover(dir)?;
    Ok(Some(Guest {
        name: project.name.clone(),
        project,
    }))
}

/// Builds each plugin, or reuses its previous output when nothing it is
/// built from has changed, and returns the components in the same order.
pub fn build(root: &Path, out_dir: &Path, guests: &[Guest]) -> Result<Vec<Vec<u8>>> {
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let exe = env::current_exe().context("finding the builder's own binary")?;
    let mut components = Vec::new();
    for guest in guests {
        components.push(build_one(root, out_dir, &exe, guest)?);
    }
    Ok(components)
}

fn build_one(root: &Path, out_dir: &Path, exe: &Path, guest: &Guest) -> Result<Vec<u8>> {
    let output = out_dir.join(format!("{}.wasm", guest.name));
    let stamp_path = out_dir.join(format!("{}.stamp", guest.name));
    let tools = match guest.project.language {
        Language::C => {
            let versions = build::c::Toolchain::detect()?.versions();
            let listed: Vec<String> = versions.iter().map(|(t, v)| format!("{t} {v}")).collect();
            listed.join(", ")
        }
        language => {
            let tool = guest::find_tool(language, &guest.project.dir)?;
            format!("{} ({})", tool.name, tool.version)
        }
    };
    let stamp = stamp(root, &tools, &guest.project.dir)?;
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
    println!(
        "{}: building {} with {tools}",
        guest.name,
        shown(root, &guest.project.dir),
    );
    let started = Instant::now();
    let project = guest.project.clone().with_wit(root.join("wit"));
    let built = build::build(&project, &output, exe)?;
    fs::write(&stamp_path, &stamp).with_context(|| format!("writing {}", stamp_path.display()))?;
    println!(
        "{}: built in {:.1} s",
        guest.name,
        started.elapsed().as_secs_f64()
    );
    Ok(built.component)
}

/// Everything a plugin's component is built from, one line each: how it is
/// built, the tool's version, the pins of the tools, and the sha256 of every
/// file in the plugin's folder and in `wit/`. Kept as text so that a stale
/// stamp can be read.
fn stamp(root: &Path, tools: &str, dir: &Path) -> Result<String> {
    let mut text = String::new();
    writeln!(text, "{STAMP_FORMAT}")?;
    writeln!(text, "refill {}", refill::HOST_VERSION)?;
    writeln!(text, "tools {tools}")?;
    // A lockfile bump of a dependency of componentize-js changes the output
    // without changing its version.
    for pin in [
        "plugins/requirements-guests.txt",
        "plugins/js-toolchain/package-lock.json",
    ] {
        if let Ok(bytes) = fs::read(root.join(pin)) {
            writeln!(text, "pin {} {pin}", hex::encode(Sha256::digest(&bytes)))?;
        }
    }
    for (label, dir) in [("source", dir.to_path_buf()), ("wit", root.join("wit"))] {
        let (digest, files) = build::provenance::source_digest(&dir)?;
        writeln!(text, "{label} {digest} ({files} files)")?;
    }
    Ok(text)
}

fn shown(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Where the builder writes a guest's provenance: beside its component in
/// `plugins/dist/`.
pub fn provenance_of(out_dir: &Path, name: &str) -> PathBuf {
    build::Provenance::path_for(&out_dir.join(format!("{name}.wasm")))
}
