//! Every writer is paced and steerable, on SQLite, PostgreSQL and MariaDB: `refill
//! rollback --execute` and `refill retry --execute` keep `[throttle]
//! max_rows_per_sec`, stop writing while `refill pause` (from another
//! process) stands and go on at `refill resume`, show their session in
//! `refill status` and their state in the metrics, and stop cleanly on
//! Ctrl-C or `refill abort`, finishing when run again.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::both;
use crate::fixtures::*;
use crate::harness::*;

/// Rows in the rolled-back run.
const ROWS: u64 = 10_000;

/// `append-log` over [`events`] (every row's `log` gets `|refill`), in
/// chunks of `rows`, with a `[throttle]` table.
fn append_spec(w: &World, rows: u32, throttle: &str) -> String {
    let text = Spec {
        name: "events-log",
        table: "events",
        key: "id",
        column: "log",
        scope: None,
        rows,
        component: "append-log",
        transform_body: "",
        target: "log",
    }
    .render(w);
    format!("{text}\n[throttle]\n{throttle}\n")
}

/// A run that wrote all [`ROWS`] events, in chunks of `rows`; returns its id.
fn written(w: &World, rows: u32) -> String {
    events(w, i64::try_from(ROWS).expect("a small number"));
    w.write("spec.toml", &append_spec(w, rows, ""));
    w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
    assert_eq!(logs(w), vec![("start|refill".to_string(), ROWS)]);
    latest(w)
}

/// The newest run's id.
fn latest(w: &World) -> String {
    w.status("spec.toml", None)[0]["run"]["run_id"]
        .as_str()
        .expect("a run")
        .to_string()
}

/// Events back to what they held before the run.
fn restored(w: &World) -> u64 {
    logs(w)
        .into_iter()
        .find(|(log, _)| log == "start")
        .map_or(0, |(_, n)| n)
}

/// Fails the test if `child` has exited: what is awaited must happen while
/// it works.
#[track_caller]
fn still_working(child: &mut Child) {
    if let Some(status) = child.try_wait().expect("poll the child") {
        let mut out = String::new();
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
        ]
        .into_iter()
        .flatten()
        {
            let mut pipe = pipe;
            let _ = pipe.read_to_string(&mut out);
        }
        panic!("refill ended ({status}) too early:\n{out}");
    }
}

/// The open session of `kind` on the run: its id, state and heartbeat.
fn session(w: &World, kind: &str) -> Option<(String, String, String)> {
    let rows = w.state_rows(&format!(
        "SELECT session_id, state, heartbeat_at FROM refill_sessions \
         WHERE kind = '{kind}' AND ended_at IS NULL"
    ));
    let row = rows.first()?;
    let text = |i: usize| row[i].clone().unwrap_or_default();
    Some((text(0), text(1), text(2)))
}

/// Waits until the open session of `kind` records its next heartbeat: five
/// seconds of a live process, in which an unpaused writer at the tests'
/// rates would have written thousands of rows.
fn next_heartbeat(w: &World, kind: &str, child: &mut Child) {
    let (id, _, beat) = session(w, kind).expect("an open session");
    until("the next heartbeat", Duration::from_secs(30), || {
        still_working(child);
        let (now_id, _, now) = session(w, kind)?;
        (now_id == id && now > beat).then_some(())
    });
}

/// Pauses the run from another process; asserts that its one process
/// (of `kind`) says it is paused, in `refill status` too.
fn pause(w: &World, run: &str, kind: &str) {
    let paused = w.run(&["pause", run, "--spec", "spec.toml"]);
    paused.expect_code(0);
    assert!(paused.stdout.contains("is paused"), "{}", paused.all());
    let detail = w.status("spec.toml", Some(run));
    let live = &detail["live"];
    assert_eq!(live["state"], "paused", "{live}");
    let sessions = live["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{live}");
    assert_eq!(sessions[0]["kind"], kind);
    assert_eq!(sessions[0]["state"], "paused");
    let text = w.run(&["status", run, "--spec", "spec.toml"]).stdout;
    assert!(
        text.contains(&format!("a {kind} of the run")) && text.contains("paused by"),
        "{text}"
    );
}

/// The sizes of the pieces a rollback logged.
fn pieces(stderr: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter(|l| l.contains("Rolled back rows of a chunk."))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|field| field.strip_prefix("rows="))
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

both!(
    a_rollback_keeps_the_rows_per_second_limit,
    |backend, name| {
        let w = World::new(backend, name);
        // One chunk of 10,000: the rollback must cut it, not write it at once.
        let run = written(&w, 10_000);
        w.write(
            "spec.toml",
            &append_spec(&w, 10_000, "max_rows_per_sec = 2000"),
        );
        let started = Instant::now();
        let mut child = w.spawn(&["rollback", &run, "--execute", "--spec", "spec.toml"]);
        // Rows come back a part at a time.
        let (part, _) = until(
            "a part of the rows is back",
            Duration::from_secs(60),
            || {
                still_working(&mut child);
                let n = restored(&w);
                (n > 0 && n < ROWS).then_some(n)
            },
        );
        let ran = Ran::from(child.wait_with_output().expect("wait for the rollback"));
        let took = started.elapsed();
        ran.expect_code(0);
        println!("{ROWS} rows rolled back at 2,000 rows/s in {took:?}, {part} back at first");
        // A second's worth at once, then four seconds for the rest.
        assert!(took >= Duration::from_secs(4), "took {took:?}");
        assert_eq!(logs(&w), vec![("start".to_string(), ROWS)]);
        let sizes = pieces(&ran.stderr);
        assert_eq!(sizes.iter().sum::<u64>(), ROWS, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 2000), "{sizes:?}");
    }
);

both!(
    pause_and_resume_reach_a_rollback_from_another_process,
    |backend, name| {
        let w = World::new(backend, name);
        let run = written(&w, 1_000);
        w.write(
            "spec.toml",
            &append_spec(&w, 1_000, "max_rows_per_sec = 2000"),
        );
        let mut child = w.spawn(&[
            "rollback",
            &run,
            "--execute",
            "--spec",
            "spec.toml",
            "--metrics-addr",
            "127.0.0.1:0",
        ]);
        let (addr, drain) = metrics_addr(&mut child);
        until("a first part is back", Duration::from_secs(60), || {
            still_working(&mut child);
            (restored(&w) > 0).then_some(())
        });
        pause(&w, &run, "rollback");
        let held = restored(&w);
        assert!(held < ROWS, "paused before the end");
        next_heartbeat(&w, "rollback", &mut child);
        assert_eq!(restored(&w), held, "rows were put back while paused");
        let samples = parse(&scrape(&addr));
        let value = |name: &str, label: &str| {
            samples
                .iter()
                .find(|(n, labels, _)| n == name && labels.contains(label))
                .map(|s| s.2)
        };
        assert_eq!(
            value("refill_throttle_state", "state=\"paused\""),
            Some(1.0),
            "{samples:?}"
        );
        assert_eq!(
            value("refill_rows_total", "outcome=\"updated\""),
            Some(held as f64)
        );
        assert_eq!(
            value("refill_rows_in_scope", &format!("run=\"{run}\"")),
            Some(ROWS as f64)
        );

        let resumed = w.run(&["resume", &run, "--spec", "spec.toml"]);
        resumed.expect_code(0);
        assert!(resumed.stdout.contains("goes on"), "{}", resumed.all());
        let status = child.wait().expect("wait for the rollback");
        assert_eq!(
            status.code(),
            Some(0),
            "{}",
            drain.join().unwrap_or_default()
        );
        assert_eq!(logs(&w), vec![("start".to_string(), ROWS)]);
        let report = w.run(&["report", &run, "--json", "--spec", "spec.toml"]);
        let report: serde_json::Value = serde_json::from_str(&report.stdout).expect("json");
        assert_eq!(report["run"]["status"], "rolled-back");
        assert_eq!(report["rollbacks"][0]["restored"], ROWS);
        assert!(report["rollbacks"][0]["message"].is_null());
        let ended = w.state_rows("SELECT outcome FROM refill_sessions WHERE kind = 'rollback'");
        assert_eq!(ended, vec![vec![Some("done".to_string())]]);
    }
);

both!(
    ctrl_c_and_abort_stop_a_rollback_that_finishes_when_run_again,
    |backend, name| {
        let w = World::new(backend, name);
        let run = written(&w, 1_000);
        w.write(
            "spec.toml",
            &append_spec(&w, 1_000, "max_rows_per_sec = 2000"),
        );
        let rollback = ["rollback", run.as_str(), "--execute", "--spec", "spec.toml"];

        // Ctrl-C: the rows being written are finished, then it stops.
        let mut child = w.spawn(&rollback);
        until("a first part is back", Duration::from_secs(60), || {
            still_working(&mut child);
            (restored(&w) > 0).then_some(())
        });
        interrupt(&child);
        let ran = Ran::from(child.wait_with_output().expect("wait for the rollback"));
        ran.expect_code(130);
        assert!(
            ran.stderr.contains("stopping after the rows being written"),
            "{}",
            ran.all()
        );
        assert!(ran.stdout.contains("(stopped; so far)"), "{}", ran.all());
        let first = restored(&w);
        assert!(first > 0 && first < ROWS, "{first} rows back");

        // `refill abort` from another process.
        let mut child = w.spawn(&rollback);
        until("more rows are back", Duration::from_secs(60), || {
            still_working(&mut child);
            (restored(&w) > first).then_some(())
        });
        let aborted = w.run(&["abort", &run, "--spec", "spec.toml"]);
        aborted.expect_code(0);
        assert!(
            aborted.stdout.contains("is aborted")
                && aborted.stdout.contains(&format!(
                    "`refill rollback {run} --execute` finishes the rollback"
                )),
            "{}",
            aborted.all()
        );
        let ran = Ran::from(child.wait_with_output().expect("wait for the rollback"));
        ran.expect_code(3);
        let second = restored(&w);
        assert!(
            second > first && second < ROWS,
            "{first}, then {second} rows back"
        );
        let outcomes: BTreeSet<String> = w
            .state_rows("SELECT outcome FROM refill_sessions WHERE kind = 'rollback'")
            .into_iter()
            .filter_map(|r| r[0].clone())
            .collect();
        assert_eq!(
            outcomes,
            BTreeSet::from(["aborted".to_string(), "interrupted".to_string()])
        );

        // Once more: it finishes, and the rows put back before count as
        // unchanged.
        let ran = w.run(&rollback);
        ran.expect_code(0);
        assert_eq!(logs(&w), vec![("start".to_string(), ROWS)]);
        let report = w.run(&["report", &run, "--json", "--spec", "spec.toml"]);
        let report: serde_json::Value = serde_json::from_str(&report.stdout).expect("json");
        let rollbacks = report["rollbacks"].as_array().expect("rollbacks");
        assert_eq!(rollbacks.len(), 3);
        let last = &rollbacks[2];
        assert_eq!(last["restored"], ROWS - second, "{last}");
        assert_eq!(last["already_previous"], second, "{last}");
        assert!(last["message"].is_null(), "{last}");
        assert_eq!(report["run"]["status"], "rolled-back");
    }
);

/// A run over [`quotes`] that maps only `open`: its `won` and `lost` rows
/// in scope are dead letters. Returns the run and how many there are.
fn failed(w: &World, n: i64) -> (String, usize) {
    quotes(w, n, false);
    w.write(
        "spec.toml",
        &spec(
            w,
            "remap",
            "config = { map = \"open=active\" }",
            1000,
            "status_v2",
        ),
    );
    w.run(&["run", "spec.toml", "--execute"]).expect_code(1);
    let dead = (1..=n)
        .filter(|&i| in_scope(i) && matches!(status_of(i, false), Some("won" | "lost")))
        .count();
    assert_eq!(unresolved(w), dead);
    (latest(w), dead)
}

/// The spec fixed (every status mapped) and throttled.
fn fixed(w: &World, throttle: &str) -> String {
    format!("{}\n[throttle]\n{throttle}\n", remap_spec(w, 1000, ""))
}

/// Dead letters not yet resolved.
fn unresolved(w: &World) -> usize {
    w.state_rows("SELECT row_key FROM refill_dead_letters WHERE resolved_at IS NULL")
        .len()
}

both!(a_retry_keeps_the_rows_per_second_limit, |backend, name| {
    let w = World::new(backend, name);
    // 4,000 rows in scope, 2,000 of them dead letters.
    let (run, dead) = failed(&w, 6_000);
    assert_eq!(dead, 2_000);
    w.write("spec.toml", &fixed(&w, "max_rows_per_sec = 500"));
    let started = Instant::now();
    let ran = w.run(&["retry", &run, "--execute", "--spec", "spec.toml"]);
    let took = started.elapsed();
    ran.expect_code(0);
    // 500 rows at once, then three seconds for the other 1,500.
    assert!(took >= Duration::from_secs(3), "took {took:?}");
    assert_eq!(unresolved(&w), 0);
    assert_remapped(&w, false);
});

both!(
    pause_and_resume_reach_a_retry_from_another_process,
    |backend, name| {
        let w = World::new(backend, name);
        let (run, dead) = failed(&w, 6_000);
        w.write("spec.toml", &fixed(&w, "max_rows_per_sec = 500"));
        let mut child = w.spawn(&["retry", &run, "--execute", "--spec", "spec.toml"]);
        until("a first part is resolved", Duration::from_secs(60), || {
            still_working(&mut child);
            (unresolved(&w) < dead).then_some(())
        });
        pause(&w, &run, "retry");
        let held = unresolved(&w);
        assert!(held > 0, "paused before the end");
        next_heartbeat(&w, "retry", &mut child);
        assert_eq!(unresolved(&w), held, "rows were retried while paused");
        w.run(&["resume", &run, "--spec", "spec.toml"])
            .expect_code(0);
        let ran = Ran::from(child.wait_with_output().expect("wait for the retry"));
        ran.expect_code(0);
        assert_eq!(unresolved(&w), 0);
        assert_remapped(&w, false);
    }
);

both!(
    a_rollback_killed_midway_reports_what_it_restored,
    |backend, name| {
        let w = World::new(backend, name);
        let run = written(&w, 1_000);
        w.write(
            "spec.toml",
            &append_spec(&w, 1_000, "max_rows_per_sec = 2000"),
        );
        let mut child = w.spawn(&["rollback", &run, "--execute", "--spec", "spec.toml"]);
        until("3,000 rows are back", Duration::from_secs(60), || {
            still_working(&mut child);
            (restored(&w) >= 3_000).then_some(())
        });
        child.kill().expect("kill the rollback");
        child.wait().expect("reap the rollback");
        let back = restored(&w);
        assert!(back < ROWS, "the rollback finished before it was killed");
        let report = w.run(&["report", &run, "--spec", "spec.toml"]);
        report.expect_code(0);
        let line = report
            .stdout
            .lines()
            .find(|l| l.contains(".rollback-") && l.contains("executed: "))
            .unwrap_or_else(|| panic!("no rollback in the report:\n{}", report.stdout));
        let said: u64 = line
            .split("executed: ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .map(|n| n.replace(',', ""))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {line:?}"));
        // At most the piece in flight when it was killed is missing from the
        // record (pieces are at most a second's worth at 2,000 rows/s).
        assert!(
            said <= back && back - said <= 2_000,
            "the report says {said} restored, the table has {back} back: {line}"
        );
        assert!(line.contains("unfinished"), "{line}");
    }
);
