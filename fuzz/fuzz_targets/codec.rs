#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_codec::fuzz_decode(data));
