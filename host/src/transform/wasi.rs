//! The WASI 0.2 that a guest may import, granting nothing. Consumes a
//! [`GuestEnv`] (the instant the guest's clock reads and the seed of its
//! random numbers) and produces a [`WasiCtx`] with no preopened directory,
//! no environment, no arguments, stdin closed, every socket operation
//! denied, stdout and stderr captured into [`CappedPipe`]s, and clocks and
//! random numbers that depend only on the [`GuestEnv`]. Also holds the
//! import policy: which interfaces a component may import at all.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

/// Bytes of stdout, and again of stderr, kept per batch; the rest is
/// counted and dropped, so a guest that prints without end costs fuel and
/// time, never host memory.
pub const OUTPUT_CAP: usize = 64 << 10;

/// What a guest's clocks and random numbers are derived from. Two
/// instances with the same environment, given the same calls, see the same
/// time and the same random numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestEnv {
    /// What the wall clock reads, since 1970-01-01T00:00:00Z.
    pub now: Duration,
    /// The seed of every random number generator the guest can reach.
    pub seed: [u8; 32],
}

impl GuestEnv {
    /// The environment of a backfill: the clock reads `now`, and the seed
    /// is derived from `identity` (such as the spec's name and the
    /// component's digest) and `now`.
    pub fn new(now: Duration, identity: &[&str]) -> GuestEnv {
        let mut h = Sha256::new();
        h.update(b"refill guest seed v1\0");
        for part in identity {
            h.update(part.as_bytes());
            h.update(b"\0");
        }
        h.update(now.as_nanos().to_le_bytes());
        GuestEnv {
            now,
            seed: h.finalize().into(),
        }
    }

    /// The environment of a backfill whose clock reads `at`.
    pub fn at(at: chrono::DateTime<chrono::Utc>, identity: &[&str]) -> GuestEnv {
        let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
        GuestEnv::new(Duration::from_millis(millis), identity)
    }

    /// The environment for work that belongs to no run (`refill plan`,
    /// `refill try` without `--clock`): the clock reads the current time.
    pub fn current(identity: &[&str]) -> GuestEnv {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // Whole milliseconds, as the state store records a run's start.
        GuestEnv::new(Duration::from_millis(now.as_millis() as u64), identity)
    }

    fn rng(&self, stream: u8) -> StdRng {
        let mut seed = self.seed;
        seed[0] ^= stream;
        StdRng::from_seed(seed)
    }
}

/// A wall clock that always reads the same instant.
struct FixedWallClock(Duration);

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

/// A monotonic clock that advances one microsecond per reading, and by
/// the whole wait when the guest sleeps (see [`sleep`]), so that it depends
/// only on the calls made and a guest that waits for it to move does not
/// wait forever. Clones share the reading.
#[derive(Clone, Debug, Default)]
pub struct SteppingClock(Arc<AtomicU64>);

impl HostMonotonicClock for SteppingClock {
    fn resolution(&self) -> u64 {
        1_000
    }
    fn now(&self) -> u64 {
        self.0.fetch_add(1_000, Ordering::Relaxed)
    }
}

/// A pollable that is ready at once.
struct Ready;

#[wasmtime_wasi::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

/// Replaces wasmtime-wasi's `subscribe-duration` and `subscribe-instant`
/// of `wasi:clocks/monotonic-clock`, which wait in real time inside a host
/// call, where no deadline can interrupt them (a guest sleeping for a year
/// would hold its worker for a year) and from where a guest could measure
/// real time. Here a sleep is over at once and moves the guest's
/// [`SteppingClock`] forward by the time it asked to sleep.
pub fn link_sleep<T: 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    parts: fn(&mut T) -> (&mut wasmtime::component::ResourceTable, &SteppingClock),
) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;
    fn ready(
        table: &mut wasmtime::component::ResourceTable,
    ) -> wasmtime::Result<(Resource<DynPollable>,)> {
        let ready = table.push(Ready)?;
        Ok((wasmtime_wasi::p2::subscribe(table, ready)?,))
    }
    linker.allow_shadowing(true);
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap("subscribe-duration", move |mut store, (nanos,): (u64,)| {
        let (table, clock) = parts(store.data_mut());
        clock.0.fetch_add(nanos, Ordering::Relaxed);
        ready(table)
    })?;
    clock.func_wrap("subscribe-instant", move |mut store, (when,): (u64,)| {
        let (table, clock) = parts(store.data_mut());
        clock.0.fetch_max(when, Ordering::Relaxed);
        ready(table)
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// What a guest wrote to one stream during the current batch.
#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: u64,
}

/// A guest's stdout or stderr: keeps the first [`OUTPUT_CAP`] bytes of a
/// batch and counts the rest. Never refuses a write, so the guest does not
/// see an error it would report instead of doing its work.
#[derive(Clone, Debug, Default)]
pub struct CappedPipe(Arc<Mutex<Captured>>);

impl CappedPipe {
    fn keep(&self, bytes: &[u8]) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = OUTPUT_CAP.saturating_sub(c.kept.len());
        let kept = bytes.len().min(room);
        c.kept.extend_from_slice(&bytes[..kept]);
        c.dropped += (bytes.len() - kept) as u64;
    }

    /// What was written since the last call: the kept bytes as text, and
    /// how many bytes were dropped.
    pub fn take(&self) -> (String, u64) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(&c.kept).into_owned();
        c.kept = Vec::new();
        (text, std::mem::take(&mut c.dropped))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.keep(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(OUTPUT_CAP)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.keep(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A WASI context that grants nothing, with clocks and random numbers from
/// `env` and stdout/stderr going to the given pipes.
pub fn context(
    env: &GuestEnv,
    stdout: &CappedPipe,
    stderr: &CappedPipe,
    clock: &SteppingClock,
) -> WasiCtx {
    let mut b = WasiCtxBuilder::new();
    // The builder starts with no preopens, environment or arguments, and
    // stdin closed; say the rest explicitly rather than rely on defaults.
    b.stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .wall_clock(FixedWallClock(env.now))
        .monotonic_clock(clock.clone())
        .secure_random(env.rng(1))
        .insecure_random(env.rng(2))
        .insecure_random_seed(u128::from_le_bytes(
            env.seed[..16].try_into().unwrap_or_default(),
        ));
    b.build()
}

/// What an import gives a component, for `refill inspect` and the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capability {
    /// The refill host interface: logging and lookup tables.
    Refill,
    /// WASI linked inertly: streams, fixed clocks, seeded random numbers,
    /// captured stdout/stderr, empty environment.
    Runtime,
    /// WASI filesystem, linked with no preopened directory: every open
    /// fails.
    Filesystem,
    /// WASI sockets, linked with every operation denied.
    Network,
    /// Anything else: refused.
    Refused,
}

impl Capability {
    /// How `refill inspect` names the group.
    pub fn label(self) -> &'static str {
        match self {
            Capability::Refill => "refill host (log, lookup)",
            Capability::Runtime => "WASI runtime (clocks fixed, random seeded, stdio captured)",
            Capability::Filesystem => "WASI filesystem (linked, no directory granted)",
            Capability::Network => "WASI sockets (linked, every operation denied)",
            Capability::Refused => "NOT ALLOWED",
        }
    }
}

/// The WASI 0.2 interfaces the host links, by capability. Any 0.2.x patch
/// version is accepted: wasmtime links them by semver compatibility.
const WASI: &[(&str, Capability)] = &[
    ("wasi:io/error", Capability::Runtime),
    ("wasi:io/poll", Capability::Runtime),
    ("wasi:io/streams", Capability::Runtime),
    ("wasi:clocks/wall-clock", Capability::Runtime),
    ("wasi:clocks/monotonic-clock", Capability::Runtime),
    ("wasi:random/random", Capability::Runtime),
    ("wasi:random/insecure", Capability::Runtime),
    ("wasi:random/insecure-seed", Capability::Runtime),
    ("wasi:cli/environment", Capability::Runtime),
    ("wasi:cli/exit", Capability::Runtime),
    ("wasi:cli/stdin", Capability::Runtime),
    ("wasi:cli/stdout", Capability::Runtime),
    ("wasi:cli/stderr", Capability::Runtime),
    ("wasi:cli/terminal-input", Capability::Runtime),
    ("wasi:cli/terminal-output", Capability::Runtime),
    ("wasi:cli/terminal-stdin", Capability::Runtime),
    ("wasi:cli/terminal-stdout", Capability::Runtime),
    ("wasi:cli/terminal-stderr", Capability::Runtime),
    ("wasi:filesystem/types", Capability::Filesystem),
    ("wasi:filesystem/preopens", Capability::Filesystem),
    ("wasi:sockets/network", Capability::Network),
    ("wasi:sockets/instance-network", Capability::Network),
    ("wasi:sockets/tcp", Capability::Network),
    ("wasi:sockets/tcp-create-socket", Capability::Network),
    ("wasi:sockets/udp", Capability::Network),
    ("wasi:sockets/udp-create-socket", Capability::Network),
    ("wasi:sockets/ip-name-lookup", Capability::Network),
];

/// What the import named `import` (such as `wasi:io/streams@0.2.3`) gives
/// a component.
pub fn capability(import: &str) -> Capability {
    if super::ALLOWED_IMPORTS.contains(&import) {
        return Capability::Refill;
    }
    let Some((interface, version)) = import.split_once('@') else {
        return Capability::Refused;
    };
    let is_02 = version
        .strip_prefix("0.2.")
        .is_some_and(|patch| !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()));
    match WASI.iter().find(|(name, _)| *name == interface) {
        Some((_, capability)) if is_02 => *capability,
        _ => Capability::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_takes_wasi_02_and_refuses_the_rest() {
        assert_eq!(
            capability("refill:transform/host@0.2.0"),
            Capability::Refill
        );
        assert_eq!(capability("wasi:io/streams@0.2.3"), Capability::Runtime);
        assert_eq!(
            capability("wasi:filesystem/preopens@0.2.0"),
            Capability::Filesystem
        );
        assert_eq!(capability("wasi:sockets/tcp@0.2.6"), Capability::Network);
        for refused in [
            "wasi:http/outgoing-handler@0.2.3",
            "wasi:io/streams@0.3.0",
            "wasi:io/streams@0.2.x",
            "wasi:io/streams",
            "refill:transform/host@0.1.0",
            "refill:evil/network@0.1.0",
        ] {
            assert_eq!(capability(refused), Capability::Refused, "{refused}");
        }
    }

    #[test]
    fn a_pipe_keeps_its_cap_and_counts_the_rest() {
        let pipe = CappedPipe::default();
        pipe.keep(b"hello\n");
        pipe.keep(&vec![b'x'; OUTPUT_CAP]);
        let (text, dropped) = pipe.take();
        assert_eq!(text.len(), OUTPUT_CAP);
        assert!(text.starts_with("hello\nxxx"));
        assert_eq!(dropped, 6);
        assert_eq!(pipe.take(), (String::new(), 0), "take empties the pipe");
    }

    #[test]
    fn the_environment_depends_only_on_its_inputs() {
        let t = Duration::from_secs(1_700_000_000);
        let a = GuestEnv::new(t, &["quotes", "abc"]);
        assert_eq!(a, GuestEnv::new(t, &["quotes", "abc"]));
        assert_ne!(a.seed, GuestEnv::new(t, &["quotes", "abd"]).seed);
        assert_ne!(
            a.seed,
            GuestEnv::new(t + Duration::from_millis(1), &["quotes", "abc"]).seed
        );
        use rand::Rng as _;
        assert_eq!(a.rng(1).next_u64(), a.clone().rng(1).next_u64());
        assert_ne!(a.rng(1).next_u64(), a.rng(2).next_u64());
    }
}
