#![no_main]
//! Structured HTTP/2 frame sequences (`ztun_fuzz::h2::Frames`), rendered to bytes for the
//! `h2_frames` body (`ztun::fuzz::targets::h2_frames`).

libfuzzer_sys::fuzz_target!(|input: ztun_fuzz::h2::Frames| {
    let bytes = input.encode();
    ztun_fuzz::render(&bytes);
    ztun::fuzz::targets::h2_frames(&bytes);
});
