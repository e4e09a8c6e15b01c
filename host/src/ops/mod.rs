//! The commands that work on a run: consumes a spec or a recorded run and
//! the state store; produces what each command did, as a report type the
//! command line prints. [`run`] runs a backfill (and, in [`run::worker`],
//! works on one as a distributed worker); [`retry`] runs its dead letters
//! again; [`verify`] recomputes and compares; [`rollback`] puts back what it
//! overwrote; [`report`] tells what happened; [`status`] tells what it is
//! doing now; [`control`] pauses, resumes and aborts it from outside.
//! [`preview`] is `refill plan`, [`tryout`] is `refill try`, [`inspect`]
//! is `refill inspect`, and [`locate`] finds the run a command names.
//!
//! The command line reaches the library through these modules and the
//! types they return (or re-export), and nothing else.

pub mod control;
pub mod inspect;
pub mod locate;
pub mod preview;
pub mod report;
pub mod retry;
pub mod rollback;
pub mod run;
pub mod status;
pub mod tryout;
pub mod verify;
