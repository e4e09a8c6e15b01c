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

/// One round's times, `name 1.23 s; …`, of the workloads that ran.
pub fn round_line(names: &[&str], times: &[Measured]) -> String {
    let line: Vec<String> = names
        .iter()
        .zip(times)
        .filter(|(_, t)| t.ran())
        .map(|(w, t)| {
            format!(
                "{} {:.2} s",
                w.trim_start_matches("  … "),
                t.took.as_secs_f64()
            )
        })
        .collect();
    line.join("; ")
}

/// Keeps in `best` each workload's faster round: its own, or `times`'.
pub fn keep_best(best: &mut [Measured], times: &[Measured]) {
    for (slot, m) in best.iter_mut().zip(times) {
        if m.took < slot.took {
            *slot = *m;
        }
    }
}

/// One workload's best round: its wall time, the CPU the whole machine
/// was busy for meanwhile, and how much of that was refill's own (its
/// processes, when the workload ran refill).
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// Wall time.
    pub took: Duration,
    /// Seconds of CPU the machine was busy, all cores together.
    pub cpu: f64,
    /// Seconds of CPU of the `refill` processes the bench started.
    pub own: Option<f64>,
    /// Seconds of CPU of the database server's processes, when it runs on
    /// this machine.
    pub server: Option<f64>,
}

impl Measured {
    /// Not measured (yet): slower than any measurement.
    pub const NONE: Measured = Measured {
        took: Duration::MAX,
        cpu: 0.0,
        own: None,
        server: None,
    };

    /// Whether this was measured.
    pub fn ran(&self) -> bool {
        self.took != Duration::MAX
    }
}

/// Seconds of CPU used so far by this process's children that have
/// ended, and by the whole machine (all cores; steal counts as busy).
#[expect(
    unsafe_code,
    reason = "getrusage is the only way to read the CPU of ended children"
)]
#[expect(clippy::cast_precision_loss, reason = "seconds, printed")]
pub fn cpu_now() -> (f64, f64) {
    // SAFETY: getrusage writes one plain struct it is given.
    let children = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut usage);
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    };
    // The first line of /proc/stat: user, nice, system, idle, iowait, irq,
    // softirq, steal, in clock ticks (100 a second).
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<f64>()
        / 100.0;
    (children, busy)
}

/// The database servers whose CPU [`measure`] reads: PostgreSQL's
/// postmaster and backends, and MariaDB's or MySQL's one process.
const SERVERS: &[&str] = &["postgres", "postmaster", "mariadbd", "mysqld"];

/// Seconds of CPU used so far by the database servers running on this
/// machine, or `None` when none is visible in `/proc`: every server
/// process's own time, and what the ones started by something else (the
/// postmaster) collected from their children that ended (backends).
///
/// A backend that ends while `/proc` is read would be counted in neither
/// place (or in both): the parents' collected time is read before and
/// after the rest, and the reading is taken again until it held still.
#[expect(clippy::cast_precision_loss, reason = "seconds, printed")]
pub fn server_cpu() -> Option<f64> {
    let mut last = None;
    for _ in 0..10 {
        let (parents, _) = server_ticks()?;
        let (_, own) = server_ticks()?;
        let (parents_after, _) = server_ticks()?;
        last = Some(parents_after + own);
        if parents == parents_after {
            return last.map(|ticks| ticks as f64 / 100.0);
        }
    }
    println!("(the server's CPU did not hold still while read: its figure may be off)");
    last.map(|ticks| ticks as f64 / 100.0)
}

/// The server processes' ticks: what the parents collected from their
/// ended children, and every process's own; `None` when there is no
/// server process.
fn server_ticks() -> Option<(u64, u64)> {
    let (mut parents, mut own) = (0u64, 0u64);
    let mut seen = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: the name may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !SERVERS.contains(&&stat[open + 1..close]) {
            continue;
        }
        let fields: Vec<u64> = stat[close + 1..]
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        seen = true;
        // utime and stime; cutime and cstime of a server's parent process
        // (whose own parent, init or a supervisor, is not a server).
        own += field(10) + field(11);
        if !is_server(field(0)) {
            parents += field(12) + field(13);
        }
    }
    seen.then_some((parents, own))
}

/// Whether process `pid` is a database server.
fn is_server(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|name| SERVERS.contains(&name.trim_end()))
}

/// Runs `work` and measures it: wall time, the machine's CPU, the CPU of
/// the processes it started and waited for, and the database server's.
pub async fn measure<F: std::future::Future<Output = ()>>(work: F) -> Measured {
    let (own_before, all_before) = cpu_now();
    let server_before = server_cpu();
    let started = std::time::Instant::now();
    work.await;
    let took = started.elapsed();
    let (own_after, all_after) = cpu_now();
    let server = server_cpu().zip(server_before).map(|(a, b)| a - b);
    let own = own_after - own_before;
    Measured {
        took,
        cpu: all_after - all_before,
        own: (own > 0.0).then_some(own),
        server,
    }
}

/// The workloads named in `REFILL_BENCH_WORKLOADS` (a comma-separated
/// list of their numbers in the table, from 0), or all `n` of them.
pub fn chosen(n: usize) -> Vec<bool> {
    let list = env_or("REFILL_BENCH_WORKLOADS", "");
    if list.trim().is_empty() {
        return vec![true; n];
    }
    let picked: Vec<usize> = list
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("REFILL_BENCH_WORKLOADS lists workload numbers")
        })
        .collect();
    (0..n).map(|i| picked.contains(&i)).collect()
}

/// Prints workloads over `rows` rows as a table of seconds, rows/s, the
/// ratio of each one's time to the first's (the single statement's), and
/// the CPU each used: the whole machine's, the database server's and
/// refill's own.
pub fn print_against_single(rows: i64, workloads: &[(&str, Measured)]) {
    println!(
        "  {:<44} {:>9} {:>12} {:>18} {:>11} {:>11} {:>11}",
        "workload",
        "seconds",
        "rows/s",
        "vs single UPDATE",
        "machine CPU",
        "server CPU",
        "refill CPU"
    );
    let single = workloads
        .first()
        .filter(|w| w.1.ran())
        .map(|w| w.1.took.as_secs_f64());
    for (i, (name, m)) in workloads.iter().enumerate() {
        if !m.ran() {
            println!("  {i:>2} {name:<41} {:>9}", "-");
            continue;
        }
        let ratio = single.map_or("-".into(), |s| format!("{:.2}", m.took.as_secs_f64() / s));
        let own = m.own.map_or("-".into(), |o| format!("{o:.2} s"));
        let server = m.server.map_or("-".into(), |o| format!("{o:.2} s"));
        println!(
            "  {i:>2} {name:<41} {:>9.2} {:>12} {ratio:>18} {:>9.2} s {server:>11} {own:>11}",
            m.took.as_secs_f64(),
            rate(rows, m.took),
            m.cpu,
        );
    }
}
