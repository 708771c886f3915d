//! The release plugin as `cargo xtask build` leaves it (LTO, `opt-level =
//! "z"`, then `wasm-opt -Oz`): one module loaded into every Envoy worker's
//! VM, so its size is a target (BENCHMARKS.md).

use drainpipe_tests::envoy::plugin_wasm;

/// 150 KB, counted in thousands of bytes.
const MAX_BYTES: u64 = 150_000;

#[test]
fn release_plugin_is_at_most_150_kb() {
    let path = plugin_wasm().unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(
        size <= MAX_BYTES,
        "{} is {size} bytes, over {MAX_BYTES}: build it with `cargo xtask build` (which runs wasm-opt)",
        path.display()
    );
    // Still a proxy-wasm module after the optimiser: the ABI marker and the
    // entry points Envoy calls survive.
    let bytes = std::fs::read(&path).unwrap();
    for export in [
        "proxy_abi_version_0_2_1",
        "proxy_on_request_headers",
        "proxy_on_memory_allocate",
    ] {
        assert!(
            bytes.windows(export.len()).any(|w| w == export.as_bytes()),
            "{export} missing from {}",
            path.display()
        );
    }
}
