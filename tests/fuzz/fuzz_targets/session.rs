#![no_main]
//! libFuzzer target: one connection's input to a real in-process node; see `checks::session`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::checks::session(data));
