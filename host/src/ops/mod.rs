//! The commands that work on a run: consumes a spec or a recorded run and
//! the state store; produces what each command did, as a report type the
//! command line prints. [`run`] runs a backfill (and, in [`run::worker`],
//! works on one as a distributed worker); [`retry`] runs its dead letters
//! again; [`verify`] recomputes and compares; [`rollback`] puts back what it
//! overwrote; [`report`] tells what happened; [`status`] tells what it is
//! doing now; [`control`] pauses, resumes and aborts it from outside.

pub mod control;
pub mod report;
pub mod retry;
pub mod rollback;
pub mod run;
pub mod status;
pub mod verify;
