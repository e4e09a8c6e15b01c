//! Steering a run from outside: consumes a recorded run and a request
//! (pause, resume, abort); records the request in the state store, waits a
//! little for the processes working on the run to carry it out, and
//! produces what they did ([`Steered`]) for `refill pause`, `resume` and
//! `abort` to print.

use std::time::{Duration, Instant};

use super::status::{Live, live};
pub use crate::state::ControlAction;
use crate::state::{RunRecord, RunStatus, SessionKind, StateError, StateStore};

/// Why a request cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The store could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A resume of an aborted run nobody works on: running it resumes it.
    #[error("run {run_id} was aborted; `refill run {spec_path} --execute` resumes it")]
    ResumeAborted {
        /// The run.
        run_id: String,
        /// Its spec.
        spec_path: String,
    },
    /// A pause or an abort of a run that is over, with nothing working on
    /// it.
    #[error(
        "run {run_id} is {status} and no retry or rollback is working on it: there is nothing to {verb}"
    )]
    Over {
        /// The run.
        run_id: String,
        /// Where it stands.
        status: RunStatus,
        /// What was asked.
        verb: &'static str,
    },
    /// The run ended between the look and the abort.
    #[error("run {0} ended meanwhile; nothing to abort")]
    EndedMeanwhile(String),
}

/// What a request did.
#[derive(Clone, Debug)]
pub struct Steered {
    /// What was asked (`None`: resume).
    pub action: Option<ControlAction>,
    /// The run, as recorded.
    pub run: RunRecord,
    /// Who asked (`user@host`).
    pub by: String,
    /// How many processes worked on the run when it was asked.
    pub working_before: usize,
    /// The run as it stood when the processes settled or the wait ran out.
    pub live: Live,
    /// For an abort: what goes on from here (`refill rollback RUN
    /// --execute` finishes the rollback, …).
    pub resume_hint: String,
    /// An abort of a run nobody worked on, recorded as aborted at once.
    pub aborted_idle: bool,
}

/// How long the processes get to carry a request out: they check every
/// half second; an abort waits for them to finish their chunks.
fn patience(action: Option<ControlAction>) -> Duration {
    match action {
        Some(ControlAction::Abort) => Duration::from_secs(30),
        _ => Duration::from_secs(5),
    }
}

/// Records `action` (`None`: resume) on `run` as asked `by`, then waits up
/// to a few seconds for the processes working on it to say they carried it
/// out.
pub async fn steer(
    store: &StateStore,
    run: RunRecord,
    action: Option<ControlAction>,
    by: &str,
) -> Result<Steered, ControlError> {
    let look = || async {
        let control = store.control(&run.run_id).await?;
        let sessions = store.sessions(&run.run_id).await?;
        Ok::<_, StateError>(live(&run, control, &sessions, &[]))
    };
    // A run that is over may still have a process on it: a retry of its
    // dead letters, or its rollback.
    let before = look().await?.sessions;
    let working_before = before.len();
    if action.is_none() && run.status == RunStatus::Aborted && working_before == 0 {
        return Err(ControlError::ResumeAborted {
            run_id: run.run_id,
            spec_path: run.spec_path,
        });
    }
    if action.is_some() && !run.status.resumable() && working_before == 0 {
        return Err(ControlError::Over {
            run_id: run.run_id,
            status: run.status,
            verb: action.map_or("resume", ControlAction::as_str),
        });
    }
    // What goes on after an abort: a rollback or a retry is run again; a
    // run planned for workers is planned again (which lets them go on), any
    // other run is run again.
    let doing = |kind| before.iter().any(|s| s.kind == kind);
    let resume_hint = if doing(SessionKind::Rollback) {
        format!(
            "`refill rollback {} --execute` finishes the rollback",
            run.run_id
        )
    } else if doing(SessionKind::Retry) {
        format!(
            "`refill retry {} --execute` goes on with the rows it did not resolve",
            run.run_id
        )
    } else if run.workers {
        "`refill run SPEC --execute --workers 0` (then workers) resumes it".to_string()
    } else {
        "the next `refill run` of its spec resumes it".to_string()
    };
    store.set_control(&run.run_id, action, by).await?;
    let mut aborted_idle = false;
    if action == Some(ControlAction::Abort) && working_before == 0 {
        let message = format!("aborted by {by}; {resume_hint}");
        if !store.abort_idle(&run.run_id, &message).await? {
            store.set_control(&run.run_id, None, by).await?;
            return Err(ControlError::EndedMeanwhile(run.run_id));
        }
        aborted_idle = true;
    }
    let started = Instant::now();
    let live = loop {
        let live = look().await?;
        let settled = match action {
            _ if live.sessions.is_empty() => true,
            Some(ControlAction::Pause) => live.state.paused(),
            Some(ControlAction::Abort) => false,
            None => !live.state.pausing_or_paused(),
        };
        if settled || started.elapsed() > patience(action) {
            break live;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(Steered {
        action,
        run,
        by: by.to_string(),
        working_before,
        live,
        resume_hint,
        aborted_idle,
    })
}
