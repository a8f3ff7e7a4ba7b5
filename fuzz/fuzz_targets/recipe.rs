//! A 32-byte file id followed by recipe bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::testing::fuzz::recipe(data));
