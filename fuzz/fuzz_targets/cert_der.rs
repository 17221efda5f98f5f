#![no_main]
//! A peer's leaf certificate (DER): SPIFFE identity extraction.
//! Body: `ztun::fuzz::targets::cert_der`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::cert_der(data));
