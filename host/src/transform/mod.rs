//! The wasmtime side: consumes a component file (checked against its pin and
//! the import policy) plus a [`Setup`] (configuration, clock and seed,
//! lookup tables), produces [`Instance`]s that turn batches of rows into one
//! [`Outcome`] each. Every batch runs under a fuel budget, a wall-clock
//! deadline and a memory limit; a guest that breaks one traps, and the trap
//! is reported as its own kind of error with the guest's log lines. Guests
//! that import WASI get the inert WASI of [`wasi`].

pub mod bindings;
pub mod cache;
pub mod inspect;
pub mod wasi;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker, ResourceTable, types::ComponentItem};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use self::bindings::refill::transform::host::{self as wit_host, Level, LookupError};
use self::bindings::{Transformer, TransformerPre};
use self::cache::Origin;
use self::wasi::{Capability, CappedPipe, GuestEnv, SteppingClock};
use crate::lookup::Lookups;
use crate::value::{ConfigError, Info, Outcome, Param, Row};

/// The refill interfaces a component may import: the host interface and
/// the type-only interface it shares with the host. The WASI 0.2
/// interfaces of [`wasi`] are allowed too, linked inertly.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "refill:transform/host@0.2.0",
    "refill:transform/types@0.2.0",
];

/// The WIT of the world every transform implements, as this refill was
/// built with it: what `refill wit` prints for projects outside this
/// repository.
pub const WIT: &str = include_str!("../../../wit/transform.wit");

/// The export every transform provides.
pub const TRANSFORM_EXPORT: &str = "refill:transform/transform@0.2.0";

/// What an instance is set up with besides its component: the spec's
/// configuration, the environment its clocks and random numbers come from,
/// and the lookup tables it may read.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Handed to the transform's `configure`.
    pub params: Vec<Param>,
    /// The guest's clock and seed.
    pub env: GuestEnv,
    /// The spec's lookup tables.
    pub lookups: Arc<Lookups>,
}

impl Setup {
    /// A setup with no lookup tables.
    pub fn new(params: Vec<Param>, env: GuestEnv) -> Setup {
        Setup {
            params,
            env,
            lookups: Arc::new(Lookups::none()),
        }
    }
}

/// How often the deadline clock ticks.
const TICK: Duration = Duration::from_millis(10);
/// Log lines kept per batch: the first ones, and the last one written
/// (the lines between are counted and dropped).
const MAX_LOG_LINES: usize = 100;

/// Rows' worth of fuel granted to instantiation, `describe` and
/// `configure`.
const SETUP_ROWS: u64 = 1_000;

/// Limits applied to every batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Fuel per row: a batch of n rows gets n times this much, so a smaller
    /// batch (as when a trapping batch is split) costs proportionally less.
    pub fuel_per_row: u64,
    /// Bytes of linear memory an instance may grow to.
    pub memory_bytes: usize,
    /// Wall-clock time per batch.
    pub timeout: Duration,
    /// Bytes the component file may have; a larger one is refused before
    /// it is read.
    pub component_bytes: u64,
}

impl Default for Limits {
    /// The limits a spec gets when it sets none.
    fn default() -> Self {
        use crate::spec::{
            DEFAULT_COMPONENT_MB, DEFAULT_FUEL_PER_ROW, DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_MS,
        };
        Limits {
            fuel_per_row: DEFAULT_FUEL_PER_ROW,
            memory_bytes: (DEFAULT_MEMORY_MB as usize) << 20,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            component_bytes: u64::from(DEFAULT_COMPONENT_MB) << 20,
        }
    }
}

/// What the host was calling when a guest trapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Creating the instance: its memories and tables, its start functions.
    Instantiate,
    /// `describe`.
    Describe,
    /// `configure`.
    Configure,
    /// `transform-batch`.
    Batch,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Instantiate => "while being instantiated",
            Phase::Describe => "in describe",
            Phase::Configure => "in configure",
            Phase::Batch => "in transform-batch",
        })
    }
}

impl Phase {
    const ALL: [Phase; 4] = [
        Phase::Instantiate,
        Phase::Describe,
        Phase::Configure,
        Phase::Batch,
    ];

    /// The name stored with a dead letter.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Instantiate => "instantiate",
            Phase::Describe => "describe",
            Phase::Configure => "configure",
            Phase::Batch => "batch",
        }
    }

    /// The phase of a stored name.
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Why a guest trapped, without the details: what a dead letter records
/// and what reports count by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrapCause {
    /// Out of fuel.
    Fuel,
    /// Past its deadline.
    Deadline,
    /// Past its memory limit.
    Memory,
    /// Too many instances, memories or tables.
    Resources,
    /// A panic.
    Panic,
    /// A call to `exit`.
    Exit,
    /// A wasm trap.
    Wasm,
    /// Anything else.
    Other,
}

impl TrapCause {
    const ALL: [TrapCause; 8] = [
        TrapCause::Fuel,
        TrapCause::Deadline,
        TrapCause::Memory,
        TrapCause::Resources,
        TrapCause::Panic,
        TrapCause::Exit,
        TrapCause::Wasm,
        TrapCause::Other,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TrapCause::Fuel => "fuel",
            TrapCause::Deadline => "deadline",
            TrapCause::Memory => "memory",
            TrapCause::Resources => "resources",
            TrapCause::Panic => "panic",
            TrapCause::Exit => "exit",
            TrapCause::Wasm => "wasm",
            TrapCause::Other => "other",
        }
    }

    /// The cause of a stored name.
    pub fn parse(s: &str) -> Option<TrapCause> {
        TrapCause::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A trap in short: what the host was calling, and why it trapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Trapped {
    /// What the host was calling.
    pub phase: Phase,
    /// Why.
    pub cause: TrapCause,
}

impl Trapped {
    /// The form stored with a dead letter: `batch:fuel`.
    pub fn encode(self) -> String {
        format!("{}:{}", self.phase.as_str(), self.cause.as_str())
    }

    /// Reads [`Trapped::encode`]'s form.
    pub fn decode(s: &str) -> Option<Trapped> {
        let (phase, cause) = s.split_once(':')?;
        Some(Trapped {
            phase: Phase::parse(phase)?,
            cause: TrapCause::parse(cause)?,
        })
    }
}

/// Why a guest trapped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrapKind {
    /// The call used up its fuel.
    Fuel {
        /// The budget it had.
        limit: u64,
        /// The rows it was for; `None` when no row was involved
        /// (instantiation, `describe`, `configure`).
        rows: Option<u64>,
    },
    /// The call ran past its deadline.
    Deadline {
        /// The deadline it had.
        timeout: Duration,
    },
    /// The instance tried to grow its memories and tables past the limit.
    Memory {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The instance asked for more core instances, memories or tables than
    /// one transform may have; says which.
    Resources(String),
    /// The guest panicked (it logged a panic message before trapping).
    Panic,
    /// The guest called `exit`.
    Exit(i32),
    /// A wasm trap: unreachable code, out-of-bounds access, stack
    /// overflow…, as wasmtime describes it.
    Wasm(String),
    /// Any other failure of the call.
    Other(String),
}

impl TrapKind {
    /// The cause, without its details.
    pub fn cause(&self) -> TrapCause {
        match self {
            TrapKind::Fuel { .. } => TrapCause::Fuel,
            TrapKind::Deadline { .. } => TrapCause::Deadline,
            TrapKind::Memory { .. } => TrapCause::Memory,
            TrapKind::Resources(_) => TrapCause::Resources,
            TrapKind::Panic => TrapCause::Panic,
            TrapKind::Exit(_) => TrapCause::Exit,
            TrapKind::Wasm(_) => TrapCause::Wasm,
            TrapKind::Other(_) => TrapCause::Other,
        }
    }
}

impl std::fmt::Display for TrapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrapKind::Fuel {
                limit,
                rows: Some(rows),
            } => write!(
                f,
                "ran out of fuel ({limit} units for {rows} row{}; raise [transform] fuel_per_row if the work is legitimate)",
                if *rows == 1 { "" } else { "s" }
            ),
            TrapKind::Fuel { limit, rows: None } => write!(
                f,
                "ran out of fuel ({limit} units, the budget for setting up an instance: {SETUP_ROWS} × [transform] fuel_per_row)"
            ),
            TrapKind::Deadline { timeout } => write!(
                f,
                "ran past its deadline ({} ms per call; raise [transform] timeout_ms if the work is legitimate)",
                timeout.as_millis()
            ),
            TrapKind::Memory { limit } => write!(
                f,
                "tried to use more than {} MiB of memory and tables ([transform] memory_mb)",
                limit >> 20
            ),
            TrapKind::Resources(what) => write!(f, "{what}"),
            TrapKind::Panic => f.write_str("panicked"),
            TrapKind::Exit(code) => write!(f, "called exit({code})"),
            TrapKind::Wasm(what) => write!(f, "hit a wasm trap: {what}"),
            TrapKind::Other(what) => write!(f, "failed: {what}"),
        }
    }
}

/// Errors of the transform stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransformError {
    /// The component file could not be read.
    #[error("cannot read component {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The component file is not a regular file, or is larger than the
    /// spec allows; it was not read.
    #[error("component {} {what}; refusing to read it", path.display())]
    NotAComponentFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The component's sha256 is not the one pinned in the spec.
    #[error("component {} has sha256 {actual}, but the spec pins {expected}; refusing to run it (rebuild the pinned version, or review the new one and update [transform] sha256)", path.display())]
    DigestMismatch {
        /// The file.
        path: PathBuf,
        /// The pin.
        expected: String,
        /// What the file hashes to.
        actual: String,
    },
    /// The file is a core WebAssembly module, which a component wraps.
    #[error("component {} is a core WebAssembly module, not a component; make it one with `wasm-tools component new {} -o component.wasm` (wasm-tools: `cargo install wasm-tools`; add `--adapt wasi_snapshot_preview1.reactor.wasm` if the module imports WASI preview 1), or build the project with `refill build`, which makes a component in every language refill supports", path.display(), path.display())]
    CoreModule {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a valid component, or cannot be compiled.
    #[error("component {} cannot be loaded: {message}", path.display())]
    Compile {
        /// The file.
        path: PathBuf,
        /// What wasmtime said.
        message: String,
    },
    /// The component imports something beyond the refill host interface
    /// and the WASI 0.2 interfaces the host links inertly.
    #[error("component {} imports {}, beyond what a transform may use (the refill host interface {} and WASI 0.2 io, clocks, random, cli, filesystem and sockets, linked with nothing granted); refusing to run it. `refill inspect` lists its imports", path.display(), forbidden.join(", "), ALLOWED_IMPORTS.join(", "))]
    ForbiddenImports {
        /// The file.
        path: PathBuf,
        /// The imports outside the policy.
        forbidden: Vec<String>,
    },
    /// An import the policy allows cannot be satisfied, such as a function
    /// of a WASI release newer than the host's.
    #[error("component {} cannot be linked: {message}; refill links the refill host interface and WASI 0.2 up to 0.2.12 (rebuild it with an older toolchain, or upgrade refill)", path.display())]
    Link {
        /// The file.
        path: PathBuf,
        /// What wasmtime said.
        message: String,
    },
    /// The component does not implement the refill transform world.
    #[error("component {} does not implement {TRANSFORM_EXPORT}: {message}", path.display())]
    NotATransform {
        /// The file.
        path: PathBuf,
        /// What is missing or mismatched.
        message: String,
    },
    /// `configure` refused the spec's configuration.
    #[error("transform {name} refused its configuration: {error}")]
    Config {
        /// The transform's name.
        name: String,
        /// Its reason.
        error: String,
    },
    /// The guest trapped: it ran out of fuel, time or memory, panicked,
    /// called `exit`, or hit a wasm trap.
    #[error("transform trapped {phase}: it {kind}{}", format_logs(logs))]
    Trap {
        /// What the host was calling.
        phase: Phase,
        /// Why.
        kind: TrapKind,
        /// The guest's log lines from the failed call.
        logs: Vec<String>,
    },
    /// The guest broke the interface contract.
    #[error("transform broke its contract: {0}")]
    Contract(String),
}

impl TransformError {
    /// The trap in short, if the guest trapped.
    pub fn trapped(&self) -> Option<Trapped> {
        match self {
            TransformError::Trap { phase, kind, .. } => Some(Trapped {
                phase: *phase,
                cause: kind.cause(),
            }),
            _ => None,
        }
    }
}

fn format_logs(logs: &[String]) -> String {
    if let Some(exception) = guest_exception(logs) {
        return format!("; the guest raised {exception}");
    }
    // The runtime's own last words (componentize-py ends with a Rust
    // panic of its own) say less than the line before them.
    let said = logs
        .iter()
        .rev()
        .find(|l| !runtime_noise(l))
        .or(logs.last());
    match said {
        Some(line) => format!("; its last log line: {}", line.replace('\n', " ")),
        None => String::new(),
    }
}

/// Whether a log line is the language runtime reporting its own abort
/// rather than the guest's code speaking.
fn runtime_noise(line: &str) -> bool {
    let text = line.strip_prefix("stderr: ").unwrap_or(line);
    text.starts_with("note: run with `RUST_BACKTRACE=1`")
        || (text.starts_with("thread '") && text.contains("panicked at"))
        || text.starts_with("called `Result::unwrap()` on an `Err` value")
}

/// The exception a guest's stderr shows: the line after a Python
/// traceback's frames (`ValueError: boom`), with the innermost frame, or a
/// JavaScript error line (`Error: boom`) with its first stack line.
fn guest_exception(logs: &[String]) -> Option<String> {
    let lines: Vec<&str> = logs
        .iter()
        .filter_map(|l| l.strip_prefix("stderr: "))
        .collect();
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("Traceback (most recent call last):"));
    if let Some(start) = start {
        let mut frame = None;
        for line in &lines[start + 1..] {
            if line.starts_with("  File ") {
                frame = Some(line.trim());
            } else if !line.starts_with(' ') && !runtime_noise(line) {
                return Some(match frame {
                    Some(frame) => format!("{line} ({frame})"),
                    None => line.to_string(),
                });
            }
        }
        return None;
    }
    // JavaScript: `Error: message` (or a subclass) then `    at …` lines.
    let at = lines.iter().position(|l| {
        let name = l.split(':').next().unwrap_or("");
        (name.ends_with("Error") || name.ends_with("Exception"))
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
            && l.contains(": ")
    })?;
    let frame = lines
        .get(at + 1)
        .map(|l| l.trim())
        .filter(|l| l.starts_with("at "));
    Some(match frame {
        Some(frame) => format!("{} ({frame})", lines[at]),
        None => lines[at].to_string(),
    })
}

/// One captured guest log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Its severity.
    pub level: Level,
    /// The text, truncated to a few KiB.
    pub message: String,
}

/// What one instance's store holds.
struct HostState {
    max_memory: usize,
    /// Bytes of linear memory the instance's memories have together.
    memory_used: usize,
    /// Bytes the instance's tables take in the host, together.
    tables_used: usize,
    memory_exceeded: bool,
    /// The fuel and rows of the call in progress, for trap reports.
    armed: (u64, Option<u64>),
    logs: Vec<LogLine>,
    dropped_logs: usize,
    lookups: Arc<Lookups>,
    wasi: WasiCtx,
    table: ResourceTable,
    stdout: CappedPipe,
    stderr: CappedPipe,
    clock: SteppingClock,
}

/// Resources (streams, pollables…) one instance may hold at once; a guest
/// that leaks them traps instead of growing host memory.
const MAX_RESOURCES: usize = 10_000;

impl HostState {
    /// Moves what the guest wrote to stdout and stderr into its log lines.
    fn collect_output(&mut self) {
        for (stream, pipe, level) in [
            ("stdout", self.stdout.clone(), Level::Info),
            ("stderr", self.stderr.clone(), Level::Warn),
        ] {
            let (text, dropped) = pipe.take();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                wit_host::Host::log(self, level, format!("{stream}: {line}"));
            }
            if dropped > 0 {
                // Past the line limit too: this one says what was lost.
                self.logs.push(LogLine {
                    level: Level::Warn,
                    message: format!(
                        "{stream}: {dropped} more bytes dropped (the host keeps {} KiB per batch)",
                        wasi::OUTPUT_CAP >> 10
                    ),
                });
            }
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Bytes the host keeps per table element: a funcref is one pointer.
const TABLE_ELEMENT_BYTES: usize = 8;
/// Core instances, memories and tables one transform instance may create.
/// A Python component has about a dozen instances and tables and one or
/// two memories; these leave a wide margin and keep the host's own
/// bookkeeping per instance small.
const MAX_CORE_INSTANCES: usize = 1_000;
const MAX_MEMORIES: usize = 100;
const MAX_TABLES: usize = 10_000;

impl HostState {
    /// Whether memories of `memory` bytes and tables of `tables` bytes fit
    /// the limit together; records that they do not.
    fn fits(&mut self, memory: usize, tables: usize) -> wasmtime::Result<bool> {
        if memory.saturating_add(tables) > self.max_memory {
            self.memory_exceeded = true;
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes reached ({memory} bytes of memory, {tables} of tables)",
                self.max_memory
            ));
        }
        Ok(true)
    }
}

impl wasmtime::ResourceLimiter for HostState {
    // One budget covers all of the instance's memories and tables: wasmtime
    // asks here when each is created (from 0 to its initial size) and
    // whenever one grows.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.memory_used - current).saturating_add(desired);
        self.fits(total, self.tables_used)?;
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = |elements: usize| elements.saturating_mul(TABLE_ELEMENT_BYTES);
        let total = (self.tables_used - bytes(current)).saturating_add(bytes(desired));
        self.fits(self.memory_used, total)?;
        self.tables_used = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }
    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

impl wit_host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        // A fresh, bounded copy: the guest's string (as long as its memory
        // allows) is dropped here, not kept behind a shortened line.
        let line = LogLine {
            level,
            message: crate::clip::clip(&message, crate::clip::LOG_LINE),
        };
        drop(message);
        if self.logs.len() >= MAX_LOG_LINES {
            // The last slot holds the latest line.
            self.dropped_logs += 1;
            if let Some(last) = self.logs.last_mut() {
                *last = line;
            }
            return;
        }
        self.logs.push(line);
    }

    fn lookup(&mut self, table: String, key: String) -> Result<Option<String>, LookupError> {
        match self.lookups.get(&table, &key) {
            Ok(value) => Ok(value.map(str::to_string)),
            Err(_) => Err(LookupError::UnknownTable(table)),
        }
    }
}

impl bindings::refill::transform::types::Host for HostState {}

/// The process-wide engine, with its deadline clock.
pub(crate) fn engine() -> Result<&'static Engine, String> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = wasmtime::Config::new();
            config
                .wasm_component_model(true)
                .consume_fuel(true)
                .epoch_interruption(true)
                // Same inputs, same outputs, on any machine.
                .cranelift_nan_canonicalization(true)
                .relaxed_simd_deterministic(true);
            let engine = Engine::new(&config).map_err(|e| e.to_string())?;
            let ticker = engine.weak();
            std::thread::Builder::new()
                .name("refill-epoch".into())
                .spawn(move || {
                    while let Some(engine) = ticker.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(TICK);
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(engine)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The sha256 of a file's bytes, in hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A compiled component and what it says about itself on the outside:
/// digest, size, imports and exports. Nothing of it has run yet.
pub struct Compiled {
    path: PathBuf,
    digest: String,
    size: usize,
    imports: Vec<String>,
    exports: Vec<String>,
    origin: Origin,
    component: wasmtime::component::Component,
}

impl Compiled {
    /// Reads the component at `path` (see [`Compiled::read_bytes`]),
    /// refuses it if `pin` is given and does not match its sha256, and
    /// compiles it (or loads it from the cache).
    pub fn read(
        path: &Path,
        pin: Option<&str>,
        max_bytes: u64,
    ) -> Result<Compiled, TransformError> {
        Compiled::from_bytes(path, &Compiled::read_bytes(path, max_bytes)?, pin)
    }

    /// The bytes of the component file at `path`: refused unread if it is
    /// not a regular file (`/dev/zero`, a pipe, a directory) or has more
    /// than `max_bytes`, and never read past that bound (a file that grows
    /// meanwhile is refused too).
    pub fn read_bytes(path: &Path, max_bytes: u64) -> Result<Vec<u8>, TransformError> {
        use std::io::Read;
        let unreadable = |source| TransformError::Read {
            path: path.to_path_buf(),
            source,
        };
        let refused = |what: String| TransformError::NotAComponentFile {
            path: path.to_path_buf(),
            what,
        };
        let too_large = |size: u64| {
            refused(format!(
                "has {size} bytes, more than the {} MiB a component may have ([transform] max_component_mb)",
                max_bytes >> 20
            ))
        };
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(refused(format!(
                "is not a regular file ({})",
                if meta.is_dir() {
                    "a directory"
                } else {
                    "a device, pipe or socket"
                }
            )));
        }
        if meta.len() > max_bytes {
            return Err(too_large(meta.len()));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() as u64 > max_bytes {
            return Err(too_large(bytes.len() as u64));
        }
        Ok(bytes)
    }

    /// As [`Compiled::read`], for the bytes of the file at `path`.
    pub fn from_bytes(
        path: &Path,
        bytes: &[u8],
        pin: Option<&str>,
    ) -> Result<Compiled, TransformError> {
        let digest = digest(bytes);
        if let Some(expected) = pin
            && expected != digest
        {
            return Err(TransformError::DigestMismatch {
                path: path.to_path_buf(),
                expected: expected.to_string(),
                actual: digest,
            });
        }
        let compile_error = |message: String| TransformError::Compile {
            path: path.to_path_buf(),
            message,
        };
        // A core module has version 1 where a component has 0x0d, layer 1.
        if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0] {
            return Err(TransformError::CoreModule {
                path: path.to_path_buf(),
            });
        }
        let engine = engine().map_err(compile_error)?;
        let (component, origin) =
            cache::load(engine, bytes, &digest).map_err(|e| compile_error(format!("{e:#}")))?;
        let ty = component.component_type();
        let imports = ty
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let exports = ty
            .exports(engine)
            .map(|(name, item)| match item.ty {
                ComponentItem::ComponentInstance(_) => name.to_string(),
                _ => format!("{name} (not an interface)"),
            })
            .collect();
        Ok(Compiled {
            path: path.to_path_buf(),
            digest,
            size: bytes.len(),
            imports,
            exports,
            origin,
            component,
        })
    }

    /// The imports outside the policy: not the refill host interface and
    /// not a WASI 0.2 interface the host links inertly.
    pub fn forbidden_imports(&self) -> Vec<String> {
        self.imports
            .iter()
            .filter(|i| wasi::capability(i) == Capability::Refused)
            .cloned()
            .collect()
    }

    /// The component file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The component's sha256, in hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }
    /// The component's size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
    /// What the component imports.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }
    /// What the component exports.
    pub fn exports(&self) -> &[String] {
        &self.exports
    }
    /// Whether the compiled form came from the cache.
    pub fn origin(&self) -> Origin {
        self.origin
    }
}

/// A checked component, ready to make instances.
pub struct Runner {
    compiled: Compiled,
    info: Info,
    limits: Limits,
    pre: TransformerPre<HostState>,
}

impl Runner {
    /// Reads and compiles the component at `path` (see [`Compiled::read`])
    /// and checks it with [`Runner::new`].
    pub fn load(path: &Path, pin: Option<&str>, limits: Limits) -> Result<Runner, TransformError> {
        Runner::new(Compiled::read(path, pin, limits.component_bytes)?, limits)
    }

    /// Refuses a component that imports anything outside the policy (see
    /// [`wasi::capability`]) or does not export the transform interface,
    /// then asks it to describe itself.
    pub fn new(compiled: Compiled, limits: Limits) -> Result<Runner, TransformError> {
        let path = compiled.path.clone();
        let forbidden = compiled.forbidden_imports();
        if !forbidden.is_empty() {
            return Err(TransformError::ForbiddenImports { path, forbidden });
        }
        let engine = compiled.component.engine();
        let mut linker = Linker::<HostState>::new(engine);
        // The host's own interfaces failing to register is the host's
        // problem, reported like a compile failure; the component's imports
        // not resolving is a `Link` error below.
        let host_error = |e: wasmtime::Error| TransformError::Compile {
            path: path.clone(),
            message: format!("{e:#}"),
        };
        Transformer::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(host_error)?;
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(host_error)?;
        wasi::link_sleep(&mut linker, |s: &mut HostState| (&mut s.table, &s.clock))
            .map_err(host_error)?;
        let not_a_transform = |e: wasmtime::Error| TransformError::NotATransform {
            path: path.clone(),
            message: format!("{e:#}"),
        };
        let pre =
            linker
                .instantiate_pre(&compiled.component)
                .map_err(|e| TransformError::Link {
                    path: path.clone(),
                    message: format!("{e:#}"),
                })?;
        let pre = TransformerPre::new(pre).map_err(not_a_transform)?;
        let empty = Info {
            name: String::new(),
            version: String::new(),
            description: String::new(),
            inputs: vec![],
            outputs: vec![],
        };
        let mut runner = Runner {
            compiled,
            info: empty,
            limits,
            pre,
        };
        let describing = Setup::new(Vec::new(), GuestEnv::current(&[runner.digest()]));
        let (mut store, bindings) = runner.instantiate(&describing)?;
        arm(&mut store, &runner.limits, None, runner.limits.timeout);
        let info = trapping(&mut store, runner.limits.timeout, Phase::Describe, |s| {
            bindings.refill_transform_transform().call_describe(s)
        })?;
        runner.info = bounded(info)?;
        Ok(runner)
    }

    fn instantiate(
        &self,
        setup: &Setup,
    ) -> Result<(Store<HostState>, Transformer), TransformError> {
        let engine = self.pre.engine();
        let (stdout, stderr) = (CappedPipe::default(), CappedPipe::default());
        let clock = SteppingClock::default();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let mut store = Store::new(
            engine,
            HostState {
                max_memory: self.limits.memory_bytes,
                memory_used: 0,
                tables_used: 0,
                memory_exceeded: false,
                armed: (0, None),
                logs: Vec::new(),
                dropped_logs: 0,
                lookups: setup.lookups.clone(),
                wasi: wasi::context(&setup.env, &stdout, &stderr, &clock),
                table,
                stdout,
                stderr,
                clock,
            },
        );
        store.limiter(|s| s);
        arm(&mut store, &self.limits, None, self.limits.timeout);
        let bindings = trapping(&mut store, self.limits.timeout, Phase::Instantiate, |s| {
            self.pre.instantiate(s)
        })?;
        Ok((store, bindings))
    }

    /// A fresh instance, set up with `setup` and configured with its
    /// parameters. Fails with [`TransformError::Config`] if the transform
    /// refuses them.
    pub fn instance(&self, setup: &Setup) -> Result<Instance, TransformError> {
        let (mut store, bindings) = self.instantiate(setup)?;
        arm(&mut store, &self.limits, None, self.limits.timeout);
        let configured = trapping(&mut store, self.limits.timeout, Phase::Configure, |s| {
            bindings
                .refill_transform_transform()
                .call_configure(s, &setup.params)
        })?;
        configured.map_err(|e| TransformError::Config {
            name: self.info.name.clone(),
            error: describe_config_error(&e),
        })?;
        Ok(Instance {
            store,
            bindings,
            limits: self.limits,
        })
    }

    /// The compiled component.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }
    /// The component's sha256, in hex.
    pub fn digest(&self) -> &str {
        &self.compiled.digest
    }
    /// What the transform says about itself.
    pub fn info(&self) -> &Info {
        &self.info
    }
    /// The limits each batch runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

/// A configured instance of a transform. After a trap it must be dropped.
pub struct Instance {
    store: Store<HostState>,
    bindings: Transformer,
    limits: Limits,
}

/// The result of one batch.
#[derive(Debug)]
pub struct BatchOutput {
    /// One outcome per row, in order.
    pub outcomes: Vec<Outcome>,
    /// What the guest logged.
    pub logs: Vec<LogLine>,
    /// Log lines dropped past the per-batch limit.
    pub dropped_logs: usize,
    /// Fuel the batch used.
    pub fuel_used: u64,
}

impl Instance {
    /// Runs one batch. Fails with [`TransformError::Trap`] if the guest
    /// trapped (the instance is then unusable), and with
    /// [`TransformError::Contract`] if it did not return one outcome per row.
    pub fn transform(&mut self, rows: &[Row]) -> Result<BatchOutput, TransformError> {
        self.transform_within(rows, self.limits.timeout)
    }

    /// Runs one batch, as [`transform`](Instance::transform), with its own
    /// wall-clock deadline.
    pub fn transform_within(
        &mut self,
        rows: &[Row],
        timeout: Duration,
    ) -> Result<BatchOutput, TransformError> {
        arm(
            &mut self.store,
            &self.limits,
            Some(rows.len() as u64),
            timeout,
        );
        let bindings = &self.bindings;
        let mut outcomes = trapping(&mut self.store, timeout, Phase::Batch, |s| {
            bindings
                .refill_transform_transform()
                .call_transform_batch(s, rows)
        })?;
        // What is kept, printed and stored of an error is bounded.
        for outcome in &mut outcomes {
            if let Outcome::Error(message) = outcome
                && message.len() > crate::clip::ERROR
            {
                *message = crate::clip::clip(message, crate::clip::ERROR);
            }
        }
        let fuel_used = self.store.data().armed.0 - self.store.get_fuel().unwrap_or(0);
        let state = self.store.data_mut();
        let logs = std::mem::take(&mut state.logs);
        let dropped_logs = std::mem::take(&mut state.dropped_logs);
        if outcomes.len() != rows.len() {
            return Err(TransformError::Contract(format!(
                "transform-batch returned {} outcomes for {} rows",
                outcomes.len(),
                rows.len()
            )));
        }
        Ok(BatchOutput {
            outcomes,
            logs,
            dropped_logs,
            fuel_used,
        })
    }
}

/// What running a batch with trap isolation produced.
#[derive(Debug, Default)]
pub struct Isolated {
    /// One result per row, in order: the row's outcome, or the trap (or
    /// broken contract) that the row caused when run on its own.
    pub results: Vec<Result<Outcome, TransformError>>,
    /// What the guest logged in the calls that succeeded.
    pub logs: Vec<LogLine>,
    /// Log lines dropped past the per-batch limit.
    pub dropped_logs: usize,
    /// Calls that trapped on the way to isolating the failing rows.
    pub traps: usize,
}

/// Runs `rows` through the instance in `slot` (creating one from `runner`
/// and `setup` when empty). When the batch traps or breaks the contract,
/// the instance is replaced and the two halves are run again, down to
/// single rows, so that only the rows that cause the trap fail and every
/// other row gets its outcome. When the batch ran out of time, each half
/// gets its share of the deadline (but never less than
/// [`MIN_SPLIT_DEADLINE`] or the deadline itself), and a single row that
/// runs out of its share is run once more with the whole deadline before it
/// is blamed: isolating a row that never returns costs about three
/// deadlines, not one per level. Fails only on errors that are not the
/// rows' fault (the transform refusing its configuration on a new
/// instance).
pub fn run_isolating(
    runner: &Runner,
    setup: &Setup,
    slot: &mut Option<Instance>,
    rows: &[Row],
    out: &mut Isolated,
) -> Result<(), TransformError> {
    isolate(runner, setup, slot, rows, runner.limits.timeout, out)
}

/// The least wall-clock time a part of a split batch gets.
pub const MIN_SPLIT_DEADLINE: Duration = Duration::from_secs(1);

/// The deadline of `part` rows split from a batch of `whole` rows that had
/// `deadline`.
fn share(deadline: Duration, part: usize, whole: usize, timeout: Duration) -> Duration {
    let floor = timeout.min(MIN_SPLIT_DEADLINE);
    let scaled = deadline.mul_f64(part as f64 / whole.max(1) as f64);
    scaled.max(floor)
}

fn isolate(
    runner: &Runner,
    setup: &Setup,
    slot: &mut Option<Instance>,
    rows: &[Row],
    deadline: Duration,
    out: &mut Isolated,
) -> Result<(), TransformError> {
    if rows.is_empty() {
        return Ok(());
    }
    let instance = match slot {
        Some(instance) => instance,
        None => slot.insert(runner.instance(setup)?),
    };
    match instance.transform_within(rows, deadline) {
        Ok(batch) => {
            out.logs.extend(batch.logs);
            out.dropped_logs += batch.dropped_logs;
            out.results.extend(batch.outcomes.into_iter().map(Ok));
            Ok(())
        }
        Err(error @ (TransformError::Trap { .. } | TransformError::Contract(_))) => {
            *slot = None;
            out.traps += 1;
            let timeout = runner.limits.timeout;
            let out_of_time = matches!(
                error,
                TransformError::Trap {
                    kind: TrapKind::Deadline { .. },
                    ..
                }
            );
            if rows.len() == 1 {
                if out_of_time && deadline < timeout {
                    // A row is blamed for its time only on the full deadline.
                    return isolate(runner, setup, slot, rows, timeout, out);
                }
                out.results.push(Err(error));
                return Ok(());
            }
            let (first, second) = rows.split_at(rows.len() / 2);
            // Time is shared out only when time ran out; otherwise each half
            // gets the deadline the batch had.
            let part = |half: &[Row]| {
                if out_of_time {
                    share(deadline, half.len(), rows.len(), timeout)
                } else {
                    deadline
                }
            };
            isolate(runner, setup, slot, first, part(first), out)?;
            isolate(runner, setup, slot, second, part(second), out)
        }
        Err(other) => Err(other),
    }
}

/// Resets the budgets for a call covering `rows` rows.
/// `rows` is `None` for the calls that involve no row (instantiation,
/// `describe`, `configure`), which get [`SETUP_ROWS`] rows' worth.
fn arm(store: &mut Store<HostState>, limits: &Limits, rows: Option<u64>, timeout: Duration) {
    let ticks = timeout.as_millis().div_ceil(TICK.as_millis()).max(1);
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
    let fuel = limits
        .fuel_per_row
        .saturating_mul(rows.unwrap_or(SETUP_ROWS).max(1));
    // Fuel is on for every store of our engine, so this cannot fail.
    let _ = store.set_fuel(fuel);
    let state = store.data_mut();
    state.armed = (fuel, rows);
    state.logs.clear();
    state.dropped_logs = 0;
    state.memory_exceeded = false;
}

/// Runs `f`, which calls into a guest, off tokio's scheduler when on a
/// worker of a multi-threaded runtime: wasmtime-wasi's blocking calls (a
/// guest writing to stdout, polling) enter the runtime themselves, which
/// tokio refuses on a thread that is running async tasks.
fn off_the_runtime<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Runs `call`, turning a trap into [`TransformError::Trap`] with the
/// guest's log lines.
fn trapping<T>(
    store: &mut Store<HostState>,
    timeout: Duration,
    phase: Phase,
    call: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<T>,
) -> Result<T, TransformError> {
    let result = off_the_runtime(|| call(store));
    store.data_mut().collect_output();
    match result {
        Ok(v) => Ok(v),
        Err(error) => {
            let state = store.data_mut();
            let logs: Vec<String> = state.logs.drain(..).map(|l| l.message).collect();
            let kind = if state.memory_exceeded {
                TrapKind::Memory {
                    limit: state.max_memory,
                }
            } else {
                match error.downcast_ref::<Trap>() {
                    Some(Trap::OutOfFuel) => TrapKind::Fuel {
                        limit: state.armed.0,
                        rows: state.armed.1,
                    },
                    Some(Trap::Interrupt) => TrapKind::Deadline { timeout },
                    Some(Trap::UnreachableCodeReached)
                        if logs.iter().any(|l| l.starts_with("panic")) =>
                    {
                        TrapKind::Panic
                    }
                    Some(trap) => {
                        let text = trap.to_string();
                        TrapKind::Wasm(
                            text.strip_prefix("wasm trap: ")
                                .unwrap_or(&text)
                                .to_string(),
                        )
                    }
                    None => match error.downcast_ref::<wasmtime_wasi::I32Exit>() {
                        Some(exit) => TrapKind::Exit(exit.0),
                        None => {
                            let text = crate::clip::clip(&format!("{error:#}"), crate::clip::ERROR);
                            match over_count(&text) {
                                Some(what) => TrapKind::Resources(what),
                                None => TrapKind::Other(text),
                            }
                        }
                    },
                }
            };
            Err(TransformError::Trap { phase, kind, logs })
        }
    }
}

/// What wasmtime's refusal of one more core instance, memory or table
/// ("resource limit exceeded: memory count too high at 101") means, in
/// refill's words.
fn over_count(error: &str) -> Option<String> {
    let (_, rest) = error.split_once("resource limit exceeded: ")?;
    let (what, limit) = match rest.split(' ').next()? {
        "instance" => ("core instances", MAX_CORE_INSTANCES),
        "memory" => ("memories", MAX_MEMORIES),
        "table" => ("tables", MAX_TABLES),
        _ => return None,
    };
    Some(format!(
        "tried to create more {what} than the {limit} one transform instance may have"
    ))
}

/// Columns a transform may declare, inputs and outputs each.
pub const MAX_COLUMNS: usize = 1_000;
/// Bytes kept of the name a transform gives itself (the state store keeps
/// it in 200 characters).
const MAX_NAME: usize = 200;
/// Bytes kept of its version (kept in 100 characters).
const MAX_VERSION: usize = 100;
/// Bytes kept of a declared column's name.
const MAX_COLUMN_NAME: usize = 256;

/// What `describe` returned, with every string bounded; refused if it
/// declares more than [`MAX_COLUMNS`] columns.
fn bounded(info: Info) -> Result<Info, TransformError> {
    use crate::clip::{ERROR, clip};
    for (what, columns) in [("input", &info.inputs), ("output", &info.outputs)] {
        if columns.len() > MAX_COLUMNS {
            return Err(TransformError::Contract(format!(
                "describe declares {} {what} columns; a transform may declare at most {MAX_COLUMNS}",
                columns.len()
            )));
        }
    }
    let columns = |columns: Vec<crate::value::Column>| {
        columns
            .into_iter()
            .map(|c| crate::value::Column {
                name: clip(&c.name, MAX_COLUMN_NAME),
                type_: c.type_,
            })
            .collect()
    };
    Ok(Info {
        name: clip(&info.name, MAX_NAME),
        version: clip(&info.version, MAX_VERSION),
        description: clip(&info.description, ERROR),
        inputs: columns(info.inputs),
        outputs: columns(info.outputs),
    })
}

fn describe_config_error(e: &ConfigError) -> String {
    use crate::clip::{ERROR, clip};
    match e {
        ConfigError::Missing(name) => format!("parameter `{}` is required", clip(name, ERROR)),
        ConfigError::Unknown(name) => format!("parameter `{}` is not known", clip(name, ERROR)),
        ConfigError::Invalid(p) => {
            format!(
                "parameter `{}`: {}",
                clip(&p.name, ERROR),
                clip(&p.reason, ERROR)
            )
        }
        ConfigError::Other(msg) => clip(msg, ERROR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trap_in_short_is_stored_and_read_back_within_its_column() {
        for phase in Phase::ALL {
            for cause in TrapCause::ALL {
                let trap = Trapped { phase, cause };
                let stored = trap.encode();
                assert!(stored.len() <= 40, "{stored} fits VARCHAR(40)");
                assert_eq!(Trapped::decode(&stored), Some(trap));
            }
        }
        assert_eq!(Trapped::decode("batch"), None);
        assert_eq!(Trapped::decode("batch:gremlins"), None);
        let error = TransformError::Trap {
            phase: Phase::Batch,
            kind: TrapKind::Exit(3),
            logs: vec![],
        };
        assert_eq!(
            error.trapped().map(Trapped::encode).as_deref(),
            Some("batch:exit")
        );
        assert_eq!(TransformError::Contract("x".into()).trapped(), None);
    }
    use crate::transform::bindings::refill::transform::types::Key;
    use crate::value::Value;

    /// A component built by `make plugins`.
    fn plugin(name: &str) -> PathBuf {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../plugins/dist/{name}.wasm"));
        assert!(
            path.exists(),
            "{} is missing: run `make plugins`",
            path.display()
        );
        path
    }

    fn evil(mode: &str, limits: Limits) -> Instance {
        let runner = Runner::load(&plugin("evil"), None, limits).expect("evil loads");
        let params = [Param {
            name: "mode".into(),
            value: mode.into(),
        }];
        runner
            .instance(&setup(&params))
            .expect("evil accepts its mode")
    }

    #[test]
    fn a_trap_names_the_exception_the_guest_printed_not_the_runtimes_last_words() {
        let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let python = lines(&[
            "stderr: Traceback (most recent call last):",
            "stderr:   File \"app.py\", line 3, in transform_batch",
            "stderr:   File \"app.py\", line 9, in parse",
            "stderr: ValueError: bad date '2024-13-01'",
            "stderr: thread '<unnamed>' panicked at src/lib.rs:1:1:",
            "stderr: note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        ]);
        assert_eq!(
            format_logs(&python),
            "; the guest raised ValueError: bad date '2024-13-01' (File \"app.py\", line 9, in parse)"
        );
        let js = lines(&[
            "stderr: TypeError: x is undefined",
            "stderr:     at transform (app.js:4:2)",
        ]);
        assert_eq!(
            format_logs(&js),
            "; the guest raised TypeError: x is undefined (at transform (app.js:4:2))"
        );
        let plain = lines(&[
            "row 3: giving up",
            "stderr: note: run with `RUST_BACKTRACE=1` …",
        ]);
        assert_eq!(format_logs(&plain), "; its last log line: row 3: giving up");
        assert_eq!(format_logs(&[]), "");
    }

    #[test]
    fn a_core_module_is_refused_with_how_to_make_it_a_component() {
        let module = b"\0asm\x01\0\0\0";
        match Compiled::from_bytes(Path::new("guest.wasm"), module, None) {
            Err(e @ TransformError::CoreModule { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains("is a core WebAssembly module"),
                    "{message}"
                );
                assert!(
                    message.contains("wasm-tools component new guest.wasm"),
                    "{message}"
                );
            }
            Err(other) => panic!("expected a core-module refusal, got {other}"),
            Ok(_) => panic!("a core module was accepted"),
        }
    }

    fn setup(params: &[Param]) -> Setup {
        Setup::new(params.to_vec(), GuestEnv::current(&["test"]))
    }

    fn rows(n: i64) -> Vec<Row> {
        (0..n)
            .map(|i| Row {
                key: Key::Integer(i),
                values: vec![Value::Text(format!("r{i}"))],
            })
            .collect()
    }

    fn trap(result: Result<BatchOutput, TransformError>) -> (TrapKind, Vec<String>) {
        match result {
            Err(TransformError::Trap { kind, logs, .. }) => (kind, logs),
            other => panic!("expected a trap, got {other:?}"),
        }
    }

    #[test]
    fn traps_are_classified_with_the_guests_logs() {
        let small = Limits {
            fuel_per_row: 5_000_000,
            memory_bytes: 16 << 20,
            timeout: Duration::from_secs(30),
            ..Limits::default()
        };
        let (kind, logs) = trap(evil("loop", small).transform(&rows(1)));
        assert_eq!(
            kind,
            TrapKind::Fuel {
                limit: 5_000_000,
                rows: Some(1)
            }
        );
        assert_eq!(logs, vec!["row 0: looping forever".to_string()]);

        // Filling a MiB costs fuel too: give it enough to reach the limit.
        let roomy = Limits {
            fuel_per_row: 5_000_000_000,
            ..small
        };
        let (kind, _) = trap(evil("memory", roomy).transform(&rows(1)));
        assert_eq!(kind, TrapKind::Memory { limit: 16 << 20 });

        let (kind, logs) = trap(evil("panic", small).transform(&rows(1)));
        assert_eq!(kind, TrapKind::Panic);
        assert!(logs[0].contains("evil panics on row 0"), "{logs:?}");

        let endless = Limits {
            fuel_per_row: u64::MAX / 2,
            memory_bytes: 16 << 20,
            timeout: Duration::from_millis(50),
            ..Limits::default()
        };
        let started = std::time::Instant::now();
        let (kind, _) = trap(evil("loop", endless).transform(&rows(1)));
        assert_eq!(
            kind,
            TrapKind::Deadline {
                timeout: Duration::from_millis(50)
            }
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the deadline took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn budgets_are_per_batch() {
        let params = [
            Param {
                name: "mode".into(),
                value: "slow".into(),
            },
            Param {
                name: "spin".into(),
                value: "1000000".into(),
            },
        ];
        // What a batch of two rows costs, whatever the guest's code
        // generation made of its loop.
        let ample = Limits {
            fuel_per_row: 1_000_000_000,
            ..Limits::default()
        };
        let unbounded = Runner::load(&plugin("evil"), None, ample).expect("evil loads");
        let cost = unbounded
            .instance(&setup(&params))
            .expect("configured")
            .transform(&rows(2))
            .expect("a batch within an ample budget")
            .fuel_used;
        // Each batch fits the budget on its own (1.2 × its cost); together
        // they would not, nor would one batch in one row's budget.
        let limits = Limits {
            fuel_per_row: cost * 3 / 5,
            ..Limits::default()
        };
        let runner = Runner::load(&plugin("evil"), None, limits).expect("evil loads");
        let mut instance = runner.instance(&setup(&params)).expect("configured");
        let first = instance.transform(&rows(2)).expect("first batch fits");
        assert!(
            first.fuel_used > limits.fuel_per_row,
            "a batch used {} fuel, within one row's {}",
            first.fuel_used,
            limits.fuel_per_row
        );
        let second = instance
            .transform(&rows(2))
            .expect("second batch gets a fresh budget");
        assert_eq!(second.outcomes.len(), 2);
    }

    #[test]
    fn isolation_fails_only_the_rows_that_trap() {
        let limits = Limits {
            fuel_per_row: 2_000_000,
            ..Limits::default()
        };
        let runner = Runner::load(&plugin("evil"), None, limits).expect("evil loads");
        for mode in ["panic", "loop", "arity"] {
            let params = [
                Param {
                    name: "mode".into(),
                    value: mode.into(),
                },
                Param {
                    name: "trigger".into(),
                    value: "r6".into(),
                },
            ];
            let mut slot = None;
            let mut out = Isolated::default();
            run_isolating(&runner, &setup(&params), &mut slot, &rows(10), &mut out)
                .expect("isolates");
            assert_eq!(out.results.len(), 10, "{mode}");
            for (i, result) in out.results.iter().enumerate() {
                match (i, result) {
                    (6, Err(_)) if mode != "arity" => {}
                    (6, Ok(Outcome::Update(values))) if mode == "arity" => {
                        assert_eq!(values.len(), 2)
                    }
                    (_, Ok(Outcome::Update(values))) => {
                        assert_eq!(
                            values,
                            &vec![Value::Text(format!("R{i}"))],
                            "{mode} row {i}"
                        );
                    }
                    other => panic!("{mode}: unexpected {other:?}"),
                }
            }
            if mode != "arity" {
                assert!(
                    out.traps >= 4,
                    "{mode}: {} traps to isolate one row of ten",
                    out.traps
                );
            }
        }
    }

    #[test]
    fn pins_imports_and_configuration_are_checked() {
        let remap = plugin("remap");
        let wrong = "0".repeat(64);
        assert!(matches!(
            Runner::load(&remap, Some(&wrong), Limits::default()),
            Err(TransformError::DigestMismatch { expected, .. }) if expected == wrong
        ));
        match Runner::load(&plugin("evil-network"), None, Limits::default()) {
            Err(TransformError::ForbiddenImports { forbidden, .. }) => {
                assert_eq!(forbidden, vec!["refill:evil/network@0.1.0".to_string()]);
            }
            other => panic!("expected a refusal, got {:?}", other.err()),
        }
        let runner = Runner::load(&remap, None, Limits::default()).expect("remap loads");
        assert_eq!(runner.info().name, "remap");
        assert_eq!(runner.compiled().imports(), ALLOWED_IMPORTS);
        let refused = runner.instance(&setup(&[Param {
            name: "mapp".into(),
            value: "a=b".into(),
        }]));
        assert!(
            matches!(refused, Err(TransformError::Config { error, .. }) if error.contains("`mapp`"))
        );
    }

    #[test]
    fn split_batches_share_the_deadline_down_to_a_floor() {
        let t = Duration::from_secs(10);
        assert_eq!(share(t, 500, 1000, t), Duration::from_secs(5));
        assert_eq!(
            share(Duration::from_secs(5), 250, 500, t),
            Duration::from_millis(2500)
        );
        assert_eq!(share(Duration::from_secs(2), 1, 2, t), MIN_SPLIT_DEADLINE);
        // A deadline below the floor is never cut.
        let short = Duration::from_millis(50);
        assert_eq!(share(short, 1, 2, short), short);
        // Isolating a row that never returns from 1,000 costs about two
        // deadlines plus a floor per level, plus the whole deadline for the
        // row alone.
        let (mut deadline, mut rows, mut total) = (t, 1000_usize, t);
        while rows > 1 {
            let half = rows / 2;
            deadline = share(deadline, half, rows, t);
            total += deadline;
            rows = half;
        }
        total += t;
        assert!(total < Duration::from_secs(40), "{total:?}");
    }

    #[test]
    fn a_row_out_of_time_is_blamed_on_the_whole_deadline() {
        let limits = Limits {
            fuel_per_row: u64::MAX / 8,
            memory_bytes: 16 << 20,
            timeout: Duration::from_millis(1500),
            ..Limits::default()
        };
        let runner = Runner::load(&plugin("evil"), None, limits).expect("evil loads");
        let params = [
            Param {
                name: "mode".into(),
                value: "loop".into(),
            },
            Param {
                name: "trigger".into(),
                value: "r2".into(),
            },
        ];
        let (mut slot, mut out) = (None, Isolated::default());
        run_isolating(&runner, &setup(&params), &mut slot, &rows(4), &mut out).expect("isolates");
        for (i, result) in out.results.iter().enumerate() {
            match (i, result) {
                (2, Err(TransformError::Trap { kind, .. })) => assert_eq!(
                    kind,
                    &TrapKind::Deadline {
                        timeout: limits.timeout
                    },
                    "the row had the whole deadline, not its share"
                ),
                (_, Ok(Outcome::Update(_))) if i != 2 => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn what_describe_returns_is_bounded_and_too_many_columns_are_refused() {
        use crate::value::{Column, ValueType};
        let column = |name: String| Column {
            name,
            type_: ValueType::Text,
        };
        let info = |inputs: usize, name_bytes: usize| Info {
            name: "n".repeat(name_bytes),
            version: "v".repeat(name_bytes),
            description: "d".repeat(name_bytes),
            inputs: (0..inputs)
                .map(|_| column("c".repeat(name_bytes)))
                .collect(),
            outputs: vec![column("out".into())],
        };
        let kept = bounded(info(3, 1 << 20)).expect("three columns are fine");
        assert!(kept.name.len() <= MAX_NAME && kept.name.contains("more bytes"));
        assert!(kept.version.len() <= MAX_VERSION);
        assert!(kept.description.len() <= crate::clip::ERROR);
        assert!(kept.inputs.iter().all(|c| c.name.len() <= MAX_COLUMN_NAME));
        assert_eq!(kept.outputs[0].name, "out");
        assert_eq!(
            bounded(info(MAX_COLUMNS, 1)).map(|i| i.inputs.len()).ok(),
            Some(MAX_COLUMNS)
        );
        match bounded(info(MAX_COLUMNS + 1, 1)) {
            Err(TransformError::Contract(m)) => assert!(
                m.contains(
                    "describe declares 1001 input columns; a transform may declare at most 1000"
                ),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
