//! `cargo xtask bench [ARGS]`: builds the plugin, the benchmark and the shim
//! (optimised), then runs the benchmark with the shim included. ARGS go to the
//! benchmark (`cargo xtask bench --help` lists them); the report is printed
//! and written to `target/bench/report.md`. With `--instructions` (Envoy
//! under callgrind) the shim is neither built nor run, and the report goes
//! to `target/bench/instructions.md`.

use std::path::PathBuf;
use std::process::Command;

use drainpipe_tests::guests::MINIMAL_FILTER;

use crate::{build, cargo, root, run, setup};

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
        minimal = Some(MINIMAL_FILTER.build_release(None)?);
    }
    // Counting instructions runs Envoy only: the shim is not built.
    let instructions = args
        .iter()
        .any(|a| *a == "--instructions" || a.starts_with("--instructions="));
    let mut packages = vec!["--package", "drainpipe-bench"];
    if !instructions {
        packages.extend(["--package", "drainpipe-shim"]);
    }
    run(cargo().args(["build", "--profile", PROFILE]).args(packages))?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let bin_dir = target_dir.join(PROFILE);
    let mut cmd = Command::new(bin_dir.join("drainpipe-bench"));
    if !help {
        let out = root().join("target/bench");
        std::fs::create_dir_all(&out)?;
        cmd.arg("--minimal-wasm").args(minimal);
        if !instructions {
            cmd.arg("--shim").arg(bin_dir.join("drainpipe-shim"));
        }
        let report = if instructions {
            "instructions.md"
        } else {
            "report.md"
        };
        cmd.arg("--out").arg(out.join(report));
    }
    run(cmd.args(args))
}
