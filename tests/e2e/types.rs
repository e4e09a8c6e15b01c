//! Every column type refill reads and writes, with hostile values (NULLs,
//! empty strings, 4-byte unicode, extremes, 10 MB values, keys with
//! gaps), round-tripped through the
//! `echo` guest into a copy column; and values the database refuses, which
//! fail only their own rows.

use crate::fixtures::*;
use crate::harness::*;

/// Runs `evil` in `echo` mode from `column` to `column_copy` of `typed`.
fn echo(w: &World, column: &str) -> Ran {
    write_echo_spec(w, column, 2);
    w.run(&["run", "spec.toml", "--execute"])
}

/// Asserts that `column` and its copy hold the same text in every row.
#[track_caller]
fn same(w: &World, column: &str) {
    // SQLite's quote() shows the storage class too: 'text', X'00', 1.5.
    let show = |c: &str| match w.backend {
        Backend::Sqlite => format!("quote({c})"),
        Backend::Postgres | Backend::Mysql => w.text(c),
    };
    let rows = w.rows(&format!(
        "SELECT CAST(id AS TEXT), {}, {} FROM {} ORDER BY id",
        show(column),
        show(&format!("{column}_copy")),
        w.table("typed")
    ));
    assert!(!rows.is_empty());
    for row in rows {
        assert_eq!(
            row[1], row[2],
            "{column} of row {:?} did not round-trip",
            row[0]
        );
    }
}

#[test]
fn every_postgres_type_round_trips() {
    let w = World::new(Backend::Postgres, "types_pg");
    let s = w.schema.clone().expect("schema");
    let columns = [
        ("i4", "int4"),
        ("i8", "int8"),
        ("f8", "float8"),
        ("r4", "real"),
        ("b", "boolean"),
        ("t", "text"),
        ("vc", "varchar(12)"),
        ("j", "jsonb"),
        ("js", "json"),
        ("ts", "timestamp(3)"),
        ("tz", "timestamptz"),
        ("d", "date"),
        ("n", "numeric(12,2)"),
        ("u", "uuid"),
        ("by", "bytea"),
        ("m", "mood"),
    ];
    let defs: Vec<String> = columns
        .iter()
        .map(|(c, t)| format!("{c} {t}, {c}_copy {t}"))
        .collect();
    w.exec(&format!(
        "CREATE TYPE {s}.mood AS ENUM ('happy', 'sad');
         SET search_path = {s};
         CREATE TABLE {s}.typed (id int4 PRIMARY KEY, {});
         INSERT INTO {s}.typed (id, i4, i8, f8, r4, b, t, vc, j, js, ts, tz, d, n, u, by, m) VALUES
           (1, 2147483647, 9223372036854775807, 'NaN', 1.5, true, '', 'ünï😀de', '{{\"a\": [1, \"😀\"]}}',
            '{{ \"kept\" :  \"as written\" }}', '2024-02-29 23:59:59.123', '1969-07-20 20:17:40+00', '0001-01-01',
            -9999999999.99, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff00', 'sad'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (3, -2147483648, -1, '-Infinity', -0.0, false, 'line\nbreak\ttab', '', '[]', 'null',
            '1900-01-01 00:00:00', '2262-04-11 23:47:16.854775+00', '2999-12-31', 0, '00000000-0000-0000-0000-000000000000',
            '', 'happy');
         INSERT INTO {s}.typed (id, t, j, by) VALUES
           (1000000, repeat('x', 10485760), jsonb_build_object('big', repeat('z', 10485760)),
            convert_to(repeat('y', 10485760), 'UTF8'))",
        defs.join(", ")
    ));
    for (column, _) in columns {
        let ran = echo(&w, column);
        ran.expect_code(0);
        same(&w, column);
    }
}

#[test]
fn every_sqlite_type_round_trips() {
    let w = World::new(Backend::Sqlite, "types_sqlite");
    let columns = [
        ("i", "INTEGER"),
        ("f", "REAL"),
        ("t", "TEXT"),
        ("bl", "BLOB"),
        ("b", "BOOLEAN"),
        ("j", "JSON"),
        ("ts", "DATETIME"),
        ("a", ""),
    ];
    let defs: Vec<String> = columns
        .iter()
        .map(|(c, t)| format!("{c} {t}, {c}_copy {t}"))
        .collect();
    w.exec(&format!(
        "CREATE TABLE typed (id INTEGER PRIMARY KEY, {});
         INSERT INTO typed (id, i, f, t, bl, b, j, ts, a) VALUES
           (1, 9223372036854775807, 1.5, 'ünï😀de', x'00ff00', 1, '{{\"a\": [1]}}', '2024-02-29 23:59:59.123', 'any text'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (3, -1, -0.25, '', x'', 0, 'not json at all', '1969-07-20 20:17:40', 42);
         INSERT INTO typed (id, t, bl, j) VALUES
           (1000000, replace(hex(zeroblob(5242880)), '0', 'x'), zeroblob(10485760),
            '{{\"big\": \"' || replace(hex(zeroblob(5242880)), '0', 'z') || '\"}}')",
        defs.join(", ")
    ));
    for (column, _) in columns {
        let ran = echo(&w, column);
        ran.expect_code(0);
        same(&w, column);
    }
}

#[test]
fn values_the_database_refuses_fail_only_their_rows() {
    let w = World::new(Backend::Postgres, "refused_pg");
    let s = w.schema.clone().expect("schema");
    quotes(&w, 300, false);
    // The new status column is an enum that lacks closed_lost.
    w.exec(&format!(
        "CREATE TYPE {s}.status2 AS ENUM ('active', 'closed_won');
         ALTER TABLE {s}.quotes DROP COLUMN status_v2;
         ALTER TABLE {s}.quotes ADD COLUMN status_v2 {s}.status2"
    ));
    w.write("spec.toml", &remap_spec(&w, 100, ""));
    let ran = w.run(&["run", "spec.toml", "--execute"]);
    ran.expect_code(1);
    assert!(
        ran.stdout
            .contains("the database refused the new values: invalid input value for enum"),
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
    assert_eq!(
        w.status("spec.toml", None)[0]["totals"]["failed"],
        lost as u64
    );
}

/// A trigger on the quotes that refuses to set `status_v2` to
/// `closed_lost`, in the world's backend's dialect.
fn refusing_trigger(w: &World) -> String {
    let t = w.table("quotes");
    match w.backend {
        Backend::Postgres => {
            let s = w.schema.clone().expect("schema");
            format!(
                "CREATE FUNCTION {s}.no_lost() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN IF NEW.status_v2 = 'closed_lost' THEN RAISE EXCEPTION 'no closed_lost here'; END IF; RETURN NEW; END $$;
                 CREATE TRIGGER no_lost BEFORE UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {s}.no_lost()"
            )
        }
        Backend::Sqlite => format!(
            "CREATE TRIGGER no_lost BEFORE UPDATE ON {t} WHEN NEW.status_v2 = 'closed_lost'
             BEGIN SELECT RAISE(ABORT, 'no closed_lost here'); END"
        ),
        Backend::Mysql => format!(
            "CREATE TRIGGER no_lost BEFORE UPDATE ON {t} FOR EACH ROW
             IF NEW.status_v2 = 'closed_lost' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'no closed_lost here'; END IF"
        ),
    }
}

crate::both!(
    a_trigger_refusing_a_row_fails_only_that_row,
    |backend, name| {
        let w = World::new(backend, name);
        quotes(&w, 300, false);
        w.exec(&refusing_trigger(&w));
        w.write("spec.toml", &remap_spec(&w, 100, ""));
        let ran = w.run(&["run", "spec.toml", "--execute"]);
        ran.expect_code(1);
        assert!(ran.stdout.contains("no closed_lost here"), "{}", ran.stdout);
        for (id, v2) in status_v2(&w) {
            let expected = match remapped(status_of(id, false)).expect("valid status") {
                _ if !in_scope(id) => Some("untouched".to_string()),
                Some(v) if v == "closed_lost" => None,
                other => other,
            };
            assert_eq!(v2, expected, "row {id}");
        }
        let dead = w.state_rows("SELECT DISTINCT kind FROM refill_dead_letters");
        assert_eq!(dead, vec![vec![Some("refused".to_string())]]);
    }
);

#[test]
fn values_postgres_stores_in_another_form_settle_after_one_run() {
    let w = World::new(Backend::Postgres, "reshaped_pg");
    let s = w.schema.clone().expect("schema");
    // Each source column holds a value its target column stores in another
    // form: rounded to a scale, keys reordered, fewer float bits, whole
    // seconds, padded with spaces that read back trimmed.
    let pairs = [
        ("n_src", "n"),
        ("j_src", "j"),
        ("f_src", "f"),
        ("ts_src", "ts"),
        ("c_src", "c"),
    ];
    w.exec(&format!(
        "CREATE TABLE {s}.typed (id int4 PRIMARY KEY,
           n_src text, n numeric(10,2), j_src text, j jsonb,
           f_src float8, f real, ts_src timestamptz, ts timestamp(0), c_src text, c char(4));
         INSERT INTO {s}.typed (id, n_src, j_src, f_src, ts_src, c_src)
           SELECT i, (i * 1.5)::text, '{{\"b\":  ' || i || ', \"a\": [1]}}', i * 0.1,
                  timestamptz '2024-01-01 00:00:00.123456+00' + i * interval '1.25 second',
                  'x' || repeat(' ', i % 3)
           FROM generate_series(1, 50) AS i;
         INSERT INTO {s}.typed (id) VALUES (51)"
    ));
    for (source, target) in pairs {
        let spec = Spec {
            name: &format!("settle-{target}"),
            table: "typed",
            key: "id",
            column: source,
            scope: None,
            rows: 20,
            component: "evil",
            transform_body: "config = { mode = \"echo\" }",
            target,
        };
        w.write("spec.toml", &spec.render(&w));
        w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
        let first = w.status("spec.toml", None)[0].clone();
        assert_eq!(first["totals"]["updated"], 50, "{target}: {first}");
        assert_eq!(first["totals"]["unchanged"], 1, "{target}: the NULL row");
        // What was written is what the transform computes, once stored:
        // verify agrees, and a second run finds nothing to change.
        let verified = w.run(&["verify", "--spec", "spec.toml"]);
        verified.expect_code(0);
        w.run(&["run", "spec.toml", "--execute"]).expect_code(0);
        let again = w.status("spec.toml", None)[0].clone();
        assert_ne!(again["run"]["run_id"], first["run"]["run_id"]);
        assert_eq!(again["totals"]["updated"], 0, "{target}: {again}");
        assert_eq!(again["totals"]["unchanged"], 51, "{target}");
    }
    // The stored forms really differ from what the transform returned.
    let rows = w.rows(&format!(
        "SELECT n::text, j::text, ts::text, c::text, c_src FROM {s}.typed WHERE id = 1"
    ));
    assert_eq!(
        rows[0],
        vec![
            Some("1.50".to_string()),
            Some("{\"a\": [1], \"b\": 1}".to_string()),
            Some("2024-01-01 00:00:01".to_string()),
            Some("x".to_string()),
            Some("x ".to_string())
        ]
    );
}

#[test]
fn postgres_infinite_and_far_timestamps_fail_only_their_rows_by_name() {
    let w = World::new(Backend::Postgres, "infinity_pg");
    let s = w.schema.clone().expect("schema");
    w.exec(&format!(
        "CREATE TABLE {s}.typed (id int4 PRIMARY KEY, tz timestamptz, tz_copy timestamptz,
                                 ts timestamp, ts_copy timestamp);
         INSERT INTO {s}.typed (id, tz, ts) VALUES
           (1, '2024-01-01 00:00:00+00', '2024-01-01 00:00:00'),
           (2, '0001-01-01 00:00:00+00 BC', '0001-01-01 00:00:00 BC'),
           (3, 'infinity', 'infinity'),
           (4, '-infinity', '-infinity'),
           (5, '294000-01-01 00:00:00+00', '294000-01-01 00:00:00'),
           (6, '2262-04-12 00:00:00+00', '2262-04-12 00:00:00')"
    ));
    for column in ["tz", "ts"] {
        let ran = echo(&w, column);
        assert_eq!(ran.code, Some(1), "rows failed:\n{}", ran.all());
        assert!(!ran.all().contains("panicked"), "{}", ran.all());
        // Every finite value refill can carry round-trips, BC included;
        // the others are left as they are.
        let rows = w.rows(&format!(
            "SELECT CAST(id AS TEXT), {}, {} FROM {s}.typed ORDER BY id",
            w.text(column),
            w.text(&format!("{column}_copy"))
        ));
        for row in &rows {
            let id: i64 = row[0]
                .as_deref()
                .and_then(|t| t.parse().ok())
                .expect("an id");
            match id {
                3..=5 => assert_eq!(row[2], None, "row {id} was written"),
                _ => assert_eq!(row[1], row[2], "row {id} did not round-trip"),
            }
        }
        let dead = w.state_rows(&format!(
            "SELECT row_key, error, kind FROM refill_dead_letters d JOIN refill_runs r ON r.run_id = d.run_id \
             WHERE r.name = 'copy-{column}' ORDER BY row_key"
        ));
        let keys: Vec<_> = dead.iter().map(|d| d[0].as_deref()).collect();
        assert_eq!(keys, [Some("3"), Some("4"), Some("5")], "{dead:?}");
        assert!(
            dead.iter().all(|d| d[2].as_deref() == Some("unreadable")),
            "{dead:?}"
        );
        for (d, what) in dead.iter().zip(["infinity", "-infinity", "past the years"]) {
            let error = d[1].as_deref().unwrap_or_default();
            assert!(
                error.contains(&format!("cannot read column {column} of"))
                    && error.contains(what)
                    && error.contains("which a transform's timestamp cannot hold")
                    && error.contains("isfinite"),
                "{error}"
            );
        }
        // verify reads them as failing, not as differing.
        let verified = w.run(&["verify", "--spec", "spec.toml"]);
        assert_eq!(verified.code, Some(1), "{}", verified.all());
        let count = |label: &str| {
            verified
                .stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
        };
        assert_eq!(
            count("differing").as_deref(),
            Some("0"),
            "{}",
            verified.stdout
        );
        assert_eq!(count("failed").as_deref(), Some("3"), "{}", verified.stdout);
        assert!(verified.stdout.contains(": 3, 4, 5"), "{}", verified.stdout);
    }
}

/// A small deterministic generator (xorshift64*), so that a failure names a
/// seed that reproduces it.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// One of `edges` a quarter of the time, otherwise `any`.
    fn edgy<T: Clone>(&mut self, edges: &[T], any: impl FnOnce(&mut Gen) -> T) -> T {
        if self.below(4) == 0 {
            edges[self.below(edges.len() as u64) as usize].clone()
        } else {
            any(self)
        }
    }
    fn i64(&mut self) -> i64 {
        self.edgy(&[i64::MIN, i64::MAX, 0, -1, 1], |g| g.next().cast_signed())
    }
    fn i32(&mut self) -> i32 {
        self.edgy(&[i32::MIN, i32::MAX, 0, -1], |g| g.next() as i32)
    }
    /// A finite double, from raw bits (subnormals, extremes and all).
    fn f64(&mut self) -> f64 {
        self.edgy(
            &[0.0, -0.0, f64::MIN_POSITIVE, f64::MAX, 5e-324, 0.1],
            |g| loop {
                let f = f64::from_bits(g.next());
                if f.is_finite() {
                    break f;
                }
            },
        )
    }
    /// A finite float.
    fn f32(&mut self) -> f32 {
        self.edgy(&[0.0, -0.0, f32::MIN_POSITIVE, f32::MAX, 0.1], |g| {
            loop {
                let f = f32::from_bits(g.next() as u32);
                if f.is_finite() {
                    break f;
                }
            }
        })
    }
    /// Text from a pool of awkward characters.
    fn text(&mut self, max: u64) -> String {
        const POOL: &[&str] = &[
            "a", "Z", "0", " ", "'", "\"", "\\", "\n", "\t", "%", "_", "é", "ß", "ü", "😀", "中",
            "\u{200b}", "\u{feff}", "$1", "?", "--", // no ";": exec splits on it
        ];
        let n = self.below(max + 1);
        (0..n)
            .map(|_| POOL[self.below(POOL.len() as u64) as usize])
            .collect()
    }
    fn hex(&mut self, bytes: u64) -> String {
        (0..bytes)
            .map(|_| format!("{:02x}", self.below(256)))
            .collect()
    }
    /// A JSON document: nested arrays and objects of awkward strings and
    /// numbers.
    fn json(&mut self, depth: u32) -> String {
        let quoted = |g: &mut Gen| serde_json::Value::String(g.text(8)).to_string();
        match (self.below(if depth == 0 { 3 } else { 5 }), depth) {
            (0, _) => quoted(self),
            (1, _) => self.i32().to_string(),
            (2, _) => ["true", "false", "null"][self.below(3) as usize].to_string(),
            (3, d) => {
                let items: Vec<String> = (0..self.below(4)).map(|_| self.json(d - 1)).collect();
                format!("[{}]", items.join(","))
            }
            (_, d) => {
                let items: Vec<String> = (0..self.below(4))
                    .map(|i| {
                        format!(
                            "{}:{}",
                            serde_json::Value::String(format!("k{i}{}", self.text(3))),
                            self.json(d - 1)
                        )
                    })
                    .collect();
                format!("{{{}}}", items.join(","))
            }
        }
    }
}

/// A generated column: its name, its SQL type, and a generator of SQL
/// expressions of its values.
type Generated = (&'static str, &'static str, fn(&mut Gen) -> String);

/// A MySQL/MariaDB string literal, where a backslash escapes too.
fn my_literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// A SQL string literal with standard quoting.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// How many generated rows each type gets on each database.
const GENERATED_ROWS: u64 = 100;

/// Generates rows of values of every column type `columns` names (type,
/// and a generator of SQL literals), writes them with SQL, round-trips each
/// column through the `echo` guest into its copy, and compares the copy
/// with the original in the database. Returns the number of values
/// compared.
fn round_trip_generated(w: &World, columns: &[Generated], seed: u64) -> u64 {
    let t = w.table("typed");
    let defs: Vec<String> = columns
        .iter()
        .map(|(c, ty, _)| format!("{c} {ty}, {c}_copy {ty}"))
        .collect();
    w.exec(&format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, {})",
        defs.join(", ")
    ));
    let mut g = Gen(seed);
    let names: Vec<&str> = columns.iter().map(|(c, _, _)| *c).collect();
    for id in 1..=GENERATED_ROWS {
        let values: Vec<String> = columns
            .iter()
            .map(|(_, _, make)| {
                if g.below(10) == 0 {
                    "NULL".to_string()
                } else {
                    make(&mut g)
                }
            })
            .collect();
        w.exec(&format!(
            "INSERT INTO {t} (id, {}) VALUES ({id}, {})",
            names.join(", "),
            values.join(", ")
        ));
    }
    for (column, _, _) in columns {
        write_echo_spec(w, column, 37);
        let ran = w.run(&["run", "spec.toml", "--execute"]);
        assert_eq!(
            ran.code,
            Some(0),
            "seed {seed:#x}, column {column}:\n{}",
            ran.all()
        );
        if w.backend == Backend::Mysql {
            // The bytes of each value's text form: exact for every type,
            // binary strings included.
            let show = |c: &str| format!("HEX(CAST({c} AS BINARY))");
            let rows = w.rows(&format!(
                "SELECT CAST(id AS CHAR), {}, {} FROM {t} ORDER BY id",
                show(column),
                show(&format!("{column}_copy"))
            ));
            for row in rows {
                assert_eq!(
                    row[1], row[2],
                    "seed {seed:#x}: {column} of row {:?}",
                    row[0]
                );
            }
        } else {
            same(w, column);
        }
    }
    GENERATED_ROWS * columns.len() as u64
}

#[test]
fn generated_values_of_every_postgres_type_round_trip() {
    let w = World::new(Backend::Postgres, "generated_pg");
    let columns: &[Generated] = &[
        ("i4", "int4", |g| g.i32().to_string()),
        ("i8", "int8", |g| g.i64().to_string()),
        ("f8", "float8", |g| format!("'{:?}'", g.f64())),
        ("r4", "real", |g| format!("'{:?}'", g.f32())),
        ("b", "boolean", |g| (g.below(2) == 0).to_string()),
        ("t", "text", |g| literal(&g.text(40))),
        ("j", "jsonb", |g| literal(&g.json(3))),
        ("js", "json", |g| literal(&g.json(3))),
        ("ts", "timestamp", |g| {
            let span = 62_000_000_000_000_000u64;
            let us = (g.next() % (2 * span)) as i64 - span as i64;
            format!("timestamp '2000-01-01' + interval '{us} microseconds'")
        }),
        ("tz", "timestamptz", |g| {
            let span = 62_000_000_000_000_000u64;
            let us = (g.next() % (2 * span)) as i64 - span as i64;
            format!("timestamptz '2000-01-01 00:00:00+00' + interval '{us} microseconds'")
        }),
        ("d", "date", |g| {
            format!(
                "date '2000-01-01' + {}",
                g.below(1_400_000) as i64 - 700_000
            )
        }),
        ("n", "numeric", |g| {
            format!("{}.{}", g.i64(), g.below(1_000_000))
        }),
        ("u", "uuid", |g| format!("'{}'", g.hex(16))),
        ("by", "bytea", |g| {
            let n = g.below(40);
            format!("'\\x{}'", g.hex(n))
        }),
    ];
    let compared = round_trip_generated(&w, columns, 0x5eed_0001);
    eprintln!("generated values compared on PostgreSQL: {compared}");
}

#[test]
fn generated_values_of_every_sqlite_type_round_trip() {
    let w = World::new(Backend::Sqlite, "generated_sqlite");
    let columns: &[Generated] = &[
        ("i", "INTEGER", |g| g.i64().to_string()),
        ("f", "REAL", |g| {
            format!("{:?}", g.f64()).replace("inf", "9e999")
        }),
        ("t", "TEXT", |g| literal(&g.text(40))),
        ("bl", "BLOB", |g| {
            let n = g.below(40);
            format!("X'{}'", g.hex(n))
        }),
        ("b", "BOOLEAN", |g| g.below(2).to_string()),
        ("j", "JSON", |g| literal(&g.json(3))),
    ];
    let compared = round_trip_generated(&w, columns, 0x5eed_0002);
    eprintln!("generated values compared on SQLite: {compared}");
}

#[test]
fn generated_values_of_every_mariadb_type_round_trip() {
    let w = World::new(Backend::Mysql, "generated_my");
    let columns: &[Generated] = &[
        ("i8", "BIGINT", |g| g.i64().to_string()),
        ("i4", "INT", |g| g.i32().to_string()),
        ("f", "DOUBLE", |g| format!("{:e}", g.f64())),
        ("b", "BOOLEAN", |g| g.below(2).to_string()),
        ("t", "TEXT", |g| my_literal(&g.text(40))),
        ("vc", "VARCHAR(200)", |g| my_literal(&g.text(40))),
        ("j", "JSON", |g| my_literal(&g.json(3))),
        ("dt", "DATETIME(6)", |g| {
            // Years 1030 to 2970, what DATETIME holds.
            let span = 30_000_000_000_000_000u64;
            let us = (g.next() % (2 * span)) as i64 - span as i64;
            format!("TIMESTAMP '2000-01-01 00:00:00' + INTERVAL {us} MICROSECOND")
        }),
        ("d", "DATE", |g| {
            format!(
                "DATE '2000-01-01' + INTERVAL {} DAY",
                g.below(600_000) as i64 - 300_000
            )
        }),
        ("n", "DECIMAL(30,6)", |g| {
            format!("{}.{:06}", g.i64(), g.below(1_000_000))
        }),
        ("bl", "BLOB", |g| {
            let n = g.below(40);
            format!("X'{}'", g.hex(n))
        }),
    ];
    let compared = round_trip_generated(&w, columns, 0x5eed_0003);
    eprintln!("generated values compared on MariaDB: {compared}");
}

#[test]
fn sqlite_text_that_is_not_utf8_fails_only_its_row() {
    let w = World::new(Backend::Sqlite, "not_utf8");
    w.exec(
        "CREATE TABLE typed (id INTEGER PRIMARY KEY, t TEXT, t_copy TEXT);
         INSERT INTO typed (id, t) VALUES (1, 'a'), (2, CAST(X'FF' AS TEXT)), (3, 'c')",
    );
    let ran = echo(&w, "t");
    ran.expect_code(1);
    let dead = w.state_rows("SELECT row_key, error, kind FROM refill_dead_letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0][0].as_deref(), Some("2"));
    assert_eq!(dead[0][2].as_deref(), Some("unreadable"));
    assert!(
        dead[0][1]
            .as_deref()
            .is_some_and(|e| e.contains("cannot read column t of") && e.contains("utf-8")),
        "{dead:?}"
    );
    let copies = w.rows("SELECT CAST(id AS TEXT), t_copy FROM typed ORDER BY id");
    let copies: Vec<_> = copies.iter().map(|r| r[1].as_deref()).collect();
    assert_eq!(copies, [Some("a"), None, Some("c")]);
}
