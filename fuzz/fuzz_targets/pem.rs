#![no_main]
//! PEM certificate chains and keys.
//! Body: `ztun::fuzz::targets::pem`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::pem(data));
