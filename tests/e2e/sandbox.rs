//! Hostile guests from `plugins/evil`: each misbehaviour ends in a clear
//! error naming the chunk and the key, the host process survives and exits
//! normally, and the batch is split until only the offending row fails.

use crate::fixtures::*;
use crate::harness::*;

/// Which rows misbehave.
enum Trigger {
    /// Only row 5 (its status is set to `boom`).
    RowFive,
    /// Every row whose status is `won`.
    Won,
    /// Every row.
    All,
}

/// Runs `evil` in `mode` with `--execute` over 200 quotes (134 in scope, one
/// chunk, batches of 10) with `extra` added to `[transform]`.
fn hostile(name: &str, mode: &str, trigger: Trigger, extra: &str) -> (Ran, World) {
    let w = World::new(Backend::Sqlite, name);
    quotes(&w, 200, false);
    let trigger = match trigger {
        Trigger::RowFive => {
            w.exec("UPDATE quotes SET status = 'boom' WHERE id = 5");
            ", trigger = \"boom\""
        }
        Trigger::Won => ", trigger = \"won\"",
        Trigger::All => "",
    };
    let body = format!("config = {{ mode = \"{mode}\"{trigger} }}\nbatch_rows = 10\n{extra}");
    w.write("spec.toml", &spec(&w, "evil", &body, 1000, "status_v2"));
    let ran = w.run(&["run", "spec.toml", "--execute"]);
    (ran, w)
}

/// Asserts the host exited by itself with `code` and named chunk 1.
#[track_caller]
fn survived(ran: &Ran, code: i32) {
    assert_eq!(
        ran.code,
        Some(code),
        "the host did not exit normally\n{}",
        ran.all()
    );
    assert!(
        ran.all().contains("chunk 1"),
        "the error does not name the chunk:\n{}",
        ran.all()
    );
}

/// Asserts that only row 5 failed (it is isolated from its batch of ten),
/// trapping as `trap` says (`batch:fuel`), and every other in-scope row
/// was uppercased.
#[track_caller]
fn only_row_five_failed(w: &World, trap: &str) {
    for (id, v2) in status_v2(w) {
        if !in_scope(id) {
            assert_eq!(v2.as_deref(), Some("untouched"), "row {id} is out of scope");
        } else if id == 5 {
            assert_eq!(v2, None, "row 5 made the guest misbehave");
        } else {
            assert_eq!(
                v2,
                status_of(id, false).map(str::to_uppercase),
                "row {id} shared row 5's batch"
            );
        }
    }
    assert_eq!(w.status("spec.toml", None)[0]["totals"]["failed"], 1);
    let dead = w.state_rows("SELECT row_key, error, kind, trap FROM refill_dead_letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0][0].as_deref(), Some("5"));
    assert_eq!(dead[0][2].as_deref(), Some("trap"));
    assert_eq!(
        dead[0][3].as_deref(),
        Some(trap),
        "what trapped is recorded"
    );
    assert!(
        dead[0][1]
            .as_deref()
            .is_some_and(|e| e.contains("transform trapped")),
        "{dead:?}"
    );
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    let (ran, w) = hostile(
        "loop_fuel",
        "loop",
        Trigger::RowFive,
        "fuel_per_row = 2000000",
    );
    survived(&ran, 1);
    assert!(
        ran.all()
            .contains("ran out of fuel (2000000 units for 1 row"),
        "{}",
        ran.all()
    );
    assert!(
        ran.all().contains("row 5: looping forever"),
        "the guest's log is shown: {}",
        ran.all()
    );
    only_row_five_failed(&w, "batch:fuel");
}

#[test]
fn an_infinite_loop_hits_the_deadline() {
    let (ran, w) = hostile(
        "loop_deadline",
        "loop",
        Trigger::RowFive,
        "timeout_ms = 200\nfuel_per_row = 1000000000000",
    );
    survived(&ran, 1);
    assert!(
        ran.all().contains("ran past its deadline (200 ms per call"),
        "{}",
        ran.all()
    );
    only_row_five_failed(&w, "batch:deadline");
}

#[test]
fn a_transform_that_traps_on_every_row_stops_the_run() {
    let (ran, w) = hostile(
        "loop_everywhere",
        "loop",
        Trigger::All,
        "fuel_per_row = 100000",
    );
    survived(&ran, 2);
    assert!(
        ran.all()
            .contains("trapped on every row of 3 batches in a row"),
        "{}",
        ran.all()
    );
    assert_eq!(w.status("spec.toml", None)[0]["run"]["status"], "failed");
    assert!(
        status_v2(&w)
            .iter()
            .all(|(id, v2)| in_scope(*id) == v2.is_none()),
        "nothing was written"
    );
}

#[test]
fn a_transform_that_breaks_its_contract_on_every_row_stops_the_run() {
    let (ran, w) = hostile("extra_everywhere", "extra-outcome", Trigger::All, "");
    survived(&ran, 2);
    for part in [
        "broke its contract on every row of 3 batches in a row",
        "transform-batch returned 2 outcomes for 1 rows",
    ] {
        assert!(ran.all().contains(part), "{part:?}: {}", ran.all());
    }
    assert_eq!(w.status("spec.toml", None)[0]["run"]["status"], "failed");
    nothing_written(&w);
}

#[test]
fn unbounded_memory_growth_hits_the_limit() {
    let (ran, w) = hostile(
        "memory",
        "memory",
        Trigger::RowFive,
        "memory_mb = 32\nfuel_per_row = 1000000000",
    );
    survived(&ran, 1);
    assert!(
        ran.all()
            .contains("tried to use more than 32 MiB of memory and tables"),
        "{}",
        ran.all()
    );
    only_row_five_failed(&w, "batch:memory");
}

#[test]
fn a_panic_fails_only_its_row() {
    let (ran, w) = hostile("panic", "panic", Trigger::RowFive, "");
    survived(&ran, 1);
    assert!(ran.all().contains("panicked"), "{}", ran.all());
    assert!(
        ran.all().contains("evil panics on row 5"),
        "the panic message is shown: {}",
        ran.all()
    );
    only_row_five_failed(&w, "batch:panic");
}

#[test]
fn the_wrong_number_of_values_is_a_per_row_error() {
    let (ran, w) = hostile("arity", "arity", Trigger::Won, "");
    survived(&ran, 1);
    assert!(
        ran.all()
            .contains("the transform returned 2 values for 1 output column (status_v2)"),
        "{}",
        ran.all()
    );
    for (id, v2) in status_v2(&w) {
        let expected = match status_of(id, false) {
            _ if !in_scope(id) => Some("untouched".to_string()),
            Some("won") => None,
            other => other.map(str::to_uppercase),
        };
        assert_eq!(v2, expected, "row {id}");
    }
}

#[test]
fn a_component_importing_more_than_the_host_interface_is_refused() {
    let w = World::new(Backend::Sqlite, "imports");
    quotes(&w, 10, false);
    w.write("spec.toml", &spec(&w, "evil-network", "", 100, "status_v2"));
    let ran = w.run(&["plan", "spec.toml"]);
    ran.expect_code(2);
    assert!(
        ran.stderr.contains("imports refill:evil/network@0.1.0"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("refusing to run it"), "{}", ran.stderr);
    let inspected = w.run(&["inspect", &plugin("evil-network").display().to_string()]);
    inspected.expect_code(2);
    assert!(
        inspected
            .stdout
            .contains("refill:evil/network@0.1.0  (NOT ALLOWED)"),
        "{}",
        inspected.stdout
    );
}

/// What the host may use on top of its guests' memory: room for its own
/// code, compiled components and buffers (docs/sandbox.md, "Limits").
const HOST_OVERHEAD_KIB: u64 = 128 * 1024;

/// Runs `evil` in `mode` (`config` added to its config) over 200 quotes
/// with `--execute`, row 5 triggering it, with instances of `memory_mb`
/// and 2 chunks in flight; returns what it printed, the world and its peak
/// RSS in KiB.
fn bomb(name: &str, mode: &str, config: &str, memory_mb: u64) -> (Ran, World, u64) {
    let w = World::new(Backend::Sqlite, name);
    quotes(&w, 200, false);
    w.exec("UPDATE quotes SET status = 'boom' WHERE id = 5");
    let body = format!(
        "config = {{ mode = \"{mode}\", trigger = \"boom\"{config} }}\nbatch_rows = 10\n\
         memory_mb = {memory_mb}\nfuel_per_row = 100000000000\ntimeout_ms = 120000"
    );
    let spec =
        spec(&w, "evil", &body, 50, "status_v2").replace("[chunk]\n", "[chunk]\nconcurrency = 2\n");
    w.write("spec.toml", &spec);
    let (ran, peak) = wait_with_peak_rss(w.spawn(&["run", "spec.toml", "--execute"]));
    eprintln!("{name}: peak RSS {peak} KiB");
    (ran, w, peak)
}

/// The bound on a run's peak RSS with `memory_mb` instances: two copies of
/// each of its 2 instances' memory (wasmtime copies a string argument of a
/// host function into the host before the host's code runs) and the host's
/// own overhead.
fn bound_kib(memory_mb: u64) -> u64 {
    2 * memory_mb * 1024 * 2 + HOST_OVERHEAD_KIB
}

/// What a child's measured peak may be when its own stays within `bound`:
/// the bound, or the test process's peak that the child's measure starts
/// from, if that is higher (other tests running in this process).
fn allowed(bound: u64) -> u64 {
    bound.max(own_peak_rss())
}

#[test]
fn a_guest_logging_a_50_mb_line_100_times_keeps_host_memory_bounded_and_its_last_line() {
    let (ran, w, peak) = bomb(
        "log-bomb",
        "log-bomb",
        ", mb = \"50\", times = \"100\"",
        128,
    );
    ran.expect_code(0);
    assert!(
        peak <= allowed(bound_kib(128)),
        "peak RSS {peak} KiB, over {} KiB",
        allowed(bound_kib(128))
    );
    // The last line the guest wrote is kept, after the first ones; each
    // kept line is bounded, with a marker saying what was left out.
    assert!(
        ran.stderr.contains("row 5: the bomb's last line"),
        "{}",
        &ran.stderr[ran.stderr.len().saturating_sub(4000)..]
    );
    assert!(
        ran.stderr
            .contains("lines before its last one were dropped"),
        "{}",
        &ran.stderr[ran.stderr.len().saturating_sub(4000)..]
    );
    assert!(ran.stderr.contains("more bytes"), "no marker");
    assert!(
        ran.stderr.len() < 1 << 20,
        "{} bytes of log for 100 lines",
        ran.stderr.len()
    );
    // The bomb's row was transformed like the others.
    assert_eq!(status_v2(&w)[&5].as_deref(), Some("BOOM"));
}

#[test]
fn a_guest_failing_a_row_with_a_50_mb_error_stores_and_prints_its_head_and_end_only() {
    let (ran, w, peak) = bomb("error-bomb", "error-bomb", ", mb = \"50\"", 256);
    ran.expect_code(1);
    assert!(
        peak <= allowed(bound_kib(256)),
        "peak RSS {peak} KiB, over {} KiB",
        allowed(bound_kib(256))
    );
    let dead = w.state_rows("SELECT row_key, error, kind FROM refill_dead_letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0][0].as_deref(), Some("5"));
    assert_eq!(dead[0][2].as_deref(), Some("error"));
    let error = dead[0][1].as_deref().expect("an error");
    assert!(
        error.len() < 8 * 1024,
        "a dead letter of {} bytes",
        error.len()
    );
    for part in ["BombError: the head", "the end of the bomb", "more bytes"] {
        assert!(error.contains(part), "{part:?} is not in {error:?}");
    }
    assert!(
        ran.all().len() < 64 * 1024,
        "{} bytes printed",
        ran.all().len()
    );
    let report = w.run(&["report", "spec.toml"]);
    assert!(
        report.all().len() < 64 * 1024,
        "{} bytes in the report",
        report.all().len()
    );
}

#[test]
fn a_component_that_is_a_device_or_too_large_is_refused_unread() {
    let w = World::new(Backend::Sqlite, "component-file");
    quotes(&w, 10, false);
    // A 3 GiB file that takes no disk: its size alone refuses it.
    let big = w.dir.path().join("big.wasm");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(3 << 30))
        .expect("a sparse file");
    for (component, says) in [
        (
            "/dev/zero",
            "is not a regular file (a device, pipe or socket)",
        ),
        (
            big.to_str().expect("a utf-8 path"),
            "has 3221225472 bytes, more than the 256 MiB a component may have ([transform] max_component_mb)",
        ),
    ] {
        let spec = spec(
            &w,
            "remap",
            "config = { map = \"open=active\" }",
            100,
            "status_v2",
        );
        let spec = spec
            .lines()
            .map(|l| {
                if l.starts_with("component = ") {
                    format!("component = \"{component}\"")
                } else if l.starts_with("sha256 = ") {
                    String::new()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        w.write("spec.toml", &spec);
        for command in [
            &["plan", "spec.toml"][..],
            &["run", "spec.toml", "--execute"],
        ] {
            let (ran, peak) = wait_with_peak_rss(w.spawn(command));
            assert_ne!(ran.code, Some(0), "{command:?} ran {component}");
            assert!(ran.stderr.contains(says), "{command:?}: {}", ran.stderr);
            assert!(
                peak <= allowed(HOST_OVERHEAD_KIB),
                "{command:?} of {component} took {peak} KiB"
            );
        }
        let inspected = w.run(&["inspect", component]);
        assert_ne!(inspected.code, Some(0), "inspect read {component}");
        assert!(inspected.stderr.contains(says), "{}", inspected.stderr);
    }
}

/// The bound of the issue for `concurrency` instances of `memory_mb`: two
/// copies of each instance's memory and the host's own overhead.
fn bound_for(memory_mb: u64, concurrency: u64) -> u64 {
    2 * memory_mb * 1024 * concurrency + HOST_OVERHEAD_KIB
}

/// Asserts that no row of the quotes was written.
#[track_caller]
fn nothing_written(w: &World) {
    for (id, v2) in status_v2(w) {
        let before = (!in_scope(id)).then_some("untouched");
        assert_eq!(v2.as_deref(), before, "row {id} was written");
    }
}

/// A spec running the hostile component `name` (no config) over the
/// quotes, with 4 chunks in flight and the default limits.
fn hostile_component_spec(w: &World, name: &str, config: &str) -> String {
    spec(w, name, config, 50, "status_v2").replace("[chunk]\n", "[chunk]\nconcurrency = 4\n")
}

#[test]
fn a_component_whose_instantiation_exceeds_the_limits_is_refused_by_inspect_plan_and_run() {
    let w = World::new(Backend::Sqlite, "instantiation-bombs");
    quotes(&w, 200, false);
    for (bomb, says) in [
        // 100 tables of a million funcrefs: 800 MB per instance unless
        // tables count against memory_mb.
        (
            "evil-table-bomb",
            "tried to use more than 256 MiB of memory and tables ([transform] memory_mb)",
        ),
        // 900 core instances with a memory and a table each.
        (
            "evil-instance-bomb",
            "tried to create more memories than the 100 one transform instance may have",
        ),
    ] {
        let path = plugin(bomb);
        let path = path.to_str().expect("a utf-8 path");
        let (inspected, peak) = wait_with_peak_rss(w.spawn(&["inspect", path]));
        eprintln!("{bomb}: inspect peak RSS {peak} KiB");
        assert_eq!(inspected.code, Some(2), "{}", inspected.all());
        assert!(inspected.stdout.contains("REFUSED"), "{}", inspected.all());
        for part in ["transform trapped while being instantiated", says] {
            assert!(
                inspected.all().contains(part),
                "{part:?}: {}",
                inspected.all()
            );
        }
        assert!(
            !inspected.all().contains(" row"),
            "no row was involved: {}",
            inspected.all()
        );
        assert!(
            peak <= allowed(bound_for(256, 1)),
            "inspect took {peak} KiB"
        );

        w.write("spec.toml", &hostile_component_spec(&w, bomb, ""));
        for command in [&["plan", "spec.toml"][..], &["run", "spec.toml"]] {
            let (ran, peak) = wait_with_peak_rss(w.spawn(command));
            eprintln!("{bomb}: {command:?} peak RSS {peak} KiB");
            assert_ne!(ran.code, Some(0), "{command:?} accepted {bomb}");
            assert!(ran.stderr.contains(says), "{command:?}: {}", ran.all());
            assert!(
                ran.stderr.contains("while being instantiated"),
                "{command:?}: {}",
                ran.all()
            );
            assert!(
                peak <= allowed(bound_for(256, 4)),
                "{command:?} of {bomb} took {peak} KiB"
            );
        }
    }
    // Nothing was written.
    nothing_written(&w);
}

#[test]
fn a_configure_that_never_returns_is_stopped_and_named_without_blaming_rows() {
    let w = World::new(Backend::Sqlite, "configure-loop");
    quotes(&w, 200, false);
    w.write(
        "spec.toml",
        &hostile_component_spec(&w, "evil", "config = { mode = \"configure-loop\" }"),
    );
    for command in [
        &["plan", "spec.toml"][..],
        &["run", "spec.toml", "--execute"],
    ] {
        let (ran, peak) = wait_with_peak_rss(w.spawn(command));
        eprintln!("configure-loop: {command:?} peak RSS {peak} KiB");
        assert_ne!(ran.code, Some(0), "{command:?}: {}", ran.all());
        let all = ran.all();
        for part in [
            "transform trapped in configure: it ran out of fuel",
            "the budget for setting up an instance",
            "configure: looping forever",
        ] {
            assert!(all.contains(part), "{command:?}: {part:?} is not in\n{all}");
        }
        assert!(
            !all.contains("units for"),
            "{command:?} blames rows:\n{all}"
        );
        assert!(
            peak <= allowed(bound_for(256, 4)),
            "{command:?} took {peak} KiB"
        );
    }
    nothing_written(&w);
}

#[test]
fn a_describe_with_huge_strings_is_printed_and_stored_bounded() {
    let w = World::new(Backend::Sqlite, "describe-bomb");
    quotes(&w, 200, false);
    let path = plugin("evil-describe-bomb");
    let (inspected, peak) =
        wait_with_peak_rss(w.spawn(&["inspect", path.to_str().expect("utf-8")]));
    eprintln!("describe-bomb: inspect peak RSS {peak} KiB");
    inspected.expect_code(0);
    assert!(
        peak <= allowed(bound_for(256, 1)),
        "inspect took {peak} KiB"
    );
    // Both ends of each string are kept, with what was left out counted.
    for part in [
        "bomb-name-head",
        "bomb-name-end",
        "The description's head.",
        "The description's end.",
        "input-end",
        "more bytes",
    ] {
        assert!(
            inspected.stdout.contains(part),
            "{part:?} is not in the inspection"
        );
    }
    assert!(
        inspected.all().len() < 64 * 1024,
        "inspect printed {} bytes",
        inspected.all().len()
    );

    w.write(
        "spec.toml",
        &hostile_component_spec(&w, "evil-describe-bomb", ""),
    );
    let planned = w.run(&["plan", "spec.toml"]);
    planned.expect_code(0);
    assert!(
        planned.all().len() < 64 * 1024,
        "plan printed {} bytes",
        planned.all().len()
    );
    for round in 1..=2 {
        let (ran, peak) = wait_with_peak_rss(w.spawn(&["run", "spec.toml"]));
        eprintln!("describe-bomb: dry run {round} peak RSS {peak} KiB");
        ran.expect_code(0);
        assert!(
            ran.all().len() < 64 * 1024,
            "a dry run printed {} bytes",
            ran.all().len()
        );
        assert!(
            peak <= allowed(bound_for(256, 4)),
            "a dry run took {peak} KiB"
        );
    }
    let ran = w.run(&["run", "spec.toml", "--execute"]);
    ran.expect_code(0);
    assert_eq!(status_v2(&w)[&1].as_deref(), Some("WON"), "{}", ran.all());
    // What the state store keeps of the transform is bounded too.
    let stored: u64 = std::fs::read_dir(w.dir.path().join(".refill"))
        .expect("the state folder")
        .map(|e| e.expect("an entry").metadata().expect("metadata").len())
        .sum();
    assert!(stored < 4 << 20, "the state store holds {stored} bytes");
    let names = w.state_rows("SELECT transform_name, transform_version FROM refill_runs");
    assert!(!names.is_empty());
    for row in names {
        for value in row.iter().flatten() {
            assert!(value.len() <= 200, "{} bytes stored", value.len());
        }
    }
}

#[test]
fn a_table_of_2000_rows_of_5_mb_is_read_in_chunks_cut_at_max_bytes() {
    let w = World::new(Backend::Postgres, "wide_rows_pg");
    let t = w.table("docs");
    // 10 GB of text that PostgreSQL compresses to a few MB on disk.
    w.exec(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, doc text, kind text);
         ALTER TABLE {t} ALTER COLUMN doc SET STORAGE EXTENDED;
         INSERT INTO {t} SELECT i, repeat('x', 5000000), NULL FROM generate_series(1, 2000) AS i"
    ));
    let max_bytes: u64 = 16 << 20;
    let spec = Spec {
        name: "wide-rows",
        table: "docs",
        key: "id",
        column: "doc",
        scope: None,
        rows: 10_000,
        component: "remap",
        transform_body: "config = { map = \"a=b\", default = \"big\" }",
        target: "kind",
    }
    .render(&w)
    .replace(
        "[chunk]\n",
        &format!("[chunk]\nmax_bytes = {max_bytes}\nmax_rows = 100000\n"),
    ) + "\n[throttle]\nmode = \"unlimited\"\n";
    w.write("spec.toml", &spec);
    let (ran, peak) = wait_with_peak_rss(w.spawn(&["run", "spec.toml", "--execute"]));
    eprintln!("wide rows: peak RSS {peak} KiB");
    ran.expect_code(0);
    let kinds = w.rows(&format!(
        "SELECT kind, {} FROM {t} GROUP BY kind",
        w.text("count(*)")
    ));
    assert_eq!(kinds, vec![vec![Some("big".into()), Some("2000".into())]]);
    // Every chunk stopped at the bound: no read held all 10 GB (the row
    // limit alone would have let the first chunk take every row).
    let status = &w.status("spec.toml", None)[0];
    let chunks = status["chunks_done"].as_u64().expect("chunks_done");
    assert!(
        chunks >= 2000 * 5_000_000 / max_bytes,
        "{chunks} chunks for 10 GB at {max_bytes} bytes each"
    );
    // Chunks in flight, their copies on the way through the transform and
    // the guests' memory (docs/spec.md, "[chunk] max_bytes").
    let bound = 16 * (max_bytes >> 10) + 2 * 256 * 1024 / 2 + HOST_OVERHEAD_KIB;
    assert!(
        peak <= allowed(bound),
        "peak RSS {peak} KiB, over {} KiB",
        allowed(bound)
    );
}
