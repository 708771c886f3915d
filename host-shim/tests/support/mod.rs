//! Shared helpers for the shim's tests: the test filter (built for
//! wasm32-wasip1 on first use, by `drainpipe_tests::guests`), the drainpipe
//! plugin, and small modules written in the wasm text format.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use drainpipe_shim::{Clock, Host, PluginConfig, Wasm};
use drainpipe_tests::guests::{plugin_wasm, FIDELITY_FILTER, FIDELITY_FILTER_NAMED, TEST_FILTER};

/// A fixed start time for manual clocks: 2023-11-14T22:13:20Z.
pub const T0_MS: u64 = 1_700_000_000_000;

/// The independent test filter in `test-filter/`, compiled once per test
/// binary (see `drainpipe_tests::guests`).
pub fn test_filter() -> Wasm {
    static WASM: OnceLock<Wasm> = OnceLock::new();
    WASM.get_or_init(|| Wasm::from_file(test_filter_path()).expect("load the test filter"))
        .clone()
}

/// Where [`test_filter`]'s module is, built on first use (for Envoy).
pub fn test_filter_path() -> PathBuf {
    TEST_FILTER.build().unwrap_or_else(|e| panic!("{e:#}"))
}

/// Where the fidelity filters' module (`test-filters/fidelity/`) is, built
/// on first use; its plugin configuration picks the filter.
pub fn fidelity_filter_path() -> PathBuf {
    FIDELITY_FILTER.build().unwrap_or_else(|e| panic!("{e:#}"))
}

/// The same module with its `name` section kept (function names in a
/// trap's backtrace).
pub fn fidelity_filter_named_path() -> PathBuf {
    FIDELITY_FILTER_NAMED
        .build()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The drainpipe plugin: `DRAINPIPE_WASM`, or the release build (`cargo
/// xtask build`).
pub fn drainpipe() -> Wasm {
    static WASM: OnceLock<Wasm> = OnceLock::new();
    WASM.get_or_init(|| {
        let path = plugin_wasm().unwrap_or_else(|e| panic!("{e:#}"));
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
