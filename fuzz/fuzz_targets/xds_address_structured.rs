#![no_main]
//! Structured xDS address resources (`ztun_fuzz::xds::Address`), protobuf-encoded for the
//! `xds_address` body (`ztun::fuzz::targets::xds_address`).

libfuzzer_sys::fuzz_target!(|input: ztun_fuzz::xds::Address| {
    let bytes = input.encode();
    ztun_fuzz::render(&bytes);
    ztun::fuzz::targets::xds_address(&bytes);
});
