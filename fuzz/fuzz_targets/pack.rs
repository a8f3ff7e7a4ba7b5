//! A whole pack file: header, trailer, chunk table, every chunk record.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::testing::fuzz::pack(data));
