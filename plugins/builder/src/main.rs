//! Builds every plugin under `plugins/` (in `plugins/*/` or `plugins/*/*/`)
//! into a component, writes it to `plugins/dist/<name>.wasm`, and prints its
//! sha256 (also written to `plugins/dist/SHA256SUMS`, one line per plugin,
//! sorted by name).
//!
//! A Rust plugin is a crate whose `Cargo.toml` has
//! `[package.metadata.refill] component = true`. The builder compiles it for
//! wasm32 and turns each core module into a component. It uses rustup's
//! `wasm32-unknown-unknown` target when installed, and otherwise Debian's
//! second toolchain with `-Zbuild-std` (see `../shared/TOOLCHAIN.md`).
//!
//! A Python or JavaScript plugin is a folder with a `plugin.toml`; see
//! [`guests`]. componentize-py and componentize-js build those, found
//! through `REFILL_COMPONENTIZE_PY` and `REFILL_COMPONENTIZE_JS`.
//!
//! `make toolchain` installs all of these; `make plugins` runs it first.

mod bombs;
mod guests;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

const TARGET: &str = "wasm32-unknown-unknown";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_STD_SRC: &str = "/usr/lib/rustlib/src/rust/library/Cargo.lock";
const WASM_LD: &str = "/usr/lib/llvm-16/bin/wasm-ld";

/// How to compile Rust for wasm32 on this machine.
enum Toolchain {
    /// rustup has the target installed: plain `cargo build --target`.
    Rustup,
    /// Debian's rustc-web/cargo-web with std built from rust-web-src.
    DebianBuildStd,
}

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error:#}");
        std::process::exit(2);
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
        let toolchain = detect_toolchain()?;
        compile(&root, &target_dir, &toolchain, &crates)?;
        for name in &crates {
            let core = target_dir
                .join(TARGET)
                .join("guest")
                .join(format!("{}.wasm", name.replace('-', "_")));
            let module = fs::read(&core).with_context(|| format!("reading {}", core.display()))?;
            let component = wit_component::ComponentEncoder::default()
                .module(&module)
                .and_then(|e| e.validate(true).encode())
                .with_context(|| format!("turning {} into a component", core.display()))?;
            for (_, bomb) in bombs.iter().filter(|(of, _)| of == name) {
                let armed = bombs::arm(&component, bomb)
                    .with_context(|| format!("arming {} with {}", name, bomb.name))?;
                components.push((bomb.name.clone(), armed));
            }
            components.push((name.clone(), component));
        }
    }
    let built = guests::build(&root, &target_dir.join("components"), &guests)?;
    components.extend(guests.into_iter().map(|g| g.name).zip(built));
    components.sort_by(|a, b| a.0.cmp(&b.0));

    let dist = root.join("plugins/dist");
    fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    let mut sums = String::new();
    for (name, component) in &components {
        let out = dist.join(format!("{name}.wasm"));
        write_atomically(&out, component)?;
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

fn detect_toolchain() -> Result<Toolchain> {
    let rustup_has_target = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(false);
    if rustup_has_target {
        return Ok(Toolchain::Rustup);
    }
    let missing: Vec<&str> = [DEBIAN_CARGO, DEBIAN_RUSTC, DEBIAN_STD_SRC, WASM_LD]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return Ok(Toolchain::DebianBuildStd);
    }
    bail!(
        "no wasm32 toolchain: rustup has no {TARGET} target and {} missing; \
         run `make toolchain` (Debian packages rustc-web cargo-web rust-web-src lld-16) \
         or `rustup target add {TARGET}`",
        missing.join(", ")
    )
}

fn compile(
    root: &Path,
    target_dir: &Path,
    toolchain: &Toolchain,
    plugins: &[String],
) -> Result<()> {
    let cargo = match toolchain {
        Toolchain::Rustup => env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        Toolchain::DebianBuildStd => DEBIAN_CARGO.into(),
    };
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--profile",
            "guest",
            "--target",
            TARGET,
            "--locked",
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        // Paths end up in panic messages; keep them, and so the digest,
        // independent of where the checkout and the cargo home are.
        .env("CARGO_ENCODED_RUSTFLAGS", remap_flags(root));
    for name in plugins {
        cmd.args(["-p", name]);
    }
    if let Toolchain::DebianBuildStd = toolchain {
        cmd.arg("-Zbuild-std=std,panic_abort")
            .env("RUSTC", DEBIAN_RUSTC)
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", WASM_LD)
            .env_remove("RUSTDOC");
    }
    let status = cmd.status().with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("{cargo} build for {TARGET} failed ({status})");
    }
    Ok(())
}

fn remap_flags(root: &Path) -> String {
    let cargo_home = env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| env::var("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|_| PathBuf::from("/nonexistent"));
    [
        format!("--remap-path-prefix={}=/refill", root.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
    ]
    .join("\x1f")
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
