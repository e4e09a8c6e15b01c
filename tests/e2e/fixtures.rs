//! Tables and specs shared by the end-to-end tests.

use std::collections::BTreeMap;

use crate::harness::{Backend, World, digest, plugin};

/// The status mapping the tests' `remap` specs use.
pub const MAP: &str = "open=active,won=closed_won,lost=closed_lost";

/// What `MAP` (without a default) does to a status: `Ok(new)` or an error.
pub fn remapped(status: Option<&str>) -> Result<Option<String>, ()> {
    match status {
        None => Ok(None),
        Some("open") => Ok(Some("active".into())),
        Some("won") => Ok(Some("closed_won".into())),
        Some("lost") => Ok(Some("closed_lost".into())),
        Some(_) => Err(()),
    }
}

/// The status of row `i` in [`quotes`]: one in four NULL, and, if `bad` is
/// set, one in a hundred an unmapped `WON` instead.
pub fn status_of(i: i64, bad: bool) -> Option<&'static str> {
    if bad && i % 100 == 7 {
        return Some("WON");
    }
    match i % 4 {
        0 => Some("open"),
        1 => Some("won"),
        2 => Some("lost"),
        _ => None,
    }
}

/// Creates `quotes(id, status, status_v2, region)` with ids 1..=n; a third of
/// the rows are in region `us` (out of the tests' scope `region = 'eu'`) and
/// their `status_v2` starts as `untouched`.
pub fn quotes(world: &World, n: i64, bad: bool) {
    let pk = match world.backend {
        Backend::Sqlite => "INTEGER PRIMARY KEY",
        Backend::Postgres | Backend::Mysql => "BIGINT PRIMARY KEY",
    };
    let t = world.table("quotes");
    if world.backend == Backend::Mysql {
        // MySQL caps recursive CTEs at 1,000 rows by default: the rows are
        // listed instead.
        let rows: Vec<String> = (1..=n)
            .map(|i| {
                let status = status_of(i, bad).map_or("NULL".to_string(), |s| format!("'{s}'"));
                let v2 = if i % 3 == 0 { "'untouched'" } else { "NULL" };
                let region = if i % 3 == 0 { "us" } else { "eu" };
                format!("({i}, {status}, {v2}, '{region}')")
            })
            .collect();
        world.exec(&format!(
            "CREATE TABLE {t} (id {pk}, status TEXT, status_v2 TEXT, region VARCHAR(8) NOT NULL);
             INSERT INTO {t} (id, status, status_v2, region) VALUES {}",
            rows.join(", ")
        ));
        return;
    }
    let bad_case = if bad {
        "WHEN i % 100 = 7 THEN 'WON'"
    } else {
        ""
    };
    world.exec(&format!(
        "CREATE TABLE {t} (id {pk}, status TEXT, status_v2 TEXT, region TEXT NOT NULL);
         WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n})
         INSERT INTO {t} (id, status, status_v2, region)
         SELECT i,
                CASE {bad_case} WHEN i % 4 = 0 THEN 'open' WHEN i % 4 = 1 THEN 'won' WHEN i % 4 = 2 THEN 'lost' ELSE NULL END,
                CASE WHEN i % 3 = 0 THEN 'untouched' ELSE NULL END,
                CASE WHEN i % 3 = 0 THEN 'us' ELSE 'eu' END
         FROM g"
    ));
}

/// A table of `n` events whose `log` column starts as `start`.
pub fn events(w: &World, n: i64) {
    let t = w.table("events");
    let pk = match w.backend {
        Backend::Sqlite => "INTEGER PRIMARY KEY",
        Backend::Postgres | Backend::Mysql => "BIGINT PRIMARY KEY",
    };
    w.exec(&format!("CREATE TABLE {t} (id {pk}, log TEXT NOT NULL)"));
    if w.backend == Backend::Mysql {
        // MySQL caps recursive CTEs at 1,000 rows by default: the rows are
        // listed instead.
        let ids: Vec<i64> = (1..=n).collect();
        for batch in ids.chunks(5_000) {
            let rows: Vec<String> = batch.iter().map(|i| format!("({i}, 'start')")).collect();
            w.exec(&format!(
                "INSERT INTO {t} (id, log) VALUES {}",
                rows.join(", ")
            ));
        }
        return;
    }
    w.exec(&format!(
        "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n})
         INSERT INTO {t} (id, log) SELECT i, 'start' FROM g"
    ));
}

/// The distinct values of the events' `log` column, each with how many rows
/// hold it.
pub fn logs(w: &World) -> Vec<(String, u64)> {
    w.rows(&format!(
        "SELECT log, {} FROM {} GROUP BY log ORDER BY log",
        w.text("count(*)"),
        w.table("events")
    ))
    .into_iter()
    .map(|r| {
        let log = r[0].clone().expect("log is NOT NULL");
        (
            log,
            r[1].as_deref().expect("a count").parse().expect("a number"),
        )
    })
    .collect()
}

/// Whether row `i` of [`quotes`] is in the tests' scope.
pub fn in_scope(i: i64) -> bool {
    i % 3 != 0
}

/// `id → status_v2` of every row of [`quotes`].
pub fn status_v2(world: &World) -> BTreeMap<i64, Option<String>> {
    world
        .rows(&format!(
            "SELECT {}, {} FROM {} ORDER BY id",
            world.text("id"),
            world.text("status_v2"),
            world.table("quotes")
        ))
        .into_iter()
        .map(|r| {
            (
                r[0].as_deref().expect("id").parse().expect("numeric id"),
                r[1].clone(),
            )
        })
        .collect()
}

/// Checks every row of [`quotes`] against what a full `remap` run must
/// leave: in-scope rows mapped (failed rows untouched), others untouched.
#[track_caller]
pub fn assert_remapped(world: &World, bad: bool) {
    for (id, v2) in status_v2(world) {
        let expected = if !in_scope(id) {
            Some("untouched".to_string())
        } else {
            remapped(status_of(id, bad)).unwrap_or(None)
        };
        assert_eq!(v2, expected, "row {id} (status {:?})", status_of(id, bad));
    }
}

/// A spec for `remap` over [`quotes`], in scope `region = 'eu'`. `extra`
/// is appended to the `[transform]` table (limits, config overrides).
pub fn remap_spec(world: &World, chunk_rows: u32, extra: &str) -> String {
    spec(
        world,
        "remap",
        &format!("config = {{ map = \"{MAP}\" }}\n{extra}"),
        chunk_rows,
        "status_v2",
    )
}

/// A spec running `component` over [`quotes`] (status → `target`, scope
/// `region = 'eu'`) with the given `[transform]` body.
pub fn spec(
    world: &World,
    component: &str,
    transform_body: &str,
    chunk_rows: u32,
    target: &str,
) -> String {
    Spec {
        name: &format!("quotes-{component}"),
        table: "quotes",
        key: "id",
        column: "status",
        scope: Some("region = 'eu'"),
        rows: chunk_rows,
        component,
        transform_body,
        target,
    }
    .render(world)
}

/// Writes `spec.toml`: `evil` in `echo` mode from `column` to
/// `column_copy` of the table `typed`, in chunks of `rows`.
pub fn write_echo_spec(world: &World, column: &str, rows: u32) {
    let spec = Spec {
        name: &format!("copy-{column}"),
        table: "typed",
        key: "id",
        column,
        scope: None,
        rows,
        component: "evil",
        transform_body: "config = { mode = \"echo\" }",
        target: &format!("{column}_copy"),
    };
    world.write("spec.toml", &spec.render(world));
}

/// The parts of a one-column spec.
pub struct Spec<'a> {
    /// The backfill's name.
    pub name: &'a str,
    /// The source (and target) table.
    pub table: &'a str,
    /// Its key column.
    pub key: &'a str,
    /// The column read.
    pub column: &'a str,
    /// The `where` condition, if any.
    pub scope: Option<&'a str>,
    /// Rows per chunk (fixed: chunk sizes do not adapt unless a test
    /// replaces `chunk_time = 0`).
    pub rows: u32,
    /// The plugin to run, pinned to its digest.
    pub component: &'a str,
    /// Extra lines of `[transform]`.
    pub transform_body: &'a str,
    /// The column written.
    pub target: &'a str,
}

impl Spec<'_> {
    /// The spec's text for `world` (its database, schema and state store).
    pub fn render(&self, world: &World) -> String {
        let path = plugin(self.component);
        let scope = self
            .scope
            .map(|w| format!("where = \"{w}\""))
            .unwrap_or_default();
        format!(
            r#"name = "{name}"

[source]
url = "{url}"
{schema}
table = "{table}"
key = "{key}"
columns = ["{column}"]
{scope}

[chunk]
rows = {rows}
chunk_time = 0

[transform]
component = "{path}"
sha256 = "{sha}"
{body}

[target]
columns = ["{target}"]

{state}"#,
            name = self.name,
            url = world.url(),
            schema = world.schema_line(),
            table = self.table,
            key = self.key,
            column = self.column,
            rows = self.rows,
            path = path.display(),
            sha = digest(&path),
            body = self.transform_body,
            target = self.target,
            state = world.state_section(),
        )
    }
}

/// The application's new code path, simulated on a thread of its own: it
/// writes `status` and its uppercased copy together, 20 random rows of
/// [`quotes`] (ids 1 to `n`) at a time, until [`Writer::stop`].
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Writer {
    /// Starts writing to `world`'s `quotes` table of `n` rows.
    pub fn start(world: &World, n: i64) -> Writer {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (url, table) = (world.direct_url(), world.table("quotes"));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            sqlx::any::install_default_drivers();
            let pool = rt.block_on(sqlx::AnyPool::connect(&url)).expect("connect");
            let statuses = ["open", "won", "lost", "stale"];
            let mut writes = 0;
            while !flag.load(Ordering::Relaxed) {
                let ids: Vec<String> = (0..20)
                    .map(|_| fastrand::i64(1..=n))
                    .filter(|&i| in_scope(i))
                    .map(|i| i.to_string())
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                // A literal from the list above: the same SQL on every
                // backend.
                let status = statuses[fastrand::usize(..statuses.len())];
                let sql = format!(
                    "UPDATE {table} SET status = '{status}', status_v2 = upper('{status}') WHERE id IN ({})",
                    ids.join(", ")
                );
                rt.block_on(sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool))
                    .expect("write");
                writes += 1;
                // Pacing of the simulated application, not synchronization.
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            writes
        });
        Writer { stop, thread }
    }

    /// Stops writing; returns how many writes it made.
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("writer")
    }
}
