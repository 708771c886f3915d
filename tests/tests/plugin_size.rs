//! The release plugin as `cargo xtask build` leaves it (LTO, `opt-level =
//! 2`, the callbacks it does not handle out of its exports, then `wasm-opt
//! -Oz`): one module loaded into every Envoy worker's VM, so its size is a
//! target (BENCHMARKS.md), and each exported callback is a VM entry Envoy
//! makes.

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

fn exports(bytes: &[u8], name: &str) -> bool {
    bytes.windows(name.len()).any(|w| w == name.as_bytes())
}

#[test]
fn release_plugin_exports_only_the_callbacks_it_handles() {
    let path = plugin_wasm().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for name in drainpipe::CALLBACKS {
        assert!(
            exports(&bytes, name),
            "{name} missing from {}",
            path.display()
        );
    }
    // Left to the ABI's defaults: Envoy does not enter the VM for these.
    for name in [
        "proxy_on_request_body",
        "proxy_on_request_trailers",
        "proxy_on_response_headers",
        "proxy_on_done",
        "proxy_on_log",
    ] {
        assert!(
            !exports(&bytes, name),
            "{name} still in {}: build it with `cargo xtask build`",
            path.display()
        );
    }
}
