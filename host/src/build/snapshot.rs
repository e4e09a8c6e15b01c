//! The memory snapshot of a JavaScript component, taken deterministically:
//! consumes the command line componentize-js gives wizer (a core module,
//! its init function, preopened folders, the init's arguments on stdin),
//! produces the pre-initialized core module, with the same bytes wherever
//! and whenever it is taken.
//!
//! componentize-js runs wizer with `--wizer-bin`; refill's build passes a
//! shim that runs `refill __refill-snapshot …` instead. Here the guest
//! sees, during its initialization, a wall clock stopped at a fixed time, a
//! monotonic clock that advances one microsecond per reading, random bytes
//! from a fixed seed, and fixed folder names: each preopened folder's host
//! path is replaced, in the guest's stdin too, by `/refill-build/<n>`.
//! Those are exactly what made two builds of the same source differ (the
//! work folder's random name, the clocks and the randomness).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::SeedableRng as _;
use wasmtime::{Engine, Extern, Linker, Module, Store, Val};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

use super::BuildError;

/// The first argument that makes a binary run [`main`].
pub const ARG: &str = "__refill-snapshot";
/// The guest's wall clock during the snapshot: 2001-09-09T01:46:40Z.
const WALL_CLOCK: Duration = Duration::from_secs(1_000_000_000);
/// What `/bin/sh` adds to the environment of the shim it runs.
const SHELL_VARIABLES: [&str; 4] = ["PWD", "OLDPWD", "SHLVL", "_"];
/// Where the guest finds the n-th preopened folder.
const GUEST_DIR: &str = "/refill-build";

/// What componentize-js asks of wizer.
#[derive(Debug, Default, PartialEq, Eq)]
struct Request {
    input: PathBuf,
    output: PathBuf,
    init_func: String,
    /// Host folders the guest sees under their own path.
    dirs: Vec<PathBuf>,
    /// (guest path, host folder).
    mapdirs: Vec<(String, PathBuf)>,
    inherit_env: bool,
}

/// Reads wizer's command line, as far as componentize-js uses it. Anything
/// else is refused, so that a newer componentize-js asking for more fails
/// loudly rather than building something different.
fn parse(args: &[String]) -> Result<Request, String> {
    let mut request = Request::default();
    let mut input = None;
    let mut output = None;
    let mut init_func = None;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with('-') => (flag, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            if let Some(value) = &inline {
                return Ok(value.clone());
            }
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--allow-wasi" => {}
            "--wasm-bulk-memory" => {
                if value()? != "true" {
                    return Err("--wasm-bulk-memory must be true".into());
                }
            }
            "--inherit-env" => request.inherit_env = value()? == "true",
            "--init-func" | "-f" => init_func = Some(value()?),
            "--dir" => request.dirs.push(PathBuf::from(value()?)),
            "--mapdir" => {
                let spec = value()?;
                let (guest, host) = spec
                    .split_once("::")
                    .ok_or_else(|| format!("--mapdir {spec:?} is not GUEST::HOST"))?;
                request
                    .mapdirs
                    .push((guest.to_string(), PathBuf::from(host)));
            }
            "-o" | "--output" => output = Some(PathBuf::from(value()?)),
            _ if !flag.starts_with('-') && input.is_none() => input = Some(PathBuf::from(arg)),
            _ => return Err(format!("unsupported wizer argument {arg:?}")),
        }
        i += 1;
    }
    request.input = input.ok_or("no input module")?;
    request.output = output.ok_or("no -o output")?;
    request.init_func = init_func.ok_or("no --init-func")?;
    Ok(request)
}

/// The guest paths of `request`'s folders, and `stdin` with every host
/// path replaced by its guest path (longest first, so that a folder inside
/// another is replaced whole).
fn remap(request: &Request, stdin: &str) -> (Vec<(PathBuf, String)>, String) {
    let mut preopens: Vec<(PathBuf, String)> = request
        .dirs
        .iter()
        .enumerate()
        .map(|(n, host)| (host.clone(), format!("{GUEST_DIR}/{n}")))
        .collect();
    preopens.extend(
        request
            .mapdirs
            .iter()
            .map(|(guest, host)| (host.clone(), guest.clone())),
    );
    let mut by_length: Vec<&(PathBuf, String)> = preopens.iter().collect();
    by_length.sort_by_key(|(host, _)| std::cmp::Reverse(host.as_os_str().len()));
    let mut text = stdin.to_string();
    for (host, guest) in by_length {
        let host = host.to_string_lossy();
        if host.is_empty() || host == "." {
            continue;
        }
        let host = host.trim_end_matches('/');
        let guest = guest.trim_end_matches('/');
        // `HOST/x` becomes `GUEST/x` (or `/x` for the root), `HOST` alone
        // becomes `GUEST`.
        text = text.replace(&format!("{host}/"), &format!("{guest}/"));
        text = text.replace(host, if guest.is_empty() { "/" } else { guest });
    }
    (preopens, text)
}

/// A wall clock that never moves.
struct StoppedClock;

impl wasmtime_wasi::HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_micros(1)
    }
    fn now(&self) -> Duration {
        WALL_CLOCK
    }
}

/// A monotonic clock that advances one microsecond per reading: time
/// passes (loops waiting for it end) but identically on every build.
#[derive(Default)]
struct SteppingClock(AtomicU64);

impl wasmtime_wasi::HostMonotonicClock for SteppingClock {
    fn resolution(&self) -> u64 {
        1_000
    }
    fn now(&self) -> u64 {
        self.0.fetch_add(1_000, Ordering::Relaxed) + 1_000
    }
}

/// The instance's state, read by wizer after the init function ran.
struct Snapshotted<'a> {
    store: &'a mut Store<WasiP1Ctx>,
    instance: wasmtime::Instance,
}

impl InstanceState for Snapshotted<'_> {
    async fn global_get(&mut self, name: &str, _: ValType) -> SnapshotVal {
        #[expect(
            clippy::unwrap_used,
            reason = "wizer asks only for globals it exported"
        )]
        let global = self.instance.get_global(&mut *self.store, name).unwrap();
        match global.get(&mut *self.store) {
            Val::I32(x) => SnapshotVal::I32(x),
            Val::I64(x) => SnapshotVal::I64(x),
            Val::F32(x) => SnapshotVal::F32(x),
            Val::F64(x) => SnapshotVal::F64(x),
            Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => panic!("wizer cannot snapshot a global holding {other:?}"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        #[expect(
            clippy::unwrap_used,
            reason = "wizer asks only for memories it exported"
        )]
        let memory = self.instance.get_memory(&mut *self.store, name).unwrap();
        contents(memory.data(&*self.store))
    }
}

/// Runs the snapshot for `args` (what follows [`ARG`]); errors are printed
/// the way wizer prints them, which componentize-js parses.
pub fn main(args: Vec<std::ffi::OsString>) -> std::process::ExitCode {
    let args: Result<Vec<String>, _> = args.into_iter().map(|a| a.into_string()).collect();
    let result = match args {
        Ok(args) => run(&args),
        Err(arg) => Err(format!("argument {arg:?} is not UTF-8")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let request = parse(args)?;
    let mut stdin = String::new();
    std::io::stdin()
        .read_to_string(&mut stdin)
        .map_err(|e| format!("reading the init's arguments from stdin: {e}"))?;
    let (preopens, stdin) = remap(&request, &stdin);
    let wasm = std::fs::read(&request.input)
        .map_err(|e| format!("reading {}: {e}", request.input.display()))?;

    let mut wizer = Wizer::new();
    wizer.init_func(&request.init_func);
    let (context, instrumented) = wizer.instrument(&wasm).map_err(|e| format!("{e:#}"))?;

    let mut wasi = WasiCtxBuilder::new();
    wasi.stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(stdin))
        .inherit_stdout()
        .inherit_stderr()
        .wall_clock(StoppedClock)
        .monotonic_clock(SteppingClock::default())
        .secure_random(rand::rngs::StdRng::seed_from_u64(0))
        .insecure_random(rand::rngs::StdRng::seed_from_u64(1))
        .insecure_random_seed(2);
    if request.inherit_env {
        // componentize-js's variables, without those the shim's shell adds
        // (PWD would put the project's folder into the snapshot).
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(name, _)| !SHELL_VARIABLES.contains(&name.as_str()))
            .collect();
        env.sort();
        wasi.envs(&env);
    }
    for (host, guest) in &preopens {
        wasi.preopened_dir(host, guest, FsPerms::ReadOnly)
            .map_err(|e| format!("opening {}: {e:#}", host.display()))?;
    }
    let engine = Engine::default();
    let module = Module::new(&engine, &instrumented).map_err(|e| format!("{e:#}"))?;
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).map_err(|e| format!("{e:#}"))?;
    // As wizer does: the engine also imports WASI 0.2 functions, which the
    // initialization must not call; calling one traps.
    linker
        .define_unknown_imports_as_traps(&module)
        .map_err(|e| format!("{e:#}"))?;
    let mut store = Store::new(&engine, wasi.build_p1());
    let instance = linker
        .instantiate(&mut store, &module)
        .map_err(|e| format!("{e:#}"))?;
    if let Some(Extern::Func(initialize)) = instance.get_export(&mut store, "_initialize") {
        initialize
            .typed::<(), ()>(&store)
            .and_then(|f| f.call(&mut store, ()))
            .map_err(|e| format!("calling the reactor's _initialize: {e:#}"))?;
    }
    let init = instance
        .get_typed_func::<(), ()>(&mut store, &request.init_func)
        .map_err(|e| format!("{e:#}"))?;
    init.call(&mut store, ()).map_err(|e| {
        format!(
            "the `{}` function trapped\n\nCaused by:\n    {e:#}",
            request.init_func
        )
    })?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("starting a runtime for the snapshot: {e}"))?;
    let snapshot = runtime
        .block_on(wizer.snapshot(
            &context,
            &mut Snapshotted {
                store: &mut store,
                instance,
            },
        ))
        .map_err(|e| format!("{e:#}"))?;
    std::fs::write(&request.output, snapshot)
        .map_err(|e| format!("writing {}: {e}", request.output.display()))
}

/// Writes, in `dir`, the executable componentize-js runs as wizer: it runs
/// `exe ARG …`.
pub fn write_shim(dir: &Path, exe: &Path) -> Result<PathBuf, BuildError> {
    let path = dir.join("refill-snapshot");
    let exe = exe.to_string_lossy().replace('\'', r"'\''");
    let script = format!("#!/bin/sh\nexec '{exe}' {ARG} \"$@\"\n");
    let io = |source| BuildError::Io {
        path: path.clone(),
        source,
    };
    std::fs::write(&path, script).map_err(io)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn componentize_js_s_command_line_is_understood_and_anything_else_refused() {
        let request = parse(&args(
            "--allow-wasi --init-func componentize.wizer --dir=/tmp/abc123/sources \
             --mapdir=/::. --wasm-bulk-memory=true --inherit-env=true -o=/tmp/abc123/out.wasm \
             /tmp/abc123/in.wasm",
        ))
        .expect("parsed");
        assert_eq!(
            request,
            Request {
                input: "/tmp/abc123/in.wasm".into(),
                output: "/tmp/abc123/out.wasm".into(),
                init_func: "componentize.wizer".into(),
                dirs: vec!["/tmp/abc123/sources".into()],
                mapdirs: vec![("/".into(), ".".into())],
                inherit_env: true,
            }
        );
        for bad in [
            "--init-func f -o out.wasm in.wasm --keep-init-func=true",
            "--init-func f in.wasm",
            "--init-func f -o out.wasm",
            "--init-func f -o out.wasm --wasm-bulk-memory=false in.wasm",
            "--init-func f -o out.wasm a.wasm b.wasm",
        ] {
            assert!(parse(&args(bad)).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn host_paths_in_the_init_s_arguments_become_fixed_guest_paths() {
        let request = Request {
            dirs: vec!["/tmp/componentize-x81/sources".into()],
            mapdirs: vec![
                ("/".into(), "/home/me/proj".into()),
                ("/lib".into(), ".".into()),
            ],
            ..Request::default()
        };
        let (preopens, stdin) = remap(
            &request,
            "--initializer-script-path /tmp/componentize-x81/sources/initializer.js \
             --strip-path-prefix /home/me/proj/ app.js",
        );
        assert_eq!(
            stdin,
            "--initializer-script-path /refill-build/0/initializer.js \
             --strip-path-prefix / app.js"
        );
        assert_eq!(preopens[0].1, "/refill-build/0");
        assert_eq!(preopens[1], ("/home/me/proj".into(), "/".to_string()));
    }
}
