//! MySQL/MariaDB's health indicators: consumes a [`Health`] on a
//! MySQL/MariaDB source; produces what each indicator on finds, from
//! `SHOW GLOBAL STATUS` (`Threads_running`) and InnoDB's
//! `trx_rseg_history_len` metric (the history list length, which needs the
//! PROCESS privilege).

use sqlx::Row as _;

use crate::throttle::health::{Blind, Finding, Health};

/// The history list length, and whether the metric is counted: MariaDB
/// 10.5+ says so in `ENABLED`.
const HISTORY: &str = "SELECT `count`, `enabled` FROM information_schema.innodb_metrics \
                       WHERE `name` = 'trx_rseg_history_len'";
/// The same on MySQL and older MariaDB, which say it in `STATUS`.
const HISTORY_BY_STATUS: &str = "SELECT `count`, CAST(`status` = 'enabled' AS SIGNED) \
                                 FROM information_schema.innodb_metrics \
                                 WHERE `name` = 'trx_rseg_history_len'";

/// Measures the indicators on; returns what they found.
pub(super) async fn check(pool: &sqlx::MySqlPool, health: &Health) -> Vec<Finding> {
    let t = &health.thresholds;
    let mut found = Vec::new();
    if t.threads_running.max.is_some() || t.threads_running.critical.is_some() {
        match threads_running(pool).await {
            Ok(running) => found.extend(t.threads_running.judge(
                "threads-running",
                running,
                &format!("Threads_running is {running:.0}"),
                "threads_running",
            )),
            Err(why) => found.push(Finding::unmeasured("threads-running", why)),
        }
    }
    if t.history_length.max.is_some() || t.history_length.critical.is_some() {
        match history(pool).await {
            Ok(length) => {
                #[expect(clippy::cast_precision_loss, reason = "a count of undo logs")]
                let value = length as f64;
                found.extend(t.history_length.judge(
                    "history-length",
                    value,
                    &format!("the InnoDB history list length is {length}"),
                    "history_length",
                ));
            }
            // An indicator on by default that this role cannot read is
            // reported by `plan`, not waited on.
            Err(why) if t.strict("history-length") => {
                found.push(Finding::unmeasured("history-length", why));
            }
            Err(_) => {}
        }
    }
    found
}

/// `Threads_running`, read as text (the status statements are sent
/// unprepared: not every server prepares them).
async fn threads_running(pool: &sqlx::MySqlPool) -> Result<f64, String> {
    let row = sqlx::raw_sql("SHOW GLOBAL STATUS LIKE 'Threads_running'")
        .fetch_optional(pool)
        .await
        .map_err(|e| crate::db::describe(&e))?
        .ok_or("the server reports no Threads_running")?;
    let value: Option<String> = row.try_get_unchecked(1).map_err(|e| e.to_string())?;
    value
        .as_deref()
        .map(str::trim)
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("Threads_running is not a number ({value:?})"))
}

/// The InnoDB history list length.
async fn history(pool: &sqlx::MySqlPool) -> Result<i64, String> {
    let read = |sql: &'static str| sqlx::query_as::<_, (i64, i64)>(sql).fetch_optional(pool);
    let row = match read(HISTORY).await {
        // 1054: no such column, on a server that has STATUS instead.
        Err(e) if super::errno(&e) == Some(1054) => read(HISTORY_BY_STATUS).await,
        other => other,
    };
    let row = row.map_err(|e| {
        let grant = match super::errno(&e) {
            Some(1227 | 1142 | 1044) => ": grant the PROCESS privilege",
            _ => "",
        };
        format!(
            "information_schema.innodb_metrics cannot be read ({}){grant}",
            crate::db::describe(&e)
        )
    })?;
    match row {
        None => Err("the server has no trx_rseg_history_len metric".into()),
        Some((_, 0)) => Err(
            "the trx_rseg_history_len metric is disabled: SET GLOBAL innodb_monitor_enable = 'trx_rseg_history_len'"
                .into(),
        ),
        Some((count, _)) => Ok(count),
    }
}

/// What the role cannot see that the indicators on need.
pub(super) async fn blind_spots(
    pool: &sqlx::MySqlPool,
    health: &Health,
) -> Result<Vec<Blind>, String> {
    let t = &health.thresholds;
    let mut blind = Vec::new();
    if (t.history_length.max.is_some() || t.history_length.critical.is_some())
        && let Err(why) = history(pool).await
    {
        let strict = t.strict("history-length");
        let off = "set max_history_length = 0 and critical_history_length = 0";
        blind.push(Blind {
            key: "max_history_length",
            why: if strict {
                format!("{why}; or {off}")
            } else {
                format!("{why}; the default indicator is off until then, or {off}")
            },
            strict,
        });
    }
    Ok(blind)
}
