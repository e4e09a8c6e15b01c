//! Health signals and time windows: consumes the spec's `[throttle]`
//! thresholds, the source database and the optional replica and probe
//! databases; produces, on each check, the reason the run must wait, if
//! there is one. A signal that cannot be measured (an unreachable replica,
//! a failing probe, no replica to report lag) is such a reason: the run
//! fails closed.
//!
//! Replica lag is read from PostgreSQL's statistics views, or on a
//! MySQL/MariaDB replica from `SHOW REPLICA STATUS` (`SHOW SLAVE STATUS` on
//! servers older than MariaDB 10.5.1 and MySQL 8.0.22).

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use tokio::sync::Mutex;

use super::health::{Finding, Health};
use crate::backend::{Lag, on_backend};
use crate::db::DbUrl;
use crate::source::Database;
use crate::spec::{Spec, SpecError, parse_window};

/// The longest a measurement may take before it counts as failed.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(2);
/// The replica lag a gentle run on PostgreSQL pauses over when the spec
/// sets none (gh-ost's `--max-lag-millis` default).
pub const DEFAULT_MAX_LAG: Duration = Duration::from_millis(1500);

/// The allowed times of day.
#[derive(Clone, Debug)]
pub struct Windows {
    spans: Vec<(u32, u32)>,
    zone: Tz,
    text: String,
}

impl Windows {
    /// The spec's windows, or `None` when any time is allowed.
    pub fn of(spec: &Spec) -> Option<Windows> {
        let t = &spec.file.throttle;
        let spans: Vec<(u32, u32)> = t.windows.iter().filter_map(|w| parse_window(w)).collect();
        if spans.is_empty() {
            return None;
        }
        Some(Windows {
            spans,
            zone: t.timezone.parse().unwrap_or(Tz::UTC),
            text: format!("{} {}", t.windows.join(", "), t.timezone),
        })
    }

    /// Minutes after local midnight at `at`.
    fn minute(&self, at: DateTime<Utc>) -> u32 {
        let local = at.with_timezone(&self.zone);
        local.hour() * 60 + local.minute()
    }

    /// Whether chunks may start at `at`.
    pub fn open_at(&self, at: DateTime<Utc>) -> bool {
        let m = self.minute(at);
        self.spans.iter().any(|&(start, end)| {
            if start < end {
                (start..end).contains(&m)
            } else {
                m >= start || m < end
            }
        })
    }

    /// Why chunks may not start at `at`, if they may not.
    pub fn closed(&self, at: DateTime<Utc>) -> Option<String> {
        if self.open_at(at) {
            return None;
        }
        let m = self.minute(at);
        let wait = self
            .spans
            .iter()
            .map(|&(start, _)| (start + 24 * 60 - m) % (24 * 60))
            .min()
            .unwrap_or(0);
        Some(format!(
            "outside the allowed windows ({}; now {:02}:{:02}); the next opens in {}h{:02}m",
            self.text,
            m / 60,
            m % 60,
            wait / 60,
            wait % 60
        ))
    }
}

/// A database measured lazily: connected on the first check, and again
/// after a failure.
struct Lazy {
    url: DbUrl,
    db: Mutex<Option<Database>>,
}

impl Lazy {
    fn new(url: DbUrl) -> Lazy {
        Lazy {
            url,
            db: Mutex::new(None),
        }
    }

    async fn get(&self) -> Result<Database, String> {
        let mut slot = self.db.lock().await;
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = Database::connect(&self.url, 1)
            .await
            .map_err(|e| e.to_string())?;
        *slot = Some(db.clone());
        Ok(db)
    }

    async fn forget(&self) {
        *self.db.lock().await = None;
    }
}

/// Where the probe runs.
enum On {
    Source(Database),
    Other(Lazy),
}

impl On {
    async fn get(&self) -> Result<Database, String> {
        match self {
            On::Source(db) => Ok(db.clone()),
            On::Other(lazy) => lazy.get().await,
        }
    }

    async fn forget(&self) {
        if let On::Other(lazy) = self {
            lazy.forget().await;
        }
    }
}

/// The health signals a spec configures.
pub struct Signals {
    probe: Option<(On, String, f64)>,
    lag: Option<(On, bool, Duration)>,
    /// Whether the lag is watched by default (a gentle run on PostgreSQL
    /// with no `max_replica_lag`): a source with no replicas then has no
    /// lag, rather than a lag that cannot be measured.
    lag_by_default: bool,
    /// The gentle limiter's point read: the source database, the target
    /// table and its key.
    point: Option<(Database, crate::source::TableRef, String)>,
    /// The built-in health indicators (`[throttle.health]`).
    health: Option<Health>,
}

impl Signals {
    /// The spec's signals over `source`. Fails on a signal that can never
    /// be measured (replica lag of a SQLite source), or a bad url.
    pub fn of(spec: &Spec, source: &Database) -> Result<Signals, SpecError> {
        let t = &spec.file.throttle;
        let dir = spec
            .path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let url = |at: &str, text: &str| {
            DbUrl::parse(text, &dir).map_err(|e| spec.error_at(&["throttle", at], e.to_string()))
        };
        let probe = match (&t.probe, t.probe_max) {
            (Some(sql), Some(max)) => {
                // A query pasted from a console often ends with `;`, which
                // cannot stand inside the scalar subquery it runs as.
                let sql = sql.trim().trim_end_matches(';').trim_end().to_string();
                let on = match &t.probe_url {
                    Some(u) => On::Other(Lazy::new(url("probe_url", u)?)),
                    None => On::Source(source.clone()),
                };
                Some((on, sql, max))
            }
            _ => None,
        };
        let lag = match t.max_replica_lag {
            None => None,
            Some(max) => {
                let (on, replica) = match &t.replica_url {
                    Some(u) => {
                        let u = url("replica_url", u)?;
                        if crate::backend::capabilities(u.backend()).lag == Lag::None {
                            return Err(spec.error_at(
                                &["throttle", "replica_url"],
                                format!(
                                    "replica lag is measured on {} replicas only",
                                    crate::backend::having(|c| c.lag != Lag::None)
                                ),
                            ));
                        }
                        (On::Other(Lazy::new(u)), true)
                    }
                    None => (On::Source(source.clone()), false),
                };
                let backend = source.backend();
                match source.capabilities().lag {
                    Lag::None if !replica => {
                        return Err(spec.error_at(
                            &["throttle", "max_replica_lag"],
                            format!("a {backend} source has no replicas; remove max_replica_lag"),
                        ));
                    }
                    // A MySQL primary does not report its replicas' lag:
                    // it is read on the replica.
                    Lag::OnReplica if !replica => {
                        return Err(spec.error_at(
                            &["throttle", "max_replica_lag"],
                            format!(
                                "on {backend}, replica lag is read on the replica: \
                                 set [throttle] replica_url to it"
                            ),
                        ));
                    }
                    _ => {}
                }
                Some((on, replica, max))
            }
        };
        let point = (t.mode == crate::spec::ThrottleMode::Gentle).then(|| {
            let table = crate::source::TableRef {
                schema: spec.target_schema().map(str::to_string),
                name: spec.target_table().to_string(),
            };
            (source.clone(), table, spec.target_key().to_string())
        });
        // gh-ost's default: a gentle run on PostgreSQL watches its
        // streaming replicas' lag unless the spec says otherwise.
        let lag_by_default = lag.is_none()
            && t.mode == crate::spec::ThrottleMode::Gentle
            && source.capabilities().lag_by_default;
        let lag = match lag_by_default {
            true => Some((On::Source(source.clone()), false, DEFAULT_MAX_LAG)),
            false => lag,
        };
        Ok(Signals {
            probe,
            lag,
            lag_by_default,
            point,
            health: Health::of(spec, source)?,
        })
    }

    /// Times the gentle limiter's point read, if the spec is gentle; a
    /// read that fails or takes longer than a measurement may counts as
    /// [`MEASURE_TIMEOUT`].
    pub async fn point_read(&self) -> Option<Duration> {
        let (db, table, key) = self.point.as_ref()?;
        let measured = tokio::time::timeout(MEASURE_TIMEOUT, db.point_read(table, key)).await;
        Some(match measured {
            Ok(Ok(latency)) => latency,
            Ok(Err(error)) => {
                tracing::debug!(error = %crate::db::describe(&error), "The point read failed.");
                MEASURE_TIMEOUT
            }
            Err(_) => MEASURE_TIMEOUT,
        })
    }

    /// Whether any signal is configured.
    pub fn any(&self) -> bool {
        self.probe.is_some() || self.lag.is_some() || self.health.is_some()
    }

    /// The built-in health indicators, if any is on.
    pub fn health(&self) -> Option<&Health> {
        self.health.as_ref()
    }

    /// Measures every signal; returns why the run must wait or stop, if it
    /// must: the signal (`replica-lag`, `probe`, or a health indicator such
    /// as `vacuum`) and the reason.
    pub async fn check(&self) -> Option<Finding> {
        let pause = |indicator: &'static str, reason: String| Finding {
            indicator,
            reason,
            critical: false,
        };
        // A critical indicator first: it stops the run whatever else holds
        // it back.
        let health = match &self.health {
            Some(h) => tokio::time::timeout(MEASURE_TIMEOUT, h.check())
                .await
                .unwrap_or_else(|_| {
                    Some(pause(
                        "health",
                        format!(
                            "cannot measure the health indicators: no answer within {} s",
                            MEASURE_TIMEOUT.as_secs()
                        ),
                    ))
                }),
            None => None,
        };
        if let Some(found) = health.as_ref().filter(|f| f.critical) {
            return Some(found.clone());
        }
        if let Some((on, max, replica)) = self.lag.as_ref().map(|(on, r, max)| (on, max, *r)) {
            let measured = within(async {
                let db = on.get().await?;
                let name = match on {
                    On::Other(lazy) => lazy.url.masked(),
                    On::Source(_) => "the source".to_string(),
                };
                let optional = self.lag_by_default;
                on_backend!(db.pools(), |B, pool| B::replica_lag(
                    pool, replica, optional, &name
                )
                .await)
            })
            .await;
            match measured {
                Ok(lag) if lag > *max => {
                    return Some(pause(
                        "replica-lag",
                        format!(
                            "replica lag {:.1} s is over max_replica_lag {}",
                            lag.as_secs_f64(),
                            humantime::format_duration(*max)
                        ),
                    ));
                }
                Ok(_) => {}
                Err(why) => {
                    on.forget().await;
                    return Some(pause(
                        "replica-lag",
                        format!("cannot measure replica lag: {why}"),
                    ));
                }
            }
        }
        if let Some((on, sql, max)) = &self.probe {
            let measured = within(async {
                let db = on.get().await?;
                db.number(sql)
                    .await
                    .map_err(|e| crate::db::describe(&e))?
                    .ok_or_else(|| "it returned NULL".to_string())
            })
            .await;
            match measured {
                Ok(v) if v > *max => {
                    return Some(pause(
                        "probe",
                        format!("probe returned {v}, over probe_max {max}"),
                    ));
                }
                Ok(_) => {}
                Err(why) => {
                    on.forget().await;
                    return Some(pause("probe", format!("cannot measure the probe: {why}")));
                }
            }
        }
        health
    }
}

/// Runs a measurement with [`MEASURE_TIMEOUT`].
async fn within<T>(
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(MEASURE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", MEASURE_TIMEOUT.as_secs())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(list: &[&str], zone: &str) -> Windows {
        Windows {
            spans: list.iter().filter_map(|w| parse_window(w)).collect(),
            zone: zone.parse().expect("zone"),
            text: list.join(", "),
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn windows_follow_their_time_zone_and_cross_midnight() {
        let night = windows(&["01:00-06:00"], "Europe/Paris");
        // 00:30 UTC in January is 01:30 in Paris.
        assert!(night.open_at(at("2026-01-10T00:30:00Z")));
        assert!(!night.open_at(at("2026-01-10T05:30:00Z")), "06:30 in Paris");
        let reason = night.closed(at("2026-01-10T12:00:00Z")).expect("closed");
        assert!(
            reason.contains("now 13:00") && reason.contains("next opens in 12h00m"),
            "{reason}"
        );
        let late = windows(&["22:00-02:00", "12:00-12:30"], "UTC");
        assert!(late.open_at(at("2026-01-10T23:59:00Z")));
        assert!(late.open_at(at("2026-01-10T01:59:00Z")));
        assert!(!late.open_at(at("2026-01-10T02:00:00Z")));
        assert!(late.open_at(at("2026-01-10T12:10:00Z")));
        assert!(late.closed(at("2026-01-10T12:10:00Z")).is_none());
    }
}
