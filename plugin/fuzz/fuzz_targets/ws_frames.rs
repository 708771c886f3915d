#![no_main]
//! See `drainpipe_fuzz::ws_frames` for the input layout and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| drainpipe_fuzz::ws_frames(data));
