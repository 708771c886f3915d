//! Shared helpers for the shim's tests: the test filter (built for
//! wasm32-wasip1 on first use), the drainpipe plugin, and small modules
//! written in the wasm text format.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use drainpipe_shim::{Clock, Host, PluginConfig, Wasm};

/// A fixed start time for manual clocks: 2023-11-14T22:13:20Z.
pub const T0_MS: u64 = 1_700_000_000_000;

/// The independent test filter in `test-filter/`, compiled once per test
/// binary. Cargo builds it into this package's test scratch directory.
pub fn test_filter() -> Wasm {
    static WASM: OnceLock<Wasm> = OnceLock::new();
    WASM.get_or_init(|| Wasm::from_file(test_filter_path()).expect("load the test filter"))
        .clone()
}

/// Where [`test_filter`]'s module is, built on first use (for Envoy).
pub fn test_filter_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build_guest("test-filter", "shim_test_filter"))
        .clone()
}

/// Where the fidelity filters' module (`test-filters/fidelity/`) is, built
/// on first use; its plugin configuration picks the filter.
pub fn fidelity_filter_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build_guest("test-filters/fidelity", "shim_fidelity_filter"))
        .clone()
}

/// Builds the guest crate in `dir` (under this package) for wasm32-wasip1
/// into this package's test scratch directory; the path of `artifact`.
fn build_guest(dir: &str, artifact: &str) -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join("Cargo.toml");
    let target_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(dir.replace('/', "-"));
    let output = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap_or_else(|e| panic!("run cargo to build {dir}: {e}"));
    assert!(
        output.status.success(),
        "building {dir} for wasm32-wasip1 failed (is the target installed? \
         `rustup target add wasm32-wasip1`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    target_dir.join(format!("wasm32-wasip1/release/{artifact}.wasm"))
}

/// The drainpipe plugin: `DRAINPIPE_WASM`, or the release build in the
/// workspace's target directory.
pub fn drainpipe() -> Wasm {
    static WASM: OnceLock<Wasm> = OnceLock::new();
    WASM.get_or_init(|| {
        let path = std::env::var_os("DRAINPIPE_WASM")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/wasm32-wasip1/release/drainpipe.wasm")
            });
        assert!(
            path.exists(),
            "the drainpipe plugin is missing at {}: build it with \
             `cargo build -p drainpipe-plugin --target wasm32-wasip1 --release` \
             or point DRAINPIPE_WASM at it",
            path.display()
        );
        Wasm::from_file(&path).unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()))
    })
    .clone()
}

/// A host for the test filter with one plugin `test`, the `auth` cluster,
/// and a manual clock.
pub fn test_filter_host(config: &str) -> (Host, Clock) {
    let clock = Clock::manual(T0_MS);
    let host = Host::builder(test_filter())
        .vm_id("tests")
        .clock(clock.clone())
        .cluster("auth", None)
        .plugin(PluginConfig::new("test", config))
        .build()
        .expect("build the host");
    (host, clock)
}

/// A module in the wasm text format with the exports every proxy-wasm
/// module has (ABI marker, memory, allocator) around `body`.
pub fn wat_module(imports: &str, body: &str) -> Vec<u8> {
    format!(
        r#"(module
            {imports}
            (memory (export "memory") 1)
            (global $heap (mut i32) (i32.const 4096))
            (func (export "proxy_abi_version_0_2_1"))
            (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
                (local $p i32)
                (local.set $p (global.get $heap))
                (global.set $heap (i32.add (global.get $heap) (local.get $n)))
                (local.get $p))
            {body}
        )"#
    )
    .into_bytes()
}
