#![no_main]
//! Raw HTTP/2 frames after the client preface, into an h2 server with the inbound settings.
//! Body: `ztun::fuzz::targets::h2_frames`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::h2_frames(data));
