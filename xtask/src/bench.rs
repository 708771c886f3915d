//! `cargo xtask bench [ARGS]`: builds the plugin, the benchmark and the shim
//! (optimised), then runs the benchmark with the shim included. ARGS go to the
//! benchmark (`cargo xtask bench --help` lists them); the report is printed
//! and written to `target/bench/report.md`. With `--instructions` (Envoy
//! under callgrind) the shim is neither built nor run, and the report goes
//! to `target/bench/instructions.md`; with `--startup RUNS` (start-up times
//! of the shim and Envoy) to `target/bench/startup.md`.

use std::path::PathBuf;
use std::process::Command;

use drainpipe_tests::guests::{MINIMAL_FILTER, MINIMAL_FILTER_BODY};

use crate::{build, cargo, root, run, setup};

/// The cargo profile for the native benchmark tools (see the root
/// Cargo.toml): optimised like release, without the plugin's size settings.
const PROFILE: &str = "bench-tools";

/// The proxy-wasm callbacks the minimal filter handles (its root and
/// stream contexts, the request headers), with the same life-cycle
/// callbacks the plugin keeps (`drainpipe::CALLBACKS`): the yardstick is
/// pruned as the plugin is, so Envoy enters its VM only where it works.
const MINIMAL_CALLBACKS: &[&str] = &[
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_delete",
];

/// [`MINIMAL_CALLBACKS`] and the response body callback.
const MINIMAL_BODY_CALLBACKS: [&str; 6] = [
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_response_body",
    "proxy_on_delete",
];

pub fn bench(args: &[&str]) -> anyhow::Result<()> {
    let help = args.iter().any(|a| matches!(*a, "--help" | "-h"));
    let mut minimal = None;
    let mut minimal_body = None;
    if !help {
        setup()?;
        build()?;
        // The minimal filter built as the plugin is: profile, exports
        // pruned to the callbacks it handles, wasm-opt.
        minimal = Some(MINIMAL_FILTER.build_release(Some(MINIMAL_CALLBACKS))?);
        // The same with its (empty) response body callback: the least a
        // filter that looks at bodies pays per chunk.
        minimal_body = Some(MINIMAL_FILTER_BODY.build_release(Some(&MINIMAL_BODY_CALLBACKS))?);
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
        cmd.arg("--minimal-body-wasm").args(minimal_body);
        if !instructions {
            cmd.arg("--shim").arg(bin_dir.join("drainpipe-shim"));
        }
        let startup = args.iter().any(|a| a.starts_with("--startup"));
        let report = match (instructions, startup) {
            (true, _) => "instructions.md",
            (false, true) => "startup.md",
            (false, false) => "report.md",
        };
        cmd.arg("--out").arg(out.join(report));
    }
    run(cmd.args(args))
}
