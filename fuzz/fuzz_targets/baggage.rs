#![no_main]
//! A peer's `baggage` header (telemetry parser) and ztun's own `baggage` writer.
//! Body: `ztun::fuzz::targets::baggage`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztun::fuzz::targets::baggage(data));
