#![no_main]
//! A sequence of framed ZDS messages (`[len][fd flags][payload]`) through the ZDS client.
//! Body: `ztun::fuzz::targets::zds`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::zds(data));
