#![no_main]
//! See `drainpipe_fuzz::config` for the input layout and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| drainpipe_fuzz::config(data));
