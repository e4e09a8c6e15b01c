//! refill re-processes existing database rows so that their derived values
//! become right, safely.
//!
//! The modules follow the data flow: a [`spec`] says what to do; the
//! [`source`] reads rows from the database in key-ordered [`chunk`]s; the
//! [`transform`] runs the sandboxed WebAssembly component over them; the
//! [`sink`] writes the results back; [`state`] keeps checkpoints, dead
//! letters, before-images and the audit trail; [`backoff`] retries what a
//! database hiccup breaks; [`throttle`] paces the work and [`progress`]
//! counts it. [`plan`] checks a spec against the database, and [`ops`]
//! holds the commands that work on a run: run it, work on it as a worker,
//! retry its dead letters, verify, report, roll back and show its status.
//! [`scaffold`] and [`build`] serve the teams that write transforms. The
//! `refill` binary is a thin command line over this library.

pub mod backend;
pub mod backoff;
pub mod build;
pub mod chunk;
pub mod clip;
pub mod db;
pub mod local;
pub mod lookup;
pub mod metrics;
pub mod ops;
pub mod plan;
pub mod progress;
pub mod scaffold;
pub mod sink;
pub mod source;
pub mod spec;
pub mod state;
pub mod throttle;
pub mod transform;
pub mod value;

/// The version of this host, recorded with every run.
pub const HOST_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The documentation's own links: every relative link of the README,
/// CONTRIBUTING.md and docs/ names a file that exists and, with an anchor,
/// a heading (or an `<a id>`) of that file.
#[cfg(test)]
mod docs {
    use std::path::{Path, PathBuf};

    /// GitHub's anchor for a heading.
    fn slug(heading: &str) -> String {
        heading
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect()
    }

    fn anchors(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut fence = false;
        for line in text.lines() {
            if line.starts_with("```") {
                fence = !fence;
            }
            if !fence && line.starts_with('#') {
                found.push(slug(line.trim_start_matches('#')));
            }
            let mut rest = line;
            while let Some(at) = rest.find("<a id=\"") {
                let tail = &rest[at + 7..];
                let end = tail.find('"').unwrap_or(tail.len());
                found.push(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
        found
    }

    #[test]
    fn every_relative_link_reaches_its_file_and_heading() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files: Vec<PathBuf> = vec![root.join("README.md"), root.join("CONTRIBUTING.md")];
        for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
            files.push(entry.expect("entry").path());
        }
        let mut broken = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).expect("readable");
            for (at, _) in text.match_indices("](") {
                let tail = &text[at + 2..];
                let target = &tail[..tail.find(')').unwrap_or(tail.len())];
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
                let linked = if path.is_empty() {
                    file.clone()
                } else {
                    file.parent().expect("a folder").join(path)
                };
                if !linked.exists() {
                    broken.push(format!("{}: {target} (no such file)", file.display()));
                    continue;
                }
                if anchor.is_empty() {
                    continue;
                }
                let linked_text = std::fs::read_to_string(&linked).unwrap_or_default();
                if !anchors(&linked_text).iter().any(|a| a == anchor) {
                    broken.push(format!("{}: {target} (no such heading)", file.display()));
                }
            }
        }
        assert!(broken.is_empty(), "broken links: {broken:#?}");
    }
}
