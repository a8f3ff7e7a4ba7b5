//! Chunk headers, table entries, trailers, store configs and ref files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::format::{decode_ref, ChunkEntry, StoreConfig, Trailer};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = ChunkEntry::decode_header(data, 0) {
        assert_eq!(&e.encode_header()[..], &data[..52]);
    }
    let _ = ChunkEntry::decode_table_entry(data);
    let _ = Trailer::decode(data);
    if let Ok(c) = StoreConfig::decode(data) {
        assert_eq!(c.encode(), data);
    }
    let _ = decode_ref(data);
});
