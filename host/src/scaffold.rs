//! `refill new`: consumes a language and a project name, produces a
//! transform project in a new folder that needs nothing from refill's
//! repository: the WIT and (for Rust) the SDK come from this binary, with a
//! minimal transform, input rows and the outcomes they must get, and a
//! README of a screen.

use std::path::{Path, PathBuf};

/// A language `refill new` scaffolds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the refill SDK.
    Rust,
    /// Python, for componentize-py.
    Python,
    /// JavaScript, for componentize-js.
    Js,
    /// C, for clang-16 with wasi-libc and wit-bindgen's C generator.
    C,
}

/// Why a project could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScaffoldError {
    /// The name cannot name a package and a component.
    #[error(
        "`{0}` cannot name a transform: use lowercase letters, digits and dashes, starting with a letter (at most 64)"
    )]
    Name(String),
    /// The folder exists.
    #[error("{} already exists; refill new makes a new folder", .0.display())]
    Exists(PathBuf),
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

const ROWS: &str = include_str!("../templates/common/rows.jsonl");
const EXPECTED: &str = include_str!("../templates/common/expected.jsonl");

/// The files of a project: path in the folder, text with `{{name}}` and
/// `{{crate}}` still to fill in.
fn files(lang: Lang) -> Vec<(&'static str, String)> {
    let mut files = vec![
        ("wit/transform.wit", crate::transform::WIT.to_string()),
        ("rows.jsonl", ROWS.to_string()),
        ("expected.jsonl", EXPECTED.to_string()),
    ];
    match lang {
        Lang::Rust => {
            files.extend([
                (
                    "Cargo.toml",
                    include_str!("../templates/rust/Cargo.toml").to_string(),
                ),
                (
                    "src/lib.rs",
                    include_str!("../templates/rust/src/lib.rs").to_string(),
                ),
                (
                    "README.md",
                    include_str!("../templates/rust/README.md").to_string(),
                ),
                ("refill-sdk/Cargo.toml", SDK_MANIFEST.to_string()),
                (
                    "refill-sdk/src/lib.rs",
                    include_str!("../../plugins/sdk/src/lib.rs").to_string(),
                ),
                (
                    "refill-sdk/src/bindings.rs",
                    // The vendored SDK finds the WIT in the project's folder.
                    include_str!("../../plugins/sdk/src/bindings.rs")
                        .replace("path: \"../../wit\"", "path: \"../wit\""),
                ),
                (".gitignore", "/target\n/dist/*.wasm\n".to_string()),
            ]);
        }
        Lang::Python => files.extend([
            (
                "app.py",
                include_str!("../templates/python/app.py").to_string(),
            ),
            (
                "README.md",
                include_str!("../templates/python/README.md").to_string(),
            ),
            (
                "plugin.toml",
                include_str!("../templates/python/plugin.toml").to_string(),
            ),
            (
                "test_app.py",
                include_str!("../templates/python/test_app.py").to_string(),
            ),
            (
                ".gitignore",
                "__pycache__/\n/typings/\n/dist/*.wasm\n".to_string(),
            ),
        ]),
        Lang::Js => files.extend([
            ("app.js", include_str!("../templates/js/app.js").to_string()),
            (
                "README.md",
                include_str!("../templates/js/README.md").to_string(),
            ),
            (
                "plugin.toml",
                include_str!("../templates/js/plugin.toml").to_string(),
            ),
            (".gitignore", "node_modules/\n/dist/*.wasm\n".to_string()),
        ]),
        Lang::C => files.extend([
            ("app.c", include_str!("../templates/c/app.c").to_string()),
            (
                "plugin.toml",
                include_str!("../templates/c/plugin.toml").to_string(),
            ),
            (
                "README.md",
                include_str!("../templates/c/README.md").to_string(),
            ),
            (".gitignore", "/typings/\n/dist/*.wasm\n".to_string()),
        ]),
    }
    files
}

/// The vendored SDK's manifest: the workspace's keys made explicit.
const SDK_MANIFEST: &str = r#"[package]
name = "refill-sdk"
description = "Write refill transforms in Rust: one function over a row, one macro call."
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc"] }
"#;

/// Whether `name` can name a package, a component and a folder.
fn valid(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

/// Makes the project `name` in `lang` in the new folder `dir` (whose last
/// component is usually `name`). Returns the files written.
pub fn create(lang: Lang, name: &str, dir: &Path) -> Result<Vec<PathBuf>, ScaffoldError> {
    if !valid(name) {
        return Err(ScaffoldError::Name(name.to_string()));
    }
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.to_path_buf()));
    }
    let crate_name = name.replace('-', "_");
    let mut written = Vec::new();
    for (file, text) in files(lang) {
        let path = dir.join(file);
        let text = text
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name);
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, text.as_bytes())
        };
        write(&path).map_err(|source| ScaffoldError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_folders_never_overwritten() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        for bad in ["", "Upper", "9lives", "a_b", "a-", "a/b", &"x".repeat(65)] {
            assert!(
                matches!(
                    create(Lang::Rust, bad, &dir.path().join("p")),
                    Err(ScaffoldError::Name(_))
                ),
                "{bad:?} was accepted"
            );
        }
        let project = dir.path().join("demo");
        let files = create(Lang::Python, "demo", &project).expect("created");
        assert!(files.iter().any(|f| f.ends_with("app.py")));
        let app = std::fs::read_to_string(project.join("app.py")).expect("app.py");
        assert!(
            app.contains("name=\"demo\"") && !app.contains("{{"),
            "{app}"
        );
        assert!(matches!(
            create(Lang::Js, "demo", &project),
            Err(ScaffoldError::Exists(_))
        ));
    }

    #[test]
    fn a_rust_project_carries_the_sdk_and_the_wit_it_needs() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let project = dir.path().join("my-fix");
        create(Lang::Rust, "my-fix", &project).expect("created");
        let read = |p: &str| std::fs::read_to_string(project.join(p)).expect(p);
        assert_eq!(read("wit/transform.wit"), crate::transform::WIT);
        assert!(read("refill-sdk/src/bindings.rs").contains("path: \"../wit\""));
        assert!(read("Cargo.toml").contains("name = \"my-fix\""));
        assert!(read("README.md").contains("refill build"));
        for (file, text) in files(Lang::Rust) {
            assert!(
                !text.contains("workspace = true"),
                "{file} refers to refill's workspace"
            );
        }
    }
}
