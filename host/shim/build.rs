//! Compiles `shim.c` into a shared object in OUT_DIR (an empty file where
//! the shim cannot work: it is x86-64 Linux only).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=shim.c");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"))
        .join("librefill_build_shim.so");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !(target.starts_with("x86_64") && target.contains("linux")) {
        std::fs::write(&out, b"").expect("writing the empty shim");
        return;
    }
    let compiler = cc::Build::new().get_compiler();
    let status = Command::new(compiler.path())
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-Werror",
            "-Wno-nonnull-compare",
            "-o",
        ])
        .arg(&out)
        .arg("shim.c")
        .arg("-ldl")
        .status()
        .expect("running the C compiler for shim.c");
    assert!(status.success(), "compiling shim.c failed ({status})");
}
