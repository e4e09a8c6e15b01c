//! Transforms in Python, JavaScript and C, and the capability sandbox
//! around the WASI they import: the same `remap` in four languages, a Python
//! guest that reads the clock and random numbers, tries files and sockets,
//! and prints without end, and a JavaScript guest that imports wasi:http.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::fixtures::{self, MAP, Spec, quotes};
use crate::harness::{Backend, World, plugin};

/// Compiles the large components into the shared cache once, so that tests
/// running side by side do not each spend seconds compiling them.
fn warm() {
    static WARM: OnceLock<()> = OnceLock::new();
    WARM.get_or_init(|| {
        let w = World::new(Backend::Sqlite, "warm");
        for name in ["remap-py", "remap-js", "evil-py"] {
            let path = plugin(name).display().to_string();
            w.run(&["inspect", &path]).expect_code(0);
        }
    });
}

/// The rows of the run called `name`: its dead letters as (key, error).
fn dead_letters(w: &World, name: &str) -> Vec<(String, String)> {
    w.state_rows(&format!(
        "SELECT d.row_key, d.error FROM refill_dead_letters d JOIN refill_runs r ON r.run_id = d.run_id \
         WHERE r.name = '{name}' ORDER BY d.row_key"
    ))
    .into_iter()
    .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
    .collect()
}

#[test]
fn remap_in_rust_python_javascript_and_c_writes_the_same_values_and_dead_letters() {
    warm();
    let w = World::new(Backend::Postgres, "three_languages");
    quotes(&w, 600, true);
    let t = w.table("quotes");
    w.exec(&format!(
        "ALTER TABLE {t} ADD COLUMN v_rs TEXT, ADD COLUMN v_py TEXT, ADD COLUMN v_js TEXT, \
         ADD COLUMN v_c TEXT"
    ));
    // `lost` is left out of the map: it comes from the lookup table.
    w.write("plans.csv", "status,mapped\nlost,closed_lost\n");
    let map = MAP.replace(",lost=closed_lost", "");
    let mut columns: BTreeMap<&str, BTreeMap<i64, Option<String>>> = BTreeMap::new();
    for (component, column) in [
        ("remap", "v_rs"),
        ("remap-py", "v_py"),
        ("remap-js", "v_js"),
        ("remap-c", "v_c"),
    ] {
        let name = format!("quotes-{component}");
        let spec = Spec {
            name: &name,
            table: "quotes",
            key: "id",
            column: "status",
            scope: Some("region = 'eu'"),
            rows: 100,
            component,
            transform_body: &format!("config = {{ map = \"{map}\", table = \"plans\" }}"),
            target: column,
        }
        .render(&w);
        w.write(
            &format!("{component}.toml"),
            &format!("{spec}\n[[lookup]]\nname = \"plans\"\nfile = \"plans.csv\"\n"),
        );
        let plan = w.run(&["plan", &format!("{component}.toml")]);
        plan.expect_code(0);
        assert!(
            plan.stdout
                .contains("lookup     \"plans\" from plans.csv: 1 keys"),
            "{}",
            plan.stdout
        );
        // Rows with the unmapped `WON` fail: exit code 1.
        w.run(&["run", &format!("{component}.toml"), "--execute"])
            .expect_code(1);
        let values = w
            .rows(&format!(
                "SELECT CAST(id AS TEXT), {column} FROM {t} ORDER BY id"
            ))
            .into_iter()
            .map(|r| {
                (
                    r[0].as_deref().expect("id").parse().expect("id"),
                    r[1].clone(),
                )
            })
            .collect();
        columns.insert(column, values);
    }
    // Every language wrote what the fixture says, row by row.
    for (column, values) in &columns {
        for (id, value) in values {
            let expected = if fixtures::in_scope(*id) {
                fixtures::remapped(fixtures::status_of(*id, true)).unwrap_or(None)
            } else {
                None
            };
            assert_eq!(value, &expected, "{column} of row {id}");
        }
    }
    let rust = dead_letters(&w, "quotes-remap");
    assert!(!rust.is_empty(), "the bad rows are dead letters");
    assert!(
        rust.iter()
            .all(|(_, e)| e == "no mapping for \"WON\" and no default"),
        "{rust:?}"
    );
    assert_eq!(rust, dead_letters(&w, "quotes-remap-py"), "Python");
    assert_eq!(rust, dead_letters(&w, "quotes-remap-js"), "JavaScript");
    assert_eq!(rust, dead_letters(&w, "quotes-remap-c"), "C");
    // The lookup table's digest is in each run's audit trail.
    let recorded: Vec<serde_json::Value> = w
        .state_rows("SELECT data FROM refill_audit WHERE kind = 'lookup'")
        .into_iter()
        .map(|r| serde_json::from_str(r[0].as_deref().expect("data")).expect("json"))
        .collect();
    assert_eq!(recorded.len(), 4, "{recorded:?}");
    let tables = &recorded[0]["tables"];
    assert_eq!(tables[0]["name"], "plans", "{recorded:?}");
    assert_eq!(tables[0]["sha256"].as_str().map(str::len), Some(64));
    assert!(
        recorded.iter().all(|r| &r["tables"] == tables),
        "{recorded:?}"
    );
    // The same pairs from a query on the source database, at plan time,
    // digest the same.
    let map_table = w.table("plan_map");
    w.exec(&format!(
        "CREATE TABLE {map_table} (status TEXT PRIMARY KEY, mapped TEXT NOT NULL);
         INSERT INTO {map_table} VALUES ('lost', 'closed_lost')"
    ));
    let rust = std::fs::read_to_string(w.dir.path().join("remap.toml")).expect("spec");
    let from_query = rust.replace(
        "file = \"plans.csv\"",
        &format!("query = \"SELECT status, mapped FROM {map_table}\""),
    );
    w.write("query.toml", &from_query);
    let plan = w.run(&["plan", "query.toml"]);
    plan.expect_code(0);
    let sha = tables[0]["sha256"].as_str().expect("sha256");
    assert!(
        plan.stdout.contains(&format!(
            "lookup     \"plans\" from query: 1 keys, sha256 {sha}"
        )),
        "{}",
        plan.stdout
    );
}

/// An `evil-py` spec over a small SQLite table of `n` rows.
fn evil_py(w: &World, name: &str, body: &str, n: i64) {
    if w.rows("SELECT name FROM sqlite_master WHERE name = 'quotes'")
        .is_empty()
    {
        quotes(w, n, false);
    }
    let spec = Spec {
        name,
        table: "quotes",
        key: "id",
        column: "status",
        scope: None,
        rows: 100,
        component: "evil-py",
        transform_body: body,
        target: "status_v2",
    }
    .render(w);
    w.write(&format!("{name}.toml"), &spec);
}

/// The sample changes a dry run printed.
fn samples(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("key ") && l.contains(" → "))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_python_guest_reads_the_same_clock_and_random_numbers_on_every_dry_run() {
    warm();
    let w = World::new(Backend::Sqlite, "entropy");
    evil_py(&w, "entropy", "config = { mode = \"entropy\" }", 30);
    let first = w.run(&["run", "entropy.toml"]);
    first.expect_code(0);
    let second = w.run(&["run", "entropy.toml"]);
    second.expect_code(0);
    let (a, b) = (samples(&first.stdout), samples(&second.stdout));
    assert_eq!(a.len(), 10, "{}", first.stdout);
    assert_eq!(
        a, b,
        "two dry runs of the same spec computed different values"
    );
    // The clock reads the start of the first run, not the time of the call.
    let started = w.state_rows("SELECT MIN(started_at) FROM refill_runs WHERE name = 'entropy'");
    let started = chrono::DateTime::parse_from_rfc3339(started[0][0].as_deref().expect("a run"))
        .expect("rfc 3339")
        .timestamp();
    assert!(
        a[0].contains(&format!("NULL → \"{started}.")),
        "the guest's clock should read {started}: {}",
        a[0]
    );
    // random.random() and os.urandom differ from row to row: the
    // generators are seeded, not constant.
    let field = |i: usize| -> std::collections::BTreeSet<String> {
        a.iter()
            .filter_map(|l| l.split(" → \"").nth(1))
            .filter_map(|v| v.split(' ').nth(i).map(str::to_string))
            .collect()
    };
    assert_eq!(field(1).len(), a.len(), "random.random(): {a:?}");
    assert_eq!(field(2).len(), a.len(), "os.urandom(8): {a:?}");
}

#[test]
fn a_python_guest_gets_no_file_no_directory_no_socket_and_no_environment() {
    warm();
    let w = World::new(Backend::Sqlite, "capabilities");
    w.write("one.jsonl", "{\"key\": 1, \"value\": \"x\"}\n");
    let component = plugin("evil-py").display().to_string();
    // `refill try evil-py` on one row with these `--config` pairs.
    let try_with = |config: &[&str]| {
        let mut args = vec!["try", &component, "--input", "one.jsonl"];
        for pair in config {
            args.extend(["--config", pair]);
        }
        w.run(&args)
    };
    // Each attempt fails inside the guest with the error a program sees
    // when the thing does not exist or is not allowed.
    for (mode, expected) in [
        ("open", "1  ERROR  FileNotFoundError: "),
        ("preopens", "1  ERROR  FileNotFoundError: "),
        ("socket", "1  ERROR  gaierror: "),
        ("tcp", "1  ERROR  PermissionError: "),
    ] {
        let ran = try_with(&[&format!("mode={mode}")]);
        ran.expect_code(1);
        assert!(ran.stdout.starts_with(expected), "{mode}: {}", ran.all());
        assert!(!ran.stdout.contains("ACCESS"), "{mode}: {}", ran.all());
    }
    // A guest that sleeps for an hour is done at once, and its monotonic
    // clock moved by the hour: no real wait the deadline cannot stop.
    let slept = try_with(&["mode=sleep"]);
    slept.expect_code(0);
    let after: f64 = slept
        .stdout
        .split("slept ")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no clock reading: {}", slept.all()));
    assert!((3600.0..3601.0).contains(&after), "{}", slept.stdout);
    // stdout reaches the log of `try` too.
    let printed = try_with(&["mode=print", "mb=1"]);
    printed.expect_code(0);
    assert!(
        printed.stderr.contains("stdout: evil-py prints 1 MiB")
            && printed.stderr.contains("more bytes dropped"),
        "{}",
        printed.stderr
    );
    let env = try_with(&["mode=env"]);
    env.expect_code(0);
    assert!(
        env.stdout.contains("environ={} argv=[]"),
        "no environment, no arguments: {}",
        env.stdout
    );
}

#[test]
fn run_with_input_uses_the_specs_transform_and_config_without_a_database() {
    let w = World::new(Backend::Sqlite, "input");
    // No table exists: the spec's database is never opened.
    w.write("spec.toml", &fixtures::remap_spec(&w, 100, ""));
    w.write(
        "rows.jsonl",
        "{\"key\": 1, \"value\": \"open\"}\n{\"key\": 2, \"value\": \"WON\"}\n{\"key\": 3, \"value\": null}\n",
    );
    let ran = w.run(&["run", "spec.toml", "--input", "rows.jsonl", "--json"]);
    ran.expect_code(1);
    let lines: Vec<serde_json::Value> = ran
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{}", ran.stdout);
    assert_eq!(lines[0]["values"]["mapped"], "active");
    assert_eq!(lines[1]["outcome"], "error");
    assert_eq!(lines[1]["error"], "no mapping for \"WON\" and no default");
    assert_eq!(lines[2]["values"]["mapped"], serde_json::Value::Null);
    assert!(!w.state_exists(), "no state store was created");
    // A line that does not fit the transform is refused, naming its line.
    w.write("bad.jsonl", "{\"key\": 1, \"stauts\": \"open\"}\n");
    let bad = w.run(&["run", "spec.toml", "--input", "bad.jsonl"]);
    bad.expect_code(2);
    assert!(
        bad.stderr.contains("bad.jsonl:1: field \"stauts\""),
        "{}",
        bad.stderr
    );
}

#[test]
fn a_guest_printing_100_mb_costs_no_host_memory_and_its_output_is_capped_in_the_log() {
    warm();
    let w = World::new(Backend::Sqlite, "print");
    let body = |mb: u32| {
        format!(
            "config = {{ mode = \"print\", mb = \"{mb}\" }}\nfuel_per_row = 100000000000\ntimeout_ms = 120000"
        )
    };
    evil_py(&w, "print-1", &body(1), 2);
    evil_py(&w, "print-100", &body(100), 2);
    let peak = |spec: &str| {
        let child = w.spawn(&["run", spec, "--limit", "1"]);
        crate::harness::wait_with_peak_rss(child)
    };
    let (small, small_kib) = peak("print-1.toml");
    small.expect_code(0);
    let (big, big_kib) = peak("print-100.toml");
    big.expect_code(0);
    assert!(
        big.stderr.contains("stdout: evil-py prints 100 MiB"),
        "{}",
        big.stderr
    );
    assert!(big.stderr.contains("more bytes dropped"), "{}", big.stderr);
    // Printing 100 times as much may not cost the host more than a few
    // MiB of noise.
    assert!(
        big_kib < small_kib + 32 * 1024,
        "peak RSS {big_kib} KiB printing 100 MiB against {small_kib} KiB printing 1 MiB"
    );
}

#[test]
fn a_component_importing_wasi_http_is_refused_at_plan_naming_the_import() {
    let w = World::new(Backend::Sqlite, "http");
    quotes(&w, 10, false);
    w.write(
        "spec.toml",
        &fixtures::spec(&w, "evil-fetch-js", "", 100, "status_v2"),
    );
    let ran = w.run(&["plan", "spec.toml"]);
    ran.expect_code(2);
    assert!(
        ran.stderr.contains("wasi:http/outgoing-handler@0.2.")
            && ran.stderr.contains("refusing to run it"),
        "{}",
        ran.stderr
    );
    let inspected = w.run(&["inspect", &plugin("evil-fetch-js").display().to_string()]);
    inspected.expect_code(2);
    assert!(
        inspected.stdout.contains("wasi:http/outgoing-handler@0.2")
            && inspected.stdout.contains("(NOT ALLOWED)"),
        "{}",
        inspected.stdout
    );
}

#[test]
fn a_run_does_not_resume_over_a_changed_lookup_table() {
    let w = World::new(Backend::Sqlite, "lookup_resume");
    quotes(&w, 300, false);
    w.write("plans.csv", "status,mapped\nlost,closed_lost\n");
    let map = MAP.replace(",lost=closed_lost", "");
    let body = format!("config = {{ map = \"{map}\", table = \"plans\" }}");
    let spec = fixtures::spec(&w, "remap", &body, 50, "status_v2");
    w.write(
        "spec.toml",
        &format!("{spec}\n[[lookup]]\nname = \"plans\"\nfile = \"plans.csv\"\n"),
    );
    w.run(&["run", "spec.toml", "--execute", "--limit", "60"])
        .expect_code(0);
    let status = || w.state_rows("SELECT status FROM refill_runs WHERE mode = 'execute'");
    assert_eq!(status(), vec![vec![Some("incomplete".to_string())]]);
    w.write("plans.csv", "status,mapped\nlost,closed_lost_v2\n");
    let refused = w.run(&["run", "spec.toml", "--execute"]);
    refused.expect_code(2);
    assert!(
        refused
            .stderr
            .contains("its lookup tables changed since it started: \"plans\""),
        "{}",
        refused.stderr
    );
    assert_eq!(
        status(),
        vec![vec![Some("incomplete".to_string())]],
        "a refused resume leaves the run as it was"
    );
    // Put back, it resumes and finishes.
    w.write("plans.csv", "status,mapped\nlost,closed_lost\n");
    w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
    fixtures::assert_remapped(&w, false);
}

#[test]
fn a_python_exception_on_one_row_is_its_dead_letter_with_the_exceptions_type_and_message() {
    warm();
    let w = World::new(Backend::Sqlite, "python-raise");
    evil_py(&w, "raise", "config = { mode = \"raise\" }", 40);
    w.exec("UPDATE quotes SET status = 'boom' WHERE id = 7");
    let ran = w.run(&["run", "raise.toml", "--execute"]);
    ran.expect_code(1);
    let dead = w.state_rows("SELECT row_key, error, kind FROM refill_dead_letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0][0].as_deref(), Some("7"));
    assert_eq!(dead[0][2].as_deref(), Some("trap"));
    let error = dead[0][1].as_deref().unwrap_or_default();
    for part in [
        "the guest raised ValueError: evil-py raises on row 7",
        "in raise_on_boom",
    ] {
        assert!(error.contains(part), "{part:?} is not in {error:?}");
    }
    assert!(!error.contains("RUST_BACKTRACE"), "{error}");
    // The other rows of its batch, and of the run, were written.
    let written = crate::fixtures::status_v2(&w)
        .into_iter()
        .filter(|(id, v)| *id != 7 && v.as_deref() == Some("ok"))
        .count();
    assert_eq!(written, 39);
}

#[test]
fn refill_prints_its_wit_and_try_checks_outcomes_against_an_expected_file() {
    let w = World::new(Backend::Sqlite, "try-expect");
    let wit = w.run(&["wit"]);
    wit.expect_code(0);
    let file = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/transform.wit"),
    )
    .expect("the WIT file");
    assert_eq!(wit.stdout, file, "refill wit is not wit/transform.wit");

    w.write(
        "rows.jsonl",
        "{\"key\": 1, \"value\": \"open\"}\n{\"key\": 2, \"value\": \"nope\"}\n",
    );
    let component = plugin("remap").display().to_string();
    let try_with = |expected: &str| {
        w.write("expected.jsonl", expected);
        w.run(&[
            "try",
            &component,
            "--input",
            "rows.jsonl",
            "--config",
            "map=open=active",
            "--expect",
            "expected.jsonl",
        ])
    };
    let right = "{\"key\":1,\"outcome\":\"update\",\"values\":{\"mapped\":\"active\"}}\n\
                 {\"key\":2,\"outcome\":\"error\",\"error\":\"no mapping for \\\"nope\\\" and no default\"}\n";
    let ran = try_with(right);
    ran.expect_code(0);
    assert!(
        ran.stderr.contains("all 2 rows as expected"),
        "{}",
        ran.stderr
    );
    // One word of an error message differs: the row is named, exit 1.
    let ran = try_with(&right.replace("no default", "no fallback"));
    ran.expect_code(1);
    assert!(
        ran.stderr
            .contains("expected.jsonl: row 2 (key 2): expected"),
        "{}",
        ran.stderr
    );
}

/// A guest compiler the Makefile installs: `var` names it, else the
/// repository's own install.
fn tool(var: &str, default: &str) -> std::path::PathBuf {
    std::env::var_os(var).map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(default)
        },
        std::path::PathBuf::from,
    )
}

/// Runs `program args` in `dir` with the guest compilers the Makefile
/// installs; returns (exit code, stdout + stderr).
fn run_in(dir: &std::path::Path, program: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .env(
            "REFILL_COMPONENTIZE_PY",
            tool(
                "REFILL_COMPONENTIZE_PY",
                "target/tools/py/bin/componentize-py",
            ),
        )
        .env(
            "REFILL_COMPONENTIZE_JS",
            tool(
                "REFILL_COMPONENTIZE_JS",
                "plugins/js-toolchain/node_modules/.bin/componentize-js",
            ),
        )
        .env(
            "REFILL_WIT_BINDGEN",
            tool("REFILL_WIT_BINDGEN", "target/tools/c/bin/wit-bindgen"),
        )
        .env_remove("VIRTUAL_ENV")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Like [`run_in`], and the command must succeed.
fn ok_in(dir: &std::path::Path, program: &std::path::Path, args: &[&str]) -> String {
    let (code, text) = run_in(dir, program, args);
    assert_eq!(
        code,
        0,
        "{} {args:?} in {}:\n{text}",
        program.display(),
        dir.display()
    );
    text
}

/// The provenance `refill build` wrote for project `name` in `dir`.
fn provenance(dir: &std::path::Path, name: &str) -> serde_json::Value {
    let path = dir.join(format!("dist/{name}.provenance.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("provenance is JSON")
}

#[test]
fn refill_new_and_refill_build_make_components_outside_the_repository_that_pass_their_own_test() {
    let _cpus = crate::harness::loading_the_cpus();
    let w = World::new(Backend::Sqlite, "scaffolds");
    let refill = std::path::Path::new(env!("CARGO_BIN_EXE_refill"));
    let root = w.dir.path();
    for lang in ["python", "js", "c", "rust"] {
        let name = format!("demo-{lang}");
        ok_in(root, refill, &["new", "--lang", lang, &name]);
        let dir = root.join(&name);
        let built = ok_in(&dir, refill, &["build"]);
        let record = provenance(&dir, &name);
        let digest = record["output_sha256"].as_str().expect("output_sha256");
        assert!(
            built.contains(&format!("{digest}  dist/{name}.wasm")),
            "{lang}: {built}"
        );
        let component = std::fs::read(dir.join(format!("dist/{name}.wasm"))).expect("component");
        use sha2::Digest as _;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&component)),
            digest,
            "{lang}"
        );
        assert!(
            record["toolchain"]
                .as_object()
                .is_some_and(|t| !t.is_empty()),
            "{lang}: {record}"
        );
        let tried = ok_in(
            &dir,
            refill,
            &[
                "try",
                &format!("dist/{name}.wasm"),
                "--input",
                "rows.jsonl",
                "--expect",
                "expected.jsonl",
            ],
        );
        assert!(tried.contains("all 3 rows as expected"), "{lang}: {tried}");
        if lang == "python" || lang == "c" {
            assert!(built.contains("type stubs: typings"), "{lang}: {built}");
        }
        if lang == "python" {
            // The scaffold's native unit tests pass, with the host mocked.
            let tested = ok_in(&dir, std::path::Path::new("python3"), &["test_app.py"]);
            assert!(
                tested.contains("Ran 3 tests") && tested.contains("OK"),
                "{tested}"
            );
        }
    }
    // A Rust project's logic passes its own native test with the SDK it
    // carries, in its own workspace.
    let cargo = std::env::var_os("CARGO").map_or_else(|| "cargo".into(), std::path::PathBuf::from);
    let tested = ok_in(
        &root.join("demo-rust"),
        &cargo,
        &["test", "--offline", "--quiet"],
    );
    assert!(tested.contains("1 passed"), "{tested}");
}

#[test]
fn a_rebuild_in_another_folder_checks_the_pin_and_a_changed_source_fails_the_check() {
    let _cpus = crate::harness::loading_the_cpus();
    let w = World::new(Backend::Sqlite, "reproducible");
    let refill = std::path::Path::new(env!("CARGO_BIN_EXE_refill"));
    // Two folders at different depths, as two machines would have them.
    let first = w.dir.path().join("team");
    let second = w.dir.path().join("review/checkout/of/it");
    for (lang, entry) in [
        ("js", "app.js"),
        ("rust", "src/lib.rs"),
        ("python", "app.py"),
    ] {
        let name = format!("pinned-{lang}");
        for parent in [&first, &second] {
            std::fs::create_dir_all(parent).expect("mkdir");
            ok_in(parent, refill, &["new", "--lang", lang, &name]);
        }
        let (team, review) = (first.join(&name), second.join(&name));
        ok_in(&team, refill, &["build"]);
        let recorded = provenance(&team, &name);
        let pin = recorded["output_sha256"].as_str().expect("output_sha256");
        // What the team commits: the source, its lock file, the provenance.
        if lang == "rust" {
            std::fs::copy(team.join("Cargo.lock"), review.join("Cargo.lock")).expect("lock");
        }
        std::fs::create_dir_all(review.join("dist")).expect("dist");
        let recorded_path = format!("dist/{name}.provenance.json");
        std::fs::copy(team.join(&recorded_path), review.join(&recorded_path)).expect("copy");

        let (code, checked) = run_in(&review, refill, &["build", "--check", pin]);
        assert_eq!(code, 0, "{lang}: {checked}");
        assert!(
            checked.contains(&format!("matches: . builds to {pin}")),
            "{lang}: {checked}"
        );
        assert_eq!(recorded["reproducible"], true, "{recorded}");
        // `--check` wrote nothing: the committed provenance is untouched.
        assert_eq!(provenance(&review, &name), recorded, "{lang}");
        assert!(!review.join(format!("dist/{name}.wasm")).exists(), "{lang}");

        // One changed byte of the source: the check fails and says the
        // source is not the one the pin was built from.
        let path = review.join(entry);
        let source = std::fs::read_to_string(&path).expect("source");
        std::fs::write(&path, source.replacen("Uppercases", "Upper-cases", 1)).expect("write");
        let (code, checked) = run_in(&review, refill, &["build", "--check", pin]);
        assert_eq!(code, 1, "{lang}: {checked}");
        assert!(checked.contains("source differs"), "{lang}: {checked}");
        let other = "0".repeat(64);
        let (code, checked) = run_in(&review, refill, &["build", "--check", &other]);
        assert_eq!(code, 1, "{lang}: {checked}");
        assert!(checked.contains("digest differs"), "{lang}: {checked}");
    }
}

#[test]
fn remap_in_four_languages_gives_the_same_outcome_and_the_same_refusal_for_odd_input() {
    warm();
    let w = World::new(Backend::Sqlite, "four_languages");
    let rows = [
        r#"{"key": 1, "value": "open"}"#,
        r#"{"key": 2, "value": null}"#,
        r#"{"key": 3, "values": [42]}"#,
        r#"{"key": 4, "value": "WON"}"#,
        r#"{"key": 5, "value": "\ufeffopen"}"#,
        r#"{"key": 6, "value": " open"}"#,
        r#"{"key": 7, "value": "lost"}"#,
        r#"{"key": 8, "value": "café"}"#,
        r#"{"key": 9, "values": [true]}"#,
        r#"{"key": 10, "value": ""}"#,
    ];
    w.write("rows.jsonl", &(rows.join("\n") + "\n"));
    w.write(
        "plans.csv",
        "status,mapped\nlost,closed_lost\ncafé,bistro\n",
    );
    // Each case: the --config and --lookup arguments.
    let cases: [&[&str]; 9] = [
        // Blanks of every Unicode kind around pairs, an empty pair, and a
        // table behind the map.
        &[
            "--config",
            "map=\u{a0}open = active ,\u{2003}won=closed_won\u{3000},, =blank",
            "--config",
            "table=plans",
            "--lookup",
            "plans=plans.csv",
        ],
        &["--config", "map=open=active", "--config", "default=other"],
        &["--config", "map=open=active", "--config", "map=won=x"],
        &["--config", "map=open"],
        &["--config", "map=a=b,a=c"],
        &["--config", "map= , "],
        &["--config", "table=nope"],
        &["--config", "colour=red"],
        &[],
    ];
    let mut seen = String::new();
    for case in cases {
        let mut outcomes = Vec::new();
        for component in ["remap", "remap-py", "remap-js", "remap-c"] {
            let path = plugin(component).display().to_string();
            let mut args = vec!["try", path.as_str(), "--input", "rows.jsonl", "--json"];
            args.extend_from_slice(case);
            let ran = w.run(&args);
            // A refusal's message, without the component's own name.
            let refusal: Vec<String> = ran
                .stderr
                .lines()
                .filter(|l| l.contains("error"))
                .map(|l| l.replace(&path, "COMPONENT"))
                .collect();
            outcomes.push((component, ran.code, ran.stdout.clone(), refusal));
        }
        let (_, code, stdout, refusal) = &outcomes[0];
        seen.push_str(stdout);
        seen.push_str(&refusal.join("\n"));
        for (component, other_code, other_stdout, other_refusal) in &outcomes[1..] {
            assert_eq!(
                (code, stdout, refusal),
                (other_code, other_stdout, other_refusal),
                "{component} differs from Rust's remap for {case:?}"
            );
        }
    }
    // The cases reached what they are about.
    for expected in [
        r#""mapped":"active""#,
        r#""mapped":"bistro""#,
        r#""mapped":"other""#,
        "no mapping for \\\"\u{feff}open\\\" and no default",
        "expected text, got boolean",
        "`open` is not a `from=to` pair",
        "`a` is mapped twice",
        "the mapping is empty",
        "the spec declares no lookup table \"nope\"",
        "parameter `colour` is not known",
        "parameter `map` is required",
    ] {
        assert!(seen.contains(expected), "no {expected:?} in:\n{seen}");
    }
}
