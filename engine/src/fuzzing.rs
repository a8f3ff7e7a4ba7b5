//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus
//! replay tests: each feeds untrusted bytes to one parser and checks the
//! parser's own promises. None may panic or allocate by an unverified length.
#![doc(hidden)]

use std::sync::Arc;

use bytes::Bytes;

use crate::format::{decode_ref, ChunkEntry, Recipe, StoreConfig, Trailer};
use crate::hash::{FileId, PackId};
use crate::pack::PackReader;
use crate::storage::BytesFile;

/// A whole pack file: open it and read every chunk its table lists.
pub fn pack(data: &[u8]) {
    let handle = Arc::new(BytesFile(Bytes::copy_from_slice(data)));
    if let Ok(p) = PackReader::from_handle(PackId([0; 32]), handle, std::path::Path::new("fuzz")) {
        for i in 0..p.chunk_count().min(4096) {
            if let Ok(e) = p.entry(i) {
                if let Ok(raw) = p.read_chunk(i, &e.id) {
                    // Verified bytes are exactly what the table promised.
                    assert_eq!(raw.len(), e.raw_len as usize);
                }
            }
        }
    }
}

/// A recipe: the first 32 bytes are the file id it is claimed to be.
pub fn recipe(data: &[u8]) {
    let Some((id, rest)) = data.split_first_chunk::<32>() else {
        return;
    };
    if let Ok(r) = Recipe::decode(FileId(*id), rest) {
        // A recipe that decodes re-encodes to the same bytes.
        assert_eq!(r.encode(), rest);
    }
}

/// Chunk record headers, table entries, trailers, store configs, ref files.
pub fn headers(data: &[u8]) {
    if let Ok(e) = ChunkEntry::decode_header(data, 0) {
        assert_eq!(Some(&e.encode_header()[..]), data.get(..52));
    }
    let _ = ChunkEntry::decode_table_entry(data);
    let _ = Trailer::decode(data);
    if let Ok(c) = StoreConfig::decode(data) {
        assert_eq!(c.encode(), data);
    }
    if let Ok((name, file)) = decode_ref(data) {
        assert_eq!(crate::format::encode_ref(&name, &file), data);
    }
}
