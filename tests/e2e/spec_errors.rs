//! Bad specs: each gives a one-line error naming the problem, exit code 2,
//! and writes nothing: no row, no state store.

use crate::both;
use crate::fixtures::*;
use crate::harness::*;

/// Writes `spec`, runs it with `--execute`, and checks the refusal.
#[track_caller]
fn refused(w: &World, spec: &str, expected: &[&str]) {
    w.write("spec.toml", spec);
    let before = w.snapshot("quotes", "id, status, status_v2, region");
    for args in [
        &["run", "spec.toml", "--execute"][..],
        &["plan", "spec.toml"][..],
    ] {
        let ran = w.run(args);
        ran.expect_code(2);
        let lines: Vec<&str> = ran
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "not one line:\n{}", ran.stderr);
        assert!(lines[0].starts_with("refill: error: "), "{}", lines[0]);
        for part in expected {
            assert!(lines[0].contains(part), "{:?} lacks {part:?}", lines[0]);
        }
    }
    assert_eq!(
        w.snapshot("quotes", "id, status, status_v2, region"),
        before,
        "rows were written"
    );
    assert!(!w.state_exists(), "a state store was created");
}

both!(unknown_keys_are_refused_with_their_line, |backend, name| {
    let w = World::new(backend, name);
    quotes(&w, 20, false);
    let spec = remap_spec(&w, 10, "").replace("table = \"quotes\"", "tabel = \"quotes\"");
    let line = spec
        .lines()
        .position(|l| l.starts_with("tabel"))
        .expect("line")
        + 1;
    refused(
        &w,
        &spec,
        &[
            &format!("spec.toml:{line}:1"),
            "unknown field `tabel`",
            "expected one of",
        ],
    );
});

both!(a_missing_table_is_named, |backend, name| {
    let w = World::new(backend, name);
    quotes(&w, 20, false);
    let spec = remap_spec(&w, 10, "").replace("table = \"quotes\"", "table = \"quotez\"");
    refused(
        &w,
        &spec,
        &["[source] table:", "table", "quotez\" not found"],
    );
});

both!(
    a_missing_column_is_named_with_the_existing_ones,
    |backend, name| {
        let w = World::new(backend, name);
        quotes(&w, 20, false);
        let spec =
            remap_spec(&w, 10, "").replace("columns = [\"status\"]", "columns = [\"stauts\"]");
        refused(
            &w,
            &spec,
            &[
                "[source] columns:",
                "column \"stauts\" not found",
                "it has: id, status, status_v2, region",
            ],
        );
        let spec = remap_spec(&w, 10, "")
            .replace("columns = [\"status_v2\"]", "columns = [\"status_v3\"]");
        refused(
            &w,
            &spec,
            &["[target] columns:", "column \"status_v3\" not found"],
        );
    }
);

both!(wrong_types_are_refused, |backend, name| {
    let w = World::new(backend, name);
    quotes(&w, 20, false);
    // A TOML value of the wrong type.
    let spec = remap_spec(&w, 10, "").replace("rows = 10", "rows = \"ten\"");
    refused(&w, &spec, &["invalid type: string \"ten\", expected u32"]);
    // A column of a type the transform does not read: remap reads text.
    let spec = remap_spec(&w, 10, "").replace("columns = [\"status\"]", "columns = [\"id\"]");
    refused(
        &w,
        &spec,
        &[
            "column \"id\" has type",
            "but remap reads input 1 (\"value\") as text",
        ],
    );
    // A key column of an unsupported type.
    let t = w.table("floats");
    w.exec(&format!(
        "CREATE TABLE {t} (k REAL PRIMARY KEY, status TEXT, status_v2 TEXT)"
    ));
    let spec = remap_spec(&w, 10, "")
        .replace("table = \"quotes\"", "table = \"floats\"")
        .replace("key = \"id\"", "key = \"k\"");
    let spec = spec.replace("where = \"region = 'eu'\"\n", "");
    refused(
        &w,
        &spec,
        &[
            "[source] key:",
            "refill keys must be integer or text columns",
        ],
    );
});

both!(
    configuration_the_transform_refuses_is_refused_before_any_row,
    |backend, name| {
        let w = World::new(backend, name);
        quotes(&w, 20, false);
        let spec = remap_spec(&w, 10, "").replace("config = { map", "config = { mapp");
        refused(
            &w,
            &spec,
            &[
                "[transform] config:",
                "remap refuses it",
                "parameter `mapp` is not known",
            ],
        );
        let spec = remap_spec(&w, 10, "")
            .replace("where = \"region = 'eu'\"", "where = \"regoin = 'eu'\"");
        refused(
            &w,
            &spec,
            &["[source] where:", "the condition does not work"],
        );
    }
);
