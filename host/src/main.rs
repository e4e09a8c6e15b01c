//! The `refill` command line. Parsing and printing live in [`cli`]; the
//! work is the `refill` library's.

mod cli;

fn main() -> std::process::ExitCode {
    restore_sigpipe();
    cli::run(cli::args::parse())
}

/// Lets `refill status | head` end quietly: Rust ignores SIGPIPE, which
/// turns a closed pipe into a panic on the next `println!`.
fn restore_sigpipe() {
    // SAFETY: called first thing in `main`, before any other thread exists;
    // SIG_DFL is a valid disposition for SIGPIPE.
    #[expect(
        unsafe_code,
        reason = "resetting a signal disposition has no safe std API"
    )]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
