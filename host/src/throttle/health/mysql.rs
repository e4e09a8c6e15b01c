//! MySQL/MariaDB's health indicators: consumes a [`Health`] on a
//! MySQL/MariaDB source; produces what each indicator on finds, from
//! `SHOW GLOBAL STATUS` (`Threads_running`) and InnoDB's
//! `trx_rseg_history_len` metric (the history list length, which needs the
//! PROCESS privilege).

use super::{Finding, Health};
use crate::source::Pools;

/// The history list length, and whether the metric is being counted.
const HISTORY: &str = "SELECT `count`, `enabled` FROM information_schema.innodb_metrics \
                       WHERE `name` = 'trx_rseg_history_len'";

/// Measures the indicators on; returns what they found.
pub async fn check(health: &Health) -> Vec<Finding> {
    let t = &health.thresholds;
    let Pools::Mysql(pool) = health.db.pools() else {
        return Vec::new();
    };
    let describe = |e: &sqlx::Error| crate::db::describe(e);
    let mut found = Vec::new();
    if t.threads_running.max.is_some() || t.threads_running.critical.is_some() {
        let status: Result<(String, String), _> =
            sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Threads_running'")
                .fetch_one(pool)
                .await;
        match status.map(|(_, v)| v.trim().parse::<f64>()) {
            Ok(Ok(running)) => found.extend(t.threads_running.judge(
                "threads-running",
                running,
                &format!("Threads_running is {running:.0}"),
                "threads_running",
            )),
            Ok(Err(e)) => found.push(Finding::unmeasured("threads-running", e)),
            Err(e) => found.push(Finding::unmeasured("threads-running", describe(&e))),
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
            Err(why) => found.push(Finding::unmeasured("history-length", why)),
        }
    }
    found
}

/// The InnoDB history list length.
async fn history(pool: &sqlx::MySqlPool) -> Result<i64, String> {
    let row: Option<(i64, i64)> = sqlx::query_as(HISTORY)
        .fetch_optional(pool)
        .await
        .map_err(|e| {
            format!(
                "information_schema.innodb_metrics cannot be read ({}): grant the PROCESS privilege",
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
pub async fn blind_spots(health: &Health) -> Result<Vec<(&'static str, String)>, String> {
    let t = &health.thresholds;
    let Pools::Mysql(pool) = health.db.pools() else {
        return Ok(Vec::new());
    };
    let mut blind = Vec::new();
    if (t.history_length.max.is_some() || t.history_length.critical.is_some())
        && let Err(why) = history(pool).await
    {
        blind.push((
            "max_history_length",
            format!("{why}, or set max_history_length = 0"),
        ));
    }
    Ok(blind)
}
