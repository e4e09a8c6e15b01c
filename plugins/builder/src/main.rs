//! Builds every plugin under `plugins/` (in `plugins/*/` or `plugins/*/*/`)
//! into a component, writes it to `plugins/dist/<name>.wasm`, and prints its
//! sha256 (also written to `plugins/dist/SHA256SUMS`, one line per plugin,
//! sorted by name).
//!
//! The building is `refill build`'s, from the `refill` library
//! ([`refill::build`]): the same toolchain detection, compilation, wrapping
//! and snapshot. What is added here is the repository's layout:
//!
//! - a Rust plugin is a workspace crate whose `Cargo.toml` has
//!   `[package.metadata.refill] component = true`; all of them are compiled
//!   by one cargo run with the `guest` profile;
//! - a Python or JavaScript plugin is a folder with a `plugin.toml` (see
//!   [`refill::build::guest`]), built against the repository's `wit/`;
//! - the hostile bomb variants of a crate ([`bombs`]).
//!
//! `make toolchain` installs the tools; `make plugins` runs it first.

mod bombs;
mod guests;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use refill::build::{rust, snapshot, write_atomically};
use sha2::{Digest, Sha256};

fn main() -> ExitCode {
    // componentize-js runs this binary as its wizer, as it runs `refill`.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == snapshot::ARG) {
        return snapshot::main(args.collect());
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .context("finding the workspace root")?;
    let Plugins {
        crates,
        bombs,
        guests,
    } = discover(&root.join("plugins"))?;
    if crates.is_empty() && guests.is_empty() {
        bail!("no plugins found under {}", root.join("plugins").display());
    }
    let mut seen = BTreeSet::new();
    for name in crates
        .iter()
        .chain(bombs.iter().map(|(_, b)| &b.name))
        .chain(guests.iter().map(|g| &g.name))
    {
        if !seen.insert(name) {
            bail!("two plugins are named `{name}`");
        }
    }

    let target_dir = root.join("target/guest");
    let mut components = Vec::new();
    if !crates.is_empty() {
        let toolchain = rust::Toolchain::detect()?;
        let packages: Vec<(String, String)> = crates
            .iter()
            .map(|name| (name.clone(), name.replace('-', "_")))
            .collect();
        let modules = toolchain.compile(&root, &packages, "guest", &target_dir, true)?;
        for (name, core) in crates.iter().zip(&modules) {
            let module = fs::read(core).with_context(|| format!("reading {}", core.display()))?;
            let component = refill::build::componentize(&module, core)?;
            for (_, bomb) in bombs.iter().filter(|(of, _)| of == name) {
                let armed = bombs::arm(&component, bomb)
                    .with_context(|| format!("arming {} with {}", name, bomb.name))?;
                components.push((bomb.name.clone(), armed));
            }
            components.push((name.clone(), component));
        }
    }
    let guest_dir = target_dir.join("components");
    let built = guests::build(&root, &guest_dir, &guests)?;
    components.extend(guests.into_iter().map(|g| g.name).zip(built));
    components.sort_by(|a, b| a.0.cmp(&b.0));

    let dist = root.join("plugins/dist");
    fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    let mut sums = String::new();
    for (name, component) in &components {
        let out = dist.join(format!("{name}.wasm"));
        write_atomically(&out, component)?;
        // A guest's provenance goes with it (the Rust plugins are built as
        // one workspace and have none).
        let provenance = guests::provenance_of(&guest_dir, name);
        if provenance.is_file() {
            fs::copy(&provenance, guests::provenance_of(&dist, name))
                .with_context(|| format!("copying {}", provenance.display()))?;
        }
        let digest = hex::encode(Sha256::digest(component));
        let shown = out
            .strip_prefix(&root)
            .unwrap_or(&out)
            .display()
            .to_string();
        println!("{digest}  {shown}  ({} bytes)", component.len());
        writeln!(sums, "{digest}  {name}.wasm")?;
    }
    write_atomically(&dist.join("SHA256SUMS"), sums.as_bytes())?;
    Ok(())
}

/// The plugins found under `plugins/`.
struct Plugins {
    /// The package names of the Rust plugin crates, sorted.
    crates: Vec<String>,
    /// The bomb variants of those crates: (crate, bomb).
    bombs: Vec<(String, bombs::Bomb)>,
    /// The plugins with a `plugin.toml`, sorted by name.
    guests: Vec<guests::Guest>,
}

/// The plugins one or two folder levels under `plugins/` (hostile guests
/// live in `plugins/evil/…`).
fn discover(plugins_dir: &Path) -> Result<Plugins> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(plugins_dir)? {
        let dir = entry?.path();
        if dir.is_dir() {
            for sub in fs::read_dir(&dir)? {
                let sub = sub?.path();
                if sub.is_dir() {
                    dirs.push(sub);
                }
            }
            dirs.push(dir);
        }
    }
    let mut guests = Vec::new();
    for dir in &dirs {
        guests.extend(guests::read_manifest(dir)?);
    }
    guests.sort_by(|a, b| a.name.cmp(&b.name));
    let mut names = Vec::new();
    let mut bombs = Vec::new();
    for dir in dirs {
        let manifest = dir.join("Cargo.toml");
        let Ok(text) = fs::read_to_string(&manifest) else {
            continue;
        };
        let doc: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
        let refill = doc
            .get("package")
            .and_then(|p| p.get("metadata"))
            .and_then(|m| m.get("refill"));
        let is_component = refill
            .and_then(|r| r.get("component"))
            .and_then(toml::Value::as_bool)
            .unwrap_or(false);
        if is_component {
            let name = doc["package"]["name"]
                .as_str()
                .with_context(|| format!("{}: package.name is not a string", manifest.display()))?;
            names.push(name.to_string());
            if let Some(refill) = refill {
                let listed =
                    bombs::read(refill).with_context(|| format!("in {}", manifest.display()))?;
                bombs.extend(listed.into_iter().map(|b| (name.to_string(), b)));
            }
        }
    }
    names.sort();
    Ok(Plugins {
        crates: names,
        bombs,
        guests,
    })
}
