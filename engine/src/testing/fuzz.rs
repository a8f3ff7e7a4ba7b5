//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus
//! replay tests: each feeds untrusted bytes to one parser and checks the
//! parser's own promises. None may panic or allocate by an unverified length.
use std::sync::Arc;

use bytes::Bytes;

use crate::format::{
    decode_clean, decode_ref, encode_clean, ChunkEntry, Recipe, StoreConfig, Trailer,
};
use crate::ids::{FileId, PackId};
use crate::pack::PackReader;
use crate::storage::BytesFile;
use crate::{Store, StoreOptions};

/// A whole pack file: open it and read every chunk its table lists.
pub fn pack(data: &[u8]) {
    let handle = Arc::new(BytesFile(Bytes::copy_from_slice(data)));
    if let Ok(p) = PackReader::from_handle(PackId([0; 32]), handle, "fuzz") {
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
        // A recipe that decodes re-encodes to one that decodes the same
        // (the bytes may differ only where readers ignore them: reserved).
        let again = r.encode();
        assert_eq!(again.len(), rest.len());
        assert_eq!(Recipe::decode(FileId(*id), &again).as_ref(), Ok(&r));
    }
}

/// Chunk record headers, table entries, trailers, store configs, ref files,
/// clean-close records.
pub fn headers(data: &[u8]) {
    if let Ok(e) = ChunkEntry::decode_header(data, 0) {
        // Readers ignore the reserved bytes (spec §1), so a header with
        // non-zero reserved bytes decodes; re-encoding zeroes them (and so
        // changes the check value) but must keep every field.
        let again = e.encode_header();
        assert_eq!(ChunkEntry::decode_header(&again, 0), Ok(e));
        assert_eq!(&again[..5], &data[..5]);
        assert_eq!(&again[8..48], &data[8..48]);
    }
    let _ = ChunkEntry::decode_table_entry(data);
    let _ = Trailer::decode(data);
    if let Ok(c) = StoreConfig::decode(data) {
        assert_eq!(c.encode(), data);
    }
    if let Ok(record) = decode_clean(data) {
        assert_eq!(encode_clean(&record), data);
    }
    if let Ok((name, file)) = decode_ref(data) {
        assert_eq!(crate::format::encode_ref(&name, &file), data);
    }
}

/// Index values: chunk locations and pack infos.
pub fn index_values(data: &[u8]) {
    let id = crate::ids::ChunkId::of(data);
    if let Some(loc) = crate::index::ChunkLocation::decode(id, data) {
        assert_eq!(loc.entry.id, id);
    }
    let _ = crate::index::PackInfo::decode(data);
}

/// Options creating a store with tiny chunks (64 B – 1 KiB), so that the
/// fuzzed stores and the corpus seeds made from them stay small.
pub fn tiny_chunk_options() -> StoreOptions {
    StoreOptions {
        create: true,
        chunking: Some(crate::chunking::ChunkParams {
            min: 64,
            avg: 256,
            max: 1024,
            normalization: 1,
        }),
        ..Default::default()
    }
}

/// A store made of fuzzed files: `dir` must be an empty directory. The input
/// is split by 16-bit little-endian length prefixes into a config, a pack, a
/// recipe and a ref file, written into a fresh store's layout; then the store
/// is opened, its index rebuilt from those files, verified, and every file it
/// lists read. Errors are expected; panics are bugs.
pub fn store_files(dir: &std::path::Path, data: &[u8]) {
    let opts = tiny_chunk_options();
    let Ok(store) = Store::open(dir, opts.clone()) else {
        return;
    };
    drop(store);
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() < 4 {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let n = (u16::from_le_bytes(*len) as usize).min(tail.len());
        let (part, tail) = tail.split_at(n);
        parts.push(part);
        rest = tail;
    }
    let name = |p: &[u8]| blake3::hash(p).to_hex().to_string();
    for (i, part) in parts.iter().enumerate() {
        let rel = match i {
            0 if !part.is_empty() => crate::paths::CONFIG.to_string(),
            1 => {
                let n = name(part);
                format!("packs/{}/{n}.pack", &n[..2])
            }
            2 => {
                let n = name(part);
                format!("recipes/{}/{n}.recipe", &n[..2])
            }
            3 => {
                let n = name(part);
                format!("refs/{}/{n}.ref", &n[..2])
            }
            _ => continue,
        };
        let path = dir.join(rel);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, part));
        if written.is_err() {
            return;
        }
    }
    let opts = StoreOptions {
        create: false,
        chunking: None,
        ..opts
    };
    if Store::repair_index(dir, opts.clone()).is_err() {
        return;
    }
    let Ok(store) = Store::open(dir, opts) else {
        return;
    };
    let _ = store.verify(crate::VerifyOptions::default());
    if let Ok(refs) = store.list_refs("") {
        for (_, id) in refs {
            if let Ok(r) = store.read(&id) {
                let _ = r.read_all();
            }
        }
    }
    let _ = store.stats();
}
