//! Coordination of distributed workers, on a PostgreSQL state store:
//! consumes a run planned with `--workers 0` (its chunks, its spec and its
//! component, stored with it), and produces leases: a worker claims the
//! lowest unclaimed chunk (or one whose lease expired) with `FOR UPDATE
//! SKIP LOCKED`, renews its leases with heartbeats, and records a chunk
//! done only while its claim still holds it. Run-wide limits hold across
//! workers: the run's row is locked while a claim counts the chunks in
//! flight against the run's concurrency, and a shared pacing clock on the
//! run's row spaces reservations of rows by the run's rows-per-second.
//!
//! Every time here is the database's clock, so that workers on hosts whose
//! clocks disagree still agree on when a lease expired.

use std::time::Duration;

use sqlx::Row as _;

use super::{RunStatus, StateError, StateStore, key_of, now, q, to_i64, to_u64};
use crate::chunk::{Chunk, Key, KeyType};

/// The database's clock, in microseconds since the epoch.
const NOW_US: &str = "CAST(extract(epoch FROM clock_timestamp()) * 1000000 AS BIGINT)";
/// Planned chunks inserted per statement.
const ROWS_PER_INSERT: usize = 500;
/// Claims of one chunk after which the run fails instead of handing it out
/// again: a chunk whose every worker dies (out of memory, killed by the
/// orchestrator) would otherwise take the workers down one by one forever.
pub const MAX_CLAIMS: u64 = 5;

/// A worker's claim on one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The chunk.
    pub chunk: Chunk,
    /// The claiming session.
    pub session_id: String,
    /// The chunk's attempt number this claim made: with the session, the
    /// fence a checkpoint must pass.
    pub attempt: u64,
    /// The session whose expired lease this claim took over, if it did.
    pub taken_from: Option<String>,
}

/// What a worker asking for a chunk gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A chunk to work on.
    Got(Lease),
    /// The run already has as many chunks in flight as its concurrency
    /// allows: ask again shortly.
    Busy,
    /// Every chunk is done or held by a live lease: ask again shortly, to
    /// take over a lease that expires.
    Waiting,
    /// Every chunk is done.
    Finished,
    /// The run is no longer running (aborted, abandoned, failed).
    Stopped {
        /// Where it stands.
        status: RunStatus,
        /// Why, when this claim stopped it.
        message: Option<String>,
    },
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A state store that coordinates distributed workers. Only
/// [`StateStore::workers`] makes one, and only for a store whose database
/// has the capability (`Capabilities::workers`): the statements of this
/// module are PostgreSQL's, and no other store is ever sent them. It is
/// the store too (it dereferences to it).
#[derive(Clone, Debug)]
pub struct Workers(StateStore);

impl std::ops::Deref for Workers {
    type Target = StateStore;

    fn deref(&self) -> &StateStore {
        &self.0
    }
}

impl StateStore {
    /// The store as a coordinator of workers, or why it cannot be one.
    pub fn workers(&self) -> Result<Workers, StateError> {
        let backend = self.url.backend();
        match crate::backend::capabilities(backend).workers {
            true => Ok(Workers(self.clone())),
            false => Err(StateError::Corrupt(format!(
                "distributed workers need a {} state store; {} is {backend}: set [state] url (or --state) to the url of one",
                crate::backend::having(|c| c.workers),
                self.url
            ))),
        }
    }
}

impl Workers {
    /// Records what workers need to join a run: the spec's text and the
    /// run-wide concurrency.
    pub async fn set_worker_spec(
        &self,
        run_id: &str,
        spec_text: &str,
        concurrency: u32,
    ) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE refill_runs SET spec_text = $1, run_concurrency = $2 WHERE run_id = $3",
        )
        .bind(spec_text)
        .bind(i64::from(concurrency))
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(q("recording the run's spec for workers"))?;
        Ok(())
    }

    /// The spec text a run planned for workers was started with.
    pub async fn worker_spec(&self, run_id: &str) -> Result<Option<String>, StateError> {
        sqlx::query_scalar("SELECT spec_text FROM refill_runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await
            .map(Option::flatten)
            .map_err(q("reading the run's spec"))
    }

    /// The number of chunks planned for `run_id` (0 if its planning never
    /// finished).
    pub async fn chunk_count(&self, run_id: &str) -> Result<u64, StateError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM refill_chunks WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&self.pool)
            .await
            .map_err(q("counting a run's chunks"))?;
        Ok(to_u64(n))
    }

    /// The most recent running run planned for workers.
    pub async fn latest_worker_run(&self) -> Result<Option<String>, StateError> {
        sqlx::query_scalar(
            "SELECT run_id FROM refill_runs WHERE coordination = 'workers' AND status = 'running' \
             ORDER BY started_at DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(q("looking for a run to join"))
    }

    /// Stores a component's bytes under its digest, once.
    pub async fn store_component(&self, digest: &str, bytes: &[u8]) -> Result<(), StateError> {
        let there: i64 =
            sqlx::query_scalar("SELECT count(*) FROM refill_components WHERE digest = $1")
                .bind(digest)
                .fetch_one(&self.pool)
                .await
                .map_err(q("looking up a stored component"))?;
        if there > 0 {
            return Ok(());
        }
        let stored = sqlx::query(
            "INSERT INTO refill_components (digest, size, data, stored_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(digest)
        .bind(to_i64(bytes.len() as u64))
        .bind(hex::encode(bytes))
        .bind(now())
        .execute(&self.pool)
        .await;
        match stored {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(()),
            other => other.map(drop).map_err(q("storing the component")),
        }
    }

    /// The bytes of the component stored under `digest`. The caller checks
    /// them against the digest before running them.
    pub async fn component(&self, digest: &str) -> Result<Option<Vec<u8>>, StateError> {
        let data: Option<String> =
            sqlx::query_scalar("SELECT data FROM refill_components WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.pool)
                .await
                .map_err(q("reading a stored component"))?;
        data.map(|d| {
            hex::decode(d).map_err(|e| {
                StateError::Corrupt(format!("the stored component {digest} is not hex: {e}"))
            })
        })
        .transpose()
    }

    /// Records the chunks of a run planned for workers, all unclaimed, in
    /// one transaction.
    pub async fn plan_chunks(&self, run_id: &str, chunks: &[Chunk]) -> Result<(), StateError> {
        let at = now();
        let mut tx = self.pool.begin().await.map_err(q("planning chunks"))?;
        for batch in chunks.chunks(ROWS_PER_INSERT) {
            let tuples: Vec<String> = (0..batch.len())
                .map(|i| {
                    let p = i * 4;
                    format!(
                        "($1, ${}, ${}, ${}, 'planned', 0, '', ${})",
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO refill_chunks (run_id, chunk_id, lo, hi, status, attempts, session_id, started_at) VALUES {}",
                tuples.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(run_id);
            for c in batch {
                query = query
                    .bind(to_i64(c.id))
                    .bind(c.lo.as_ref().map(Key::encode))
                    .bind(c.hi.encode())
                    .bind(at.clone());
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(q("planning chunks"))?;
        }
        tx.commit().await.map_err(q("planning chunks"))
    }

    /// Claims the lowest chunk of `run_id` that is unclaimed or whose lease
    /// expired, for `session_id`, leased for `lease`; chunk `prefer` first,
    /// if it is one of those (the chunk this worker read ahead). The run's
    /// row is locked for the claim, so that the chunks in flight are
    /// counted against the run's concurrency by one worker at a time.
    // Longer than 100 lines: one transaction: lock the run, count, pick a chunk, lease it; split, its steps would hold the lock across calls.
    pub async fn claim(
        &self,
        run_id: &str,
        key_type: KeyType,
        session_id: &str,
        lease: Duration,
        prefer: Option<u64>,
    ) -> Result<Claim, StateError> {
        let what = "claiming a chunk";
        // The claim commits durably: its attempt number is half of the
        // fence that keeps a chunk from being written twice, and a claim
        // lost in a crash could be handed out again with the same number.
        let mut tx = self.pool.begin().await.map_err(q(what))?;
        let run = sqlx::query(
            "SELECT status, run_concurrency FROM refill_runs WHERE run_id = $1 FOR UPDATE",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(q(what))?;
        let Some(run) = run else {
            return Err(StateError::Corrupt(format!(
                "run {run_id} is not in the state store"
            )));
        };
        let status: String = run.try_get(0).map_err(q(what))?;
        let status = RunStatus::parse(&status)
            .ok_or_else(|| StateError::Corrupt(format!("unknown run status `{status}`")))?;
        match status {
            RunStatus::Running => {}
            RunStatus::Done => return Ok(Claim::Finished),
            _ => {
                return Ok(Claim::Stopped {
                    status,
                    message: None,
                });
            }
        }
        let concurrency: i64 = run.try_get(1).map_err(q(what))?;
        let in_flight: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM refill_chunks WHERE run_id = $1 AND status = 'pending' AND lease_until >= {NOW_US}"
        )))
        .bind(run_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(q(what))?;
        if concurrency > 0 && in_flight >= concurrency {
            tx.commit().await.map_err(q(what))?;
            return Ok(Claim::Busy);
        }
        let claimed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH c AS (SELECT chunk_id, session_id AS prev, status AS prev_status FROM refill_chunks \
               WHERE run_id = $1 AND (status = 'planned' OR (status = 'pending' AND (lease_until IS NULL OR lease_until < {NOW_US}))) \
               ORDER BY (chunk_id = $5) IS TRUE DESC, chunk_id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             UPDATE refill_chunks AS r SET status = 'pending', attempts = r.attempts + 1, session_id = $2, \
               started_at = $3, finished_at = NULL, error = NULL, lease_until = {NOW_US} + $4 \
             FROM c WHERE r.run_id = $1 AND r.chunk_id = c.chunk_id \
             RETURNING r.chunk_id, r.lo, r.hi, r.attempts, c.prev, c.prev_status"
        )))
        .bind(run_id)
        .bind(session_id)
        .bind(now())
        .bind(micros(lease))
        .bind(prefer.map(to_i64))
        .fetch_optional(&mut *tx)
        .await
        .map_err(q(what))?;
        let outcome = match claimed {
            Some(row) if row.try_get::<i64, _>(3).map(to_u64).unwrap_or(0) > MAX_CLAIMS => {
                let chunk: i64 = row.try_get(0).map_err(q(what))?;
                let message = format!(
                    "chunk {chunk} was claimed {MAX_CLAIMS} times and never finished: the workers that took it died \
                     (look at their logs and exit codes); fix the cause, then plan the run again with --workers 0 to go on"
                );
                sqlx::query(
                    "UPDATE refill_runs SET status = 'failed', message = $1, finished_at = $2 WHERE run_id = $3",
                )
                .bind(&message)
                .bind(now())
                .bind(run_id)
                .execute(&mut *tx)
                .await
                .map_err(q(what))?;
                // Given back, so that the run resumes with it.
                sqlx::query(
                    "UPDATE refill_chunks SET status = 'planned', session_id = '', attempts = 0, lease_until = NULL \
                     WHERE run_id = $1 AND chunk_id = $2",
                )
                .bind(run_id)
                .bind(chunk)
                .execute(&mut *tx)
                .await
                .map_err(q(what))?;
                tracing::error!(chunk, "{message}");
                Claim::Stopped {
                    status: RunStatus::Failed,
                    message: Some(message),
                }
            }
            Some(row) => {
                let get_err = |e| StateError::Corrupt(format!("a claimed chunk: {e}"));
                let prev: String = row.try_get(4).map_err(get_err)?;
                let prev_status: String = row.try_get(5).map_err(get_err)?;
                Claim::Got(Lease {
                    chunk: chunk_of(&row, key_type)?,
                    session_id: session_id.to_string(),
                    attempt: to_u64(row.try_get(3).map_err(get_err)?),
                    taken_from: (prev_status == "pending").then_some(prev),
                })
            }
            None => {
                let open: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM refill_chunks WHERE run_id = $1 AND status <> 'done'",
                )
                .bind(run_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(q(what))?;
                if open == 0 {
                    Claim::Finished
                } else {
                    Claim::Waiting
                }
            }
        };
        tx.commit().await.map_err(q(what))?;
        Ok(outcome)
    }

    /// The chunk of `run_id` a claim would most likely hand out next: the
    /// lowest one never claimed. Claims nothing, so any worker may still
    /// take it: a worker whose claim found the run at its concurrency reads
    /// this chunk meanwhile, and keeps the rows only if its next claim
    /// hands it this very chunk.
    pub async fn next_unclaimed(
        &self,
        run_id: &str,
        key_type: KeyType,
    ) -> Result<Option<Chunk>, StateError> {
        let what = "looking at the next chunk";
        let row = sqlx::query(
            "SELECT chunk_id, lo, hi FROM refill_chunks WHERE run_id = $1 AND status = 'planned' \
             ORDER BY chunk_id LIMIT 1",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(q(what))?;
        row.map(|row| chunk_of(&row, key_type)).transpose()
    }

    /// Extends the leases `session_id` holds on chunks of `run_id` to
    /// `lease` from now. Returns how many it holds.
    pub async fn renew_leases(
        &self,
        run_id: &str,
        session_id: &str,
        lease: Duration,
    ) -> Result<u64, StateError> {
        let renewed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE refill_chunks SET lease_until = {NOW_US} + $1 \
             WHERE run_id = $2 AND session_id = $3 AND status = 'pending' AND lease_until IS NOT NULL"
        )))
        .bind(micros(lease))
        .bind(run_id)
        .bind(session_id)
        .execute(&self.pool)
        .await
        .map_err(q("renewing leases"))?;
        Ok(renewed.rows_affected())
    }

    /// Gives back a claim that was not started (the worker is stopping):
    /// the chunk is unclaimed again, so another worker takes it at once
    /// instead of after the lease expires.
    pub async fn release_lease(&self, run_id: &str, lease: &Lease) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE refill_chunks SET status = 'planned', session_id = '', lease_until = NULL \
             WHERE run_id = $1 AND chunk_id = $2 AND session_id = $3 AND attempts = $4 AND status = 'pending'",
        )
        .bind(run_id)
        .bind(to_i64(lease.chunk.id))
        .bind(&lease.session_id)
        .bind(to_i64(lease.attempt))
        .execute(&self.pool)
        .await
        .map_err(q("giving back a lease"))?;
        Ok(())
    }

    /// Reserves `rows` rows on the run's shared pacing clock, which
    /// advances by `rows / rate` seconds per reservation and never lags
    /// the database's clock: returns how long to wait before reading them.
    /// However many workers reserve, the run as a whole reads at most
    /// `rate` rows per second (plus the first reservation).
    pub async fn reserve_rows(
        &self,
        run_id: &str,
        rows: u64,
        rate: u32,
    ) -> Result<Duration, StateError> {
        if rate == 0 || rows == 0 {
            return Ok(Duration::ZERO);
        }
        let cost = to_i64(rows.saturating_mul(1_000_000) / u64::from(rate));
        let wait: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "UPDATE refill_runs SET pace_at = GREATEST(pace_at, {NOW_US}) + $1 WHERE run_id = $2 \
             RETURNING pace_at - $1 - {NOW_US}"
        )))
        .bind(cost)
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("reserving rows on the run's pace"))?;
        Ok(Duration::from_micros(
            u64::try_from(wait.unwrap_or(0)).unwrap_or(0),
        ))
    }
}

/// The chunk in a row of `chunk_id, lo, hi`.
fn chunk_of(row: &sqlx::any::AnyRow, key_type: KeyType) -> Result<Chunk, StateError> {
    let get_err = |e| StateError::Corrupt(format!("a chunk of the store: {e}"));
    let hi: String = row.try_get(2).map_err(get_err)?;
    Ok(Chunk {
        id: to_u64(row.try_get(0).map_err(get_err)?),
        lo: key_of(row.try_get(1).map_err(get_err)?, key_type)?,
        hi: key_of(Some(hi), key_type)?
            .ok_or_else(|| StateError::Corrupt("chunk without an upper key".into()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Counts, Mode, RunRecord, RunStatus, Timings};

    /// A fresh state store in its own schema of the test PostgreSQL.
    async fn store(schema: &str) -> Workers {
        let url = crate::state::fresh_schema(schema).await;
        let store = StateStore::open(&url).await.expect("open");
        store.workers().expect("PostgreSQL coordinates workers")
    }

    fn run(id: &str) -> RunRecord {
        RunRecord {
            run_id: id.into(),
            name: "n".into(),
            mode: Mode::Execute,
            status: RunStatus::Running,
            work_hash: "w".into(),
            data_hash: "d".into(),
            spec: serde_json::json!({}),
            spec_path: "/s.toml".into(),
            component_digest: "c".into(),
            transform_name: "t".into(),
            transform_version: "1".into(),
            host_version: "0".into(),
            user_name: "u".into(),
            host_name: "h".into(),
            source_url: "postgres://x".into(),
            source_table: "\"t\"".into(),
            target_table: "\"t\"".into(),
            key_type: KeyType::Integer,
            first_key: Some(Key::Int(1)),
            high_watermark: Some(Key::Int(30)),
            rows_in_scope: 30,
            chunk_rows: 10,
            started_at: now(),
            finished_at: None,
            message: None,
            workers: true,
        }
    }

    /// Run `r1` planned for workers at `concurrency`, in a fresh store in
    /// `schema`, with chunks 1 to 3 of keys (0, 10], (10, 20], (20, 30].
    async fn planned(schema: &str, concurrency: u32) -> (Workers, Vec<Chunk>) {
        let store = store(schema).await;
        store.create_run(&run("r1")).await.expect("run");
        store
            .set_worker_spec("r1", "name = 'n'", concurrency)
            .await
            .expect("spec");
        let chunks: Vec<Chunk> = (0..3)
            .map(|i| Chunk {
                id: i + 1,
                lo: (i > 0).then(|| Key::Int(i as i64 * 10)),
                hi: Key::Int((i as i64 + 1) * 10),
            })
            .collect();
        store.plan_chunks("r1", &chunks).await.expect("plan");
        (store, chunks)
    }

    fn got(claim: Claim) -> Lease {
        match claim {
            Claim::Got(lease) => lease,
            other => panic!("expected a chunk, got {other:?}"),
        }
    }

    async fn done(store: &StateStore, lease: &Lease) -> bool {
        store
            .chunk_done(
                "r1",
                lease.chunk.id,
                &Counts::default(),
                &Timings::default(),
                None,
                &[],
                &[],
                Some(lease),
            )
            .await
            .expect("checkpoint")
    }

    #[tokio::test]
    async fn only_a_store_whose_database_coordinates_workers_becomes_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = crate::db::DbUrl::parse("sqlite:state.db", dir.path()).expect("url");
        let sqlite = StateStore::open(&url).await.expect("open");
        let refused = sqlite
            .workers()
            .expect_err("SQLite cannot coordinate workers");
        assert!(
            refused
                .to_string()
                .starts_with("state store: distributed workers need a PostgreSQL state store; "),
            "{refused}"
        );
        let url = crate::state::fresh_schema("unit_state_workers").await;
        let postgres = StateStore::open(&url).await.expect("open");
        assert!(postgres.workers().is_ok());
    }

    #[tokio::test]
    async fn claims_lease_fence_take_over_and_pace_on_postgres() {
        let (store, _) = planned("unit_state_lease", 2).await;
        let long = Duration::from_secs(60);
        let claim = |session: &'static str, lease: Duration| {
            let store = store.clone();
            async move {
                store
                    .claim("r1", KeyType::Integer, session, lease, None)
                    .await
                    .expect("claim")
            }
        };

        let next = || {
            let store = store.clone();
            async move {
                store
                    .next_unclaimed("r1", KeyType::Integer)
                    .await
                    .expect("next")
                    .map(|c| c.id)
            }
        };
        // Looking claims nothing: the next claim gets the chunk looked at.
        assert_eq!(next().await, Some(1));
        assert_eq!(next().await, Some(1));

        // Lowest first; the run's concurrency (2) holds across sessions.
        let a = got(claim("s1", long).await);
        assert_eq!((a.chunk.id, a.attempt, a.taken_from.clone()), (1, 1, None));
        assert_eq!(a.chunk.lo, None);
        let b = got(claim("s2", long).await);
        assert_eq!((b.chunk.id, b.chunk.lo.clone()), (2, Some(Key::Int(10))));
        assert_eq!(claim("s3", long).await, Claim::Busy);
        // At its concurrency, the chunk a waiting worker may read ahead.
        assert_eq!(next().await, Some(3));
        assert!(done(&store, &a).await);
        let c = got(claim("s3", long).await);
        assert_eq!(c.chunk.id, 3);
        assert_eq!(c.chunk.lo, Some(Key::Int(20)));
        // Every chunk claimed: nothing to read ahead.
        assert_eq!(next().await, None);

        // s2 stops renewing: once its lease has expired, s1 takes chunk 2
        // over, and s2's late checkpoint is refused by the fence.
        assert_eq!(
            store
                .renew_leases("r1", "s2", Duration::ZERO)
                .await
                .expect("renew"),
            1
        );
        let taken = got(claim("s1", long).await);
        assert_eq!(taken.chunk.id, 2);
        assert_eq!(taken.attempt, 2);
        assert_eq!(taken.taken_from.as_deref(), Some("s2"));
        assert!(!done(&store, &b).await, "a stale claim must not checkpoint");
        // Two chunks in flight: the run is at its concurrency.
        assert_eq!(claim("s2", long).await, Claim::Busy);
        assert!(done(&store, &taken).await);
        // One in flight, none free: wait for it (or for its lease to end).
        assert_eq!(claim("s2", long).await, Claim::Waiting);
        assert!(done(&store, &c).await);
        assert_eq!(claim("s2", long).await, Claim::Finished);

        // The shared pace: 500 rows at 1,000 rows/s each; the second waits
        // for the first's half second.
        let first = store.reserve_rows("r1", 500, 1000).await.expect("pace");
        let second = store.reserve_rows("r1", 500, 1000).await.expect("pace");
        assert!(first < Duration::from_millis(50), "{first:?}");
        assert!(
            (Duration::from_millis(250)..=Duration::from_millis(500)).contains(&second),
            "{second:?}"
        );

        // A run ended elsewhere hands out nothing.
        store
            .set_run_status("r1", RunStatus::Aborted, None)
            .await
            .expect("abort");
        assert_eq!(
            claim("s1", long).await,
            Claim::Stopped {
                status: RunStatus::Aborted,
                message: None
            }
        );
    }

    #[tokio::test]
    async fn a_claim_prefers_the_chunk_read_ahead_while_it_is_free() {
        let (store, chunks) = planned("unit_state_prefer", 3).await;
        let claim = |session: &'static str, prefer: Option<u64>| {
            let store = store.clone();
            async move {
                let claim = store
                    .claim(
                        "r1",
                        KeyType::Integer,
                        session,
                        Duration::from_secs(60),
                        prefer,
                    )
                    .await
                    .expect("claim");
                got(claim).chunk
            }
        };
        assert_eq!(claim("s1", Some(3)).await, chunks[2]);
        // Taken: the lowest free chunk instead.
        assert_eq!(claim("s2", Some(3)).await, chunks[0]);
        assert_eq!(claim("s3", Some(99)).await, chunks[1]);
    }

    #[tokio::test]
    async fn components_are_stored_once_and_read_back() {
        let store = store("unit_state_components").await;
        let bytes = b"\0asm not really".to_vec();
        store.store_component("abc", &bytes).await.expect("store");
        store.store_component("abc", &bytes).await.expect("again");
        assert_eq!(store.component("abc").await.expect("read"), Some(bytes));
        assert_eq!(store.component("nope").await.expect("read"), None);
    }
}
