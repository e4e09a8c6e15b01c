//! `make bench` (after the PostgreSQL bench): rows/s of a `remap` backfill
//! with `--execute` on a 1,000,000-row MariaDB/MySQL table (a key, a JSON
//! document and four more columns, as the PostgreSQL bench's), next to the
//! same change done by the single SQL statement `UPDATE … SET status_v2 =
//! CASE status … END`, measured in one run on a freshly copied table each
//! time. Prints the ratio to the single statement, in the PostgreSQL
//! bench's format.
//!
//! Settings (environment): `REFILL_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`), `REFILL_BENCH_ROWS` (1000000),
//! `REFILL_BENCH_ROUNDS` (2; the best round counts).

use sqlx::mysql::MySqlPoolOptions;
use sqlx::{AssertSqlSafe, MySqlPool};

mod common;

use common::{CHUNK, Measured, Remap, case_sql, env_or, succeed};

const DATABASE: &str = "refill_bench";

async fn exec(pool: &MySqlPool, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Creates the template table once (or again if its size changed). Rows
/// come from a cross join of digits: no recursion limit, MySQL or MariaDB.
async fn template(pool: &MySqlPool, rows: i64) {
    exec(pool, &format!("CREATE DATABASE IF NOT EXISTS {DATABASE}")).await;
    // Counted through the newest column: a template of an older shape is
    // made again.
    let existing: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(doc) FROM {DATABASE}.template"
    )))
    .fetch_one(pool)
    .await
    .ok();
    if existing == Some(rows) {
        return;
    }
    println!("creating the {rows}-row template table {DATABASE}.template …");
    let digits = "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
                  UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
    exec(
        pool,
        &format!(
            "DROP TABLE IF EXISTS {DATABASE}.template;
             CREATE TABLE {DATABASE}.template (
                 id BIGINT NOT NULL PRIMARY KEY, customer VARCHAR(40) NOT NULL, status VARCHAR(16), status_v2 VARCHAR(16),
                 amount DECIMAL(12,2) NOT NULL, created_at DATETIME NOT NULL, doc JSON NOT NULL);
             INSERT INTO {DATABASE}.template
             SELECT g, CONCAT('customer-', g % 5000), ELT(1 + g % 4, 'open', 'won', 'lost', 'stale'), NULL,
                    (g % 100000) / 100.0, TIMESTAMP('2020-01-01') + INTERVAL g MINUTE,
                    JSON_OBJECT('region', ELT(1 + g % 3, 'eu', 'us', 'apac'), 'seats', g % 40,
                                'tags', JSON_ARRAY(CONCAT('t', g % 7), CONCAT('t', g % 11)))
             FROM (SELECT 1 + a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d + 100000 * h.d + 1000000 * i.d AS g
                   FROM {digits} a, {digits} b, {digits} c, {digits} e, {digits} f, {digits} h, {digits} i) AS n
             WHERE g <= {rows};"
        ),
    )
    .await;
}

/// A fresh copy of the template as `DATABASE.quotes`.
async fn fresh(pool: &MySqlPool) {
    exec(
        pool,
        &format!(
            "DROP TABLE IF EXISTS {DATABASE}.quotes;
             CREATE TABLE {DATABASE}.quotes LIKE {DATABASE}.template;
             INSERT INTO {DATABASE}.quotes SELECT * FROM {DATABASE}.template;
             ANALYZE TABLE {DATABASE}.quotes;"
        ),
    )
    .await;
}

/// Fails the bench if any row does not hold the mapped status.
async fn verify(pool: &MySqlPool, what: &str) {
    let wrong: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {DATABASE}.quotes WHERE NOT (status_v2 <=> {})",
        case_sql()
    )))
    .fetch_one(pool)
    .await
    .expect("verify");
    assert_eq!(wrong, 0, "{what} left {wrong} rows wrong");
}

async fn single_statement(pool: &MySqlPool) {
    exec(
        pool,
        &format!("UPDATE {DATABASE}.quotes SET status_v2 = {}", case_sql()),
    )
    .await;
}

/// `refill run --execute` (this bench's build, `cargo bench` builds it
/// with optimizations), one process, fixed chunks of [`CHUNK`] rows.
fn refill(url: &str, remap: &Remap, conditional: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = remap.spec(
        "bench",
        url,
        DATABASE,
        "chunk_time = 0",
        &format!("conditional = {conditional}"),
        "[throttle]\nmode = \"unlimited\"\n",
    );
    let spec_path = dir.path().join("bench.toml");
    std::fs::write(&spec_path, spec).expect("write spec");
    let out = remap
        .refill()
        .args(["run", "--execute"])
        .arg(&spec_path)
        .output()
        .expect("run refill");
    succeed(out, "refill");
}

#[tokio::main]
async fn main() {
    let url = env_or("REFILL_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
    let rows: i64 = env_or("REFILL_BENCH_ROWS", "1000000")
        .parse()
        .expect("REFILL_BENCH_ROWS is a number");
    let rounds: u32 = env_or("REFILL_BENCH_ROUNDS", "2")
        .parse()
        .expect("REFILL_BENCH_ROUNDS is a number");
    let pool = MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("connect to MariaDB/MySQL");
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&pool)
        .await
        .expect("version");
    template(&pool, rows).await;
    let remap = Remap::warm();

    // single statement, refill, refill without the guard
    let names = [
        "single UPDATE … SET status_v2 = CASE …",
        "refill, unlimited, state in SQLite",
        "  … with [target] conditional = false",
    ];
    let mut best = [Measured::NONE; 3];
    let run = common::chosen(best.len());
    for round in 1..=rounds {
        let mut times = [Measured::NONE; 3];
        for (i, slot) in times.iter_mut().enumerate().filter(|(i, _)| run[*i]) {
            fresh(&pool).await;
            *slot = match i {
                0 => common::measure(single_statement(&pool)).await,
                _ => common::measure(async { refill(&url, &remap, i == 1) }).await,
            };
            verify(&pool, names[i]).await;
        }
        println!("round {round}: {}", common::round_line(&names, &times));
        common::keep_best(&mut best, &times);
    }
    exec(&pool, &format!("DROP TABLE IF EXISTS {DATABASE}.quotes")).await;

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "refill bench: {rows} rows (key, JSON and 5 more columns), MariaDB/MySQL {version}, {cpus} CPUs, best of {rounds} rounds, chunks of {CHUNK}"
    );
    let named: Vec<(&str, Measured)> = names.iter().copied().zip(best).collect();
    common::print_against_single(rows, &named);
    if best[0].ran() && best[1].ran() {
        println!(
            "refill unlimited: {:.2}× MariaDB's single statement (the aim: at most 1.2×)",
            best[1].took.as_secs_f64() / best[0].took.as_secs_f64()
        );
    }
}
