//! Distributed workers on the real PostgreSQL: a run planned with
//! `--workers 0`, worked by several `refill worker` processes that claim
//! chunks under leases; one killed with SIGKILL in the middle of a chunk
//! while a deliberately non-idempotent transform (`append-log`) runs, and
//! every row still carries exactly one append; a rows-per-second limit
//! shared by three workers; and the refusals around worker runs.

use std::collections::BTreeSet;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::fixtures::{Spec, events, logs};
use crate::harness::*;

/// Makes marking a chunk done take 0.3 s, after the chunk's rows are
/// written and before its checkpoint commits: the window in which a
/// worker killed with its writes committed but its checkpoint not would
/// have its chunk applied twice. While it waits, the connection's
/// `application_name` says whose checkpoint it is (`checkpointing
/// SESSION`), so the test can kill that worker inside the window.
fn slow_checkpoints(w: &World) {
    let f = w.table("slow_checkpoint");
    let chunks = w.table("refill_chunks");
    w.exec(&format!(
        "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         PERFORM set_config('application_name', 'checkpointing ' || NEW.session_id, true); \
         PERFORM pg_sleep(0.3); RETURN NEW; END $$;\n\
         CREATE TRIGGER slow_checkpoint BEFORE UPDATE ON {chunks} FOR EACH ROW \
         WHEN (NEW.status = 'done' AND OLD.status <> 'done') EXECUTE FUNCTION {f}()"
    ));
}

/// `append-log` over [`events`], with the state store in the same
/// database and on the same url as the source: each chunk's writes commit
/// with its checkpoint.
fn append_spec(w: &World, chunk_rows: u32, throttle: &str) -> String {
    let state_url = w.state_url().expect("a PostgreSQL world");
    let text = Spec {
        name: "events-log",
        table: "events",
        key: "id",
        column: "log",
        scope: None,
        rows: chunk_rows,
        component: "append-log",
        transform_body: "",
        target: "log",
    }
    .render(w)
    .replace(
        &format!("url = \"{}\"", postgres_url()),
        &format!("url = \"{state_url}\""),
    );
    format!("{text}\n[throttle]\n{throttle}\n")
}

/// Plans the run for workers; returns its id.
fn plan_for_workers(w: &World) -> String {
    let ran = w.run(&["run", "spec.toml", "--execute", "--workers", "0"]);
    ran.expect_code(0);
    let line = ran
        .stdout
        .lines()
        .find(|l| l.starts_with("Run "))
        .unwrap_or_else(|| panic!("no run id in:\n{}", ran.all()));
    line.split_whitespace().nth(1).expect("run id").to_string()
}

fn worker(w: &World, run: &str, lease: &str) -> Child {
    let state = w.state_url().expect("a PostgreSQL world");
    w.spawn(&["worker", "--state", &state, "--run", run, "--lease", lease])
}

fn finish(child: Child) -> Ran {
    Ran::from(child.wait_with_output().expect("wait for a worker"))
}

/// The chunks of the run as (id, status, attempts, session).
fn chunks(w: &World, run: &str) -> Vec<(u64, String, u64, String)> {
    w.state_rows(&format!(
        "SELECT CAST(chunk_id AS TEXT), status, CAST(attempts AS TEXT), session_id \
         FROM refill_chunks WHERE run_id = '{run}' ORDER BY chunk_id"
    ))
    .into_iter()
    .map(|r| {
        let text = |i: usize| r[i].clone().unwrap_or_default();
        (
            text(0).parse().expect("id"),
            text(1),
            text(2).parse().expect("attempts"),
            text(3),
        )
    })
    .collect()
}

/// The session of the worker process `pid`, once it joined.
fn session_of(w: &World, pid: u32) -> Option<String> {
    w.state_rows(&format!(
        "SELECT session_id FROM refill_sessions WHERE pid = {pid}"
    ))
    .first()
    .and_then(|r| r[0].clone())
}

#[test]
fn three_workers_finish_after_one_is_killed_mid_chunk_and_apply_each_chunk_once() {
    let w = World::new(Backend::Postgres, "workers_takeover");
    events(&w, 2_000);
    w.write("spec.toml", &append_spec(&w, 100, "concurrency = 1"));
    let run = plan_for_workers(&w);
    slow_checkpoints(&w);

    // Planned: 20 chunks, none claimed; status says they wait for workers.
    let planned = chunks(&w, &run);
    assert_eq!(planned.len(), 20, "{planned:?}");
    assert!(planned.iter().all(|c| c.1 == "planned" && c.2 == 0));
    let state = w.state_url().expect("state url");
    let shown = w.run(&["status", "--state", &state, &run]);
    assert!(
        shown.stdout.contains("20 waiting for a worker"),
        "{}",
        shown.all()
    );

    // The first worker starts alone, so that it surely holds a chunk; the
    // other two join while it is in the middle of one.
    let mut victim = worker(&w, &run, "2s");
    // Kill the first worker between a chunk's writes and its checkpoint's
    // commit: while its connection waits in the trigger.
    let pid = victim.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        assert!(
            Instant::now() < deadline,
            "the worker never reached a checkpoint"
        );
        assert!(
            victim.try_wait().expect("poll").is_none(),
            "the worker ended before it could be killed"
        );
        if let Some(session) = session_of(&w, pid) {
            let checkpointing = w.rows(&format!(
                "SELECT CAST(pid AS TEXT) FROM pg_stat_activity WHERE application_name = 'checkpointing {session}'"
            ));
            if !checkpointing.is_empty() {
                let held: Vec<u64> = chunks(&w, &run)
                    .into_iter()
                    .filter(|c| c.1 == "pending" && c.3 == session)
                    .map(|c| c.0)
                    .collect();
                assert!(!held.is_empty(), "a worker checkpointing holds its chunk");
                break (session, held);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let others = [worker(&w, &run, "2s"), worker(&w, &run, "2s")];
    // SIGKILL: no chance to give the chunk back or roll anything back.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let gone = victim.wait().expect("reap the killed worker");
    assert!(gone.code().is_none(), "killed by a signal: {gone}");

    let outputs: Vec<Ran> = others.into_iter().map(finish).collect();
    for out in &outputs {
        out.expect_code(0);
        assert!(out.stdout.contains("\": done;"), "{}", out.all());
    }
    // The held chunks were taken over by a surviving worker after the
    // lease expired.
    let (session, held_ids) = held;
    let after = chunks(&w, &run);
    for id in &held_ids {
        let c = after.iter().find(|c| c.0 == *id).expect("chunk");
        assert_eq!(c.1, "done", "{c:?}");
        assert!(c.2 >= 2, "chunk {id} was claimed again: {c:?}");
        assert_ne!(c.3, session, "chunk {id} finished by another worker");
    }
    assert!(
        outputs
            .iter()
            .any(|o| o.stderr.contains("Took over a chunk whose lease expired")),
        "no worker logged the takeover"
    );
    assert!(after.iter().all(|c| c.1 == "done"), "{after:?}");
    // Every row was appended to exactly once: the killed worker's writes
    // rolled back with its uncommitted checkpoint.
    assert_eq!(logs(&w), vec![("start|refill".to_string(), 2000)]);
    // The run is done, and status shows each worker's chunks. How the 20
    // chunks fell to the workers is up to their race: the counts come from
    // the chunks' own sessions, not from an assumed split.
    let status = w.run(&["status", "--json", "--state", &state, &run]);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(doc["run"]["status"], "done");
    assert_eq!(doc["totals"]["rows"], 2000);
    assert_eq!(doc["totals"]["updated"], 2000);
    let sessions: BTreeSet<String> = doc["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["session_id"].as_str().expect("a session id").to_string())
        .collect();
    assert_eq!(sessions.len(), 3, "the killed worker and the two others");
    assert!(sessions.contains(&session), "the killed worker is listed");
    let done_by = |s: &str| after.iter().filter(|c| c.3 == s).count();
    assert_eq!(
        sessions.iter().map(|s| done_by(s.as_str())).sum::<usize>(),
        20,
        "every chunk was finished by one of the run's sessions"
    );
    let text = w.run(&["status", "--state", &state, &run]).stdout;
    for s in &sessions {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("session") && l.contains(s.as_str()))
            .unwrap_or_else(|| panic!("no line for session {s}:\n{text}"));
        let n = done_by(s.as_str());
        let done = format!("; {n} chunk{} done", if n == 1 { "" } else { "s" });
        assert!(line.contains(&done), "{line:?} lacks {done:?}");
    }
}

#[test]
fn a_rate_limit_is_shared_by_three_workers() {
    let _cpus = crate::harness::measuring();
    let w = World::new(Backend::Postgres, "workers_rate");
    events(&w, 12_000);
    w.write(
        "spec.toml",
        &append_spec(&w, 500, "concurrency = 3\nmax_rows_per_sec = 3000"),
    );
    let run = plan_for_workers(&w);
    // Held paused until all three have joined: a worker that starts late
    // on a busy machine would otherwise find the work done by the others,
    // and the limit would not have been shared.
    let state = w.state_url().expect("state url");
    w.run(&["pause", &run, "--state", &state]).expect_code(0);
    let workers: Vec<Child> = (0..3).map(|_| worker(&w, &run, "10s")).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ran = w.run(&["status", "--json", "--state", &state, &run]);
        let doc: serde_json::Value = serde_json::from_str(&ran.stdout).expect("json");
        let live = &doc["live"];
        if live["state"] == "paused" && live["sessions"].as_array().map(Vec::len) == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workers did not all join: {live}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        chunks(&w, &run).iter().filter(|c| c.1 != "planned").count(),
        0
    );
    w.run(&["resume", &run, "--state", &state]).expect_code(0);
    for out in workers.into_iter().map(finish) {
        out.expect_code(0);
    }
    // The run's pace, from the chunks' own times: first start to last end.
    let times = w.state_rows(&format!(
        "SELECT min(started_at), max(finished_at), CAST(count(DISTINCT session_id) AS TEXT) \
         FROM refill_chunks WHERE run_id = '{run}'"
    ));
    let parse = |s: &Option<String>| {
        chrono::DateTime::parse_from_rfc3339(s.as_deref().expect("a time")).expect("rfc 3339")
    };
    let span = (parse(&times[0][1]) - parse(&times[0][0]))
        .to_std()
        .expect("positive");
    assert_eq!(
        times[0][2].as_deref(),
        Some("3"),
        "every worker took chunks"
    );
    // 12,000 rows at 3,000 rows/s: the first chunk (500 rows) goes at once,
    // so 11,500 rows' worth, 3.83 s; within 20% either way.
    let rate = 11_500.0 / span.as_secs_f64();
    println!("three workers together: {rate:.0} rows/s over {span:?}");
    assert!(
        (2_400.0..=3_600.0).contains(&rate),
        "three workers together read {rate:.0} rows/s over {span:?}"
    );
    assert_eq!(logs(&w), vec![("start|refill".to_string(), 12_000)]);
}

#[test]
fn worker_runs_are_refused_where_they_cannot_work() {
    // A SQLite state store cannot coordinate workers.
    let lite = World::new(Backend::Sqlite, "workers_sqlite");
    events_sqlite(&lite);
    lite.write(
        "spec.toml",
        &Spec {
            name: "events-log",
            table: "events",
            key: "id",
            column: "log",
            scope: None,
            rows: 10,
            component: "append-log",
            transform_body: "",
            target: "log",
        }
        .render(&lite),
    );
    let ran = lite.run(&["run", "spec.toml", "--execute", "--workers", "0"]);
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr
            .contains("distributed workers need a PostgreSQL state store"),
        "{}",
        ran.all()
    );
    // --workers needs --execute, and only 0 is a plan.
    let ran = lite.run(&["run", "spec.toml", "--workers", "0"]);
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    let ran = lite.run(&["run", "spec.toml", "--execute", "--workers", "3"]);
    assert!(ran.stderr.contains("only --workers 0"), "{}", ran.all());

    // A run planned for workers is not resumed by a single process, and
    // planning again returns the same run.
    let w = World::new(Backend::Postgres, "workers_refusals");
    events(&w, 50);
    w.write("spec.toml", &append_spec(&w, 10, "concurrency = 1"));
    let run = plan_for_workers(&w);
    assert_eq!(plan_for_workers(&w), run);
    let ran = w.run(&["run", "spec.toml", "--execute"]);
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr.contains("planned for distributed workers")
            && ran.stderr.contains(&format!("--run {run}")),
        "{}",
        ran.all()
    );
    // Nothing was written.
    assert_eq!(logs(&w), vec![("start".to_string(), 50)]);
    // A worker asked for a run that is not there says how to plan one.
    let ran = w.run(&[
        "worker",
        "--state",
        &w.state_url().expect("url"),
        "--run",
        "nope",
    ]);
    assert!(
        ran.stderr.contains("no run `nope`") && ran.stderr.contains("--workers 0"),
        "{}",
        ran.all()
    );
}

fn events_sqlite(w: &World) {
    w.exec(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, log TEXT NOT NULL);\n\
         INSERT INTO events (id, log) VALUES (1, 'start'), (2, 'start')",
    );
}

#[test]
fn an_aborted_worker_run_goes_on_when_planned_again() {
    let w = World::new(Backend::Postgres, "workers_abort");
    events(&w, 3_000);
    w.write(
        "spec.toml",
        &append_spec(&w, 100, "concurrency = 1\nmax_rows_per_sec = 500"),
    );
    let run = plan_for_workers(&w);
    let state = w.state_url().expect("state url");
    let mut first = worker(&w, &run, "5s");
    // Once it has done some of the work, abort the run from elsewhere.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !chunks(&w, &run).iter().any(|c| c.1 == "done") {
        assert!(Instant::now() < deadline, "no chunk done");
        assert!(
            first.try_wait().expect("poll").is_none(),
            "the worker ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    w.run(&["abort", &run, "--state", &state]).expect_code(0);
    let stopped = Ran::from(first.wait_with_output().expect("worker"));
    stopped.expect_code(3);
    let status = |w: &World| {
        let ran = w.run(&["status", "--json", "--state", &state, &run]);
        let doc: serde_json::Value = serde_json::from_str(&ran.stdout).expect("json");
        doc["run"]["status"].as_str().expect("status").to_string()
    };
    assert_eq!(status(&w), "aborted");
    let left = chunks(&w, &run).iter().filter(|c| c.1 != "done").count();
    assert!(left > 0, "the abort came before the end");
    // A worker joining an aborted run leaves at once, doing nothing.
    let ran = w.run(&["worker", "--state", &state, "--run", &run]);
    ran.expect_code(3);
    assert!(ran.stdout.contains("0 rows in 0 chunks"), "{}", ran.all());
    // Planning again lets the run go on, from where it stopped.
    let again = w.run(&["run", "spec.toml", "--execute", "--workers", "0"]);
    again.expect_code(0);
    assert!(
        again.stdout.contains("is already planned"),
        "{}",
        again.all()
    );
    assert_eq!(status(&w), "running");
    let w2 = w.run(&["worker", "--state", &state, "--run", &run]);
    w2.expect_code(0);
    assert_eq!(status(&w), "done");
    assert_eq!(logs(&w), vec![("start|refill".to_string(), 3000)]);
}

#[test]
fn gentle_workers_share_the_runs_latency_baseline() {
    let w = World::new(Backend::Postgres, "workers_baseline");
    events(&w, 3_000);
    // No [throttle] mode: gentle, the default.
    w.write("spec.toml", &append_spec(&w, 500, "concurrency = 2"));
    let run = plan_for_workers(&w);
    let state = w.state_url().expect("state url");
    // Paused, so the baseline is measured before the run's first chunk.
    w.run(&["pause", &run, "--state", &state]).expect_code(0);
    let first = worker(&w, &run, "10s");
    let stored = || {
        w.state_rows(&format!(
            "SELECT CAST(latency_baseline_us AS TEXT) FROM refill_runs WHERE run_id = '{run}'"
        ))[0][0]
            .clone()
    };
    let (baseline, _) = until(
        "the first worker records the run's baseline",
        Duration::from_secs(60),
        stored,
    );
    assert!(baseline.parse::<u64>().is_ok_and(|us| us > 0), "{baseline}");
    let second = worker(&w, &run, "10s");
    until("both workers joined", Duration::from_secs(60), || {
        let ran = w.run(&["status", "--json", "--state", &state, &run]);
        let doc: serde_json::Value = serde_json::from_str(&ran.stdout).ok()?;
        (doc["live"]["sessions"].as_array().map(Vec::len) == Some(2)).then_some(())
    });
    w.run(&["resume", &run, "--state", &state]).expect_code(0);
    let (first, second) = (finish(first), finish(second));
    first.expect_code(0);
    second.expect_code(0);
    assert!(
        first
            .stderr
            .contains("Measured the database's latency before the first chunk"),
        "{}",
        first.all()
    );
    assert!(
        second
            .stderr
            .contains("Took the run's latency baseline, measured before its first chunk"),
        "{}",
        second.all()
    );
    assert_eq!(
        stored().as_deref(),
        Some(baseline.as_str()),
        "one baseline for the run"
    );
    assert_eq!(logs(&w), vec![("start|refill".to_string(), 3_000)]);
}
