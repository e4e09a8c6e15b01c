//! The built-in health indicators, each pausing a run on the real
//! databases: a VACUUM on the target table, WAL per second, a failing
//! archiver (on a throwaway cluster from `initdb`, since `archive_mode`
//! needs a restart), a replication slot holding back WAL, active backends
//! and MariaDB's `Threads_running` (over their critical thresholds they stop
//! the run, which then resumes), and the InnoDB history list length. And
//! `plan` refuses an indicator the role cannot see.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use sqlx::Connection as _;

use crate::fixtures::*;
use crate::harness::*;

/// `remap` over 15,000 quotes, unlimited (so only the indicators the test
/// names are on), with a `[throttle.health]` table.
fn health_spec(w: &World, health: &str) -> String {
    remap_spec(w, 1000, "")
        + "\n[throttle]\nmode = \"unlimited\"\n[throttle.health]\n"
        + health
        + "\n"
}

/// Waits until the run of `spec` is throttled for a reason containing
/// `why`; returns the reason. Nothing is done meanwhile.
fn paused(w: &World, spec: &str, why: &str) -> String {
    let mut last = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let reason = loop {
        let now = live(w, spec);
        if let Some((state, reason)) = &now
            && state == "throttled"
            && reason.contains(why)
        {
            break reason.clone();
        }
        if now.is_some() {
            last = now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not pause on {why} within 60 s; it was last {last:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(chunks_done(w), 0, "fail closed: no chunk ran ({reason})");
    reason
}

/// Waits for the child to exit; returns what it printed and its code.
fn finish(child: Child) -> Ran {
    Ran::from(child.wait_with_output().expect("wait for refill"))
}

/// A session of its own, on a thread, running `statements` in turn; it
/// ends when they do or when [`Busy::stop`] ends its connection.
struct Busy {
    /// The server's id for the session (PostgreSQL's backend pid, MySQL's
    /// connection id).
    id: String,
    thread: std::thread::JoinHandle<()>,
}

impl Busy {
    /// Connects to `url` and starts `statements`; returns once connected.
    fn start(url: &str, backend: Backend, statements: &[&str]) -> Busy {
        let url = url.to_string();
        let statements: Vec<String> = statements.iter().map(|s| (*s).to_string()).collect();
        let (id_tx, id_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            sqlx::any::install_default_drivers();
            rt.block_on(async {
                let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
                let ask = match backend {
                    Backend::Mysql => "SELECT CAST(CONNECTION_ID() AS CHAR)",
                    _ => "SELECT CAST(pg_backend_pid() AS TEXT)",
                };
                let id: String = sqlx::query_scalar(ask)
                    .fetch_one(&mut conn)
                    .await
                    .expect("session id");
                id_tx.send(id).expect("send the id");
                for sql in statements {
                    // Ended from outside: that is how it stops.
                    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await
                    {
                        eprintln!("busy session ended: {e}");
                        return;
                    }
                }
            });
        });
        let id = id_rx.recv().expect("the session connected");
        Busy { id, thread }
    }

    /// Ends the session from `w`'s connection, and waits for its thread.
    fn stop(self, w: &World) {
        match w.backend {
            Backend::Mysql => w.exec(&format!("KILL {}", self.id)),
            _ => {
                w.rows(&format!(
                    "SELECT CAST(pg_terminate_backend({}) AS TEXT)",
                    self.id
                ));
            }
        }
        self.thread.join().expect("busy session");
    }
}

#[test]
fn a_vacuum_on_the_target_table_pauses_the_run() {
    let w = World::new(Backend::Postgres, "health_vacuum");
    quotes(&w, 15_000, false);
    w.write("spec.toml", &health_spec(&w, "vacuum = true"));
    // A manual VACUUM slowed to a crawl stands in for autovacuum: one page
    // per 400 ms.
    let vacuum = Busy::start(
        &postgres_url(),
        Backend::Postgres,
        &[
            "SET vacuum_cost_delay = 100",
            "SET vacuum_cost_limit = 1",
            "SET vacuum_cost_page_hit = 10",
            "SET vacuum_cost_page_miss = 10",
            &format!("VACUUM {}", w.table("quotes")),
        ],
    );
    let progress = format!(
        "SELECT CAST(phase AS TEXT) FROM pg_stat_progress_vacuum WHERE relid = '{}'::regclass",
        w.table("quotes")
    );
    until("the VACUUM runs", Duration::from_secs(30), || {
        (!w.rows(&progress).is_empty()).then_some(())
    });
    let child = w.spawn(&["run", "spec.toml", "--execute"]);
    let reason = paused(&w, "spec.toml", "VACUUM");
    assert!(
        reason.starts_with("VACUUM (")
            && reason.contains("is running on \"e2e_health_vacuum\".\"quotes\""),
        "{reason}"
    );
    vacuum.stop(&w);
    finish(child).expect_code(0);
    assert_remapped(&w, false);
}

#[test]
fn active_backends_pause_the_run_and_stop_it_over_critical_and_it_resumes() {
    // The whole server's sessions count: no other test may run meanwhile.
    let w = World::exclusive("health_backends");
    quotes(&w, 15_000, false);
    w.write(
        "spec.toml",
        &health_spec(&w, "max_active_backends = 2\ncritical_active_backends = 8"),
    );
    let sleep = ["SELECT pg_sleep(120)"];
    let mut busy: Vec<Busy> = (0..3)
        .map(|_| Busy::start(&postgres_url(), Backend::Postgres, &sleep))
        .collect();
    let child = w.spawn(&["run", "spec.toml", "--execute"]);
    let reason = paused(&w, "spec.toml", "active");
    assert!(
        reason.contains(
            "sessions other than refill's are running a statement, over max_active_backends 2"
        ),
        "{reason}"
    );
    // Six more: over the critical threshold, the run stops, resumably.
    busy.extend((0..6).map(|_| Busy::start(&postgres_url(), Backend::Postgres, &sleep)));
    let stopped = finish(child);
    stopped.expect_code(4);
    assert!(
        stopped
            .all()
            .contains("stopped by a critical health indicator")
            && stopped.all().contains("over critical_active_backends 8"),
        "{}",
        stopped.all()
    );
    let run = &w.status("spec.toml", None)[0]["run"];
    assert_eq!(run["status"], "incomplete", "{run}");
    for b in busy {
        b.stop(&w);
    }
    let resumed = w.run(&["run", "spec.toml", "--execute"]);
    resumed.expect_code(0);
    assert_eq!(
        w.status("spec.toml", None)[0]["run"]["run_id"],
        run["run_id"],
        "the same run goes on"
    );
    assert_remapped(&w, false);
}

#[test]
fn a_high_wal_rate_pauses_the_run() {
    // WAL is the whole server's: no other test may run meanwhile.
    let w = World::exclusive("health_wal");
    quotes(&w, 15_000, false);
    let filler = w.table("filler");
    w.exec(&format!("CREATE TABLE {filler} (v text)"));
    w.write("spec.toml", &health_spec(&w, "max_wal_rate = 2"));
    // About 10 MB of WAL every 0.2 s, for at most two minutes.
    let writer = Busy::start(
        &postgres_url(),
        Backend::Postgres,
        &[&format!(
            "DO $$ BEGIN FOR i IN 1..600 LOOP \
               INSERT INTO {filler} SELECT repeat('x', 500) FROM generate_series(1, 10000); \
               COMMIT; PERFORM pg_sleep(0.2); END LOOP; END $$"
        )],
    );
    let child = w.spawn(&["run", "spec.toml", "--execute"]);
    let reason = paused(&w, "spec.toml", "MB/s, over max_wal_rate");
    assert!(
        reason.starts_with("WAL is generated at") && reason.ends_with("MB/s, over max_wal_rate 2"),
        "{reason}"
    );
    writer.stop(&w);
    finish(child).expect_code(0);
    assert_remapped(&w, false);
}

/// Drops a replication slot when dropped, so a failed test leaves no WAL
/// held back on the shared server.
struct Slot<'a>(&'a World, &'static str);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.rows(&format!(
            "SELECT CAST(pg_drop_replication_slot(slot_name) AS TEXT) FROM pg_replication_slots WHERE slot_name = '{}'",
            self.1
        ));
    }
}

#[test]
fn a_replication_slot_holding_back_wal_pauses_the_run() {
    let w = World::exclusive("health_slot");
    quotes(&w, 15_000, false);
    let slot = Slot(&w, "refill_e2e_health_slot");
    w.rows(&format!(
        "SELECT CAST(slot_name AS TEXT) FROM pg_create_physical_replication_slot('{}', true)",
        slot.1
    ));
    let filler = w.table("filler");
    w.exec(&format!(
        "CREATE TABLE {filler} AS SELECT repeat('x', 500) AS v FROM generate_series(1, 10000)"
    ));
    w.write("spec.toml", &health_spec(&w, "max_slot_retained_wal = 1"));
    let child = w.spawn(&["run", "spec.toml", "--execute"]);
    let reason = paused(&w, "spec.toml", "slot");
    assert!(
        reason.starts_with("replication slot ")
            && reason.ends_with("MB of WAL, over max_slot_retained_wal 1"),
        "{reason}"
    );
    drop(slot);
    finish(child).expect_code(0);
    assert_remapped(&w, false);
}

/// A throwaway PostgreSQL cluster in a temporary folder, stopped when
/// dropped.
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Cluster {
    /// `initdb`, then starts the server with `settings` (`name=value`).
    fn start(settings: &[&str]) -> Cluster {
        let bin = server_bin();
        let dir = tempfile::Builder::new()
            .prefix("refill-cluster-")
            .tempdir()
            .expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let data = dir.path().join("data");
        let root = running_as_root();
        if root {
            // The server refuses to run as root: the folder goes to postgres.
            run_ok(Command::new("chown").args(["postgres:"]).arg(dir.path()));
        }
        let as_server = |tool: &str| {
            let mut cmd = if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
                c
            } else {
                Command::new(bin.join(tool))
            };
            cmd.current_dir(dir.path());
            cmd
        };
        run_ok(
            as_server("initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
        );
        // In the configuration file, not on the command line, so that
        // ALTER SYSTEM can change them.
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        for s in settings {
            text.push_str(&format!("\n{s}\n"));
        }
        std::fs::write(&conf, text).expect("write postgresql.conf");
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.path().display()
        );
        run_ok(
            as_server("pg_ctl")
                .args(["-w", "-D"])
                .arg(&data)
                .args(["-l"])
                .arg(dir.path().join("log"))
                .args(["-o", &options, "start"]),
        );
        Cluster { dir, bin, port }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_ctl);
            c
        } else {
            Command::new(pg_ctl)
        };
        let _ = cmd
            .args(["-D"])
            .arg(data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// Whether the tests run as root (the server must then run as postgres).
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The folder of PostgreSQL's server programs (`initdb`, `pg_ctl`).
fn server_bin() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .find(|d| Path::new(d).join("initdb").exists())
        })
        .expect("PostgreSQL's initdb (the postgresql package)")
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("start a PostgreSQL tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_failing_archiver_pauses_the_run_until_it_archives_again() {
    let cluster = Cluster::start(&[
        "archive_mode=on",
        "archive_command=false",
        "wal_level=replica",
    ]);
    let w = World::postgres_at(&cluster.url(), "health_archiver");
    quotes(&w, 15_000, false);
    // A finished segment the archiver cannot copy.
    w.rows("SELECT CAST(pg_switch_wal() AS TEXT)");
    until("the archiver fails", Duration::from_secs(30), || {
        (w.rows("SELECT CAST(failed_count AS TEXT) FROM pg_stat_archiver")[0][0].as_deref()
            != Some("0"))
        .then_some(())
    });
    w.write("spec.toml", &health_spec(&w, "archiver = true"));
    let child = w.spawn(&["run", "spec.toml", "--execute"]);
    let reason = paused(&w, "spec.toml", "archiver");
    assert!(
        reason.starts_with("the WAL archiver is failing"),
        "{reason}"
    );
    // Fixed: the archiver copies the segment on its next try.
    w.exec("ALTER SYSTEM SET archive_command = 'true'");
    w.rows("SELECT CAST(pg_reload_conf() AS TEXT)");
    finish(child).expect_code(0);
    assert_remapped(&w, false);
}

#[test]
fn plan_refuses_an_indicator_the_role_cannot_see_and_warns_of_a_default_one() {
    let w = World::new(Backend::Postgres, "health_blind");
    quotes(&w, 100, false);
    let role = "refill_e2e_health_blind";
    w.exec(&format!(
        "DROP ROLE IF EXISTS {role};\nCREATE ROLE {role} LOGIN;\n\
         GRANT USAGE ON SCHEMA e2e_health_blind TO {role};\n\
         GRANT SELECT ON {} TO {role}",
        w.table("quotes")
    ));
    let plain = postgres_url().replacen("postgres@", &format!("{role}@"), 1);
    assert!(plain.contains(role), "the test url names a user: {plain}");
    // The state store stays in the test folder: the role may not write
    // the schema.
    let spec = remap_spec(&w, 1000, "");
    let spec = spec
        .split("[state]")
        .next()
        .expect("a spec")
        .replace(&postgres_url(), &plain);
    w.write("spec.toml", &spec);
    // The defaults judge what the role sees, with a warning.
    let defaults = w.run(&["plan", "spec.toml"]);
    // Set by the spec, the indicator would wait on what it cannot see.
    w.write(
        "strict.toml",
        &format!("{spec}\n[throttle.health]\nvacuum = true\n"),
    );
    let strict = w.run(&["plan", "strict.toml"]);
    w.exec(&format!(
        "REVOKE ALL ON {} FROM {role};\nREVOKE ALL ON SCHEMA e2e_health_blind FROM {role};\nDROP ROLE {role}",
        w.table("quotes")
    ));
    defaults.expect_code(0);
    assert!(
        defaults
            .all()
            .contains("[throttle.health] vacuum: role refill_e2e_health_blind cannot see")
            && defaults
                .all()
                .contains("the default indicator judges only what the role sees"),
        "{}",
        defaults.all()
    );
    strict.expect_code(2);
    assert!(
        strict
            .stderr
            .contains("[throttle.health] vacuum: role refill_e2e_health_blind")
            && strict
                .stderr
                .contains("GRANT pg_monitor TO refill_e2e_health_blind, or set vacuum = false"),
        "{}",
        strict.all()
    );
    // An indicator of another database is refused by name.
    w.write("other.toml", &health_spec(&w, "max_threads_running = 10"));
    let ran = w.run(&["plan", "other.toml"]);
    ran.expect_code(2);
    assert!(
        ran.stderr.contains(
            "max_threads_running is measured on MySQL/MariaDB only, and the source is PostgreSQL"
        ),
        "{}",
        ran.all()
    );
}

#[test]
fn threads_running_pause_the_run_and_stop_it_over_critical_on_mariadb() {
    let w = World::exclusive_mysql("health_threads");
    quotes(&w, 3_000, false);
    w.write(
        "spec.toml",
        &health_spec(&w, "max_threads_running = 4\ncritical_threads_running = 8"),
    );
    let sleep = ["SELECT SLEEP(120)"];
    let mut busy: Vec<Busy> = (0..4)
        .map(|_| Busy::start(&w.url(), Backend::Mysql, &sleep))
        .collect();
    let child = w.spawn(&["run", "spec.toml", "--execute"]);
    let reason = paused(&w, "spec.toml", "Threads_running");
    assert!(reason.contains(", over max_threads_running 4"), "{reason}");
    busy.extend((0..4).map(|_| Busy::start(&w.url(), Backend::Mysql, &sleep)));
    let stopped = finish(child);
    stopped.expect_code(4);
    assert!(
        stopped.all().contains("over critical_threads_running 8"),
        "{}",
        stopped.all()
    );
    for b in busy {
        b.stop(&w);
    }
    w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
    assert_remapped(&w, false);
}

#[test]
fn a_long_history_list_pauses_the_run_on_mariadb() {
    let w = World::exclusive_mysql("health_history");
    quotes(&w, 3_000, false);
    let other = w.table("other");
    w.exec(&format!(
        "CREATE TABLE {other} (id INT PRIMARY KEY, v INT);\nINSERT INTO {other} VALUES (1, 0)"
    ));
    // An old snapshot keeps purge from removing the undo of the updates
    // after it.
    let snapshot = Busy::start(
        &w.url(),
        Backend::Mysql,
        &[
            "START TRANSACTION WITH CONSISTENT SNAPSHOT",
            &format!("SELECT * FROM {other}"),
            "SELECT SLEEP(120)",
        ],
    );
    // The length now, whatever other work left: the threshold is 150 over
    // it, and 300 updates raise it by 300.
    let before: i64 = w.rows(
        "SELECT CAST(`count` AS CHAR) FROM information_schema.innodb_metrics WHERE `name` = 'trx_rseg_history_len'",
    )[0][0]
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("the history list length");
    let most = before + 150;
    for i in 0..300 {
        w.exec(&format!("UPDATE {other} SET v = {i} WHERE id = 1"));
    }
    w.write(
        "spec.toml",
        &health_spec(&w, &format!("max_history_length = {most}")),
    );
    let child = w.spawn(&["run", "spec.toml", "--execute"]);
    let reason = paused(&w, "spec.toml", "history");
    assert!(
        reason.starts_with("the InnoDB history list length is")
            && reason.ends_with(&format!(", over max_history_length {most}")),
        "{reason}"
    );
    snapshot.stop(&w);
    finish(child).expect_code(0);
    assert_remapped(&w, false);
}
