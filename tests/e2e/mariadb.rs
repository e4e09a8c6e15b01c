//! What only MariaDB/MySQL has (`REFILL_TEST_MYSQL_URL`, default the local
//! MariaDB): backticked names and a separate target, every column type
//! round-tripped, values the server refuses, zero dates, `TINYINT(1)`
//! booleans, ENUM keys, BIT and spatial columns, a chunk whose values grow
//! longer, triggers that SIGNAL, a
//! concurrent writer, and the replica-lag signal on a server that is not a
//! replica. The bodies every backend shares run here too, from `both!`.
//! Each test has a database of its own, which also holds the state store.

use crate::fixtures::*;
use crate::harness::*;

/// The newest run's `status --json` entry.
fn latest(w: &World) -> serde_json::Value {
    w.status("spec.toml", None)[0].clone()
}

#[test]
fn text_keys_and_a_separate_target_with_backticked_names() {
    let w = World::new(Backend::Mysql, "my_text_keys");
    // Names that need quoting, a case-insensitive key collation, and a
    // target with another collation than the connection's.
    w.exec(
        "CREATE TABLE `we``ird` (`han dle` VARCHAR(40) COLLATE utf8mb4_unicode_ci PRIMARY KEY, status TEXT);
         CREATE TABLE `out put` (`han dle` VARCHAR(40) COLLATE utf8mb4_unicode_ci PRIMARY KEY, status_v2 TEXT);
         INSERT INTO `we``ird` VALUES ('a', 'open'), ('B', 'won'), ('c', 'lost'), ('É', 'open'), ('z', NULL), ('only-src', 'won');
         INSERT INTO `out put` VALUES ('a', NULL), ('b', NULL), ('c', 'old'), ('É', NULL), ('z', 'x')",
    );
    let spec = Spec {
        name: "text-keys",
        table: "we`ird",
        key: "han dle",
        column: "status",
        scope: None,
        rows: 2,
        component: "remap",
        transform_body: &format!("config = {{ map = \"{MAP}\" }}"),
        target: "status_v2",
    }
    .render(&w)
    .replace("[target]\n", "[target]\ntable = \"out put\"\n");
    w.write("spec.toml", &spec);
    let ran = w.run(&["run", "spec.toml", "--execute"]);
    // 'only-src' has no target row: a per-row error.
    ran.expect_code(1);
    let rows = w.rows("SELECT `han dle`, status_v2 FROM `out put` ORDER BY `han dle`");
    let got: Vec<(String, Option<String>)> = rows
        .into_iter()
        .map(|r| (r[0].clone().expect("key"), r[1].clone()))
        .collect();
    let want = |k: &str, v: Option<&str>| (k.to_string(), v.map(str::to_string));
    assert_eq!(
        got,
        vec![
            want("a", Some("active")),
            want("b", Some("closed_won")),
            want("c", Some("closed_lost")),
            want("É", Some("active")),
            want("z", None),
        ]
    );
    let failed = w.state_rows("SELECT row_key FROM refill_dead_letters");
    assert_eq!(failed, vec![vec![Some("only-src".to_string())]]);
}

/// Runs `evil` in `echo` mode from `column` to `column_copy` of `typed`.
fn echo(w: &World, column: &str) -> Ran {
    write_echo_spec(w, column, 2);
    w.run(&["run", "spec.toml", "--execute"])
}

#[test]
fn every_mariadb_type_round_trips() {
    let w = World::new(Backend::Mysql, "my_types");
    let columns = [
        ("i4", "INT"),
        ("i8", "BIGINT"),
        ("u8", "BIGINT UNSIGNED"),
        ("f8", "DOUBLE"),
        ("r4", "FLOAT"),
        ("b", "BOOLEAN"),
        ("t", "TEXT"),
        ("vc", "VARCHAR(12)"),
        ("ch", "CHAR(4)"),
        ("e", "ENUM('happy','sad')"),
        ("j", "JSON"),
        ("ts", "DATETIME(3)"),
        ("tz", "TIMESTAMP(6) NULL"),
        ("d", "DATE"),
        ("n", "DECIMAL(12,2)"),
        ("bl", "BLOB"),
    ];
    let defs: Vec<String> = columns
        .iter()
        .map(|(c, t)| format!("{c} {t}, {c}_copy {t}"))
        .collect();
    w.exec(&format!(
        "CREATE TABLE typed (id INT PRIMARY KEY, {});
         INSERT INTO typed (id, i4, i8, u8, f8, r4, b, t, vc, ch, e, j, ts, tz, d, n, bl) VALUES
           (1, 2147483647, 9223372036854775807, 9223372036854775807, 1.5e300, 1.5, TRUE, '', 'ünï😀de', 'ab',
            'sad', '{{\"a\": [1, \"😀\"]}}', '2024-02-29 23:59:59.123', '2038-01-19 03:14:07.999999', '1000-01-01',
            -9999999999.99, X'00ff00'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (3, -2147483648, -1, 0, -0.25, 0.1, FALSE, 'line\\nbreak\\ttab', '', '', 'happy', '[]',
            '1900-01-01 00:00:00', '1970-01-01 00:00:01', '9999-12-31', 0, X'');
         INSERT INTO typed (id, t, j, bl) VALUES
           (1000000, REPEAT('x', 65535), CONCAT('{{\"big\": \"', REPEAT('z', 1048576), '\"}}'),
            REPEAT(X'79', 65535))",
        defs.join(", ")
    ));
    for (column, _) in columns {
        echo(&w, column).expect_code(0);
        let rows = w.rows(&format!(
            "SELECT {}, {}, {} FROM typed ORDER BY id",
            w.text("id"),
            w.text(&format!("`{column}`")),
            w.text(&format!("`{column}_copy`"))
        ));
        assert_eq!(rows.len(), 4);
        for row in rows {
            assert_eq!(
                row[1], row[2],
                "{column} of row {:?} did not round-trip",
                row[0]
            );
        }
        // What was written reads back as what was computed: a second run
        // finds every row already right.
        echo(&w, column).expect_code(0);
        assert_eq!(
            latest(&w)["totals"]["updated"],
            0,
            "{column} is rewritten on every run"
        );
    }
}

#[test]
fn values_the_server_refuses_fail_only_their_rows() {
    let w = World::new(Backend::Mysql, "my_refused");
    quotes(&w, 300, false);
    // The new status column is an enum that lacks closed_lost: strict mode
    // refuses it (error 1265) instead of storing ''.
    w.exec(
        "ALTER TABLE quotes DROP COLUMN status_v2;
         ALTER TABLE quotes ADD COLUMN status_v2 ENUM('active', 'closed_won')",
    );
    w.write("spec.toml", &remap_spec(&w, 100, ""));
    let ran = w.run(&["run", "spec.toml", "--execute"]);
    ran.expect_code(1);
    assert!(
        ran.stdout
            .contains("the database refused the new values: Data truncated for column"),
        "{}",
        ran.stdout
    );
    for (id, v2) in status_v2(&w) {
        let expected = match remapped(status_of(id, false)).expect("valid status") {
            _ if !in_scope(id) => None,
            Some(v) if v == "closed_lost" => None,
            other => other,
        };
        assert_eq!(v2, expected, "row {id}");
    }
    let lost = (1..=300)
        .filter(|&i| in_scope(i) && status_of(i, false) == Some("lost"))
        .count();
    assert_eq!(latest(&w)["totals"]["failed"], lost as u64);
}

/// A chunk's rows go in one statement even when a later row's new value
/// is longer than the first's. (A derived table spelt `SELECT ? … UNION
/// ALL VALUES (?), …` sizes its columns by the first row on MariaDB, so
/// that every chunk was refused with "Data too long" and written by
/// halves, down to single rows: correct, and 60 times slower.)
#[test]
fn a_chunk_whose_values_grow_is_written_whole_not_split() {
    let w = World::new(Backend::Mysql, "my_widths");
    // Row 1 becomes "closed_won", row 2 "closed_lost": one byte longer.
    quotes(&w, 200, false);
    w.write("spec.toml", &remap_spec(&w, 100, ""));
    let ran = Ran::from(
        w.refill()
            .env("REFILL_LOG", "refill=info,refill::sink=debug")
            .args(["run", "spec.toml", "--execute"])
            .output()
            .expect("run refill"),
    );
    ran.expect_code(0);
    assert!(
        !ran.stderr.contains("splitting it"),
        "a chunk was split:\n{}",
        ran.stderr
    );
    for (id, v2) in status_v2(&w) {
        let expected = match in_scope(id) {
            true => remapped(status_of(id, false)).expect("valid status"),
            false => Some("untouched".to_string()),
        };
        assert_eq!(v2, expected, "row {id}");
    }
}

#[test]
fn replica_lag_on_a_server_that_is_not_a_replica_cannot_be_measured() {
    let w = World::new(Backend::Mysql, "my_replica");
    quotes(&w, 100, false);
    let base = remap_spec(&w, 50, "");

    // A MySQL primary does not report its replicas' lag.
    w.write(
        "spec.toml",
        &format!("{base}\n[throttle]\nmax_replica_lag = \"5s\"\n"),
    );
    let ran = w.run(&["plan", "spec.toml"]);
    ran.expect_code(2);
    assert!(
        ran.stderr.contains("set [throttle] replica_url"),
        "{}",
        ran.stderr
    );

    // The local server has no replication configured: SHOW REPLICA STATUS
    // is empty, and the plan says the url (masked) is not a replica.
    w.write(
        "spec.toml",
        &format!(
            "{base}\n[throttle]\nmax_replica_lag = \"5s\"\nreplica_url = \"{}\"\n",
            w.url()
        ),
    );
    let ran = w.run(&["plan", "spec.toml"]);
    ran.expect_code(0);
    assert!(
        ran.stdout.contains(&format!(
            "cannot measure replica lag: {} is not a replica (SHOW REPLICA STATUS returned no row)",
            w.url()
        )),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("(a run would wait)"), "{}", ran.stdout);

    // A password never shows.
    let with_password = w.url().replacen("root@", "root:sekret@", 1);
    w.write(
        "spec.toml",
        &format!(
            "{base}\n[throttle]\nmax_replica_lag = \"5s\"\nreplica_url = \"{with_password}\"\n"
        ),
    );
    let ran = w.run(&["plan", "spec.toml"]);
    ran.expect_code(0);
    assert!(
        ran.stdout.contains("cannot measure replica lag") && ran.stdout.contains("root:***@"),
        "{}",
        ran.stdout
    );
    assert!(!ran.all().contains("sekret"), "{}", ran.all());
}

#[test]
fn mariadb_zero_and_invalid_dates_fail_only_their_rows_and_are_no_conflict() {
    let w = World::new(Backend::Mysql, "my_zero_dates");
    w.exec(
        "CREATE TABLE typed (id INT PRIMARY KEY, ts DATETIME, ts_copy DATETIME);
         SET STATEMENT sql_mode = '' FOR INSERT INTO typed (id, ts) VALUES
           (1, '2024-01-01 10:00:00'), (2, '0000-00-00 00:00:00'), (3, '2024-00-15 00:00:00'),
           (4, '2024-03-15 00:00:00')",
    );
    let ran = echo(&w, "ts");
    assert_eq!(ran.code, Some(1), "rows failed:\n{}", ran.all());
    assert!(!ran.all().contains("panicked"), "{}", ran.all());
    let rows = w.rows(&format!(
        "SELECT {}, {}, {} FROM typed ORDER BY id",
        w.text("id"),
        w.text("ts"),
        w.text("ts_copy")
    ));
    for row in &rows {
        match row[0].as_deref() {
            Some("2" | "3") => assert_eq!(row[2], None, "row {:?} was written", row[0]),
            _ => assert_eq!(row[1], row[2], "row {:?} did not round-trip", row[0]),
        }
    }
    let dead =
        w.state_rows("SELECT row_key, error, kind FROM refill_dead_letters ORDER BY row_key");
    let keys: Vec<_> = dead.iter().map(|d| d[0].as_deref()).collect();
    assert_eq!(keys, [Some("2"), Some("3")], "{dead:?}");
    assert!(
        dead.iter().all(|d| d[2].as_deref() == Some("unreadable")),
        "{dead:?}"
    );
    for (d, what) in dead
        .iter()
        .zip(["the zero date 0000-00-00", "invalid date"])
    {
        let error = d[1].as_deref().unwrap_or_default();
        assert!(
            error.contains("cannot read column ts of")
                && error.contains(what)
                && error.contains("which a transform's timestamp cannot hold")
                && !error.contains("changed between"),
            "{error}"
        );
    }
}

#[test]
fn a_boolean_column_holding_another_integer_fails_its_row_not_as_a_conflict() {
    let w = World::new(Backend::Mysql, "tinyint_my");
    w.exec(
        "CREATE TABLE typed (id INT PRIMARY KEY, b TINYINT(1), b_copy TINYINT(1));
         INSERT INTO typed (id, b) VALUES (1, 1), (2, 2), (3, -1), (4, 0), (5, NULL)",
    );
    let ran = echo(&w, "b");
    ran.expect_code(1);
    let dead =
        w.state_rows("SELECT row_key, error, kind FROM refill_dead_letters ORDER BY row_key");
    let keys: Vec<_> = dead.iter().map(|d| d[0].as_deref()).collect();
    assert_eq!(keys, [Some("2"), Some("3")], "{dead:?}");
    for d in &dead {
        let error = d[1].as_deref().unwrap_or_default();
        assert!(
            error.contains("reads a TINYINT(1) (BOOLEAN) column as a boolean")
                && !error.contains("changed between"),
            "{error}"
        );
        assert_eq!(d[2].as_deref(), Some("unreadable"));
    }
    let copies = w.rows("SELECT CAST(id AS CHAR), CAST(b_copy AS CHAR) FROM typed ORDER BY id");
    let copies: Vec<_> = copies.iter().map(|r| r[1].as_deref()).collect();
    assert_eq!(copies, [Some("1"), None, None, Some("0"), None]);
}

#[test]
fn an_enum_key_is_refused_at_plan_instead_of_missing_rows() {
    let w = World::new(Backend::Mysql, "enum_key_my");
    w.exec(
        "CREATE TABLE typed (k ENUM('zulu', 'alpha', 'mike') PRIMARY KEY, v TEXT, v_copy TEXT);
         INSERT INTO typed VALUES ('zulu', 'z', NULL), ('alpha', 'a', NULL), ('mike', 'm', NULL)",
    );
    let spec = Spec {
        name: "enum-key",
        table: "typed",
        key: "k",
        column: "v",
        scope: None,
        rows: 1,
        component: "evil",
        transform_body: "config = { mode = \"echo\" }",
        target: "v_copy",
    };
    w.write("spec.toml", &spec.render(&w));
    let ran = w.run(&["plan", "spec.toml"]);
    ran.expect_code(2);
    assert!(
        ran.stderr
            .contains("is an ENUM, which MySQL and MariaDB sort by position"),
        "{}",
        ran.stderr
    );
}

#[test]
fn bit_and_spatial_columns_are_refused_at_plan_by_name() {
    let w = World::new(Backend::Mysql, "unsupported_my");
    w.exec(
        "CREATE TABLE typed (id INT PRIMARY KEY, bits BIT(64), bits_copy BIT(64), spot POINT, spot_copy POINT);
         INSERT INTO typed (id, bits, spot) VALUES (1, b'1', POINT(1, 2))",
    );
    for (column, says) in [("bits", "has type bit(64)"), ("spot", "has type point")] {
        write_echo_spec(&w, column, 2);
        let ran = w.run(&["plan", "spec.toml"]);
        ran.expect_code(2);
        for part in [says, "which refill cannot read or write on MySQL/MariaDB"] {
            assert!(
                ran.stderr.contains(part),
                "{column}: {part:?}: {}",
                ran.stderr
            );
        }
    }
}
