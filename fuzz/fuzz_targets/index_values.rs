//! Values of the sled index trees (chunk locations, pack infos).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::testing::fuzz::index_values(data));
