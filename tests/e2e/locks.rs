//! Production comes first: a backfill never queues behind the
//! application's row locks. An application transaction holds one row of a
//! 100,000-row table locked while refill runs; the application's other
//! rows stay writable, the run writes everything else, defers the locked
//! row, and writes it once it is released (or, held too long, makes it a
//! dead letter saying so). On the real PostgreSQL and MariaDB.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use sqlx::Connection as _;

use crate::fixtures::*;
use crate::harness::*;

/// Rows of the table; the locked row sits in the middle.
const ROWS: i64 = 100_000;
/// The row the application holds locked (in scope: not a multiple of 3).
const LOCKED: i64 = 50_000;
/// Rows of the locked row's chunk that the application writes meanwhile.
const NEIGHBOURS: [i64; 2] = [49_999, 50_002];

/// An application transaction holding one row locked until released.
struct Holder {
    release: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Holder {
    /// Locks row `id` of `world`'s `quotes` in a transaction of its own;
    /// returns once the lock is held.
    fn lock(world: &World, id: i64) -> Holder {
        let (url, table) = (world.url(), world.table("quotes"));
        let (locked_tx, locked) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            sqlx::any::install_default_drivers();
            rt.block_on(async {
                let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
                let mut tx = conn.begin().await.expect("begin");
                let sql = format!("UPDATE {table} SET region = region WHERE id = {id}");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await
                    .expect("lock the row");
                locked_tx.send(()).expect("signal");
                // Held until the test lets go (or drops the sender).
                let _ = released.recv();
                tx.commit().await.expect("commit");
            });
        });
        locked.recv().expect("the row is locked");
        Holder { release, thread }
    }

    /// Commits the holding transaction.
    fn release(self) {
        let _ = self.release.send(());
        self.thread.join().expect("holder");
    }
}

/// The application's writes of other rows of the locked row's chunk, in a
/// loop until stopped; returns the slowest one. Each waits at most 10 s
/// (a statement that queued longer is counted as 10 s).
struct Neighbours {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(Duration, u64)>,
}

impl Neighbours {
    fn start(world: &World) -> Neighbours {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (url, table, backend) = (world.url(), world.table("quotes"), world.backend);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            sqlx::any::install_default_drivers();
            rt.block_on(async {
                let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
                let bound = match backend {
                    Backend::Mysql => "SET SESSION innodb_lock_wait_timeout = 10",
                    _ => "SET lock_timeout = '10s'",
                };
                sqlx::query(bound).execute(&mut conn).await.expect("bound");
                let (mut slowest, mut writes) = (Duration::ZERO, 0);
                while !flag.load(Ordering::Relaxed) {
                    for id in NEIGHBOURS {
                        let sql = format!("UPDATE {table} SET status = status WHERE id = {id}");
                        let started = Instant::now();
                        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                            .execute(&mut conn)
                            .await;
                        let took = if done.is_ok() {
                            started.elapsed()
                        } else {
                            Duration::from_secs(10)
                        };
                        slowest = slowest.max(took);
                        writes += 1;
                    }
                    // The application's own pace, not synchronization.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (slowest, writes)
            })
        });
        Neighbours { stop, thread }
    }

    fn stop(self) -> (Duration, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("neighbours")
    }
}

/// Rows of the newest run checkpointed so far, from `status`.
fn checkpointed(w: &World) -> u64 {
    let ran = w.run(&["status", "--json", "--spec", "spec.toml"]);
    if ran.code != Some(0) {
        return 0;
    }
    let list: serde_json::Value = serde_json::from_str(&ran.stdout).expect("json");
    list[0]["totals"]["rows"].as_u64().unwrap_or(0)
}

/// Polls `cond` every 20 ms until it holds, for `within` at most; fails
/// with `what` if it does not, or if `child` ends first.
fn wait_until(
    child: &mut std::process::Child,
    within: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + within;
    while !cond() {
        if let Some(status) = child.try_wait().expect("poll") {
            panic!("refill ended ({status}) before {what}");
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lock_spec(w: &World, max_lock_wait: &str) -> String {
    remap_spec(w, 1000, "")
        + &format!(
            "\n[timeouts]\nmax_lock_wait = \"{max_lock_wait}\"\n\n[throttle]\nmode = \"unlimited\"\n"
        )
}

fn a_locked_row_is_deferred_and_written_once_released(backend: Backend, name: &str) {
    let w = World::new(backend, name);
    quotes(&w, ROWS, false);
    w.write("spec.toml", &lock_spec(&w, "10m"));
    let in_scope = (1..=ROWS).filter(|&i| in_scope(i)).count() as u64;

    let holder = Holder::lock(&w, LOCKED);
    let neighbours = Neighbours::start(&w);
    let mut child = w.spawn(&["run", "spec.toml", "--execute"]);
    // Every chunk but the locked row is written while the lock is held.
    wait_until(
        &mut child,
        Duration::from_secs(120),
        "90% of the rows were checkpointed",
        || checkpointed(&w) * 10 >= in_scope * 9,
    );
    wait_until(
        &mut child,
        Duration::from_secs(120),
        "every chunk was checkpointed",
        || checkpointed(&w) == in_scope,
    );
    let status = w.status("spec.toml", None);
    let totals = &status[0]["totals"];
    let settled = |t: &serde_json::Value| {
        ["updated", "unchanged", "skipped", "failed"]
            .iter()
            .map(|k| t[k].as_u64().expect("a count"))
            .sum::<u64>()
    };
    // The held row is deferred; so, now and then, is a neighbour the
    // application was writing at the very moment refill came to it (it is
    // tried again and written, unlike the held row). `busy` counts every
    // deferral, so a neighbour written since counts there and as settled:
    // every row not deferred is settled, and the held row is not.
    let busy = totals["busy"].as_u64().expect("a count");
    assert!(busy >= 1, "{status}");
    let done = settled(totals);
    assert!(
        in_scope - busy <= done && done < in_scope,
        "{done} settled of {in_scope}, {busy} deferred: {status}"
    );
    // The row itself is still as it was.
    let held = w.rows(&format!(
        "SELECT {} FROM {} WHERE id = {LOCKED}",
        w.text("status_v2"),
        w.table("quotes")
    ));
    assert_eq!(held, vec![vec![None]], "the locked row was not written");
    let (slowest, writes) = neighbours.stop();
    assert!(writes > 0);
    assert!(
        slowest < Duration::from_secs(2),
        "an application write of another row of the chunk waited {slowest:?}"
    );

    holder.release();
    let out = Ran::from(child.wait_with_output().expect("wait"));
    out.expect_code(0);
    assert_remapped(&w, false);
    let status = w.status("spec.toml", None);
    assert!(
        status[0]["totals"]["busy"].as_u64().is_some_and(|b| b >= 1),
        "{status}"
    );
    assert_eq!(settled(&status[0]["totals"]), in_scope, "{status}");
    assert_eq!(status[0]["run"]["status"], "done", "{status}");
    let run = status[0]["run"]["run_id"].as_str().expect("run");
    let busy = status[0]["totals"]["busy"].as_u64().expect("a count");
    let text = w.run(&["status", "--spec", "spec.toml", run]).stdout;
    assert!(
        text.contains(&format!(
            "{busy} locked by another transaction when refill came to write {}",
            if busy == 1 { "it" } else { "them" }
        )),
        "{text}"
    );
    let report = w.run(&["report", run, "--spec", "spec.toml"]).stdout;
    assert!(
        report.contains(&format!("{busy} locked by another transaction")),
        "{report}"
    );
}

fn a_row_locked_too_long_becomes_a_dead_letter_that_retry_writes(backend: Backend, name: &str) {
    let w = World::new(backend, name);
    quotes(&w, 3000, false);
    w.write("spec.toml", &lock_spec(&w, "2s"));
    let holder = Holder::lock(&w, 2000);
    let out = w.run(&["run", "spec.toml", "--execute"]);
    out.expect_code(1);
    let letters = w.state_rows("SELECT row_key, error, kind FROM refill_dead_letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0][0].as_deref(), Some("2000"));
    assert_eq!(letters[0][2].as_deref(), Some("locked"));
    let error = letters[0][1].clone().unwrap_or_default();
    assert!(
        error.contains("locked by another transaction for more than 2s"),
        "{error}"
    );
    if backend == Backend::Postgres {
        // PostgreSQL names the holder: its pid and what it ran.
        assert!(error.contains("pid "), "{error}");
        assert!(error.contains("SET region = region"), "{error}");
    }
    assert!(
        w.state_rows("SELECT row_key FROM refill_deferred")
            .is_empty()
    );
    holder.release();
    let run = w.status("spec.toml", None)[0]["run"]["run_id"]
        .as_str()
        .expect("run")
        .to_string();
    w.run(&["retry", &run, "--spec", "spec.toml", "--execute"])
        .expect_code(0);
    assert_remapped(&w, false);
}

#[test]
fn postgres_a_locked_row_is_deferred_and_written_once_released() {
    a_locked_row_is_deferred_and_written_once_released(Backend::Postgres, "locks_deferred_pg");
}

#[test]
fn mariadb_a_locked_row_is_deferred_and_written_once_released() {
    a_locked_row_is_deferred_and_written_once_released(Backend::Mysql, "locks_deferred_my");
}

#[test]
fn postgres_a_row_locked_too_long_becomes_a_dead_letter() {
    a_row_locked_too_long_becomes_a_dead_letter_that_retry_writes(
        Backend::Postgres,
        "locks_dead_pg",
    );
}

#[test]
fn mariadb_a_row_locked_too_long_becomes_a_dead_letter() {
    a_row_locked_too_long_becomes_a_dead_letter_that_retry_writes(Backend::Mysql, "locks_dead_my");
}

/// `status_v2` of row `id`.
fn status_v2_of(w: &World, id: i64) -> Option<String> {
    w.rows(&format!(
        "SELECT {} FROM {} WHERE id = {id}",
        w.text("status_v2"),
        w.table("quotes")
    ))
    .remove(0)
    .remove(0)
}

fn a_rollback_defers_a_locked_row_and_puts_it_back_once_released(backend: Backend, name: &str) {
    let w = World::new(backend, name);
    quotes(&w, 3000, false);
    w.write("spec.toml", &lock_spec(&w, "10m"));
    w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
    let run = w.status("spec.toml", None)[0]["run"]["run_id"]
        .as_str()
        .expect("run")
        .to_string();
    // Row 2000 ("open" → "active") is held while the rollback runs.
    assert_eq!(status_v2_of(&w, 2000).as_deref(), Some("active"));
    let holder = Holder::lock(&w, 2000);
    let mut child = w.spawn(&["rollback", &run, "--spec", "spec.toml", "--execute"]);
    // Every other row is put back while the lock is held.
    wait_until(
        &mut child,
        Duration::from_secs(60),
        "every row but the locked one was put back",
        || {
            w.rows(&format!(
                "SELECT {} FROM {} WHERE status_v2 IS NOT NULL AND region = 'eu'",
                w.text("id"),
                w.table("quotes")
            )) == vec![vec![Some("2000".to_string())]]
        },
    );
    holder.release();
    let out = Ran::from(child.wait_with_output().expect("wait"));
    out.expect_code(0);
    assert_eq!(status_v2_of(&w, 2000), None, "{}", out.all());
    assert!(out.stdout.contains("restored"), "{}", out.all());
}

#[test]
fn postgres_a_rollback_defers_a_locked_row() {
    a_rollback_defers_a_locked_row_and_puts_it_back_once_released(
        Backend::Postgres,
        "locks_rollback_pg",
    );
}

#[test]
fn mariadb_a_rollback_defers_a_locked_row() {
    a_rollback_defers_a_locked_row_and_puts_it_back_once_released(
        Backend::Mysql,
        "locks_rollback_my",
    );
}

#[test]
fn a_run_killed_with_a_row_deferred_writes_it_when_resumed() {
    let w = World::new(Backend::Postgres, "locks_resume_pg");
    quotes(&w, 3000, false);
    w.write("spec.toml", &lock_spec(&w, "10m"));
    let in_scope = (1..=3000).filter(|&i| in_scope(i)).count() as u64;
    let holder = Holder::lock(&w, 2000);
    let mut child = w.spawn(&["run", "spec.toml", "--execute"]);
    wait_until(
        &mut child,
        Duration::from_secs(60),
        "every chunk was checkpointed, the locked row deferred",
        || {
            checkpointed(&w) == in_scope
                && w.state_rows("SELECT row_key FROM refill_deferred").len() == 1
        },
    );
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert_eq!(
        w.state_rows("SELECT row_key FROM refill_deferred"),
        vec![vec![Some("2000".to_string())]]
    );
    holder.release();
    let out = w.run(&["run", "spec.toml", "--execute"]);
    out.expect_code(0);
    assert!(out.stdout.contains("(resumed)"), "{}", out.all());
    assert_remapped(&w, false);
    assert!(
        w.state_rows("SELECT row_key FROM refill_deferred")
            .is_empty()
    );
    let status = w.status("spec.toml", None);
    let t = &status[0]["totals"];
    let settled: u64 = ["updated", "unchanged", "skipped", "failed"]
        .iter()
        .map(|k| t[k].as_u64().expect("count"))
        .sum();
    assert_eq!(settled, in_scope, "{status}");
    assert_eq!(t["busy"], 1, "{status}");
}
