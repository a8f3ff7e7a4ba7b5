//! Chunk headers, table entries, trailers, store configs and ref files.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::testing::fuzz::headers(data));
