#![no_main]
//! Structured xDS authorization policies (`ztun_fuzz::xds::Authorization`), protobuf-encoded
//! for the `xds_authorization` body (`ztun::fuzz::targets::xds_authorization`).

libfuzzer_sys::fuzz_target!(|input: ztun_fuzz::xds::Authorization| {
    let bytes = input.encode();
    ztun_fuzz::render(&bytes);
    ztun::fuzz::targets::xds_authorization(&bytes);
});
