//! MySQL/MariaDB's replication lag: consumes a pool on a replica,
//! produces its lag from `SHOW REPLICA STATUS` (`SHOW SLAVE STATUS` on
//! older servers), the largest over its channels.

use std::time::Duration;

/// One row of `SHOW REPLICA STATUS` (one per replication channel or
/// MariaDB connection), with the columns lag is judged by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// `Seconds_Behind_Source` (`Seconds_Behind_Master`): NULL while
    /// replication is stopped or broken.
    pub seconds: Option<i64>,
    /// `Replica_IO_Running` (`Slave_IO_Running`).
    pub io_running: Option<String>,
    /// `Replica_SQL_Running` (`Slave_SQL_Running`).
    pub sql_running: Option<String>,
    /// `Last_IO_Error`, then `Last_SQL_Error`, whichever is set.
    pub last_error: Option<String>,
}

impl ReplicaStatus {
    /// Reads the columns out of `(name, value)` pairs, under their new
    /// (`Source`, `Replica`) or old (`Master`, `Slave`) names.
    pub fn from_columns(columns: &[(String, Option<String>)]) -> ReplicaStatus {
        let get = |names: &[&str]| {
            columns
                .iter()
                .find(|(n, _)| names.iter().any(|m| n.eq_ignore_ascii_case(m)))
                .and_then(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        ReplicaStatus {
            seconds: get(&["Seconds_Behind_Source", "Seconds_Behind_Master"])
                .and_then(|v| v.trim().parse().ok()),
            io_running: get(&["Replica_IO_Running", "Slave_IO_Running"]),
            sql_running: get(&["Replica_SQL_Running", "Slave_SQL_Running"]),
            last_error: get(&["Last_IO_Error"]).or_else(|| get(&["Last_SQL_Error"])),
        }
    }
}

/// The lag of a replica from its `SHOW REPLICA STATUS` rows: the largest
/// over its channels. No row means `url` is not a replica; a NULL lag means
/// replication is stopped, and the lag cannot be measured.
pub fn lag_of(url: &str, statuses: &[ReplicaStatus]) -> Result<Duration, String> {
    if statuses.is_empty() {
        return Err(format!(
            "{url} is not a replica (SHOW REPLICA STATUS returned no row); \
             point [throttle] replica_url at a replica, or remove max_replica_lag"
        ));
    }
    let mut max = 0;
    for status in statuses {
        let Some(seconds) = status.seconds else {
            let mut why = format!(
                "replication on {url} is stopped or broken (Seconds_Behind_Source is NULL; IO thread {}, SQL thread {})",
                status.io_running.as_deref().unwrap_or("?"),
                status.sql_running.as_deref().unwrap_or("?"),
            );
            if let Some(error) = &status.last_error {
                why.push_str(&format!(": {error}"));
            }
            return Err(why);
        };
        max = max.max(seconds);
    }
    Ok(Duration::from_secs(u64::try_from(max).unwrap_or(0)))
}

/// Replication lag of the MySQL/MariaDB replica behind `pool`, named `url`
/// in messages.
pub(super) async fn replica_lag(pool: &sqlx::MySqlPool, url: &str) -> Result<Duration, String> {
    use sqlx::{Column as _, Row as _};
    let describe = |e: sqlx::Error| crate::db::describe(&e);
    // Plain text protocol: every value arrives as text, whatever its type.
    let rows = match sqlx::raw_sql("SHOW REPLICA STATUS").fetch_all(pool).await {
        // 1064: a syntax error, from a server older than the new name.
        Err(e) if super::errno(&e) == Some(1064) => sqlx::raw_sql("SHOW SLAVE STATUS")
            .fetch_all(pool)
            .await
            .map_err(describe)?,
        other => other.map_err(describe)?,
    };
    let statuses: Vec<ReplicaStatus> = rows
        .iter()
        .map(|row| {
            let columns: Vec<(String, Option<String>)> = row
                .columns()
                .iter()
                .map(|c| {
                    let value = row
                        .try_get_unchecked::<Option<String>, _>(c.ordinal())
                        .ok()
                        .flatten();
                    (c.name().to_string(), value)
                })
                .collect();
            ReplicaStatus::from_columns(&columns)
        })
        .collect();
    lag_of(url, &statuses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(pairs: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn replica_status_is_read_under_old_and_new_names() {
        let new = ReplicaStatus::from_columns(&columns(&[
            ("Replica_IO_Running", Some("Yes")),
            ("Replica_SQL_Running", Some("Yes")),
            ("Seconds_Behind_Source", Some("7")),
            ("Last_IO_Error", Some("")),
        ]));
        assert_eq!(new.seconds, Some(7));
        assert_eq!(new.last_error, None);
        let old = ReplicaStatus::from_columns(&columns(&[
            ("Slave_IO_Running", Some("No")),
            ("Slave_SQL_Running", Some("Yes")),
            ("Seconds_Behind_Master", None),
            ("Last_IO_Error", Some("error connecting to master")),
        ]));
        assert_eq!(old.seconds, None);
        assert_eq!(old.io_running.as_deref(), Some("No"));
        assert_eq!(
            old.last_error.as_deref(),
            Some("error connecting to master")
        );
    }

    #[test]
    fn replica_lag_is_the_largest_and_null_cannot_be_measured() {
        let at = |s: Option<i64>| ReplicaStatus {
            seconds: s,
            io_running: Some("Yes".into()),
            sql_running: Some("Yes".into()),
            last_error: None,
        };
        let url = "mysql://repl:***@replica/db";
        assert_eq!(
            lag_of(url, &[at(Some(3)), at(Some(12))]),
            Ok(Duration::from_secs(12))
        );
        assert_eq!(lag_of(url, &[at(Some(0))]), Ok(Duration::ZERO));
        let stopped = lag_of(url, &[at(Some(1)), at(None)]).unwrap_err();
        assert!(
            stopped.contains("replication on mysql://repl:***@replica/db is stopped"),
            "{stopped}"
        );
        let none = lag_of(url, &[]).unwrap_err();
        assert!(
            none.starts_with("mysql://repl:***@replica/db is not a replica"),
            "{none}"
        );
    }
}
