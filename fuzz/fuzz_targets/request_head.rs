#![no_main]
//! Request heads (`method\nuri\nname: value…`) through the inbound head checks.
//! Body: `ztun::fuzz::targets::request_head`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::request_head(data));
