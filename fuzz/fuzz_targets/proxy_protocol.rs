#![no_main]
//! PROXY protocol v2 headers: parse, and round trip with ztun's writer.
//! Body: `ztun::fuzz::targets::proxy_protocol`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::proxy_protocol(data));
