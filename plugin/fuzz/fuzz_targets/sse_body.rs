#![no_main]
//! See `drainpipe_fuzz::sse_body` for the input layout and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| drainpipe_fuzz::sse_body(data));
