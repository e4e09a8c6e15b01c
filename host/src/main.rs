//! The `refill` command line. Parsing and printing live in [`cli`]; the
//! work is the `refill` library's.

mod cli;

/// mimalloc, not glibc's malloc: with glibc, malloc and free were a
/// quarter of refill's CPU in a backfill (a chunk's rows are allocated by
/// the reader and freed by a worker, on other threads), and refill's CPU
/// is taken from the database it shares the machine with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // componentize-js runs this binary as its wizer (see `refill build`):
    // no runtime, no logging, just the snapshot.
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|a| a == refill::build::snapshot::ARG)
    {
        return refill::build::snapshot::main(args.collect());
    }
    restore_sigpipe();
    return_large_blocks();
    keep_freed_pages();
    let args = cli::args::parse();
    // `refill build` runs language toolchains, which would inherit it.
    if !matches!(args.command, cli::args::Command::Build { .. }) {
        no_huge_pages();
    }
    cli::run(args)
}

/// Makes every allocation of 1 MiB or more that still goes to glibc (C
/// code's: the bundled SQLite's) its own mapping, returned to the system
/// when freed. glibc otherwise raises that threshold to the largest block
/// freed so far (up to 32 MiB), after which multi-megabyte blocks come
/// from per-thread arenas that keep their memory: the peak then grows with
/// the threads, not with `[chunk] max_bytes`.
///
/// The smaller blocks stay where they are: an arena gives the free memory
/// at its top back to the system only past `KEEP_FREE_TOP`, not past
/// glibc's 128 KiB. Each chunk's before-images go through SQLite's
/// allocations of a few hundred KiB, and with the default every chunk
/// handed about 1 MiB back and faulted it in again (zeroed) on the next:
/// over the bench's 1,000,000-row backfill, 1.2 GB in 153 `madvise` calls.
fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing in `main`, before any other thread exists
    // or any allocation depends on the settings; both take a size in bytes.
    #[expect(unsafe_code, reason = "mallopt has no safe std API")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE_TOP);
    }
}

/// How much free memory a glibc arena keeps at its top (see
/// [`return_large_blocks`]): a few of SQLite's largest blocks, per thread
/// that allocates through glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEEP_FREE_TOP: std::ffi::c_int = 8 << 20;

/// mimalloc's `mi_option_purge_delay`: its place in mimalloc 3's
/// `mi_option_e`, and its default there.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// Keeps the pages mimalloc frees instead of returning them to the system
/// a second later. A backfill frees each chunk's rows as the next ones are
/// allocated: returned, every page was faulted in and zeroed again (with
/// transparent huge pages, 2 MiB at a time). Over the bench's 1,000,000-row
/// backfill this cuts the page faults from 36,000 to 23,000 and refill's
/// CPU by 8%; the process keeps what it used at its peak, which
/// `[chunk] max_bytes` and the concurrency bound.
///
/// Only where the option still holds mimalloc 3's default: a
/// `MIMALLOC_PURGE_DELAY` of the user's wins, and another mimalloc, whose
/// options are numbered otherwise, is left alone.
fn keep_freed_pages() {
    // SAFETY: mi_option_get and mi_option_set read and store a value in
    // mimalloc's option table, called first thing in `main`, before any
    // other thread exists; -1 means "never purge".
    #[expect(unsafe_code, reason = "mimalloc's options have no safe API")]
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == MI_DEFAULT_PURGE_DELAY_MS {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
    }
}

/// Turns transparent huge pages off for this process, unless the user set
/// `MIMALLOC_ALLOW_THP` (mimalloc reads it: with `0` it makes this same
/// call itself, and by default it asks for huge pages for its arenas).
/// With them, the first write to each 2 MiB of the heap had the kernel
/// zero all of it: on this VM, a sixth of refill's samples over the
/// bench's 1,000,000-row backfill (`clear_page_erms`, under
/// `mi_page_free_list_extend`), and about half a second of system time
/// (docs/performance.md, "Huge pages off"). The setting is the process's:
/// it also covers the guest's memories, which a machine set to `always`
/// would otherwise serve with huge pages (this one is set to `madvise`,
/// and wasmtime asks for none). Not for `refill build`, whose toolchains
/// would inherit it.
fn no_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments and no
        // pointer; it only changes how this process's future page faults
        // are served.
        #[expect(unsafe_code, reason = "prctl has no safe std API")]
        unsafe {
            let (on, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
            // A kernel before 3.15 refuses it; refill then works as
            // before (logging is not set up yet to say so).
            libc::prctl(libc::PR_SET_THP_DISABLE, on, unused, unused, unused);
        }
    }
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
