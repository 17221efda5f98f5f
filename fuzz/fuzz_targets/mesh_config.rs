#![no_main]
//! Istio ProxyConfig: the mesh config file and `PROXY_CONFIG` (`[flags][file]\0[var]`).
//! Body: `ztun::fuzz::targets::mesh_config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::mesh_config(data));
