#![no_main]
//! A `CRL_PATH` file: parsed, then a client chain checked against it.
//! Body: `ztun::fuzz::targets::crl`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::crl(data));
