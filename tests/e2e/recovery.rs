//! Nothing lost, nothing wrong: dead letters and `refill retry`, a
//! PostgreSQL restart in the middle of a run, a concurrent writer,
//! `refill verify` catching a hand edit, and `refill rollback`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use crate::both;
use crate::fixtures::*;
use crate::harness::*;

/// The newest run's id.
fn latest_run(w: &World) -> String {
    w.status("spec.toml", None)[0]["run"]["run_id"]
        .as_str()
        .expect("a run")
        .to_string()
}

/// `refill report RUN --json`.
fn report(w: &World, run: &str) -> serde_json::Value {
    let ran = w.run(&["report", run, "--json", "--spec", "spec.toml"]);
    ran.expect_code(0);
    serde_json::from_str(&ran.stdout).expect("report is JSON")
}

/// The FAILED column of `refill status` for `run`.
fn listed_failed(w: &World, run: &str) -> String {
    let listed = w.run(&["status", "--spec", "spec.toml"]);
    listed.expect_code(0);
    let row = listed
        .stdout
        .lines()
        .find(|l| l.starts_with(run))
        .unwrap_or_else(|| panic!("run {run} is listed: {}", listed.stdout));
    // RUN NAME MODE STATUS ROWS FAILED STARTED BY
    row.split_whitespace()
        .nth(5)
        .expect("a FAILED column")
        .to_string()
}

/// The keys of the unresolved dead letters, as numbers.
fn dead_keys(w: &World) -> BTreeSet<i64> {
    w.state_rows("SELECT row_key FROM refill_dead_letters WHERE resolved_at IS NULL")
        .into_iter()
        .map(|r| r[0].as_deref().expect("key").parse().expect("numeric key"))
        .collect()
}

both!(
    failed_rows_are_dead_letters_that_a_retry_makes_right,
    |backend, name| {
        let w = World::new(backend, name);
        quotes(&w, 2000, true);
        w.write("spec.toml", &remap_spec(&w, 200, ""));
        w.run(&["run", "spec.toml", "--execute"]).expect_code(1);

        // Exactly the 1% of rows the transform refuses are dead letters; the
        // others are right.
        let bad: BTreeSet<i64> = (1..=2000)
            .filter(|&i| in_scope(i) && status_of(i, true) == Some("WON"))
            .collect();
        assert!(!bad.is_empty());
        assert_eq!(dead_keys(&w), bad);
        let letters = w.state_rows(&format!(
            "SELECT error, input_hash, component_digest, {} FROM refill_dead_letters",
            w.text("chunk_id")
        ));
        for letter in &letters {
            assert_eq!(
                letter[0].as_deref(),
                Some("no mapping for \"WON\" and no default")
            );
            assert_eq!(
                letter[1].as_ref().map(String::len),
                Some(64),
                "an input fingerprint"
            );
            assert_eq!(
                letter[2].as_deref(),
                Some(digest(&plugin("remap")).as_str())
            );
        }
        assert_remapped(&w, true);
        let run = latest_run(&w);

        // Fix the transform's configuration and retry only the dead letters.
        let fixed = remap_spec(&w, 200, "").replace(MAP, &format!("{MAP},WON=closed_won"));
        w.write("spec.toml", &fixed);
        assert_eq!(listed_failed(&w, &run), bad.len().to_string());
        let dry = w.run(&["retry", &run, "--spec", "spec.toml"]);
        dry.expect_code(0);
        assert!(dry.stdout.contains("Nothing was written"), "{}", dry.stdout);
        assert_eq!(dead_keys(&w), bad, "a dry retry resolves nothing");
        // One failed row is deleted before the retry: it is resolved as gone.
        let deleted = *bad.first().expect("a bad row");
        w.exec(&format!(
            "DELETE FROM {} WHERE id = {deleted}",
            w.table("quotes")
        ));
        let retried = w.run(&["retry", &run, "--execute", "--spec", "spec.toml"]);
        retried.expect_code(0);
        let fixed = bad.len() - 1;
        assert!(
            retried.stdout.contains(&format!(
                "{fixed}  ({fixed} updated, 0 already right, 0 skipped)"
            )),
            "{}",
            retried.stdout
        );
        assert!(dead_keys(&w).is_empty());
        let resolutions = w.state_rows(
            "SELECT row_key, resolution FROM refill_dead_letters ORDER BY resolution, row_key",
        );
        let gone: Vec<_> = resolutions
            .iter()
            .filter(|r| r[1].as_deref() == Some("gone"))
            .map(|r| r[0].clone())
            .collect();
        assert_eq!(gone, vec![Some(deleted.to_string())]);
        assert_eq!(
            resolutions
                .iter()
                .filter(|r| r[1].as_deref() == Some("fixed"))
                .count(),
            fixed
        );
        for (id, v2) in status_v2(&w) {
            let expected = match status_of(id, true) {
                _ if !in_scope(id) => Some("untouched".to_string()),
                Some("WON") => Some("closed_won".to_string()),
                other => remapped(other).expect("mapped"),
            };
            assert_eq!(v2, expected, "row {id}");
        }
        let verified = w.run(&["verify", &run, "--spec", "spec.toml"]);
        verified.expect_code(0);
        assert!(
            verified.stdout.contains("everything matches"),
            "{}",
            verified.stdout
        );

        // The list counts what is still failing: nothing, after the retry.
        assert_eq!(listed_failed(&w, &run), "0");
        // The spec file names its newest execute run, for every command
        // that takes a run.
        let by_spec = w.run(&["verify", "spec.toml"]);
        by_spec.expect_code(0);
        assert!(
            by_spec
                .stdout
                .contains(&format!("Verification of run {run} ")),
            "{}",
            by_spec.stdout
        );
        let by_spec = w.run(&["report", "spec.toml", "--json"]);
        by_spec.expect_code(0);
        assert!(by_spec.stdout.contains(&run), "{}", by_spec.stdout);

        let report = report(&w, &run);
        assert_eq!(report["unresolved"], 0);
        assert_eq!(report["dead_letters"], bad.len());
        assert_eq!(
            (
                &report["retries"][1]["resolved"],
                &report["retries"][1]["gone"]
            ),
            (&serde_json::json!(fixed), &serde_json::json!(1)),
            "the executed retry, after the dry one"
        );
        assert_ne!(
            report["retries"][1]["work_hash"], report["run"]["work_hash"],
            "the retry's configuration is recorded"
        );
        assert_eq!(report["verifications"][0]["passed"], true);
    }
);

both!(verify_names_rows_changed_by_hand, |backend, name| {
    let w = World::new(backend, name);
    quotes(&w, 600, false);
    w.write("spec.toml", &remap_spec(&w, 100, ""));
    w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
    let run = latest_run(&w);
    w.run(&["verify", &run, "--spec", "spec.toml"])
        .expect_code(0);
    w.run(&["verify", "--spec", "spec.toml"]).expect_code(0);
    // Another configuration did not compute the run: verifying the run with
    // it is refused, not reported as differences.
    w.write(
        "other.toml",
        &remap_spec(&w, 100, "").replace(MAP, &format!("{MAP},extra=x")),
    );
    let refused = w.run(&["verify", &run, "--spec", "other.toml"]);
    refused.expect_code(2);
    assert!(
        refused
            .stderr
            .contains("verify with the component and spec the run used"),
        "{}",
        refused.stderr
    );

    w.exec(&format!(
        "UPDATE {} SET status_v2 = 'edited' WHERE id IN (4, 401)",
        w.table("quotes")
    ));
    for args in [
        vec!["verify", run.as_str(), "--spec", "spec.toml"],
        vec!["verify", "--spec", "spec.toml"],
    ] {
        let ran = w.run(&args);
        ran.expect_code(1);
        assert!(ran.stdout.contains("DIFFERENCES FOUND"), "{}", ran.stdout);
        assert!(
            ran.stdout
                .contains("differs from what the transform computes: 4, 401"),
            "{}",
            ran.stdout
        );
        assert!(ran.stdout.contains("in 2 chunks"), "{}", ran.stdout);
    }
    let json = w.run(&["verify", &run, "--json", "--spec", "spec.toml"]);
    let record: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(record["differing_keys"], serde_json::json!([4, 401]));
    assert_eq!(record["passed"], false);
});

both!(
    rollback_restores_what_the_run_overwrote_except_rows_changed_since,
    |backend, name| {
        let w = World::new(backend, name);
        quotes(&w, 600, false);
        let t = w.table("quotes");
        // Some in-scope rows start with a value the run overwrites.
        let legacy = match backend {
            Backend::Mysql => "CONCAT('legacy-', id)".to_string(),
            _ => format!("'legacy-' || {}", w.text("id")),
        };
        w.exec(&format!(
            "UPDATE {t} SET status_v2 = {legacy} WHERE id % 3 = 1"
        ));
        let before = w.snapshot("quotes", "id, status, status_v2, region");
        w.write("spec.toml", &remap_spec(&w, 100, ""));
        w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
        let run = latest_run(&w);
        w.exec(&format!(
            "UPDATE {t} SET status_v2 = 'edited after the run' WHERE id IN (2, 302)"
        ));

        let dry = w.run(&["rollback", &run, "--spec", "spec.toml"]);
        dry.expect_code(1);
        assert!(dry.stdout.contains("Nothing was written"), "{}", dry.stdout);
        let ran = w.run(&["rollback", &run, "--execute", "--spec", "spec.toml"]);
        ran.expect_code(1);
        assert!(
            ran.stdout
                .contains("Rows changed since the run, left alone: 2, 302"),
            "{}",
            ran.stdout
        );
        let after = w.snapshot("quotes", "id, status, status_v2, region");
        for (old, new) in before.iter().zip(&after) {
            let id = old[0].as_deref().expect("id");
            if id == "2" || id == "302" {
                assert_eq!(
                    new[2].as_deref(),
                    Some("edited after the run"),
                    "row {id} was changed since and left alone"
                );
            } else {
                assert_eq!(old, new, "row {id} is back to what it held before the run");
            }
        }
        let report = report(&w, &run);
        assert_eq!(report["run"]["status"], "rolled-back");
        assert_eq!(report["rollbacks"][1]["changed_since"], 2);
        // A rolled-back run is not resumed: the next run starts over.
        w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
        assert_ne!(latest_run(&w), run);
    }
);

#[test]
fn a_postgres_restart_mid_run_is_survived() {
    let w = World::exclusive("restart");
    quotes(&w, 3000, false);
    let spec = spec(
        &w,
        "evil",
        "config = { mode = \"slow\", spin = \"2000000\" }\nbatch_rows = 25\nfuel_per_row = 100000000",
        50,
        "status_v2",
    );
    // Unlimited: under the gentle default both workers can be in the pause
    // between chunks when the server stops, and then wait there (the
    // throttle's signals fail closed) instead of failing a statement and
    // retrying it, which is what this test watches for. Unlimited, a
    // worker is in its slow transform, and writes next.
    let spec = format!("{spec}\n[throttle]\nmode = \"unlimited\"\n");
    w.write("spec.toml", &spec);
    let mut child = w.spawn(&["run", "spec.toml", "--execute"]);
    // The run's log, line by line, to see it retry while the server is down.
    let (lines, log) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            all.push_str(&line);
            all.push('\n');
            let _ = lines.send(line);
        }
        all
    });
    w.wait_for_chunks(&mut child, 3);

    let cluster = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster (/etc/postgresql)")
        .next()
        .expect("a cluster version")
        .expect("readable")
        .file_name()
        .to_string_lossy()
        .to_string();
    let ctl = |args: &[&str]| {
        let status = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &cluster, "main"])
            .args(args)
            .status()
            .expect("run pg_ctlcluster");
        assert!(status.success(), "pg_ctlcluster {args:?} failed");
    };
    ctl(&["stop", "-m", "fast"]);
    let down = Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1"])
        .status()
        .expect("pg_isready");
    assert!(!down.success(), "PostgreSQL is still up");
    // Keep it down until the run has failed an operation and is retrying,
    // a minute at most in all: however much else the run logs meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let retrying = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains("failed; retrying") => break line,
            Ok(line) => seen.push(line),
            Err(e) => {
                // Up again, so that the other tests do not fail for it.
                ctl(&["start"]);
                let _ = child.kill();
                panic!(
                    "the run never retried while PostgreSQL was down ({e}); it logged:\n{}",
                    seen.join("\n")
                );
            }
        }
    };
    assert!(
        child.try_wait().expect("poll").is_none(),
        "the run gave up while PostgreSQL was down: {retrying}"
    );
    ctl(&["start"]);

    // At most two minutes more: a run that hangs fails the test, not CI.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the run did not end within 2 minutes of the restart:\n{}",
                reader.join().expect("log reader")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = reader.join().expect("log reader");
    assert_eq!(
        status.code(),
        Some(0),
        "the run did not survive the restart:\n{stderr}"
    );
    // The World's pool pings its connection before use and replaces the one
    // the restart killed.
    for (id, v2) in status_v2(&w) {
        let expected = if in_scope(id) {
            status_of(id, false).map(str::to_uppercase)
        } else {
            Some("untouched".into())
        };
        assert_eq!(v2, expected, "row {id}");
    }
    let run = latest_run(&w);
    let report = report(&w, &run);
    assert_eq!(report["run"]["status"], "done");
    assert!(
        report["totals"]["retries"].as_u64().expect("retries") > 0,
        "{report}"
    );
    for chunk in report["chunks"].as_array().expect("chunks") {
        assert_eq!(
            chunk["attempts"], 1,
            "chunk {} was started twice",
            chunk["chunk_id"]
        );
        assert_eq!(chunk["status"], "done");
    }
    assert_eq!(report["totals"]["rows"], report["run"]["rows_in_scope"]);
    assert_eq!(
        report["sessions"].as_array().map(Vec::len),
        Some(1),
        "one session did it all"
    );
}

// The application writes `status` and its uppercased copy together while
// refill backfills the copy for old rows: every row refill's guard stops is
// read and transformed again (on MariaDB, through the sink's second path:
// select the rows the guard lets through `FOR UPDATE`, then write exactly
// those), and no row ends with a value computed from a status it no longer
// holds.
both!(
    a_concurrent_writer_never_gets_a_stale_value,
    |backend, name| {
        let w = World::new(backend, name);
        quotes(&w, 3000, false);
        let spec = spec(
            &w,
            "evil",
            "config = { mode = \"slow\", spin = \"400000\" }\nbatch_rows = 25\nfuel_per_row = 100000000",
            50,
            "status_v2",
        );
        w.write("spec.toml", &spec);
        let writer = Writer::start(&w, 3000);
        let ran = w.run(&["run", "spec.toml", "--execute"]);
        let writes = writer.stop();
        ran.expect_code(0);
        assert!(writes > 50, "the writer barely ran");

        // Every row in scope holds the uppercased copy of the status it
        // holds now, whoever wrote it last.
        let rows = w.rows(&format!(
            "SELECT {}, status, status_v2 FROM {} ORDER BY id",
            w.text("id"),
            w.table("quotes")
        ));
        for row in rows {
            let id: i64 = row[0].as_deref().expect("id").parse().expect("a number");
            if in_scope(id) {
                let expected = row[1].as_deref().map(str::to_uppercase);
                assert_eq!(row[2], expected, "row {id}");
            }
        }
        let run = latest_run(&w);
        let verified = w.run(&["verify", &run, "--spec", "spec.toml"]);
        verified.expect_code(0);
        let report = report(&w, &run);
        assert!(
            report["totals"]["conflicts"].as_u64().expect("conflicts") > 0,
            "the writer raced no write: {report}"
        );
    }
);

#[test]
fn an_error_budget_stops_the_run_cleanly() {
    let w = World::new(Backend::Sqlite, "budget");
    quotes(&w, 3000, true);
    let spec = remap_spec(&w, 100, "").replace("[target]", "[errors]\nmax_errors = 5\n\n[target]");
    w.write("spec.toml", &spec);
    let ran = w.run(&["run", "spec.toml", "--execute"]);
    ran.expect_code(2);
    assert!(ran.all().contains("error budget exceeded"), "{}", ran.all());
    assert!(
        ran.all().contains("more than [errors] max_errors = 5"),
        "{}",
        ran.all()
    );
    let run = &w.status("spec.toml", None)[0];
    assert_eq!(run["run"]["status"], "failed");
    let failed = run["totals"]["failed"].as_u64().expect("failed");
    assert!(failed > 5, "stopped once over the budget: {failed}");
    assert!(
        run["totals"]["rows"].as_u64().expect("rows")
            < run["run"]["rows_in_scope"].as_u64().expect("scope"),
        "stopped before the end"
    );
    // Raising the budget and running again resumes the same run.
    w.write(
        "spec.toml",
        &spec.replace("max_errors = 5", "max_errors = 1000"),
    );
    let resumed = w.run(&["run", "spec.toml", "--execute"]);
    resumed.expect_code(1);
    assert!(resumed.stdout.contains("(resumed)"), "{}", resumed.stdout);
    assert_remapped(&w, true);
}

#[test]
fn a_state_store_deleted_or_emptied_during_a_run_stops_it_and_is_not_recreated() {
    for (name, deleted) in [("state_deleted", true), ("state_emptied", false)] {
        let w = World::new(Backend::Sqlite, name);
        quotes(&w, 3000, false);
        // 2,000 rows in scope at 500 rows/s: four seconds of chunks.
        let spec = remap_spec(&w, 50, "") + "\n[throttle]\nmax_rows_per_sec = 500\n";
        w.write("spec.toml", &spec);
        let state = w.dir.path().join(".refill/state.db");
        let child = w.spawn(&["run", "spec.toml", "--execute"]);
        // The run is under way: two chunks' rows are written.
        let written = format!(
            "SELECT {} FROM {} WHERE region = 'eu' AND status_v2 IS NOT NULL",
            w.text("count(*)"),
            w.table("quotes")
        );
        until("two chunks are written", Duration::from_secs(60), || {
            let n: u64 = w.rows(&written)[0][0].as_deref()?.parse().ok()?;
            (n >= 100).then_some(())
        });
        if deleted {
            std::fs::remove_file(&state).expect("delete the state store");
        } else {
            std::fs::File::create(&state).expect("empty the state store");
        }
        let ran = Ran::from(child.wait_with_output().expect("wait for the run"));
        ran.expect_code(2);
        let what = if deleted {
            "was deleted or moved"
        } else {
            "was emptied"
        };
        for part in [
            "the state store",
            what,
            "refill does not recreate the state of a backfill in progress",
        ] {
            assert!(
                ran.stderr.contains(part),
                "{name}: {part:?}:\n{}",
                ran.stderr
            );
        }
        // Nothing made a new, empty store in its place.
        match std::fs::metadata(&state) {
            Err(_) => assert!(deleted, "{name}: the emptied file is gone"),
            Ok(meta) => assert!(
                !deleted && meta.len() == 0,
                "{name}: a store of {} bytes is there",
                meta.len()
            ),
        }
    }
}
