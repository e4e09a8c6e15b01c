//! Dry runs, execute runs, per-row errors, canaries, plans, text keys and
//! separate target tables, on SQLite and PostgreSQL.

use crate::both;
use crate::fixtures::*;
use crate::harness::*;

/// `normalize-email` from `people.email` to `people.email_norm`.
fn email_spec(w: &World, name: &str, rows: u32) -> String {
    Spec {
        name,
        table: "people",
        key: "handle",
        column: "email",
        scope: None,
        rows,
        component: "normalize-email",
        transform_body: "",
        target: "email_norm",
    }
    .render(w)
}

/// The newest run's `status --json` entry.
fn latest(world: &World) -> serde_json::Value {
    world.status("spec.toml", None)[0].clone()
}

fn in_scope_counts(n: i64, bad: bool) -> (u64, u64, u64) {
    let (mut updated, mut unchanged, mut failed) = (0, 0, 0);
    for i in (1..=n).filter(|&i| in_scope(i)) {
        match remapped(status_of(i, bad)) {
            Ok(None) => unchanged += 1,
            Ok(Some(_)) => updated += 1,
            Err(()) => failed += 1,
        }
    }
    (updated, unchanged, failed)
}

both!(dry_run_changes_no_row, |backend, name| {
    let w = World::new(backend, name);
    quotes(&w, 500, false);
    w.write("spec.toml", &remap_spec(&w, 100, ""));
    let before = w.snapshot("quotes", "id, status, status_v2, region");
    let ran = w.run(&["run", "spec.toml"]);
    ran.expect_code(0);
    assert!(ran.stdout.contains("Nothing was written"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("status_v2: NULL → \"closed_won\""),
        "a sample diff: {}",
        ran.stdout
    );
    assert_eq!(
        w.snapshot("quotes", "id, status, status_v2, region"),
        before
    );
    let run = latest(&w);
    let (updated, unchanged, _) = in_scope_counts(500, false);
    assert_eq!(run["run"]["mode"], "dry-run");
    assert_eq!(run["totals"]["updated"], updated);
    assert_eq!(run["totals"]["unchanged"], unchanged);
});

both!(execute_sets_exactly_the_rows_in_scope, |backend, name| {
    let w = World::new(backend, name);
    quotes(&w, 1000, false);
    // The scope may name the table, as it would in a hand-written query.
    let spec = remap_spec(&w, 100, "").replace("region = 'eu'", "quotes.region = 'eu'");
    w.write("spec.toml", &spec);
    w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
    assert_remapped(&w, false);

    let listed = latest(&w);
    let id = listed["run"]["run_id"]
        .as_str()
        .expect("run id")
        .to_string();
    let detail = w.status("spec.toml", Some(&id));
    let run = &detail["run"];
    let (updated, unchanged, _) = in_scope_counts(1000, false);
    assert_eq!(run["status"], "done");
    assert_eq!(run["mode"], "execute");
    assert_eq!(run["rows_in_scope"], updated + unchanged);
    assert_eq!(run["component_digest"], digest(&plugin("remap")));
    assert_eq!(run["transform_name"], "remap");
    assert_eq!(run["host_version"], env!("CARGO_PKG_VERSION"));
    assert!(run["user_name"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(run["finished_at"].is_string());
    assert_eq!(detail["totals"]["updated"], updated);
    assert_eq!(detail["totals"]["unchanged"], unchanged);
    let chunks = detail["chunks"].as_array().expect("chunks");
    assert_eq!(chunks.len() as u64, (updated + unchanged).div_ceil(100));
    assert!(
        chunks
            .iter()
            .all(|c| c["status"] == "done" && c["attempts"] == 1)
    );
    let rows: u64 = chunks
        .iter()
        .map(|c| c["counts"]["rows"].as_u64().expect("rows"))
        .sum();
    assert_eq!(rows, updated + unchanged);

    // Running it again finds nothing left to change.
    let again = w.run(&["run", "spec.toml", "--execute"]);
    again.expect_code(0);
    assert_eq!(latest(&w)["totals"]["updated"], 0);
    assert_remapped(&w, false);
});

both!(per_row_errors_are_counted_and_exit_1, |backend, name| {
    let w = World::new(backend, name);
    quotes(&w, 1000, true);
    w.write("spec.toml", &remap_spec(&w, 100, ""));
    let ran = w.run(&["run", "spec.toml", "--execute"]);
    ran.expect_code(1);
    let (updated, _, failed) = in_scope_counts(1000, true);
    assert!(failed > 0);
    assert!(
        ran.stdout
            .contains(&format!("{failed} × no mapping for \"WON\" and no default")),
        "{}",
        ran.stdout
    );
    let run = latest(&w);
    assert_eq!(run["totals"]["failed"], failed);
    assert_eq!(run["totals"]["updated"], updated);
    assert_eq!(run["run"]["status"], "done");
    assert_remapped(&w, true);
});

both!(canary_limit_then_the_rest, |backend, name| {
    let w = World::new(backend, name);
    quotes(&w, 600, false);
    w.write("spec.toml", &remap_spec(&w, 100, ""));
    let ran = w.run(&["run", "spec.toml", "--execute", "--limit", "150"]);
    ran.expect_code(0);
    assert!(ran.stdout.contains("incomplete"), "{}", ran.stdout);
    let first_150: Vec<i64> = (1..=600).filter(|&i| in_scope(i)).take(150).collect();
    for (id, v2) in status_v2(&w) {
        let expected = if !in_scope(id) {
            Some("untouched".into())
        } else if first_150.contains(&id) {
            remapped(status_of(id, false)).expect("mapped")
        } else {
            None
        };
        assert_eq!(v2, expected, "row {id} after the canary");
    }
    let run = latest(&w);
    assert_eq!(run["run"]["status"], "incomplete");
    assert_eq!(run["totals"]["rows"], 150);

    let rest = w.run(&["run", "spec.toml", "--execute"]);
    rest.expect_code(0);
    assert!(rest.stdout.contains("(resumed)"), "{}", rest.stdout);
    assert_remapped(&w, false);
    let run = latest(&w);
    assert_eq!(run["run"]["status"], "done");
    assert_eq!(run["totals"]["rows"], run["run"]["rows_in_scope"]);
});

both!(plan_shows_the_work_and_writes_nothing, |backend, name| {
    let w = World::new(backend, name);
    quotes(&w, 500, false);
    w.write("spec.toml", &remap_spec(&w, 100, ""));
    let before = w.snapshot("quotes", "id, status, status_v2, region");
    let ran = w.run(&["plan", "spec.toml"]);
    ran.expect_code(0);
    let rows = (1..=500).filter(|&i| in_scope(i)).count();
    for expected in [
        format!("{rows} in scope"),
        format!("chunks     {} of up to 100 rows", rows.div_ceil(100)),
        "remap 0.1.0".to_string(),
        digest(&plugin("remap")),
        "imports refill host (log, lookup): refill:transform/host@0.2.0".to_string(),
        "region = 'eu'".to_string(),
    ] {
        assert!(
            ran.stdout.contains(&expected),
            "plan lacks {expected:?}:\n{}",
            ran.stdout
        );
    }
    assert_eq!(
        w.snapshot("quotes", "id, status, status_v2, region"),
        before
    );
    assert!(!w.state_exists(), "plan created a state store");
});

both!(
    text_keys_in_mixed_case_are_chunked_once_each,
    |backend, name| {
        let w = World::new(backend, name);
        let t = w.table("people");
        w.exec(&format!(
            "CREATE TABLE {t} (handle {} PRIMARY KEY NOT NULL, email TEXT, email_norm TEXT)",
            w.text_key()
        ));
        let mut expected = Vec::new();
        for i in 0..237 {
            // Keys differing only in case, with gaps and non-ASCII.
            let handle = match i % 3 {
                0 => format!("user{i:03}"),
                1 => format!("User{i:03}"),
                _ => format!("ÜSER{i:03}"),
            };
            let email = if i % 10 == 0 {
                None
            } else {
                Some(format!("  Person.{i}@Example.ORG "))
            };
            w.exec(&format!(
                "INSERT INTO {t} VALUES ('{handle}', {}, NULL)",
                email
                    .as_ref()
                    .map_or("NULL".to_string(), |e| format!("'{e}'"))
            ));
            expected.push((handle, email.map(|e| e.trim().to_lowercase())));
        }
        w.write("spec.toml", &email_spec(&w, "emails", 20));
        w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
        let got = w.rows(&format!("SELECT handle, email_norm FROM {t}"));
        assert_eq!(got.len(), expected.len());
        for row in got {
            let handle = row[0].clone().expect("handle");
            let want = expected
                .iter()
                .find(|(h, _)| *h == handle)
                .expect("known handle");
            assert_eq!(row[1], want.1, "row {handle}");
        }
        let run = latest(&w);
        assert_eq!(run["totals"]["rows"], 237);
        assert_eq!(run["chunks_done"], 237u64.div_ceil(20));
    }
);

both!(
    a_null_in_a_text_key_is_refused_at_plan_not_skipped,
    |backend, name| {
        let w = World::new(backend, name);
        let t = w.table("people");
        // SQLite lets a TEXT PRIMARY KEY hold NULLs; elsewhere the key is a
        // unique column that allows them.
        w.exec(&if backend == Backend::Sqlite {
            format!("CREATE TABLE {t} (handle TEXT PRIMARY KEY, email TEXT, email_norm TEXT)")
        } else {
            format!(
                "CREATE TABLE {t} (id serial PRIMARY KEY, handle TEXT UNIQUE, email TEXT, email_norm TEXT)"
            )
        });
        w.exec(&format!(
            "INSERT INTO {t} (handle, email) VALUES ('a', ' A@X.ORG'), ('b', 'B@x.org'), (NULL, 'N1@X.ORG'), (NULL, 'N2@X.ORG')"
        ));
        w.write("spec.toml", &email_spec(&w, "null-keys", 20));
        for command in [
            &["plan", "spec.toml"][..],
            &["run", "spec.toml", "--execute"],
        ] {
            let ran = w.run(command);
            ran.expect_code(2);
            for part in [
                "2 rows in scope have a NULL in key column \"handle\"",
                "IS NOT NULL",
            ] {
                assert!(
                    ran.stderr.contains(part),
                    "{command:?}: {part:?}: {}",
                    ran.stderr
                );
            }
        }
        let written = format!(
            "SELECT {} FROM {t} WHERE email_norm IS NOT NULL",
            w.text("count(*)")
        );
        assert_eq!(w.rows(&written), vec![vec![Some("0".to_string())]]);
        // Left out by the scope, the rows with keys run.
        let spec = email_spec(&w, "null-keys", 20)
            .replace("[source]\n", "[source]\nwhere = \"handle IS NOT NULL\"\n");
        w.write("spec.toml", &spec);
        w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
        assert_eq!(w.rows(&written), vec![vec![Some("2".to_string())]]);
        assert_eq!(latest(&w)["totals"]["rows"], 2);
    }
);

both!(separate_target_table_gets_the_outputs, |backend, name| {
    let w = World::new(backend, name);
    quotes(&w, 200, false);
    let pk = if backend == Backend::Sqlite {
        "INTEGER PRIMARY KEY"
    } else {
        "BIGINT PRIMARY KEY"
    };
    let derived = w.table("derived");
    // Every in-scope row has a target row except ids divisible by 10.
    w.exec(&format!(
        "CREATE TABLE {derived} (quote_id {pk}, status_v2 TEXT);
         INSERT INTO {derived} (quote_id) SELECT id FROM {} WHERE id % 10 <> 0",
        w.table("quotes")
    ));
    let spec = remap_spec(&w, 50, "").replace(
        "[target]\n",
        &format!(
            "[target]\n{}\ntable = \"derived\"\nkey = \"quote_id\"\n",
            w.schema_line()
        ),
    );
    w.write("spec.toml", &spec);
    let ran = w.run(&["run", "spec.toml", "--execute"]);
    ran.expect_code(1);
    assert!(
        ran.stdout
            .contains("no row with key 10 in the target table"),
        "{}",
        ran.stdout
    );
    let rows = w.rows(&format!(
        "SELECT {}, status_v2 FROM {derived}",
        w.text("quote_id")
    ));
    for row in rows {
        let id: i64 = row[0].as_deref().expect("id").parse().expect("number");
        let want = if in_scope(id) {
            remapped(status_of(id, false)).expect("mapped")
        } else {
            None
        };
        assert_eq!(row[1], want, "derived row {id}");
    }
    assert_eq!(
        status_v2(&w)
            .values()
            .filter(|v| v.as_deref() == Some("closed_won"))
            .count(),
        0,
        "source untouched"
    );
});

#[test]
fn citext_keys_are_compared_the_way_they_sort() {
    // citext sorts without case; comparing its keys as text would skip rows.
    let w = World::new(Backend::Postgres, "citext");
    w.exec("CREATE EXTENSION IF NOT EXISTS citext");
    let t = w.table("people");
    w.exec(&format!(
        "CREATE TABLE {t} (handle citext PRIMARY KEY, email TEXT, email_norm TEXT)"
    ));
    for handle in ["a", "B", "c", "D", "e", "F", "g", "H", "i", "J"] {
        w.exec(&format!(
            "INSERT INTO {t} VALUES ('{handle}', ' {handle}@X.ORG', NULL)"
        ));
    }
    w.write("spec.toml", &email_spec(&w, "citext", 2));
    w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
    let missing = w.rows(&format!(
        "SELECT CAST(handle AS TEXT) FROM {t} WHERE email_norm IS NULL"
    ));
    assert!(missing.is_empty(), "rows skipped: {missing:?}");
    assert_eq!(latest(&w)["totals"]["rows"], 10);
}
