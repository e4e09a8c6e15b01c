//! `make bench`: rows/s of a `remap` backfill with `--execute` on a
//! 1,000,000-row PostgreSQL table (a key, a `jsonb` document and four
//! other columns), next to the same change done other ways, all measured
//! in one run on a freshly copied table each time:
//! - the single SQL statement `UPDATE … SET status_v2 = CASE status … END`;
//! - the floor for chunked work: the same statement over key ranges of
//!   10,000 rows, from 2 sessions (no data shipped);
//! - the script a careful engineer writes: keyset reads of 10,000 rows,
//!   one `UPDATE … FROM unnest(…)` per batch, one transaction per batch,
//!   from 1 session and from 2 (each on half of the keys);
//! - refill with throttling off (`mode = "unlimited"`), its state in
//!   SQLite and in the target database; refill unguarded, with adaptive
//!   chunks, and with its defaults.
//!
//! Prints the ratios to the single statement, refill's stage profile per
//! chunk, and, for every workload, the CPU the whole machine used and
//! refill's own part of it.
//!
//! Then the same backfill planned for distributed workers (`run --execute
//! --workers 0`, the state store on the source's url so each chunk's
//! writes and checkpoint commit together) and worked by 1, 2 and 4 `refill
//! worker` processes: the plan's time and the workers' rows/s.
//!
//! Then pgbench (TPC-B, scale 10, a steady `-R` rate) runs alone, during a
//! default refill and during an unthrottled one, and its mean and
//! 95th-percentile latencies are printed side by side.
//!
//! Settings (environment): `REFILL_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), `REFILL_BENCH_ROWS`
//! (1000000), `REFILL_BENCH_ROUNDS` (2; the best round counts),
//! `REFILL_BENCH_PGBENCH_TPS` (300), `REFILL_BENCH_LOAD_ROUNDS` (3),
//! `REFILL_BENCH_ONLY` (`load`: only the pgbench comparison, a few
//! minutes; `speed`: only the speed table, as `make bench-large` runs it
//! at 10,000,000 rows; `workers`: only the distributed workers;
//! `languages`: only the transform alone, in each language; or a
//! comma-separated list of these),
//! `REFILL_BENCH_WORKLOADS` (the numbers of the speed
//! table's workloads to run, such as `0,3,4`; all by default),
//! `REFILL_BENCH_LOG` (refill's log filter,
//! `refill=warn`) and `REFILL_BENCH_TRACE` (a file that collects the log
//! of every `refill run`: with `REFILL_BENCH_LOG=refill=debug`, each
//! chunk's times and each decision of the gentle limiter).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool, Row};

mod common;

use common::{CHUNK, MAP, Measured, Remap, case_sql, env_or, rate, refill_cmd, succeed};

const SCHEMA: &str = "refill_bench";

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Creates the template table once (or again if its size changed).
async fn template(pool: &PgPool, rows: i64) {
    exec(pool, &format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA}")).await;
    // Counted through the newest column: a template of an older shape is
    // made again.
    let existing: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(doc) FROM {SCHEMA}.template"
    )))
    .fetch_one(pool)
    .await
    .ok();
    if existing == Some(rows) {
        return;
    }
    println!("creating the {rows}-row template table {SCHEMA}.template …");
    exec(
        pool,
        &format!(
            "DROP TABLE IF EXISTS {SCHEMA}.template;
             CREATE TABLE {SCHEMA}.template (
                 id bigint NOT NULL, customer text NOT NULL, status text, status_v2 text,
                 amount numeric(12,2) NOT NULL, created_at timestamptz NOT NULL, doc jsonb NOT NULL);
             INSERT INTO {SCHEMA}.template
             SELECT g, 'customer-' || (g % 5000), (ARRAY['open','won','lost','stale'])[1 + g % 4], NULL,
                    (g % 100000) / 100.0, timestamptz '2020-01-01' + g * interval '1 minute',
                    jsonb_build_object('region', (ARRAY['eu','us','apac'])[1 + g % 3], 'seats', g % 40,
                                       'tags', jsonb_build_array('t' || (g % 7), 't' || (g % 11)))
             FROM generate_series(1, {rows}) g;"
        ),
    )
    .await;
}

/// A fresh copy of the template as `SCHEMA.quotes`, vacuumed and
/// checkpointed so every measurement starts from the same state.
async fn fresh(pool: &PgPool) {
    exec(
        pool,
        &format!(
            "DROP TABLE IF EXISTS {SCHEMA}.quotes;
             CREATE TABLE {SCHEMA}.quotes AS TABLE {SCHEMA}.template;
             ALTER TABLE {SCHEMA}.quotes ADD PRIMARY KEY (id);"
        ),
    )
    .await;
    exec(pool, &format!("VACUUM ANALYZE {SCHEMA}.quotes")).await;
    exec(pool, "CHECKPOINT").await;
}

/// Fails the bench if any row does not hold the mapped status.
async fn verify(pool: &PgPool, what: &str) {
    let wrong: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {SCHEMA}.quotes WHERE status_v2 IS DISTINCT FROM {}",
        case_sql()
    )))
    .fetch_one(pool)
    .await
    .expect("verify");
    assert_eq!(wrong, 0, "{what} left {wrong} rows wrong");
}

async fn single_statement(pool: &PgPool) {
    exec(
        pool,
        &format!("UPDATE {SCHEMA}.quotes SET status_v2 = {}", case_sql()),
    )
    .await;
}

/// The script a careful engineer would write by hand, from `sessions`
/// sessions at once, each on its own part of the keys (1..=`rows`).
async fn batched_script(pool: &PgPool, rows: i64, sessions: i64) {
    let part = (rows + sessions - 1) / sessions;
    let parts: Vec<_> = (0..sessions)
        .map(|s| {
            let pool = pool.clone();
            tokio::spawn(async move { script_part(&pool, s * part, (s + 1) * part).await })
        })
        .collect();
    for part in parts {
        part.await.expect("a script session");
    }
}

/// One session of the script: keyset reads of the keys in `(lo, hi]`.
async fn script_part(pool: &PgPool, lo: i64, hi: i64) {
    let read = format!(
        "SELECT id, status FROM {SCHEMA}.quotes WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3"
    );
    let write = format!(
        "UPDATE {SCHEMA}.quotes AS t SET status_v2 = v.s FROM unnest($1::int8[], $2::text[]) AS v(id, s) WHERE t.id = v.id"
    );
    let mut last = lo;
    loop {
        let rows = sqlx::query(AssertSqlSafe(read.clone()))
            .bind(last)
            .bind(hi)
            .bind(CHUNK)
            .fetch_all(pool)
            .await
            .expect("read");
        let Some(tail) = rows.last() else { break };
        last = tail.get(0);
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let mapped: Vec<Option<String>> = rows
            .iter()
            .map(|r| {
                let status: Option<String> = r.get(1);
                status.and_then(|s| {
                    MAP.iter()
                        .find(|(a, _)| *a == s)
                        .map(|(_, b)| b.to_string())
                })
            })
            .collect();
        let mut tx = pool.begin().await.expect("begin");
        sqlx::query(AssertSqlSafe(write.clone()))
            .bind(ids)
            .bind(mapped)
            .execute(&mut *tx)
            .await
            .expect("write");
        tx.commit().await.expect("commit");
    }
}

/// The floor for chunked work: the single statement over key ranges of
/// [`CHUNK`] rows, each its own transaction, taken in turn by `sessions`
/// sessions. No row leaves the server.
async fn server_side_chunks(pool: &PgPool, rows: i64, sessions: i64) {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let update = format!(
        "UPDATE {SCHEMA}.quotes SET status_v2 = {} WHERE id > $1 AND id <= $2",
        case_sql()
    );
    let sessions: Vec<_> = (0..sessions)
        .map(|_| {
            let (pool, next, update) = (pool.clone(), next.clone(), update.clone());
            tokio::spawn(async move {
                loop {
                    let lo = next.fetch_add(CHUNK, std::sync::atomic::Ordering::Relaxed);
                    if lo >= rows {
                        break;
                    }
                    sqlx::query(AssertSqlSafe(update.clone()))
                        .bind(lo)
                        .bind(lo + CHUNK)
                        .execute(&pool)
                        .await
                        .expect("a server-side chunk");
                }
            })
        })
        .collect();
    for session in sessions {
        session.await.expect("a session");
    }
}

/// `refill run --execute` as a user would run it; returns the wall time and
/// the state store it recorded into.
fn refill(
    url: &str,
    remap: &Remap,
    conditional: bool,
    tuning: &Tuning,
) -> (Duration, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = match tuning.state_in_target {
        true => format!("[state]\nurl = \"{}\"\n", in_schema(url)),
        false => String::new(),
    };
    let spec = remap.spec(
        "bench",
        url,
        SCHEMA,
        tuning.chunk,
        &format!("conditional = {conditional}"),
        &format!("[throttle]\n{}\n{state}", tuning.throttle),
    );
    let spec_path = dir.path().join("bench.toml");
    std::fs::write(&spec_path, spec).expect("write spec");
    let started = Instant::now();
    // --restart: the table was copied afresh, so a run of an earlier
    // round (whose state stays in the schema) must not be resumed.
    let out = remap
        .refill()
        .args(["run", "--execute", "--restart"])
        .arg(&spec_path)
        .output()
        .expect("run refill");
    let elapsed = started.elapsed();
    if let Ok(trace) = std::env::var("REFILL_BENCH_TRACE") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(trace)
            .expect("open REFILL_BENCH_TRACE");
        writeln!(
            f,
            "=== run {} {:.2}s",
            tuning.throttle,
            elapsed.as_secs_f64()
        )
        .and_then(|()| f.write_all(&out.stderr))
        .expect("write REFILL_BENCH_TRACE");
    }
    succeed(out, "refill");
    (elapsed, dir.path().join(".refill/state.db"), dir)
}

/// The backfill planned for workers, then worked by `workers` `refill
/// worker` processes started together; returns the plan's time and the
/// workers' (from their start to the last one's end).
/// `url` with the bench's schema first on the search path: where a state
/// store on the target keeps its tables.
fn in_schema(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{SCHEMA}")
}

fn refill_workers(url: &str, remap: &Remap, workers: u32) -> (Duration, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = in_schema(url);
    let spec = remap.spec(
        "bench-workers",
        &shared,
        SCHEMA,
        "chunk_time = 0",
        "",
        &format!(
            "[throttle]\nmode = \"unlimited\"\nconcurrency = {}\n[state]\nurl = \"{shared}\"\n",
            2 * workers
        ),
    );
    let spec_path = dir.path().join("bench.toml");
    std::fs::write(&spec_path, spec).expect("write spec");
    // --restart: the table was copied afresh, so an unfinished run of an
    // earlier bench (whose state stays in the schema) must not be resumed.
    let started = Instant::now();
    let planned = succeed(
        remap
            .refill()
            .args(["run", "--execute", "--workers", "0", "--restart"])
            .arg(&spec_path)
            .output()
            .expect("plan"),
        "planning for workers",
    );
    let plan = started.elapsed();
    let run = planned
        .split_whitespace()
        .nth(1)
        .expect("the run id")
        .to_string();
    let started = Instant::now();
    let children: Vec<_> = (0..workers)
        .map(|_| {
            remap
                .refill()
                .args(["worker", "--state", &shared, "--run", &run])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start a worker")
        })
        .collect();
    for child in children {
        succeed(child.wait_with_output().expect("worker"), "a worker");
    }
    (plan, started.elapsed())
}

/// Extra `[chunk]` and `[throttle]` lines of a refill run, and where its
/// state store is.
struct Tuning {
    chunk: &'static str,
    throttle: &'static str,
    /// In the target database (writes and checkpoints commit together),
    /// rather than in a SQLite file beside the spec.
    state_in_target: bool,
}

/// Fixed chunks of [`CHUNK`] rows, like the batched script's, throttling
/// off.
const FIXED: Tuning = Tuning {
    chunk: "chunk_time = 0",
    throttle: "mode = \"unlimited\"",
    state_in_target: false,
};
/// As [`FIXED`], the state store in the target.
const FIXED_IN_TARGET: Tuning = Tuning {
    state_in_target: true,
    ..FIXED
};
/// Chunks sized to take 500 ms, throttling off.
const ADAPTIVE: Tuning = Tuning {
    chunk: "",
    throttle: "mode = \"unlimited\"",
    state_in_target: false,
};
/// refill's defaults: no `[throttle]` at all, so the gentle limiter.
const DEFAULTS: Tuning = Tuning {
    chunk: "",
    throttle: "",
    state_in_target: false,
};

/// pgbench's latencies in one window: transactions, mean, 95th
/// percentile (ms) and transactions per second.
struct Latency {
    n: usize,
    mean: f64,
    p95: f64,
    tps: f64,
}

/// A TPC-B load from pgbench, `tps` transactions per second over 4
/// clients, run in slices of 2 s until `work` returns; returns what `work`
/// returned and the latencies of the transactions that started while it
/// ran.
fn under_load<T>(pgbench_url: &str, tps: u32, work: impl FnOnce() -> T) -> (T, Latency) {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let prefix = dir.path().join("pgbench");
        let url = pgbench_url.to_string();
        std::thread::spawn(move || {
            let mut slice = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                slice += 1;
                let out = Command::new("pgbench")
                    .args([
                        "-n",
                        "-c",
                        "4",
                        "-j",
                        "2",
                        "-T",
                        "2",
                        "-R",
                        &tps.to_string(),
                        "-l",
                    ])
                    .arg(format!("--log-prefix={}-{slice}", prefix.display()))
                    .arg(&url)
                    .output()
                    .expect("run pgbench");
                assert!(
                    out.status.success(),
                    "pgbench failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        })
    };
    // Let the load settle first.
    std::thread::sleep(Duration::from_secs(2));
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
    };
    let (from, started) = (now(), Instant::now());
    let result = work();
    let (to, took) = (now(), started.elapsed());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().expect("pgbench thread");
    // Log lines: client, transaction, latency (us), script, epoch s, us.
    let mut latencies: Vec<f64> = Vec::new();
    for entry in std::fs::read_dir(dir.path()).expect("logs") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("log");
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(lat), Some(s), Some(us)) = (f.get(2), f.get(4), f.get(5)) else {
                continue;
            };
            let (Ok(lat), Ok(s), Ok(us)) =
                (lat.parse::<f64>(), s.parse::<f64>(), us.parse::<f64>())
            else {
                continue;
            };
            let at = s + us / 1e6;
            if (from..=to).contains(&at) {
                latencies.push(lat / 1000.0);
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    let n = latencies.len();
    let mean = latencies.iter().sum::<f64>() / n.max(1) as f64;
    let p95 = latencies
        .get((n * 95 / 100).min(n.saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    let latency = Latency {
        n,
        mean,
        p95,
        tps: n as f64 / took.as_secs_f64(),
    };
    (result, latency)
}

/// The round whose pgbench p95 is the median of `rounds`, with its time.
fn median_round(mut rounds: Vec<(Duration, Latency)>) -> (Duration, Latency) {
    rounds.sort_by(|a, b| a.1.p95.total_cmp(&b.1.p95));
    let mid = rounds.len() / 2;
    let mut times: Vec<Duration> = rounds.iter().map(|r| r.0).collect();
    times.sort();
    let time = times.get(mid).copied().unwrap_or_default();
    let (_, latency) = rounds.swap_remove(mid);
    (time, latency)
}

/// Creates the pgbench database (scale 10) once, in the server of `url`;
/// returns its url, or `None` when pgbench is not installed.
async fn pgbench_database(pool: &PgPool, url: &str) -> Option<String> {
    if Command::new("pgbench").arg("--version").output().is_err() {
        println!("pgbench is not installed: skipping the latency comparison");
        return None;
    }
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'refill_pgbench')",
    )
    .fetch_one(pool)
    .await
    .expect("pg_database");
    if !exists {
        exec(pool, "CREATE DATABASE refill_pgbench").await;
    }
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    let db = format!("{base}/refill_pgbench");
    let ready = Command::new("psql")
        .args(["-Atc", "SELECT count(*) FROM pgbench_branches"])
        .arg(&db)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "10");
    if !ready {
        let init = Command::new("pgbench")
            .args(["-i", "-s", "10", "-q"])
            .arg(&db)
            .output()
            .expect("pgbench -i");
        assert!(
            init.status.success(),
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    Some(db)
}

/// Average per-chunk read, transform and write times of the last refill run.
async fn chunk_profile(state: &Path) -> (f64, f64, f64, i64) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", state.display()))
        .await
        .expect("state store");
    let row = sqlx::query(
        "SELECT avg(read_ms), avg(transform_ms), avg(write_ms), count(*) FROM refill_chunks",
    )
    .fetch_one(&pool)
    .await
    .expect("profile");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// The transform alone, on one thread: `rows` status values through a
/// `remap` component in batches of 1,000, as the pipeline hands them over.
/// Also returns how long a fresh instance takes to start (instantiate and
/// configure), the best of five.
fn transform_only(component: &Path, rows: i64) -> (Duration, Duration) {
    use refill::transform::bindings::refill::transform::types::Key;
    use refill::transform::wasi::GuestEnv;
    use refill::value::{Param, Row, Value};
    let runner =
        refill::transform::Runner::load(component, None, refill::transform::Limits::default())
            .expect("load remap");
    let map: Vec<String> = MAP.iter().map(|(a, b)| format!("{a}={b}")).collect();
    let setup = refill::transform::Setup::new(
        vec![Param {
            name: "map".into(),
            value: map.join(","),
        }],
        GuestEnv::current(&["bench"]),
    );
    let mut start = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let instance = runner.instance(&setup).expect("configure remap");
        start = start.min(t.elapsed());
        drop(instance);
    }
    let mut instance = runner.instance(&setup).expect("configure remap");
    let statuses = ["open", "won", "lost", "stale"];
    let batch: Vec<Row> = (0..1000)
        .map(|i| Row {
            key: Key::Integer(i),
            values: vec![Value::Text(statuses[i as usize % 4].into())],
        })
        .collect();
    let started = Instant::now();
    for _ in 0..rows / 1000 {
        let out = instance.transform(&batch).expect("transform");
        assert_eq!(out.outcomes.len(), batch.len());
    }
    (started.elapsed(), start)
}

/// `refill inspect`'s time to read and compile a component into an empty
/// cache, then to load it from that cache, in milliseconds.
fn load_times(component: &Path) -> (f64, f64) {
    let cache = tempfile::tempdir().expect("tempdir");
    let load = || {
        let out = refill_cmd(cache.path())
            .args(["inspect", "--json"])
            .arg(component)
            .output()
            .expect("refill inspect");
        assert!(
            out.status.success(),
            "refill inspect {} failed",
            component.display()
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect --json");
        doc["load_ms"].as_f64().expect("load_ms")
    };
    let cold = load();
    let cached = (0..3).map(|_| load()).fold(f64::MAX, f64::min);
    (cold, cached)
}

#[tokio::main]
async fn main() {
    let url = env_or(
        "REFILL_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    );
    let rows: i64 = env_or("REFILL_BENCH_ROWS", "1000000")
        .parse()
        .expect("REFILL_BENCH_ROWS is a number");
    let rounds: u32 = env_or("REFILL_BENCH_ROUNDS", "2")
        .parse()
        .expect("REFILL_BENCH_ROUNDS is a number");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");

    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("connect to PostgreSQL");
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await
        .expect("version");
    template(&pool, rows).await;
    let remap = Remap::warm();
    let only = env_or("REFILL_BENCH_ONLY", "");
    // Everything, or only the parts named: the speed table, the
    // distributed workers, the load, the transform alone in each language.
    let everything = only.is_empty();
    let parts: Vec<&str> = only.split(',').map(str::trim).collect();
    if let Some(unknown) = parts
        .iter()
        .find(|p| !everything && !["speed", "workers", "load", "languages"].contains(p))
    {
        panic!("REFILL_BENCH_ONLY: unknown part {unknown:?} (speed, workers, load, languages)");
    }
    let part = |name: &str| everything || parts.contains(&name);
    let speed = part("speed");

    let (alone, _) = if part("languages") {
        transform_only(&remap.component, rows)
    } else {
        (Duration::ZERO, Duration::ZERO)
    };
    // The same transform in three languages: rows/s of the transform alone
    // (fewer rows for the slower interpreters; rows/s is what compares),
    // the time to compile and to load from the cache, and to start an
    // instance.
    let mut languages = Vec::new();
    for (name, share) in [("remap", 1), ("remap-py", 10), ("remap-js", 100)] {
        if !part("languages") {
            break;
        }
        let path = root.join(format!("plugins/dist/{name}.wasm"));
        let (cold, cached) = load_times(&path);
        let n = (rows / share).max(1000);
        let (took, start) = transform_only(&path, n);
        languages.push((name, n, took, cold, cached, start));
    }

    // The speed table: each workload on a fresh copy, best of the rounds.
    let workloads = [
        "single UPDATE … SET status_v2 = CASE …",
        "server-side chunks, 2 sessions (the floor)",
        "batched script, 1 session",
        "batched script, 2 sessions",
        "refill, unlimited, state in SQLite",
        "refill, unlimited, state in the target",
        "  … with [target] conditional = false",
        "  … with adaptive chunks (chunk_time 500ms)",
        "refill, defaults (gentle)",
    ];
    let run = common::chosen(workloads.len());
    let mut best = [Measured::NONE; 9];
    let mut profile = (0.0, 0.0, 0.0, 0);
    for round in (1..=rounds).filter(|_| speed) {
        let mut times = [Measured::NONE; 9];
        for (i, slot) in times.iter_mut().enumerate().filter(|(i, _)| run[*i]) {
            fresh(&pool).await;
            let mut state = None;
            let measured = common::measure(async {
                match i {
                    0 => single_statement(&pool).await,
                    1 => server_side_chunks(&pool, rows, 2).await,
                    2 => batched_script(&pool, rows, 1).await,
                    3 => batched_script(&pool, rows, 2).await,
                    _ => {
                        let (tuning, conditional) = match i {
                            4 => (&FIXED, true),
                            5 => (&FIXED_IN_TARGET, true),
                            6 => (&FIXED, false),
                            7 => (&ADAPTIVE, true),
                            _ => (&DEFAULTS, true),
                        };
                        state = Some(refill(&url, &remap, conditional, tuning));
                    }
                }
            })
            .await;
            if i == 4
                && measured.took < best[4].took
                && let Some((_, path, _dir)) = &state
            {
                profile = chunk_profile(path).await;
            }
            verify(&pool, workloads[i]).await;
            *slot = measured;
        }
        println!("round {round}: {}", common::round_line(&workloads, &times));
        common::keep_best(&mut best, &times);
    }

    // Distributed workers, 1, 2 and 4 of them, best of the rounds.
    let mut distributed = Vec::new();
    for workers in [1u32, 2, 4].into_iter().filter(|_| part("workers")) {
        let mut best_plan = Duration::MAX;
        let mut best_work = Duration::MAX;
        for _ in 0..rounds {
            fresh(&pool).await;
            let (plan, work) = refill_workers(&url, &remap, workers);
            verify(&pool, "refill workers").await;
            if work < best_work {
                (best_plan, best_work) = (plan, work);
            }
        }
        println!(
            "{workers} worker(s): plan {:.2} s, work {:.2} s",
            best_plan.as_secs_f64(),
            best_work.as_secs_f64()
        );
        distributed.push((workers, best_plan, best_work));
    }

    // pgbench's latency with no backfill, an unthrottled one and a
    // throttled one, in one run.
    let tps: u32 = env_or("REFILL_BENCH_PGBENCH_TPS", "300")
        .parse()
        .expect("REFILL_BENCH_PGBENCH_TPS is a number");
    // Three alternating rounds of each (pgbench alone, during a default
    // backfill, during an unlimited one); the medians count, since a 1 ms
    // p95 is noisy.
    let load_rounds: usize = env_or("REFILL_BENCH_LOAD_ROUNDS", "3")
        .parse()
        .expect("REFILL_BENCH_LOAD_ROUNDS is a number");
    let mut loaded = Vec::new();
    let load = part("load");
    let pgbench = match load {
        true => pgbench_database(&pool, &url).await,
        false => None,
    };
    if let Some(db) = pgbench {
        let mut alone = Vec::new();
        let mut gentle = Vec::new();
        let mut flat = Vec::new();
        for round in 1..=load_rounds {
            // Every round starts from pgbench's tables vacuumed: with
            // autovacuum off, their dead rows would slow later rounds.
            let vacuum = Command::new("psql")
                .args([
                    "-qAtc",
                    "VACUUM pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history",
                ])
                .arg(&db)
                .output()
                .expect("psql");
            assert!(
                vacuum.status.success(),
                "VACUUM of pgbench's tables: {}",
                String::from_utf8_lossy(&vacuum.stderr)
            );
            let ((), quiet) = under_load(&db, tps, || std::thread::sleep(Duration::from_secs(8)));
            fresh(&pool).await;
            let ((d, _, _dir), by_default) =
                under_load(&db, tps, || refill(&url, &remap, true, &DEFAULTS));
            verify(&pool, "refill under load, defaults").await;
            gentle.push((d, by_default));
            fresh(&pool).await;
            let ((u, _, _dir), unlimited) =
                under_load(&db, tps, || refill(&url, &remap, true, &ADAPTIVE));
            verify(&pool, "refill under load, unlimited").await;
            println!(
                "load round {round}: p95 alone {:.2} ms; defaults {:.2} s, p95 {:.2} ms; unlimited {:.2} s, p95 {:.2} ms",
                quiet.p95,
                d.as_secs_f64(),
                gentle.last().map_or(0.0, |g| g.1.p95),
                u.as_secs_f64(),
                unlimited.p95
            );
            alone.push((Duration::ZERO, quiet));
            flat.push((u, unlimited));
        }
        loaded.push(("no backfill", None, median_round(alone)));
        loaded.push((
            "refill, defaults (gentle)",
            Some(true),
            median_round(gentle),
        ));
        loaded.push((
            "refill, mode = \"unlimited\"",
            Some(true),
            median_round(flat),
        ));
    }
    exec(&pool, &format!("DROP TABLE IF EXISTS {SCHEMA}.quotes")).await;

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    if speed {
        println!();
        println!(
            "refill bench: {rows} rows (key, jsonb and 5 more columns), PostgreSQL {version}, {cpus} CPUs, best of {rounds} rounds, chunks of {CHUNK}"
        );
        let named: Vec<(&str, Measured)> = workloads.iter().copied().zip(best).collect();
        common::print_against_single(rows, &named);
        if part("languages") {
            println!(
                "     {:<41} {:>9.2} {:>12}",
                "remap transform alone (1 thread, batches of 1000)",
                alone.as_secs_f64(),
                rate(rows, alone)
            );
        }
        // A ratio of two workloads' times, where both ran.
        let ratio = |a: usize, b: usize| {
            (best[a].ran() && best[b].ran()).then(|| {
                format!(
                    "{:.2}×",
                    best[a].took.as_secs_f64() / best[b].took.as_secs_f64()
                )
            })
        };
        let or_dash = |r: Option<String>| r.unwrap_or_else(|| "-".into());
        println!(
            "refill unlimited: {} the single statement with its state in SQLite, {} in the target (the aim: at most 1.2×); \
             {} and {} the 2-session script (the aim: under 1); {} and {} the 2-session floor",
            or_dash(ratio(4, 0)),
            or_dash(ratio(5, 0)),
            or_dash(ratio(4, 3)),
            or_dash(ratio(5, 3)),
            or_dash(ratio(4, 1)),
            or_dash(ratio(5, 1)),
        );
        // Where the machine's CPU went: the server's share, and the rest
        // (the script's client, or refill).
        let split = |i: usize| {
            let m = &best[i];
            m.server
                .filter(|_| m.ran())
                .map(|server| (server, m.cpu - server))
        };
        if let (Some((script_server, rest)), Some((refill_server, _))) = (split(3), split(5)) {
            println!(
                "CPU, 2-session script: server {script_server:.2} s, the rest (its client, the kernel, steal) {rest:.2} s; \
                 refill in the target: server {refill_server:.2} s, refill {}",
                best[5].own.map_or("-".into(), |o| format!("{o:.2} s"))
            );
        }
        if let Some(r) = ratio(6, 4) {
            println!(
                "without the guard ([target] conditional = false), refill takes {r} its guarded time"
            );
        }
        let (read, transform, write, chunks) = profile;
        if chunks > 0 {
            println!(
                "refill per chunk (mean of {chunks}, state in SQLite): read {read:.1} ms, transform {transform:.1} ms, \
                 write {write:.1} ms (before-images, the write, its commit); {} chunks in flight",
                refill::spec::DEFAULT_CONCURRENCY
            );
        }
        println!(
            "machine CPU: all cores' busy time during the workload (PostgreSQL's backends, the bench and refill); \
             server CPU: the database servers' processes on this machine (PostgreSQL's; an idle MariaDB's adds little); refill CPU: refill's own processes; {cpus} CPUs"
        );
    }
    if !distributed.is_empty() {
        println!();
        println!(
            "distributed workers (run --execute --workers 0, then N `refill worker` processes; state store on the source's url: writes and checkpoint in one transaction; run-wide concurrency 2 per worker):"
        );
        println!(
            "  {:<10} {:>10} {:>10} {:>12} {:>16}",
            "workers", "plan s", "work s", "rows/s", "vs 1 worker"
        );
        let one = distributed.first().map_or(1.0, |d| d.2.as_secs_f64());
        for (workers, plan, work) in &distributed {
            println!(
                "  {workers:<10} {:>10.2} {:>10.2} {:>12} {:>16.2}",
                plan.as_secs_f64(),
                work.as_secs_f64(),
                rate(rows, *work),
                one / work.as_secs_f64()
            );
        }
        println!(
            "  rows/s counts the workers' time from their start; on {cpus} CPUs shared with PostgreSQL, more workers than CPUs cannot add throughput"
        );
        if best[5].took < Duration::MAX {
            println!(
                "  1 worker runs at {:.2}× the speed of one `refill run` process with its state in the target ({:.2} s)",
                best[5].took.as_secs_f64() / one,
                best[5].took.as_secs_f64()
            );
        }
    }
    if part("languages") {
        println!();
        println!(
            "the remap transform in three languages (transform alone, 1 thread, batches of 1000):"
        );
        println!(
            "  {:<10} {:>9} {:>12} {:>14} {:>14} {:>16} {:>14}",
            "component", "rows", "rows/s", "compile ms", "cached ms", "instance ms", "vs Rust"
        );
        let rust_rate = languages[0].1 as f64 / languages[0].2.as_secs_f64();
        for (name, n, took, cold, cached, start) in &languages {
            let per_sec = *n as f64 / took.as_secs_f64();
            println!(
                "  {name:<10} {n:>9} {:>12} {cold:>14.1} {cached:>14.1} {:>16.1} {:>14.3}",
                rate(*n, *took),
                start.as_secs_f64() * 1000.0,
                per_sec / rust_rate
            );
        }
        println!(
            "  a cached start is `cached ms` (read, check the pin, load the compiled form) plus `instance ms` (instantiate and configure)"
        );
    }
    if !loaded.is_empty() {
        println!();
        println!(
            "pgbench TPC-B (scale 10, 4 clients, -R {tps} tps) while refill backfills {rows} rows (median of {load_rounds} alternating rounds):"
        );
        println!(
            "  {:<36} {:>9} {:>12} {:>12} {:>9} {:>8}",
            "backfill", "seconds", "rows/s", "latency ms", "p95 ms", "tps"
        );
        for (name, backfill, (d, l)) in &loaded {
            let (secs, per_sec) = match backfill {
                Some(_) => (format!("{:.2}", d.as_secs_f64()), rate(rows, *d)),
                None => ("-".into(), "-".into()),
            };
            println!(
                "  {name:<36} {secs:>9} {per_sec:>12} {:>12.2} {:>9.2} {:>8.0}  ({} transactions)",
                l.mean, l.p95, l.tps, l.n
            );
        }
        if let [
            (_, _, (_, quiet)),
            (_, _, (gentle, by_default)),
            (_, _, (flat, _)),
        ] = loaded.as_slice()
        {
            println!(
                "  defaults: p95 {:.2}× pgbench alone (the aim: within 2×); rows/s {:.2}× unlimited's (the aim: at least 0.20)",
                by_default.p95 / quiet.p95.max(f64::MIN_POSITIVE),
                flat.as_secs_f64() / gentle.as_secs_f64()
            );
        }
    }
}
