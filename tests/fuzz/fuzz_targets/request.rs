#![no_main]
//! libFuzzer target: the request parser and argument checks; see `checks::request`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::checks::request(data));
