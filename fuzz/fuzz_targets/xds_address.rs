#![no_main]
//! An xDS `istio.workload.Address` resource (protobuf bytes): decode and translate.
//! Body: `ztun::fuzz::targets::xds_address`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::xds_address(data));
