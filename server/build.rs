//! Builds the responder plugins (`../plugins`, a workspace of its own) for `wasm32-wasip2`, so
//! `cargo run` and `cargo test` always have them, built from source. The server embeds the
//! default `llm-responder`; the tests load the example and hostile plugins from the same folder.

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGIN_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let plugins = manifest_dir.join("../plugins");
    println!(
        "cargo:rerun-if-changed={}",
        plugins.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        plugins.join("Cargo.lock").display()
    );
    for dir in ["wit", "wit-0.1.0", "llm-responder", "examples", "fixtures"] {
        println!("cargo:rerun-if-changed={}", plugins.join(dir).display());
    }

    // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out: share one plugin build between
    // profiles, in <target>/plugins.
    let out_dir = PathBuf::from(env("OUT_DIR"));
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("plugins"))
        .unwrap_or_else(|| out_dir.join("plugins"));

    ensure_target_installed();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--locked", "--target", PLUGIN_TARGET])
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags are for the host target, and its jobserver is not ours.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(var);
    }
    let status = command.status().unwrap_or_else(|e| {
        panic!("could not run cargo to build the plugins: {e}");
    });
    if !status.success() {
        panic!(
            "building the responder plugins failed (is the {PLUGIN_TARGET} target installed? \
             `rustup target add {PLUGIN_TARGET}`)"
        );
    }

    let wasm_dir = target_dir.join(PLUGIN_TARGET).join("release");
    let responder = wasm_dir.join("llm_responder.wasm");
    assert!(exists(&responder), "{} was not built", responder.display());
    println!(
        "cargo:rustc-env=PALAVER_LLM_RESPONDER_WASM={}",
        responder.display()
    );
    println!(
        "cargo:rustc-env=PALAVER_PLUGIN_BUILD_DIR={}",
        wasm_dir.display()
    );
}

/// rustup installs a `rust-toolchain.toml` target only when it installs the toolchain itself, so
/// a machine that already had 1.95.0 lacks `wasm32-wasip2` and the README's commands would fail.
/// Add it here (about two seconds) when rustup is there; otherwise say exactly what is missing.
fn ensure_target_installed() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = |sysroot: &Path| {
        sysroot
            .join("lib/rustlib")
            .join(PLUGIN_TARGET)
            .join("lib")
            .is_dir()
    };
    match &sysroot {
        Some(root) if installed(root) => return,
        Some(_) => {}
        // Cannot tell (an unusual rustc): let the plugin build say what is wrong.
        None => return,
    }
    println!(
        "cargo:warning=the {PLUGIN_TARGET} target was missing from this toolchain: added it with rustup"
    );
    // RUSTUP_TOOLCHAIN, set by rustup's cargo proxy, makes this the toolchain being built with.
    let added = Command::new("rustup")
        .args(["target", "add", PLUGIN_TARGET])
        .status();
    match added {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "`rustup target add {PLUGIN_TARGET}` failed ({status}); the responder plugins need \
             it. Run it by hand and build again."
        ),
        Err(e) => panic!(
            "the {PLUGIN_TARGET} target is not installed and rustup could not be run ({e}). \
             Install the target for this toolchain (the Rust standard library for \
             {PLUGIN_TARGET}) and build again."
        ),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

fn exists(path: &Path) -> bool {
    path.metadata().is_ok_and(|m| m.is_file())
}
