//! Protecting production, on the real PostgreSQL (and, where the body says
//! `both!`, on SQLite and MariaDB too): a rows-per-second limit,
//! a probe that pauses the run and lets it go on, a signal that cannot be
//! measured, `refill pause`/`resume`/`abort` from another process, Ctrl-C,
//! bounded slices (`--max-runtime`, `--until-key`), chunk sizes that adapt
//! to a slow transform, and the metrics endpoint.

use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::both;
use crate::fixtures::*;
use crate::harness::*;

/// `remap` over 15,000 quotes (10,000 in scope), with `[chunk]` settings
/// replacing the fixed size and a `[throttle]` table.
fn throttled(w: &World, chunk: &str, throttle: &str) -> String {
    // These tests are about the other throttle keys: the gentle limiter
    // (the default) is off unless a test names a mode.
    let mode = if throttle.contains("mode =") {
        ""
    } else {
        "mode = \"unlimited\"\n"
    };
    remap_spec(w, 1000, "").replace("chunk_time = 0", chunk)
        + "\n[throttle]\n"
        + mode
        + throttle
        + "\n"
}

/// The state and reason each working session reports (once the run has
/// started: the state store's tables exist).
fn session_states(w: &World) -> Vec<(String, String)> {
    w.state_rows("SELECT state, reason FROM refill_sessions WHERE ended_at IS NULL")
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// The connections of process `pid` to the source that are not idle
/// (running a statement, or inside a transaction).
fn busy_connections(w: &World, pid: u32) -> Vec<Vec<Option<String>>> {
    w.rows(&format!(
        "SELECT state, query FROM pg_stat_activity WHERE application_name = 'refill pid {pid}' AND state <> 'idle'"
    ))
}

/// The newest run's id and status.
fn newest(w: &World) -> (String, String) {
    let list = w.status("spec.toml", None);
    (
        list[0]["run"]["run_id"]
            .as_str()
            .expect("run id")
            .to_string(),
        list[0]["run"]["status"]
            .as_str()
            .expect("status")
            .to_string(),
    )
}

/// Asserts that no chunk of the run is left half-done: each is done, or
/// was never written (its in-scope rows still have no `status_v2`). At most
/// two are not done: the one a worker took from the pipeline and left
/// when the run stopped, and the one the reader had read ahead.
fn none_half_done(w: &World) {
    let pending = w.state_rows(&format!(
        "SELECT {}, {} FROM refill_chunks WHERE status <> 'done'",
        w.text("lo"),
        w.text("hi")
    ));
    assert!(pending.len() <= 2, "{pending:?}");
    let v2 = status_v2(w);
    for chunk in &pending {
        let key = |k: &Option<String>| k.as_deref().map(|k| k.parse::<i64>().expect("a key"));
        let (lo, hi) = (key(&chunk[0]).unwrap_or(0), key(&chunk[1]).expect("hi"));
        for (id, value) in v2.range(lo + 1..=hi) {
            if in_scope(*id) {
                assert_eq!(
                    value, &None,
                    "row {id} of the unfinished chunk {chunk:?} was written"
                );
            }
        }
    }
}

/// Waits for the child to exit; returns what it printed and its code.
fn finish(child: Child) -> Ran {
    Ran::from(child.wait_with_output().expect("wait for refill"))
}

#[test]
fn a_rows_per_second_limit_holds() {
    let _cpus = crate::harness::measuring();
    // Alone on the server: the bound is on wall time.
    let w = World::exclusive("rate_limit");
    quotes(&w, 15_000, false);
    w.write(
        "spec.toml",
        &throttled(&w, "chunk_time = \"500ms\"", "max_rows_per_sec = 2000"),
    );
    let started = Instant::now();
    w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(4)..=Duration::from_secs(7)).contains(&took),
        "10,000 rows at 2,000 rows/s took {took:?}"
    );
    assert_remapped(&w, false);
    // Chunks were cut to the limit: half a second's worth.
    let run = w.status("spec.toml", Some(&newest(&w).0));
    let chunks = run["chunks"].as_array().expect("chunks");
    assert!(
        chunks
            .iter()
            .all(|c| c["counts"]["rows"].as_u64().expect("rows") <= 1000),
        "{chunks:?}"
    );
}

/// Whether transparent huge pages serve the running process `pid`, from
/// `/proc/PID/status` (Linux 5.0 and later).
fn huge_pages_on(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .expect("a THP_enabled line");
    line.split_whitespace().nth(1) == Some("1")
}

/// A backfill's heap is not served by huge pages, whose first touch zeroes
/// 2 MiB (see `no_huge_pages` in main.rs); a user who sets
/// `MIMALLOC_ALLOW_THP` decides for themselves.
#[test]
fn a_run_turns_huge_pages_off_unless_the_user_chose() {
    let w = World::new(Backend::Sqlite, "no_huge_pages");
    quotes(&w, 15_000, false);
    w.write(
        "spec.toml",
        &throttled(&w, "chunk_time = \"500ms\"", "max_rows_per_sec = 2000"),
    );
    // Chosen first, then interrupted; the default resumes the run. Chosen,
    // the child has huge pages as this process does (the setting is
    // inherited, and a kernel without them reports them off).
    let inherited = huge_pages_on(std::process::id());
    let mut done = 0;
    for (chose, expected) in [(Some("1"), inherited), (None, false)] {
        let mut cmd = w.refill();
        cmd.args(["run", "spec.toml", "--execute"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        match chose {
            Some(value) => cmd.env("MIMALLOC_ALLOW_THP", value),
            None => cmd.env_remove("MIMALLOC_ALLOW_THP"),
        };
        let mut child = cmd.spawn().expect("spawn refill");
        w.wait_for_chunks(&mut child, done + 1);
        assert_eq!(
            huge_pages_on(child.id()),
            expected,
            "MIMALLOC_ALLOW_THP={chose:?}"
        );
        if chose.is_some() {
            interrupt(&child);
            finish(child).expect_code(130);
            done = w.status("spec.toml", None)[0]["chunks_done"]
                .as_u64()
                .expect("chunks done");
        } else {
            finish(child).expect_code(0);
        }
    }
    assert_remapped(&w, false);
}

#[test]
fn a_probe_pauses_the_run_within_two_seconds_and_lets_it_go_on() {
    let w = World::new(Backend::Postgres, "probe_flip");
    quotes(&w, 15_000, false);
    let probe = w.table("probe");
    w.exec(&format!("CREATE TABLE {probe} (v int)"));
    w.exec(&format!("INSERT INTO {probe} VALUES (0)"));
    w.write(
        "spec.toml",
        &throttled(
            &w,
            "chunk_time = \"500ms\"",
            &format!("max_rows_per_sec = 2000\nprobe = \"SELECT v FROM {probe}\"\nprobe_max = 0"),
        ),
    );
    let mut child = w.spawn(&["run", "spec.toml", "--execute"]);
    w.wait_for_chunks(&mut child, 1);
    w.exec(&format!("UPDATE {probe} SET v = 1"));
    let (reason, took) = until(
        "the probe throttles the run",
        Duration::from_secs(10),
        || {
            session_states(&w)
                .into_iter()
                .find(|(state, reason)| state == "throttled" && reason.contains("probe"))
                .map(|(_, reason)| reason)
        },
    );
    assert!(took <= Duration::from_secs(2), "paused after {took:?}");
    assert_eq!(reason, "probe returned 1, over probe_max 0");
    // No new chunk starts: at most the chunks in flight (two) finish.
    let held = chunks_done(&w);
    let window = Instant::now();
    while window.elapsed() < Duration::from_millis(1500) {
        assert!(
            chunks_done(&w) <= held + 2,
            "chunks went on while throttled"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = w.run(&["status", "--spec", "spec.toml"]);
    assert!(status.stdout.contains("throttled"), "{}", status.stdout);
    w.exec(&format!("UPDATE {probe} SET v = 0"));
    finish(child).expect_code(0);
    assert_remapped(&w, false);
}

#[test]
fn a_signal_that_cannot_be_measured_pauses_the_run() {
    let w = World::new(Backend::Postgres, "unmeasurable");
    quotes(&w, 3_000, false);
    let probe = w.table("probe");
    // The probe's table does not exist yet.
    w.write(
        "spec.toml",
        &throttled(
            &w,
            "chunk_time = 0",
            &format!("probe = \"SELECT v FROM {probe}\"\nprobe_max = 0"),
        ),
    );
    let child = w.spawn(&["run", "spec.toml", "--execute"]);
    let (reason, _) = until(
        "the run waits on the probe",
        Duration::from_secs(30),
        || {
            live(&w, "spec.toml")
                .filter(|(state, reason)| state == "throttled" && reason.contains("probe"))
                .map(|(_, reason)| reason)
        },
    );
    assert!(
        reason.starts_with("cannot measure the probe:") && reason.contains("does not exist"),
        "{reason}"
    );
    assert_eq!(chunks_done(&w), 0, "fail closed: nothing ran");
    w.exec(&format!("CREATE TABLE {probe} (v int)"));
    w.exec(&format!("INSERT INTO {probe} VALUES (0)"));
    finish(child).expect_code(0);
    assert_remapped(&w, false);

    // Replica lag on a primary with no replica cannot be measured either.
    w.write(
        "lag.toml",
        &throttled(&w, "chunk_time = 0", "max_replica_lag = \"5s\"")
            .replace("quotes-remap", "quotes-lag"),
    );
    let child = w.spawn(&["run", "lag.toml", "--execute"]);
    let (reason, _) = until(
        "the run waits on replica lag",
        Duration::from_secs(30),
        || {
            live(&w, "lag.toml")
                .filter(|(state, reason)| state == "throttled" && reason.contains("replica"))
                .map(|(_, reason)| reason)
        },
    );
    assert!(reason.contains("no replica is connected"), "{reason}");
    let run = w.status("lag.toml", None)[0]["run"]["run_id"]
        .as_str()
        .expect("run")
        .to_string();
    w.run(&["abort", &run, "--spec", "lag.toml"]).expect_code(0);
    finish(child).expect_code(3);
}

both!(
    pause_resume_and_abort_work_from_another_process,
    |backend, name| {
        let w = World::new(backend, name);
        // 20 s of work at 2,000 rows/s: room for a loaded machine's slow
        // status polls before the run could end on its own.
        quotes(&w, 40_000, false);
        w.write(
            "spec.toml",
            &throttled(&w, "chunk_time = \"500ms\"", "max_rows_per_sec = 2000"),
        );
        let mut child = w.spawn(&["run", "spec.toml", "--execute"]);
        w.wait_for_chunks(&mut child, 1);
        let (run, _) = newest(&w);

        let asked = Instant::now();
        let paused = w.run(&["pause", &run, "--spec", "spec.toml"]);
        paused.expect_code(0);
        assert!(paused.stdout.contains("is paused"), "{}", paused.stdout);
        // Well before the 20 s of work could end on its own: a pause that
        // waited for the run's end would take longer. (3 s was too little
        // for one MariaDB chunk in flight plus the status polls, while
        // the other tests loaded the machine.)
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "pause took {:?}",
            asked.elapsed()
        );
        assert_eq!(
            live(&w, "spec.toml").map(|l| l.0).as_deref(),
            Some("paused")
        );
        // Paused means nothing in flight: no statement, no open transaction
        // (PostgreSQL names each connection's process).
        if backend == Backend::Postgres {
            assert_eq!(
                busy_connections(&w, child.id()),
                Vec::<Vec<Option<String>>>::new()
            );
        }
        let held = chunks_done(&w);
        let window = Instant::now();
        while window.elapsed() < Duration::from_millis(1500) {
            assert_eq!(chunks_done(&w), held, "a chunk was written while paused");
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = w.run(&["status", &run, "--spec", "spec.toml"]);
        assert!(
            status.stdout.contains("execute, paused"),
            "{}",
            status.stdout
        );
        assert!(child.try_wait().expect("poll").is_none(), "still there");

        w.run(&["resume", &run, "--spec", "spec.toml"])
            .expect_code(0);
        let resumed_at = chunks_done(&w);
        w.wait_for_chunks(&mut child, resumed_at + 1);

        let aborted = w.run(&["abort", &run, "--spec", "spec.toml"]);
        aborted.expect_code(0);
        assert!(aborted.stdout.contains("is aborted"), "{}", aborted.stdout);
        let ran = finish(child);
        ran.expect_code(3);
        assert_eq!(newest(&w), (run.clone(), "aborted".to_string()));
        none_half_done(&w);

        // The next run resumes the aborted one and finishes it (unthrottled:
        // limits are not part of what a resume must match).
        w.write("spec.toml", &throttled(&w, "chunk_time = \"500ms\"", ""));
        let again = w.run(&["run", "spec.toml", "--execute"]);
        again.expect_code(0);
        assert!(again.stdout.contains("(resumed)"), "{}", again.stdout);
        assert_eq!(newest(&w), (run, "done".to_string()));
        assert_remapped(&w, false);
    }
);

both!(
    ctrl_c_stops_at_a_chunk_boundary_and_twice_stops_now,
    |backend, name| {
        let w = World::new(backend, name);
        quotes(&w, 15_000, false);
        w.write(
            "spec.toml",
            &throttled(&w, "chunk_time = \"500ms\"", "max_rows_per_sec = 2000"),
        );
        // Once: the chunks in flight finish and are checkpointed.
        let mut child = w.spawn(&["run", "spec.toml", "--execute"]);
        w.wait_for_chunks(&mut child, 1);
        interrupt(&child);
        let ran = finish(child);
        ran.expect_code(130);
        assert!(
            ran.stderr.contains("stopping after the chunks in flight"),
            "{}",
            ran.stderr
        );
        let (run, status) = newest(&w);
        assert_eq!(status, "incomplete");
        none_half_done(&w);

        w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
        assert_eq!(newest(&w), (run, "done".to_string()));
        assert_remapped(&w, false);

        // Twice: it stops now, without recording an end; the next run resumes
        // it and redoes what was in flight. A slow transform keeps a chunk in
        // flight long enough for the second Ctrl-C to find it there.
        let slow = spec(
            &w,
            "evil",
            "config = { mode = \"slow\", spin = \"3000000\" }\nfuel_per_row = 1000000000",
            1000,
            "status_v2",
        );
        w.write("slow.toml", &slow);
        let mut child = w.spawn(&["run", "slow.toml", "--execute"]);
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let (slow_run, _) = until("a chunk is in flight", Duration::from_secs(60), || {
            let list = w.run(&["status", "--json", "--spec", "slow.toml"]);
            let list: serde_json::Value = serde_json::from_str(&list.stdout).ok()?;
            let id = list.get(0)?["run"]["run_id"].as_str()?.to_string();
            let detail = w.status("slow.toml", Some(&id));
            let pending = detail["chunks"]
                .as_array()?
                .iter()
                .any(|c| c["status"] == "pending");
            pending.then_some(id)
        });
        interrupt(&child);
        let mut line = String::new();
        while !line.contains("stopping after the chunks in flight") {
            line.clear();
            assert!(
                stderr.read_line(&mut line).expect("read stderr") > 0,
                "no acknowledgement"
            );
        }
        interrupt(&child);
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).expect("read stderr");
        assert!(rest.contains("stopping now"), "{rest}");
        assert_eq!(child.wait().expect("wait").code(), Some(130));
        let detail = w.status("slow.toml", Some(&slow_run));
        assert_eq!(
            detail["run"]["status"], "running",
            "no orderly end was recorded"
        );
        assert!(
            detail["chunks"]
                .as_array()
                .expect("chunks")
                .iter()
                .any(|c| c["status"] == "pending"),
            "the chunk in flight was not checkpointed"
        );
        let again = w.run(&["run", "slow.toml", "--execute"]);
        again.expect_code(0);
        assert!(again.stdout.contains("(resumed)"), "{}", again.stdout);
    }
);

both!(
    max_runtime_and_until_key_do_a_bounded_slice,
    |backend, name| {
        let w = World::new(backend, name);
        quotes(&w, 3_000, false);
        w.write(
            "spec.toml",
            &throttled(&w, "chunk_time = 0", "max_rows_per_sec = 500"),
        );
        // 2,000 rows at 500 rows/s take four seconds: one is not enough.
        let ran = w.run(&["run", "spec.toml", "--execute", "--max-runtime", "1s"]);
        ran.expect_code(0);
        let (run, status) = newest(&w);
        assert_eq!(status, "incomplete");
        let message = &w.status("spec.toml", Some(&run))["run"]["message"];
        assert!(
            message
                .as_str()
                .is_some_and(|m| m.contains("--max-runtime 1s")),
            "{message}"
        );
        let done = chunks_done(&w);
        assert!(
            (1..4).contains(&done),
            "{done} chunks of 500 in about a second"
        );

        // Up to key 2000 only: rows above it stay as they were.
        let ran = w.run(&["run", "spec.toml", "--execute", "--until-key", "2000"]);
        ran.expect_code(0);
        assert_eq!(newest(&w), (run.clone(), "incomplete".to_string()));
        for (id, v2) in status_v2(&w) {
            let expected = match (in_scope(id), id <= 2000) {
                (false, _) => Some("untouched".to_string()),
                (true, true) => remapped(status_of(id, false)).expect("mapped"),
                (true, false) => None,
            };
            assert_eq!(v2, expected, "row {id}");
        }
        w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
        assert_eq!(newest(&w), (run, "done".to_string()));
        assert_remapped(&w, false);
    }
);

both!(chunk_sizes_adapt_toward_the_target_time, |backend, name| {
    let w = World::new(backend, name);
    quotes(&w, 4_500, false);
    // `slow` burns CPU on every row: a 500-row chunk takes far longer than
    // the 200 ms target.
    let spec = spec(
        &w,
        "evil",
        "config = { mode = \"slow\", spin = \"3000000\" }\nfuel_per_row = 1000000000",
        500,
        "status_v2",
    )
    .replace(
        "chunk_time = 0",
        "chunk_time = \"200ms\"\nmin_rows = 10\nconcurrency = 1",
    ) + "\n[throttle]\nmode = \"unlimited\"\n";
    w.write("spec.toml", &spec);
    w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
    let run = w.status("spec.toml", Some(&newest(&w).0));
    let chunks = run["chunks"].as_array().expect("chunks");
    let rows = |c: &serde_json::Value| c["counts"]["rows"].as_u64().expect("rows");
    let ms = |c: &serde_json::Value| {
        ["read_ms", "transform_ms", "write_ms"]
            .iter()
            .map(|k| c["timings"][k].as_u64().expect("timing"))
            .sum::<u64>()
            .max(1) as f64
    };
    assert_eq!(rows(&chunks[0]), 500, "the first chunk has [chunk] rows");
    let sizes: Vec<u64> = chunks.iter().map(rows).collect();
    let times: Vec<f64> = chunks.iter().map(ms).collect();
    assert!(chunks.len() >= 4, "sizes {sizes:?}, times {times:?}");
    // The chunks before the last (which may be short) shrink, and their
    // time comes closer to the target than the first chunk's.
    let settled = &chunks[chunks.len() - 2];
    assert!(
        rows(settled) * 3 <= rows(&chunks[0]),
        "sizes: {:?}",
        chunks.iter().map(rows).collect::<Vec<_>>()
    );
    let off = |c: &serde_json::Value| (ms(c) / 200.0).ln().abs();
    assert!(
        off(settled) < off(&chunks[0]),
        "first chunk {} ms, settled {} ms, target 200 ms",
        ms(&chunks[0]),
        ms(settled)
    );
    for (id, v2) in status_v2(&w) {
        if in_scope(id) {
            assert_eq!(v2, status_of(id, false).map(str::to_uppercase), "row {id}");
        }
    }
});

#[test]
fn the_metrics_endpoint_is_scraped_and_parsed() {
    let w = World::new(Backend::Postgres, "metrics");
    quotes(&w, 15_000, false);
    w.write(
        "spec.toml",
        &throttled(&w, "chunk_time = \"500ms\"", "max_rows_per_sec = 2000"),
    );
    let mut child = w.spawn(&[
        "run",
        "spec.toml",
        "--execute",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let (addr, drain) = metrics_addr(&mut child);
    w.wait_for_chunks(&mut child, 2);
    let text = scrape(&addr);
    let samples = parse(&text);
    let value = |name: &str, label: &str| -> f64 {
        samples
            .iter()
            .find(|(n, labels, _)| n == name && labels.contains(label))
            .unwrap_or_else(|| panic!("no {name} {{{label}}} in:\n{text}"))
            .2
    };
    let (run, _) = newest(&w);
    let processed = value("refill_rows_total", "outcome=\"processed\"");
    assert!((1000.0..=10_000.0).contains(&processed), "{processed}");
    assert_eq!(
        value("refill_rows_in_scope", &format!("run=\"{run}\"")),
        10_000.0
    );
    assert!(
        value(
            "refill_chunk_duration_seconds_count",
            "name=\"quotes-remap\""
        ) >= 2.0
    );
    assert!(value("refill_chunk_rows", "run=") <= 1000.0);
    let states: Vec<_> = samples
        .iter()
        .filter(|(n, _, v)| n == "refill_throttle_state" && *v == 1.0)
        .collect();
    assert_eq!(states.len(), 1, "one state at a time: {states:?}");
    assert!(value("refill_eta_seconds", "run=") >= -1.0);
    assert!(text.ends_with("# EOF\n"));
    let ran = child.wait().expect("wait");
    assert_eq!(ran.code(), Some(0), "{}", drain.join().unwrap_or_default());
    assert_remapped(&w, false);
}
