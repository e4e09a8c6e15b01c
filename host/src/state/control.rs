//! Live control: consumes `refill pause`, `resume` and `abort` from any
//! terminal that reaches the state store, and the phase each working
//! process reports; produces the control a run's processes poll (a column
//! of the run's row) and the per-session phase and reason `refill status`
//! shows. Nothing here holds a transaction open.

use std::time::Duration;

use serde::Serialize;

use super::{StateError, StateStore, now, q};
use crate::backend::store_sql;
use crate::progress::Phase;

/// What a run's processes were asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlAction {
    /// Stop taking chunks and wait.
    Pause,
    /// Finish or abandon the chunks in hand, mark the run aborted, exit.
    Abort,
}

impl ControlAction {
    /// The name stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlAction::Pause => "pause",
            ControlAction::Abort => "abort",
        }
    }

    fn parse(s: &str) -> Option<ControlAction> {
        match s {
            "pause" => Some(ControlAction::Pause),
            "abort" => Some(ControlAction::Abort),
            _ => None,
        }
    }
}

/// A request standing on a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Control {
    /// What was asked.
    pub action: ControlAction,
    /// Who asked (`user@host`).
    pub by: String,
    /// When.
    pub at: String,
}

impl StateStore {
    /// Sets the request on a run, or clears it with `None`.
    pub async fn set_control(
        &self,
        run_id: &str,
        action: Option<ControlAction>,
        by: &str,
    ) -> Result<(), StateError> {
        let (action, by, at) = match action {
            Some(a) => (Some(a.as_str()), Some(by), Some(now())),
            None => (None, None, None),
        };
        sqlx::query(
            self.sql(store_sql!["UPDATE refill_runs SET control = " ? ", control_by = " ? ", control_at = " ? " WHERE run_id = " ?]),
        )
        .bind(action)
        .bind(by)
        .bind(at)
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(q("recording a control request"))?;
        Ok(())
    }

    /// The request standing on a run, if any.
    pub async fn control(&self, run_id: &str) -> Result<Option<Control>, StateError> {
        let row: Option<(Option<String>, Option<String>, Option<String>)> =
            sqlx::query_as(self.sql(store_sql![
                "SELECT control, control_by, control_at FROM refill_runs WHERE run_id = "?
            ]))
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading a run's control"))?;
        Ok(match row {
            Some((Some(action), by, at)) => ControlAction::parse(&action).map(|action| Control {
                action,
                by: by.unwrap_or_default(),
                at: at.unwrap_or_default(),
            }),
            _ => None,
        })
    }

    /// The gentle limiter's latency baseline of a run of distributed
    /// workers: the first one measured, before the run's first chunk.
    pub async fn latency_baseline(&self, run_id: &str) -> Result<Option<Duration>, StateError> {
        let us: Option<Option<i64>> = sqlx::query_scalar(self.sql(store_sql![
            "SELECT latency_baseline_us FROM refill_runs WHERE run_id = "?
        ]))
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("reading a run's latency baseline"))?;
        Ok(us
            .flatten()
            .map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))))
    }

    /// Offers `baseline` as the run's latency baseline; the first offer
    /// stands. Returns the baseline that stands.
    pub async fn offer_latency_baseline(
        &self,
        run_id: &str,
        baseline: Duration,
    ) -> Result<Duration, StateError> {
        sqlx::query(self.sql(
            store_sql!["UPDATE refill_runs SET latency_baseline_us = " ? "              WHERE run_id = " ? " AND latency_baseline_us IS NULL"],
        ))
        .bind(i64::try_from(baseline.as_micros()).unwrap_or(i64::MAX))
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(q("recording a run's latency baseline"))?;
        Ok(self.latency_baseline(run_id).await?.unwrap_or(baseline))
    }

    /// Marks a run that no process works on as aborted, if it is still
    /// resumable (a run that ended meanwhile keeps its status). Returns
    /// whether it did.
    pub async fn abort_idle(&self, run_id: &str, message: &str) -> Result<bool, StateError> {
        let done = sqlx::query(self.sql(
            store_sql!["UPDATE refill_runs SET status = 'aborted', message = " ? ", finished_at = " ? " \
             WHERE run_id = " ? " AND status IN ('running', 'incomplete', 'failed')"],
        ))
        .bind(message)
        .bind(now())
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(q("aborting a run"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Records what a session is doing about its pace, and why.
    pub async fn set_session_state(
        &self,
        session_id: &str,
        state: Phase,
        reason: Option<&str>,
    ) -> Result<(), StateError> {
        sqlx::query(
            self.sql(store_sql!["UPDATE refill_sessions SET state = " ? ", reason = " ? " WHERE session_id = " ?]),
        )
        .bind(state.as_str())
        .bind(reason)
        .bind(session_id)
        .execute(&self.pool)
        .await
        .map_err(q("recording a session's state"))?;
        Ok(())
    }
}
