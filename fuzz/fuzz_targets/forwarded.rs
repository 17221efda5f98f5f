#![no_main]
//! The `forwarded` header ztun writes, and peer `forwarded`/`baggage` headers on a CONNECT.
//! Body: `ztun::fuzz::targets::forwarded`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::forwarded(data));
