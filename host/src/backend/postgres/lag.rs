//! PostgreSQL's replication lag: consumes a pool on a primary or a
//! replica, produces how far behind the replicas are, from
//! `pg_stat_replication` or the WAL receiver.

use std::time::Duration;

/// A replica that heard nothing from its primary for this long is not
/// known to be caught up (primaries send keepalives well within it).
const RECEIVER_SILENCE: Duration = Duration::from_secs(60);

/// Replication lag. On a replica: how far its replay is behind what it
/// received (zero when it replayed everything), provided its WAL receiver
/// is streaming and heard from the primary recently. On a primary: the
/// largest `replay_lag` in `pg_stat_replication`, provided the role may see
/// the replicas' positions (`pg_read_all_stats`, or `pg_monitor`).
pub(super) async fn replica_lag(
    pool: &sqlx::PgPool,
    replica: bool,
    optional: bool,
) -> Result<Duration, String> {
    let describe = |e: sqlx::Error| crate::db::describe(&e);
    let seconds: f64 = if replica {
        let (recovering, receiver, silent, lag): (bool, Option<String>, Option<f64>, Option<f64>) =
            sqlx::query_as(
                "SELECT pg_is_in_recovery(), \
                        (SELECT status FROM pg_stat_wal_receiver), \
                        (SELECT EXTRACT(EPOCH FROM now() - last_msg_receipt_time)::float8 FROM pg_stat_wal_receiver), \
                        CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
                             ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8 END",
            )
            .fetch_one(pool)
            .await
            .map_err(describe)?;
        if !recovering {
            return Err("replica_url is not a replica (pg_is_in_recovery() is false)".into());
        }
        match receiver.as_deref() {
            Some("streaming") => {}
            Some(other) => {
                return Err(format!(
                    "the replica's WAL receiver is {other}, not streaming"
                ));
            }
            None => {
                return Err(
                    "the replica has no WAL receiver: it is not streaming from a primary".into(),
                );
            }
        }
        if silent.is_some_and(|s| s > RECEIVER_SILENCE.as_secs_f64()) {
            return Err(format!(
                "the replica heard nothing from its primary for {:.0} s",
                silent.unwrap_or_default()
            ));
        }
        lag.ok_or("the replica has replayed nothing yet")?
    } else {
        let (replicas, visible, lag): (i64, i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), count(replay_lsn), max(EXTRACT(EPOCH FROM replay_lag))::float8 \
             FROM pg_stat_replication",
        )
        .fetch_one(pool)
        .await
        .map_err(describe)?;
        if replicas == 0 && optional {
            return Ok(Duration::ZERO);
        }
        if replicas == 0 {
            return Err(
                "no replica is connected to the source (pg_stat_replication is empty); \
                 set [throttle] replica_url, or remove max_replica_lag"
                    .into(),
            );
        }
        if visible < replicas {
            return Err(
                "this role cannot see the replicas' positions in pg_stat_replication; \
                 grant it pg_monitor (or pg_read_all_stats)"
                    .into(),
            );
        }
        // Positions visible but no lag reported: the replicas are idle and
        // caught up.
        lag.unwrap_or(0.0)
    };
    Ok(Duration::from_secs_f64(seconds.max(0.0)))
}
