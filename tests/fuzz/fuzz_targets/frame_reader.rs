#![no_main]
//! libFuzzer target: the frame reader (src/conn.rs); see `checks::frame_reader`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::checks::frame_reader(data));
