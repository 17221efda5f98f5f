#![no_main]
//! The local config file (`LOCAL_XDS_PATH`).
//! Body: `ztun::fuzz::targets::local_yaml`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::local_yaml(data));
