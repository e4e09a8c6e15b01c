//! What the PostgreSQL and the MariaDB benches share: the workload (the
//! `remap` status mapping over a `quotes` table, in chunks of [`CHUNK`]),
//! its spec, running the `refill` binary the bench was built with, and
//! printing rows/s.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The status mapping the benches apply, by SQL and by `remap`.
pub const MAP: &[(&str, &str)] = &[
    ("open", "active"),
    ("won", "closed_won"),
    ("lost", "closed_lost"),
    ("stale", "archived"),
];
/// Rows per chunk (and per batch of the batched script).
pub const CHUNK: i64 = 10_000;

/// A setting from the environment, or its default.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The SQL expression mapping `status` as [`MAP`] does.
pub fn case_sql() -> String {
    let arms: Vec<String> = MAP
        .iter()
        .map(|(a, b)| format!("WHEN '{a}' THEN '{b}'"))
        .collect();
    format!("CASE status {} END", arms.join(" "))
}

/// The `remap` component the benches run, its digest, and the cache its
/// compiled form is kept in (compiled once here, so that every timed run
/// loads it from the cache, as every run after the first does).
pub struct Remap {
    /// The component file.
    pub component: PathBuf,
    /// Its sha256.
    pub digest: String,
    /// The compiled-component cache of the benches.
    pub cache: PathBuf,
}

impl Remap {
    /// Finds the built component and warms the cache.
    pub fn warm() -> Remap {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let component = root.join("plugins/dist/remap.wasm");
        assert!(
            component.exists(),
            "{} is missing: run `make plugins`",
            component.display()
        );
        let digest = refill::transform::digest(&std::fs::read(&component).expect("component"));
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-cache");
        let remap = Remap {
            component,
            digest,
            cache,
        };
        succeed(
            remap
                .refill()
                .arg("inspect")
                .arg(&remap.component)
                .output()
                .expect("refill inspect"),
            "refill inspect",
        );
        remap
    }

    /// A `refill` command on the benches' cache (see [`refill_cmd`]).
    pub fn refill(&self) -> Command {
        refill_cmd(&self.cache)
    }

    /// The spec of the bench backfill `name` over `schema.quotes` at
    /// `url`, in chunks of [`CHUNK`]; `chunk` and `target` are extra lines
    /// of those tables, `rest` is appended (more tables).
    pub fn spec(
        &self,
        name: &str,
        url: &str,
        schema: &str,
        chunk: &str,
        target: &str,
        rest: &str,
    ) -> String {
        let map: Vec<String> = MAP.iter().map(|(a, b)| format!("{a}={b}")).collect();
        format!(
            "name = \"{name}\"\n[source]\nurl = \"{url}\"\nschema = \"{schema}\"\ntable = \"quotes\"\nkey = \"id\"\ncolumns = [\"status\"]\n\
             [chunk]\nrows = {CHUNK}\n{chunk}\n[transform]\ncomponent = \"{}\"\nsha256 = \"{}\"\nconfig = {{ map = \"{}\" }}\n\
             [target]\ncolumns = [\"status_v2\"]\n{target}\n{rest}",
            self.component.display(),
            self.digest,
            map.join(","),
        )
    }
}

/// A `refill` command of this build, on the compiled-component cache
/// `cache`, logging warnings only (or what `REFILL_BENCH_LOG` asks for).
pub fn refill_cmd(cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_refill"));
    cmd.env("REFILL_CACHE_DIR", cache)
        .env("REFILL_LOG", env_or("REFILL_BENCH_LOG", "refill=warn"));
    cmd
}

/// Fails the bench, showing its output, unless a command succeeded;
/// returns its standard output.
pub fn succeed(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `rows` in `d` as rows per second, with thousands separators.
#[expect(
    clippy::cast_precision_loss,
    reason = "rows/s is printed, not computed on"
)]
pub fn rate(rows: i64, d: Duration) -> String {
    let digits = format!("{:.0}", rows as f64 / d.as_secs_f64());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prints workloads over `rows` rows as a table of seconds, rows/s and the
/// ratio of each one's time to the first's (the single statement's).
pub fn print_against_single(rows: i64, workloads: &[(&str, Duration)]) {
    println!(
        "  {:<44} {:>9} {:>12} {:>18}",
        "workload", "seconds", "rows/s", "vs single UPDATE"
    );
    let single = workloads.first().map_or(1.0, |w| w.1.as_secs_f64());
    for (name, d) in workloads {
        println!(
            "  {name:<44} {:>9.2} {:>12} {:>18.2}",
            d.as_secs_f64(),
            rate(rows, *d),
            d.as_secs_f64() / single
        );
    }
}
