//! Read-only by construction: whatever SQL a spec carries, `plan`, a dry
//! run and `verify` write nothing. A `where` calling a function that
//! deletes, a lookup query that is a `DELETE … RETURNING`, a probe that
//! inserts: each leaves its victim table as it was, and the command exits
//! 2 naming the spec key. On PostgreSQL, MariaDB and SQLite, where the
//! construct exists.

use crate::fixtures::*;
use crate::harness::*;

/// Rows of the victim table.
const VICTIMS: usize = 10;

/// Creates `victim(id)` with [`VICTIMS`] rows.
fn victim(w: &World) {
    let t = w.table("victim");
    let rows: Vec<String> = (1..=VICTIMS).map(|i| format!("({i})")).collect();
    w.exec(&format!(
        "CREATE TABLE {t} (id INTEGER PRIMARY KEY);\nINSERT INTO {t} (id) VALUES {}",
        rows.join(", ")
    ));
}

fn victims(w: &World) -> usize {
    w.rows(&format!(
        "SELECT {} FROM {}",
        w.text("id"),
        w.table("victim")
    ))
    .len()
}

/// Runs `plan`, a dry run and `verify --spec` on `spec.toml`: each must
/// exit 2 with a message containing `key` and `says`, and leave the
/// victim table whole.
#[track_caller]
fn refused_everywhere(w: &World, key: &str, says: &str) {
    for args in [
        vec!["plan", "spec.toml"],
        vec!["run", "spec.toml"],
        vec!["verify", "--spec", "spec.toml"],
    ] {
        let out = w.run(&args);
        out.expect_code(2);
        let error = out
            .stderr
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or_default()
            .to_string();
        assert!(
            error.contains(key) && error.contains(says),
            "{args:?}: expected one line naming {key} and saying {says}:\n{}",
            out.all()
        );
        assert_eq!(victims(w), VICTIMS, "{args:?} wrote:\n{}", out.all());
    }
}

/// The remap spec over `quotes` with `where` replaced and `extra` added.
fn spec_with(w: &World, condition: &str, source_extra: &str, extra: &str) -> String {
    let spec = remap_spec(w, 100, "").replace(
        "where = \"region = 'eu'\"",
        &format!("where = \"{condition}\"\n{source_extra}"),
    );
    format!("{spec}\n{extra}\n")
}

/// A function that deletes every victim and returns true.
fn zap(w: &World) -> String {
    let schema = w.schema.clone().unwrap_or_default();
    match w.backend {
        Backend::Postgres => {
            w.exec(&format!(
                "CREATE FUNCTION {schema}.zap() RETURNS boolean VOLATILE LANGUAGE sql \
                 AS $$ DELETE FROM {schema}.victim; SELECT true $$"
            ));
            format!("{schema}.zap()")
        }
        Backend::Mysql => {
            w.exec(
                "CREATE FUNCTION zap() RETURNS INT MODIFIES SQL DATA \
                 BEGIN DELETE FROM victim; RETURN 1; END",
            );
            "zap() = 1".to_string()
        }
        Backend::Sqlite => unreachable!("SQLite has no functions written in SQL"),
    }
}

fn a_where_that_deletes_is_refused_at_plan(backend: Backend, name: &str) {
    let w = World::new(backend, name);
    quotes(&w, 300, false);
    victim(&w);
    let call = zap(&w);
    // The function is marked as able to write: plan refuses it.
    w.write(
        "spec.toml",
        &spec_with(&w, &format!("region = 'eu' AND {call}"), "", ""),
    );
    refused_everywhere(&w, "[source] where", "zap");
    // Opted in, the read-only transaction stops it.
    w.write(
        "spec.toml",
        &spec_with(
            &w,
            &format!("region = 'eu' AND {call}"),
            "allow_volatile_where = true",
            "",
        ),
    );
    refused_everywhere(&w, "[source] where", "read-only");
}

#[test]
fn postgres_a_where_that_deletes_writes_nothing() {
    a_where_that_deletes_is_refused_at_plan(Backend::Postgres, "ro_where_pg");
}

#[test]
fn mariadb_a_where_that_deletes_writes_nothing() {
    a_where_that_deletes_is_refused_at_plan(Backend::Mysql, "ro_where_my");
}

#[test]
fn sqlite_a_where_smuggling_a_delete_writes_nothing() {
    let w = World::new(Backend::Sqlite, "ro_where_sqlite");
    quotes(&w, 300, false);
    victim(&w);
    // SQLite runs every statement of a text: the condition closes its
    // parenthesis and adds a DELETE. The connection is read-only.
    w.write(
        "spec.toml",
        &spec_with(&w, "1) ; DELETE FROM victim; SELECT (1", "", ""),
    );
    refused_everywhere(&w, "[source] where", "tried to write");
}

fn a_lookup_query_that_deletes_writes_nothing(backend: Backend, name: &str) {
    let w = World::new(backend, name);
    quotes(&w, 300, false);
    victim(&w);
    let query = format!(
        "DELETE FROM {} RETURNING {}, 'x'",
        w.table("victim"),
        w.text("id")
    );
    w.write(
        "spec.toml",
        &spec_with(
            &w,
            "region = 'eu'",
            "",
            &format!("[[lookup]]\nname = \"boom\"\nquery = \"{query}\""),
        ),
    );
    refused_everywhere(&w, "lookup", "tried to write");
}

#[test]
fn postgres_a_lookup_query_that_deletes_writes_nothing() {
    a_lookup_query_that_deletes_writes_nothing(Backend::Postgres, "ro_lookup_pg");
}

#[test]
fn mariadb_a_lookup_query_that_deletes_writes_nothing() {
    a_lookup_query_that_deletes_writes_nothing(Backend::Mysql, "ro_lookup_my");
}

#[test]
fn sqlite_a_lookup_query_that_deletes_writes_nothing() {
    a_lookup_query_that_deletes_writes_nothing(Backend::Sqlite, "ro_lookup_sqlite");
}

fn a_probe_that_inserts_writes_nothing(backend: Backend, name: &str) {
    let w = World::new(backend, name);
    quotes(&w, 300, false);
    victim(&w);
    let schema = w.schema.clone().unwrap_or_default();
    let probe = match backend {
        Backend::Postgres => {
            w.exec(&format!(
                "CREATE FUNCTION {schema}.ins() RETURNS int VOLATILE LANGUAGE sql \
                 AS $$ INSERT INTO {schema}.victim VALUES (1000); SELECT 0 $$"
            ));
            format!("SELECT {schema}.ins()")
        }
        Backend::Mysql => {
            w.exec(
                "CREATE FUNCTION ins() RETURNS INT MODIFIES SQL DATA \
                 BEGIN INSERT INTO victim VALUES (1000); RETURN 0; END",
            );
            "SELECT ins()".to_string()
        }
        // A probe runs as a scalar subquery: the text closes it and adds
        // an INSERT.
        Backend::Sqlite => {
            "SELECT 0)) AS DOUBLE PRECISION); INSERT INTO victim VALUES (1000); SELECT CAST(((0"
                .to_string()
        }
    };
    w.write(
        "spec.toml",
        &spec_with(
            &w,
            "region = 'eu'",
            "",
            &format!("[throttle]\nprobe = \"{probe}\"\nprobe_max = 10"),
        ),
    );
    if backend == Backend::Sqlite {
        // sqlx reads the first statement's row and stops there, so the
        // INSERT never runs (were it run, the read-only connection would
        // refuse it): plan warns that the probe does not answer one number
        // (a run would wait on it, failing closed), and nothing is written.
        let out = w.run(&["plan", "spec.toml"]);
        assert!(
            out.code == Some(0) || (out.code == Some(2) && out.stderr.contains("[throttle] probe")),
            "{}",
            out.all()
        );
        assert_eq!(victims(&w), VICTIMS, "plan wrote:\n{}", out.all());
        return;
    }
    refused_everywhere(&w, "[throttle] probe", "tried to write");
}

#[test]
fn postgres_a_probe_that_inserts_writes_nothing() {
    a_probe_that_inserts_writes_nothing(Backend::Postgres, "ro_probe_pg");
}

#[test]
fn mariadb_a_probe_that_inserts_writes_nothing() {
    a_probe_that_inserts_writes_nothing(Backend::Mysql, "ro_probe_my");
}

#[test]
fn sqlite_a_probe_that_inserts_writes_nothing() {
    a_probe_that_inserts_writes_nothing(Backend::Sqlite, "ro_probe_sqlite");
}
