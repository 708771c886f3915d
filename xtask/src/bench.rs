//! `cargo xtask bench [ARGS]`: builds the plugin, the benchmark and the shim
//! (optimised), then runs the benchmark with the shim included. ARGS go to the
//! benchmark (`cargo xtask bench --help` lists them); the report is printed
//! and written to `target/bench/report.md`.

use std::path::PathBuf;
use std::process::Command;

use crate::{build, cargo, root, run, setup, wasm};

/// The cargo profile for the native benchmark tools (see the root
/// Cargo.toml): optimised like release, without the plugin's size settings.
const PROFILE: &str = "bench-tools";

pub fn bench(args: &[&str]) -> anyhow::Result<()> {
    let help = args.iter().any(|a| matches!(*a, "--help" | "-h"));
    let mut minimal = None;
    if !help {
        setup()?;
        build()?;
        // The minimal filter built as the plugin is (profile and wasm-opt).
        minimal = Some(
            wasm::Module {
                select: &["--manifest-path", "bench/minimal-filter/Cargo.toml"],
                target_dir: Some("target/bench-filter"),
                lib: "bench_minimal_filter",
                // As written with the SDK: every callback exported.
                callbacks: None,
            }
            .build()?,
        );
    }
    run(cargo().args([
        "build",
        "--profile",
        PROFILE,
        "--package",
        "drainpipe-bench",
        "--package",
        "drainpipe-shim",
    ]))?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let bin_dir = target_dir.join(PROFILE);
    let mut cmd = Command::new(bin_dir.join("drainpipe-bench"));
    if !help {
        let out = root().join("target/bench");
        std::fs::create_dir_all(&out)?;
        cmd.arg("--minimal-wasm")
            .args(minimal)
            .arg("--shim")
            .arg(bin_dir.join("drainpipe-shim"))
            .arg("--out")
            .arg(out.join("report.md"));
    }
    run(cmd.args(args))
}
