//! PostgreSQL's health indicators: consumes a [`Health`] on a PostgreSQL
//! source; produces what each indicator on finds, from one read-only
//! statement over the statistics views (and, with `archive_mode` on, a
//! listing of `pg_wal/archive_status`).

use crate::throttle::health::{Blind, Finding, Health, WARMING_UP};

/// Everything but the archive listing, in one round trip. `$1` is the
/// target table, quoted. Progress views cover the whole cluster, so they
/// are narrowed to this database. Sessions of refill (`refill pid N`, this
/// run's and any other backfill's) are not the application's load; a
/// session the role may not see has a NULL `backend_type`.
const MEASURE: &str = "\
SELECT \
  (SELECT string_agg(p, ', ') FROM ( \
      SELECT 'VACUUM (' || phase || ')' AS p FROM pg_stat_progress_vacuum \
       WHERE datid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND relid IN (to_regclass($1), (SELECT reltoastrelid FROM pg_class WHERE oid = to_regclass($1))) \
      UNION ALL \
      SELECT command || ' (' || phase || ')' FROM pg_stat_progress_cluster \
       WHERE datid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND relid = to_regclass($1)) v), \
  (SELECT count(*) FROM pg_stat_progress_vacuum \
    WHERE relid IS NULL AND datid = (SELECT oid FROM pg_database WHERE datname = current_database()))::int8, \
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8 END, \
  (SELECT slot_name::text FROM pg_replication_slots WHERE restart_lsn IS NOT NULL ORDER BY restart_lsn LIMIT 1), \
  CASE WHEN pg_is_in_recovery() THEN NULL \
       ELSE (SELECT (pg_current_wal_lsn() - min(restart_lsn))::float8 FROM pg_replication_slots) END, \
  (SELECT count(*) FROM pg_stat_activity \
    WHERE backend_type = 'client backend' AND state = 'active' \
      AND application_name NOT LIKE 'refill pid %')::int8, \
  (SELECT count(*) FROM pg_stat_activity WHERE backend_type IS NULL)::int8, \
  current_setting('archive_mode'), \
  (SELECT last_failed_time > coalesce(last_archived_time, '-infinity') FROM pg_stat_archiver), \
  (SELECT last_failed_wal FROM pg_stat_archiver)";

/// WAL segments the archiver has yet to copy.
const PENDING: &str =
    "SELECT count(*)::int8 FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'";

/// One measurement.
struct Measured {
    vacuum: Option<String>,
    hidden_vacuums: i64,
    lsn: Option<f64>,
    slot: Option<String>,
    retained: Option<f64>,
    active: i64,
    hidden_backends: i64,
    archive_mode: String,
    archiver_failing: Option<bool>,
    failed_wal: Option<String>,
}

/// Measures the indicators on; returns what they found, in the order
/// they are listed in `[throttle.health]`.
// Longer than 100 lines: one statement measures every indicator; one block judges each, in spec order.
pub(super) async fn check(pool: &sqlx::PgPool, health: &Health) -> Vec<Finding> {
    let t = &health.thresholds;
    let timeouts = *health.db.timeouts();
    let measured = async {
        let mut tx = super::read::begin_read(pool, timeouts.read, timeouts.lock).await?;
        let row = sqlx::query_as::<
            _,
            (
                Option<String>,
                i64,
                Option<f64>,
                Option<String>,
                Option<f64>,
                i64,
                i64,
                String,
                Option<bool>,
                Option<String>,
            ),
        >(MEASURE)
        .bind(health.table.quoted())
        .fetch_one(&mut *tx)
        .await?;
        let m = Measured {
            vacuum: row.0,
            hidden_vacuums: row.1,
            lsn: row.2,
            slot: row.3,
            retained: row.4,
            active: row.5,
            hidden_backends: row.6,
            archive_mode: row.7,
            archiver_failing: row.8,
            failed_wal: row.9,
        };
        let pending = if t.archive_pending.is_some() && m.archive_mode != "off" {
            Some(
                sqlx::query_scalar::<_, i64>(PENDING)
                    .fetch_one(&mut *tx)
                    .await,
            )
        } else {
            None
        };
        tx.commit().await?;
        Ok::<_, sqlx::Error>((m, pending))
    };
    let (m, pending) = match measured.await {
        Ok(done) => done,
        Err(e) => {
            return vec![Finding::unmeasured(
                "health",
                format!(
                    "the statistics views cannot be read: {}",
                    crate::db::describe(&e)
                ),
            )];
        }
    };
    let mut found = Vec::new();
    if t.vacuum {
        if let Some(running) = &m.vacuum {
            found.push(Finding {
                indicator: "vacuum",
                reason: format!(
                    "{running} is running on {}; the run goes on when it ends (set [throttle.health] vacuum = false to ignore it)",
                    health.table.quoted()
                ),
                critical: false,
            });
        } else if m.hidden_vacuums > 0 && t.strict("vacuum") {
            found.push(Finding::unmeasured(
                "vacuum",
                "a VACUUM is running on a table this role may not see (pg_stat_progress_vacuum.relid is NULL): grant it pg_monitor",
            ));
        }
    }
    if t.wal_rate.max.is_some() || t.wal_rate.critical.is_some() {
        match m.lsn {
            // Nothing starts before the rate is known.
            Some(lsn) => match health.wal_rate(lsn) {
                Some(rate) => found.extend(t.wal_rate.judge(
                    "wal-rate",
                    rate,
                    &format!("WAL is generated at {rate:.1} MB/s"),
                    "wal_rate",
                )),
                None => found.push(Finding {
                    indicator: "starting",
                    reason: WARMING_UP.into(),
                    critical: false,
                }),
            },
            None => found.push(Finding::unmeasured(
                "wal-rate",
                "the source is a standby (pg_is_in_recovery() is true)",
            )),
        }
    }
    if t.archiver && m.archive_mode != "off" {
        if m.archiver_failing == Some(true) {
            found.push(Finding {
                indicator: "archiver",
                reason: format!(
                    "the WAL archiver is failing (pg_stat_archiver: its last attempt, on {}, failed)",
                    m.failed_wal.as_deref().unwrap_or("a segment")
                ),
                critical: false,
            });
        }
        match (pending, t.archive_pending) {
            (Some(Ok(n)), Some(most)) if u64::try_from(n).unwrap_or(0) > most => {
                found.push(Finding {
                    indicator: "archiver",
                    reason: format!(
                        "{n} WAL segments wait for the archiver, over max_archive_pending {most}"
                    ),
                    critical: false,
                });
            }
            (Some(Err(e)), _) if t.strict("archiver") => found.push(Finding::unmeasured(
                "archiver",
                format!(
                    "pg_wal/archive_status cannot be listed ({}): grant pg_monitor",
                    crate::db::describe(&e)
                ),
            )),
            _ => {}
        }
    }
    if let Some(retained) = m.retained {
        let mb = retained / 1e6;
        found.extend(t.slot_retained_wal.judge(
            "replication-slot",
            mb,
            &format!(
                "replication slot {} holds back {mb:.0} MB of WAL",
                m.slot.as_deref().unwrap_or("?")
            ),
            "slot_retained_wal",
        ));
    }
    if t.active_backends.max.is_some() || t.active_backends.critical.is_some() {
        if m.hidden_backends > 0 && t.strict("active-backends") {
            found.push(Finding::unmeasured(
                "active-backends",
                format!(
                    "this role cannot see the state of {} sessions in pg_stat_activity: grant it pg_monitor",
                    m.hidden_backends
                ),
            ));
        } else {
            #[expect(clippy::cast_precision_loss, reason = "a count of sessions")]
            let active = m.active as f64;
            found.extend(t.active_backends.judge(
                "active-backends",
                active,
                &format!(
                    "{} sessions other than refill's are running a statement",
                    m.active
                ),
                "active_backends",
            ));
        }
    }
    found
}

/// What the role cannot see that the indicators on need: (key, why,
/// whether the spec set the indicator itself).
pub(super) async fn blind_spots(
    pool: &sqlx::PgPool,
    health: &Health,
) -> Result<Vec<Blind>, String> {
    let t = &health.thresholds;
    let (role, stats, monitor, archive_mode): (String, bool, bool, String) = sqlx::query_as(
        "SELECT current_user::text, \
                rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'), \
                rolsuper OR pg_has_role(current_user, 'pg_monitor', 'USAGE'), \
                current_setting('archive_mode') \
         FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| crate::db::describe(&e))?;
    let mut blind = Vec::new();
    let mut add = |key: &'static str, indicator: &str, why: String, off: &str| {
        let strict = t.strict(indicator);
        let then = if strict {
            format!("GRANT pg_monitor TO {role}, or set {off}")
        } else {
            format!(
                "the default indicator judges only what the role sees; GRANT pg_monitor TO {role} \
                 for all of it, or set {off}"
            )
        };
        blind.push(Blind {
            key,
            why: format!("{why}: {then}"),
            strict,
        });
    };
    if t.vacuum && !stats {
        add(
            "vacuum",
            "vacuum",
            format!(
                "role {role} cannot see which table a running VACUUM works on \
                 (pg_stat_progress_vacuum shows it only to roles with pg_read_all_stats), \
                 so autovacuum on the target table goes unseen, or, when the spec sets vacuum, \
                 every autovacuum would pause the run"
            ),
            "vacuum = false",
        );
    }
    if (t.active_backends.max.is_some() || t.active_backends.critical.is_some()) && !stats {
        add(
            "max_active_backends",
            "active-backends",
            format!(
                "role {role} cannot see other roles' sessions in pg_stat_activity \
                 (pg_read_all_stats)"
            ),
            "max_active_backends = 0 and critical_active_backends = 0",
        );
    }
    if t.archive_pending.is_some() && archive_mode != "off" && !monitor {
        add(
            "max_archive_pending",
            "archiver",
            format!(
                "role {role} cannot list pg_wal/archive_status (pg_ls_archive_statusdir needs \
                 pg_monitor)"
            ),
            "max_archive_pending = 0",
        );
    }
    Ok(blind)
}
