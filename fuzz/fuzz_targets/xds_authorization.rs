#![no_main]
//! An xDS `istio.security.Authorization` resource (protobuf bytes): decode and translate.
//! Body: `ztun::fuzz::targets::xds_authorization`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::xds_authorization(data));
