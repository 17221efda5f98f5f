#![no_main]
//! CONNECT authorities and SPIFFE identities.
//! Body: `ztun::fuzz::targets::authority`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::authority(data));
