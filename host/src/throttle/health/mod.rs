//! Built-in health indicators: consumes the spec's `[throttle.health]`, its
//! mode and the source database; produces, on each check, the indicator
//! that holds the run back, if one does. Over a `max_*` threshold the run
//! pauses; over a `critical_*` one, on two checks in a row, it stops
//! cleanly (exit 4) and the next `refill run` resumes it. An indicator that
//! cannot be measured pauses the run: it fails closed.
//!
//! Which indicators a database has is in its
//! [`Capabilities`](crate::backend::Capabilities), and its backend measures
//! them: PostgreSQL has VACUUM on the target table, WAL per second, the
//! archiver, WAL held back by replication slots, active backends;
//! MySQL/MariaDB `Threads_running` and the InnoDB history list length.
//! SQLite has none.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::backend::{Backend, Indicators, on_backend};
use crate::source::{Database, TableRef};
use crate::spec::{HealthSpec, Spec, SpecError, ThrottleMode};

/// The span the WAL rate is averaged over.
const WAL_WINDOW: Duration = Duration::from_secs(5);
/// How many checks in a row a critical threshold must be exceeded on
/// before the run stops: one spike does not stop a run.
const CRITICAL_CHECKS: u32 = 2;

/// A pause threshold and a stop threshold; either may be off.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limit {
    /// Over this the run pauses.
    pub max: Option<f64>,
    /// Over this the run stops.
    pub critical: Option<f64>,
}

impl Limit {
    fn any(&self) -> bool {
        self.max.is_some() || self.critical.is_some()
    }

    /// How `value` stands against the limit, as a finding of `indicator`
    /// described by `what` (such as "42 active backends").
    pub(crate) fn judge(
        &self,
        indicator: &'static str,
        value: f64,
        what: &str,
        key: &str,
    ) -> Option<Finding> {
        if let Some(c) = self.critical
            && value > c
        {
            return Some(Finding {
                indicator,
                reason: format!("{what}, over critical_{key} {}", number(c)),
                critical: true,
            });
        }
        match self.max {
            Some(m) if value > m => Some(Finding {
                indicator,
                reason: format!("{what}, over max_{key} {}", number(m)),
                critical: false,
            }),
            _ => None,
        }
    }
}

/// A threshold as the spec spells it.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The indicators a run watches, with their thresholds: the spec's, or the
/// defaults of a gentle run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Thresholds {
    /// PostgreSQL: pause while a VACUUM works on the target table.
    pub vacuum: bool,
    /// PostgreSQL: WAL MB per second.
    pub wal_rate: Limit,
    /// PostgreSQL: pause while the archiver fails.
    pub archiver: bool,
    /// PostgreSQL: WAL segments waiting for the archiver (pause only).
    pub archive_pending: Option<u64>,
    /// PostgreSQL: MB of WAL the slot that holds back most keeps.
    pub slot_retained_wal: Limit,
    /// PostgreSQL: client backends running a statement.
    pub active_backends: Limit,
    /// MySQL/MariaDB: `Threads_running`.
    pub threads_running: Limit,
    /// MySQL/MariaDB: the InnoDB history list length.
    pub history_length: Limit,
    /// The indicators the spec set itself (see [`Thresholds::strict`]).
    pub strict: Vec<&'static str>,
}

/// The defaults of a gentle run: pt-osc's `--max-load Threads_running=25`
/// and `--critical-load Threads_running=50` (for PostgreSQL's active
/// backends too), and limits on WAL that leave a replica, an archive and a
/// slot's disk room.
pub const DEFAULT_MAX_WAL_RATE_MB: f64 = 64.0;
/// See [`DEFAULT_MAX_WAL_RATE_MB`].
pub const DEFAULT_MAX_ARCHIVE_PENDING: u64 = 32;
/// See [`DEFAULT_MAX_WAL_RATE_MB`].
pub const DEFAULT_MAX_SLOT_RETAINED_WAL_MB: f64 = 2048.0;
/// See [`DEFAULT_MAX_WAL_RATE_MB`].
pub const DEFAULT_MAX_RUNNING: f64 = 25.0;
/// See [`DEFAULT_MAX_WAL_RATE_MB`].
pub const DEFAULT_CRITICAL_RUNNING: f64 = 50.0;
/// See [`DEFAULT_MAX_WAL_RATE_MB`].
pub const DEFAULT_MAX_HISTORY_LENGTH: f64 = 1_000_000.0;

impl Thresholds {
    /// The thresholds of `spec` on a `backend` source: a key left out
    /// takes its default in gentle mode and is off in unlimited mode; 0 or
    /// `false` turns it off.
    // Longer than 100 lines: the table of keys and the indicator each belongs to.
    pub fn of(health: &HealthSpec, mode: ThrottleMode, backend: Backend) -> Thresholds {
        if health.enabled == Some(false) {
            return Thresholds::default();
        }
        let gentle = mode == ThrottleMode::Gentle;
        let has: Indicators = crate::backend::capabilities(backend).indicators;
        #[expect(
            clippy::cast_precision_loss,
            reason = "counts far below 2^52, compared as numbers"
        )]
        let count = |v: Option<u64>| v.map(|v| v as f64);
        // A threshold pair. A key the spec sets wins (0: off); a key left
        // out takes its default in a gentle run, unless that would contradict
        // the other key the spec set: a default critical at or under an
        // explicit max, a default max at or over an explicit critical, or a
        // default critical for an indicator whose max was turned off.
        let pair = |on: bool,
                    max: Option<f64>,
                    critical: Option<f64>,
                    default_max: Option<f64>,
                    default_critical: Option<f64>|
         -> Limit {
            if !on {
                return Limit::default();
            }
            let pick = |set: Option<f64>, default: Option<f64>| match set {
                Some(v) => (v > 0.0).then_some(v),
                None if gentle => default,
                None => None,
            };
            let (mut m, mut c) = (pick(max, default_max), pick(critical, default_critical));
            if let (None, Some(mv), Some(cv)) = (critical, m, c)
                && cv <= mv
            {
                c = None;
            }
            if critical.is_none() && max == Some(0.0) {
                c = None;
            }
            if let (None, Some(mv), Some(cv)) = (max, m, c)
                && mv >= cv
            {
                m = None;
            }
            Limit {
                max: m,
                critical: c,
            }
        };
        let flag = |on: bool, set: Option<bool>| on && set.unwrap_or(gentle);
        let archiver = flag(has.wal, health.archiver);
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive whole count of segments"
        )]
        let archive_pending = pair(
            has.wal && health.archiver != Some(false),
            count(health.max_archive_pending),
            None,
            count(Some(DEFAULT_MAX_ARCHIVE_PENDING)),
            None,
        )
        .max
        .map(|v| v as u64);
        let mut strict = Vec::new();
        if health.vacuum.is_some() {
            strict.push("vacuum");
        }
        if health.max_active_backends.is_some() || health.critical_active_backends.is_some() {
            strict.push("active-backends");
        }
        if health.max_archive_pending.is_some() {
            strict.push("archiver");
        }
        if health.max_history_length.is_some() || health.critical_history_length.is_some() {
            strict.push("history-length");
        }
        Thresholds {
            vacuum: flag(has.vacuum, health.vacuum),
            wal_rate: pair(
                has.wal,
                health.max_wal_rate,
                health.critical_wal_rate,
                Some(DEFAULT_MAX_WAL_RATE_MB),
                None,
            ),
            archiver: archiver || archive_pending.is_some(),
            archive_pending,
            slot_retained_wal: pair(
                has.wal,
                health.max_slot_retained_wal,
                health.critical_slot_retained_wal,
                Some(DEFAULT_MAX_SLOT_RETAINED_WAL_MB),
                None,
            ),
            active_backends: pair(
                has.active_backends,
                count(health.max_active_backends),
                count(health.critical_active_backends),
                Some(DEFAULT_MAX_RUNNING),
                Some(DEFAULT_CRITICAL_RUNNING),
            ),
            threads_running: pair(
                has.threads_running,
                count(health.max_threads_running),
                count(health.critical_threads_running),
                Some(DEFAULT_MAX_RUNNING),
                Some(DEFAULT_CRITICAL_RUNNING),
            ),
            history_length: pair(
                has.history_length,
                count(health.max_history_length),
                count(health.critical_history_length),
                Some(DEFAULT_MAX_HISTORY_LENGTH),
                None,
            ),
            strict,
        }
    }

    /// Whether the spec set `indicator` itself: one it cannot see then
    /// fails closed and `plan` refuses it. An indicator on by default
    /// judges what the role can see, and `plan` warns.
    pub fn strict(&self, indicator: &str) -> bool {
        self.strict.contains(&indicator)
    }

    /// Whether any indicator is on.
    pub fn any(&self) -> bool {
        self.vacuum
            || self.wal_rate.any()
            || self.archiver
            || self.slot_retained_wal.any()
            || self.active_backends.any()
            || self.threads_running.any()
            || self.history_length.any()
    }

    /// The indicators on, one line each, for `refill plan`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let limit = |what: &str, l: &Limit, unit: &str| {
            let mut parts = Vec::new();
            if let Some(m) = l.max {
                parts.push(format!("pause over {}{unit}", number(m)));
            }
            if let Some(c) = l.critical {
                parts.push(format!("stop over {}{unit}", number(c)));
            }
            (!parts.is_empty()).then(|| format!("{what}: {}", parts.join(", ")))
        };
        if self.vacuum {
            lines.push("VACUUM on the target table: pause while one runs".to_string());
        }
        lines.extend(limit("WAL generated", &self.wal_rate, " MB/s"));
        if self.archiver {
            let pending = self
                .archive_pending
                .map(|n| format!(" or more than {n} WAL segments wait for it"))
                .unwrap_or_default();
            lines.push(format!(
                "WAL archiver (with archive_mode on): pause while it fails{pending}"
            ));
        }
        lines.extend(limit(
            "WAL held back by a replication slot",
            &self.slot_retained_wal,
            " MB",
        ));
        lines.extend(limit(
            "active backends (other sessions running a statement)",
            &self.active_backends,
            "",
        ));
        lines.extend(limit("Threads_running", &self.threads_running, ""));
        lines.extend(limit(
            "InnoDB history list length",
            &self.history_length,
            "",
        ));
        lines
    }
}

/// What an indicator found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The indicator, as the progress line, status and metrics name it
    /// (`vacuum`, `wal-rate`, `archiver`, `replication-slot`,
    /// `active-backends`, `threads-running`, `history-length`).
    pub indicator: &'static str,
    /// Why, with the value and the threshold.
    pub reason: String,
    /// Whether a critical threshold is exceeded (the run stops).
    pub critical: bool,
}

/// The reason of the WAL rate before a second of it is measured.
pub(crate) const WARMING_UP: &str = "measuring the rate WAL is generated at, over a second";

impl Finding {
    /// Whether this is only a rate waiting for its second measurement.
    pub fn warming_up(&self) -> bool {
        self.reason == WARMING_UP
    }

    /// An indicator that cannot be measured: the run pauses.
    pub(crate) fn unmeasured(indicator: &'static str, why: impl std::fmt::Display) -> Finding {
        Finding {
            indicator,
            reason: format!("cannot measure {indicator}: {why}"),
            critical: false,
        }
    }
}

/// Something an indicator on needs that the role cannot see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blind {
    /// The `[throttle.health]` key that turns it off.
    pub key: &'static str,
    /// What cannot be seen, and what to do.
    pub why: String,
    /// Whether the spec set the indicator itself (then it would fail
    /// closed for good, and `plan` refuses it); an indicator on by default
    /// judges what the role sees, and `plan` warns.
    pub strict: bool,
}

/// The indicators of one run, measured on its source.
pub struct Health {
    pub(crate) db: Database,
    pub(crate) table: TableRef,
    pub(crate) thresholds: Thresholds,
    /// Recent WAL positions, for the rate.
    wal: std::sync::Mutex<VecDeque<(Instant, f64)>>,
    /// The indicator over its critical threshold on the last checks, and
    /// on how many in a row.
    critical_checks: std::sync::Mutex<(Option<&'static str>, u32)>,
}

impl Health {
    /// The indicators `spec` asks for on `source`, or `None` when none is
    /// on. Fails on a key that does not fit the source's database.
    pub fn of(spec: &Spec, source: &Database) -> Result<Option<Health>, SpecError> {
        let t = &spec.file.throttle;
        let h = &t.health;
        let backend = source.backend();
        // Each key with the indicator it belongs to.
        type Has = fn(&Indicators) -> bool;
        let keys: [(&str, bool, Has); 13] = [
            ("vacuum", h.vacuum.is_some(), |i| i.vacuum),
            ("max_wal_rate", h.max_wal_rate.is_some(), |i| i.wal),
            ("critical_wal_rate", h.critical_wal_rate.is_some(), |i| {
                i.wal
            }),
            ("archiver", h.archiver.is_some(), |i| i.wal),
            (
                "max_archive_pending",
                h.max_archive_pending.is_some(),
                |i| i.wal,
            ),
            (
                "max_slot_retained_wal",
                h.max_slot_retained_wal.is_some(),
                |i| i.wal,
            ),
            (
                "critical_slot_retained_wal",
                h.critical_slot_retained_wal.is_some(),
                |i| i.wal,
            ),
            (
                "max_active_backends",
                h.max_active_backends.is_some(),
                |i| i.active_backends,
            ),
            (
                "critical_active_backends",
                h.critical_active_backends.is_some(),
                |i| i.active_backends,
            ),
            (
                "max_threads_running",
                h.max_threads_running.is_some(),
                |i| i.threads_running,
            ),
            (
                "critical_threads_running",
                h.critical_threads_running.is_some(),
                |i| i.threads_running,
            ),
            ("max_history_length", h.max_history_length.is_some(), |i| {
                i.history_length
            }),
            (
                "critical_history_length",
                h.critical_history_length.is_some(),
                |i| i.history_length,
            ),
        ];
        let indicators = &source.capabilities().indicators;
        if let Some((key, _, has)) = keys.iter().find(|(_, set, has)| *set && !has(indicators)) {
            let on = crate::backend::having(|c| has(&c.indicators));
            return Err(spec.error_at(
                &["throttle", "health", key],
                format!("{key} is measured on {on} only, and the source is {backend}"),
            ));
        }
        let thresholds = Thresholds::of(h, t.mode, backend);
        if !thresholds.any() {
            return Ok(None);
        }
        Ok(Some(Health {
            db: source.clone(),
            table: TableRef {
                schema: spec.target_schema().map(str::to_string),
                name: spec.target_table().to_string(),
            },
            thresholds,
            wal: std::sync::Mutex::new(VecDeque::new()),
            critical_checks: std::sync::Mutex::new((None, 0)),
        }))
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// Measures every indicator once; returns the one that holds the run
    /// back: a critical one if any, else the first over its threshold or
    /// that cannot be measured. A critical finding on the first of
    /// [`CRITICAL_CHECKS`] checks in a row pauses the run; after them it
    /// stops it.
    pub async fn check(&self) -> Option<Finding> {
        let findings = on_backend!(self.db.pools(), |B, pool| B::health(pool, self).await);
        let critical = findings.iter().find(|f| f.critical).cloned();
        let mut checks = self
            .critical_checks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match critical {
            Some(mut finding) => {
                // In a row for the same indicator.
                *checks = match *checks {
                    (Some(last), n) if last == finding.indicator => (Some(last), n + 1),
                    _ => (Some(finding.indicator), 1),
                };
                if checks.1 < CRITICAL_CHECKS {
                    finding.critical = false;
                }
                Some(finding)
            }
            None => {
                *checks = (None, 0);
                findings.into_iter().next()
            }
        }
    }

    /// What the role running refill cannot see that an indicator on needs:
    /// one per problem, naming the key that turns it off.
    pub async fn blind_spots(&self) -> Result<Vec<Blind>, String> {
        on_backend!(self.db.pools(), |B, pool| B::blind_spots(pool, self).await)
    }

    /// Records the WAL position `lsn` (bytes) seen now; returns the rate in
    /// MB per second over the last [`WAL_WINDOW`], once a second of it is
    /// known.
    pub(crate) fn wal_rate(&self, lsn: f64) -> Option<f64> {
        let now = Instant::now();
        let mut seen = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        seen.push_back((now, lsn));
        while seen
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WAL_WINDOW)
            && seen.len() > 2
        {
            seen.pop_front();
        }
        let (first_at, first) = *seen.front()?;
        let span = now.duration_since(first_at).as_secs_f64();
        (span >= 1.0).then(|| (lsn - first).max(0.0) / span / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_to_gentle_runs_and_explicit_keys_to_every_run() {
        let none = HealthSpec::default();
        let gentle = Thresholds::of(&none, ThrottleMode::Gentle, Backend::Postgres);
        assert!(gentle.vacuum && gentle.archiver);
        assert_eq!(gentle.active_backends.max, Some(25.0));
        assert_eq!(gentle.active_backends.critical, Some(50.0));
        assert_eq!(
            gentle.threads_running,
            Limit::default(),
            "PostgreSQL has no Threads_running"
        );
        let unlimited = Thresholds::of(&none, ThrottleMode::Unlimited, Backend::Postgres);
        assert!(!unlimited.any(), "{unlimited:?}");
        let set = HealthSpec {
            max_threads_running: Some(8),
            critical_history_length: Some(0),
            ..HealthSpec::default()
        };
        let mysql = Thresholds::of(&set, ThrottleMode::Unlimited, Backend::Mysql);
        assert_eq!(mysql.threads_running.max, Some(8.0));
        assert_eq!(mysql.threads_running.critical, None);
        assert!(!mysql.vacuum);
        let off = HealthSpec {
            enabled: Some(false),
            max_threads_running: Some(8),
            ..HealthSpec::default()
        };
        assert!(!Thresholds::of(&off, ThrottleMode::Gentle, Backend::Mysql).any());
        assert!(!Thresholds::of(&none, ThrottleMode::Gentle, Backend::Sqlite).any());
    }

    #[test]
    fn a_default_never_contradicts_a_key_the_spec_set() {
        let of = |h: HealthSpec| Thresholds::of(&h, ThrottleMode::Gentle, Backend::Postgres);
        // Pausing at 60 drops the default stop at 50.
        let raised = of(HealthSpec {
            max_active_backends: Some(60),
            ..HealthSpec::default()
        });
        assert_eq!(
            raised.active_backends,
            Limit {
                max: Some(60.0),
                critical: None
            }
        );
        // Stopping at 10 drops the default pause at 25.
        let lowered = of(HealthSpec {
            critical_active_backends: Some(10),
            ..HealthSpec::default()
        });
        assert_eq!(
            lowered.active_backends,
            Limit {
                max: None,
                critical: Some(10.0)
            }
        );
        // Off is off.
        let off = of(HealthSpec {
            max_active_backends: Some(0),
            ..HealthSpec::default()
        });
        assert_eq!(off.active_backends, Limit::default());
        assert!(!off.strict("vacuum") && off.strict("active-backends"));
        // An archive limit set in an unlimited run turns the archiver on.
        let pending = Thresholds::of(
            &HealthSpec {
                max_archive_pending: Some(4),
                ..HealthSpec::default()
            },
            ThrottleMode::Unlimited,
            Backend::Postgres,
        );
        assert!(pending.archiver && pending.archive_pending == Some(4));
    }

    #[test]
    fn a_limit_pauses_over_max_and_stops_over_critical() {
        let l = Limit {
            max: Some(25.0),
            critical: Some(50.0),
        };
        assert_eq!(
            l.judge("active-backends", 25.0, "25 active", "active_backends"),
            None
        );
        let pause = l
            .judge(
                "active-backends",
                26.0,
                "26 active backends",
                "active_backends",
            )
            .expect("over max");
        assert!(!pause.critical);
        assert_eq!(
            pause.reason,
            "26 active backends, over max_active_backends 25"
        );
        let stop = l
            .judge(
                "active-backends",
                51.0,
                "51 active backends",
                "active_backends",
            )
            .expect("over critical");
        assert!(stop.critical);
        assert_eq!(
            stop.reason,
            "51 active backends, over critical_active_backends 50"
        );
    }
}
