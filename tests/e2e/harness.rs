//! The end-to-end harness: each test gets its own temporary directory, its
//! own database (a SQLite file, a fresh PostgreSQL schema, or a fresh
//! MariaDB/MySQL database, dropped afterwards), and runs the real `refill`
//! binary against it.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Once, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

/// A built plugin component. Fails the test with instructions if
/// `make plugins` has not been run.
pub fn plugin(name: &str) -> PathBuf {
    let path = root().join("plugins/dist").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `make plugins` (make test does it for you)",
        path.display()
    );
    path
}

/// The sha256 of a file, as refill computes it.
pub fn digest(path: &Path) -> String {
    refill::transform::digest(&std::fs::read(path).expect("read component"))
}

/// The PostgreSQL url the tests use.
pub fn postgres_url() -> String {
    std::env::var("REFILL_TEST_POSTGRES_URL").unwrap_or_default()
}

/// Before the first world: ends the test process at once, saying what to
/// start and which variable to set, when PostgreSQL or MariaDB does not
/// answer (every test file has tests on both).
fn services_up() {
    static CHECKED: Once = Once::new();
    CHECKED.call_once(|| {
        let services = [
            (
                "PostgreSQL",
                "REFILL_TEST_POSTGRES_URL",
                postgres_url(),
                "a PostgreSQL database the tests may create schemas in (`make test` sets postgres://postgres@127.0.0.1:5432/test)",
            ),
            (
                "MariaDB or MySQL",
                "REFILL_TEST_MYSQL_URL",
                mysql_url(),
                "a MariaDB/MySQL server where the tests may create databases (default mysql://root@127.0.0.1:3306/test)",
            ),
        ];
        for (name, var, url, what) in services {
            let problem = if url.is_empty() {
                Err(format!("{var} is not set"))
            } else {
                refill::db::answers(&url, Duration::from_secs(3))
            };
            if let Err(why) = problem {
                // Past the test harness's capture of eprintln!, which
                // exiting would swallow.
                let _ = writeln!(
                    std::io::stderr(),
                    "error: the end-to-end tests need {name}, and {why}.\nStart {name} and set {var} to {what}."
                );
                std::process::exit(2);
            }
        }
    });
}

/// The MariaDB/MySQL url the tests use (`REFILL_TEST_MYSQL_URL`, default
/// the local MariaDB's `test` database); each world gets a database of its
/// own on that server.
pub fn mysql_url() -> String {
    std::env::var("REFILL_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_string())
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let start = head.find("://").map_or(0, |i| i + 3);
    let base = match head[start..].find('/') {
        Some(slash) => &head[..start + slash],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// The result of one `refill` invocation.
pub struct Ran {
    /// The exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Ran {
    pub fn from(output: Output) -> Ran {
        Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, showing the output if it differs.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Ran {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Standard output and error together.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Which backend a test's data lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the test's directory.
    Sqlite,
    /// A schema of its own in the test PostgreSQL database.
    Postgres,
    /// A database of its own on the test MariaDB/MySQL server.
    Mysql,
}

/// The test process's own peak resident memory in KiB (`VmHWM`). A child
/// spawned from it inherits it as a floor of its `ru_maxrss`: the kernel
/// counts the memory the child shared with this process before its exec,
/// so a child's peak can only be told apart from this one above it.
pub fn own_peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .expect("VmHWM in /proc/self/status")
}

/// Waits for `child` to end and returns what it printed with its peak
/// resident memory in KiB, as the kernel accounted it for that process
/// (see [`own_peak_rss`] for its floor).
pub fn wait_with_peak_rss(mut child: std::process::Child) -> (Ran, u64) {
    use std::io::Read as _;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let _ = stderr.read_to_end(&mut err);
        err
    });
    let _ = stdout.read_to_end(&mut out);
    let err = reader.join().expect("stderr reader");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    #[expect(
        unsafe_code,
        reason = "wait4 is the only way to read one child's peak RSS"
    )]
    let (pid, usage) = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let pid = libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage);
        (pid, usage)
    };
    assert!(pid > 0, "wait4 failed: {}", std::io::Error::last_os_error());
    use std::os::unix::process::ExitStatusExt as _;
    let ran = Ran::from(std::process::Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout: out,
        stderr: err,
    });
    (ran, u64::try_from(usage.ru_maxrss).unwrap_or(0))
}

/// One test's world: a directory, a database, and the refill binary.
pub struct World {
    /// The test's directory; specs and the default state store live here.
    pub dir: tempfile::TempDir,
    /// The backend.
    pub backend: Backend,
    /// The PostgreSQL schema, for PostgreSQL worlds.
    pub schema: Option<String>,
    /// The MariaDB/MySQL database, for MySQL worlds.
    pub database: Option<String>,
    rt: tokio::runtime::Runtime,
    pool: AnyPool,
    /// The PostgreSQL server, when it is not the test server (a throwaway
    /// cluster).
    server: Option<String>,
    /// Shared use of the PostgreSQL server, or the exclusive use a test that
    /// restarts it needs. Dropped last.
    _server: Option<ServerUse>,
}

/// Every PostgreSQL world shares the server; a test that restarts it takes
/// it for itself, after the others finish.
static SERVER: RwLock<()> = RwLock::new(());
/// The same for the MariaDB/MySQL server: a test that measures the whole
/// server (its running threads, its history list) takes it for itself.
static MYSQL_SERVER: RwLock<()> = RwLock::new(());

/// The machine's two cores. A test that bounds a wall time or a rate from
/// above takes them for itself with [`measuring`]; a test that loads them
/// for minutes (cold compiles) shares them with [`loading_the_cpus`]. So a
/// measurement never runs beside a compile: a worker rate of 2,051 rows/s
/// against a bound of 2,400 was measured that way.
static CPUS: RwLock<()> = RwLock::new(());

/// Held by a test that measures time: no CPU-heavy test runs meanwhile.
pub fn measuring() -> RwLockWriteGuard<'static, ()> {
    CPUS.write().unwrap_or_else(|e| e.into_inner())
}

/// Held by a test that keeps the cores busy for minutes.
pub fn loading_the_cpus() -> RwLockReadGuard<'static, ()> {
    CPUS.read().unwrap_or_else(|e| e.into_inner())
}

enum ServerUse {
    Shared(#[expect(dead_code, reason = "held for its Drop")] RwLockReadGuard<'static, ()>),
    Exclusive(#[expect(dead_code, reason = "held for its Drop")] RwLockWriteGuard<'static, ()>),
}

impl World {
    /// A fresh world named after the test.
    pub fn new(backend: Backend, name: &str) -> World {
        let server = match backend {
            Backend::Postgres => Some(ServerUse::Shared(
                SERVER.read().unwrap_or_else(|e| e.into_inner()),
            )),
            Backend::Mysql => Some(ServerUse::Shared(
                MYSQL_SERVER.read().unwrap_or_else(|e| e.into_inner()),
            )),
            Backend::Sqlite => None,
        };
        World::with_server(backend, name, server, None)
    }

    /// A PostgreSQL world that has the server to itself: no other test
    /// uses it until this world is dropped.
    pub fn exclusive(name: &str) -> World {
        let server = ServerUse::Exclusive(SERVER.write().unwrap_or_else(|e| e.into_inner()));
        World::with_server(Backend::Postgres, name, Some(server), None)
    }

    /// A MariaDB/MySQL world that has the server to itself.
    pub fn exclusive_mysql(name: &str) -> World {
        let server = ServerUse::Exclusive(MYSQL_SERVER.write().unwrap_or_else(|e| e.into_inner()));
        World::with_server(Backend::Mysql, name, Some(server), None)
    }

    /// A PostgreSQL world on another server, at `url` (a throwaway
    /// cluster).
    pub fn postgres_at(url: &str, name: &str) -> World {
        World::with_server(Backend::Postgres, name, None, Some(url.to_string()))
    }

    fn postgres(&self) -> String {
        self.server.clone().unwrap_or_else(postgres_url)
    }

    fn with_server(
        backend: Backend,
        name: &str,
        server: Option<ServerUse>,
        at: Option<String>,
    ) -> World {
        services_up();
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let dir = tempfile::Builder::new()
            .prefix(&format!("refill-{name}-"))
            .tempdir()
            .expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut database = None;
        let (pool, schema) = match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("data.db").display());
                (
                    rt.block_on(AnyPoolOptions::new().max_connections(1).connect(&url))
                        .expect("open sqlite"),
                    None,
                )
            }
            Backend::Mysql => {
                // MariaDB's names stop at 64 characters: a long test name
                // keeps its head and a hash of the whole.
                let name = if name.len() > 48 {
                    let hash = refill::transform::digest(name.as_bytes());
                    format!("e2e_{}_{}", &name[..40], &hash[..8])
                } else {
                    format!("e2e_{name}")
                };
                let server = rt
                    .block_on(
                        AnyPoolOptions::new()
                            .max_connections(1)
                            .connect(&mysql_url()),
                    )
                    .expect("connect to MariaDB/MySQL (is REFILL_TEST_MYSQL_URL right?)");
                for sql in [
                    format!("DROP DATABASE IF EXISTS {name}"),
                    format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"),
                ] {
                    rt.block_on(sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&server))
                        .expect("create database");
                }
                rt.block_on(server.close());
                let pool = rt
                    .block_on(
                        AnyPoolOptions::new()
                            .max_connections(1)
                            .connect(&with_database(&mysql_url(), &name)),
                    )
                    .expect("connect to the test database");
                database = Some(name);
                (pool, None)
            }
            Backend::Postgres => {
                let schema = format!("e2e_{name}");
                let pool = rt
                    .block_on(
                        AnyPoolOptions::new()
                            .max_connections(1)
                            .connect(at.as_deref().unwrap_or(&postgres_url())),
                    )
                    .expect("connect to PostgreSQL (is REFILL_TEST_POSTGRES_URL right?)");
                for sql in [
                    format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
                    format!("CREATE SCHEMA {schema}"),
                ] {
                    rt.block_on(sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool))
                        .expect("create schema");
                }
                (pool, Some(schema))
            }
        };
        World {
            dir,
            backend,
            schema,
            database,
            rt,
            pool,
            server: at,
            _server: server,
        }
    }

    /// The source url for specs.
    pub fn url(&self) -> String {
        match self.backend {
            Backend::Sqlite => "sqlite://data.db".to_string(),
            Backend::Postgres => self.postgres(),
            Backend::Mysql => with_database(
                &mysql_url(),
                self.database
                    .as_deref()
                    .expect("a MySQL world has a database"),
            ),
        }
    }

    /// The url of this world's database for the tests' own connections:
    /// [`url`](World::url), with a SQLite file's absolute path.
    pub fn direct_url(&self) -> String {
        match self.backend {
            Backend::Sqlite => format!("sqlite://{}", self.dir.path().join("data.db").display()),
            _ => self.url(),
        }
    }

    /// The type of a text key column in this world's SQL: MariaDB needs a
    /// length for a key, and a binary collation to tell keys apart by case
    /// as the other databases do.
    pub fn text_key(&self) -> &'static str {
        match self.backend {
            Backend::Mysql => "VARCHAR(191) COLLATE utf8mb4_bin",
            _ => "TEXT",
        }
    }

    /// `expr` cast to text in this world's SQL.
    pub fn text(&self, expr: &str) -> String {
        match self.backend {
            Backend::Mysql => format!("CAST({expr} AS CHAR)"),
            _ => format!("CAST({expr} AS TEXT)"),
        }
    }

    /// The `[state]` table for specs: the default SQLite file for SQLite
    /// worlds, the world's own PostgreSQL schema for PostgreSQL worlds and
    /// its own database for MySQL worlds (so every PostgreSQL and MariaDB
    /// test also exercises a state store on that server).
    pub fn state_section(&self) -> String {
        match self.state_url() {
            None => String::new(),
            Some(url) => format!("[state]\nurl = \"{url}\"\n"),
        }
    }

    /// The url of a PostgreSQL world's state store: the server, with the
    /// world's schema first on the search path.
    pub fn state_url(&self) -> Option<String> {
        // A MySQL world keeps its state store in its own database.
        if self.backend == Backend::Mysql {
            return Some(self.url());
        }
        let schema = self.schema.as_ref()?;
        let url = self.postgres();
        let sep = if url.contains('?') { '&' } else { '?' };
        Some(format!("{url}{sep}options=-c%20search_path%3D{schema}"))
    }

    /// Whether a state store was created.
    pub fn state_exists(&self) -> bool {
        match &self.schema {
            None if self.backend == Backend::Mysql => !self
                .rows(
                    "SELECT table_name FROM information_schema.tables \
                     WHERE table_schema = DATABASE() AND table_name LIKE 'refill%'",
                )
                .is_empty(),
            None => self.dir.path().join(".refill").exists(),
            Some(schema) => !self
                .rows(&format!(
                    "SELECT table_name FROM information_schema.tables \
                     WHERE table_schema = '{schema}' AND table_name LIKE 'refill%'"
                ))
                .is_empty(),
        }
    }

    /// Runs a text-only query on the state store (the world's PostgreSQL
    /// schema, or its SQLite file).
    pub fn state_rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        match &self.schema {
            Some(schema) => self.rows(&sql.replace("refill_", &format!("{schema}.refill_"))),
            None if self.backend == Backend::Mysql => self.rows(sql),
            None => {
                let url = format!(
                    "sqlite://{}",
                    self.dir.path().join(".refill/state.db").display()
                );
                let pool = self
                    .rt
                    .block_on(AnyPoolOptions::new().max_connections(1).connect(&url))
                    .expect("open the state store");
                let rows = self
                    .rt
                    .block_on(sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).fetch_all(&pool))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                rows.iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| r.try_get::<Option<String>, _>(i).expect("text column"))
                            .collect()
                    })
                    .collect()
            }
        }
    }

    /// A `schema = "…"` line for specs ([source] and [target]), or nothing.
    pub fn schema_line(&self) -> String {
        self.schema
            .as_ref()
            .map(|s| format!("schema = \"{s}\""))
            .unwrap_or_default()
    }

    /// A table name qualified for this world's SQL.
    pub fn table(&self, name: &str) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{name}"),
            None => name.to_string(),
        }
    }

    /// Runs SQL statements (separated by `;` at line ends).
    pub fn exec(&self, sql: &str) {
        for statement in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
            self.rt
                .block_on(
                    sqlx::query(sqlx::AssertSqlSafe(statement.to_string())).execute(&self.pool),
                )
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
    }

    /// Runs a query whose columns are all text (cast them), returning rows.
    pub fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let rows = self
            .rt
            .block_on(sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).fetch_all(&self.pool))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get::<Option<String>, _>(i).expect("text column"))
                    .collect()
            })
            .collect()
    }

    /// Every row of a table as text, in key order: to check nothing changed.
    pub fn snapshot(&self, table: &str, columns: &str) -> Vec<Vec<Option<String>>> {
        let casted: Vec<String> = columns.split(',').map(|c| self.text(c.trim())).collect();
        self.rows(&format!(
            "SELECT {} FROM {} ORDER BY 1",
            casted.join(", "),
            self.table(table)
        ))
    }

    /// Writes a file in the test directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// A `refill` command running in the test directory.
    pub fn refill(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_refill"));
        cmd.current_dir(self.dir.path())
            .env(
                "REFILL_CACHE_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("component-cache"),
            )
            .env("REFILL_LOG", "refill=info")
            .env_remove("REFILL_STATE")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `refill ARGS` to the end.
    pub fn run(&self, args: &[&str]) -> Ran {
        Ran::from(self.refill().args(args).output().expect("run refill"))
    }

    /// Starts `refill ARGS` without waiting.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.refill()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn refill")
    }

    /// Polls `refill status` until the newest run of `spec.toml` has at
    /// least `n` chunks done (a condition, checked every 20 ms, for two
    /// minutes at most). Fails if the run ends first.
    pub fn wait_for_chunks(&self, child: &mut Child, n: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().expect("poll child") {
                use std::io::Read as _;
                let mut out = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = stderr.read_to_string(&mut out);
                }
                panic!("the run ended ({status}) before it could be interrupted:\n{out}");
            }
            let ran = self.run(&["status", "--json", "--spec", "spec.toml"]);
            if ran.code == Some(0) {
                let list: serde_json::Value = serde_json::from_str(&ran.stdout).expect("json");
                if list[0]["chunks_done"].as_u64().unwrap_or(0) >= n {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no progress within two minutes"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `refill status RUN --json` for the spec, parsed.
    pub fn status(&self, spec: &str, run: Option<&str>) -> serde_json::Value {
        let mut args = vec!["status", "--json", "--spec", spec];
        if let Some(run) = run {
            args.push(run);
        }
        let ran = self.run(&args);
        ran.expect_code(0);
        serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", ran.stdout))
    }
}

/// Polls `probe` every 50 ms until it returns something, for `limit` at
/// most; returns it and how long it took.
#[track_caller]
pub fn until<T>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let started = Instant::now();
    loop {
        if let Some(v) = probe() {
            return (v, started.elapsed());
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What `refill status` says the newest run of `spec` is doing, and why
/// (nothing before the run is recorded).
pub fn live(w: &World, spec: &str) -> Option<(String, String)> {
    let ran = w.run(&["status", "--json", "--spec", spec]);
    let list: serde_json::Value = serde_json::from_str(&ran.stdout).ok()?;
    let live = &list.get(0)?["live"];
    Some((
        live["state"].as_str()?.to_string(),
        live["reason"].as_str().unwrap_or_default().to_string(),
    ))
}

/// Chunks done so far in the state store.
pub fn chunks_done(w: &World) -> u64 {
    w.state_rows(&format!(
        "SELECT {} FROM refill_chunks WHERE status = 'done'",
        w.text("count(*)")
    ))[0][0]
        .as_deref()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Sends SIGINT (what Ctrl-C sends) to `child`.
pub fn interrupt(child: &Child) {
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
}

/// Waits for a child started with `--metrics-addr 127.0.0.1:0` to say
/// where it serves them (first on its stderr); returns the address and a
/// thread that drains the rest of its stderr and returns it.
pub fn metrics_addr(child: &mut Child) -> (String, std::thread::JoinHandle<String>) {
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read stderr") > 0,
            "no address"
        );
        if let Some(rest) = line
            .trim()
            .strip_prefix("refill: serving metrics on http://")
        {
            break rest.trim_end_matches("/metrics").to_string();
        }
    };
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    (addr, drain)
}

/// `GET /metrics` over a plain TCP connection; returns the body.
pub fn scrape(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to metrics");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    body.to_string()
}

/// The samples of an exposition: name, labels as written, value.
pub fn parse(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("a number: {l}")),
            };
            (name.to_string(), labels.to_string(), value)
        })
        .collect()
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(schema) = &self.schema
            && !std::thread::panicking()
        {
            let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            let _ = self
                .rt
                .block_on(sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&self.pool));
        }
        if let Some(database) = &self.database
            && !std::thread::panicking()
        {
            let sql = format!("DROP DATABASE IF EXISTS {database}");
            let _ = self
                .rt
                .block_on(sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&self.pool));
        }
    }
}
