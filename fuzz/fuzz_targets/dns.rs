#![no_main]
//! DNS messages through the DNS proxy's per-query decision (first byte: transport, client, shape).
//! Body: `ztun::fuzz::targets::dns`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::dns(data));
