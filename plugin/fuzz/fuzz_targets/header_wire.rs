#![no_main]
//! See `drainpipe_fuzz::header_wire` for the input layout and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| drainpipe_fuzz::header_wire(data));
