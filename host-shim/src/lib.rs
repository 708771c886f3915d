//! drainpipe-shim: a proxy-wasm host on Wasmtime.
